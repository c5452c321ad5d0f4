//! Open-source NGINX: upstream blocks rendered to a file, then validate and reload.
//!
//! One target is one file holding an `upstream NAME { … }` block for every upstream that
//! names the target, in configuration order, servers sorted by address:
//!
//! ```text
//! # Written by vmss-sync …
//! upstream web {
//!     server 10.0.0.4:80 max_fails=1 fail_timeout=10s;
//!     server 10.0.0.5:80 max_fails=1 fail_timeout=10s max_conns=100 down;
//! }
//! ```
//!
//! - `max_conns` (when not 0), `max_fails` and `fail_timeout` are rendered; open-source NGINX
//!   has no `slow_start`, so it is left out (and reported back as configured).
//! - A draining server is rendered with `down`: NGINX sends it no new requests once the
//!   reload is done, while the old workers finish the requests in flight. Keeping it in the
//!   file (rather than leaving it out) lets the drain be read back after a restart.
//! - An upstream without servers gets a placeholder `server 127.0.0.1:1 down;`, since NGINX
//!   refuses an empty upstream block.
//!
//! The file is written atomically (a temporary file in the same directory, fsync, rename,
//! fsync of the directory) and only when its content changes; then the validation command
//! (default `nginx -t`) runs, and the reload command (default `nginx -s reload`) only when
//! the validation passes. When it fails, the last good file is put back (the file NGINX
//! last ran, else the file found there, or the new file removed when there was none),
//! nothing is reloaded and the error is reported.
//!
//! **Adoption.** A file without vmss-sync's header line is taken over only when it holds
//! nothing but `upstream` blocks named after upstreams of this target, each with nothing
//! but `zone` and `server` lines and comments: the placeholder a user writes so that NGINX
//! can start before vmss-sync first runs. Its servers are not reported (they are
//! placeholders); the file is rewritten on the first cycle. Any other file is refused, with
//! a message saying what to put there instead.
//!
//! **Read back every cycle.** `observe` reads the file each time, like every other
//! target's state. When the file differs from what vmss-sync wrote and NGINX was last
//! reloaded with (rewritten by configuration management, restored from a backup, a reload
//! that failed), [`Target::needs_write`] says so and the next apply rewrites it (if needed)
//! and validates and reloads, even with nothing else to change. Nothing is reloaded when
//! nothing changed. At startup, a file in vmss-sync's exact form is taken to be what NGINX
//! runs.
//!
//! The upstreams of one file are planned and applied concurrently by the reconciler; their
//! applies are **group-committed**: each apply records its upstream's new servers, and one
//! render-validate-reload covers every change recorded before it started, so a cycle that
//! changes several upstreams of a file usually reloads NGINX once (at most twice).

use super::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use crate::config::{format_nginx_time, parse_nginx_time};
use crate::model::UpstreamKind;
use crate::model::{ObservedServer, ServerParams, ServerState};
use crate::plan::Plan;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// First line of every file vmss-sync writes; a file without it is not overwritten.
pub const HEADER: &str =
    "# Written by vmss-sync: upstreams fed by Azure scale sets. Do not edit: it is rewritten.";
const PLACEHOLDER: &str = "server 127.0.0.1:1 down; # vmss-sync: no instances";
const PLACEHOLDER_MARK: &str = "# vmss-sync: no instances";

/// One server line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    server: String,
    max_conns: u32,
    max_fails: u32,
    fail_timeout: Duration,
    down: bool,
}

type Servers = BTreeMap<String, Vec<Entry>>;

struct Inner {
    /// True once the file was read.
    loaded: bool,
    /// Servers per upstream as the file holds them (last read or written).
    live: Servers,
    /// The file content NGINX was last reloaded with (or found at startup in vmss-sync's
    /// exact form); `None` before that.
    live_text: Option<String>,
    /// True when the file must be written (and NGINX reloaded) although no server changes:
    /// it differs from `live_text` or from vmss-sync's form of it, or it is missing.
    dirty: bool,
    /// The last file content warned about, so that a change is logged once.
    noticed: Option<String>,
    /// Changes recorded by applies, not yet committed: upstream → (servers, generation).
    pending: BTreeMap<String, (Vec<Entry>, u64)>,
    /// Last generation handed out.
    generation: u64,
    /// Highest generation covered by a finished commit, and how it ended.
    committed: u64,
    last: Result<(), String>,
}

