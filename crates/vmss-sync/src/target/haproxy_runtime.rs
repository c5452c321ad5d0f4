//! HAProxy backends through the Runtime API (the stats socket, unix or TCP, `level admin`).
//!
//! Two ways to hold servers, chosen per backend (`mode: auto`, the default) or forced:
//!
//! - **Dynamic servers** (HAProxy 2.6 and later, a backend with a dynamic balance algorithm
//!   such as `roundrobin`): `add server B/NAME IP:PORT [maxconn N] [check]`, then
//!   `enable health` (with `check`) and `set server B/NAME state ready`; removed with
//!   `set server … state maint` then `del server` (refused by HAProxy while connections are
//!   attached: retried for a few seconds, otherwise left in maintenance and deleted by a later
//!   cycle). Names are derived from the address: `{prefix}10-0-0-4-80`.
//! - **Slots** (older HAProxy, or a backend whose algorithm refuses dynamic servers):
//!   `server-template {prefix} 1-N 127.0.0.1:1 disabled` in the configuration; a slot is
//!   filled with `set server B/{prefix}N addr IP port PORT` and `state ready`, and freed with
//!   `state maint`. A slot in maintenance is free.
//!
//! Only servers whose name is the prefix followed by a slot number or an address are managed;
//! servers from the configuration file are never touched. State is read back with
//! `show servers state B` every cycle, so after an HAProxy reload (which forgets runtime
//! servers and resets slots) the next cycle adds everything back.
//!
//! Drain is `state drain`. A managed dynamic server found in maintenance (a half-finished
//! add or remove) is reported as draining, so the planner either restores it (`state ready`)
//! or removes it. Of the server parameters only `max_conns` maps to HAProxy (`maxconn`, read
//! back from `show stat`); `max_fails`, `fail_timeout` and `slow_start` have no runtime
//! equivalent and are ignored (reported back as configured, so plans stay stable).
//!
//! Every call opens one connection in interactive (`prompt`) mode with
//! `set severity-output number`, so each reply is framed by the prompt and errors are told
//! apart by their severity; all commands of one observe, and all of one apply, go over that
//! one connection. Connections are not kept between calls: after a reload the old process
//! would still answer on them.

use super::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use crate::config::{HaproxyServerMode, RuntimeAddress};
use crate::model::{ObservedServer, ServerParams, ServerState};
use crate::plan::Plan;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest reply accepted (a `show servers state` of a very large backend fits easily).
const MAX_REPLY: usize = 32 << 20;
/// How long a removal waits for HAProxy to let go of a server's connections.
const DELETE_WAIT: Duration = Duration::from_secs(5);
const DELETE_RETRY: Duration = Duration::from_millis(100);

/// `srv_admin_state` bits (HAProxy `enum srv_admin`).
const ADMF_FMAINT: u32 = 0x01;
const ADMF_IMAINT: u32 = 0x02;
const ADMF_FDRAIN: u32 = 0x08;
const ADMF_IDRAIN: u32 = 0x10;
const ADMF_RMAINT: u32 = 0x20;
const ADMF_HMAINT: u32 = 0x40;
/// In maintenance. `0x04` (CMAINT) only records that the configuration said `disabled`: a
/// `server-template … disabled` slot set ready shows 4 and takes traffic.
const MAINT_BITS: u32 = ADMF_FMAINT | ADMF_IMAINT | ADMF_RMAINT | ADMF_HMAINT;
const DRAIN_BITS: u32 = ADMF_FDRAIN | ADMF_IDRAIN;

/// Target for one HAProxy stats socket.
pub struct HaproxyRuntime {
    address: RuntimeAddress,
    mode: HaproxyServerMode,
    prefix: String,
    check: bool,
    timeout: Duration,
    /// Configured parameters per backend: HAProxy cannot report the NGINX-only ones.
    params: BTreeMap<String, ServerParams>,
}

impl std::fmt::Debug for HaproxyRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaproxyRuntime")
            .field("address", &self.address.to_string())
            .field("mode", &self.mode)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A managed server name, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Managed {
    /// `{prefix}{n}`: a `server-template` slot.
    Slot(u32),
    /// `{prefix}a-b-c-d-port`: a dynamic server.
    Dynamic,
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    id: u64,
    name: String,
    addr: String,
    port: u16,
    admin: u32,
}

