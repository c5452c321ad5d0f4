//! Templates: an upstream with `services` expanded into one upstream per service.

use super::cycle::{Job, Reconciler};
use super::outcome::{target_name, Order, UpstreamOutcome};
use super::specs::UpstreamSpec;
use crate::config::ServicesConfig;
use crate::discovery::{Discovered, Selection};
use crate::model::Found;
use crate::services;
use crate::target::UpstreamRef;
use std::sync::Arc;

impl Reconciler {
    /// Turns the configured upstreams into this cycle's jobs: a plain upstream is one
    /// job; a template (`services`) is one job per service its selection found, plus one
    /// per backend of an earlier service that the target still holds (emptied, never
    /// deleted). Upstreams whose selection failed come back as failed outcomes.
    pub(super) async fn expand(
        &self,
        snapshots: &Discovered,
        only: Option<&std::collections::BTreeSet<Selection>>,
    ) -> (Vec<Job>, Vec<(Order, UpstreamOutcome)>) {
        let mut jobs = Vec::new();
        let mut failed = Vec::new();
        for (index, up) in self.upstreams.iter().enumerate() {
            if only.is_some_and(|o| !o.contains(&up.selection)) {
                continue;
            }
            let order = Order {
                upstream: index,
                item: 0,
            };
            let found = match snapshots.get(&up.selection) {
                Some(Ok(found)) => found,
                Some(Err(e)) => {
                    let group = up.group();
                    let msg = format!("Couldn't get the IP addresses for {group}: {e}");
                    tracing::warn!(upstream = %up.upstream.name, group = %group, "{msg}");
                    failed.push((order, UpstreamOutcome::failed(up, None, msg)));
                    continue;
                }
                None => {
                    let msg = format!("{} was not read", up.group());
                    failed.push((order, UpstreamOutcome::failed(up, None, msg)));
                    continue;
                }
            };
            let Some(services) = &up.services else {
                jobs.push(Job {
                    order,
                    spec: up.clone(),
                    template: None,
                    found: Arc::new(found.clone()),
                });
                continue;
            };
            let (specs, listing) = self.expand_template(up, services, found).await;
            for (i, (spec, found)) in specs.into_iter().enumerate() {
                jobs.push(Job {
                    order: Order {
                        upstream: index,
                        item: 1 + i,
                    },
                    spec,
                    template: Some(up.upstream.name.clone()),
                    found: Arc::new(found),
                });
            }
            if let Err(msg) = listing {
                // The services found are still synced; only the emptying of vanished
                // ones waits for a listing that works.
                tracing::warn!(upstream = %up.upstream.name, target = up.target.kind(), "{msg}");
                failed.push((order, UpstreamOutcome::failed(up, None, msg)));
            }
        }
        (jobs, failed)
    }

    /// The services of one template, each with what it found, and whether the target's
    /// backends could be listed (without a listing, vanished services are not emptied).
    async fn expand_template(
        &self,
        up: &UpstreamSpec,
        cfg: &ServicesConfig,
        found: &Found,
    ) -> (Vec<(UpstreamSpec, Found)>, Result<(), String>) {
        let prefix = &up.upstream.name;
        let (services, unported) = services::split(found, prefix, cfg);
        if let Some(first) = unported.first() {
            tracing::warn!(
                upstream = %prefix,
                skipped = unported.len(),
                "{} instance(s) have a service name tag but no usable service; first: {}: {}",
                unported.len(),
                first.vm_id,
                first.reason
            );
        }
        let mut out: Vec<(UpstreamSpec, Found)> = Vec::with_capacity(services.len());
        let mut seen = std::collections::BTreeSet::new();
        for svc in services {
            seen.insert(svc.backend.clone());
            let spec = up.service(&svc.backend, svc.port, cfg);
            out.push((spec, svc.found));
        }
        // Backends of services that are gone: emptied into maintenance, never deleted.
        let listing = up
            .target
            .list_upstreams(&format!("{prefix}{}", cfg.separator))
            .await
            .map_err(|e| {
                format!(
                    "Couldn't list the backends of {prefix} in {} (services that are gone \
                     are emptied once it works): {}",
                    target_name(up.target.kind()),
                    e.message
                )
            });
        // A complete read that found other instances proves a vanished service is gone;
        // an empty read proves nothing (the guard then holds its removals), nor does one
        // in which a set's read was judged failed (its services are not known).
        let proven =
            (!found.sets.is_empty() || !found.vms.is_empty()) && found.held().next().is_none();
        let (listed, listing) = match listing {
            Ok(listed) => (listed.unwrap_or_default(), Ok(())),
            Err(msg) => (Vec::new(), Err(msg)),
        };
        for backend in listed {
            if seen.contains(&backend)
                || !services::is_service_backend(&backend, prefix, &cfg.separator)
            {
                continue;
            }
            let gone = Found {
                exact: proven,
                ..Found::default()
            };
            out.push((up.service(&backend, 0, cfg), gone));
        }
        out.sort_by(|a, b| a.0.upstream.name.cmp(&b.0.upstream.name));
        (out, listing)
    }
}

impl UpstreamSpec {
    /// The upstream of one service of this template.
    fn service(&self, backend: &str, port: u16, cfg: &ServicesConfig) -> UpstreamSpec {
        UpstreamSpec {
            upstream: UpstreamRef {
                name: backend.to_string(),
                kind: self.upstream.kind,
                create: true,
            },
            target: Arc::clone(&self.target),
            selection: self.selection.clone(),
            port: (port != 0).then_some(port),
            port_tag: Some(cfg.instance_port_tag.clone()),
            register_when: self.register_when,
            params: self.params,
            drain_timeout: self.drain_timeout,
            services: None,
        }
    }
}
