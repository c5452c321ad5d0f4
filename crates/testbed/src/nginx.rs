//! Fake NGINX Plus REST API (upstream server configuration), per the official OpenAPI
//! spec (`nginx-plus-api.yaml`, basePath `/api/9`) and the behaviour observed by the
//! official Go client (nginx-plus-go-client).
//!
//! Served under `/api` (self-managed NGINX Plus) and `/nplus` (NGINXaaS data plane).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::util::{hex, lock, Reply, Req};

const HREF: &str = "https://nginx.org/en/docs/http/ngx_http_api_module.html";
/// `route` longer than this is refused (UpstreamBadRoute), as in NGINX.
const MAX_ROUTE_LEN: usize = 32;

/// HTTP or stream upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamKind {
    Http,
    Stream,
}

impl UpstreamKind {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Http => "http",
            UpstreamKind::Stream => "stream",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Server {
    id: u64,
    server: String,
    service: Option<String>,
    weight: i64,
    max_conns: i64,
    max_fails: i64,
    /// Seconds.
    fail_timeout: u64,
    /// Seconds.
    slow_start: u64,
    route: String,
    backup: bool,
    down: bool,
    drain: bool,
}

/// Output form of a server (field order as NGINX prints it).
///
/// Times: NGINX parses `fail_timeout`/`slow_start` with `ngx_parse_time(.., is_sec=1)` into
/// whole seconds and prints them back as `"<n>s"`. So `"1m"` is echoed as `"60s"`, `"0"`
/// as `"0s"`, and the defaults are `"10s"` and `"0s"` — exactly the defaults the official
/// Go client compares against (`defaultFailTimeout = "10s"`, `defaultSlowStart = "0s"`).
/// Millisecond values ("500ms") are refused, as `is_sec` parsing refuses them.
#[derive(Serialize)]
struct ServerOut<'a> {
    id: u64,
    server: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<&'a str>,
    weight: i64,
    max_conns: i64,
    max_fails: i64,
    fail_timeout: String,
    slow_start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    route: Option<&'a str>,
    backup: bool,
    down: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain: Option<bool>,
}

#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    kind: UpstreamKind,
    name: String,
    dynamic: bool,
    next_id: u64,
    servers: BTreeMap<u64, Server>,
}

impl Upstream {
    fn render(&self, s: &Server) -> Value {
        serde_json::to_value(self.out(s)).unwrap_or(Value::Null)
    }

    /// One server as a JSON body, in NGINX's field order.
    fn body(&self, s: &Server) -> Vec<u8> {
        serde_json::to_vec(&self.out(s)).unwrap_or_default()
    }

