//! Fake Azure Network writes for the Azure targets: Route Server BGP peerings
//! (`virtualHubs/{hub}/bgpConnections`: List, Get, PUT, DELETE) and IP-based Load Balancer
//! backend pools (`loadBalancers/{lb}/backendAddressPools/{pool}`: GET, PUT), served by
//! the fake ARM (same bearer token and api-version checks).
//!
//! Behaves like the network resource provider: a write answers 201/200 (PUT) or 202
//! (DELETE) with `Azure-AsyncOperation` (and `Location` for deletes) pointing at
//! `/subscriptions/{sub}/providers/Microsoft.Network/locations/eastus/operations/{id}` on
//! the fake; the resource shows `provisioningState: Updating` (or `Deleting`) until the
//! operation ends after a configurable delay. A write to a hub or pool while another
//! operation runs on it is answered 409 `AnotherOperationInProgress`; a pool PUT with a
//! stale `If-Match` is answered 412 `PreconditionFailed`. Like Azure, a hub refuses a
//! peering whose peer IP another of its peerings already has, and a hub given a peering
//! limit refuses creates beyond it (400 `BgpConnectionLimitReached`); a pool PUT that
//! names one IP address twice is refused (400 `DuplicateBackendAddressInPool`). (The two
//! error codes are the testbed's: what matters is that Azure refuses, and vmss-sync
//! recognises any code ending in `LimitReached`.) Operations can be held (they never
//! finish until released), hubs made busy, and concurrent pool writers injected.
//! Shapes follow `shared/azure-examples` (`VirtualHubBgpConnection_*`,
//! `LoadBalancerBackendAddressPools_CreateOrUpdate`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::util::{guid, lock, Reply, Req};
use crate::wire::{arm_error, NETWORK_API_VERSIONS};

const LOCATION: &str = "eastus";

/// Which headers a write's answer points at its long-running operation with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LroHeaders {
    /// `Azure-AsyncOperation` (and `Location` on deletes), as the network RP does.
    #[default]
    AsyncOperation,
    /// Only `Location` (202 until done, then 200 or 204).
    LocationOnly,
    /// Neither: the client must poll the resource's `provisioningState`.
    None,
}

/// One write operation as the fake ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkOperation {
    /// `hub/{name}` or `pool/{lb}/{pool}` (lower case).
    pub scope: String,
    /// PUT or DELETE.
    pub method: String,
    /// The peering name (or the pool name).
    pub name: String,
    /// When it started.
    pub started: Instant,
    /// When it ended (None: still running).
    pub finished: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Conn {
    name: String,
    peer_ip: String,
    peer_asn: u64,
    state: &'static str,
    etag: String,
}

#[derive(Debug, Default)]
struct Hub {
    sub: String,
    rg: String,
    name: String,
    conns: BTreeMap<String, Conn>,
    busy_until: Option<Instant>,
    /// Peerings the hub takes at most (None: no limit).
    peer_limit: Option<usize>,
    /// Creates refused because of `peer_limit`.
    limit_refusals: u64,
}

#[derive(Debug, Default)]
struct Pool {
    sub: String,
    rg: String,
    lb: String,
    name: String,
    addresses: Vec<Value>,
    etag: String,
    state: &'static str,
    conflicts: u32,
}

#[derive(Debug)]
enum Effect {
    ConnReady(String, String),
    ConnGone(String, String),
    PoolReady(String),
}

#[derive(Debug)]
struct Op {
    done_at: Option<Instant>,
    /// Ended (Succeeded, or Failed when `failed`).
    succeeded: bool,
    failed: bool,
    effect: Effect,
    log_index: usize,
    scope: String,
}

/// State of the fake network resources.
#[derive(Debug)]
pub(crate) struct NetworkState {
    hubs: BTreeMap<String, Hub>,
    pools: BTreeMap<String, Pool>,
    ops: BTreeMap<String, Op>,
    delay: Duration,
    hold: bool,
    log: Vec<NetworkOperation>,
    conflicts_409: u64,
    if_match_puts: u64,
    lro_headers: LroHeaders,
    fail_next: u32,
}

