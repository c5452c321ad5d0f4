//! The vocabulary shared by discovery, the planner and the targets.
//!
//! Nothing in here does I/O. Discovery turns the cloud into [`ScaleSetSnapshot`]s and
//! standalone [`Instance`]s, gathered per upstream in a [`Found`]; [`desired_servers`]
//! turns that plus an upstream's [`Registration`] into the wanted servers (the ready
//! instances, at their port); targets report what they have as [`ObservedServer`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

/// `kind: http` or `kind: stream`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpstreamKind {
    Http,
    Stream,
}

impl UpstreamKind {
    /// `"http"` or `"stream"`, as in the config file and the NGINX Plus API paths.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Http => "http",
            UpstreamKind::Stream => "stream",
        }
    }
}

impl fmt::Display for UpstreamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Default `health_interval`: how often discovery reads instance views.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(15);

// Naming rules of a template's service backends, shared by the configuration checks
// (`config`) and the split into services (`services`).

/// True when `s` is not empty and holds only characters valid in an HAProxy backend name
/// (`[A-Za-z0-9._:-]`): the parts of a service's backend name.
pub fn is_backend_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// The backend name of a service.
pub fn backend_name(prefix: &str, sep: &str, name: &str, port: u16, region: &str) -> String {
    format!("{prefix}{sep}{name}{sep}{port}{sep}{region}")
}

/// The (service, port, region) of a backend of this template, when `backend` has the
/// shape `{prefix}{sep}{service}{sep}{port}{sep}{region}`: port 1..=65535 written without
/// leading zeros, service and region not empty and made of backend-name characters. The
/// region and port are read from the right, so the service may hold the separator.
pub fn parse_service_backend<'b>(
    backend: &'b str,
    prefix: &str,
    sep: &str,
) -> Option<(&'b str, u16, &'b str)> {
    if sep.is_empty() {
        return None;
    }
    let rest = backend.strip_prefix(prefix)?.strip_prefix(sep)?;
    let (rest, region) = rest.rsplit_once(sep)?;
    let (service, port) = rest.rsplit_once(sep)?;
    let port_ok = !port.is_empty()
        && !port.starts_with('0')
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit());
    let port = port.parse::<u16>().ok().filter(|_| port_ok)?;
    (is_backend_part(service) && is_backend_part(region)).then_some((service, port, region))
}

/// True when `backend` has the shape of a backend of this template:
/// `{prefix}{sep}{service}{sep}{port}{sep}{region}` (see [`parse_service_backend`]).
pub fn is_service_backend(backend: &str, prefix: &str, sep: &str) -> bool {
    parse_service_backend(backend, prefix, sep).is_some()
}

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

/// `properties.provisioningState` of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provisioning {
    /// `Succeeded`.
    Succeeded,
    /// `Creating`.
    Creating,
    /// `Updating` (e.g. reimaged by a rolling upgrade).
    Updating,
    /// `Deleting`: on its way out.
    Deleting,
    /// `Failed`.
    Failed,
    /// Anything else (`Migrating`, `Canceled`, …).
    Other,
}

impl Provisioning {
    /// Parses ARM's value (case-insensitive; `ProvisioningState/` prefix allowed).
    pub fn parse(s: &str) -> Provisioning {
        let s = s.trim();
        let s = s
            .get(..18)
            .filter(|p| p.eq_ignore_ascii_case("ProvisioningState/"))
            .map_or(s, |_| &s[18..]);
        let is = |w: &str| s.eq_ignore_ascii_case(w);
        if is("succeeded") {
            Provisioning::Succeeded
        } else if is("creating") {
            Provisioning::Creating
        } else if is("updating") {
            Provisioning::Updating
        } else if is("deleting") {
            Provisioning::Deleting
        } else if is("failed") {
            Provisioning::Failed
        } else {
            Provisioning::Other
        }
    }
}

/// The power state of a VM (`PowerState/…` in its instance view).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// `running`.
    Running,
    /// `starting`.
    Starting,
    /// `stopping`.
    Stopping,
    /// `stopped`.
    Stopped,
    /// `deallocating`.
    Deallocating,
    /// `deallocated` (also a Spot VM evicted with the Deallocate policy).
    Deallocated,
    /// `unknown` or anything else.
    Unknown,
}

