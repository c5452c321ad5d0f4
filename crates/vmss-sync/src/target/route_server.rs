//! Azure Route Server: one BGP peering (`virtualHubs/{hub}/bgpConnections`) per instance.
//!
//! - A peering is named `{name_prefix}{ip with dashes}` (`vmss-sync-10-0-1-4`), peer IP =
//!   the instance's private IP, peer ASN from the configuration. The upstream's port is
//!   ignored (BGP has none); observe reports each peering as `ip:{upstream port}`.
//! - Only peerings whose names start with the prefix are vmss-sync's: others (people's)
//!   are never changed or deleted, but they count against `max_peerings`.
//! - Writes are strictly one at a time per hub (one async lock per hub in the process),
//!   each followed to the end of its long-running operation (bounded by
//!   `operation_timeout`). While any peering of the hub is still Updating, nothing new is
//!   started; a 409 (another operation in progress) or an operation that does not finish
//!   in time stops the cycle's writes, and the next cycle retries.
//! - Order: adds first, then removals one at a time, each removal followed by an add that
//!   it made room for, so at least one peering stays up while any appliance is healthy.
//! - A peering whose peer IP is an instance's, whoever made it, is that instance's
//!   peering: no second one is requested (Azure refuses one IP twice). A person's peering
//!   found this way keeps its name, is never changed or deleted, and is reported by
//!   `observe` from then on (remembered in memory; after a restart the first cycle finds it
//!   again).
//! - When the hub refuses a create because it is full (an error code ending in
//!   `LimitReached`), no other create is sent that cycle, and later cycles send creates
//!   again only once the hub holds fewer peerings than it did then (anyone removed one), or
//!   [`LIMIT_RETRY`] has passed (the limit may have been raised), or after a restart or a
//!   configuration reload. Meanwhile the upstream reports the condition `hub_full`.
//! - BGP has no drain: a server that the plan drains is deleted at once (use
//!   `drain_timeout: 0s` to say so in the configuration). Observe reports every peering as
//!   active; a peering of ours with the wrong ASN or in state Failed is written again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::azure_common::{
    from_arm, from_write, has_fixed_port, id_of, ip_of, name_for, resource_lock, transient,
    MIN_POLL,
};
use super::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use crate::azure::arm::ArmWriteError;
use crate::azure::network::{self, is_terminal, BgpConnection};
use crate::azure::ArmClient;
use crate::config::RouteServerTarget;
use crate::model::{ObservedServer, ServerParams, ServerState};
use crate::plan::Plan;

/// How long after the hub refused a create because it was full one is tried again
/// although nobody removed a peering (the limit may have been raised).
pub const LIMIT_RETRY: Duration = Duration::from_secs(600);

/// The Route Server target.
pub struct RouteServer {
    arm: ArmClient,
    cfg: RouteServerTarget,
    hub: String,
    ports: BTreeMap<String, u16>,
    params: BTreeMap<String, ServerParams>,
    /// People's peerings that hold an instance's IP, by (upstream, IP): their names.
    adopted: Mutex<BTreeMap<(String, Ipv4Addr), String>>,
    /// Set when the hub refused a create because it was full: how many peerings it held
    /// then and when.
    full: Mutex<Option<(usize, Instant)>>,
}

impl std::fmt::Debug for RouteServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteServer")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

enum Step {
    Add(String, Ipv4Addr),
    Rewrite(String, Ipv4Addr),
    Remove(String, String),
}

impl RouteServer {
    /// A target for the hub of `cfg`; `ports` and `params` per upstream name.
    pub fn new(
        arm: ArmClient,
        cfg: RouteServerTarget,
        ports: BTreeMap<String, u16>,
        params: BTreeMap<String, ServerParams>,
    ) -> Self {
        let hub = network::hub_path(&cfg.subscription, &cfg.resource_group, &cfg.virtual_hub);
        RouteServer {
            arm,
            cfg,
            hub,
            ports,
            params,
            adopted: Mutex::default(),
            full: Mutex::default(),
        }
    }