/// Target for one rendered file.
pub struct NginxFile {
    path: PathBuf,
    validate: Vec<String>,
    reload: Vec<String>,
    timeout: Duration,
    /// The upstreams of the file, in configuration order.
    upstreams: Vec<(String, UpstreamKind)>,
    params: BTreeMap<String, ServerParams>,
    inner: Mutex<Inner>,
    commit: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NginxFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NginxFile")
            .field("path", &self.path)
            .field("validate", &self.validate)
            .field("reload", &self.reload)
            .finish_non_exhaustive()
    }
}

/// Why a file could not be read back.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{path} was not written by vmss-sync and holds more than a placeholder (line {line}: {reason}); refusing to overwrite it. Put only the upstream blocks of this target's upstreams there (each with nothing but zone and server lines and comments), for example:\n{example}or remove the file, or choose another path")]
    Foreign {
        path: String,
        line: usize,
        reason: String,
        example: String,
    },
    #[error("{path}:{line}: cannot read back {text:?}")]
    Line {
        path: String,
        line: usize,
        text: String,
    },
}

/// How a file was read.
#[derive(Debug, PartialEq, Eq)]
enum Form {
    /// Written by vmss-sync: its servers are reported.
    Ours,
    /// A placeholder someone wrote (or an edited file of ours made of placeholders only):
    /// adopted, its servers not reported.
    Placeholder,
}

/// The placeholder file to start from for `upstreams`, as the error message shows it.
pub fn placeholder_example(upstreams: &[(String, UpstreamKind)]) -> String {
    let mut out = String::new();
    for (name, _) in upstreams {
        out.push_str(&format!(
            "upstream {name} {{\n    server 127.0.0.1:1 down;\n}}\n"
        ));
    }
    out
}

/// Reads a file: vmss-sync's own, or a placeholder that may be adopted.
fn parse_file(
    path: &Path,
    text: &str,
    upstreams: &[(String, UpstreamKind)],
) -> Result<(Servers, Form), ReadError> {
    match text.lines().next() {
        None => Ok((Servers::new(), Form::Ours)),
        Some(first) if first.trim() == HEADER => match parse_ours(path, text) {
            Ok(servers) => Ok((servers, Form::Ours)),
            // An edited file of ours is adopted like a placeholder when it is one.
            Err(e) => parse_placeholder(path, text, upstreams)
                .map(|s| (s, Form::Placeholder))
                .map_err(|_| e),
        },
        Some(_) => parse_placeholder(path, text, upstreams).map(|s| (s, Form::Placeholder)),
    }
}

/// Reads a placeholder: only `upstream NAME { … }` blocks of this target's upstreams, with
/// only `zone …;` and `server …;` statements and comments inside. Returns the upstreams
/// it names, without servers.
fn parse_placeholder(
    path: &Path,
    text: &str,
    upstreams: &[(String, UpstreamKind)],
) -> Result<Servers, ReadError> {
    let foreign = |line: usize, reason: String| ReadError::Foreign {
        path: path.display().to_string(),
        line,
        reason,
        example: placeholder_example(upstreams),
    };
    // Tokens: words, `{`, `}` and `;`, with their line numbers; comments dropped.
    let mut tokens: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default();
        let mut word = String::new();
        for c in line.chars() {
            if c.is_whitespace() || matches!(c, '{' | '}' | ';') {
                if !word.is_empty() {
                    tokens.push((i + 1, std::mem::take(&mut word)));
                }
                if !c.is_whitespace() {
                    tokens.push((i + 1, c.to_string()));
                }
            } else {
                word.push(c);
            }
        }
        if !word.is_empty() {
            tokens.push((i + 1, word));
        }
    }
    let mut out = Servers::new();
    let mut it = tokens.into_iter();
    while let Some((line, word)) = it.next() {
        if word != "upstream" {
            return Err(foreign(line, format!("`{word}` is not an upstream block")));
        }
        let name = match it.next() {
            Some((_, n)) if !matches!(n.as_str(), "{" | "}" | ";") => n,
            _ => return Err(foreign(line, "an upstream block without a name".into())),
        };
        if !upstreams.iter().any(|(u, _)| *u == name) {
            let ours: Vec<&str> = upstreams.iter().map(|(u, _)| u.as_str()).collect();
            return Err(foreign(
                line,
                format!(
                    "upstream {name} is not one of this target's upstreams ({})",
                    ours.join(", ")
                ),
            ));
        }
        if !matches!(it.next(), Some((_, b)) if b == "{") {
            return Err(foreign(line, format!("upstream {name}: `{{` expected")));
        }
        loop {
            let Some((line, word)) = it.next() else {
                return Err(foreign(line, format!("upstream {name} is not closed")));
            };
            match word.as_str() {
                "}" => break,
                "zone" | "server" => loop {
                    match it.next() {
                        Some((_, t)) if t == ";" => break,
                        Some((l, t)) if t == "{" || t == "}" => {
                            return Err(foreign(l, format!("`{word}` without `;`")))
                        }
                        Some(_) => {}
                        None => return Err(foreign(line, format!("`{word}` without `;`"))),
                    }
                },
                other => {
                    return Err(foreign(
                        line,
                        format!(
                            "`{other}` in upstream {name} (vmss-sync writes only server lines, \
                             so it would be lost)"
                        ),
                    ))
                }
            }
        }
        out.entry(name).or_default();
    }
    Ok(out)
}