    fn out<'a>(&self, s: &'a Server) -> ServerOut<'a> {
        let http = self.kind == UpstreamKind::Http;
        ServerOut {
            id: s.id,
            server: &s.server,
            service: s.service.as_deref(),
            weight: s.weight,
            max_conns: s.max_conns,
            max_fails: s.max_fails,
            fail_timeout: format!("{}s", s.fail_timeout),
            slow_start: format!("{}s", s.slow_start),
            route: http.then_some(s.route.as_str()),
            backup: s.backup,
            down: s.down,
            drain: (http && s.drain).then_some(true),
        }
    }

    fn list_body(&self) -> Vec<u8> {
        let v: Vec<ServerOut> = self.servers.values().map(|s| self.out(s)).collect();
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

#[derive(Debug, Default)]
pub(crate) struct NginxState {
    upstreams: HashMap<(UpstreamKind, String), Upstream>,
}

impl NginxState {
    /// Every upstream loses the servers added through the API (a restart of NGINX Plus
    /// without a state file); ids start again from 0.
    pub(crate) fn lose_servers(&mut self) {
        for u in self.upstreams.values_mut() {
            u.servers.clear();
            u.next_id = 0;
        }
    }
}

/// Cheap, cloneable handle to the fake NGINX Plus.
#[derive(Clone)]
pub struct NginxPlus {
    pub(crate) state: Arc<Mutex<NginxState>>,
}

impl NginxPlus {
    /// Adds (or resets) a dynamic upstream: one with a shared memory `zone`.
    pub fn add_upstream(&self, kind: UpstreamKind, name: &str) {
        self.add(kind, name, true);
    }

    /// Adds an upstream without a zone: the API answers 400 UpstreamStatic for it.
    pub fn add_static_upstream(&self, kind: UpstreamKind, name: &str) {
        self.add(kind, name, false);
    }

    fn add(&self, kind: UpstreamKind, name: &str, dynamic: bool) {
        lock(&self.state).upstreams.insert(
            (kind, name.to_string()),
            Upstream {
                kind,
                name: name.to_string(),
                dynamic,
                next_id: 0,
                servers: BTreeMap::new(),
            },
        );
    }

    /// Exactly what `GET .../upstreams/{name}/servers` would return (empty if the upstream
    /// does not exist or is static).
    pub fn servers(&self, kind: UpstreamKind, name: &str) -> Vec<Value> {
        let st = lock(&self.state);
        match st.upstreams.get(&(kind, name.to_string())) {
            Some(u) if u.dynamic => u.servers.values().map(|s| u.render(s)).collect(),
            _ => Vec::new(),
        }
    }

    /// The `server` addresses of the upstream, sorted (convenience for assertions).
    pub fn server_addresses(&self, kind: UpstreamKind, name: &str) -> Vec<String> {
        let st = lock(&self.state);
        let mut v: Vec<String> = st
            .upstreams
            .get(&(kind, name.to_string()))
            .map(|u| u.servers.values().map(|s| s.server.clone()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Adds a server as if someone else POSTed it; returns its id. Panics if NGINX would
    /// refuse it (test misuse).
    pub fn insert_server(&self, kind: UpstreamKind, name: &str, server: Value) -> u64 {
        let mut st = lock(&self.state);
        let Some(u) = st.upstreams.get_mut(&(kind, name.to_string())) else {
            panic!("vmss-testbed: no {} upstream {name:?}", kind.as_str());
        };
        match post_server(u, &server) {
            Ok(id) => id,
            Err(e) => panic!("vmss-testbed: insert_server refused: {} {}", e.code, e.text),
        }
    }
}

pub(crate) struct NgxErr {
    status: u16,
    code: &'static str,
    text: String,
}

fn err(status: u16, code: &'static str, text: impl Into<String>) -> NgxErr {
    NgxErr {
        status,
        code,
        text: text.into(),
    }
}

pub(crate) fn error_reply(status: u16, code: &str, text: &str) -> Reply {
    Reply::json(
        status,
        &json!({
            "error": {"status": status, "text": text, "code": code},
            "request_id": hex(&fastrand::u128(..).to_be_bytes()),
            "href": HREF,
        }),
    )
}

impl From<NgxErr> for Reply {
    fn from(e: NgxErr) -> Reply {
        error_reply(e.status, e.code, &e.text)
    }
}

/// Parses an NGINX time with `is_sec` semantics: units y M w d h m s (no ms), components in
/// decreasing order, optional spaces, a bare number means seconds.
pub(crate) fn parse_time_secs(s: &str) -> Option<u64> {
    // step index of each unit, largest first
    const UNITS: [(char, u64); 7] = [
        ('y', 365 * 86_400),
        ('M', 30 * 86_400),
        ('w', 7 * 86_400),
        ('d', 86_400),
        ('h', 3600),
        ('m', 60),
        ('s', 1),
    ];
    let mut total: u64 = 0;
    let mut value: Option<u64> = None;
    let mut last_step: usize = 0;
    let mut any = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(d) = c.to_digit(10) {
            value = Some(value.unwrap_or(0).checked_mul(10)?.checked_add(d as u64)?);
            continue;
        }
        if c == ' ' {
            if value.is_some() {
                return None;
            }
            continue;
        }
        if c == 'm' && chars.peek() == Some(&'s') {
            return None; // milliseconds are not allowed for second-precision times
        }
        let step = UNITS.iter().position(|(u, _)| *u == c)? + 1;
        if step <= last_step {
            return None;
        }
        last_step = step;
        let v = value.take()?;
        total = total.checked_add(v.checked_mul(UNITS[step - 1].1)?)?;
        any = true;
    }
    if let Some(v) = value {
        if last_step >= 7 {
            return None;
        }
        total = total.checked_add(v)?;
        any = true;
    }
    if !any || total > i32::MAX as u64 {
        return None;
    }
    Some(total)
}

enum Addr {
    Ok(String),
    NeedsResolver(String),
    Bad(String),
}

/// Parses an upstream `server` address like ngx_parse_url with default port 80.
fn parse_address(raw: &str) -> Addr {
    let bad = |why: &str| Addr::Bad(format!("{why} while parsing \"{raw}\""));
    if raw.is_empty() {
        return bad("no host");
    }
    if let Some(path) = raw.strip_prefix("unix:") {
        return if path.is_empty() {
            bad("no path in the unix domain socket")
        } else {
            Addr::Ok(raw.to_string())
        };
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((h, tail)) = rest.split_once(']') else {
            return bad("invalid IPv6 address");
        };
        if h.parse::<Ipv6Addr>().is_err() {
            return bad("invalid IPv6 address");
        }
        let port = match tail {
            "" => None,
            t => match t.strip_prefix(':') {
                Some(p) => Some(p),
                None => return bad("invalid host"),
            },
        };
        (format!("[{h}]"), port)
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (raw.to_string(), None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) && !p.starts_with('+') => n,
            _ => return bad("invalid port"),
        },
    };
    if host.is_empty() {
        return bad("no host");
    }
    if host.starts_with('[') {
        return Addr::Ok(format!("{host}:{port}"));
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return match host.parse::<Ipv4Addr>() {
            Ok(ip) => Addr::Ok(format!("{ip}:{port}")),
            Err(_) => bad("invalid host"),
        };
    }
    let dns_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if dns_ok {
        Addr::NeedsResolver(host)
    } else {
        bad("invalid host")
    }
}

/// Parameters accepted in a POST/PATCH body, after validation.
#[derive(Default)]
struct Params {
    server: Option<String>,
    service: Option<String>,
    weight: Option<i64>,
    max_conns: Option<i64>,
    max_fails: Option<i64>,
    fail_timeout: Option<u64>,
    slow_start: Option<u64>,
    route: Option<String>,
    backup: Option<bool>,
    down: Option<bool>,
    drain: Option<bool>,
}

fn bad_value(name: &str) -> NgxErr {
    err(
        400,
        "UpstreamConfFormatError",
        format!("invalid \"{name}\" value"),
    )
}

fn parse_params(kind: UpstreamKind, body: &Value) -> Result<Params, NgxErr> {
    let Some(obj) = body.as_object() else {
        return Err(err(400, "UpstreamConfFormatError", "nested object or list"));
    };
    let mut p = Params::default();
    for (k, v) in obj {
        if v.is_object() || v.is_array() {
            return Err(err(400, "UpstreamConfFormatError", "nested object or list"));
        }
        let int = |name: &str| -> Result<i64, NgxErr> {
            match v.as_i64() {
                Some(n) if v.is_i64() || v.is_u64() => Ok(n),
                _ => Err(bad_value(name)),
            }
        };
        let boolean = |name: &str| v.as_bool().ok_or_else(|| bad_value(name));
        let string = |name: &str| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad_value(name))
        };
        match (k.as_str(), kind) {
            ("server", _) => p.server = Some(string("server")?),
            ("service", _) => p.service = Some(string("service")?),
            ("weight", _) => {
                let n = int("weight")?;
                if !(1..=i32::MAX as i64).contains(&n) {
                    return Err(err(400, "UpstreamBadWeight", "invalid \"weight\""));
                }
                p.weight = Some(n);
            }
            ("max_conns", _) => {
                let n = int("max_conns")?;
                if !(0..=i32::MAX as i64).contains(&n) {
                    return Err(err(400, "UpstreamBadMaxConns", "invalid \"max_conns\""));
                }
                p.max_conns = Some(n);
            }
            ("max_fails", _) => {
                let n = int("max_fails")?;
                if !(0..=i32::MAX as i64).contains(&n) {
                    return Err(err(400, "UpstreamBadMaxFails", "invalid \"max_fails\""));
                }
                p.max_fails = Some(n);
            }
            ("fail_timeout", _) => {
                let s = string("fail_timeout")?;
                p.fail_timeout = Some(parse_time_secs(&s).ok_or_else(|| {
                    err(400, "UpstreamBadFailTimeout", "invalid \"fail_timeout\"")
                })?);
            }
            ("slow_start", _) => {
                let s = string("slow_start")?;
                p.slow_start =
                    Some(parse_time_secs(&s).ok_or_else(|| {
                        err(400, "UpstreamBadSlowStart", "invalid \"slow_start\"")
                    })?);
            }
            ("route", UpstreamKind::Http) => {
                let s = string("route")?;
                if s.len() > MAX_ROUTE_LEN {
                    return Err(err(400, "UpstreamBadRoute", "route is too long"));
                }
                p.route = Some(s);
            }
            ("backup", _) => p.backup = Some(boolean("backup")?),
            ("down", _) => p.down = Some(boolean("down")?),
            ("drain", UpstreamKind::Http) => p.drain = Some(boolean("drain")?),
            (other, _) => {
                return Err(err(
                    400,
                    "UpstreamConfFormatError",
                    format!("unknown parameter \"{other}\""),
                ))
            }
        }
    }
    Ok(p)
}