impl Default for NetworkState {
    fn default() -> Self {
        NetworkState {
            hubs: BTreeMap::new(),
            pools: BTreeMap::new(),
            ops: BTreeMap::new(),
            delay: Duration::from_millis(150),
            hold: false,
            log: Vec::new(),
            conflicts_409: 0,
            if_match_puts: 0,
            lro_headers: LroHeaders::default(),
            fail_next: 0,
        }
    }
}

fn key(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join("/")
}

fn etag() -> String {
    format!("W/\"{}\"", guid())
}

impl NetworkState {
    /// Ends every operation whose time has come.
    fn advance(&mut self, now: Instant) {
        let due: Vec<String> = self
            .ops
            .iter()
            .filter(|(_, o)| !o.succeeded && o.done_at.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for id in due {
            let Some(op) = self.ops.get_mut(&id) else {
                continue;
            };
            op.succeeded = true;
            if let Some(l) = self.log.get_mut(op.log_index) {
                l.finished = Some(now);
            }
            if op.failed {
                match &op.effect {
                    Effect::ConnReady(hub, name) | Effect::ConnGone(hub, name) => {
                        if let Some(c) = self.hubs.get_mut(hub).and_then(|h| h.conns.get_mut(name))
                        {
                            c.state = "Failed";
                        }
                    }
                    Effect::PoolReady(pool) => {
                        if let Some(p) = self.pools.get_mut(pool) {
                            p.state = "Failed";
                        }
                    }
                }
                continue;
            }
            match &op.effect {
                Effect::ConnReady(hub, name) => {
                    if let Some(c) = self.hubs.get_mut(hub).and_then(|h| h.conns.get_mut(name)) {
                        c.state = "Succeeded";
                    }
                }
                Effect::ConnGone(hub, name) => {
                    if let Some(h) = self.hubs.get_mut(hub) {
                        h.conns.remove(name);
                    }
                }
                Effect::PoolReady(pool) => {
                    if let Some(p) = self.pools.get_mut(pool) {
                        p.state = "Succeeded";
                    }
                }
            }
        }
    }

    fn busy(&self, scope: &str, now: Instant) -> bool {
        self.ops.values().any(|o| !o.succeeded && o.scope == scope)
            || self
                .hubs
                .get(scope)
                .and_then(|h| h.busy_until)
                .is_some_and(|t| t > now)
    }

    fn start(&mut self, scope: &str, method: &str, name: &str, effect: Effect) -> String {
        let now = Instant::now();
        let id = guid();
        let failed = self.fail_next > 0;
        self.fail_next = self.fail_next.saturating_sub(1);
        self.log.push(NetworkOperation {
            scope: scope.to_string(),
            method: method.to_string(),
            name: name.to_string(),
            started: now,
            finished: None,
        });
        self.ops.insert(
            id.clone(),
            Op {
                done_at: (!self.hold).then(|| now + self.delay),
                succeeded: false,
                failed,
                effect,
                log_index: self.log.len() - 1,
                scope: scope.to_string(),
            },
        );
        id
    }
}

/// Handle to script and inspect the fake network resources.
#[derive(Clone)]
pub struct Network {
    pub(crate) state: Arc<Mutex<NetworkState>>,
}

impl Network {
    fn with<T>(&self, f: impl FnOnce(&mut NetworkState) -> T) -> T {
        let mut st = lock(&self.state);
        st.advance(Instant::now());
        f(&mut st)
    }

    /// Adds a Route Server (virtual hub) without peerings.
    pub fn add_route_server(&self, sub: &str, rg: &str, hub: &str) {
        self.with(|st| {
            st.hubs.insert(
                key(&[sub, rg, hub]),
                Hub {
                    sub: sub.into(),
                    rg: rg.into(),
                    name: hub.into(),
                    ..Hub::default()
                },
            );
        });
    }

    /// Adds a peering made by a person (Succeeded at once).
    pub fn add_peering(&self, sub: &str, rg: &str, hub: &str, name: &str, ip: &str, asn: u64) {
        self.with(|st| {
            if let Some(h) = st.hubs.get_mut(&key(&[sub, rg, hub])) {
                h.conns.insert(
                    name.to_ascii_lowercase(),
                    Conn {
                        name: name.into(),
                        peer_ip: ip.into(),
                        peer_asn: asn,
                        state: "Succeeded",
                        etag: etag(),
                    },
                );
            }
        });
    }