impl Power {
    /// Parses the part after `PowerState/` (case-insensitive).
    pub fn parse(s: &str) -> Power {
        let s = s.trim();
        [
            ("running", Power::Running),
            ("starting", Power::Starting),
            ("stopping", Power::Stopping),
            ("stopped", Power::Stopped),
            ("deallocating", Power::Deallocating),
            ("deallocated", Power::Deallocated),
        ]
        .into_iter()
        .find(|(w, _)| s.eq_ignore_ascii_case(w))
        .map_or(Power::Unknown, |(_, p)| p)
    }
}

/// What the Application Health extension or the load balancer probe says
/// (`vmHealth.status.code`: `HealthState/healthy|unhealthy|unknown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// `healthy`.
    Healthy,
    /// `unhealthy`.
    Unhealthy,
    /// `unknown`, `initializing` or anything else: not ready.
    Unknown,
}

impl Health {
    /// Parses the part after `HealthState/` (case-insensitive).
    pub fn parse(s: &str) -> Health {
        let s = s.trim();
        if s.eq_ignore_ascii_case("healthy") {
            Health::Healthy
        } else if s.eq_ignore_ascii_case("unhealthy") {
            Health::Unhealthy
        } else {
            Health::Unknown
        }
    }
}

/// The run-time state of an instance, from its instance view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceView {
    /// Provisioning state (None when ARM did not say).
    pub provisioning: Option<Provisioning>,
    /// Power state (None when the view had none).
    pub power: Option<Power>,
    /// Health (None when the VM reports no health).
    pub health: Option<Health>,
}

/// When an upstream registers an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterWhen {
    /// Power state running and provisioning state neither Deleting nor Failed.
    Running,
    /// Running, and its health source reports Healthy (Unknown is not ready).
    Healthy,
    /// As soon as it has an address, whatever its state (nginx-asg-sync's behaviour).
    Always,
}

impl RegisterWhen {
    /// The word used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            RegisterWhen::Running => "running",
            RegisterWhen::Healthy => "healthy",
            RegisterWhen::Always => "always",
        }
    }
}

/// A VM's ARM id (lower-cased), held compactly: its parent path (up to and including the
/// last `/`, the same for every member of a Uniform set or every VM of a resource group)
/// is one shared string, and only the last segment is the VM's own, inline when short.
/// One pointer wide; clones share one allocation. Compares, orders and hashes as the
/// whole id would (100,000 ids of about 150 bytes each were the largest thing held).
#[derive(Clone)]
pub struct VmId(std::sync::Arc<VmIdParts>);

struct VmIdParts {
    parent: std::sync::Arc<str>,
    last: LastSegment,
}

/// Longest last segment kept inline (a Uniform member's instance id; a Flexible VM name,
/// `{set}_{8 hex digits}`, for a set name of up to 13 bytes); longer ones go to the heap.
/// With it, an id's one allocation is 64 bytes.
const INLINE_LAST: usize = 22;

enum LastSegment {
    Inline { len: u8, bytes: [u8; INLINE_LAST] },
    Heap(Box<str>),
}

impl LastSegment {
    fn new(s: &str) -> Self {
        if s.len() <= INLINE_LAST {
            let mut bytes = [0u8; INLINE_LAST];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            LastSegment::Inline {
                len: s.len() as u8,
                bytes,
            }
        } else {
            LastSegment::Heap(s.into())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            LastSegment::Inline { len, bytes } => &bytes[..usize::from(*len)],
            LastSegment::Heap(s) => s.as_bytes(),
        }
    }
}

impl VmId {
    /// An id whose parent path is `parent` (which must end with `/`, or be empty) and
    /// whose last segment is `last` (no `/`): what [`VmId::split`] gives.
    pub fn from_parts(parent: std::sync::Arc<str>, last: &str) -> VmId {
        VmId(std::sync::Arc::new(VmIdParts {
            parent,
            last: LastSegment::new(last),
        }))
    }

    /// An id's parent path (up to and including its last `/`) and last segment.
    pub fn split(id: &str) -> (&str, &str) {
        match id.rfind('/') {
            Some(i) => (&id[..=i], &id[i + 1..]),
            None => ("", id),
        }
    }

    /// The parent path, shared by the ids made with the same one.
    pub fn parent(&self) -> &std::sync::Arc<str> {
        &self.0.parent
    }

