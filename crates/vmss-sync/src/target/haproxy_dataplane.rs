//! HAProxy backends through the HAProxy Data Plane API (v3, or v2), for a remote HAProxy.
//!
//! Servers live in **slots**, as in HAProxy's own AWS discovery and the HAProxy Azure
//! daemon: a managed backend holds servers named `{prefix}1 … {prefix}N`. A slot in use has
//! the instance's address, `maintenance: disabled` (and `check: enabled` with `check: true`);
//! a free slot is `127.0.0.1:80` with `maintenance: enabled`. A backend keeps at least
//! `server_slots.base` slots and grows past that linearly (`base + ceil((count − base) ×
//! growth_factor)`) or exponentially (the smallest `ceil(base × growth_factor^n)` that holds
//! `count`); when the count drops, servers in high slots move down into free ones and the
//! slots above the size the count needs are deleted. Backends are never deleted: a backend
//! whose scale set is empty keeps its slots, all in maintenance.
//!
//! A cycle is **one transaction** for the whole target: the reconciler hands every
//! non-empty plan of the cycle to [`Target::apply_batch`] (the target `batches()`), which
//! reads the configuration version, opens a transaction on it, then for each backend reads
//! its slot servers in the transaction, creates it when it is missing and may be created,
//! plans the slots and writes the changed ones, and commits once: HAProxy reloads at most
//! once per cycle however many backends changed. `apply` is a batch of one.
//!
//! A problem of one backend stays with that backend's report: missing and not creatable, no
//! free slot for a server, a stale slot, or a refused write (a 4xx that is not a conflict);
//! the other backends still go in the same transaction. Staged writes cannot be taken back
//! one by one, and committing some of a backend's writes could leave it half-changed (a
//! server copied into a lower slot but not removed from its old one), so when a write is
//! refused after other writes of the same backend were staged the transaction is deleted and
//! the batch starts again, without that backend, from a fresh one. A 5xx, a timeout or a
//! failed commit fails every item of the batch. When HAProxy answers with a version conflict
//! (409, or 406 for a transaction outdated by another commit) the transaction is dropped and
//! the whole batch starts again from a fresh version; the [`MAX_ATTEMPTS`]th conflict fails
//! every item still pending, retried next cycle. Batches of one target run one at a time,
//! so vmss-sync never conflicts with itself. A cycle with nothing to change opens no
//! transaction at all, and a batch whose writes turn out to be no-ops deletes its
//! transaction instead of committing it, so HAProxy is not reloaded for nothing.
//!
//! Mapping of the server parameters: `max_conns` → `maxconn`, `slow_start` → `slowstart`
//! (HAProxy's own slow start, in milliseconds); `max_fails` and `fail_timeout` have no
//! counterpart in an HAProxy server line (its health checks count differently) and are
//! reported back as configured. A draining server gets `weight: 0` (no new connections,
//! kept across reloads); restoring it removes the weight again.
//!
//! Basic auth on every request; the password is never logged nor put in an error. The
//! configuration only accepts plain http to a loopback address.
//!
//! A backend that does not exist is created inside the batch's transaction (`mode` from the
//! upstream's kind, `balance` of the target, `roundrobin` by default), as the HAProxy daemon does for the services it
//! finds, when the target has `create_backends: true` or when it is the backend of a service
//! found by tags (`UpstreamRef::create`: an upstream with `services:` is a template that
//! becomes one backend `{name}{separator}{service}{separator}{port}{separator}{region}` per
//! service); until then `check` accepts it and `observe` finds it empty. Such backends are
//! found again with `list_upstreams(prefix)` (the backends list) once their service has
//! vanished, so that they are emptied into maintenance; they are never deleted. Their
//! configured parameters are the template's, looked up by the longest registered name prefix.

use super::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use crate::config::{DataplaneApiVersion, HaproxyDataplaneTarget, Secret, ServerSlots, SlotGrowth};
use crate::model::{ObservedServer, ServerParams, ServerState, UpstreamKind};
use crate::plan::Plan;
use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use url::Url;

/// Transactions of one batch that may end in a version conflict: the last one fails the batch.
pub const MAX_ATTEMPTS: usize = 3;
const FREE_ADDRESS: &str = "127.0.0.1";
const FREE_PORT: u16 = 80;

/// Target for one Data Plane API.
pub struct HaproxyDataplane {
    base: Url,
    version: DataplaneApiVersion,
    http: reqwest::Client,
    username: String,
    password: Secret,
    prefix: String,
    slots: ServerSlots,
    check: bool,
    create_backends: bool,
    /// Balance algorithm of created backends.
    balance: String,
    /// Configured server parameters per upstream (backend) name.
    params: BTreeMap<String, ServerParams>,
    /// Configured server parameters of service templates, per backend name prefix
    /// (`{name}{separator}`): their backends' names are not known in advance.
    service_params: BTreeMap<String, ServerParams>,
    /// One batch at a time per API: our own transactions never outdate each other.
    serial: tokio::sync::Mutex<()>,
    /// What `observe` read of each backend and at which configuration version: a
    /// transaction opened on that same version starts from these servers, so a changed
    /// backend is read once per cycle, not again inside the transaction.
    observed: std::sync::Mutex<Observed>,
}

impl std::fmt::Debug for HaproxyDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaproxyDataplane")
            .field("base", &self.base.as_str())
            .field("version", &self.version)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One slot as the planner of slots sees it.
#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Free,
    Used {
        server: String,
        max_conns: u32,
        slow_start: Duration,
        draining: bool,
    },
}

/// A managed slot as read: what it holds and whether its health checks are on.
#[derive(Clone, Debug, PartialEq)]
struct Current {
    slot: Slot,
    check: bool,
}

impl Current {
    fn of(v: &Value) -> Self {
        Current {
            slot: slot_of(v),
            check: enabled(v, "check"),
        }
    }
}

/// What `observe` read, per backend: the configuration version and the managed slots.
type Observed = HashMap<String, (u64, BTreeMap<u32, Current>)>;

/// A server list answer, v3 (a bare array) or v2 (`{"_version": …, "data": […]}`), read
/// into the managed slots (by `prefix`) and the version the v2 envelope names; `None` for
/// the slots when the answer holds no list.
struct ServerList<'a> {
    prefix: &'a str,
}