/// Reads a file of vmss-sync's (after its header line).
fn parse_ours(path: &Path, text: &str) -> Result<Servers, ReadError> {
    let mut out = Servers::new();
    let lines = text.lines().enumerate().skip(1);
    let bad = |line: usize, text: &str| ReadError::Line {
        path: path.display().to_string(),
        line: line + 1,
        text: text.to_string(),
    };
    let mut current: Option<String> = None;
    for (i, raw) in lines {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("upstream ") {
            let name = rest.trim_end_matches('{').trim();
            if current.is_some() || name.is_empty() || !rest.ends_with('{') {
                return Err(bad(i, raw));
            }
            out.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        if line == "}" {
            if current.take().is_none() {
                return Err(bad(i, raw));
            }
            continue;
        }
        let Some(name) = &current else {
            return Err(bad(i, raw));
        };
        if line.contains(PLACEHOLDER_MARK) {
            continue;
        }
        let Some(body) = line
            .strip_prefix("server ")
            .and_then(|l| l.strip_suffix(';'))
        else {
            return Err(bad(i, raw));
        };
        let mut words = body.split_whitespace();
        let Some(server) = words.next() else {
            return Err(bad(i, raw));
        };
        let mut e = Entry {
            server: server.to_string(),
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            down: false,
        };
        for w in words {
            let parsed = match w.split_once('=') {
                None if w == "down" => {
                    e.down = true;
                    Some(())
                }
                Some(("max_conns", v)) => v.parse().ok().map(|v| e.max_conns = v),
                Some(("max_fails", v)) => v.parse().ok().map(|v| e.max_fails = v),
                Some(("fail_timeout", v)) => parse_nginx_time(v).map(|v| e.fail_timeout = v),
                _ => None,
            };
            if parsed.is_none() {
                return Err(bad(i, raw));
            }
        }
        out.entry(name.clone()).or_default().push(e);
    }
    if current.is_some() {
        return Err(bad(
            text.lines().count().saturating_sub(1),
            "unterminated upstream block",
        ));
    }
    Ok(out)
}

fn render(upstreams: &[(String, UpstreamKind)], servers: &Servers) -> String {
    let mut out = String::with_capacity(256);
    out.push_str(HEADER);
    out.push('\n');
    for (name, _) in upstreams {
        out.push_str(&format!("upstream {name} {{\n"));
        let list = servers.get(name).map(Vec::as_slice).unwrap_or_default();
        if list.is_empty() {
            out.push_str(&format!("    {PLACEHOLDER}\n"));
        }
        for e in list {
            out.push_str(&format!(
                "    server {} max_fails={} fail_timeout={}",
                e.server,
                e.max_fails,
                format_nginx_time(e.fail_timeout)
            ));
            if e.max_conns > 0 {
                out.push_str(&format!(" max_conns={}", e.max_conns));
            }
            if e.down {
                out.push_str(" down");
            }
            out.push_str(";\n");
        }
        out.push_str("}\n");
    }
    out
}

fn entry(server: &str, p: &ServerParams) -> Entry {
    Entry {
        server: server.to_string(),
        max_conns: p.max_conns,
        max_fails: p.max_fails,
        fail_timeout: p.fail_timeout,
        down: false,
    }
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.vmss-sync.tmp"));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            // The rename is durable once the directory is synced (best effort: not every
            // file system lets a directory be opened for that).
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })
    .await
    .map_err(std::io::Error::other)?
}

impl NginxFile {
    /// Builds a target for the file at `path` holding `upstreams` (in configuration order),
    /// whose configured parameters are `params`.
    pub fn new(
        path: PathBuf,
        validate: Vec<String>,
        reload: Vec<String>,
        timeout: Duration,
        upstreams: Vec<(String, UpstreamKind)>,
        params: BTreeMap<String, ServerParams>,
    ) -> Self {
        Self {
            path,
            validate,
            reload,
            timeout,
            upstreams,
            params,
            inner: Mutex::new(Inner {
                loaded: false,
                live: Servers::new(),
                live_text: None,
                dirty: false,
                noticed: None,
                pending: BTreeMap::new(),
                generation: 0,
                committed: 0,
                last: Ok(()),
            }),
            commit: tokio::sync::Mutex::new(()),
        }
    }

