//! Azure Load Balancer: the addresses of an IP-based backend pool (Standard SKU).
//!
//! - Each instance is one entry of `loadBalancerBackendAddresses`, named
//!   `{name_prefix}{ip with dashes}`, with `ipAddress` and the configured
//!   `virtualNetwork.id`. The upstream's port is ignored (the load balancer's rules carry
//!   ports); observe reports each address as `ip:{upstream port}`.
//! - Only addresses whose names start with the prefix are vmss-sync's; every other entry
//!   is written back exactly as it was read.
//! - An instance whose IP the pool already holds under another name (an entry made by
//!   hand) counts as present: no second entry for one IP (Azure refuses a pool that
//!   references an address twice). That entry keeps its name and is never changed or
//!   removed; `observe` reports it for the instance from then on (remembered in memory;
//!   after a restart the first cycle finds it again). A PUT that would change nothing is
//!   not sent.
//! - One apply is one PUT of the whole pool with the pool's ETag in `If-Match`; on 412 the
//!   pool is read again and the change made again (3 attempts); the long-running operation
//!   is followed to its end (bounded by `operation_timeout`). Writes to one pool are one at
//!   a time in the process; a pool that is still Updating is left for the next cycle.
//! - Load Balancer pools have no drain (the health probes take a leaving instance out): a
//!   server the plan drains is removed at once (use `drain_timeout: 0s` to say so).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use super::azure_common::{
    from_arm, from_write, has_fixed_port, id_of, ip_of, name_for, resource_lock, transient,
    MIN_POLL,
};
use super::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use crate::azure::arm::ArmWriteError;
use crate::azure::network::{self, address, address_parts, is_terminal, OP_PUT_BACKEND_POOL};
use crate::azure::ArmClient;
use crate::config::LbPoolTarget;
use crate::model::{ObservedServer, ServerParams, ServerState};
use crate::plan::Plan;

/// Attempts of read, change and conditional write when the ETag keeps changing.
const ETAG_ATTEMPTS: u32 = 3;

/// The Load Balancer backend pool target.
pub struct LbBackendPool {
    arm: ArmClient,
    cfg: LbPoolTarget,
    pool: String,
    ports: BTreeMap<String, u16>,
    params: BTreeMap<String, ServerParams>,
    /// Entries made by others that hold an instance's IP, by (upstream, IP): their names.
    adopted: Mutex<BTreeMap<(String, Ipv4Addr), String>>,
}