type SlotsRead = (Option<BTreeMap<u32, Current>>, Option<u64>);

impl<'de> serde::de::DeserializeSeed<'de> for ServerList<'_> {
    type Value = SlotsRead;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<SlotsRead, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ServerList<'_> {
    type Value = SlotsRead;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of servers")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SlotsRead, A::Error> {
        let mut slots = BTreeMap::new();
        while let Some(v) = seq.next_element::<Value>()? {
            let n = v
                .get("name")
                .and_then(Value::as_str)
                .and_then(|name| slot_number(self.prefix, name));
            if let Some(n) = n {
                slots.insert(n, Current::of(&v));
            }
        }
        Ok((Some(slots), None))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<SlotsRead, A::Error> {
        let mut slots = None;
        let mut version = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "data" => {
                    slots = map
                        .next_value_seed(ServerList {
                            prefix: self.prefix,
                        })?
                        .0;
                }
                "_version" => version = map.next_value::<Value>()?.as_u64(),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok((slots, version))
    }

    fn visit_unit<E>(self) -> Result<SlotsRead, E> {
        Ok((None, None))
    }

    fn visit_str<E>(self, _: &str) -> Result<SlotsRead, E> {
        Ok((None, None))
    }

    fn visit_bool<E>(self, _: bool) -> Result<SlotsRead, E> {
        Ok((None, None))
    }

    fn visit_u64<E>(self, _: u64) -> Result<SlotsRead, E> {
        Ok((None, None))
    }

    fn visit_i64<E>(self, _: i64) -> Result<SlotsRead, E> {
        Ok((None, None))
    }

    fn visit_f64<E>(self, _: f64) -> Result<SlotsRead, E> {
        Ok((None, None))
    }
}

/// Why one transaction attempt ended early.
enum Abort {
    /// The configuration moved under the transaction: start again.
    Conflict(String),
    /// Anything else: give up for this cycle.
    Failed(TargetError),
}

impl From<TargetError> for Abort {
    fn from(e: TargetError) -> Self {
        Abort::Failed(e)
    }
}

/// A write of one slot inside a transaction.
#[derive(Debug, PartialEq)]
enum Write {
    Create(u32),
    Replace(u32),
    Delete(u32),
}

/// Slots a backend needs for `count` servers.
pub fn slots_for(count: usize, policy: &ServerSlots) -> usize {
    let base = policy.base.max(1) as usize;
    if count <= base {
        return base;
    }
    match policy.growth_type {
        SlotGrowth::Linear => {
            base + ((count - base) as f64 * policy.growth_factor.max(1.0)).ceil() as usize
        }
        SlotGrowth::Exponential => {
            let factor = if policy.growth_factor > 1.0 {
                policy.growth_factor
            } else {
                2.0
            };
            let mut n = base as f64;
            while (n.ceil() as usize) < count {
                n *= factor;
            }
            n.ceil() as usize
        }
    }
}

fn slot_number(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.starts_with('0') {
        return None;
    }
    rest.parse().ok()
}

fn enabled(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_str) == Some("enabled")
}

/// A server object as a slot.
fn slot_of(v: &Value) -> Slot {
    if enabled(v, "maintenance") {
        return Slot::Free;
    }
    let address = v.get("address").and_then(Value::as_str).unwrap_or_default();
    let server = match v.get("port").and_then(Value::as_u64) {
        Some(p) => format!("{address}:{p}"),
        None => address.to_string(),
    };
    Slot::Used {
        server,
        max_conns: v
            .get("maxconn")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        slow_start: Duration::from_millis(v.get("slowstart").and_then(Value::as_u64).unwrap_or(0)),
        draining: v.get("weight").and_then(Value::as_i64) == Some(0),
    }
}

/// The server object vmss-sync writes for a slot.
fn server_body(name: &str, slot: &Slot, check: bool) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(name));
    match slot {
        Slot::Free => {
            m.insert("address".into(), json!(FREE_ADDRESS));
            m.insert("port".into(), json!(FREE_PORT));
            m.insert("maintenance".into(), json!("enabled"));
        }
        Slot::Used {
            server,
            max_conns,
            slow_start,
            draining,
        } => {
            let (address, port) = match server.rsplit_once(':') {
                Some((a, p)) => (a, p.parse::<u16>().ok()),
                None => (server.as_str(), None),
            };
            m.insert("address".into(), json!(address));
            if let Some(p) = port {
                m.insert("port".into(), json!(p));
            }
            m.insert("maintenance".into(), json!("disabled"));
            if check {
                m.insert("check".into(), json!("enabled"));
            }
            if *max_conns > 0 {
                m.insert("maxconn".into(), json!(max_conns));
            }
            if !slow_start.is_zero() {
                m.insert("slowstart".into(), json!(slow_start.as_millis() as u64));
            }
            if *draining {
                m.insert("weight".into(), json!(0));
            }
        }
    }
    Value::Object(m)
}

/// Whether a slot as read already says what `slot` says (free slots keep any address).
fn same(current: &Current, slot: &Slot, check: bool) -> bool {
    match (&current.slot, slot) {
        (Slot::Free, Slot::Free) => true,
        (cur @ Slot::Used { .. }, want @ Slot::Used { .. }) => {
            cur == want && current.check == check
        }
        _ => false,
    }
}