    /// The last segment (the VM's name, or a Uniform member's instance id).
    pub fn last(&self) -> &str {
        // Built from a `&str` cut at a `/`, so always UTF-8.
        std::str::from_utf8(self.0.last.as_bytes()).unwrap_or_default()
    }

    /// The last segment's bytes.
    pub fn last_bytes(&self) -> &[u8] {
        self.0.last.as_bytes()
    }

    /// True when both are the same allocation (then equal).
    pub fn ptr_eq(a: &VmId, b: &VmId) -> bool {
        std::sync::Arc::ptr_eq(&a.0, &b.0)
    }

    /// How many holders share this allocation.
    pub fn holders(&self) -> usize {
        std::sync::Arc::strong_count(&self.0)
    }

    /// True when this is the id `s`.
    pub fn is(&self, s: &str) -> bool {
        let (parent, last) = VmId::split(s);
        *self.0.parent == *parent && self.0.last.as_bytes() == last.as_bytes()
    }

    fn bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.0
            .parent
            .bytes()
            .chain(self.0.last.as_bytes().iter().copied())
    }
}

impl From<&str> for VmId {
    fn from(id: &str) -> VmId {
        let (parent, last) = VmId::split(id);
        VmId::from_parts(parent.into(), last)
    }
}

impl From<String> for VmId {
    fn from(id: String) -> VmId {
        VmId::from(id.as_str())
    }
}

impl PartialEq for VmId {
    fn eq(&self, other: &VmId) -> bool {
        // Ids are always split at their last `/`: equal ids have equal parts.
        VmId::ptr_eq(self, other)
            || (self.0.last.as_bytes() == other.0.last.as_bytes()
                && (std::sync::Arc::ptr_eq(&self.0.parent, &other.0.parent)
                    || self.0.parent == other.0.parent))
    }
}

impl Eq for VmId {}

impl std::hash::Hash for VmId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.parent.hash(state);
        self.0.last.as_bytes().hash(state);
    }
}

impl Ord for VmId {
    /// As the whole ids compare.
    fn cmp(&self, other: &VmId) -> std::cmp::Ordering {
        if VmId::ptr_eq(self, other) {
            return std::cmp::Ordering::Equal;
        }
        if std::sync::Arc::ptr_eq(&self.0.parent, &other.0.parent)
            || self.0.parent == other.0.parent
        {
            return self.0.last.as_bytes().cmp(other.0.last.as_bytes());
        }
        self.bytes().cmp(other.bytes())
    }
}

impl PartialOrd for VmId {
    fn partial_cmp(&self, other: &VmId) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.parent)?;
        f.write_str(self.last())
    }
}

impl fmt::Debug for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// One instance (scale set member or standalone VM), with the one address it is
/// registered under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Lower-cased ARM id of the VM (shared, not copied, between discovery's indexes).
    pub vm_id: VmId,
    /// Private IPv4 of the primary IP configuration of the primary NIC.
    pub ip: Ipv4Addr,
    /// Its run-time state; None when no instance view of it has been read yet (a new
    /// instance between two health reads), which is never ready except with `always`.
    pub view: Option<InstanceView>,
    /// The VM's own tags (Flexible members and standalone VMs; empty for Uniform).
    pub tags: BTreeMap<String, String>,
    /// The Azure region of a VM found alone ([`Found::vms`]; lower-cased, shared between
    /// the VMs of one region); None for the instances of a [`ScaleSetSnapshot`], which are
    /// in its [`ScaleSetSnapshot::location`], and when ARM did not say.
    pub location: Option<std::sync::Arc<str>>,
}

impl Instance {
    /// True when the instance may take traffic under `when`.
    pub fn ready(&self, when: RegisterWhen) -> bool {
        let view = match (when, &self.view) {
            (RegisterWhen::Always, _) => return true,
            (_, None) => return false,
            (_, Some(v)) => v,
        };
        let running = view.power == Some(Power::Running)
            && !matches!(
                view.provisioning,
                Some(Provisioning::Deleting | Provisioning::Failed)
            );
        match when {
            RegisterWhen::Running => running,
            RegisterWhen::Healthy => running && view.health == Some(Health::Healthy),
            RegisterWhen::Always => true,
        }
    }
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
    /// True when the set's instances report health (`vmHealth` from the Application
    /// Health extension or a load balancer probe).
    pub reports_health: bool,
    /// The scale set's tags.
    pub tags: BTreeMap<String, String>,
    /// The set's Azure region (`location`), lower-cased; empty when ARM did not say.
    pub location: String,
    /// How long Azure keeps a leaving instance (in `Deleting`, still serving) before
    /// deleting it: the terminate notification's `notBeforeTimeout`; None without one.
    pub terminate_delay: Option<std::time::Duration>,
    /// Instances with an address, sorted by VM id; one entry per VM. For a held set
    /// ([`ScaleSetSnapshot::held`]): its members at the last read that was used.
    pub instances: Vec<Instance>,
    /// Set when this cycle's read of the set's members was judged failed
    /// (`plan::judge_read`): its servers are then kept exactly as they are.
    pub held: Option<HeldRead>,
}