impl std::fmt::Debug for LbBackendPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LbBackendPool")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl LbBackendPool {
    /// A target for the pool of `cfg`; `ports` and `params` per upstream name.
    pub fn new(
        arm: ArmClient,
        cfg: LbPoolTarget,
        ports: BTreeMap<String, u16>,
        params: BTreeMap<String, ServerParams>,
    ) -> Self {
        let pool = network::pool_path(
            &cfg.subscription,
            &cfg.resource_group,
            &cfg.load_balancer,
            &cfg.backend_pool,
        );
        LbBackendPool {
            arm,
            cfg,
            pool,
            ports,
            params,
            adopted: Mutex::default(),
        }
    }

    fn adopted(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, Ipv4Addr), String>> {
        self.adopted.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn label(&self) -> String {
        format!(
            "Load Balancer {} pool {}",
            self.cfg.load_balancer, self.cfg.backend_pool
        )
    }

    fn ours(&self, name: Option<&str>) -> bool {
        name.is_some_and(|n| n.starts_with(&self.cfg.name_prefix))
    }

    async fn read(&self) -> Result<network::BackendPool, TargetError> {
        self.arm
            .get_backend_pool(&self.pool)
            .await
            .map_err(|e| from_arm(&format!("{}: reading the pool", self.label()), &e))
    }

    /// The pool's new address list: other entries as they are; ours without the leaving
    /// ones, rewritten when wanted again, plus the new ones.
    fn next_addresses(
        &self,
        current: &[Value],
        leaving: &BTreeSet<u64>,
        wanted: &BTreeMap<String, Ipv4Addr>,
    ) -> Vec<Value> {
        let mut out = Vec::with_capacity(current.len() + wanted.len());
        let mut placed = BTreeSet::new();
        for a in current {
            let (name, _, _) = address_parts(a);
            if !self.ours(name) {
                out.push(a.clone());
                continue;
            }
            let name = name.unwrap_or_default();
            if let Some(ip) = wanted.get(name) {
                if placed.insert(name.to_owned()) {
                    out.push(address(name, &ip.to_string(), &self.cfg.virtual_network));
                }
            } else if !leaving.contains(&id_of(name)) {
                out.push(a.clone());
            }
        }
        for (name, ip) in wanted {
            if !placed.contains(name) {
                out.push(address(name, &ip.to_string(), &self.cfg.virtual_network));
            }
        }
        out
    }

    /// Writes the pool; returns the wanted addresses found in it already under a name
    /// that is not vmss-sync's (IP → that name), which were not added.
    async fn write_once(
        &self,
        leaving: &BTreeSet<u64>,
        wanted: &BTreeMap<String, Ipv4Addr>,
    ) -> Result<BTreeMap<Ipv4Addr, String>, TargetError> {
        let what = format!("{}: writing the pool", self.label());
        for attempt in 1..=ETAG_ATTEMPTS {
            let pool = self.read().await?;
            if !is_terminal(pool.provisioning_state()) {
                return Err(transient(format!(
                    "{}: the pool is {}; writing nothing until it finishes (the next cycle \
                     retries)",
                    self.label(),
                    pool.provisioning_state().unwrap_or("")
                )));
            }
            let current = pool.addresses();
            // One IP is one entry: an address another entry holds already is present.
            let mut present = BTreeMap::new();
            let mut wanted = wanted.clone();
            wanted.retain(|_, ip| {
                let holder = current.iter().find_map(|a| {
                    let (name, addr, _) = address_parts(a);
                    (addr == Some(ip.to_string().as_str())).then(|| name.unwrap_or_default())
                });
                match holder {
                    Some(name) if !self.ours(Some(name)) => {
                        present.insert(*ip, name.to_owned());
                        false
                    }
                    _ => true,
                }
            });
            let next = self.next_addresses(&current, leaving, &wanted);
            if next == current {
                return Ok(present);
            }
            let body = pool.with_addresses(next);
            match self
                .arm
                .put_backend_pool(&self.pool, &body, pool.etag.as_deref())
                .await
            {
                Ok(resp) => {
                    return self
                        .arm
                        .follow_operation(
                            OP_PUT_BACKEND_POOL,
                            &self.pool,
                            crate::azure::arm::NETWORK_API_VERSION,
                            &resp,
                            self.cfg.operation_timeout,
                            MIN_POLL,
                        )
                        .await
                        .map(|_| present)
                        .map_err(|e| from_write(&what, &e));
                }
                Err(ArmWriteError::Api { status: 412, .. }) => {
                    if attempt == ETAG_ATTEMPTS {
                        break;
                    }
                    tracing::info!(
                        target_pool = %self.cfg.backend_pool,
                        attempt,
                        "The backend pool changed since it was read (412); reading it again"
                    );
                }
                Err(e) => return Err(from_write(&what, &e)),
            }
        }
        Err(transient(format!(
            "{what}: the pool kept changing (412 {ETAG_ATTEMPTS} times); the next cycle retries"
        )))
    }
}