impl Row {
    fn server(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }
    fn in_maint(&self) -> bool {
        self.admin & MAINT_BITS != 0
    }
    fn draining(&self) -> bool {
        self.admin & DRAIN_BITS != 0
    }
}

/// A reply: the severity HAProxy gave it (`set severity-output number`) and its text.
#[derive(Debug)]
struct Reply {
    severity: Option<u8>,
    text: String,
}

impl Reply {
    /// Emergency to error (0-3) are failures; warnings, notices and info are not.
    fn is_error(&self) -> bool {
        self.severity.is_some_and(|s| s <= 3)
    }
}

enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// One CLI session in prompt mode.
struct Conn<'a> {
    stream: Stream,
    timeout: Duration,
    target: &'a HaproxyRuntime,
    buf: Vec<u8>,
}

impl Conn<'_> {
    async fn send(&mut self, cmd: &str) -> Result<Reply, TargetError> {
        tracing::trace!(address = %self.target.address, command = cmd, "HAProxy Runtime API command");
        let line = format!("{cmd}\n");
        let io = async {
            match &mut self.stream {
                Stream::Unix(s) => s.write_all(line.as_bytes()).await?,
                Stream::Tcp(s) => s.write_all(line.as_bytes()).await?,
            }
            self.buf.clear();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                let n = match &mut self.stream {
                    Stream::Unix(s) => s.read(&mut chunk).await?,
                    Stream::Tcp(s) => s.read(&mut chunk).await?,
                };
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "HAProxy closed the connection",
                    ));
                }
                self.buf.extend_from_slice(&chunk[..n]);
                if self.buf.ends_with(b"\n> ") || self.buf == b"> " {
                    return Ok(());
                }
                if self.buf.len() > MAX_REPLY {
                    return Err(std::io::Error::other("reply too large"));
                }
            }
        };
        match tokio::time::timeout(self.timeout, io).await {
            Err(_) => Err(self.target.error(
                format!("{cmd}: no complete reply within {:?}", self.timeout),
                Permanence::Transient,
            )),
            Ok(Err(e)) => Err(self
                .target
                .error(format!("{cmd}: {e}"), Permanence::Transient)),
            Ok(Ok(())) => {
                let text = String::from_utf8_lossy(&self.buf);
                let body = text.strip_suffix("> ").unwrap_or(&text);
                Ok(parse_reply(body))
            }
        }
    }

    /// Sends a command that must not fail.
    async fn ok(&mut self, cmd: &str) -> Result<Reply, TargetError> {
        let r = self.send(cmd).await?;
        if r.is_error() {
            return Err(self
                .target
                .error(format!("{cmd}: {}", r.text), Permanence::Transient));
        }
        Ok(r)
    }

    /// `show servers state BACKEND`.
    async fn servers_state(&mut self, backend: &str) -> Result<Vec<Row>, TargetError> {
        let cmd = format!("show servers state {backend}");
        let r = self.send(&cmd).await?;
        if r.is_error() {
            let permanence = if r.text.contains("Can't find backend") {
                Permanence::Permanent
            } else {
                Permanence::Transient
            };
            return Err(self
                .target
                .error(format!("backend {backend}: {}", r.text.trim()), permanence));
        }
        parse_servers_state(&r.text).map_err(|e| {
            self.target
                .error(format!("{cmd}: {e}"), Permanence::Transient)
        })
    }

    /// `maxconn` of each server of a backend (`slim` of `show stat`; empty is 0).
    async fn maxconns(&mut self, backend: &str) -> Result<HashMap<String, u32>, TargetError> {
        let cmd = format!("show stat {backend} 4 -1");
        let r = self.ok(&cmd).await?;
        parse_stat_maxconn(&r.text).map_err(|e| {
            self.target
                .error(format!("{cmd}: {e}"), Permanence::Transient)
        })
    }
}

fn parse_reply(body: &str) -> Reply {
    let trimmed = body.trim_start_matches('\n');
    if let Some(rest) = trimmed.strip_prefix('[') {
        if let Some((num, text)) = rest.split_once("]: ") {
            if let Ok(severity) = num.parse::<u8>() {
                return Reply {
                    severity: Some(severity),
                    text: text.trim_end().to_string(),
                };
            }
        }
    }
    Reply {
        severity: None,
        text: body.to_string(),
    }
}

