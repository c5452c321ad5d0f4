//! Fake HAProxy Data Plane API (configuration backends, servers, transactions), per the
//! official v3 specification (`haproxy-dataplane-api-v3.yaml`, servers under
//! `/v3/services/haproxy/…`) and the v2 path shapes (`/v2/…/configuration/servers?backend=`).
//!
//! Strict like the real one: HTTP basic auth on every request (401 otherwise), unknown
//! server fields refused (the `server` schema has `additionalProperties: false`), enums and
//! ranges checked, 404 for unknown backends, servers and transactions, `transaction_id` and
//! `version` mutually exclusive, a stale `version` answered 409, a commit of a transaction
//! outdated by another commit answered 406. Every commit bumps the configuration version
//! and counts as one HAProxy reload; a transaction may create and change any number of
//! backends, and its commit applies them all at once. Conflicts can be injected.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};

use crate::util::{guid, lock, Reply, Req};

/// Default basic auth user of the fake.
pub const DATAPLANE_USER: &str = "admin";
/// Default basic auth password of the fake.
pub const DATAPLANE_PASSWORD: &str = "dataplane-pw-1";

/// Server keys this fake accepts: the `server` schema's own keys and the `server_params`
/// keys a discovery tool plausibly writes. Anything else is refused, as
/// `additionalProperties: false` makes the real API do.
const SERVER_KEYS: &[&str] = &[
    "name",
    "address",
    "port",
    "id",
    "metadata",
    "maintenance",
    "check",
    "maxconn",
    "slowstart",
    "weight",
    "backup",
    "cookie",
    "inter",
    "fastinter",
    "downinter",
    "rise",
    "fall",
    "maxqueue",
    "init-addr",
    "ssl",
    "verify",
    "agent-check",
    "agent-port",
    "agent-inter",
];
const ENABLED_DISABLED: &[&str] = &["maintenance", "check", "backup", "ssl", "agent-check"];
const INTEGER_KEYS: &[&str] = &[
    "maxconn",
    "slowstart",
    "weight",
    "inter",
    "fastinter",
    "downinter",
    "rise",
    "fall",
    "maxqueue",
    "agent-port",
    "agent-inter",
];

#[derive(Debug, Clone, Default)]
struct Config {
    /// Backend name → servers, in creation order.
    backends: BTreeMap<String, Vec<Value>>,
    /// Backend name → its settings (name, mode, balance) when created through the API.
    modes: BTreeMap<String, Value>,
}

#[derive(Debug, Clone)]
struct Tx {
    version: u64,
    status: &'static str,
    config: Config,
}

#[derive(Debug)]
pub(crate) struct DataplaneState {
    version: u64,
    config: Config,
    transactions: BTreeMap<String, Tx>,
    commits: u64,
    conflicts: VecDeque<u16>,
    user: String,
    password: String,
}

impl Default for DataplaneState {
    fn default() -> Self {
        DataplaneState {
            version: 1,
            config: Config::default(),
            transactions: BTreeMap::new(),
            commits: 0,
            conflicts: VecDeque::new(),
            user: DATAPLANE_USER.into(),
            password: DATAPLANE_PASSWORD.into(),
        }
    }
}

impl DataplaneState {
    /// What a commit elsewhere does: a new version, and every open transaction outdated.
    fn bump(&mut self) {
        self.version += 1;
        for tx in self.transactions.values_mut() {
            if tx.status == "in_progress" {
                tx.status = "outdated";
            }
        }
    }
}

/// Cheap, cloneable handle to the fake Data Plane API.
#[derive(Clone)]
pub struct DataPlane {
    pub(crate) state: Arc<Mutex<DataplaneState>>,
}

impl DataPlane {
    /// Creates an empty backend (as if it were in haproxy.cfg); bumps the version.
    pub fn add_backend(&self, name: &str) {
        let mut st = lock(&self.state);
        st.config.backends.entry(name.to_string()).or_default();
        st.bump();
    }

    /// Adds a server to a backend directly (a server of the configuration file).
    pub fn insert_server(&self, backend: &str, server: Value) {
        let mut st = lock(&self.state);
        st.config
            .backends
            .entry(backend.to_string())
            .or_default()
            .push(server);
        st.bump();
    }

    /// A backend's settings (`{"name", "mode", "balance"}`) as created through the API.
    pub fn backend(&self, name: &str) -> Option<Value> {
        lock(&self.state).config.modes.get(name).cloned()
    }