fn parse_json(body: &[u8]) -> Result<Value, NgxErr> {
    serde_json::from_slice(body).map_err(|_| err(415, "JsonError", "json error"))
}

fn post_server(u: &mut Upstream, body: &Value) -> Result<u64, NgxErr> {
    let p = parse_params(u.kind, body)?;
    let Some(raw) = p.server else {
        return Err(err(
            400,
            "UpstreamConfFormatError",
            "missing \"server\" argument",
        ));
    };
    if let Some(svc) = &p.service {
        if svc.is_empty() {
            return Err(err(400, "UpstreamBadService", "\"service\" is empty"));
        }
    }
    let server = match parse_address(&raw) {
        Addr::Ok(s) => s,
        Addr::Bad(text) => return Err(err(400, "UpstreamBadAddress", text)),
        Addr::NeedsResolver(host) => {
            // The fake has no `resolver` directive configured.
            return Err(err(
                400,
                "UpstreamConfNoResolver",
                format!("no resolver defined to resolve {host}"),
            ));
        }
    };
    if u.servers.values().any(|s| s.server == server) {
        return Err(err(409, "EntryExists", "entry exists"));
    }
    let id = u.next_id;
    u.next_id += 1;
    u.servers.insert(
        id,
        Server {
            id,
            server,
            service: p.service,
            weight: p.weight.unwrap_or(1),
            max_conns: p.max_conns.unwrap_or(0),
            max_fails: p.max_fails.unwrap_or(1),
            fail_timeout: p.fail_timeout.unwrap_or(10),
            slow_start: p.slow_start.unwrap_or(0),
            route: p.route.unwrap_or_default(),
            backup: p.backup.unwrap_or(false),
            down: p.down.unwrap_or(false),
            drain: p.drain.unwrap_or(false),
        },
    );
    Ok(id)
}

