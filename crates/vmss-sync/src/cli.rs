//! Command-line helpers kept out of `main` so they can be tested: nginx-asg-sync's
//! legacy flags, logging set-up, signal forwarding and the text of `plan` and `once`.

use crate::config::{Config, LogFormat};
use crate::daemon::Control;
use crate::model::ServerState;
use crate::model::UpstreamKind;
use crate::reconcile::{CycleReport, StartupProblem};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use tokio::sync::mpsc;

/// nginx-asg-sync's default configuration path.
pub const LEGACY_DEFAULT_CONFIG: &str = "/etc/nginx/config.yaml";

/// Turns nginx-asg-sync's command line (`-config_path=FILE -log_path=FILE`, Go flag
/// syntax: one or two dashes, `=value` or a separate value) into `run --config FILE
/// --log-file FILE`, and no arguments at all into `run --config /etc/nginx/config.yaml`
/// (nginx-asg-sync run with none). Any other command line is returned unchanged.
pub fn translate_legacy_args(args: Vec<OsString>) -> Vec<OsString> {
    let Some((program, rest)) = args.split_first() else {
        return args;
    };
    if rest.is_empty() {
        return vec![
            program.clone(),
            "run".into(),
            "--config".into(),
            LEGACY_DEFAULT_CONFIG.into(),
        ];
    }
    let is_legacy = |a: &str| {
        let a = a.trim_start_matches('-');
        a.starts_with("config_path") || a.starts_with("log_path")
    };
    let strs: Vec<Option<&str>> = rest.iter().map(|a| a.to_str()).collect();
    if !strs.first().copied().flatten().is_some_and(is_legacy) {
        return args;
    }
    let mut config: Option<OsString> = None;
    let mut log: Option<OsString> = None;
    let mut out_extra = Vec::new();
    let mut i = 0;
    while i < rest.len() {
        let Some(a) = strs[i] else {
            out_extra.push(rest[i].clone());
            i += 1;
            continue;
        };
        let bare = a.trim_start_matches('-');
        let (name, inline) = match bare.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (bare, None),
        };
        let slot = match name {
            "config_path" if a.starts_with('-') => &mut config,
            "log_path" if a.starts_with('-') => &mut log,
            _ => {
                out_extra.push(rest[i].clone());
                i += 1;
                continue;
            }
        };
        match inline {
            Some(v) => *slot = Some(v.into()),
            None => {
                i += 1;
                if let Some(v) = rest.get(i) {
                    *slot = Some(v.clone());
                }
            }
        }
        i += 1;
    }
    let mut out = vec![program.clone(), "run".into(), "--config".into()];
    out.push(config.unwrap_or_else(|| LEGACY_DEFAULT_CONFIG.into()));
    if let Some(l) = log {
        if !l.is_empty() {
            out.push("--log-file".into());
            out.push(l);
        }
    }
    out.extend(out_extra);
    out
}

/// Whether text logs on stderr get colour escape codes: only when stderr is a terminal
/// and `NO_COLOR` is unset or empty (<https://no-color.org>). journald, `docker logs`,
/// `kubectl logs`, pipes and files get plain text.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets up `tracing`: text or JSON on stderr (and appended to `log_file` when given,
/// created with mode 0600), level from `RUST_LOG`, else the configuration's
/// `log_level`, else `info`. Text has colours only as [`use_colour`] says (never with a
/// log file, whose lines are the same as stderr's).
pub fn init_logging(cfg: &Config, log_file: Option<&Path>) -> Result<(), String> {
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v).map_err(|e| format!("RUST_LOG: {e}"))?,
        _ => EnvFilter::try_new(cfg.log_level.as_deref().unwrap_or("info"))
            .map_err(|e| format!("{}: log_level: {e}", cfg.path.display()))?,
    };
    let file = match log_file {
        Some(p) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(p)
                .map_err(|e| format!("Couldn't open the log file {}: {e}", p.display()))?;
            Some(std::sync::Arc::new(f))
        }
        None => None,
    };
    use std::io::IsTerminal as _;
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = match (cfg.log_format, file) {
        (LogFormat::Json, Some(f)) => builder
            .with_ansi(false)
            .json()
            .with_writer(std::io::stderr.and(f))
            .try_init(),
        (LogFormat::Json, None) => builder
            .with_ansi(false)
            .json()
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Text, Some(f)) => builder
            .with_ansi(false)
            .with_writer(std::io::stderr.and(f))
            .try_init(),
        (LogFormat::Text, None) => builder
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .try_init(),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}

