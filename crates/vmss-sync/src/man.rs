//! The man page, vmss-sync(1), made from the command-line definition: clap_mangen's
//! title, name, synopsis, description and options, then one page for every command
//! (its synopsis and options, from the same definition) and the sections clap does not
//! know: exit status, signals, files, environment.

use clap::Command;
use std::io::{self, Write};

/// Escapes text for roff: backslashes, hyphens (so that `--config` stays ASCII), and
/// a leading dot or quote that roff would read as a request.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\e"),
            '-' => out.push_str("\\-"),
            _ => out.push(c),
        }
    }
    if out.starts_with('.') || out.starts_with('\'') {
        out.insert_str(0, "\\&");
    }
    out
}

fn arg_line(arg: &clap::Arg) -> String {
    let mut names = Vec::new();
    if let Some(s) = arg.get_short() {
        names.push(format!("\\fB\\-{}\\fR", esc(&s.to_string())));
    }
    if let Some(l) = arg.get_long() {
        names.push(format!("\\fB\\-\\-{}\\fR", esc(l)));
    }
    let takes_value = arg.get_action().takes_values();
    let value = arg
        .get_value_names()
        .and_then(|v| v.first())
        .map(|v| v.to_string())
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let mut line = if names.is_empty() {
        format!("\\fI{}\\fR", esc(&value))
    } else {
        names.join(", ")
    };
    if takes_value && !names.is_empty() {
        line.push_str(&format!(" \\fI{}\\fR", esc(&value)));
    }
    line
}

const EXTRA: &str = r#".SH "WITHOUT A COMMAND"
Run with no arguments, \fBvmss\-sync\fR behaves as nginx\-asg\-sync does: it runs the
daemon with \fI/etc/nginx/config.yaml\fR.
nginx\-asg\-sync's flags \fB\-config_path\fR=\fIFILE\fR and \fB\-log_path\fR=\fIFILE\fR
(one or two dashes, \fB=\fR or a separate value) mean \fBrun \-\-config\fR \fIFILE\fR
\fB\-\-log\-file\fR \fIFILE\fR.
.SH "EXIT STATUS"
.TP
\fB0\fR
\fBrun\fR: stopped by SIGTERM or SIGINT. \fBonce\fR: every upstream in sync.
\fBplan\fR: everything was read. \fBvalidate\fR: the file is valid.
.TP
\fB1\fR
\fBrun\fR: startup failed (an upstream or scale set is missing, a credential is refused).
\fBonce\fR, \fBplan\fR: an upstream failed or was held back.
.TP
\fB2\fR
The configuration file is invalid (every problem is printed with file, line, column,
key and value); nothing was changed. systemd does not restart the unit on this code.
.SH SIGNALS
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Stop after the apply in flight; the leader lease is released. Servers are never removed
because of a stop.
.TP
\fBSIGHUP\fR
Reload the configuration; an invalid new file keeps the running configuration.
.SH FILES
.TP
\fI/etc/vmss\-sync/config.yaml\fR
The configuration read by the packaged systemd unit (nginx\-asg\-sync's format).
.TP
\fI/etc/vmss\-sync/env\fR
Secrets for the unit (mode 0600): \fBNAME=value\fR lines, used in the configuration as
\fB${NAME}\fR.
.TP
\fI/etc/nginx/config.yaml\fR
The default configuration path (nginx\-asg\-sync's).
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter; overrides \fBlog_level\fR.
.TP
\fBAZURE_TENANT_ID\fR, \fBAZURE_CLIENT_ID\fR, \fBAZURE_CLIENT_SECRET\fR, \fBAZURE_FEDERATED_TOKEN_FILE\fR
The Azure credential: a service principal, workload identity, or (on Azure, with none of
them set) the managed identity.
.SH "SEE ALSO"
The documentation in \fI/usr/share/doc/vmss\-sync/\fR (packaging.md,
migrating\-from\-nginx\-asg\-sync.md, kubernetes.md, permissions.md) and the project's
README.
"#;

/// Writes vmss-sync(1) for `cmd`, the binary's clap definition.
pub fn render(cmd: Command, out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut synopsis = format!("\\fBvmss\\-sync {}\\fR", esc(sub.get_name()));
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            synopsis.push_str(&format!(" [{}]", arg_line(arg)));
        }
        writeln!(out, ".TP\n{synopsis}")?;
        if let Some(about) = sub.get_about() {
            writeln!(out, "{}", esc(&about.to_string()))?;
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set()) {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            writeln!(out, ".RS\n.TP\n{}", arg_line(arg))?;
            let mut help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            if !help.is_empty() && !help.ends_with('.') {
                help.push('.');
            }
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() {
                help.push_str(&format!(" Default: {}.", defaults.join(", ")));
            }
            writeln!(out, "{}\n.RE", esc(help.trim()))?;
        }
    }
    out.write_all(EXTRA.as_bytes())?;
    man.render_version_section(out)?;
    Ok(())
}