    fn error(&self, message: String, permanence: Permanence) -> TargetError {
        TargetError {
            message: format!("NGINX file {}: {message}", self.path.display()),
            permanence,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the file unless it was read already (an apply without an observe first).
    async fn load(&self) -> Result<(), TargetError> {
        if self.lock().loaded {
            return Ok(());
        }
        self.refresh().await
    }

    /// Reads the file back: its servers, and whether it must be rewritten and NGINX
    /// reloaded (it differs from what NGINX was last reloaded with, or from vmss-sync's
    /// form of it, or it is missing).
    async fn refresh(&self) -> Result<(), TargetError> {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.error(format!("cannot read it: {e}"), Permanence::Transient)),
        };
        let (servers, form) = match &text {
            Some(t) => parse_file(&self.path, t, &self.upstreams).map_err(|e| TargetError {
                message: e.to_string(),
                permanence: Permanence::Permanent,
            })?,
            None => (Servers::new(), Form::Ours),
        };
        let canonical = text.as_deref() == Some(render(&self.upstreams, &servers).as_str());
        let mut inner = self.lock();
        if !inner.loaded && canonical {
            // Found in vmss-sync's exact form at startup: taken to be what NGINX runs.
            inner.live_text = text.clone();
        }
        inner.loaded = true;
        inner.dirty = !canonical || inner.live_text != text;
        if inner.dirty && inner.noticed != text {
            inner.noticed = text.clone();
            if text.is_some() && inner.live_text.is_some() {
                tracing::warn!(
                    file = %self.path.display(),
                    "NGINX file {} was changed outside vmss-sync; it is rewritten and NGINX \
                     reloaded",
                    self.path.display()
                );
            } else if form == Form::Placeholder {
                tracing::info!(
                    file = %self.path.display(),
                    "NGINX file {}: a placeholder not written by vmss-sync; adopting it: it is \
                     rewritten and NGINX reloaded",
                    self.path.display()
                );
            }
        }
        inner.live = servers;
        Ok(())
    }

    fn known(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        if self.upstreams.iter().any(|(n, _)| *n == upstream.name) {
            Ok(())
        } else {
            Err(self.error(
                format!(
                    "upstream {} is not one of this file's upstreams",
                    upstream.name
                ),
                Permanence::Permanent,
            ))
        }
    }

    async fn run(&self, what: &str, argv: &[String]) -> Result<(), String> {
        let Some((program, args)) = argv.split_first() else {
            return Err(format!("the {what} command is empty"));
        };
        let shown = argv.join(" ");
        let child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(self.timeout, child).await {
            Err(_) => Err(format!(
                "{what} command `{shown}` did not finish within {:?}",
                self.timeout
            )),
            Ok(Err(e)) => Err(format!("{what} command `{shown}` could not run: {e}")),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let text = String::from_utf8_lossy(&out.stderr);
                let text = if text.trim().is_empty() {
                    String::from_utf8_lossy(&out.stdout).into_owned()
                } else {
                    text.into_owned()
                };
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(format!(
                    "{what} command `{shown}` failed ({}): {}",
                    out.status,
                    tail.join(" | ")
                ))
            }
        }
    }

    /// Renders, writes, validates and reloads what `servers` says. On a failed validation
    /// the last good file is put back.
    async fn commit_file(
        &self,
        servers: &Servers,
        live_text: Option<&str>,
    ) -> Result<String, String> {
        let text = render(&self.upstreams, servers);
        let disk = tokio::fs::read_to_string(&self.path).await.ok();
        if live_text == Some(text.as_str()) && disk.as_deref() == Some(text.as_str()) {
            // NGINX runs this already.
            return Ok(text);
        }
        if disk.as_deref() != Some(text.as_str()) {
            write_atomic(&self.path, text.as_bytes())
                .await
                .map_err(|e| format!("cannot write it: {e}"))?;
        }
        if let Err(e) = self.run("validation", &self.validate).await {
            let restored = match live_text.or(disk.as_deref()) {
                Some(good) => write_atomic(&self.path, good.as_bytes()).await,
                None => tokio::fs::remove_file(&self.path).await,
            };
            let restored = match restored {
                Ok(()) => "the last good file is back in place".to_string(),
                Err(r) => format!("restoring the last good file failed too: {r}"),
            };
            return Err(format!("{e}; not reloaded, {restored}"));
        }
        self.run("reload", &self.reload).await?;
        Ok(text)
    }
}