/// Parses `show servers state` (format version 1), by column name.
fn parse_servers_state(text: &str) -> Result<Vec<Row>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some("1") => {}
        Some(v) => return Err(format!("unknown state file format version {v:?}")),
        None => return Err("empty answer".into()),
    }
    let header: Vec<&str> = match lines.next() {
        Some(h) if h.starts_with('#') => h.trim_start_matches('#').split_whitespace().collect(),
        _ => return Err("no column header".into()),
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let (c_id, c_name, c_addr, c_admin, c_port) = (
        col("srv_id")?,
        col("srv_name")?,
        col("srv_addr")?,
        col("srv_admin_state")?,
        col("srv_port")?,
    );
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| {
            f.get(i)
                .copied()
                .ok_or_else(|| format!("short line {line:?}"))
        };
        rows.push(Row {
            id: get(c_id)?
                .parse()
                .map_err(|_| format!("bad srv_id in {line:?}"))?,
            name: get(c_name)?.to_string(),
            addr: get(c_addr)?.to_string(),
            port: get(c_port)?.parse().unwrap_or(0),
            admin: get(c_admin)?
                .parse()
                .map_err(|_| format!("bad srv_admin_state in {line:?}"))?,
        });
    }
    Ok(rows)
}

/// Server name → `slim` (maxconn; empty means none, 0) from `show stat` CSV.
fn parse_stat_maxconn(text: &str) -> Result<HashMap<String, u32>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = match lines.next() {
        Some(h) if h.starts_with("# ") => h[2..].split(',').collect(),
        _ => return Err("no CSV header".into()),
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("no column {name}"))
    };
    let (c_sv, c_slim) = (col("svname")?, col("slim")?);
    let mut out = HashMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if let (Some(sv), Some(slim)) = (f.get(c_sv), f.get(c_slim)) {
            out.insert(sv.to_string(), slim.parse().unwrap_or(0));
        }
    }
    Ok(out)
}

/// `{prefix}10-0-0-4-80` for `10.0.0.4:80`.
fn dynamic_name(prefix: &str, addr: SocketAddrV4) -> String {
    format!(
        "{prefix}{}-{}",
        addr.ip().to_string().replace('.', "-"),
        addr.port()
    )
}

fn managed(prefix: &str, name: &str) -> Option<Managed> {
    let rest = name.strip_prefix(prefix)?;
    if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
        return rest.parse().ok().map(Managed::Slot);
    }
    let parts: Vec<&str> = rest.split('-').collect();
    if parts.len() != 5 {
        return None;
    }
    let ip: Ipv4Addr = parts[..4].join(".").parse().ok()?;
    let port: u16 = parts[4].parse().ok()?;
    (dynamic_name(prefix, SocketAddrV4::new(ip, port)) == name).then_some(Managed::Dynamic)
}

