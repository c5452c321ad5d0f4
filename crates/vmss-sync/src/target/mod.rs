//! Targets: the components that must hold the instance list.
//!
//! Each target implements [`Target`]: a startup `check` of one upstream, `observe` of
//! what it holds, and `apply` of a [`Plan`]. Targets know their own wire protocol and
//! nothing about Azure; the reconciler knows nothing about wire protocols.

pub mod configured;
pub mod haproxy_dataplane;
pub mod haproxy_runtime;
pub mod lb_backend_pool;
pub mod nginx_file;
pub mod nginx_plus;
pub mod route_server;

use crate::config::UpstreamKind;
use crate::model::ObservedServer;
use crate::plan::Plan;
use async_trait::async_trait;

/// The address of one upstream (or backend) inside a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamRef {
    /// Upstream name in the target.
    pub name: String,
    /// HTTP or stream.
    pub kind: UpstreamKind,
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
}