/// Turns a plan into slot writes. `current`: slot number → slot as read. Returns the
/// writes, the new layout and the per-item problems; fills the report's success lists.
/// `steps` counts the slots and plan items visited: the work is linear in the slots of the
/// backend (plus a logarithmic map lookup per item), never one scan per added server.
fn plan_slots(
    current: &BTreeMap<u32, Current>,
    plan: &Plan,
    policy: &ServerSlots,
    check: bool,
    done: &mut ApplyReport,
    problems: &mut Vec<String>,
    steps: &mut u64,
) -> (Vec<Write>, BTreeMap<u32, Slot>) {
    let mut slots: BTreeMap<u32, Slot> =
        current.iter().map(|(n, c)| (*n, c.slot.clone())).collect();
    *steps += current.len() as u64;
    let holds = |slots: &BTreeMap<u32, Slot>, id: u64, server: &str| {
        u32::try_from(id)
            .ok()
            .filter(|n| matches!(slots.get(n), Some(Slot::Used { server: s, .. }) if s == server))
    };
    *steps += (plan.remove.len() + plan.update.len() + plan.add.len()) as u64;
    for r in &plan.remove {
        match holds(&slots, r.id, &r.server) {
            Some(n) => {
                slots.insert(n, Slot::Free);
                done.removed.push(r.server.clone());
            }
            None => problems.push(format!(
                "server {} (slot {}) changed since it was read; retried next cycle",
                r.server, r.id
            )),
        }
    }
    for u in &plan.update {
        let Some(n) = holds(&slots, u.id, &u.server) else {
            problems.push(format!(
                "server {} (slot {}) changed since it was read; retried next cycle",
                u.server, u.id
            ));
            continue;
        };
        if let Some(Slot::Used {
            max_conns,
            slow_start,
            draining,
            ..
        }) = slots.get_mut(&n)
        {
            if let Some(p) = &u.params {
                *max_conns = p.max_conns;
                *slow_start = p.slow_start;
            }
            *draining = u.state == ServerState::Draining;
        }
        if u.state == ServerState::Draining {
            done.drained.push(u.server.clone());
        } else {
            done.updated.push(u.server.clone());
        }
    }
    let used = slots.values().filter(|s| **s != Slot::Free).count();
    *steps += slots.len() as u64;
    // Grow (or create the base slots of a backend that has none).
    let want = slots_for(used + plan.add.len(), policy);
    let mut n = 1u32;
    while slots.len() < want {
        slots.entry(n).or_insert(Slot::Free);
        n += 1;
        *steps += 1;
    }
    // The free slots, lowest first, found in one pass: each added server takes the next.
    let mut free: std::vec::IntoIter<u32> = slots
        .iter()
        .filter(|(_, s)| **s == Slot::Free)
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .into_iter();
    *steps += slots.len() as u64;
    let mut used = used;
    for (server, p) in &plan.add {
        if let Some(n) = free.next() {
            *steps += 1;
            used += 1;
            slots.insert(
                n,
                Slot::Used {
                    server: server.clone(),
                    max_conns: p.max_conns,
                    slow_start: p.slow_start,
                    draining: false,
                },
            );
            done.added.push(server.clone());
        }
    }
    // Shrink: move servers above the size the count needs into free slots below it, then
    // drop the free slots above it. One pass finds both lists, lowest first.
    let keep = slots_for(used, policy);
    if slots.len() > keep {
        let limit = slots.keys().nth(keep - 1).copied().unwrap_or(u32::MAX);
        let mut high = Vec::new();
        let mut low = Vec::new();
        for (n, s) in &slots {
            *steps += 1;
            match (*n <= limit, *s == Slot::Free) {
                (true, true) => low.push(*n),
                (false, false) => high.push(*n),
                _ => {}
            }
        }
        for (h, low) in high.into_iter().zip(low) {
            *steps += 1;
            if let Some(s) = slots.insert(h, Slot::Free) {
                slots.insert(low, s);
            }
        }
        slots.retain(|n, s| *n <= limit || *s != Slot::Free);
        *steps += slots.len() as u64;
    }
    let mut writes = Vec::new();
    *steps += (slots.len() + current.len()) as u64;
    for (n, slot) in &slots {
        match current.get(n) {
            None => writes.push(Write::Create(*n)),
            Some(cur) if !same(cur, slot, check) => writes.push(Write::Replace(*n)),
            Some(_) => {}
        }
    }
    for n in current.keys() {
        if !slots.contains_key(n) {
            writes.push(Write::Delete(*n));
        }
    }
    (writes, slots)
}

fn api_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string);
    message.unwrap_or_else(|| body.chars().take(200).collect())
}

/// A list answer: a bare array (v3) or `{"_version": …, "data": […]}` (v2).
fn data(v: Value) -> Value {
    match v {
        Value::Object(mut m) if m.contains_key("data") => m.remove("data").unwrap_or(Value::Null),
        other => other,
    }
}