/// HAProxy proxy names: letters, digits, `-`, `_`, `.` and `:`. Anything else could change
/// the meaning of a CLI command (`;` separates commands), so such names are refused.
fn check_backend_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn parse_version(info: &str) -> Option<(u32, u32)> {
    let v = info.lines().find_map(|l| l.strip_prefix("Version: "))?;
    let mut it = v.trim().split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl HaproxyRuntime {
    /// Builds a target. `params` are the configured server parameters per backend name.
    pub fn new(
        address: RuntimeAddress,
        mode: HaproxyServerMode,
        prefix: impl Into<String>,
        check: bool,
        timeout: Duration,
        params: BTreeMap<String, ServerParams>,
    ) -> Self {
        Self {
            address,
            mode,
            prefix: prefix.into(),
            check,
            timeout,
            params,
        }
    }

    fn error(&self, message: String, permanence: Permanence) -> TargetError {
        TargetError {
            message: format!("HAProxy Runtime API {}: {message}", self.address),
            permanence,
        }
    }

    async fn connect(&self) -> Result<Conn<'_>, TargetError> {
        let connect = async {
            Ok::<_, std::io::Error>(match &self.address {
                RuntimeAddress::Unix(p) => Stream::Unix(tokio::net::UnixStream::connect(p).await?),
                RuntimeAddress::Tcp(a) => Stream::Tcp(tokio::net::TcpStream::connect(a).await?),
            })
        };
        let stream = match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                    std::io::ErrorKind::NotFound => "no such socket".to_string(),
                    std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                    _ => e.to_string(),
                };
                return Err(self.error(format!("cannot connect: {why}"), Permanence::Transient));
            }
            Err(_) => {
                return Err(self.error("cannot connect: timed out".into(), Permanence::Transient))
            }
        };
        let mut conn = Conn {
            stream,
            timeout: self.timeout,
            target: self,
            buf: Vec::new(),
        };
        conn.send("prompt").await?;
        conn.ok("set severity-output number").await?;
        Ok(conn)
    }

    fn backend<'u>(&self, upstream: &'u UpstreamRef) -> Result<&'u str, TargetError> {
        if check_backend_name(&upstream.name) {
            Ok(&upstream.name)
        } else {
            Err(self.error(
                format!(
                    "backend name {:?}: HAProxy names are letters, digits, -, _, . and :",
                    upstream.name
                ),
                Permanence::Permanent,
            ))
        }
    }

    fn uses_slots(&self, rows: &[Row]) -> bool {
        match self.mode {
            HaproxyServerMode::Slots => true,
            HaproxyServerMode::Dynamic => false,
            HaproxyServerMode::Auto => rows
                .iter()
                .any(|r| matches!(managed(&self.prefix, &r.name), Some(Managed::Slot(_)))),
        }
    }

    fn observed(
        &self,
        backend: &str,
        rows: &[Row],
        maxconn: &HashMap<String, u32>,
    ) -> Vec<ObservedServer> {
        let configured = self.params.get(backend);
        rows.iter()
            .filter_map(|r| {
                let kind = managed(&self.prefix, &r.name)?;
                let state = match kind {
                    // A slot in maintenance is free.
                    Managed::Slot(_) if r.in_maint() => return None,
                    Managed::Slot(_) if r.draining() => ServerState::Draining,
                    Managed::Slot(_) => ServerState::Active,
                    Managed::Dynamic if r.in_maint() || r.draining() => ServerState::Draining,
                    Managed::Dynamic => ServerState::Active,
                };
                Some(ObservedServer {
                    id: r.id,
                    server: r.server(),
                    params: configured.map(|p| ServerParams {
                        max_conns: maxconn.get(&r.name).copied().unwrap_or(0),
                        ..*p
                    }),
                    state,
                })
            })
            .collect()
    }

    /// The row planned as `id`, if it still holds `server` (HAProxy reloads renumber).
    fn row<'r>(&self, rows: &'r [Row], id: u64, server: &str) -> Result<&'r Row, TargetError> {
        rows.iter()
            .find(|r| {
                r.id == id && r.server() == server && managed(&self.prefix, &r.name).is_some()
            })
            .ok_or_else(|| {
                self.error(
                    format!(
                        "server {server} (id {id}) changed since it was read; retried next cycle"
                    ),
                    Permanence::Transient,
                )
            })
    }

    async fn add_dynamic(
        &self,
        conn: &mut Conn<'_>,
        backend: &str,
        addr: SocketAddrV4,
        params: &ServerParams,
    ) -> Result<(), TargetError> {
        let name = dynamic_name(&self.prefix, addr);
        let mut cmd = format!("add server {backend}/{name} {addr}");
        if params.max_conns > 0 {
            cmd.push_str(&format!(" maxconn {}", params.max_conns));
        }
        if self.check {
            cmd.push_str(" check");
        }
        let r = conn.send(&cmd).await?;
        if r.is_error() {
            if r.text.contains("Already exists") {
                // A leftover of ours under the name this address maps to: repoint it.
                conn.ok(&format!(
                    "set server {backend}/{name} addr {} port {}",
                    addr.ip(),
                    addr.port()
                ))
                .await?;
                conn.ok(&format!(
                    "set maxconn server {backend}/{name} {}",
                    params.max_conns
                ))
                .await?;
            } else {
                let hint = if r.text.contains("dynamic load balancing") {
                    " (use a dynamic balance algorithm such as roundrobin or leastconn, or \
                     declare slots: server-template PREFIX 1-N 127.0.0.1:1 disabled)"
                } else {
                    ""
                };
                return Err(self.error(
                    format!("{cmd}: {}{hint}", r.text),
                    if hint.is_empty() {
                        Permanence::Transient
                    } else {
                        Permanence::Permanent
                    },
                ));
            }
        }
        if self.check {
            conn.ok(&format!("enable health {backend}/{name}")).await?;
        }
        conn.ok(&format!("set server {backend}/{name} state ready"))
            .await?;
        Ok(())
    }

    async fn fill_slot(
        &self,
        conn: &mut Conn<'_>,
        backend: &str,
        slot: &str,
        addr: SocketAddrV4,
        params: &ServerParams,
    ) -> Result<(), TargetError> {
        conn.ok(&format!(
            "set server {backend}/{slot} addr {} port {}",
            addr.ip(),
            addr.port()
        ))
        .await?;
        conn.ok(&format!(
            "set maxconn server {backend}/{slot} {}",
            params.max_conns
        ))
        .await?;
        conn.ok(&format!("set server {backend}/{slot} state ready"))
            .await?;
        Ok(())
    }

    /// `del server`, waiting a little while HAProxy still holds connections to it.
    async fn delete(
        &self,
        conn: &mut Conn<'_>,
        backend: &str,
        name: &str,
        deadline: tokio::time::Instant,
    ) -> Result<(), TargetError> {
        let cmd = format!("del server {backend}/{name}");
        loop {
            let r = conn.send(&cmd).await?;
            if !r.is_error() {
                return Ok(());
            }
            if r.text.contains("No such server") {
                return Ok(());
            }
            let busy = r.text.contains("connections attached");
            if !busy || tokio::time::Instant::now() >= deadline {
                let more = if busy {
                    "; it stays in maintenance (no new traffic) and is deleted by a later cycle"
                } else {
                    ""
                };
                return Err(self.error(format!("{cmd}: {}{more}", r.text), Permanence::Transient));
            }
            tokio::time::sleep(DELETE_RETRY).await;
        }
    }
}