    /// Sets a peering's provisioning state (e.g. a person's peering stuck in `Updating`).
    pub fn set_peering_state(&self, sub: &str, rg: &str, hub: &str, name: &str, state: &str) {
        let state: &'static str = match state {
            "Updating" => "Updating",
            "Deleting" => "Deleting",
            "Failed" => "Failed",
            _ => "Succeeded",
        };
        self.with(|st| {
            if let Some(c) = st
                .hubs
                .get_mut(&key(&[sub, rg, hub]))
                .and_then(|h| h.conns.get_mut(&name.to_ascii_lowercase()))
            {
                c.state = state;
            }
        });
    }

    /// The hub's peerings: (name, peer IP, peer ASN, provisioning state), by name.
    pub fn peerings(&self, sub: &str, rg: &str, hub: &str) -> Vec<(String, String, u64, String)> {
        self.with(|st| {
            st.hubs
                .get(&key(&[sub, rg, hub]))
                .map(|h| {
                    h.conns
                        .values()
                        .map(|c| {
                            (
                                c.name.clone(),
                                c.peer_ip.clone(),
                                c.peer_asn,
                                c.state.to_string(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Writes to the hub are refused with 409 `AnotherOperationInProgress` for `d` (an
    /// operation someone else started on the hub).
    pub fn set_hub_busy(&self, sub: &str, rg: &str, hub: &str, d: Duration) {
        self.with(|st| {
            if let Some(h) = st.hubs.get_mut(&key(&[sub, rg, hub])) {
                h.busy_until = Some(Instant::now() + d);
            }
        });
    }

    /// The hub takes at most `limit` peerings (people's included): a create beyond it is
    /// refused with 400 `BgpConnectionLimitReached`; `None` lifts the limit.
    pub fn set_hub_peer_limit(&self, sub: &str, rg: &str, hub: &str, limit: Option<usize>) {
        self.with(|st| {
            if let Some(h) = st.hubs.get_mut(&key(&[sub, rg, hub])) {
                h.peer_limit = limit;
            }
        });
    }

    /// Creates the hub refused because it was full.
    pub fn limit_refusals(&self, sub: &str, rg: &str, hub: &str) -> u64 {
        self.with(|st| {
            st.hubs
                .get(&key(&[sub, rg, hub]))
                .map_or(0, |h| h.limit_refusals)
        })
    }

    /// Deletes a peering at once (a person removing theirs in the portal).
    pub fn remove_peering(&self, sub: &str, rg: &str, hub: &str, name: &str) {
        self.with(|st| {
            if let Some(h) = st.hubs.get_mut(&key(&[sub, rg, hub])) {
                h.conns.remove(&name.to_ascii_lowercase());
            }
        });
    }

    /// How long an operation runs before it succeeds (default 150 ms).
    pub fn set_operation_delay(&self, d: Duration) {
        self.with(|st| st.delay = d);
    }

    /// While held, operations never finish; releasing lets the held ones finish after the
    /// usual delay.
    pub fn hold_operations(&self, hold: bool) {
        self.with(|st| {
            st.hold = hold;
            if !hold {
                let at = Instant::now() + st.delay;
                for o in st.ops.values_mut() {
                    if o.done_at.is_none() {
                        o.done_at = Some(at);
                    }
                }
            }
        });
    }

    /// How writes point at their operations (default `Azure-AsyncOperation`).
    pub fn set_lro_headers(&self, h: LroHeaders) {
        self.with(|st| st.lro_headers = h);
    }

    /// The next `n` operations end `Failed` (the resource too).
    pub fn fail_next_operations(&self, n: u32) {
        self.with(|st| st.fail_next = n);
    }

    /// Every write operation, in start order.
    pub fn operations(&self) -> Vec<NetworkOperation> {
        self.with(|st| st.log.clone())
    }

    /// Writes refused with 409 because another operation was running.
    pub fn conflicts(&self) -> u64 {
        self.with(|st| st.conflicts_409)
    }

    /// Pool PUTs that carried `If-Match`.
    pub fn conditional_pool_writes(&self) -> u64 {
        self.with(|st| st.if_match_puts)
    }

    /// Adds an IP-based backend pool with addresses (name, IP, virtual network id).
    pub fn add_backend_pool(
        &self,
        sub: &str,
        rg: &str,
        lb: &str,
        pool: &str,
        addresses: &[(&str, &str, &str)],
    ) {
        self.with(|st| {
            st.pools.insert(
                key(&[sub, rg, lb, pool]),
                Pool {
                    sub: sub.into(),
                    rg: rg.into(),
                    lb: lb.into(),
                    name: pool.into(),
                    addresses: addresses
                        .iter()
                        .map(|(n, ip, vnet)| {
                            json!({"name": n, "properties": {"ipAddress": ip, "virtualNetwork": {"id": vnet}}})
                        })
                        .collect(),
                    etag: etag(),
                    state: "Succeeded",
                    conflicts: 0,
                },
            );
        });
    }

    /// The pool's addresses: (name, IP, virtual network id), in pool order.
    pub fn pool_addresses(
        &self,
        sub: &str,
        rg: &str,
        lb: &str,
        pool: &str,
    ) -> Vec<(String, String, String)> {
        self.with(|st| {
            st.pools
                .get(&key(&[sub, rg, lb, pool]))
                .map(|p| {
                    p.addresses
                        .iter()
                        .map(|a| {
                            let s = |ptr: &str| {
                                a.pointer(ptr)
                                    .and_then(Value::as_str)
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            (
                                s("/name"),
                                s("/properties/ipAddress"),
                                s("/properties/virtualNetwork/id"),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// The next `n` PUTs of the pool race a concurrent writer: just before each is checked,
    /// someone else adds an address (`people-race-{k}`) and the ETag changes, so a PUT with
    /// the ETag it read gets 412.
    pub fn race_pool_writes(&self, sub: &str, rg: &str, lb: &str, pool: &str, n: u32) {
        self.with(|st| {
            if let Some(p) = st.pools.get_mut(&key(&[sub, rg, lb, pool])) {
                p.conflicts = n;
            }
        });
    }
}

fn not_found(ty: &str, name: &str, rg: &str) -> Reply {
    arm_error(
        404,
        "ResourceNotFound",
        &format!("The Resource 'Microsoft.Network/{ty}/{name}' under resource group '{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix"),
    )
}

fn conflict(st: &mut NetworkState, what: &str) -> Reply {
    st.conflicts_409 += 1;
    arm_error(
        409,
        "AnotherOperationInProgress",
        &format!("Another operation on this or dependent resource is in progress. To retrieve status of the operation use uri: {what}. Retry the operation after the current operation is completed."),
    )
}

fn conn_json(h: &Hub, c: &Conn) -> Value {
    json!({
        "name": c.name,
        "id": format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/virtualHubs/{}/bgpConnections/{}",
            h.sub, h.rg, h.name, c.name
        ),
        "etag": c.etag,
        "type": "Microsoft.Network/virtualHubs/bgpConnections",
        "properties": {
            "provisioningState": c.state,
            "peerIp": c.peer_ip,
            "peerAsn": c.peer_asn,
            "connectionState": if c.state == "Succeeded" { "Connected" } else { "Connecting" },
        }
    })
}

fn pool_json(p: &Pool) -> Value {
    json!({
        "name": p.name,
        "id": format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/loadBalancers/{}/backendAddressPools/{}",
            p.sub, p.rg, p.lb, p.name
        ),
        "etag": p.etag,
        "type": "Microsoft.Network/loadBalancers/backendAddressPools",
        "properties": {
            "provisioningState": p.state,
            "loadBalancerBackendAddresses": p.addresses,
            "loadBalancingRules": [{
                "id": format!(
                    "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Network/loadBalancers/{}/loadBalancingRules/rule1",
                    p.sub, p.rg, p.lb
                )
            }],
        }
    })
}

fn op_url(arm: &str, sub: &str, id: &str, version: &str) -> String {
    format!(
        "{arm}/subscriptions/{sub}/providers/Microsoft.Network/locations/{LOCATION}/operations/{id}?api-version={version}"
    )
}

fn result_url(arm: &str, sub: &str, id: &str, version: &str) -> String {
    format!(
        "{arm}/subscriptions/{sub}/providers/Microsoft.Network/locations/{LOCATION}/operationResults/{id}?api-version={version}"
    )
}

fn empty(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

/// Adds the operation headers the fake is set to send.
fn lro(
    reply: Reply,
    mode: LroHeaders,
    arm: &str,
    sub: &str,
    id: &str,
    version: &str,
    delete: bool,
) -> Reply {
    match mode {
        LroHeaders::AsyncOperation if delete => reply
            .header("azure-asyncoperation", op_url(arm, sub, id, version))
            .header("location", result_url(arm, sub, id, version)),
        LroHeaders::AsyncOperation => {
            reply.header("azure-asyncoperation", op_url(arm, sub, id, version))
        }
        LroHeaders::LocationOnly => reply.header("location", result_url(arm, sub, id, version)),
        LroHeaders::None => reply,
    }
}

/// Serves the request when it is one of the network writes' paths; `None` otherwise.
pub(crate) fn serve(
    state: &Mutex<NetworkState>,
    arm_url: &str,
    req: &Req,
    segs: &[&str],
    version: &str,
) -> Option<Reply> {
    let low: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
    let l: Vec<&str> = low.iter().map(String::as_str).collect();
    let s = |i: usize| segs.get(i).copied().unwrap_or_default();
    enum Route {
        Operation,
        OperationResult,
        Conns,
        Conn,
        Pool,
    }
    let route = match l.as_slice() {
        ["subscriptions", _, "providers", "microsoft.network", "locations", _, "operations", _] => {
            Route::Operation
        }
        ["subscriptions", _, "providers", "microsoft.network", "locations", _, "operationresults", _] => {
            Route::OperationResult
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "virtualhubs", _, "bgpconnections"] => {
            Route::Conns
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "virtualhubs", _, "bgpconnections", _] => {
            Route::Conn
        }
        ["subscriptions", _, "resourcegroups", _, "providers", "microsoft.network", "loadbalancers", _, "backendaddresspools", _] => {
            Route::Pool
        }
        _ => return None,
    };
    if !NETWORK_API_VERSIONS.contains(&version) {
        return Some(arm_error(
            400,
            "InvalidApiVersionParameter",
            &format!(
                "The api-version '{version}' is invalid. The supported versions are '{}'.",
                NETWORK_API_VERSIONS.join(",")
            ),
        ));
    }
    let method = req.method.as_str();
    let allowed: &[&str] = match route {
        Route::Operation | Route::OperationResult | Route::Conns => &["GET"],
        Route::Conn => &["GET", "PUT", "DELETE"],
        Route::Pool => &["GET", "PUT"],
    };
    if !allowed.contains(&method) {
        return Some(Reply::json(
            405,
            &json!({"message": format!("The requested resource does not support http method '{method}'.")}),
        ));
    }
    let now = Instant::now();
    let mut guard = lock(state);
    let st = &mut *guard;
    st.advance(now);
    let reply = match route {
        Route::Operation => match st.ops.get(s(7)) {
            None => arm_error(404, "NotFound", "The operation was not found."),
            Some(o) if o.failed && o.succeeded => Reply::json(
                200,
                &json!({"status": "Failed", "error": {"code": "InternalServerError", "message": "An error occurred while provisioning the resource."}}),
            ),
            Some(o) if o.succeeded => Reply::json(200, &json!({"status": "Succeeded"})),
            Some(_) => Reply::json(200, &json!({"status": "InProgress"})),
        },
        Route::OperationResult => match st.ops.get(s(7)) {
            None => arm_error(404, "NotFound", "The operation was not found."),
            Some(o) if !o.succeeded => empty(202).header("location", req_url(arm_url, req)),
            Some(o) if o.failed => arm_error(
                500,
                "InternalServerError",
                "An error occurred while provisioning the resource.",
            ),
            Some(o) if matches!(o.effect, Effect::ConnGone(..)) => empty(204),
            Some(_) => Reply::json(200, &json!({})),
        },
        Route::Conns | Route::Conn => {
            let hk = key(&[s(1), s(3), s(7)]);
            if !st.hubs.contains_key(&hk) {
                return Some(not_found("virtualHubs", s(7), s(3)));
            }
            match (route, method) {
                (Route::Conns, _) => {
                    let h = &st.hubs[&hk];
                    let value: Vec<Value> = h.conns.values().map(|c| conn_json(h, c)).collect();
                    Reply::json(200, &json!({ "value": value }))
                }
                (_, "GET") => {
                    let h = &st.hubs[&hk];
                    match h.conns.get(&s(9).to_ascii_lowercase()) {
                        Some(c) => Reply::json(200, &conn_json(h, c)),
                        None => {
                            not_found(&format!("virtualHubs/{}/bgpConnections", s(7)), s(9), s(3))
                        }
                    }
                }
                (_, "PUT") => {
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
                    let ip = body.pointer("/properties/peerIp").and_then(Value::as_str);
                    let asn = body.pointer("/properties/peerAsn").and_then(Value::as_u64);
                    let (Some(ip), Some(asn)) = (ip, asn) else {
                        return Some(arm_error(
                            400,
                            "InvalidRequestFormat",
                            "Cannot parse the request: properties.peerIp and properties.peerAsn are required.",
                        ));
                    };
                    if ip.parse::<std::net::Ipv4Addr>().is_err() {
                        return Some(arm_error(
                            400,
                            "InvalidPeerIp",
                            &format!("Peer IP {ip} is not a valid IPv4 address."),
                        ));
                    }
                    if st.busy(&hk, now) {
                        return Some(conflict(st, "hub"));
                    }
                    let name = s(9).to_string();
                    let ck = name.to_ascii_lowercase();
                    if let Some(h) = st.hubs.get_mut(&hk) {
                        if let Some(other) = h
                            .conns
                            .values()
                            .find(|c| c.peer_ip == ip && c.name.to_ascii_lowercase() != ck)
                        {
                            return Some(arm_error(
                                400,
                                "BgpConnectionPeerIpAlreadyExists",
                                &format!(
                                    "Peer IP {ip} is already used by BGP connection {} of virtual hub {}. A peer IP can be used by only one BGP connection.",
                                    other.name, h.name
                                ),
                            ));
                        }
                        let creates = !h.conns.contains_key(&ck);
                        if creates && h.peer_limit.is_some_and(|l| h.conns.len() >= l) {
                            h.limit_refusals += 1;
                            return Some(arm_error(
                                400,
                                "BgpConnectionLimitReached",
                                &format!(
                                    "Virtual hub {} already has the maximum number of BGP connections ({}).",
                                    h.name,
                                    h.peer_limit.unwrap_or_default()
                                ),
                            ));
                        }
                    }
                    let id = st.start(&hk, "PUT", &name, Effect::ConnReady(hk.clone(), ck.clone()));
                    let Some(h) = st.hubs.get_mut(&hk) else {
                        return Some(arm_error(500, "InternalServerError", "hub vanished"));
                    };
                    let created = !h.conns.contains_key(&ck);
                    let c = Conn {
                        name,
                        peer_ip: ip.to_string(),
                        peer_asn: asn,
                        state: "Updating",
                        etag: etag(),
                    };
                    let v = conn_json(h, &c);
                    h.conns.insert(ck, c);
                    let sub = h.sub.clone();
                    lro(
                        Reply::json(if created { 201 } else { 200 }, &v),
                        st.lro_headers,
                        arm_url,
                        &sub,
                        &id,
                        version,
                        false,
                    )
                }
                (_, _) => {
                    let ck = s(9).to_ascii_lowercase();
                    if !st.hubs[&hk].conns.contains_key(&ck) {
                        empty(204)
                    } else if st.busy(&hk, now) {
                        conflict(st, "hub")
                    } else {
                        let id = st.start(
                            &hk,
                            "DELETE",
                            s(9),
                            Effect::ConnGone(hk.clone(), ck.clone()),
                        );
                        let Some(h) = st.hubs.get_mut(&hk) else {
                            return Some(arm_error(500, "InternalServerError", "hub vanished"));
                        };
                        if let Some(c) = h.conns.get_mut(&ck) {
                            c.state = "Deleting";
                        }
                        let sub = h.sub.clone();
                        lro(
                            empty(202),
                            st.lro_headers,
                            arm_url,
                            &sub,
                            &id,
                            version,
                            true,
                        )
                    }
                }
            }
        }
        Route::Pool => {
            let pk = key(&[s(1), s(3), s(7), s(9)]);
            if !st.pools.contains_key(&pk) {
                return Some(not_found(
                    &format!("loadBalancers/{}/backendAddressPools", s(7)),
                    s(9),
                    s(3),
                ));
            }
            if method == "GET" {
                return Some(
                    Reply::json(200, &pool_json(&st.pools[&pk]))
                        .header("etag", st.pools[&pk].etag.clone()),
                );
            }
            let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let Some(addresses) = body
                .pointer("/properties/loadBalancerBackendAddresses")
                .and_then(Value::as_array)
                .cloned()
            else {
                return Some(arm_error(400, "InvalidRequestFormat", "Cannot parse the request: properties.loadBalancerBackendAddresses is required."));
            };
            for a in &addresses {
                let ok = a
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| !n.is_empty())
                    && a.pointer("/properties/ipAddress")
                        .and_then(Value::as_str)
                        .is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
                    && a.pointer("/properties/virtualNetwork/id")
                        .and_then(Value::as_str)
                        .is_some_and(|v| !v.is_empty());
                if !ok {
                    return Some(arm_error(400, "InvalidLoadBalancerBackendAddress", &format!("Backend address {a} needs a name, an IPv4 ipAddress and a virtualNetwork id.")));
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for a in &addresses {
                let ip = a
                    .pointer("/properties/ipAddress")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if !seen.insert(ip.to_string()) {
                    return Some(arm_error(
                        400,
                        "DuplicateBackendAddressInPool",
                        &format!("Backend address pool {} references IP address {ip} more than once. An IP address can be referenced by only one backend address of a pool.", s(9)),
                    ));
                }
            }
            if st.busy(&pk, now) {
                return Some(conflict(st, "pool"));
            }
            if req.header("if-match").is_some() {
                st.if_match_puts += 1;
            }
            let Some(p) = st.pools.get_mut(&pk) else {
                return Some(arm_error(500, "InternalServerError", "pool vanished"));
            };
            if p.conflicts > 0 {
                p.conflicts -= 1;
                let n = p.addresses.len();
                p.addresses.push(json!({"name": format!("people-race-{n}"), "properties": {"ipAddress": format!("192.0.2.{}", (n % 250) + 1), "virtualNetwork": {"id": "/subscriptions/people/resourceGroups/people/providers/Microsoft.Network/virtualNetworks/people"}}}));
                p.etag = etag();
            }
            if let Some(m) = req.header("if-match") {
                if m.trim() != "*" && m.trim() != p.etag {
                    return Some(arm_error(
                        412,
                        "PreconditionFailed",
                        "The condition specified using HTTP conditional header(s) is not met.",
                    ));
                }
            }
            p.addresses = addresses;
            p.etag = etag();
            p.state = "Updating";
            let sub = p.sub.clone();
            let name = p.name.clone();
            let id = st.start(&pk, "PUT", &name, Effect::PoolReady(pk.clone()));
            let p = &st.pools[&pk];
            lro(
                Reply::json(200, &pool_json(p)).header("etag", p.etag.clone()),
                st.lro_headers,
                arm_url,
                &sub,
                &id,
                version,
                false,
            )
        }
    };
    Some(reply)
}

fn req_url(arm: &str, req: &Req) -> String {
    if req.query.is_empty() {
        format!("{arm}{}", req.path)
    } else {
        format!("{arm}{}?{}", req.path, req.query)
    }
}