impl HaproxyDataplane {
    /// Builds a client for the target `cfg`; `params` are the configured server parameters
    /// per backend name, `service_params` those of service templates per backend name prefix
    /// (a backend without its own entry takes the longest prefix it starts with).
    pub fn new(
        cfg: &HaproxyDataplaneTarget,
        params: BTreeMap<String, ServerParams>,
        service_params: BTreeMap<String, ServerParams>,
    ) -> Result<Self, TargetError> {
        let http = crate::net::client_builder(cfg.ca_file.as_deref())
            .map_err(|e| TargetError {
                message: format!("HAProxy Data Plane API {}: {e}", cfg.url),
                permanence: Permanence::Permanent,
            })?
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| TargetError {
                message: format!("cannot build the Data Plane API HTTP client: {e}"),
                permanence: Permanence::Permanent,
            })?;
        Ok(Self {
            base: cfg.url.clone(),
            version: cfg.api_version,
            http,
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            prefix: cfg.server_prefix.clone(),
            slots: cfg.server_slots,
            check: cfg.check,
            create_backends: cfg.create_backends,
            balance: cfg.balance.clone(),
            params,
            service_params,
            serial: tokio::sync::Mutex::new(()),
            observed: std::sync::Mutex::default(),
        })
    }

    fn missing(&self, backend: &str) -> TargetError {
        self.error(
            format!(
                "backend {backend} does not exist in the HAProxy configuration; create it, or set \
                 create_backends: true (vmss-sync never deletes backends)"
            ),
            Permanence::Permanent,
        )
    }

    fn error(&self, message: String, permanence: Permanence) -> TargetError {
        TargetError {
            message: format!("HAProxy Data Plane API {}: {message}", self.base),
            permanence,
        }
    }

    fn v(&self) -> &'static str {
        match self.version {
            DataplaneApiVersion::V2 => "v2",
            DataplaneApiVersion::V3 => "v3",
        }
    }

    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut seg) = url.path_segments_mut() {
            seg.pop_if_empty();
            seg.push(self.v());
            seg.push("services");
            seg.push("haproxy");
            for s in segments {
                seg.push(s);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// The servers collection (`name: None`) or one server of a backend.
    fn server_url(&self, backend: &str, name: Option<&str>, tx: Option<&str>) -> Url {
        let mut q: Vec<(&str, &str)> = Vec::new();
        let mut segs: Vec<&str> = Vec::new();
        match self.version {
            DataplaneApiVersion::V3 => {
                segs.extend(["configuration", "backends", backend, "servers"]);
            }
            DataplaneApiVersion::V2 => {
                segs.extend(["configuration", "servers"]);
                q.push(("backend", backend));
            }
        }
        if let Some(n) = name {
            segs.push(n);
        }
        if let Some(t) = tx {
            q.push(("transaction_id", t));
        }
        self.url(&segs, &q)
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<(StatusCode, String), TargetError> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .basic_auth(&self.username, Some(self.password.expose()));
        if let Some(b) = body {
            req = req.json(b);
        }
        let what = format!("{method} {}", url.path());
        let resp = req.send().await.map_err(|e| {
            self.error(
                format!("{what}: {}", transport_detail(&e)),
                Permanence::Transient,
            )
        })?;
        let status = resp.status();
        let text = crate::net::body_text(resp).await.map_err(|e| {
            self.error(
                format!("{what}: reading the answer failed: {e}"),
                Permanence::Transient,
            )
        })?;
        if matches!(status.as_u16(), 401 | 403) {
            return Err(self.error(
                format!(
                    "{what} answered {}: check username and password",
                    status.as_u16()
                ),
                Permanence::Permanent,
            ));
        }
        Ok((status, text))
    }

    fn unexpected(
        &self,
        method: &Method,
        url: &Url,
        status: StatusCode,
        body: &str,
    ) -> TargetError {
        self.error(
            format!(
                "{method} {} answered {}: {}",
                url.path(),
                status.as_u16(),
                api_message(body)
            ),
            if status.is_server_error() || status.as_u16() == 429 {
                Permanence::Transient
            } else {
                Permanence::Permanent
            },
        )
    }

    async fn configuration_version(&self) -> Result<u64, TargetError> {
        let url = self.url(&["configuration", "version"], &[]);
        let (status, text) = self.send(Method::GET, url.clone(), None).await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&Method::GET, &url, status, &text));
        }
        text.trim().parse().map_err(|_| {
            self.error(
                format!(
                    "GET {}: not a version number: {:?}",
                    url.path(),
                    text.trim()
                ),
                Permanence::Transient,
            )
        })
    }

    /// The managed slots of a backend: slot number → slot; `None` when the backend does not
    /// exist. With them, the configuration version they were read at, when the answer says
    /// (the `Configuration-Version` header of v3, `_version` of v2).
    async fn slot_servers(
        &self,
        backend: &str,
        tx: Option<&str>,
    ) -> Result<(Option<BTreeMap<u32, Current>>, Option<u64>), TargetError> {
        let url = self.server_url(backend, None, tx);
        let (status, text, header_version) = self.send_versioned(Method::GET, url.clone()).await?;
        if status == StatusCode::NOT_FOUND {
            return Ok((None, header_version));
        }
        if status != StatusCode::OK {
            return Err(self.unexpected(&Method::GET, &url, status, &text));
        }
        // Server by server: each object is reduced to its slot as soon as it is decoded,
        // so a backend of 20,000 servers is never held as a tree of JSON values.
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(&text);
        let decoded = ServerList {
            prefix: &self.prefix,
        }
        .deserialize(&mut de)
        .and_then(|r| de.end().map(|()| r));
        let (slots, body_version) = match decoded {
            Ok((Some(slots), v)) => (slots, v),
            Ok((None, _)) => {
                return Err(self.error(
                    format!("GET {}: the answer is not a list of servers", url.path()),
                    Permanence::Transient,
                ))
            }
            Err(e) => {
                return Err(self.error(
                    format!("GET {}: unexpected answer: {e}", url.path()),
                    Permanence::Transient,
                ))
            }
        };
        Ok((Some(slots), header_version.or(body_version)))
    }

    /// A GET answering status, body and the `Configuration-Version` header when present.
    async fn send_versioned(
        &self,
        method: Method,
        url: Url,
    ) -> Result<(StatusCode, String, Option<u64>), TargetError> {
        let what = format!("{method} {}", url.path());
        let resp = self
            .http
            .request(method, url)
            .basic_auth(&self.username, Some(self.password.expose()))
            .send()
            .await
            .map_err(|e| {
                self.error(
                    format!("{what}: {}", transport_detail(&e)),
                    Permanence::Transient,
                )
            })?;
        let status = resp.status();
        let version = resp
            .headers()
            .get("configuration-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = crate::net::body_text(resp).await.map_err(|e| {
            self.error(
                format!("{what}: reading the answer failed: {e}"),
                Permanence::Transient,
            )
        })?;
        if matches!(status.as_u16(), 401 | 403) {
            return Err(self.error(
                format!(
                    "{what} answered {}: check username and password",
                    status.as_u16()
                ),
                Permanence::Permanent,
            ));
        }
        Ok((status, text, version))
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot_name(&self, n: u32) -> String {
        format!("{}{n}", self.prefix)
    }

    /// A write inside a transaction; 409 is a conflict.
    async fn write(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        ok: &[u16],
    ) -> Result<(), Abort> {
        let (status, text) = self.send(method.clone(), url.clone(), body).await?;
        if ok.contains(&status.as_u16()) {
            return Ok(());
        }
        if matches!(status.as_u16(), 406 | 409) {
            return Err(Abort::Conflict(format!(
                "{method} {} answered {}: {}",
                url.path(),
                status.as_u16(),
                api_message(&text)
            )));
        }
        Err(Abort::Failed(self.unexpected(&method, &url, status, &text)))
    }

    /// Whether a missing backend may be created: with `create_backends`, or when it is the
    /// backend of a service found by tags.
    fn may_create(&self, upstream: &UpstreamRef) -> bool {
        self.create_backends || upstream.create
    }

    /// The configured server parameters of a backend (see [`configured_params`]).
    fn configured(&self, backend: &str) -> Option<&ServerParams> {
        configured_params(&self.params, &self.service_params, backend)
    }

    /// Applies the non-empty plans of `items` in as few transactions as possible, one batch
    /// at a time per target. One report per item, in order.
    async fn run_batch(&self, items: &[(&UpstreamRef, &Plan)]) -> Vec<ApplyReport> {
        let _one_at_a_time = self.serial.lock().await;
        // Final reports; a plan with nothing to write never enters a transaction.
        let mut done: Vec<Option<ApplyReport>> = items
            .iter()
            .map(|(_, plan)| plan.is_empty().then(ApplyReport::default))
            .collect();
        let mut conflicts = 0;
        loop {
            let live: Vec<usize> = (0..items.len()).filter(|i| done[*i].is_none()).collect();
            if live.is_empty() {
                break;
            }
            match self.attempt(items, &live).await {
                Ok(Outcome::Done(reports)) => {
                    for (i, report) in live.iter().zip(reports) {
                        done[*i] = Some(report);
                    }
                }
                Ok(Outcome::Dropped(i, error)) => {
                    tracing::warn!(
                        backend = %items[i].0.name,
                        error = %error,
                        "Data Plane API refused a write after others of this backend were \
                         staged; dropping the transaction and applying the other backends in a \
                         fresh one."
                    );
                    done[i] = Some(failed(error));
                }
                Err(Abort::Failed(e)) => {
                    for i in live {
                        done[i] = Some(failed(TargetError {
                            message: e.message.clone(),
                            permanence: e.permanence,
                        }));
                    }
                }
                Err(Abort::Conflict(why)) => {
                    conflicts += 1;
                    if conflicts < MAX_ATTEMPTS {
                        tracing::info!(
                            attempt = conflicts,
                            backends = live.len(),
                            "Data Plane API version conflict ({why}); starting again from a \
                             fresh transaction."
                        );
                        continue;
                    }
                    for i in live {
                        done[i] = Some(failed(self.error(
                            format!(
                                "backend {}: the configuration version changed under \
                                 {MAX_ATTEMPTS} transactions in a row ({why}); retried next cycle",
                                items[i].0.name
                            ),
                            Permanence::Transient,
                        )));
                    }
                }
            }
        }
        // What observe read is for this cycle's transaction only.
        let mut remembered = self.remembered();
        for (upstream, _) in items {
            remembered.remove(&upstream.name);
        }
        drop(remembered);
        done.into_iter().map(Option::unwrap_or_default).collect()
    }

    /// One transaction over the items `live` (indices into `items`): read the version, open
    /// the transaction, stage every backend, commit (or delete it when nothing was written).
    async fn attempt(
        &self,
        items: &[(&UpstreamRef, &Plan)],
        live: &[usize],
    ) -> Result<Outcome, Abort> {
        let version = self.configuration_version().await?;
        let url = self.url(&["transactions"], &[("version", &version.to_string())]);
        let (status, text) = self.send(Method::POST, url.clone(), None).await?;
        if status.as_u16() == 409 || status.as_u16() == 406 {
            return Err(Abort::Conflict(format!(
                "starting a transaction: {}",
                api_message(&text)
            )));
        }
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(Abort::Failed(self.unexpected(
                &Method::POST,
                &url,
                status,
                &text,
            )));
        }
        let tx = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            .ok_or_else(|| {
                Abort::Failed(self.error(
                    format!("POST {}: no transaction id in the answer", url.path()),
                    Permanence::Transient,
                ))
            })?;
        let result = self.in_transaction(items, live, &tx, version).await;
        if !matches!(result, Ok((_, true))) {
            // Not committed: drop it (best effort; an outdated one may be gone already).
            let url = self.url(&["transactions", &tx], &[]);
            let _ = self.send(Method::DELETE, url, None).await;
        }
        result.map(|(outcome, _)| outcome)
    }

    /// Stages every live backend in `tx` and commits. Returns the outcome and whether the
    /// transaction was committed.
    async fn in_transaction(
        &self,
        items: &[(&UpstreamRef, &Plan)],
        live: &[usize],
        tx: &str,
        version: u64,
    ) -> Result<(Outcome, bool), Abort> {
        let mut reports = Vec::with_capacity(live.len());
        let mut writes = 0;
        for &i in live {
            let (upstream, plan) = items[i];
            let mut report = ApplyReport::default();
            match self.stage(upstream, plan, tx, version, &mut report).await {
                Ok(n) => writes += n,
                Err(BackendError::Conflict(why)) => return Err(Abort::Conflict(why)),
                // The API itself is in trouble (or the answer was lost): nothing is committed.
                Err(BackendError::Failed { error, .. })
                    if error.permanence == Permanence::Transient =>
                {
                    return Err(Abort::Failed(error))
                }
                // Writes of this backend are staged and cannot be taken back one by one:
                // committing them would half-apply its plan.
                Err(BackendError::Failed {
                    error,
                    staged: true,
                }) => return Ok((Outcome::Dropped(i, error), false)),
                // Nothing of this backend is staged: the others go on.
                Err(BackendError::Failed {
                    error,
                    staged: false,
                }) => report = failed(error),
            }
            reports.push(report);
        }
        if writes == 0 {
            return Ok((Outcome::Done(reports), false));
        }
        let url = self.url(&["transactions", tx], &[]);
        self.write(Method::PUT, url, None, &[200, 202]).await?;
        tracing::debug!(
            backends = live.len(),
            writes,
            "Data Plane API transaction committed."
        );
        Ok((Outcome::Done(reports), true))
    }

    /// Stages one backend's plan in `tx` (opened on `version`): takes its slot servers as
    /// `observe` read them when that was at the same version, else reads them in the
    /// transaction; creates it when it is missing and may be created, writes the changed
    /// slots. Fills `report` and returns the number of writes staged.
    async fn stage(
        &self,
        upstream: &UpstreamRef,
        plan: &Plan,
        tx: &str,
        version: u64,
        report: &mut ApplyReport,
    ) -> Result<usize, BackendError> {
        let backend = upstream.name.as_str();
        let unstaged = |error| BackendError::Failed {
            error,
            staged: false,
        };
        let observed = self
            .remembered()
            .remove(backend)
            .filter(|(at, _)| *at == version)
            .map(|(_, slots)| slots);
        let read = match observed {
            Some(slots) => Ok((Some(slots), None)),
            None => self.slot_servers(backend, Some(tx)).await,
        };
        let (current, mut staged) = match read {
            Ok((Some(c), _)) => (c, 0),
            Ok((None, _)) if self.may_create(upstream) => {
                self.create_backend(backend, upstream.kind, tx)
                    .await
                    .map_err(|a| BackendError::of(a, false))?;
                (BTreeMap::new(), 1)
            }
            Ok((None, _)) => return Err(unstaged(self.missing(backend))),
            Err(e) => return Err(unstaged(e)),
        };
        let mut problems = Vec::new();
        let (writes, slots) = plan_slots(
            &current,
            plan,
            &self.slots,
            self.check,
            report,
            &mut problems,
            &mut 0,
        );
        let placed = report.added.len();
        for (server, _) in plan.add.iter().skip(placed) {
            problems.push(format!("no slot for {server}"));
        }
        report.errors.extend(
            problems
                .into_iter()
                .map(|p| self.error(format!("backend {backend}: {p}"), Permanence::Transient)),
        );
        for w in &writes {
            let result = match w {
                Write::Create(n) | Write::Replace(n) => {
                    let name = self.slot_name(*n);
                    let slot = slots.get(n).cloned().unwrap_or(Slot::Free);
                    let body = server_body(&name, &slot, self.check);
                    if matches!(w, Write::Create(..)) {
                        let url = self.server_url(backend, None, Some(tx));
                        self.write(Method::POST, url, Some(&body), &[201, 202])
                            .await
                    } else {
                        let url = self.server_url(backend, Some(&name), Some(tx));
                        self.write(Method::PUT, url, Some(&body), &[200, 202]).await
                    }
                }
                Write::Delete(n) => {
                    let url = self.server_url(backend, Some(&self.slot_name(*n)), Some(tx));
                    self.write(Method::DELETE, url, None, &[202, 204]).await
                }
            };
            result.map_err(|a| BackendError::of(a, staged > 0))?;
            staged += 1;
        }
        Ok(staged)
    }
}