#[async_trait]
impl Target for LbBackendPool {
    fn kind(&self) -> &'static str {
        "azure-lb-pool"
    }

    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        has_fixed_port(&self.ports, &upstream.name, &self.label())?;
        self.read().await.map(|_| ())
    }

    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        let port = self.ports.get(&upstream.name).copied().unwrap_or(0);
        let params = self.params.get(&upstream.name).copied();
        let pool = self.read().await?;
        let addresses = pool.addresses();
        let mut adopted = self.adopted();
        // An entry of someone else's found for an instance is reported while it is there.
        adopted.retain(|(up, ip), name| {
            up != &upstream.name
                || addresses.iter().any(|a| {
                    let (n, addr, _) = address_parts(a);
                    n == Some(name.as_str()) && addr == Some(ip.to_string().as_str())
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
        Ok(addresses
            .iter()
            .filter_map(|a| {
                let (name, ip, vnet) = address_parts(a);
                if !self.ours(name) {
                    return None;
                }
                let ip: Ipv4Addr = ip?.parse().ok()?;
                let right = vnet.is_some_and(|v| v.eq_ignore_ascii_case(&self.cfg.virtual_network));
                Some(ObservedServer {
                    id: id_of(name?),
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
        // Entries of others counted as instances': never written, only no longer counted.
        let theirs: BTreeMap<u64, Ipv4Addr> = self
            .adopted()
            .iter()
            .filter(|((up, _), _)| up == &upstream.name)
            .map(|((_, ip), name)| (id_of(name), *ip))
            .collect();
        let mut released = Vec::new();
        let mut wanted: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let mut leaving: BTreeSet<u64> = BTreeSet::new();
        let (mut added, mut updated, mut removed) = (Vec::new(), Vec::new(), Vec::new());
        for (server, _) in &plan.add {
            match ip_of(server) {
                Some(ip) => {
                    wanted.insert(name_for(&self.cfg.name_prefix, ip), ip);
                    added.push(server.clone());
                }
                None => report.errors.push(TargetError {
                    message: format!("{}: {server} is not an IPv4 address", self.label()),
                    permanence: Permanence::Permanent,
                }),
            }
        }
        for u in &plan.update {
            if let Some(ip) = theirs.get(&u.id) {
                if u.state == ServerState::Draining {
                    released.push(*ip);
                }
                continue;
            }
            if u.state == ServerState::Draining {
                // No drain on a pool: leaving means the address goes.
                leaving.insert(u.id);
                removed.push(u.server.clone());
            } else if let Some(ip) = ip_of(&u.server) {
                wanted.insert(name_for(&self.cfg.name_prefix, ip), ip);
                updated.push(u.server.clone());
            }
        }
        for r in &plan.remove {
            if let Some(ip) = theirs.get(&r.id) {
                released.push(*ip);
                continue;
            }
            leaving.insert(r.id);
            removed.push(r.server.clone());
        }
        {
            let mut adopted = self.adopted();
            for ip in released {
                adopted.remove(&(upstream.name.clone(), ip));
            }
        }
        let lock = resource_lock(&self.pool);
        let _held = lock.lock().await;
        match self.write_once(&leaving, &wanted).await {
            Ok(present) => {
                if !present.is_empty() {
                    let mut adopted = self.adopted();
                    for (ip, name) in &present {
                        tracing::info!(
                            upstream = %upstream.name,
                            entry = %name,
                            "{}: entry {name} already holds {ip}; it counts as this \
                             instance's (kept as it is, never changed or removed)",
                            self.label()
                        );
                        adopted.insert((upstream.name.clone(), *ip), name.clone());
                    }
                }
                added.retain(|s| ip_of(s).is_none_or(|ip| !present.contains_key(&ip)));
                report.added = added;
                report.updated = updated;
                report.removed = removed;
            }
            Err(e) => report.errors.push(e),
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::{ArmOptions, StaticToken};
    use std::sync::Arc;
    use std::time::Duration;

    fn target() -> LbBackendPool {
        let arm = ArmClient::new(
            ArmOptions::new(url::Url::parse("http://127.0.0.1:9").expect("url")),
            Arc::new(StaticToken("t".into())),
            reqwest::Client::new(),
        );
        LbBackendPool::new(
            arm,
            LbPoolTarget {
                subscription: "s".into(),
                resource_group: "rg".into(),
                load_balancer: "lb".into(),
                backend_pool: "pool".into(),
                virtual_network: "/vnet".into(),
                name_prefix: "vmss-sync-".into(),
                operation_timeout: Duration::from_secs(1),
            },
            BTreeMap::new(),
            BTreeMap::new(),
        )
    }

    #[test]
    fn other_addresses_are_kept_and_ours_follow_the_plan() {
        let t = target();
        let current = vec![
            address("people-1", "10.0.0.9", "/other"),
            address("vmss-sync-10-0-0-4", "10.0.0.4", "/vnet"),
            address("vmss-sync-10-0-0-5", "10.0.0.5", "/vnet"),
        ];
        let leaving = BTreeSet::from([id_of("vmss-sync-10-0-0-5")]);
        let wanted =
            BTreeMap::from([("vmss-sync-10-0-0-6".to_string(), Ipv4Addr::new(10, 0, 0, 6))]);
        let next = t.next_addresses(&current, &leaving, &wanted);
        let names: Vec<&str> = next.iter().filter_map(|a| address_parts(a).0).collect();
        assert_eq!(
            names,
            ["people-1", "vmss-sync-10-0-0-4", "vmss-sync-10-0-0-6"]
        );
        assert_eq!(
            next[0], current[0],
            "people's entries are written back as read"
        );
    }
}