/// Forwards SIGTERM and SIGINT as [`Control::Shutdown`] and SIGHUP as
/// [`Control::Reload`]. Must be called inside the runtime.
pub fn forward_signals(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = term.recv() => Control::Shutdown,
                _ = int.recv() => Control::Shutdown,
                _ = hup.recv() => Control::Reload,
            };
            if tx.send(msg).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

fn kind(k: UpstreamKind) -> &'static str {
    match k {
        UpstreamKind::Http => "http",
        UpstreamKind::Stream => "stream",
    }
}

/// Text of `vmss-sync plan`: per upstream, what a reconcile would add, remove and update.
pub fn render_plan(report: &CycleReport, problems: &[StartupProblem]) -> String {
    let mut s = String::new();
    for p in problems {
        let _ = writeln!(s, "problem: upstream {}: {}", p.upstream, p.message);
    }
    for o in &report.outcomes {
        let _ = writeln!(
            s,
            "upstream {} ({}) from scale set {}:",
            o.upstream,
            kind(o.kind),
            o.group
        );
        if let Some(e) = &o.error {
            let _ = writeln!(s, "  cannot plan: {e}");
            continue;
        }
        let Some(plan) = &o.plan else { continue };
        if plan.is_empty() && o.hold.is_none() {
            let _ = writeln!(
                s,
                "  in sync ({} servers): would change nothing",
                o.observed
            );
        }
        for (server, _) in &plan.add {
            let _ = writeln!(s, "  would add     {server}");
        }
        for u in &plan.update {
            let word = match (u.was, u.state) {
                (ServerState::Active, ServerState::Draining) => "drain  ",
                (ServerState::Draining, ServerState::Active) => "restore",
                _ => "update ",
            };
            let _ = writeln!(s, "  would {word} {} (id {})", u.server, u.id);
        }
        for r in &plan.remove {
            let _ = writeln!(s, "  would remove  {} (id {})", r.server, r.id);
        }
        if let Some(h) = &o.hold {
            let _ = writeln!(s, "  would hold removals: {h}");
        }
    }
    s
}

/// Text of `vmss-sync once`: one line per upstream.
pub fn render_summary(report: &CycleReport) -> String {
    let mut s = String::new();
    for o in &report.outcomes {
        let status = if o.in_sync() {
            "in sync"
        } else {
            "NOT in sync"
        };
        let (a, r, u) = o
            .report
            .as_ref()
            .map(|r| (r.added.len(), r.removed.len(), r.updated.len()))
            .unwrap_or((0, 0, 0));
        let _ = write!(
            s,
            "upstream {} ({}): {status}; {} servers wanted; added {a}, removed {r}, updated {u}",
            o.upstream,
            kind(o.kind),
            o.desired
        );
        if let Some(h) = &o.hold {
            let _ = write!(s, "; held: {h}");
        }
        if let Some(e) = &o.error {
            let _ = write!(s, "; error: {e}");
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn legacy_flags_with_equals_mean_run() {
        assert_eq!(
            translate_legacy_args(args(&["x", "-config_path=/a.yaml", "-log_path=/l.log"])),
            args(&["x", "run", "--config", "/a.yaml", "--log-file", "/l.log"])
        );
    }

    #[test]
    fn legacy_flags_with_separate_values_and_double_dash() {
        assert_eq!(
            translate_legacy_args(args(&[
                "x",
                "--log_path",
                "/l.log",
                "-config_path",
                "/a.yaml"
            ])),
            args(&["x", "run", "--config", "/a.yaml", "--log-file", "/l.log"])
        );
    }

    #[test]
    fn legacy_log_path_alone_uses_nginx_asg_sync_default_config() {
        assert_eq!(
            translate_legacy_args(args(&["x", "-log_path=/l.log"])),
            args(&[
                "x",
                "run",
                "--config",
                LEGACY_DEFAULT_CONFIG,
                "--log-file",
                "/l.log"
            ])
        );
    }

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn no_arguments_run_with_nginx_asg_sync_default_config() {
        assert_eq!(
            translate_legacy_args(args(&["x"])),
            args(&["x", "run", "--config", LEGACY_DEFAULT_CONFIG])
        );
    }

    #[test]
    fn modern_command_lines_are_untouched() {
        let a = args(&["x", "once", "--config", "/a.yaml"]);
        assert_eq!(translate_legacy_args(a.clone()), a);
    }
}