/// What one transaction of a batch came to.
enum Outcome {
    /// Committed, or nothing to commit: one report per live item, in order.
    Done(Vec<ApplyReport>),
    /// Item `.0` failed a write after others of its writes were staged: the transaction is
    /// dropped and the batch goes on without it.
    Dropped(usize, TargetError),
}

/// Why staging one backend stopped.
enum BackendError {
    /// The configuration moved under the transaction: the whole batch starts again.
    Conflict(String),
    /// This backend failed; `staged`: some of its writes are already in the transaction.
    Failed { error: TargetError, staged: bool },
}

impl BackendError {
    fn of(abort: Abort, staged: bool) -> Self {
        match abort {
            Abort::Conflict(why) => BackendError::Conflict(why),
            Abort::Failed(error) => BackendError::Failed { error, staged },
        }
    }
}

/// A report of an item that failed as a whole.
fn failed(error: TargetError) -> ApplyReport {
    ApplyReport {
        errors: vec![error],
        ..ApplyReport::default()
    }
}

/// The configured parameters of `backend`: those of the upstream of that name, else those
/// of the service template (`services:`) with the longest name prefix (`{name}{separator}`)
/// the backend's name starts with.
fn configured_params<'a>(
    exact: &'a BTreeMap<String, ServerParams>,
    prefixes: &'a BTreeMap<String, ServerParams>,
    backend: &str,
) -> Option<&'a ServerParams> {
    exact.get(backend).or_else(|| {
        prefixes
            .iter()
            .filter(|(p, _)| backend.len() > p.len() && backend.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, params)| params)
    })
}