fn patch_server(u: &mut Upstream, id: u64, body: &Value) -> Result<(), NgxErr> {
    let p = parse_params(u.kind, body)?;
    let Some(s) = u.servers.get_mut(&id) else {
        return Err(not_found_server(id));
    };
    if let Some(raw) = &p.server {
        let same = match parse_address(raw) {
            Addr::Ok(a) => a == s.server,
            Addr::NeedsResolver(_) => false,
            Addr::Bad(text) => return Err(err(400, "UpstreamBadAddress", text)),
        };
        if !same {
            return Err(err(
                400,
                "UpstreamServerImmutable",
                format!("server \"{id}\" address is immutable"),
            ));
        }
    }
    if let Some(b) = p.backup {
        if b != s.backup {
            return Err(err(
                400,
                "UpstreamServerImmutable",
                format!("server \"{id}\" backup is immutable"),
            ));
        }
    }
    if let Some(svc) = &p.service {
        if Some(svc) != s.service.as_ref() {
            return Err(err(
                400,
                "UpstreamServerImmutable",
                format!("server \"{id}\" service is immutable"),
            ));
        }
    }
    if let Some(v) = p.weight {
        s.weight = v;
    }
    if let Some(v) = p.max_conns {
        s.max_conns = v;
    }
    if let Some(v) = p.max_fails {
        s.max_fails = v;
    }
    if let Some(v) = p.fail_timeout {
        s.fail_timeout = v;
    }
    if let Some(v) = p.slow_start {
        s.slow_start = v;
    }
    if let Some(v) = p.route {
        s.route = v;
    }
    if let Some(v) = p.down {
        s.down = v;
    }
    if let Some(v) = p.drain {
        s.drain = v;
    }
    Ok(())
}