    /// Backend names.
    pub fn backends(&self) -> Vec<String> {
        lock(&self.state).config.backends.keys().cloned().collect()
    }

    /// Servers of a backend as committed (empty if it does not exist).
    pub fn servers(&self, backend: &str) -> Vec<Value> {
        lock(&self.state)
            .config
            .backends
            .get(backend)
            .cloned()
            .unwrap_or_default()
    }

    /// `address:port` of the servers of a backend not in maintenance, sorted.
    pub fn active_addresses(&self, backend: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .servers(backend)
            .iter()
            .filter(|s| s["maintenance"] != "enabled")
            .map(|s| format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]))
            .collect();
        v.sort();
        v
    }

    /// The configuration version.
    pub fn version(&self) -> u64 {
        lock(&self.state).version
    }

    /// Successful commits so far (each one an HAProxy reload).
    pub fn commits(&self) -> u64 {
        lock(&self.state).commits
    }

    /// Transactions committed so far (each one HAProxy reload, however many backends and
    /// servers it changed); unlike [`DataPlane::commits`] it leaves out writes made without a
    /// transaction.
    pub fn transactions_committed(&self) -> usize {
        lock(&self.state)
            .transactions
            .values()
            .filter(|t| t.status == "success")
            .count()
    }

    /// Every transaction ever started and not deleted: (id, status).
    pub fn transactions(&self) -> Vec<(String, String)> {
        lock(&self.state)
            .transactions
            .iter()
            .map(|(id, t)| (id.clone(), t.status.to_string()))
            .collect()
    }

    /// Another client commits: the version moves and open transactions are outdated.
    pub fn bump_version(&self) {
        lock(&self.state).bump();
    }

    /// The next `n` commits find that another client committed first: the version moves
    /// and the commit is answered `status` (406, as the real API does for an outdated
    /// transaction, or 409 for a version mismatch).
    pub fn inject_commit_conflicts(&self, n: usize, status: u16) {
        let mut st = lock(&self.state);
        for _ in 0..n {
            st.conflicts.push_back(status);
        }
    }

    /// Changes the accepted basic auth credentials.
    pub fn set_credentials(&self, user: &str, password: &str) {
        let mut st = lock(&self.state);
        st.user = user.into();
        st.password = password.into();
    }
}

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply::json(status, &json!({"code": status, "message": message.into()}))
}

fn with_version(r: Reply, version: u64) -> Reply {
    r.header("configuration-version", version.to_string())
}

fn authorized(st: &DataplaneState, req: &Req) -> bool {
    let Some(value) = req.header("authorization") else {
        return false;
    };
    let Some(b64) = value.strip_prefix("Basic ") else {
        return false;
    };
    let expected = base64(format!("{}:{}", st.user, st.password).as_bytes());
    b64.trim() == expected
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Checks a server body against the schema; returns the normalised object.
fn check_server(body: &[u8], path_name: Option<&str>) -> Result<Value, Reply> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| error(400, format!("invalid JSON body: {e}")))?;
    let Value::Object(m) = &v else {
        return Err(error(400, "a server must be a JSON object"));
    };
    for k in m.keys() {
        if !SERVER_KEYS.contains(&k.as_str()) {
            return Err(error(400, format!("unknown field {k:?} in server")));
        }
    }
    let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(error(
            400,
            "name in body is required and must match ^[^\\s]+$",
        ));
    }
    if let Some(p) = path_name {
        if p != name {
            return Err(error(
                400,
                format!("name {name:?} does not match the path {p:?}"),
            ));
        }
    }
    match m.get("address").and_then(Value::as_str) {
        Some(a) if !a.is_empty() && !a.chars().any(char::is_whitespace) => {}
        _ => {
            return Err(error(
                400,
                "address in body is required and must match ^[^\\s]+$",
            ))
        }
    }
    if let Some(p) = m.get("port") {
        if !p.is_null() && !p.as_u64().is_some_and(|p| (1..=65535).contains(&p)) {
            return Err(error(400, "port in body should be between 1 and 65535"));
        }
    }
    for k in ENABLED_DISABLED {
        if let Some(x) = m.get(*k) {
            if x != "enabled" && x != "disabled" {
                return Err(error(
                    400,
                    format!("{k} in body should be one of [enabled disabled]"),
                ));
            }
        }
    }
    for k in INTEGER_KEYS {
        if let Some(x) = m.get(*k) {
            if !x.is_null() && x.as_i64().is_none_or(|n| n < 0) {
                return Err(error(
                    400,
                    format!("{k} in body must be a non-negative integer"),
                ));
            }
        }
    }
    Ok(v)
}