/// The names starting with `prefix` in a backends list answer (already unwrapped from the
/// v2 envelope), sorted; `None` when it is not a list.
fn backend_names(list: &Value, prefix: &str) -> Option<Vec<String>> {
    let mut names: Vec<String> = list
        .as_array()?
        .iter()
        .filter_map(|b| b.get("name").and_then(Value::as_str))
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    Some(names)
}

impl HaproxyDataplane {
    /// Creates `backend` in the transaction: `mode` from the upstream's kind, `roundrobin`
    /// (a dynamic algorithm, so HAProxy can also change its servers at run time).
    async fn create_backend(
        &self,
        backend: &str,
        kind: UpstreamKind,
        tx: &str,
    ) -> Result<(), Abort> {
        let mode = match kind {
            UpstreamKind::Http => "http",
            UpstreamKind::Stream => "tcp",
        };
        let body = json!({"name": backend, "mode": mode, "balance": {"algorithm": self.balance}});
        let url = self.url(&["configuration", "backends"], &[("transaction_id", tx)]);
        self.write(Method::POST, url, Some(&body), &[201, 202])
            .await?;
        tracing::info!(
            backend,
            mode,
            "Data Plane API: creating the missing backend."
        );
        Ok(())
    }
}

use crate::net::transport_detail;