fn not_found_server(id: u64) -> NgxErr {
    err(
        404,
        "UpstreamServerNotFound",
        format!("server with ID \"{id}\" does not exist"),
    )
}

fn peer_status(u: &Upstream, s: &Server) -> Value {
    let state = if s.down {
        "down"
    } else if s.drain {
        "draining"
    } else {
        "up"
    };
    let mut m = Map::new();
    m.insert("id".into(), json!(s.id));
    m.insert("server".into(), json!(s.server));
    m.insert("name".into(), json!(s.server));
    m.insert("backup".into(), json!(s.backup));
    m.insert("weight".into(), json!(s.weight));
    m.insert("state".into(), json!(state));
    m.insert("active".into(), json!(0));
    if s.max_conns > 0 {
        m.insert("max_conns".into(), json!(s.max_conns));
    }
    match u.kind {
        UpstreamKind::Http => {
            m.insert("requests".into(), json!(0));
            m.insert(
                "responses".into(),
                json!({"1xx":0,"2xx":0,"3xx":0,"4xx":0,"5xx":0,"codes":{},"total":0}),
            );
        }
        UpstreamKind::Stream => {
            m.insert("connections".into(), json!(0));
        }
    }
    m.insert("sent".into(), json!(0));
    m.insert("received".into(), json!(0));
    m.insert("fails".into(), json!(0));
    m.insert("unavail".into(), json!(0));
    m.insert(
        "health_checks".into(),
        json!({"checks":0,"fails":0,"unhealthy":0}),
    );
    m.insert("downtime".into(), json!(0));
    Value::Object(m)
}

fn upstream_status(u: &Upstream) -> Value {
    let peers: Vec<Value> = u.servers.values().map(|s| peer_status(u, s)).collect();
    match u.kind {
        UpstreamKind::Http => json!({
            "peers": peers, "keepalive": 0, "zombies": 0, "zone": u.name,
        }),
        UpstreamKind::Stream => json!({"peers": peers, "zombies": 0, "zone": u.name}),
    }
}

fn method_not_allowed() -> Reply {
    error_reply(405, "MethodNotAllowed", "method not allowed")
}

fn path_not_found() -> Reply {
    error_reply(404, "PathNotFound", "path not found")
}