/// How a configuration write addresses its change.
enum Scope {
    Tx(String),
    Direct,
}

fn scope(st: &DataplaneState, req: &Req) -> Result<Scope, Reply> {
    let tx = req.query_get("transaction_id");
    let version = req.query_get("version");
    let force = req.query_get("force_reload").is_some_and(|v| v == "true");
    match (tx, version) {
        (Some(_), Some(_)) => Err(error(
            400,
            "both version and transaction specified, specify only one",
        )),
        (Some(_), None) if force => Err(error(
            400,
            "both force_reload and transaction specified, specify only one",
        )),
        (Some(id), None) => match st.transactions.get(&id) {
            None => Err(error(404, format!("transaction {id} does not exist"))),
            Some(t) if t.status != "in_progress" => {
                Err(error(406, format!("transaction {id} is {}", t.status)))
            }
            Some(_) => Ok(Scope::Tx(id)),
        },
        (None, Some(v)) => match v.parse::<u64>() {
            Ok(v) if v == st.version => Ok(Scope::Direct),
            Ok(v) => Err(error(
                409,
                format!(
                    "version mismatch, version in configuration file is {}, given version is {v}",
                    st.version
                ),
            )),
            Err(_) => Err(error(400, "version must be an integer")),
        },
        (None, None) => Ok(Scope::Direct),
    }
}

/// Read scope: a transaction's working copy, or the committed configuration.
fn read_config<'a>(st: &'a DataplaneState, req: &Req) -> Result<&'a Config, Reply> {
    match req.query_get("transaction_id") {
        None => Ok(&st.config),
        Some(id) => st
            .transactions
            .get(&id)
            .map(|t| &t.config)
            .ok_or_else(|| error(404, format!("transaction {id} does not exist"))),
    }
}

pub(crate) fn handle(state: &Mutex<DataplaneState>, req: &Req) -> Reply {
    let mut st = lock(state);
    if !authorized(&st, req) {
        return error(401, "unauthorized")
            .header("www-authenticate", "Basic realm=\"dataplaneapi\"");
    }
    let version = st.version;
    let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
    let reply = match segs.as_slice() {
        [v @ ("v2" | "v3"), "services", "haproxy", rest @ ..] => route(&mut st, req, v, rest),
        _ => error(404, format!("path {} not found", req.path)),
    };
    let now = st.version.max(version);
    with_version(reply, now)
}

fn route(st: &mut DataplaneState, req: &Req, api: &str, rest: &[&str]) -> Reply {
    let m = req.method.as_str();
    match (api, rest) {
        (_, ["configuration", "version"]) if m == "GET" => match read_config(st, req) {
            Err(r) => r,
            Ok(_) => {
                let v = match req.query_get("transaction_id") {
                    Some(id) => st
                        .transactions
                        .get(&id)
                        .map(|t| t.version)
                        .unwrap_or(st.version),
                    None => st.version,
                };
                Reply::raw_json(200, format!("{v}\n").into_bytes())
            }
        },
        (_, ["configuration", "backends"]) if m == "POST" => create_backend(st, req),
        (_, ["configuration", "backends"]) if m == "GET" => match read_config(st, req) {
            Err(r) => r,
            // `backends`: an array of `backend` objects (name, and mode and balance when
            // created through the API), in the transaction's working copy when one is named.
            Ok(c) => {
                let list: Vec<Value> = c
                    .backends
                    .keys()
                    .map(|b| {
                        c.modes
                            .get(b)
                            .cloned()
                            .unwrap_or_else(|| json!({"name": b}))
                    })
                    .collect();
                envelope(api, st.version, Value::Array(list))
            }
        },
        (_, ["configuration", "backends", name]) if m == "GET" => match read_config(st, req) {
            Err(r) => r,
            Ok(c) if c.backends.contains_key(*name) => envelope(
                api,
                st.version,
                c.modes
                    .get(*name)
                    .cloned()
                    .unwrap_or_else(|| json!({"name": name})),
            ),
            Ok(_) => error(404, format!("backend {name} does not exist")),
        },
        ("v3", ["configuration", "backends", be, "servers"]) => servers(st, req, api, be, None),
        ("v3", ["configuration", "backends", be, "servers", name]) => {
            servers(st, req, api, be, Some(name))
        }
        ("v2", ["configuration", "servers"]) | ("v2", ["configuration", "servers", _]) => {
            match req.query_get("backend") {
                None => error(400, "backend is required"),
                Some(be) => servers(st, req, api, &be, rest.get(2).copied()),
            }
        }
        (_, ["transactions"]) if m == "POST" => start_transaction(st, req),
        (_, ["transactions"]) if m == "GET" => {
            let list: Vec<Value> = st
                .transactions
                .iter()
                .map(|(id, t)| json!({"id": id, "_version": t.version, "status": t.status}))
                .collect();
            Reply::json(200, &Value::Array(list))
        }
        (_, ["transactions", id]) => transaction(st, m, id),
        (_, ["configuration", ..]) | (_, ["transactions", ..]) => {
            error(405, format!("method {m} not allowed on {}", req.path))
        }
        _ => error(404, format!("path {} not found", req.path)),
    }
}