/// Why one scale set's membership read was not used this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFault {
    /// The set says it has instances (or had members at the last read used), and the read
    /// found none.
    Empty {
        /// `sku.capacity` (None: ARM did not say).
        capacity: Option<u64>,
        /// Members at the last read used (None: none since the start).
        previous: Option<usize>,
    },
    /// Fewer than the set's capacity (or, when ARM gave none, at most half of its members
    /// before), and fewer than its members at the last read used (or no read used since
    /// the start). Such a read may add, never make a server leave.
    Short {
        /// Members found (with an address).
        found: usize,
        /// What the read was judged against: the capacity, or else the members before.
        reference: u64,
        /// `sku.capacity` (None: ARM did not say).
        capacity: Option<u64>,
        /// Members at the last read used (None: none since the start).
        previous: Option<usize>,
    },
    /// ARM gave no capacity and no read of the set has been used since the start: there
    /// is nothing to judge the read against. Such a read may add, never make a server
    /// leave.
    NoReference {
        /// Members found (with an address).
        found: usize,
    },
    /// Members (known from the NIC list, or the member list of a Flexible set) without an
    /// instance view while instance views are needed.
    NoViews {
        /// Members without a view.
        missing: usize,
        /// Members found.
        members: usize,
    },
}

struct Count(Option<u64>);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(c) => write!(f, "{c}"),
            None => f.write_str("unknown"),
        }
    }
}

impl fmt::Display for ReadFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous = |p: &Option<usize>| match p {
            Some(p) => format!("{p} members at the last read used"),
            None => "no earlier read used".to_string(),
        };
        match self {
            ReadFault::Empty {
                capacity,
                previous: p,
            } => write!(
                f,
                "the read found no instances, but its capacity is {} ({})",
                Count(*capacity),
                previous(p)
            ),
            ReadFault::Short {
                found,
                capacity: Some(c),
                previous: p,
                ..
            } => write!(
                f,
                "the read found {found} instances, fewer than its capacity of {c} and fewer \
                 than before ({})",
                previous(p)
            ),
            ReadFault::Short {
                found,
                capacity: None,
                previous: p,
                reference,
            } => write!(
                f,
                "the read found {found} instances, at most half of the {reference} found \
                 before, and its capacity is unknown ({})",
                previous(p)
            ),
            ReadFault::NoReference { found } => write!(
                f,
                "the read found {found} instances, but its capacity is unknown and no \
                 earlier read was used to judge it against"
            ),
            ReadFault::NoViews { missing, members } => write!(
                f,
                "{missing} of its {members} members came without an instance view"
            ),
        }
    }
}

/// A scale set whose read was not used as complete this cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldRead {
    /// Why.
    pub fault: ReadFault,
    /// True when the set's earlier members are known (a read of it was used since the
    /// start); false when not (its servers are then not known, and nothing leaves the
    /// upstreams it feeds).
    pub members_known: bool,
    /// True for a read that may add but not remove (`plan::Judgement::AddOnly`): the
    /// snapshot's instances are this read's members and are planned (ready ones added or
    /// restored), but none of the set's servers ([`HeldRead::earlier`] and this read's)
    /// leaves. False for a read not used at all: the snapshot's instances are the set's
    /// members known from earlier reads, kept exactly as they are.
    pub add_only: bool,
    /// With `add_only`: the set's members known from earlier reads (the last read used and
    /// every read not used since), whose servers must not leave either.
    pub earlier: Vec<Instance>,
}