#[async_trait]
impl Target for HaproxyRuntime {
    fn kind(&self) -> &'static str {
        "haproxy-runtime"
    }

    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        let backend = self.backend(upstream)?;
        let mut conn = self.connect().await?;
        let level = conn.ok("show cli level").await?;
        if level.text.trim() != "admin" {
            return Err(self.error(
                format!(
                    "the stats socket is at level {:?}; vmss-sync needs `level admin`",
                    level.text.trim()
                ),
                Permanence::Permanent,
            ));
        }
        let rows = conn.servers_state(backend).await?;
        let has_slots = rows
            .iter()
            .any(|r| matches!(managed(&self.prefix, &r.name), Some(Managed::Slot(_))));
        if self.mode == HaproxyServerMode::Slots && !has_slots {
            return Err(self.error(
                format!(
                    "backend {backend} has no slots named {}1, {}2, …: declare them with \
                     server-template {} 1-N 127.0.0.1:1 disabled",
                    self.prefix, self.prefix, self.prefix
                ),
                Permanence::Permanent,
            ));
        }
        if !self.uses_slots(&rows) {
            let info = conn.ok("show info").await?;
            if let Some((major, minor)) = parse_version(&info.text) {
                if (major, minor) < (2, 6) {
                    return Err(self.error(
                        format!(
                            "backend {backend}: HAProxy {major}.{minor} has no dynamic servers \
                             (2.6 and later): declare slots with server-template {} 1-N \
                             127.0.0.1:1 disabled",
                            self.prefix
                        ),
                        Permanence::Permanent,
                    ));
                }
            }
        }
        Ok(())
    }

    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        let backend = self.backend(upstream)?;
        let mut conn = self.connect().await?;
        let rows = conn.servers_state(backend).await?;
        let maxconn = conn.maxconns(backend).await?;
        Ok(self.observed(backend, &rows, &maxconn))
    }

    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        let opened = async {
            let backend = self.backend(upstream)?;
            let mut conn = self.connect().await?;
            let rows = conn.servers_state(backend).await?;
            Ok::<_, TargetError>((backend, conn, rows))
        };
        let (backend, mut conn, rows) = match opened.await {
            Ok(x) => x,
            Err(e) => {
                report.errors.push(e);
                return report;
            }
        };
        let slots = self.uses_slots(&rows);
        let mut free: Vec<(u32, &Row)> = rows
            .iter()
            .filter_map(|r| match managed(&self.prefix, &r.name) {
                Some(Managed::Slot(n)) if r.in_maint() => Some((n, r)),
                _ => None,
            })
            .collect();
        free.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let in_use = rows
            .iter()
            .filter(|r| matches!(managed(&self.prefix, &r.name), Some(Managed::Slot(_))))
            .count()
            - free.len();

        for (server, params) in &plan.add {
            let res = match server.parse::<SocketAddrV4>() {
                Err(_) => Err(self.error(
                    format!("{server} is not an IPv4 address and port"),
                    Permanence::Permanent,
                )),
                Ok(addr) if slots => match free.pop() {
                    Some((_, slot)) => {
                        self.fill_slot(&mut conn, backend, &slot.name, addr, params)
                            .await
                    }
                    None => Err(self.error(
                        format!(
                            "backend {backend} has no free slot for {server} ({in_use} slots in \
                             use): declare more with server-template {} 1-N 127.0.0.1:1 disabled",
                            self.prefix
                        ),
                        Permanence::Transient,
                    )),
                },
                Ok(addr) => self.add_dynamic(&mut conn, backend, addr, params).await,
            };
            match res {
                Ok(()) => report.added.push(server.clone()),
                Err(e) => report.errors.push(e),
            }
        }

        for u in &plan.update {
            let res = async {
                let row = self.row(&rows, u.id, &u.server)?;
                if let Some(p) = &u.params {
                    conn.ok(&format!(
                        "set maxconn server {backend}/{} {}",
                        row.name, p.max_conns
                    ))
                    .await?;
                }
                let want = match u.state {
                    ServerState::Draining => Some("drain"),
                    ServerState::Active if u.was == ServerState::Draining || row.in_maint() => {
                        Some("ready")
                    }
                    ServerState::Active => None,
                };
                if let Some(state) = want {
                    conn.ok(&format!("set server {backend}/{} state {state}", row.name))
                        .await?;
                }
                Ok::<_, TargetError>(())
            }
            .await;
            match res {
                Ok(()) if u.state == ServerState::Draining => report.drained.push(u.server.clone()),
                Ok(()) => report.updated.push(u.server.clone()),
                Err(e) => report.errors.push(e),
            }
        }

        // Every leaving server goes to maintenance first, then the dynamic ones are deleted,
        // so that one server's connections do not hold back the others.
        let mut to_delete = Vec::new();
        for r in &plan.remove {
            let res = async {
                let row = self.row(&rows, r.id, &r.server)?;
                conn.ok(&format!("set server {backend}/{} state maint", row.name))
                    .await?;
                Ok::<_, TargetError>(row)
            }
            .await;
            match res {
                Ok(row) => match managed(&self.prefix, &row.name) {
                    Some(Managed::Dynamic) => to_delete.push((r.server.clone(), row.name.clone())),
                    _ => report.removed.push(r.server.clone()),
                },
                Err(e) => report.errors.push(e),
            }
        }
        let deadline = tokio::time::Instant::now() + DELETE_WAIT.min(self.timeout);
        for (server, name) in to_delete {
            match self.delete(&mut conn, backend, &name, deadline).await {
                Ok(()) => report.removed.push(server),
                Err(e) => report.errors.push(e),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 be_rr 1 cfg1 127.0.0.1 2 0 1 1 437 1 0 2 0 0 0 0 - 19001 - 0 0 - - 0\n\
3 be_rr 2 vmss-10-0-0-4-80 10.0.0.4 2 0 1 1 437 1 0 0 0 0 0 0 - 80 - 0 0 - - 0\n\
3 be_rr 3 vmss-10-0-0-5-80 10.0.0.5 0 1 1 1 0 1 0 0 6 0 0 0 - 80 - 0 0 - - 0\n\
3 be_rr 4 vmss-10-0-0-6-80 10.0.0.6 2 8 1 1 0 1 0 2 6 0 0 0 - 80 - 0 0 - - 0\n\
3 be_rr 5 vmss-1 10.0.0.7 2 4 1 1 0 1 0 2 6 0 0 0 - 80 - 0 0 - - 0\n\
3 be_rr 6 vmss-2 127.0.0.1 0 5 1 1 0 1 0 2 6 0 0 0 - 1 - 0 0 - - 0\n\n";

    fn target() -> HaproxyRuntime {
        HaproxyRuntime::new(
            RuntimeAddress::Unix("/nonexistent".into()),
            HaproxyServerMode::Auto,
            "vmss-",
            false,
            Duration::from_secs(1),
            BTreeMap::from([(
                "be_rr".to_string(),
                ServerParams {
                    max_conns: 0,
                    max_fails: 3,
                    fail_timeout: Duration::from_secs(7),
                    slow_start: Duration::ZERO,
                },
            )]),
        )
    }

    #[test]
    fn names_are_derived_from_the_address_and_parsed_back() {
        let a: SocketAddrV4 = "10.0.0.4:80".parse().unwrap();
        assert_eq!(dynamic_name("vmss-", a), "vmss-10-0-0-4-80");
        assert_eq!(managed("vmss-", "vmss-10-0-0-4-80"), Some(Managed::Dynamic));
        assert_eq!(managed("vmss-", "vmss-12"), Some(Managed::Slot(12)));
        assert_eq!(managed("vmss-", "vmss-"), None);
        assert_eq!(managed("vmss-", "cfg1"), None);
        assert_eq!(managed("vmss-", "vmss-10-0-0-400-80"), None);
        assert_eq!(
            managed("vmss-", "vmss-010-0-0-4-80"),
            None,
            "not a name we make"
        );
        assert_eq!(managed("srv", "srv3"), Some(Managed::Slot(3)));
    }

    #[test]
    fn servers_state_is_read_by_column_name() {
        let rows = parse_servers_state(STATE).unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[1].name, "vmss-10-0-0-4-80");
        assert_eq!(rows[1].server(), "10.0.0.4:80");
        assert_eq!(rows[2].admin, 1);
        assert!(parse_servers_state("2\n# x\n").is_err());
        assert!(parse_servers_state("").is_err());
    }

    #[test]
    fn only_managed_servers_are_observed_and_free_slots_are_skipped() {
        let rows = parse_servers_state(STATE).unwrap();
        let maxconn = HashMap::from([("vmss-10-0-0-4-80".to_string(), 50)]);
        let t = target();
        let seen = t.observed("be_rr", &rows, &maxconn);
        let summary: Vec<(u64, &str, ServerState)> = seen
            .iter()
            .map(|o| (o.id, o.server.as_str(), o.state))
            .collect();
        assert_eq!(
            summary,
            vec![
                (2, "10.0.0.4:80", ServerState::Active),
                // in maintenance: a half-done add or remove
                (3, "10.0.0.5:80", ServerState::Draining),
                (4, "10.0.0.6:80", ServerState::Draining),
                // admin state 4: configured `disabled`, then set ready: in use
                (5, "10.0.0.7:80", ServerState::Active),
            ]
        );
        let p = seen[0].params.unwrap();
        assert_eq!(p.max_conns, 50, "read back from show stat");
        assert_eq!(
            p.max_fails, 3,
            "not an HAProxy setting: the configured value"
        );
        assert!(t.uses_slots(&rows), "auto mode with slots present");
    }

    #[test]
    fn replies_are_split_by_severity() {
        let r = parse_reply("[3]: No such server.\n\n");
        assert!(r.is_error());
        assert_eq!(r.text, "No such server.");
        let r = parse_reply("[4]: IP changed from '127.0.0.1' to '127.0.0.5'\n\n");
        assert!(!r.is_error());
        let r = parse_reply("\n");
        assert!(!r.is_error());
        assert_eq!(r.severity, None);
    }

    #[test]
    fn stat_csv_gives_maxconn() {
        let csv =
            "# pxname,svname,qcur,qmax,scur,smax,slim,stot\nbe,a,0,0,0,0,,0\nbe,b,0,0,0,0,25,0\n";
        let m = parse_stat_maxconn(csv).unwrap();
        assert_eq!(m["a"], 0);
        assert_eq!(m["b"], 25);
    }

    #[test]
    fn backend_names_that_could_change_a_command_are_refused() {
        assert!(check_backend_name("be_web-1.x:y"));
        assert!(!check_backend_name("a;del server x/y"));
        assert!(!check_backend_name("a b"));
        assert!(!check_backend_name(""));
    }

    #[test]
    fn version_is_read_from_show_info() {
        assert_eq!(
            parse_version("Name: HAProxy\nVersion: 2.6.12-1+deb12u4\n"),
            Some((2, 6))
        );
        assert_eq!(parse_version("Version: 1.8.30\n"), Some((1, 8)));
        assert_eq!(parse_version("nothing"), None);
    }
}