/// `POST …/configuration/backends`: the few `backend` keys a discovery tool sets.
fn create_backend(st: &mut DataplaneState, req: &Req) -> Reply {
    let scope = match scope(st, req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let v: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => return error(400, format!("invalid JSON body: {e}")),
    };
    let Value::Object(m) = &v else {
        return error(400, "a backend must be a JSON object");
    };
    for k in m.keys() {
        if !["name", "mode", "balance"].contains(&k.as_str()) {
            return error(400, format!("unknown field {k:?} in backend"));
        }
    }
    let Some(name) = m
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return error(400, "name in body is required");
    };
    if let Some(mode) = m.get("mode") {
        if mode != "http" && mode != "tcp" {
            return error(400, "mode in body should be one of [http tcp]");
        }
    }
    if let Some(b) = m.get("balance") {
        let ok = b.as_object().is_some_and(|o| {
            o.keys().all(|k| k == "algorithm")
                && o.get("algorithm").and_then(Value::as_str).is_some_and(|a| {
                    [
                        "roundrobin",
                        "static-rr",
                        "leastconn",
                        "first",
                        "source",
                        "uri",
                        "random",
                    ]
                    .contains(&a)
                })
        });
        if !ok {
            return error(
                400,
                "balance.algorithm in body is required and must be a known algorithm",
            );
        }
    }
    let in_tx = matches!(scope, Scope::Tx(_));
    let config = match &scope {
        Scope::Tx(id) => match st.transactions.get_mut(id) {
            Some(t) => &mut t.config,
            None => return error(404, format!("transaction {id} does not exist")),
        },
        Scope::Direct => &mut st.config,
    };
    if config.backends.contains_key(name) {
        return error(409, format!("backend {name} already exists"));
    }
    config.backends.insert(name.to_string(), Vec::new());
    config.modes.insert(name.to_string(), v.clone());
    if !in_tx {
        st.bump();
        st.commits += 1;
    }
    Reply::json(if in_tx { 202 } else { 201 }, &v)
}

fn envelope(api: &str, version: u64, data: Value) -> Reply {
    if api == "v2" {
        Reply::json(200, &json!({"_version": version, "data": data}))
    } else {
        Reply::json(200, &data)
    }
}

fn start_transaction(st: &mut DataplaneState, req: &Req) -> Reply {
    let Some(v) = req.query_get("version") else {
        return error(400, "version in query is required");
    };
    let Ok(v) = v.parse::<u64>() else {
        return error(400, "version must be an integer");
    };
    if v != st.version {
        return error(
            409,
            format!(
                "version mismatch, version in configuration file is {}, given version is {v}",
                st.version
            ),
        );
    }
    let open = st
        .transactions
        .values()
        .filter(|t| t.status == "in_progress")
        .count();
    if open >= 20 {
        return error(429, "too many open transactions");
    }
    let id = guid();
    st.transactions.insert(
        id.clone(),
        Tx {
            version: v,
            status: "in_progress",
            config: st.config.clone(),
        },
    );
    Reply::json(
        201,
        &json!({"_version": v, "id": id, "status": "in_progress"}),
    )
}