impl ScaleSetSnapshot {
    /// What `register_when` means for this set when it is not configured: `healthy`
    /// for sets that report health, `running` for the others.
    pub fn default_register_when(&self) -> RegisterWhen {
        if self.reports_health {
            RegisterWhen::Healthy
        } else {
            RegisterWhen::Running
        }
    }
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

/// The hasher of the in-process maps a cycle fills with ARM ids, 100,000 at a time
/// (rustc-hash's FxHash; SipHash was a twentieth of a cycle's CPU). Not keyed: for keys
/// that come from ARM and the configuration, not from anyone who could choose collisions.
pub type FastBuild = rustc_hash::FxBuildHasher;

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

/// Everything one upstream's selection found in one cycle: its scale sets and its
/// standalone VMs.
#[derive(Clone, Debug, Default)]
pub struct Found {
    /// The scale sets selected.
    pub sets: Vec<std::sync::Arc<ScaleSetSnapshot>>,
    /// VMs selected alone by their tags: standalone VMs, and members of Flexible sets
    /// the selection does not select.
    pub vms: Vec<std::sync::Arc<Instance>>,
    /// True when the selection names its scale sets exactly (no glob, no tags): then
    /// finding none of them is not possible (a missing set is an error).
    pub exact: bool,
}

impl Found {
    /// Instances found (wanted or not), for the guard. Held sets are not counted: their
    /// servers are not planned. Add-only sets are (their capacity too, so the guard does
    /// not read their short read as agreeing with a mass removal).
    pub fn found(&self) -> usize {
        self.used().map(|s| s.instances.len()).sum::<usize>() + self.vms.len()
    }

    /// What the sources themselves say they hold: the sum of the capacities of the sets
    /// whose read is used, plus the standalone VMs. None when a set did not say, when a
    /// glob or tag selection matched nothing at all (an empty answer is then no proof),
    /// or when every set is held and there is no standalone VM (nothing was read).
    pub fn capacity(&self) -> Option<u64> {
        if !self.exact && self.sets.is_empty() && self.vms.is_empty() {
            return None;
        }
        if !self.sets.is_empty() && self.used().next().is_none() && self.vms.is_empty() {
            return None;
        }
        let mut total = self.vms.len() as u64;
        for s in self.used() {
            total += s.capacity?;
        }
        Some(total)
    }

    /// The sets whose read is planned this cycle: used, or add-only.
    fn used(&self) -> impl Iterator<Item = &std::sync::Arc<ScaleSetSnapshot>> {
        self.sets
            .iter()
            .filter(|s| s.held.as_ref().is_none_or(|h| h.add_only))
    }

    /// The sets whose read was not used as complete this cycle (held or add-only).
    pub fn held(&self) -> impl Iterator<Item = &std::sync::Arc<ScaleSetSnapshot>> {
        self.sets.iter().filter(|s| s.held.is_some())
    }
}

/// The servers of an upstream that belong to sets whose read was not used as complete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeldServers {
    /// Kept exactly as they are (left out of planning): the addresses (`ip:port`) of the
    /// held sets' members known from earlier reads, at their port, whatever their state.
    pub servers: std::collections::BTreeSet<String>,
    /// Planned, but never leaving: the addresses of the add-only sets' members, this
    /// read's and those known from earlier reads.
    pub staying: std::collections::BTreeSet<String>,
    /// True when such a set's members are not known (no read of it used since the
    /// start): then no server may leave the upstream.
    pub unknown: bool,
}

/// The servers that belong to the held and add-only sets of what an upstream found
/// ([`ScaleSetSnapshot::held`]).
pub fn held_servers(found: &Found, reg: &Registration<'_>) -> HeldServers {
    let mut out = HeldServers::default();
    for s in found.held() {
        let Some(h) = &s.held else { continue };
        if !h.members_known {
            out.unknown = true;
        }
        let into = if h.add_only {
            &mut out.staying
        } else {
            &mut out.servers
        };
        for inst in s.instances.iter().chain(&h.earlier) {
            if let Ok(port) = port_of(inst, Some(&s.tags), reg) {
                into.insert(format!("{}:{}", inst.ip, port));
            }
        }
    }
    out
}

/// How an upstream turns instances into servers.
#[derive(Clone, Copy, Debug)]
pub struct Registration<'a> {
    /// The port, or the fallback when a port tag is used.
    pub port: Option<u16>,
    /// A tag holding the port (on the VM, else on its scale set).
    pub port_tag: Option<&'a str>,
    /// When instances are registered; None: per scale set, `healthy` when it reports
    /// health, `running` otherwise.
    pub when: Option<RegisterWhen>,
    /// Server parameters.
    pub params: ServerParams,
}