#[async_trait]
impl Target for NginxFile {
    fn kind(&self) -> &'static str {
        "nginx-file"
    }

    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        self.known(upstream)?;
        self.refresh().await?;
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        match tokio::fs::metadata(dir).await {
            Ok(m) if m.is_dir() => Ok(()),
            _ => Err(self.error(
                format!("its directory {} does not exist", dir.display()),
                Permanence::Permanent,
            )),
        }
    }

    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        self.known(upstream)?;
        self.refresh().await?;
        let configured = self.params.get(&upstream.name);
        let inner = self.lock();
        let list = inner
            .live
            .get(&upstream.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(list
            .iter()
            .enumerate()
            .map(|(i, e)| ObservedServer {
                id: i as u64,
                server: e.server.clone(),
                params: Some(ServerParams {
                    max_conns: e.max_conns,
                    max_fails: e.max_fails,
                    fail_timeout: e.fail_timeout,
                    slow_start: configured.map(|p| p.slow_start).unwrap_or_default(),
                }),
                state: if e.down {
                    ServerState::Draining
                } else {
                    ServerState::Active
                },
            })
            .collect())
    }

    fn needs_write(&self, upstream: &UpstreamRef) -> bool {
        self.known(upstream).is_ok() && self.lock().dirty
    }

    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        if let Err(e) = self.known(upstream) {
            report.errors.push(e);
            return report;
        }
        if let Err(e) = self.load().await {
            report.errors.push(e);
            return report;
        }
        // 1. Record the new servers of this upstream.
        let mut done = ApplyReport::default();
        let mine = {
            let mut inner = self.lock();
            let mut list = match inner.pending.get(&upstream.name) {
                Some((l, _)) => l.clone(),
                None => inner.live.get(&upstream.name).cloned().unwrap_or_default(),
            };
            for r in &plan.remove {
                // A server already gone is removed all the same.
                list.retain(|e| e.server != r.server);
                done.removed.push(r.server.clone());
            }
            for u in &plan.update {
                match list.iter_mut().find(|e| e.server == u.server) {
                    Some(e) => {
                        if let Some(p) = &u.params {
                            *e = Entry {
                                down: e.down,
                                ..entry(&u.server, p)
                            };
                        }
                        e.down = u.state == ServerState::Draining;
                        if e.down {
                            done.drained.push(u.server.clone());
                        } else {
                            done.updated.push(u.server.clone());
                        }
                    }
                    None => report.errors.push(self.error(
                        format!(
                            "server {} of {} is no longer in the file",
                            u.server, upstream.name
                        ),
                        Permanence::Transient,
                    )),
                }
            }
            for (server, p) in &plan.add {
                list.retain(|e| e.server != *server);
                list.push(entry(server, p));
                done.added.push(server.clone());
            }
            list.sort_by(|a, b| a.server.cmp(&b.server));
            inner.generation += 1;
            let generation = inner.generation;
            inner
                .pending
                .insert(upstream.name.clone(), (list, generation));
            generation
        };
        // 2. Commit, unless a commit that started after step 1 already covered it.
        let _turn = self.commit.lock().await;
        let (servers, live_text, upto) = {
            let inner = self.lock();
            if inner.committed >= mine {
                let result = inner.last.clone();
                drop(inner);
                return finish(
                    report,
                    done,
                    result.map_err(|e| self.error(e, Permanence::Transient)),
                );
            }
            let mut servers = inner.live.clone();
            for (name, (list, _)) in &inner.pending {
                servers.insert(name.clone(), list.clone());
            }
            (servers, inner.live_text.clone(), inner.generation)
        };
        let result = self.commit_file(&servers, live_text.as_deref()).await;
        let mut inner = self.lock();
        inner.pending.retain(|_, (_, g)| *g > upto);
        inner.committed = upto;
        let outcome = match result {
            Ok(text) => {
                // Only the changes this commit covered are live; later ones stay pending.
                for (name, list) in servers {
                    inner.live.insert(name, list);
                }
                inner.live_text = Some(text);
                inner.dirty = false;
                inner.noticed = None;
                Ok(())
            }
            Err(e) => Err(e),
        };
        inner.last = outcome.clone();
        drop(inner);
        finish(
            report,
            done,
            outcome.map_err(|e| self.error(e, Permanence::Transient)),
        )
    }
}