fn transaction(st: &mut DataplaneState, method: &str, id: &str) -> Reply {
    let Some((tx_version, tx_status)) = st.transactions.get(id).map(|t| (t.version, t.status))
    else {
        return error(404, format!("transaction {id} does not exist"));
    };
    match method {
        "GET" => Reply::json(
            200,
            &json!({"_version": tx_version, "id": id, "status": tx_status}),
        ),
        "DELETE" => {
            st.transactions.remove(id);
            Reply {
                status: 204,
                headers: Vec::new(),
                body: Vec::new(),
            }
        }
        "PUT" => {
            if let Some(status) = st.conflicts.pop_front() {
                // Someone else committed first.
                st.bump();
                if let Some(t) = st.transactions.get_mut(id) {
                    t.status = if status == 406 { "outdated" } else { "failed" };
                }
                return error(
                    status,
                    format!("transaction {id} is outdated: the configuration changed"),
                );
            }
            if tx_status != "in_progress" {
                return error(406, format!("transaction {id} is {tx_status}"));
            }
            if tx_version != st.version {
                return error(
                    406,
                    format!(
                        "transaction {id} is outdated: version {tx_version} is not {}",
                        st.version
                    ),
                );
            }
            if let Some(config) = st.transactions.get(id).map(|t| t.config.clone()) {
                st.config = config;
            }
            st.bump();
            st.commits += 1;
            if let Some(t) = st.transactions.get_mut(id) {
                t.status = "success";
            }
            let v = st.version;
            Reply::json(202, &json!({"_version": v, "id": id, "status": "success"}))
                .header("reload-id", format!("2026-01-01-{}", st.commits))
        }
        _ => error(405, format!("method {method} not allowed")),
    }
}

fn servers(
    st: &mut DataplaneState,
    req: &Req,
    api: &str,
    backend: &str,
    name: Option<&str>,
) -> Reply {
    let m = req.method.as_str();
    if m == "GET" {
        let c = match read_config(st, req) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let Some(list) = c.backends.get(backend) else {
            return error(404, format!("backend {backend} does not exist"));
        };
        return match name {
            None => envelope(api, st.version, Value::Array(list.clone())),
            Some(n) => match list.iter().find(|s| s["name"] == *n) {
                Some(s) => envelope(api, st.version, s.clone()),
                None => error(
                    404,
                    format!("server {n} does not exist in backend {backend}"),
                ),
            },
        };
    }
    let scope = match scope(st, req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let body = match (m, name) {
        ("POST", None) => match check_server(&req.body, None) {
            Ok(b) => Some(b),
            Err(r) => return r,
        },
        ("PUT", Some(n)) => match check_server(&req.body, Some(n)) {
            Ok(b) => Some(b),
            Err(r) => return r,
        },
        ("DELETE", Some(_)) => None,
        _ => return error(405, format!("method {m} not allowed on {}", req.path)),
    };
    let in_tx = matches!(scope, Scope::Tx(_));
    let config = match &scope {
        Scope::Tx(id) => match st.transactions.get_mut(id) {
            Some(t) => &mut t.config,
            None => return error(404, format!("transaction {id} does not exist")),
        },
        Scope::Direct => &mut st.config,
    };
    let Some(list) = config.backends.get_mut(backend) else {
        return error(404, format!("backend {backend} does not exist"));
    };
    let result = match (m, name, body) {
        ("POST", None, Some(b)) => {
            if list.iter().any(|s| s["name"] == b["name"]) {
                return error(
                    409,
                    format!("server {} already exists in backend {backend}", b["name"]),
                );
            }
            list.push(b.clone());
            (if in_tx { 202 } else { 201 }, Some(b))
        }
        ("PUT", Some(n), Some(b)) => match list.iter_mut().find(|s| s["name"] == *n) {
            None => {
                return error(
                    404,
                    format!("server {n} does not exist in backend {backend}"),
                )
            }
            Some(s) => {
                *s = b.clone();
                (if in_tx { 202 } else { 200 }, Some(b))
            }
        },
        ("DELETE", Some(n), None) => {
            let before = list.len();
            list.retain(|s| s["name"] != *n);
            if list.len() == before {
                return error(
                    404,
                    format!("server {n} does not exist in backend {backend}"),
                );
            }
            (if in_tx { 202 } else { 204 }, None)
        }
        _ => return error(405, format!("method {m} not allowed on {}", req.path)),
    };
    if !in_tx {
        st.bump();
        st.commits += 1;
    }
    match result {
        (status, Some(b)) => Reply::json(status, &b),
        (status, None) => Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        },
    }
}

/// Map helper for tests building servers.
pub fn server(name: &str, address: &str, port: u16) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    m.insert("address".into(), json!(address));
    m.insert("port".into(), json!(port));
    Value::Object(m)
}