/// An instance that has no usable port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unported {
    /// The VM.
    pub vm_id: String,
    /// Why.
    pub reason: String,
}

/// Looks a tag up by name, case-insensitively (Azure tag names are).
pub fn tag<'t>(tags: &'t BTreeMap<String, String>, name: &str) -> Option<&'t str> {
    tags.get(name)
        .or_else(|| {
            tags.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        })
        .map(String::as_str)
}

fn port_of(
    inst: &Instance,
    set_tags: Option<&BTreeMap<String, String>>,
    reg: &Registration<'_>,
) -> Result<u16, String> {
    let Some(name) = reg.port_tag else {
        return reg.port.ok_or_else(|| "no port configured".to_string());
    };
    let value = tag(&inst.tags, name).or_else(|| set_tags.and_then(|t| tag(t, name)));
    match value {
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("tag {name} is {v:?}, not a port from 1 to 65535")),
        None => reg
            .port
            .ok_or_else(|| format!("no tag {name} and no port configured")),
    }
}

/// `ip:port`, as `format!("{ip}:{port}")` writes it, without the formatting machinery
/// (100,000 of them per cycle).
pub fn server_address(ip: Ipv4Addr, port: u16) -> String {
    fn push_decimal(s: &mut String, mut n: u32) {
        let mut digits = [0u8; 5];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for d in &digits[i..] {
            s.push(char::from(*d));
        }
    }
    let mut s = String::with_capacity(21);
    for (k, octet) in ip.octets().into_iter().enumerate() {
        if k > 0 {
            s.push('.');
        }
        push_decimal(&mut s, u32::from(octet));
    }
    s.push(':');
    push_decimal(&mut s, u32::from(port));
    s
}

