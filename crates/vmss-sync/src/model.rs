//! The vocabulary shared by discovery, the planner and the targets.
//!
//! Nothing in here does I/O. Discovery turns the cloud into [`ScaleSetSnapshot`]s,
//! [`desired_servers`] turns snapshots plus an upstream's settings into the wanted
//! servers, and targets report what they have as [`ObservedServer`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Identity of one scale set in ARM. Names compare case-insensitively in Azure,
/// so the key keeps a lower-cased form for equality and the original for display.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScaleSetKey {
    /// Lower-cased `subscription/resource_group/name`, used for identity.
    key: String,
    /// Subscription id as configured.
    pub subscription: String,
    /// Resource group as configured.
    pub resource_group: String,
    /// Scale set name as configured.
    pub name: String,
}

impl ScaleSetKey {
    /// Builds a key from its three parts.
    pub fn new(subscription: &str, resource_group: &str, name: &str) -> Self {
        Self {
            key: format!("{subscription}/{resource_group}/{name}").to_ascii_lowercase(),
            subscription: subscription.to_string(),
            resource_group: resource_group.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ScaleSetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.resource_group, self.name)
    }
}

/// How a scale set orchestrates its instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Orchestration {
    /// Identical instances managed as one (instances under the scale set resource).
    Uniform,
    /// Ordinary VMs that belong to the set.
    Flexible,
}

/// One instance of a scale set, with the one address it is registered under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Lower-cased ARM id of the VM.
    pub vm_id: String,
    /// Private IPv4 of the primary IP configuration of the primary NIC.
    pub ip: Ipv4Addr,
}

/// What one successful read of a scale set found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleSetSnapshot {
    /// Which set.
    pub key: ScaleSetKey,
    /// `sku.capacity`: the number of instances the set itself says it wants (None when
    /// ARM did not say).
    pub capacity: Option<u64>,
    /// Orchestration mode.
    pub orchestration: Orchestration,
    /// Instances with an address, sorted by VM id; one entry per VM.
    pub instances: Vec<Instance>,
}

/// The per-server parameters vmss-sync manages on an NGINX Plus upstream.
///
/// Parameters that people may set by hand (`weight`, `down`, `drain`, `backup`,
/// `route`) are not managed here, so vmss-sync never fights an operator over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerParams {
    /// `max_conns`.
    pub max_conns: u32,
    /// `max_fails`.
    pub max_fails: u32,
    /// `fail_timeout`, compared after normalisation (NGINX echoes `1m` as `60s`).
    pub fail_timeout: Duration,
    /// `slow_start`.
    pub slow_start: Duration,
}

/// What an upstream should contain: server address (`ip:port`) to parameters.
pub type DesiredServers = BTreeMap<String, ServerParams>;

/// Whether a server takes new traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerState {
    /// Takes new traffic.
    Active,
    /// Takes no new traffic while existing connections finish (NGINX Plus http:
    /// `drain`; stream upstreams and targets without drain: `down`).
    Draining,
}

/// A server as a target reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedServer {
    /// The target's id for the server (NGINX Plus: the numeric `id`).
    pub id: u64,
    /// Address as the target shows it (`ip:port`).
    pub server: String,
    /// Managed parameters, or `None` when the target reports values vmss-sync cannot read
    /// (they are then rewritten).
    pub params: Option<ServerParams>,
    /// Whether it is draining. Read back from the target every cycle, so a restart of
    /// vmss-sync in the middle of a drain knows about it.
    pub state: ServerState,
}

/// Builds the desired servers of one upstream from the snapshots of its scale sets.
pub fn desired_servers<'a>(
    snapshots: impl IntoIterator<Item = &'a ScaleSetSnapshot>,
    port: u16,
    params: ServerParams,
) -> DesiredServers {
    snapshots
        .into_iter()
        .flat_map(|s| s.instances.iter())
        .map(|i| (format!("{}:{}", i.ip, port), params))
        .collect()
}
