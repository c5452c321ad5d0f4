//! Targets: the components that must hold the instance list.
//!
//! Each target implements [`Target`]: a startup `check` of one upstream, `observe` of
//! what it holds, and `apply` of a [`Plan`]. Each target knows its own wire protocol; the
//! load-balancer targets (NGINX Plus, HAProxy, nginx file) know nothing about Azure, while
//! the Azure targets (`route_server`, `lb_backend_pool`) write Network resources through
//! the discovery's ARM client and share `azure_common`. The reconciler knows nothing about wire protocols.

mod azure_common;
pub mod configured;
pub mod haproxy_dataplane;
pub mod haproxy_runtime;
pub mod lb_backend_pool;
pub mod nginx_file;
pub mod nginx_plus;
pub mod route_server;

use crate::model::ObservedServer;
use crate::model::UpstreamKind;
use crate::plan::Plan;
use async_trait::async_trait;

/// The address of one upstream (or backend) inside a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRef {
    /// Upstream name in the target.
    pub name: String,
    /// HTTP or stream.
    pub kind: UpstreamKind,
    /// True when the target may create the upstream when it is missing: the backend of
    /// a service found by tags (`services:`), which only targets that can create
    /// upstreams (the Data Plane API) do; the others report it missing as usual.
    pub create: bool,
}

impl UpstreamRef {
    /// A configured upstream (never created by vmss-sync unless the target says so).
    pub fn new(name: impl Into<String>, kind: UpstreamKind) -> Self {
        UpstreamRef {
            name: name.into(),
            kind,
            create: false,
        }
    }
}

/// Whether a target problem will go away by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permanence {
    /// Retrying later may work (connection refused, 5xx, timeout).
    Transient,
    /// The target's configuration must change first (unknown upstream, static upstream).
    Permanent,
}

/// A target failure.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    /// Human message naming the target, the upstream and the cause.
    pub message: String,
    /// Whether retrying may help.
    pub permanence: Permanence,
}

/// What one apply did. Items that failed are listed with their errors; the rest happened.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Addresses added.
    pub added: Vec<String>,
    /// Addresses removed.
    pub removed: Vec<String>,
    /// Addresses whose parameters were updated, or that were restored from draining.
    pub updated: Vec<String>,
    /// Addresses that started draining.
    pub drained: Vec<String>,
    /// Writes that failed.
    pub errors: Vec<TargetError>,
    /// Conditions of the target that held writes back this time (`hub_full`,
    /// `max_peerings`), shown by the `target_condition` metric.
    pub conditions: Vec<&'static str>,
}

/// A component that holds servers for upstreams.
#[async_trait]
pub trait Target: Send + Sync {
    /// Short name for logs ("nginx-plus").
    fn kind(&self) -> &'static str;
    /// Checks at startup that the upstream exists and accepts dynamic servers.
    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError>;
    /// Reads the servers the upstream holds now.
    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError>;
    /// Applies a plan: adds first, then updates (parameters, drains, restores), then
    /// removals. Continues past a failed item.
    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport;

    /// True when the target must be written although the plan of `upstream` is empty:
    /// what it holds was changed behind vmss-sync's back in a way that `observe` cannot
    /// show as servers (an NGINX file rewritten by someone else). Asked after `observe`.
    fn needs_write(&self, upstream: &UpstreamRef) -> bool {
        let _ = upstream;
        false
    }

    /// True when [`Target::apply_batch`] writes the plans of several upstreams at once
    /// (the Data Plane API: one transaction per cycle); the reconciler then hands it every
    /// non-empty plan of a cycle in one call instead of calling `apply` per upstream.
    fn batches(&self) -> bool {
        false
    }

    /// Applies the plans of several upstreams of this target together; one report per
    /// item, in the same order. The default applies them one after the other.
    async fn apply_batch(&self, items: &[(UpstreamRef, Plan)]) -> Vec<ApplyReport> {
        let mut reports = Vec::with_capacity(items.len());
        for (upstream, plan) in items {
            reports.push(self.apply(upstream, plan).await);
        }
        reports
    }

    /// The names of the upstreams this target holds that start with `prefix`, so that
    /// backends of services found by tags that have vanished from the cloud are still
    /// emptied; `Ok(None)` when the target cannot list its upstreams.
    async fn list_upstreams(&self, prefix: &str) -> Result<Option<Vec<String>>, TargetError> {
        let _ = prefix;
        Ok(None)
    }
}