/// Builds the desired servers of one upstream from what its selection found: the ready
/// instances, each once, at its port. Instances without a usable port are returned
/// apart, with the reason. Held sets are left out ([`held_servers`]); add-only sets are
/// planned.
pub fn desired_servers(found: &Found, reg: &Registration<'_>) -> (DesiredServers, Vec<Unported>) {
    let mut out = DesiredServers::new();
    let mut unported = Vec::new();
    let mut seen: std::collections::HashSet<&VmId, FastBuild> = Default::default();
    let sets = found.used().flat_map(|s| {
        let when = reg.when.unwrap_or_else(|| s.default_register_when());
        s.instances.iter().map(move |i| (i, Some(&s.tags), when))
    });
    let vms = found.vms.iter().map(|i| {
        let reports = i.view.is_some_and(|v| v.health.is_some());
        let when = reg.when.unwrap_or(if reports {
            RegisterWhen::Healthy
        } else {
            RegisterWhen::Running
        });
        (i.as_ref(), None, when)
    });
    for (inst, set_tags, when) in sets.chain(vms) {
        if !seen.insert(&inst.vm_id) || !inst.ready(when) {
            continue;
        }
        match port_of(inst, set_tags, reg) {
            Ok(port) => {
                out.insert(server_address(inst.ip, port), reg.params);
            }
            Err(reason) => unported.push(Unported {
                vm_id: inst.vm_id.to_string(),
                reason,
            }),
        }
    }
    (out, unported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_fast_hasher_spreads_arm_ids_that_differ_only_at_their_end_over_buckets() {
        use std::hash::BuildHasher;
        let b = FastBuild::default();
        let buckets: std::collections::HashSet<u64> = (0..1000u64)
            .map(|i| {
                let id = format!(
                    "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg\
                     /providers/Microsoft.Compute/virtualMachineScaleSets/web/virtualMachines/{i}"
                );
                b.hash_one(id.as_str()) & 1023
            })
            .collect();
        // 1,000 keys over 1,024 buckets: about 632 distinct buckets when spread at random.
        assert!(buckets.len() > 550, "{} buckets", buckets.len());
    }

    #[test]
    fn server_address_is_what_format_writes() {
        for (ip, port) in [
            (Ipv4Addr::new(0, 0, 0, 0), 0),
            (Ipv4Addr::new(10, 0, 0, 4), 80),
            (Ipv4Addr::new(255, 255, 255, 255), 65535),
            (Ipv4Addr::new(192, 168, 100, 9), 8080),
            (Ipv4Addr::new(1, 20, 199, 250), 10),
        ] {
            assert_eq!(server_address(ip, port), format!("{ip}:{port}"));
        }
    }

    fn params() -> ServerParams {
        ServerParams {
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        }
    }

    fn view(power: Power, prov: Provisioning, health: Option<Health>) -> Option<InstanceView> {
        Some(InstanceView {
            provisioning: Some(prov),
            power: Some(power),
            health,
        })
    }

    fn inst(n: u8, v: Option<InstanceView>) -> Instance {
        Instance {
            vm_id: format!("/vm/{n}").into(),
            ip: Ipv4Addr::new(10, 0, 0, n),
            view: v,
            tags: BTreeMap::new(),
            location: None,
        }
    }

    fn set(reports_health: bool, instances: Vec<Instance>) -> Arc<ScaleSetSnapshot> {
        Arc::new(ScaleSetSnapshot {
            key: ScaleSetKey::new("s", "rg", "web"),
            capacity: Some(instances.len() as u64),
            orchestration: Orchestration::Uniform,
            reports_health,
            tags: BTreeMap::new(),
            location: "westeurope".into(),
            terminate_delay: None,
            instances,
            held: None,
        })
    }

    fn reg(when: Option<RegisterWhen>) -> Registration<'static> {
        Registration {
            port: Some(80),
            port_tag: None,
            when,
            params: params(),
        }
    }

    fn servers(found: &Found, r: &Registration<'_>) -> Vec<String> {
        desired_servers(found, r).0.into_keys().collect()
    }

    #[test]
    fn running_means_power_running_and_not_deleting_or_failed() {
        let ok = inst(1, view(Power::Running, Provisioning::Succeeded, None));
        let updating = inst(2, view(Power::Running, Provisioning::Updating, None));
        let deleting = inst(3, view(Power::Running, Provisioning::Deleting, None));
        let failed = inst(4, view(Power::Running, Provisioning::Failed, None));
        let stopped = inst(5, view(Power::Stopped, Provisioning::Succeeded, None));
        let evicted = inst(6, view(Power::Deallocated, Provisioning::Succeeded, None));
        let unread = inst(7, None);
        let all = [ok, updating, deleting, failed, stopped, evicted, unread];
        let ready: Vec<u8> = all
            .iter()
            .filter(|i| i.ready(RegisterWhen::Running))
            .map(|i| i.ip.octets()[3])
            .collect();
        assert_eq!(ready, vec![1, 2]);
        assert!(all.iter().all(|i| i.ready(RegisterWhen::Always)));
    }

    #[test]
    fn healthy_needs_running_and_healthy_and_unknown_is_not_ready() {
        let h = inst(
            1,
            view(
                Power::Running,
                Provisioning::Succeeded,
                Some(Health::Healthy),
            ),
        );
        let u = inst(
            2,
            view(
                Power::Running,
                Provisioning::Succeeded,
                Some(Health::Unknown),
            ),
        );
        let bad = inst(
            3,
            view(
                Power::Running,
                Provisioning::Succeeded,
                Some(Health::Unhealthy),
            ),
        );
        let none = inst(4, view(Power::Running, Provisioning::Succeeded, None));
        let stopped = inst(
            5,
            view(
                Power::Stopped,
                Provisioning::Succeeded,
                Some(Health::Healthy),
            ),
        );
        let ready: Vec<bool> = [h, u, bad, none, stopped]
            .iter()
            .map(|i| i.ready(RegisterWhen::Healthy))
            .collect();
        assert_eq!(ready, vec![true, false, false, false, false]);
    }

    #[test]
    fn default_is_healthy_for_sets_that_report_health_and_running_otherwise() {
        let instances = vec![
            inst(
                1,
                view(
                    Power::Running,
                    Provisioning::Succeeded,
                    Some(Health::Healthy),
                ),
            ),
            inst(
                2,
                view(
                    Power::Running,
                    Provisioning::Succeeded,
                    Some(Health::Unhealthy),
                ),
            ),
        ];
        let with_health = Found {
            sets: vec![set(true, instances.clone())],
            ..Found::default()
        };
        assert_eq!(servers(&with_health, &reg(None)), vec!["10.0.0.1:80"]);
        let without = Found {
            sets: vec![set(false, instances)],
            ..Found::default()
        };
        assert_eq!(
            servers(&without, &reg(None)),
            vec!["10.0.0.1:80", "10.0.0.2:80"]
        );
        assert_eq!(
            servers(&with_health, &reg(Some(RegisterWhen::Always))).len(),
            2
        );
    }

    #[test]
    fn port_comes_from_the_vm_tag_then_the_set_tag_then_the_port() {
        let mut a = inst(1, None);
        a.tags.insert("App:Port".into(), "8080".into());
        let b = inst(2, None);
        let mut c = inst(3, None);
        c.tags.insert("app:port".into(), "http".into());
        let mut s = ScaleSetSnapshot::clone(&set(false, vec![a, b, c]));
        s.tags.insert("app:port".into(), "9090".into());
        let found = Found {
            sets: vec![Arc::new(s)],
            ..Found::default()
        };
        let r = Registration {
            port: None,
            port_tag: Some("app:port"),
            when: Some(RegisterWhen::Always),
            params: params(),
        };
        let (servers, unported) = desired_servers(&found, &r);
        assert_eq!(
            servers.into_keys().collect::<Vec<_>>(),
            vec!["10.0.0.1:8080", "10.0.0.2:9090"]
        );
        assert_eq!(unported.len(), 1);
        assert!(unported[0].reason.contains("\"http\""), "{unported:?}");
    }

    #[test]
    fn a_vm_found_twice_is_registered_once() {
        let i = inst(1, None);
        let found = Found {
            sets: vec![set(false, vec![i.clone()])],
            vms: vec![Arc::new(i)],
            exact: false,
        };
        assert_eq!(found.found(), 2);
        assert_eq!(
            servers(&found, &reg(Some(RegisterWhen::Always))),
            vec!["10.0.0.1:80"]
        );
    }

    #[test]
    fn a_pattern_that_matched_nothing_has_no_capacity() {
        let nothing = Found::default();
        assert_eq!(nothing.capacity(), None);
        let exact_empty = Found {
            sets: vec![set(false, vec![])],
            exact: true,
            ..Found::default()
        };
        assert_eq!(exact_empty.capacity(), Some(0));
    }

    /// Ids whose parent paths are prefixes of each other, short and long last segments.
    fn arb_vm_id() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let segment = prop::sample::select(vec![
            "",
            "a",
            "b",
            "ab",
            "a0",
            "0",
            "17",
            "z",
            "vm_1a2b3c4d",
            "a-name-longer-than-twenty-two-bytes_00000001",
        ]);
        prop::collection::vec(segment, 1..5).prop_map(|parts| parts.join("/"))
    }

    proptest::proptest! {
        #[test]
        fn vm_ids_compare_order_and_hash_as_their_whole_strings(
            a in arb_vm_id(),
            b in arb_vm_id(),
        ) {
            use std::hash::BuildHasher;
            let (x, y) = (VmId::from(a.as_str()), VmId::from(b.as_str()));
            proptest::prop_assert_eq!(x.to_string(), a.clone());
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            proptest::prop_assert_eq!(x == y, a == b);
            proptest::prop_assert!(x.is(&a));
            proptest::prop_assert_eq!(x.is(&b), a == b);
            // Made apart (no shared parent), equal ids hash alike.
            let z = VmId::from(a.clone());
            let h = FastBuild::default();
            proptest::prop_assert_eq!(h.hash_one(&x), h.hash_one(&z));
            proptest::prop_assert_eq!(&x, &z);
        }
    }

    #[test]
    fn a_vm_id_keeps_a_short_last_segment_inline_and_shares_its_parent() {
        let parent: Arc<str> = Arc::from("/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/web/virtualmachines/");
        let a = VmId::from_parts(Arc::clone(&parent), "17");
        let b = VmId::from_parts(Arc::clone(&parent), "a-name-longer-than-twenty-two-bytes_1");
        assert!(Arc::ptr_eq(a.parent(), b.parent()));
        assert_eq!(a.last(), "17");
        assert_eq!(b.last(), "a-name-longer-than-twenty-two-bytes_1");
        assert_eq!(a.to_string(), format!("{parent}17"));
        assert!(matches!(a.0.last, LastSegment::Inline { .. }));
        assert!(matches!(b.0.last, LastSegment::Heap(_)));
        // One pointer wide; its one allocation (with the counts) fits 64 bytes.
        assert_eq!(std::mem::size_of::<VmId>(), std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<VmIdParts>() + 2 * std::mem::size_of::<usize>() <= 56);
    }
}