    fn adopted(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, Ipv4Addr), String>> {
        self.adopted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while creates wait because the hub said it was full with at least `total`
    /// peerings, less than [`LIMIT_RETRY`] ago.
    fn held_full(&self, total: usize) -> Option<usize> {
        let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
        match *full {
            Some((was, at)) if total >= was && at.elapsed() < LIMIT_RETRY => Some(was),
            Some(_) => {
                *full = None;
                None
            }
            None => None,
        }
    }

    fn label(&self) -> String {
        format!("Route Server {}", self.cfg.virtual_hub)
    }

    fn ours(&self, c: &BgpConnection) -> bool {
        c.name.starts_with(&self.cfg.name_prefix)
    }

    async fn list(&self) -> Result<Vec<BgpConnection>, TargetError> {
        self.arm
            .list_bgp_connections(&self.hub)
            .await
            .map_err(|e| from_arm(&format!("{}: listing peerings", self.label()), &e))
    }

    async fn write(&self, step: &Step) -> Result<(), ArmWriteError> {
        let t = self.cfg.operation_timeout;
        match step {
            Step::Add(name, ip) | Step::Rewrite(name, ip) => self
                .arm
                .put_bgp_connection(
                    &self.hub,
                    name,
                    &ip.to_string(),
                    self.cfg.peer_asn,
                    t,
                    MIN_POLL,
                )
                .await
                .map(|_| ()),
            Step::Remove(name, _) => self
                .arm
                .delete_bgp_connection(&self.hub, name, t, MIN_POLL)
                .await
                .map(|_| ()),
        }
    }
}

/// True when the hub refused a create because it is full.
fn limit_reached(e: &ArmWriteError) -> bool {
    e.code().is_some_and(|c| c.ends_with("LimitReached"))
}

/// True when an error means the hub is busy and this cycle must stop writing.
fn stops_cycle(e: &ArmWriteError) -> bool {
    matches!(e, ArmWriteError::OperationTimeout { .. })
        || e.status() == Some(409)
        || e.code() == Some("AnotherOperationInProgress")
}

#[async_trait]
impl Target for RouteServer {
    fn kind(&self) -> &'static str {
        "azure-route-server"
    }

    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        has_fixed_port(&self.ports, &upstream.name, &self.label())?;
        self.list().await.map(|_| ())
    }

    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        let port = self.ports.get(&upstream.name).copied().unwrap_or(0);
        let params = self.params.get(&upstream.name).copied();
        let list = self.list().await?;
        let mut adopted = self.adopted();
        // A person's peering found for an instance is reported as long as it is there.
        adopted.retain(|(up, ip), name| {
            up != &upstream.name
                || list.iter().any(|c| {
                    c.name == *name && c.properties.peer_ip.as_deref() == Some(&ip.to_string())
                })
        });
        let theirs: Vec<ObservedServer> = adopted
            .iter()
            .filter(|((up, _), _)| up == &upstream.name)
            .map(|((_, ip), name)| ObservedServer {
                id: id_of(name),
                server: format!("{ip}:{port}"),
                params,
                state: ServerState::Active,
            })
            .collect();
        drop(adopted);
        Ok(list
            .iter()
            .filter(|c| self.ours(c))
            .filter_map(|c| {
                let ip: Ipv4Addr = c.properties.peer_ip.as_deref()?.parse().ok()?;
                let right = c.properties.peer_asn == Some(u64::from(self.cfg.peer_asn))
                    && c.properties.provisioning_state.as_deref() != Some("Failed");
                Some(ObservedServer {
                    id: id_of(&c.name),
                    server: format!("{ip}:{port}"),
                    params: if right { params } else { None },
                    state: ServerState::Active,
                })
            })
            .chain(theirs)
            .collect())
    }

    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        if plan.is_empty() {
            return report;
        }
        let lock = resource_lock(&self.hub);
        let _held = lock.lock().await;
        let list = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                report.errors.push(e);
                return report;
            }
        };
        if let Some(busy) = list
            .iter()
            .find(|c| !is_terminal(c.properties.provisioning_state.as_deref()))
        {
            report.errors.push(transient(format!(
                "{}: peering {} is {}; starting nothing until it finishes (the next cycle \
                 retries)",
                self.label(),
                busy.name,
                busy.properties.provisioning_state.as_deref().unwrap_or("")
            )));
            return report;
        }
        let by_id: HashMap<u64, &str> = list
            .iter()
            .filter(|c| self.ours(c))
            .map(|c| (id_of(&c.name), c.name.as_str()))
            .collect();
        let people = list.iter().filter(|c| !self.ours(c)).count();
        let mut total = list.len();
        let max = usize::try_from(self.cfg.max_peerings).unwrap_or(usize::MAX);

        // People's peerings this upstream counts as its instances': never touched.
        let theirs: HashMap<u64, Ipv4Addr> = self
            .adopted()
            .iter()
            .filter(|((up, _), _)| up == &upstream.name)
            .map(|((_, ip), name)| (id_of(name), *ip))
            .collect();
        let mut adds: VecDeque<Step> = VecDeque::new();
        for (server, _) in &plan.add {
            match ip_of(server) {
                Some(ip) => {
                    let holder = list
                        .iter()
                        .find(|c| c.properties.peer_ip.as_deref() == Some(&ip.to_string()));
                    match holder {
                        // Azure takes one peering per peer IP: whoever made it, it is this
                        // instance's.
                        Some(c) if !self.ours(c) => {
                            tracing::info!(
                                upstream = %upstream.name,
                                peering = %c.name,
                                "{}: peering {} already peers with {ip}; it counts as this \
                                 instance's (kept as it is, never changed or deleted)",
                                self.label(),
                                c.name
                            );
                            self.adopted()
                                .insert((upstream.name.clone(), ip), c.name.clone());
                        }
                        Some(_) => {}
                        None => adds.push_back(Step::Add(name_for(&self.cfg.name_prefix, ip), ip)),
                    }
                }
                None => report.errors.push(TargetError {
                    message: format!("{}: {server} is not an IPv4 address", self.label()),
                    permanence: Permanence::Permanent,
                }),
            }
        }
        let mut rewrites: VecDeque<Step> = VecDeque::new();
        let mut removals: VecDeque<Step> = VecDeque::new();
        for u in &plan.update {
            let name = by_id
                .get(&u.id)
                .map(|n| (*n).to_owned())
                .or_else(|| ip_of(&u.server).map(|ip| name_for(&self.cfg.name_prefix, ip)));
            let Some(name) = name else { continue };
            if let Some(ip) = theirs.get(&u.id) {
                // A person's peering: no longer counted once the instance leaves, never
                // deleted or rewritten.
                if u.state == ServerState::Draining {
                    self.adopted().remove(&(upstream.name.clone(), *ip));
                }
                continue;
            }
            if u.state == ServerState::Draining {
                // BGP has no drain: leaving means the peering goes.
                removals.push_back(Step::Remove(name, u.server.clone()));
            } else if u.params.is_some() {
                if let Some(ip) = ip_of(&u.server) {
                    rewrites.push_back(Step::Rewrite(name, ip));
                }
            } else {
                report.updated.push(u.server.clone());
            }
        }
        for r in &plan.remove {
            if let Some(ip) = theirs.get(&r.id) {
                self.adopted().remove(&(upstream.name.clone(), *ip));
                continue;
            }
            match by_id.get(&r.id) {
                Some(name) => {
                    removals.push_back(Step::Remove((*name).to_owned(), r.server.clone()))
                }
                // Already gone.
                None => report.removed.push(r.server.clone()),
            }
        }

        let mut stopped: Option<String> = None;
        let mut refused: Option<String> = None;
        loop {
            let step = if total < max && !adds.is_empty() && self.held_full(total).is_none() {
                adds.pop_front()
            } else if let Some(s) = rewrites.pop_front() {
                Some(s)
            } else {
                removals.pop_front()
            };
            let Some(step) = step else { break };
            let result = self.write(&step).await;
            let (name, server) = match &step {
                Step::Add(n, ip) | Step::Rewrite(n, ip) => (
                    n.clone(),
                    format!(
                        "{ip}:{}",
                        self.ports.get(&upstream.name).copied().unwrap_or(0)
                    ),
                ),
                Step::Remove(n, s) => (n.clone(), s.clone()),
            };
            match (&step, result) {
                (Step::Add(..), Ok(())) => {
                    total += 1;
                    *self.full.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    report.added.push(server_of(plan, &server));
                }
                (Step::Rewrite(..), Ok(())) => report.updated.push(server_of(plan, &server)),
                (Step::Remove(..), Ok(())) => {
                    total = total.saturating_sub(1);
                    report.removed.push(server);
                }
                (Step::Add(..), Err(e)) if limit_reached(&e) => {
                    // The hub is full: no more creates this cycle, nor in the next ones
                    // until a peering goes or the limit may have changed.
                    tracing::warn!(
                        upstream = %upstream.name,
                        peerings = total,
                        "{}: the hub refused peering {name} because it is full ({}); no \
                         new peering is requested until one is removed or {} s have passed",
                        self.label(),
                        e,
                        LIMIT_RETRY.as_secs()
                    );
                    *self.full.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((total, Instant::now()));
                    refused = Some(e.to_string());
                    if let Step::Add(n, ip) = step {
                        adds.push_front(Step::Add(n, ip));
                    }
                }
                (_, Err(e)) => {
                    let verb = match step {
                        Step::Add(..) => "creating",
                        Step::Rewrite(..) => "rewriting",
                        Step::Remove(..) => "deleting",
                    };
                    let stop = stops_cycle(&e);
                    report.errors.push(from_write(
                        &format!("{}: {verb} peering {name}", self.label()),
                        &e,
                    ));
                    if stop {
                        stopped = Some(name);
                        break;
                    }
                }
            }
        }
        if let Some(name) = stopped {
            let left = adds.len() + rewrites.len() + removals.len();
            if left > 0 {
                report.errors.push(transient(format!(
                    "{}: the hub is busy (after peering {name}); {left} more peering changes \
                     wait for the next cycle",
                    self.label()
                )));
            }
        } else if !adds.is_empty() {
            let ips: Vec<String> = adds
                .iter()
                .filter_map(|s| match s {
                    Step::Add(_, ip) => Some(ip.to_string()),
                    _ => None,
                })
                .collect();
            if let Some(was) = self.held_full(total) {
                report.conditions.push("hub_full");
                let why = match refused {
                    Some(e) => format!("it refused a new peering: {e}"),
                    None => format!("it refused a new peering earlier, holding {was}"),
                };
                report.errors.push(TargetError {
                    message: format!(
                        "{}: the hub is full ({why}); no new peering is requested until one \
                         of its {total} peerings is removed or {} s have passed; these \
                         instances got no peering: {}",
                        self.label(),
                        LIMIT_RETRY.as_secs(),
                        ips.join(", ")
                    ),
                    permanence: Permanence::Transient,
                });
                return report;
            }
            report.conditions.push("max_peerings");
            report.errors.push(TargetError {
                message: format!(
                    "{}: peering limit reached: it holds {total} of max_peerings {max} \
                     ({people} made by people, not vmss-sync's); these instances got no \
                     peering: {}",
                    self.label(),
                    ips.join(", ")
                ),
                permanence: Permanence::Transient,
            });
        }
        report
    }
}

/// The plan's own spelling of a server (so reports match the plan exactly).
fn server_of(plan: &Plan, server: &str) -> String {
    let ip = ip_of(server);
    plan.add
        .iter()
        .map(|(s, _)| s)
        .chain(plan.update.iter().map(|u| &u.server))
        .find(|s| ip.is_some() && ip_of(s) == ip)
        .cloned()
        .unwrap_or_else(|| server.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states() {
        assert!(is_terminal(Some("Succeeded")));
        assert!(is_terminal(Some("Failed")));
        assert!(is_terminal(None));
        assert!(!is_terminal(Some("Updating")));
        assert!(!is_terminal(Some("Deleting")));
    }
}