/// The report of an apply: what was recorded if the commit worked, else its error.
fn finish(
    mut report: ApplyReport,
    done: ApplyReport,
    result: Result<(), TargetError>,
) -> ApplyReport {
    match result {
        Ok(()) => {
            report.added = done.added;
            report.removed = done.removed;
            report.updated = done.updated;
            report.drained = done.drained;
        }
        Err(e) => report.errors.push(e),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Removal, Update};

    fn params() -> ServerParams {
        ServerParams {
            max_conns: 0,
            max_fails: 2,
            fail_timeout: Duration::from_secs(30),
            slow_start: Duration::from_secs(5),
        }
    }

    fn up(name: &str) -> UpstreamRef {
        UpstreamRef::new(name, UpstreamKind::Http)
    }

    /// A target whose validation and reload commands append to a log file.
    fn target(dir: &Path, validate_ok: bool) -> NginxFile {
        let log = dir.join("commands.log");
        let sh = |word: &str, ok: bool| {
            vec![
                "/bin/sh".to_string(),
                "-c".to_string(),
                format!(
                    "echo {word} >> {}; {}",
                    log.display(),
                    if ok {
                        "true"
                    } else {
                        "echo 'emerg: bad' >&2; false"
                    }
                ),
            ]
        };
        NginxFile::new(
            dir.join("upstreams.conf"),
            sh("validate", validate_ok),
            sh("reload", true),
            Duration::from_secs(10),
            vec![
                ("web".into(), UpstreamKind::Http),
                ("api".into(), UpstreamKind::Http),
            ],
            BTreeMap::from([("web".into(), params()), ("api".into(), params())]),
        )
    }

    fn commands(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("commands.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn add(servers: &[&str]) -> Plan {
        Plan {
            add: servers.iter().map(|s| (s.to_string(), params())).collect(),
            ..Plan::default()
        }
    }

    #[test]
    fn rendered_files_read_back_to_the_same_servers() {
        let mut servers = Servers::new();
        servers.insert(
            "web".into(),
            vec![
                Entry {
                    server: "10.0.0.4:80".into(),
                    max_conns: 0,
                    max_fails: 1,
                    fail_timeout: Duration::from_secs(10),
                    down: false,
                },
                Entry {
                    server: "10.0.0.5:80".into(),
                    max_conns: 100,
                    max_fails: 3,
                    fail_timeout: Duration::from_secs(90),
                    down: true,
                },
            ],
        );
        let ups = vec![
            ("web".to_string(), UpstreamKind::Http),
            ("empty".to_string(), UpstreamKind::Http),
        ];
        let text = render(&ups, &servers);
        assert!(
            text.contains(
                "    server 10.0.0.5:80 max_fails=3 fail_timeout=90s max_conns=100 down;\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "upstream empty {\n    server 127.0.0.1:1 down; # vmss-sync: no instances\n}\n"
            ),
            "{text}"
        );
        let (back, form) = parse_file(Path::new("f"), &text, &ups).unwrap();
        assert_eq!(form, Form::Ours);
        assert_eq!(back["web"], servers["web"]);
        assert!(back["empty"].is_empty(), "the placeholder is not a server");
    }

    fn ups() -> Vec<(String, UpstreamKind)> {
        vec![
            ("web".into(), UpstreamKind::Http),
            ("api".into(), UpstreamKind::Http),
        ]
    }

    #[test]
    fn a_file_with_more_than_placeholders_is_refused_saying_what_to_put_there() {
        let refused = |text: &str| {
            parse_file(Path::new("/etc/nginx/conf.d/up.conf"), text, &ups())
                .unwrap_err()
                .to_string()
        };
        let e = refused("user www-data;\n");
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert!(
            e.contains("upstream web {\n    server 127.0.0.1:1 down;\n}\nupstream api {"),
            "the message shows the placeholder to write: {e}"
        );
        let e = refused("upstream other {\n    server 127.0.0.1:1 down;\n}\n");
        assert!(
            e.contains("line 1") && e.contains("not one of this target's upstreams (web, api)"),
            "{e}"
        );
        let e = refused("upstream web {\n    server 127.0.0.1:1 down;\n    keepalive 8;\n}\n");
        assert!(e.contains("line 3") && e.contains("`keepalive`"), "{e}");
        let e = refused("upstream web {\n    server 127.0.0.1:1 down;\n");
        assert!(e.contains("is not closed"), "{e}");
        let e = refused("upstream web {\n    server 127.0.0.1:1 down;\n}\nserver { listen 80; }\n");
        assert!(
            e.contains("line 4") && e.contains("`server` is not an upstream block"),
            "{e}"
        );
        assert!(parse_file(Path::new("f"), "", &ups()).unwrap().0.is_empty());
    }

    #[test]
    fn a_placeholder_file_of_this_targets_upstreams_is_adopted_without_its_servers() {
        let text = "# placeholder until vmss-sync runs\n\
                    upstream web {\n    zone web 64k;\n    server 127.0.0.1:1 down; # none yet\n}\n\n\
                    upstream api { server 10.9.9.9:80 max_fails=3; }\n";
        let (servers, form) = parse_file(Path::new("f"), text, &ups()).unwrap();
        assert_eq!(form, Form::Placeholder);
        assert_eq!(servers.len(), 2);
        assert!(servers.values().all(Vec::is_empty), "{servers:?}");
    }

    #[tokio::test]
    async fn changes_are_written_validated_and_reloaded_once_and_nothing_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), true);
        assert!(t.observe(&up("web")).await.unwrap().is_empty());
        let r = t
            .apply(&up("web"), &add(&["10.0.0.5:80", "10.0.0.4:80"]))
            .await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(r.added.len(), 2);
        let text = std::fs::read_to_string(dir.path().join("upstreams.conf")).unwrap();
        assert!(text.starts_with(HEADER));
        assert!(
            text.contains("upstream api {\n    server 127.0.0.1:1 down;"),
            "{text}"
        );
        assert_eq!(commands(dir.path()), ["validate", "reload"]);
        let seen = t.observe(&up("web")).await.unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].server, "10.0.0.4:80");
        assert_eq!(
            seen[0].params,
            Some(params()),
            "slow_start reported as configured"
        );
        // An empty plan's apply (a server already there) writes and reloads nothing.
        let r = t.apply(&up("web"), &add(&["10.0.0.4:80"])).await;
        assert!(r.errors.is_empty());
        assert_eq!(commands(dir.path()).len(), 2, "nothing changed: no reload");
        // A new target reading the same file sees the same servers (restart).
        let again = target(dir.path(), true);
        assert_eq!(again.observe(&up("web")).await.unwrap(), seen);
    }

    #[tokio::test]
    async fn a_failed_validation_restores_the_last_good_file_and_does_not_reload() {
        let dir = tempfile::tempdir().unwrap();
        let good = target(dir.path(), true);
        assert!(good
            .apply(&up("web"), &add(&["10.0.0.4:80"]))
            .await
            .errors
            .is_empty());
        let before = std::fs::read_to_string(dir.path().join("upstreams.conf")).unwrap();
        let bad = target(dir.path(), false);
        let r = bad.apply(&up("web"), &add(&["10.0.0.9:80"])).await;
        assert_eq!(r.errors.len(), 1);
        assert!(r.added.is_empty());
        let msg = &r.errors[0].message;
        assert!(
            msg.contains("emerg: bad") && msg.contains("last good file is back"),
            "{msg}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("upstreams.conf")).unwrap(),
            before
        );
        assert_eq!(commands(dir.path()), ["validate", "reload", "validate"]);
        // What NGINX runs is unchanged, so the next cycle plans the add again.
        assert_eq!(bad.observe(&up("web")).await.unwrap().len(), 1);
        assert!(!dir.path().join(".upstreams.conf.vmss-sync.tmp").exists());
    }

    #[tokio::test]
    async fn a_placeholder_is_rewritten_and_reloaded_on_the_first_cycle_even_with_nothing_to_add() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("upstreams.conf");
        let placeholder = "upstream web {\n    zone web 64k;\n    server 127.0.0.1:1 down;\n}\n";
        std::fs::write(&file, placeholder).unwrap();
        let t = target(dir.path(), true);
        t.check(&up("web")).await.unwrap();
        assert!(t.observe(&up("web")).await.unwrap().is_empty());
        assert!(t.needs_write(&up("web")), "a placeholder must be rewritten");
        let r = t.apply(&up("web"), &Plan::default()).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(text.contains("upstream api {"), "{text}");
        assert_eq!(commands(dir.path()), ["validate", "reload"]);
        t.observe(&up("web")).await.unwrap();
        assert!(!t.needs_write(&up("web")), "in sync once rewritten");
    }

    #[tokio::test]
    async fn a_file_changed_behind_vmss_syncs_back_is_rewritten_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("upstreams.conf");
        let t = target(dir.path(), true);
        assert!(t
            .apply(&up("web"), &add(&["10.0.0.4:80"]))
            .await
            .errors
            .is_empty());
        let good = std::fs::read_to_string(&file).unwrap();
        t.observe(&up("web")).await.unwrap();
        assert!(!t.needs_write(&up("web")));
        // Configuration management puts its placeholder back.
        std::fs::write(&file, "upstream web {\n    server 127.0.0.1:1 down;\n}\n").unwrap();
        assert!(t.observe(&up("web")).await.unwrap().is_empty());
        assert!(t.needs_write(&up("web")));
        let r = t.apply(&up("web"), &add(&["10.0.0.4:80"])).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), good);
        assert_eq!(
            commands(dir.path()),
            ["validate", "reload", "validate", "reload"]
        );
        // The same file restored by hand (identical bytes, NGINX maybe not reloaded since):
        // nothing to do only when it is exactly what NGINX was last reloaded with.
        std::fs::write(&file, &good).unwrap();
        t.observe(&up("web")).await.unwrap();
        assert!(!t.needs_write(&up("web")));
        // A hand-edited file of ours with another server: reported as it is, and rewritten.
        std::fs::write(&file, good.replace("10.0.0.4:80", "10.0.0.7:80")).unwrap();
        let seen = t.observe(&up("web")).await.unwrap();
        assert_eq!(seen[0].server, "10.0.0.7:80");
        assert!(t.needs_write(&up("web")));
    }

    #[tokio::test]
    async fn a_failed_reload_is_retried_by_the_next_cycle_with_nothing_planned() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("commands.log");
        let flag = dir.path().join("reload-fails");
        std::fs::write(&flag, "").unwrap();
        let t = NginxFile::new(
            dir.path().join("upstreams.conf"),
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo validate >> {}", log.display()),
            ],
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo reload >> {}; test ! -e {}",
                    log.display(),
                    flag.display()
                ),
            ],
            Duration::from_secs(10),
            vec![("web".into(), UpstreamKind::Http)],
            BTreeMap::from([("web".into(), params())]),
        );
        let r = t.apply(&up("web"), &add(&["10.0.0.4:80"])).await;
        assert_eq!(r.errors.len(), 1, "the reload failed");
        std::fs::remove_file(&flag).unwrap();
        assert_eq!(t.observe(&up("web")).await.unwrap().len(), 1);
        assert!(t.needs_write(&up("web")), "NGINX never loaded this file");
        let r = t.apply(&up("web"), &Plan::default()).await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        assert_eq!(
            commands(dir.path()),
            ["validate", "reload", "validate", "reload"]
        );
        t.observe(&up("web")).await.unwrap();
        assert!(!t.needs_write(&up("web")));
    }

    #[tokio::test]
    async fn without_a_previous_file_a_failed_validation_removes_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let bad = target(dir.path(), false);
        let r = bad.apply(&up("web"), &add(&["10.0.0.9:80"])).await;
        assert_eq!(r.errors.len(), 1);
        assert!(!dir.path().join("upstreams.conf").exists());
    }

    #[tokio::test]
    async fn drains_render_down_and_removals_leave_a_placeholder() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(dir.path(), true);
        assert!(t
            .apply(&up("api"), &add(&["10.0.1.4:8080"]))
            .await
            .errors
            .is_empty());
        let drain = Plan {
            update: vec![Update {
                id: 0,
                server: "10.0.1.4:8080".into(),
                params: None,
                state: ServerState::Draining,
                was: ServerState::Active,
            }],
            ..Plan::default()
        };
        let r = t.apply(&up("api"), &drain).await;
        assert_eq!(r.drained, ["10.0.1.4:8080"]);
        let text = std::fs::read_to_string(dir.path().join("upstreams.conf")).unwrap();
        assert!(
            text.contains("server 10.0.1.4:8080 max_fails=2 fail_timeout=30s down;"),
            "{text}"
        );
        assert_eq!(
            t.observe(&up("api")).await.unwrap()[0].state,
            ServerState::Draining
        );
        let remove = Plan {
            remove: vec![Removal {
                id: 0,
                server: "10.0.1.4:8080".into(),
                state: ServerState::Draining,
            }],
            ..Plan::default()
        };
        let r = t.apply(&up("api"), &remove).await;
        assert_eq!(r.removed, ["10.0.1.4:8080"]);
        let text = std::fs::read_to_string(dir.path().join("upstreams.conf")).unwrap();
        assert!(
            text.contains("upstream api {\n    server 127.0.0.1:1 down;"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn concurrent_applies_to_one_file_share_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let t = std::sync::Arc::new(target(dir.path(), true));
        let (a, b) = (t.clone(), t.clone());
        let (ra, rb) = tokio::join!(
            async move { a.apply(&up("web"), &add(&["10.0.0.4:80"])).await },
            async move { b.apply(&up("api"), &add(&["10.0.1.4:80"])).await },
        );
        assert!(ra.errors.is_empty() && rb.errors.is_empty());
        let text = std::fs::read_to_string(dir.path().join("upstreams.conf")).unwrap();
        assert!(
            text.contains("10.0.0.4:80") && text.contains("10.0.1.4:80"),
            "{text}"
        );
        let reloads = commands(dir.path())
            .iter()
            .filter(|c| *c == "reload")
            .count();
        assert!((1..=2).contains(&reloads), "{reloads} reloads");
    }
}