#[async_trait]
impl Target for HaproxyDataplane {
    fn kind(&self) -> &'static str {
        "haproxy-dataplane"
    }

    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        let url = self.url(&["configuration", "backends", &upstream.name], &[]);
        let (status, text) = self.send(Method::GET, url.clone(), None).await?;
        match status.as_u16() {
            200 => Ok(()),
            404 if self.may_create(upstream) => Ok(()),
            404 => Err(self.missing(&upstream.name)),
            _ => Err(self.unexpected(&Method::GET, &url, status, &text)),
        }
    }

    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        let configured = self.configured(&upstream.name);
        let (servers, version) = self.slot_servers(&upstream.name, None).await?;
        let servers = match servers {
            Some(s) => s,
            // Created by the first apply.
            None if self.may_create(upstream) => {
                self.remembered().remove(&upstream.name);
                return Ok(Vec::new());
            }
            None => return Err(self.missing(&upstream.name)),
        };
        let observed = servers
            .iter()
            .filter_map(|(n, c)| match &c.slot {
                Slot::Free => None,
                Slot::Used {
                    server,
                    max_conns,
                    slow_start,
                    draining,
                } => Some(ObservedServer {
                    id: u64::from(*n),
                    server: server.clone(),
                    params: configured.map(|p| ServerParams {
                        max_conns: *max_conns,
                        slow_start: *slow_start,
                        ..*p
                    }),
                    state: if *draining {
                        ServerState::Draining
                    } else {
                        ServerState::Active
                    },
                }),
            })
            .collect();
        let mut remembered = self.remembered();
        match version {
            Some(v) => remembered.insert(upstream.name.clone(), (v, servers)),
            None => remembered.remove(&upstream.name),
        };
        Ok(observed)
    }

    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport {
        self.run_batch(&[(upstream, plan)])
            .await
            .pop()
            .unwrap_or_default()
    }

    fn batches(&self) -> bool {
        true
    }

    async fn apply_batch(&self, items: &[(UpstreamRef, Plan)]) -> Vec<ApplyReport> {
        let items: Vec<(&UpstreamRef, &Plan)> = items.iter().map(|(u, p)| (u, p)).collect();
        self.run_batch(&items).await
    }

    async fn list_upstreams(&self, prefix: &str) -> Result<Option<Vec<String>>, TargetError> {
        let url = self.url(&["configuration", "backends"], &[]);
        let (status, text) = self.send(Method::GET, url.clone(), None).await?;
        if status != StatusCode::OK {
            return Err(self.unexpected(&Method::GET, &url, status, &text));
        }
        serde_json::from_str::<Value>(&text)
            .ok()
            .map(data)
            .and_then(|list| backend_names(&list, prefix))
            .map(Some)
            .ok_or_else(|| {
                self.error(
                    format!("GET {}: the answer is not a list of backends", url.path()),
                    Permanence::Transient,
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Removal, Update};

    fn policy(base: u32, growth_type: SlotGrowth, growth_factor: f64) -> ServerSlots {
        ServerSlots {
            base,
            growth_factor,
            growth_type,
        }
    }

    fn p() -> ServerParams {
        ServerParams {
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        }
    }

    fn used(server: &str) -> Value {
        json!({"name": "x", "address": server.split(':').next().unwrap(), "port": server.split(':').nth(1).unwrap().parse::<u16>().unwrap(), "maintenance": "disabled"})
    }

    fn free() -> Value {
        json!({"name": "x", "address": "127.0.0.1", "port": 80, "maintenance": "enabled"})
    }

    /// `plan_slots` on server objects as the API answers them.
    fn plan_slots(
        current: &BTreeMap<u32, Value>,
        plan: &Plan,
        policy: &ServerSlots,
        check: bool,
        done: &mut ApplyReport,
        problems: &mut Vec<String>,
    ) -> (Vec<Write>, BTreeMap<u32, Slot>) {
        let current = current.iter().map(|(n, v)| (*n, Current::of(v))).collect();
        super::plan_slots(&current, plan, policy, check, done, problems, &mut 0)
    }

    fn server(i: usize) -> String {
        format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 255, i & 255)
    }

    /// Slot-planning steps per server for three plans on a backend of `n` servers: fill
    /// an empty backend, replace half of a full one, shrink a full one to a tenth.
    fn steps_per_server(n: usize) -> [f64; 3] {
        let policy = policy(10, SlotGrowth::Linear, 1.0);
        let full: BTreeMap<u32, Value> = (0..n).map(|i| (i as u32 + 1, used(&server(i)))).collect();
        let removal = |i: usize| Removal {
            id: i as u64 + 1,
            server: server(i),
            state: ServerState::Active,
        };
        let plans = [
            (
                BTreeMap::new(),
                Plan {
                    add: (0..n).map(|i| (server(i), p())).collect(),
                    ..Plan::default()
                },
            ),
            (
                full.clone(),
                Plan {
                    add: (n..n + n / 2).map(|i| (server(i), p())).collect(),
                    remove: (0..n / 2).map(removal).collect(),
                    ..Plan::default()
                },
            ),
            (
                full,
                Plan {
                    remove: (0..n - n / 10).map(removal).collect(),
                    ..Plan::default()
                },
            ),
        ];
        plans.map(|(current, plan)| {
            let current = current.iter().map(|(k, v)| (*k, Current::of(v))).collect();
            let mut steps = 0;
            let mut done = ApplyReport::default();
            let (writes, slots) = super::plan_slots(
                &current,
                &plan,
                &policy,
                false,
                &mut done,
                &mut Vec::new(),
                &mut steps,
            );
            // The plan was carried out in full: every add placed, the backend at its size.
            assert_eq!(done.added.len(), plan.add.len());
            assert_eq!(done.removed.len(), plan.remove.len());
            let held = slots.values().filter(|s| **s != Slot::Free).count();
            assert_eq!(slots.len(), slots_for(held, &policy));
            assert!(!writes.is_empty());
            steps as f64 / n as f64
        })
    }

    #[test]
    fn slot_planning_work_per_server_at_20000_servers_is_within_2x_of_1000() {
        let small = steps_per_server(1_000);
        let large = steps_per_server(20_000);
        for (case, (s, l)) in ["fill", "replace half", "shrink"]
            .iter()
            .zip(small.iter().zip(large))
        {
            assert!(
                l <= 2.0 * s,
                "{case}: {l:.1} steps per server at 20,000 servers, {s:.1} at 1,000"
            );
        }
    }

    #[test]
    fn slots_grow_like_the_haproxy_daemon() {
        let lin = policy(10, SlotGrowth::Linear, 1.5);
        assert_eq!(slots_for(0, &lin), 10);
        assert_eq!(slots_for(10, &lin), 10);
        assert_eq!(slots_for(11, &lin), 12);
        assert_eq!(slots_for(20, &lin), 25);
        let exp = policy(10, SlotGrowth::Exponential, 2.0);
        assert_eq!(slots_for(11, &exp), 20);
        assert_eq!(slots_for(21, &exp), 40);
        let exp15 = policy(4, SlotGrowth::Exponential, 1.5);
        assert_eq!(slots_for(5, &exp15), 6);
        assert_eq!(slots_for(7, &exp15), 9);
    }

    #[test]
    fn a_new_backend_gets_its_base_slots_and_adds_fill_the_lowest() {
        let mut done = ApplyReport::default();
        let mut problems = Vec::new();
        let plan = Plan {
            add: vec![("10.0.0.4:80".into(), p()), ("10.0.0.5:80".into(), p())],
            ..Plan::default()
        };
        let (writes, slots) = plan_slots(
            &BTreeMap::new(),
            &plan,
            &policy(3, SlotGrowth::Linear, 1.0),
            false,
            &mut done,
            &mut problems,
        );
        assert_eq!(writes.len(), 3);
        assert!(writes.iter().all(|w| matches!(w, Write::Create(..))));
        assert!(matches!(&slots[&1], Slot::Used { server, .. } if server == "10.0.0.4:80"));
        assert!(matches!(&slots[&2], Slot::Used { server, .. } if server == "10.0.0.5:80"));
        assert_eq!(slots[&3], Slot::Free);
        assert_eq!(done.added.len(), 2);
        assert!(problems.is_empty());
    }

    #[test]
    fn removals_free_slots_and_unchanged_slots_are_not_written() {
        let current = BTreeMap::from([
            (1, used("10.0.0.4:80")),
            (2, used("10.0.0.5:80")),
            (3, free()),
        ]);
        let plan = Plan {
            remove: vec![Removal {
                id: 2,
                server: "10.0.0.5:80".into(),
                state: ServerState::Active,
            }],
            ..Plan::default()
        };
        let (mut done, mut problems) = (ApplyReport::default(), Vec::new());
        let (writes, slots) = plan_slots(
            &current,
            &plan,
            &policy(3, SlotGrowth::Linear, 1.0),
            false,
            &mut done,
            &mut problems,
        );
        assert_eq!(writes, vec![Write::Replace(2)]);
        assert_eq!(slots[&2], Slot::Free);
        assert_eq!(done.removed, ["10.0.0.5:80"]);
    }

    #[test]
    fn shrinking_moves_high_servers_down_and_deletes_free_slots() {
        let mut current = BTreeMap::new();
        for n in 1..=6u32 {
            current.insert(n, used(&format!("10.0.0.{n}:80")));
        }
        // Remove 1..=4: two servers (5, 6) remain, base 3 → slots 1..=3, servers moved down.
        let plan = Plan {
            remove: (1..=4u64)
                .map(|n| Removal {
                    id: n,
                    server: format!("10.0.0.{n}:80"),
                    state: ServerState::Active,
                })
                .collect(),
            ..Plan::default()
        };
        let (mut done, mut problems) = (ApplyReport::default(), Vec::new());
        let (writes, slots) = plan_slots(
            &current,
            &plan,
            &policy(3, SlotGrowth::Linear, 1.0),
            false,
            &mut done,
            &mut problems,
        );
        assert_eq!(slots.len(), 3);
        let held: Vec<&str> = slots
            .values()
            .filter_map(|s| match s {
                Slot::Used { server, .. } => Some(server.as_str()),
                Slot::Free => None,
            })
            .collect();
        assert_eq!(held, ["10.0.0.5:80", "10.0.0.6:80"]);
        assert!(
            writes.contains(&Write::Delete(6))
                && writes.contains(&Write::Delete(5))
                && writes.contains(&Write::Delete(4))
        );
    }

    #[test]
    fn drains_set_weight_zero_and_read_back_as_draining() {
        let current = BTreeMap::from([(1, used("10.0.0.4:80"))]);
        let plan = Plan {
            update: vec![Update {
                id: 1,
                server: "10.0.0.4:80".into(),
                params: None,
                state: ServerState::Draining,
                was: ServerState::Active,
            }],
            ..Plan::default()
        };
        let (mut done, mut problems) = (ApplyReport::default(), Vec::new());
        let (writes, slots) = plan_slots(
            &current,
            &plan,
            &policy(1, SlotGrowth::Linear, 1.0),
            false,
            &mut done,
            &mut problems,
        );
        assert_eq!(writes, vec![Write::Replace(1)]);
        let body = server_body("vmss-1", &slots[&1], true);
        assert_eq!(body["weight"], 0);
        assert_eq!(body["check"], "enabled");
        assert!(matches!(slot_of(&body), Slot::Used { draining: true, .. }));
        assert_eq!(done.drained, ["10.0.0.4:80"]);
    }

    #[test]
    fn a_stale_id_is_a_problem_not_a_write() {
        let current = BTreeMap::from([(1, used("10.0.0.4:80"))]);
        let plan = Plan {
            remove: vec![Removal {
                id: 1,
                server: "10.0.0.9:80".into(),
                state: ServerState::Active,
            }],
            ..Plan::default()
        };
        let (mut done, mut problems) = (ApplyReport::default(), Vec::new());
        let (writes, _) = plan_slots(
            &current,
            &plan,
            &policy(1, SlotGrowth::Linear, 1.0),
            false,
            &mut done,
            &mut problems,
        );
        assert!(writes.is_empty());
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn params_are_looked_up_by_exact_name_then_by_the_longest_service_prefix() {
        let with = |max_conns| ServerParams { max_conns, ..p() };
        let exact = BTreeMap::from([("web".to_string(), with(1))]);
        let prefixes = BTreeMap::from([
            ("svc-".to_string(), with(2)),
            ("svc-eu-".to_string(), with(3)),
        ]);
        let find = |name| configured_params(&exact, &prefixes, name).map(|p| p.max_conns);
        assert_eq!(find("web"), Some(1));
        assert_eq!(find("svc-api-80-eastus"), Some(2));
        assert_eq!(find("svc-eu-api-80-westeurope"), Some(3), "longest prefix");
        assert_eq!(find("svc-"), None, "a prefix alone names no backend");
        assert_eq!(
            find("web-api-80-eastus"),
            None,
            "exact names are not prefixes"
        );
        assert_eq!(find("other"), None);
    }

    #[test]
    fn backend_names_filter_by_prefix_in_v3_and_v2_answers() {
        let v3 = json!([{"name": "svc-b-80-x"}, {"name": "web"}, {"name": "svc-a-80-x"}, {"mode": "http"}]);
        assert_eq!(
            backend_names(&data(v3), "svc-"),
            Some(vec!["svc-a-80-x".to_string(), "svc-b-80-x".to_string()])
        );
        let v2 = json!({"_version": 4, "data": [{"name": "svc-a-80-x"}, {"name": "svcx"}]});
        assert_eq!(
            backend_names(&data(v2), "svc-"),
            Some(vec!["svc-a-80-x".to_string()])
        );
        assert_eq!(backend_names(&json!({"message": "no"}), "svc-"), None);
    }

    #[test]
    fn slot_names_are_the_prefix_and_a_number() {
        assert_eq!(slot_number("vmss-", "vmss-12"), Some(12));
        assert_eq!(slot_number("vmss-", "vmss-012"), None);
        assert_eq!(slot_number("vmss-", "web1"), None);
        assert_eq!(slot_number("srv", "srv3"), Some(3));
    }
}