/// Handles one request to the NGINX Plus API.
pub(crate) fn handle(
    state: &Mutex<NginxState>,
    versions: &[u32],
    api_key: Option<&str>,
    req: &Req,
) -> Reply {
    if let Some(key) = api_key {
        let ok = req
            .header("authorization")
            .and_then(|h| h.split_once(' '))
            .is_some_and(|(scheme, k)| scheme.eq_ignore_ascii_case("ApiKey") && k.trim() == key);
        if !ok {
            return error_reply(401, "Unauthorized", "unauthorized")
                .header("www-authenticate", "ApiKey");
        }
    }
    let path = req.path.as_str();
    let rest = match path
        .strip_prefix("/api")
        .or_else(|| path.strip_prefix("/nplus"))
    {
        Some(r) if r.is_empty() || r.starts_with('/') => r,
        _ => return path_not_found(),
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let Some((ver, segs)) = segs.split_first() else {
        if req.method != "GET" {
            return method_not_allowed();
        }
        return Reply::json(200, &json!(versions));
    };
    match ver.parse::<u32>() {
        Ok(v) if versions.contains(&v) => {}
        _ => return error_reply(404, "UnknownVersion", "unknown version"),
    }
    let method = req.method.as_str();
    let kind = match segs.first() {
        None => {
            return if method == "GET" {
                Reply::json(
                    200,
                    &json!([
                        "nginx",
                        "processes",
                        "connections",
                        "slabs",
                        "http",
                        "stream",
                        "resolvers",
                        "ssl",
                        "workers"
                    ]),
                )
            } else {
                method_not_allowed()
            };
        }
        Some(&"nginx") if segs.len() == 1 => {
            return if method == "GET" {
                Reply::json(
                    200,
                    &json!({
                        "version": "1.27.4", "build": "nginx-plus-r34", "address": "127.0.0.1",
                        "generation": 1, "load_timestamp": "2025-01-01T00:00:00.000Z",
                        "timestamp": "2025-01-01T00:00:00.000Z", "pid": 1000, "ppid": 999,
                    }),
                )
            } else {
                method_not_allowed()
            };
        }
        Some(&"http") => UpstreamKind::Http,
        Some(&"stream") => UpstreamKind::Stream,
        Some(_) => return path_not_found(),
    };
    let mut st = lock(state);
    match segs.get(1..).unwrap_or_default() {
        [] => {
            if method != "GET" {
                return method_not_allowed();
            }
            let eps: Value = match kind {
                UpstreamKind::Http => json!([
                    "requests",
                    "server_zones",
                    "location_zones",
                    "caches",
                    "limit_conns",
                    "limit_reqs",
                    "keyvals",
                    "upstreams"
                ]),
                UpstreamKind::Stream => {
                    json!([
                        "server_zones",
                        "limit_conns",
                        "keyvals",
                        "upstreams",
                        "zone_sync"
                    ])
                }
            };
            Reply::json(200, &eps)
        }
        ["upstreams"] => {
            if method != "GET" {
                return method_not_allowed();
            }
            let mut m = Map::new();
            let mut ups: Vec<&Upstream> = st
                .upstreams
                .values()
                .filter(|u| u.kind == kind && u.dynamic)
                .collect();
            ups.sort_by(|a, b| a.name.cmp(&b.name));
            for u in ups {
                m.insert(u.name.clone(), upstream_status(u));
            }
            Reply::json(200, &Value::Object(m))
        }
        ["upstreams", name, tail @ ..] => {
            let Some(u) = st.upstreams.get_mut(&(kind, name.to_string())) else {
                return error_reply(404, "UpstreamNotFound", "upstream not found");
            };
            if !u.dynamic {
                return error_reply(400, "UpstreamStatic", "upstream is static");
            }
            match tail {
                [] => match method {
                    "GET" => Reply::json(200, &upstream_status(u)),
                    "DELETE" => Reply {
                        status: 204,
                        headers: Vec::new(),
                        body: Vec::new(),
                    },
                    _ => method_not_allowed(),
                },
                ["servers"] => match method {
                    "GET" => Reply::raw_json(200, u.list_body()),
                    "POST" => {
                        let body = match parse_json(&req.body) {
                            Ok(b) => b,
                            Err(e) => return e.into(),
                        };
                        match post_server(u, &body) {
                            Ok(id) => match u.servers.get(&id) {
                                Some(s) => Reply::raw_json(201, u.body(s)),
                                None => error_reply(500, "InternalError", "internal error"),
                            },
                            Err(e) => e.into(),
                        }
                    }
                    _ => method_not_allowed(),
                },
                ["servers", id] => {
                    let Ok(id) = id.parse::<u64>() else {
                        return error_reply(400, "UpstreamBadServerId", "invalid server ID");
                    };
                    match method {
                        "GET" => match u.servers.get(&id) {
                            Some(s) => Reply::raw_json(200, u.body(s)),
                            None => not_found_server(id).into(),
                        },
                        "PATCH" => {
                            if !u.servers.contains_key(&id) {
                                return not_found_server(id).into();
                            }
                            let body = match parse_json(&req.body) {
                                Ok(b) => b,
                                Err(e) => return e.into(),
                            };
                            match patch_server(u, id, &body) {
                                Ok(()) => match u.servers.get(&id) {
                                    Some(s) => Reply::raw_json(200, u.body(s)),
                                    None => not_found_server(id).into(),
                                },
                                Err(e) => e.into(),
                            }
                        }
                        "DELETE" => {
                            if u.servers.remove(&id).is_none() {
                                return not_found_server(id).into();
                            }
                            Reply::raw_json(200, u.list_body())
                        }
                        _ => method_not_allowed(),
                    }
                }
                _ => path_not_found(),
            }
        }
        _ => path_not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_time_parsing_follows_ngx_parse_time_seconds() {
        assert_eq!(parse_time_secs("10s"), Some(10));
        assert_eq!(parse_time_secs("10"), Some(10));
        assert_eq!(parse_time_secs("0"), Some(0));
        assert_eq!(parse_time_secs("1m"), Some(60));
        assert_eq!(parse_time_secs("1m30s"), Some(90));
        assert_eq!(parse_time_secs("1h 1s"), Some(3601));
        assert_eq!(parse_time_secs("2d"), Some(172_800));
        assert_eq!(parse_time_secs("500ms"), None);
        assert_eq!(parse_time_secs("30s1m"), None);
        assert_eq!(parse_time_secs(""), None);
        assert_eq!(parse_time_secs("abc"), None);
        assert_eq!(parse_time_secs("5x"), None);
        assert_eq!(parse_time_secs("1s5"), None);
    }

    #[test]
    fn addresses_are_normalized_like_ngx_parse_url() {
        let ok = |s: &str| match parse_address(s) {
            Addr::Ok(a) => a,
            _ => panic!("{s} refused"),
        };
        assert_eq!(ok("10.0.0.1"), "10.0.0.1:80");
        assert_eq!(ok("10.0.0.1:8080"), "10.0.0.1:8080");
        assert_eq!(ok("[::1]:81"), "[::1]:81");
        assert_eq!(ok("[::1]"), "[::1]:80");
        assert!(matches!(parse_address("10.0.0.1:0"), Addr::Bad(_)));
        assert!(matches!(parse_address("10.0.0.1:x"), Addr::Bad(_)));
        assert!(matches!(parse_address("10.0.0.300"), Addr::Bad(_)));
        assert!(matches!(parse_address("a b"), Addr::Bad(_)));
        assert!(matches!(parse_address(""), Addr::Bad(_)));
        assert!(matches!(
            parse_address("backend.example.com:80"),
            Addr::NeedsResolver(_)
        ));
    }
}
