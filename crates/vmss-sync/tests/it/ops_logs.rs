//! Secrets never reach the log: the daemon runs with `RUST_LOG=trace` (text, then JSON),
//! an NGINXaaS API key in `custom_headers`, a service principal's client secret, and a
//! storage account key for leader election; none of them, no bearer token and no Shared Key
//! signature appears in its output or on `/metrics`. Text logs have colour escape codes
//! only on a terminal (a pseudo-terminal from util-linux's `script`) and never with
//! `NO_COLOR`: through a pipe there is no escape byte.

use crate::support::common;
use crate::support::ops_common;

use common::*;
use ops_common::*;
use std::time::Duration;
use vmss_testbed::{TestbedOptions, UpstreamKind};

const API_KEY: &str = "nginxaas-key-Zx81QmWp3LcV";
const CLIENT_SECRET: &str = "client-secret-Kq7Yt2Rb9Hn4";

async fn run_and_collect(format: &str) -> (String, String) {
    let env = testbed(TestbedOptions {
        nginx_api_key: Some(API_KEY.into()),
        client_secret: CLIENT_SECRET.into(),
        ..TestbedOptions::default()
    })
    .await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let azurite = Azurite::start();
    let extra = format!(
        "log_format: {format}\ncustom_headers:\n  Content-Type: application/json\n  \
         Authorization: ApiKey ${{NGINX_KEY}}\n{}",
        leader_yaml(&azurite, "logs", 15)
    );
    let cfg = env.write(
        "config.yaml",
        &config_text(&env, &env.tb.nginx_nplus_url(), &extra),
    );
    // The testbed accepts this test's client secret, not the default one.
    let mut e: Vec<(String, String)> = replica_env(&env)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "AZURE_CLIENT_SECRET" => (k, CLIENT_SECRET.to_string()),
            _ => (k, v),
        })
        .collect();
    e.push(("NGINX_KEY".into(), API_KEY.into()));
    e.push(("RUST_LOG".into(), "trace".into()));
    let mut d = Daemon::run(&env, &cfg).env(&e).spawn();
    let addr = d.admin_addr().await;
    let synced = |n: usize| env.servers(UpstreamKind::Http, "web").len() == n;
    d.until(Duration::from_secs(20), "synced(2)", || synced(2))
        .await;
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    assert!(eventually(Duration::from_secs(15), || synced(4)).await);
    // A failed reload goes through the error path too.
    env.write("config.yaml", "upstreams: [\n");
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || d
            .log_text()
            .contains("reload failed"))
        .await
    );
    let metrics = get(&addr, "/metrics").await.body;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
    (d.log_text(), metrics)
}

fn assert_clean(what: &str, text: &str) {
    for (name, secret) in [
        ("the NGINXaaS API key", API_KEY),
        ("the client secret", CLIENT_SECRET),
        ("the storage account key", DEV_KEY),
        ("a bearer token", "Bearer "),
        ("a bearer token", "eyJ"),
        ("a Shared Key signature", "SharedKey "),
    ] {
        assert!(!text.contains(secret), "{name} leaked into {what}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_text_logs_at_trace_level_nor_metrics() {
    let (log, metrics) = run_and_collect("text").await;
    // The log really is at trace level, and it says what happened.
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    assert!(log.contains("Updated HTTP servers of web"), "{log}");
    assert!(
        log.contains("Released the lease") || log.contains("released the lease"),
        "{log}"
    );
    assert_clean("the text log", &log);
    assert_clean("/metrics", &metrics);
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_json_logs_at_trace_level() {
    let (log, metrics) = run_and_collect("json").await;
    let change = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Updated HTTP servers"))
        })
        .unwrap_or_else(|| panic!("a JSON change event:\n{log}"));
    // One event per change, with structured fields.
    assert_eq!(change["fields"]["upstream"], "web");
    assert_eq!(change["fields"]["target"], "nginx-plus");
    assert!(change["fields"]["added"].is_string());
    assert_clean("the JSON log", &log);
    assert_clean("/metrics", &metrics);
}

/// `vmss-sync once` against the testbed (two instances to add), text logs at info level,
/// run by `launcher` (the binary and its arguments appended).
async fn once_text_log(launcher: &[&str], extra_env: &[(&str, &str)]) -> (i32, String) {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.write(
        "config.yaml",
        &config_text(&env, &env.tb.nginx_url(), "log_format: text\n"),
    );
    let bin = env!("CARGO_BIN_EXE_vmss-sync");
    let mut cmd = std::process::Command::new(launcher.first().copied().unwrap_or(bin));
    let args = [bin, "once", "--config", cfg.to_str().unwrap()];
    if launcher.is_empty() {
        cmd.args(&args[1..]);
    } else {
        // script -qefc "CMD" /dev/null: CMD runs on a pseudo-terminal.
        cmd.args(&launcher[1..])
            .arg(args.join(" "))
            .arg("/dev/null");
    }
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            crate::support::ports::refused_url(),
        )
        .env("RUST_LOG", "info")
        .envs(env.sp_env())
        .envs(extra_env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run vmss-sync once");
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 2, "{text}");
    (out.status.code().unwrap_or(-1), text)
}

/// `script` from util-linux (Debian's essential bsdutils) gives the command a terminal.
fn script_available() -> bool {
    let ok = std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "`script` (util-linux) is missing under CI"
        );
        eprintln!("SKIPPED: `script` (util-linux) is not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn text_log_through_a_pipe_has_no_escape_byte() {
    let (code, log) = once_text_log(&[], &[]).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("INFO"), "{log}");
    assert!(log.contains("Updated HTTP servers of web"), "{log}");
    assert!(
        !log.contains('\x1b'),
        "escape byte in a piped log:\n{log:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    if !script_available() {
        return;
    }
    let pty = ["script", "-qefc"];
    let (code, log) = once_text_log(&pty, &[]).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Updated HTTP servers of web"), "{log}");
    assert!(log.contains("\x1b["), "a terminal gets colours:\n{log:?}");
    let (code, log) = once_text_log(&pty, &[("NO_COLOR", "1")]).await;
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("Updated HTTP servers of web"), "{log}");
    assert!(!log.contains('\x1b'), "NO_COLOR on a terminal:\n{log:?}");
}
