//! Discovery: turns ARM reads into what each upstream's [`Selection`] found.
//!
//! A cycle plans its reads as a set of ARM list operations, deduplicated across every
//! upstream, and runs them concurrently with a bounded number in flight:
//!
//! 1. **Scale sets**: `VirtualMachineScaleSets_Get` for a set named alone in its
//!    resource group; `VirtualMachineScaleSets_List` for a resource group where several
//!    sets are named, a glob or tags select (`_ListAll` for the whole subscription).
//!    Standalone VMs selected by tags: `VirtualMachines_List` / `_ListAll` (which also
//!    hold Flexible members: a member whose own tags match is taken alone when its set
//!    is not selected, so a member tagged by itself is found in an untagged set).
//! 2. **Members**, once per selected set however many upstreams use it:
//!    - Uniform: `NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces` (the
//!      addresses) and, when health is due, `VirtualMachineScaleSetVMs_List` with
//!      `$expand=instanceView` (power, provisioning and `vmHealth`);
//!    - Flexible: `VirtualMachines_List` of the set's resource group with
//!      `$filter='virtualMachineScaleSet/id' eq '…'` (the members; with
//!      `$expand=instanceView` when health is due), and `NetworkInterfaces_List` once per
//!      resource group holding their NICs, joined on the NIC's `virtualMachine.id`;
//!    - standalone VMs: the same NIC lists, and `VirtualMachines_ListAll?statusOnly=true`
//!      when health is due and the selection takes at least one VM alone.
//! 3. **Stragglers**: NIC lists of resource groups named only by a NIC id read in step 2,
//!    and an early instance-view read when new members appeared since the last one (so a
//!    new instance does not wait a whole `health_interval` to be registered).
//!
//! The startup check ([`check`]) runs step 1 only; its reads serve the first cycle when it
//! starts within 30 s, so a start reads each scale set once.
//!
//! With events, a timer cycle may take step 1's scale set reads from earlier cycles
//! ([`Options::sets_watched_since`]): every change they would show is a write to the set,
//! which raises an event, and an event's reconcile reads its sets afresh. A set whose
//! member read is empty, has other members than its last read used, or shows a changed
//! instance view has its scale set read again in the same cycle, before its read is
//! judged; every reused read is read again once [`Options::max_reuse_age`] old.
//!
//! Reads per cycle therefore grow with the number of sets and resource groups, never with
//! the number of instances (apart from pages). Instance views are the expensive reads in
//! Compute's throttling ("HighCostGet" policies): they are read at most every
//! `health_interval`, less often while the subscription's budget runs low, and cached in
//! between.
//!
//! Any failed read (one failed page included) fails every selection that depends on it:
//! a partial read is never returned.

mod select;

pub use select::{glob, is_glob, Groups, Selection, TagFilter};

use crate::azure::arm::{ArmClient, ArmError, ListRequest};
use crate::azure::models::{self, VirtualMachineScaleSet, VmRow};
use crate::model::{
    Found, Health, Instance, InstanceView, Orchestration, Power, Provisioning, ScaleSetKey,
    ScaleSetSnapshot, VmId,
};
use std::collections::{BTreeMap, BTreeSet};

/// The maps of a cycle hold 100,000 ARM ids at a time: hashed with [`crate::model::FastBuild`].
type HashMap<K, V> = std::collections::HashMap<K, V, crate::model::FastBuild>;
type HashSet<K> = std::collections::HashSet<K, crate::model::FastBuild>;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a selection could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    /// ARM refused or failed.
    #[error("{0}")]
    Arm(Arc<ArmError>),
    /// A named scale set is not in the list of its resource group.
    #[error("scale set {name} was not found in resource group {resource_group}")]
    NotFound {
        /// Resource group.
        resource_group: String,
        /// Scale set name.
        name: String,
    },
    /// The set uses an orchestration mode vmss-sync does not know.
    #[error("scale set {0} uses orchestration mode {1}, which vmss-sync does not know")]
    UnknownMode(String, String),
    /// An answer lacked something it must hold.
    #[error("{0}: not using a partial read")]
    Partial(String),
}

impl From<ArmError> for DiscoveryError {
    fn from(e: ArmError) -> Self {
        DiscoveryError::Arm(Arc::new(e))
    }
}

impl DiscoveryError {
    /// True when retrying will not help until something is changed (missing set,
    /// unknown mode, missing permission).
    pub fn is_permanent(&self) -> bool {
        match self {
            DiscoveryError::Arm(e) => e.is_permanent(),
            DiscoveryError::NotFound { .. } | DiscoveryError::UnknownMode(..) => true,
            DiscoveryError::Partial(_) => false,
        }
    }
}

/// How discovery runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Reads in flight at most.
    pub concurrency: usize,
    /// Instance views (power, health) are read at most this often (more often only when
    /// new members appear), and less often while the read budget runs low.
    pub health_interval: Duration,
    /// A read skipped because an earlier one still holds (a Uniform set's NIC list, a
    /// scale set read of step 1 reused) is made again at least this often.
    pub max_reuse_age: Duration,
    /// Step 1 (the scale set GETs and lists) may be taken from an earlier cycle's
    /// successful reads made at or after this instant: the moment since which every
    /// change of a set (capacity, tags, model, deletion: a write to the set, which raises
    /// an Event Grid event) reaches this daemon as an event, which reads the set afresh.
    /// `None` (polling, or an event queue not read without a break): step 1 is read
    /// every cycle.
    ///
    /// A reused read of a scale set is read again in the same cycle, before its
    /// membership read is judged, when that membership read is empty, differs from the
    /// set's last read used (its VM ids) or shows an instance view that changed since the
    /// previous read of views; and in any cycle once it is `max_reuse_age` old. With the
    /// members unchanged and not empty, `plan::judge_read` does not depend on the
    /// capacity (`found == previous > 0`), so a stale capacity cannot change how a read
    /// is judged.
    pub sets_watched_since: Option<Instant>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 4,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            max_reuse_age: MAX_REUSE_AGE,
            sets_watched_since: None,
        }
    }
}

/// Default of [`Options::max_reuse_age`]: 15 minutes.
pub const MAX_REUSE_AGE: Duration = Duration::from_secs(15 * 60);

/// Default `health_interval` (defined in the model, which the configuration shares).
pub use crate::model::DEFAULT_HEALTH_INTERVAL;
/// While the budget runs low, instance views wait up to this many health intervals.
const PRESSURE_STRETCH: u32 = 4;

/// Instance views read earlier, by VM id, with when they were read.
struct ViewCache {
    read_at: Instant,
    /// By the shared id ([`Ids`]): a cache entry holds no string of its own.
    views: HashMap<VmId, InstanceView>,
}

impl ViewCache {
    fn new(read_at: Instant, views: HashMap<VmId, InstanceView>) -> Self {
        ViewCache { read_at, views }
    }

    fn get(&self, id: &VmId) -> Option<&InstanceView> {
        self.views.get(id)
    }
}

/// What discovery remembers between cycles: instance views (read on their own slower
/// interval), resource groups whose scale set list was refused, and each scale set's
/// last read that was used (what a failed read is judged against, and what it keeps).
#[derive(Default)]
pub struct DiscoveryState {
    views: Mutex<HashMap<String, ViewCache>>,
    list_refused: Mutex<HashSet<String>>,
    used: Mutex<HashMap<String, Arc<ScaleSetSnapshot>>>,
    /// Each scale set's members found by its reads not used since its last read used
    /// (or since the start), by VM id: their servers must not leave either.
    unused: Mutex<HashMap<String, BTreeMap<VmId, Instance>>>,
    /// The startup check's successful scale set reads, kept for the first cycle.
    primed: Mutex<Option<(Instant, Results)>>,
    /// Each Uniform set's last NIC list, with when it was read: a cycle that reads the
    /// set's instance views and finds the same members, all `Succeeded` then and now,
    /// takes their addresses from it instead of listing the NICs again (at most
    /// [`NIC_LIST_MAX_AGE`] old).
    nic_lists: Kept,
    /// Step 1's successful scale set reads (GETs and lists), by read, with when they were
    /// made: reused while [`Options::sets_watched_since`] allows.
    set_reads: Kept,
    ids: Ids,
}

/// Reads kept from earlier cycles to stand for this one's, by key, with when each was
/// made.
#[derive(Default)]
struct Kept(Mutex<HashMap<String, (Instant, Arc<Out>)>>);

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<Out>)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The read kept under `key` when it was made at or after `since` and is younger
    /// than `max_age` at `now`.
    fn fresh(
        &self,
        key: &str,
        since: Option<Instant>,
        now: Instant,
        max_age: Duration,
    ) -> Option<Arc<Out>> {
        let cache = self.lock();
        let (at, out) = cache.get(key)?;
        let fresh = since.is_none_or(|s| *at >= s) && now.saturating_duration_since(*at) < max_age;
        fresh.then(|| Arc::clone(out))
    }

    /// The read kept under `key`, however old.
    fn get(&self, key: &str) -> Option<Arc<Out>> {
        self.lock().get(key).map(|(_, out)| Arc::clone(out))
    }

    fn keep(&self, key: &str, at: Instant, out: Arc<Out>) {
        self.lock().insert(key.to_string(), (at, out));
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// A Uniform set's NIC list is read again at least this often by default, whatever its
/// instance views say (the addresses of unchanged members are otherwise taken from it):
/// [`Options::max_reuse_age`].
pub const NIC_LIST_MAX_AGE: Duration = MAX_REUSE_AGE;

/// The startup check's reads serve a first cycle that starts at most this long after them.
const PRIMED_FOR: Duration = Duration::from_secs(30);

impl DiscoveryState {
    fn used_reads(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ScaleSetSnapshot>>> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The set's last read that was used.
    fn used(&self, key: &str) -> Option<Arc<ScaleSetSnapshot>> {
        self.used_reads().get(key).cloned()
    }

    /// Members at the set's last read that was used.
    fn used_count(&self, key: &str) -> Option<usize> {
        self.used_reads().get(key).map(|s| s.instances.len())
    }

    fn use_read(&self, key: &str, snap: Arc<ScaleSetSnapshot>) {
        self.used_reads().insert(key.to_string(), snap);
        self.unused_reads().remove(key);
    }

    fn unused_reads(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeMap<VmId, Instance>>> {
        self.unused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the members of a read that was not used, and gives every member found by
    /// such reads since the last read used (this one's included).
    fn not_used(&self, key: &str, members: &[Instance]) -> Vec<Instance> {
        let mut all = self.unused_reads();
        let seen = all.entry(key.to_string()).or_default();
        for m in members {
            seen.insert(m.vm_id.clone(), m.clone());
        }
        seen.values().cloned().collect()
    }

    /// How many members the reads not used since the last read used found, together.
    fn unused_count(&self, key: &str) -> Option<usize> {
        self.unused_reads().get(key).map(BTreeMap::len)
    }

    /// Takes over what `from` knows of each scale set's reads: its last read used and the
    /// members of the reads not used since (instance views are read again). A reload that keeps a
    /// set judges its next read against the same history as before (a fresh state would
    /// judge it as right after a start).
    pub fn adopt_history(&self, from: &DiscoveryState) {
        let used = from.used_reads().clone();
        self.used_reads().extend(used);
        let unused = from.unused_reads().clone();
        self.unused_reads().extend(unused);
    }

    fn views(&self) -> std::sync::MutexGuard<'_, HashMap<String, ViewCache>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.list_refused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn due(&self, key: &str, now: Instant, interval: Duration, pressure: bool) -> bool {
        match self.views().get(key) {
            None => true,
            Some(c) => {
                let age = now.saturating_duration_since(c.read_at);
                age >= interval && (!pressure || age >= interval * PRESSURE_STRETCH)
            }
        }
    }

    fn knows_all<'a>(&self, key: &str, mut ids: impl Iterator<Item = &'a VmId>) -> bool {
        match self.views().get(key) {
            None => false,
            Some(c) => ids.all(|id| c.get(id).is_some()),
        }
    }

    fn store(&self, key: &str, at: Instant, views: HashMap<VmId, InstanceView>) {
        let cache = ViewCache::new(at, views);
        self.views().insert(key.to_string(), cache);
    }

    fn cached(&self, key: &str, id: &VmId) -> Option<InstanceView> {
        self.views().get(key)?.get(id).copied()
    }

    /// True when the set's last NIC list is recent enough to be reused.
    fn nic_list_fresh(&self, key: &str, now: Instant, max_age: Duration) -> bool {
        self.nic_lists.fresh(key, None, now, max_age).is_some()
    }

    /// Moves into `done` the earlier reads of the scale set `ops` that may stand for this
    /// cycle's: made at or after `since` and younger than `max_age`. Gives their keys.
    fn reuse_sets(
        &self,
        ops: &[Op],
        since: Instant,
        now: Instant,
        max_age: Duration,
        done: &mut Results,
    ) -> BTreeSet<String> {
        let mut reused = BTreeSet::new();
        for op in ops.iter().filter(|op| op.is_set_read()) {
            let key = op.key();
            if done.contains_key(&key) {
                continue;
            }
            if let Some(out) = self.set_reads.fresh(&key, Some(since), now, max_age) {
                done.insert(key.clone(), Ok(out));
                reused.insert(key);
            }
        }
        reused
    }

    /// Keeps the scale set reads of `done` made this cycle (not in `skip`) for later
    /// cycles, read at `at`; a failed one forgets the earlier read.
    fn keep_set_reads(&self, done: &Results, skip: &HashSet<String>, at: Instant) {
        for (key, r) in done {
            if skip.contains(key) || !is_set_read_key(key) {
                continue;
            }
            match r {
                Ok(out) => self.set_reads.keep(key, at, Arc::clone(out)),
                Err(_) => self.set_reads.forget(key),
            }
        }
    }

    /// The set's last NIC list when `views`, just read, show exactly its members, each
    /// `Succeeded` now and at the previous read of views (no create, update or delete
    /// under way or finished unseen that could have changed an address).
    fn same_members(&self, key: &str, views: &HashMap<VmId, InstanceView>) -> Option<Arc<Out>> {
        let nics = self.nic_lists.get(key)?;
        let Out::Nics(list) = nics.as_ref() else {
            return None;
        };
        let members: HashSet<&VmId> = list.iter().map(|n| &n.vm).collect();
        let settled = |v: Option<InstanceView>| {
            v.is_some_and(|v| v.provisioning == Some(Provisioning::Succeeded))
        };
        let same = members.len() == views.len()
            && views.iter().all(|(id, v)| {
                members.contains(id) && settled(Some(*v)) && settled(self.cached(key, id))
            });
        same.then_some(nics)
    }

    fn keep_nic_list(&self, key: &str, at: Instant, nics: Arc<Out>) {
        self.nic_lists.keep(key, at, nics);
    }

    /// Keeps the successful reads of `done` for the next cycle.
    fn prime(&self, at: Instant, done: &Results) {
        let ok = done
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        *self.primed.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, ok));
    }

    /// The primed reads, once, when they are recent enough.
    fn take_primed(&self, now: Instant) -> Results {
        match self.primed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some((at, done)) if now.saturating_duration_since(at) <= PRIMED_FOR => done,
            _ => Results::default(),
        }
    }
}

/// Moves the reads of `ops` that `primed` holds into `done` (they are not read again).
fn reuse(primed: &mut Results, ops: &[Op], done: &mut Results) {
    for op in ops {
        if let Some(r) = primed.remove(&op.key()) {
            done.insert(op.key(), r);
        }
    }
}

/// What one cycle of discovery found, per selection.
#[derive(Debug, Default)]
pub struct Discovered {
    /// One result per distinct selection.
    pub results: BTreeMap<Selection, Result<Found, DiscoveryError>>,
    /// ARM list and get operations run (pages not counted).
    pub operations: usize,
}

impl Discovered {
    /// The result of one selection.
    pub fn get(&self, sel: &Selection) -> Option<&Result<Found, DiscoveryError>> {
        self.results.get(sel)
    }
}

// ---------------------------------------------------------------------------
// Compact forms of what was read (full models are dropped page by page)
// ---------------------------------------------------------------------------

/// A NIC, reduced to what picks an address (10,000 of them are held per cycle).
#[derive(Clone, Debug)]
struct Nic {
    /// Lower-cased id of the VM it is attached to (the join key).
    vm: VmId,
    /// A stable order among one VM's NICs (a hash of the NIC's lower-cased id).
    order: u64,
    primary: bool,
    ip: Option<Ipv4Addr>,
}

impl Nic {
    fn from_model(n: models::NicSummary, ids: &Ids) -> Option<Nic> {
        let ip = n.primary_ipv4();
        let primary = n.is_primary();
        let order = n.id_hash;
        let vm = n.vm_id()?;
        Some(Nic {
            ip,
            primary,
            order,
            vm: ids.get(&vm),
        })
    }
}

/// A VM of a VM list (50,000 Flexible members are read per cycle at 100,000 instances):
/// what most VMs have inline, the rest boxed.
#[derive(Clone, Debug)]
struct Vm {
    id: VmId,
    /// Resource group (lower-cased, shared by the VMs of one list).
    rg: Arc<str>,
    provisioning: Option<Provisioning>,
    view: Option<InstanceView>,
    /// Tags, region, set and NIC group, when the VM has any of them (a Flexible set's
    /// member in its own list, with its NIC in its group, has none).
    more: Option<Box<VmMore>>,
}

#[derive(Clone, Debug, Default)]
struct VmMore {
    /// Resource group of its primary NIC when not `rg` (lower-cased).
    nic_rg: Option<Arc<str>>,
    tags: BTreeMap<String, String>,
    /// Region (normalised, shared by the VMs of one list); None when ARM did not say, and
    /// for a set's own member list (only a VM taken alone uses it).
    location: Option<Arc<str>>,
    /// Lower-cased id of the Flexible set it belongs to, for VMs read from the VM lists
    /// of a resource group or subscription (None in a set's own member list).
    set: Option<Arc<str>>,
}

/// The tags of a VM without any.
static NO_TAGS: BTreeMap<String, String> = BTreeMap::new();

impl Vm {
    /// `location`: keep the VM's region (a VM taken alone is registered with it).
    fn from_model(v: VmRow, groups: &mut Interner, location: bool) -> Option<Vm> {
        let id = v.id.clone()?;
        let rg = groups.get(models::resource_group_of(&id)?);
        let nic_rg = v
            .primary_nic()
            .and_then(|n| models::resource_group_of(n).map(|g| groups.get(g)))
            .filter(|g| *g != rg);
        let provisioning = v
            .properties
            .provisioning_state
            .map(|p| Provisioning::parse(p.as_str()));
        let view = v
            .properties
            .instance_view
            .as_ref()
            .map(|iv| view_of(iv, provisioning));
        let location = v
            .location
            .as_ref()
            .filter(|_| location)
            .map(|l| location_name(l.as_str()))
            .filter(|l| !l.is_empty())
            .map(|l| groups.get(&l));
        let more = VmMore {
            nic_rg,
            tags: v.tags,
            location,
            set: None,
        };
        let boxed = more.nic_rg.is_some() || !more.tags.is_empty() || more.location.is_some();
        Some(Vm {
            rg,
            provisioning,
            view,
            more: boxed.then(|| Box::new(more)),
            id: groups.ids.get(&id),
        })
    }

    /// A VM of a resource group's or subscription's VM list: a standalone VM, or a member
    /// of a Flexible set, which a tag selection takes alone when its own tags match and its
    /// set is not selected. Members without tags of their own are dropped (no selection can
    /// take them alone) unless `members` (the status list, read for their views).
    fn listed(v: VmRow, groups: &mut Interner, members: bool) -> Option<Vm> {
        let set = v.scale_set_key();
        if set.is_some() && !members && v.tags.is_empty() {
            return None;
        }
        let mut vm = Vm::from_model(v, groups, true)?;
        if let Some(set) = set {
            let more = vm.more.get_or_insert_with(Box::default);
            more.set = Some(groups.get(&set));
            if members {
                // Only the view of a member is used from the status list.
                more.tags = BTreeMap::new();
            }
        }
        Some(vm)
    }

    fn tags(&self) -> &BTreeMap<String, String> {
        self.more.as_ref().map_or(&NO_TAGS, |m| &m.tags)
    }

    fn set(&self) -> Option<&Arc<str>> {
        self.more.as_ref().and_then(|m| m.set.as_ref())
    }

    fn location(&self) -> Option<&Arc<str>> {
        self.more.as_ref().and_then(|m| m.location.as_ref())
    }

    fn nic_rg(&self) -> Option<&Arc<str>> {
        self.more.as_ref().and_then(|m| m.nic_rg.as_ref())
    }

    /// True when a selection takes this VM alone: its tags match and it is not a member of
    /// a scale set the selection already takes (`sets`: their lower-cased ids).
    fn taken_alone(&self, sel: &Selection, sets: &HashSet<String>) -> bool {
        sel.selects_vm(&self.rg, self.tags()) && self.set().is_none_or(|s| !sets.contains(&**s))
    }

    /// Resource group of its primary NIC.
    fn nic_group(&self) -> &str {
        self.nic_rg().map_or(&self.rg, |g| g)
    }
}

/// A region as ARM names it (`westeurope`): lower-cased, without spaces, so that a display
/// name (`West Europe`, as some answers have it) gives the same name.
fn location_name(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// VM ids (lower-cased), one [`VmId`] per VM shared by every read and snapshot that
/// names it: the NIC lists, the instance views, the VM lists and the sets' last used
/// snapshots (at 100,000 instances, four copies of each whole id were 50 MB). Interned by
/// parent path, then by last segment: the ids of one set or resource group share their
/// parent path.
#[derive(Clone, Default)]
struct Ids(Arc<Mutex<IdTable>>);

type IdTable = HashMap<Arc<str>, HashSet<ByLast>>;

/// An id in its parent path's table: hashed and compared by its last segment.
struct ByLast(VmId);

impl PartialEq for ByLast {
    fn eq(&self, other: &ByLast) -> bool {
        self.0.last_bytes() == other.0.last_bytes()
    }
}

impl Eq for ByLast {}

impl std::hash::Hash for ByLast {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.last_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for ByLast {
    fn borrow(&self) -> &[u8] {
        self.0.last_bytes()
    }
}

impl Ids {
    fn lock(&self) -> std::sync::MutexGuard<'_, IdTable> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared copy of `id`.
    fn get(&self, id: &str) -> VmId {
        let (parent, last) = VmId::split(id);
        let mut table = self.lock();
        let parent = match table.get_key_value(parent) {
            Some((p, known)) => {
                if let Some(v) = known.get(last.as_bytes()) {
                    return v.0.clone();
                }
                Arc::clone(p)
            }
            None => Arc::from(parent),
        };
        let v = VmId::from_parts(Arc::clone(&parent), last);
        table.entry(parent).or_default().insert(ByLast(v.clone()));
        v
    }

    /// Forgets the ids nothing else holds any more.
    fn prune(&self) {
        let mut table = self.lock();
        for known in table.values_mut() {
            known.retain(|v| v.0.holders() > 1);
            known.shrink_to_fit();
        }
        table.retain(|_, known| !known.is_empty());
    }
}

/// Resource group names, regions and set ids, lower-cased and shared: a list of 10,000
/// VMs names only a few.
struct Interner {
    names: HashSet<Arc<str>>,
    /// Where the VM ids go.
    ids: Ids,
}

impl Interner {
    fn new(ids: &Ids) -> Self {
        Interner {
            names: HashSet::default(),
            ids: ids.clone(),
        }
    }

    fn get(&mut self, name: &str) -> Arc<str> {
        if !name.bytes().any(|b| b.is_ascii_uppercase()) {
            if let Some(a) = self.names.get(name) {
                return Arc::clone(a);
            }
        }
        let lower = name.to_ascii_lowercase();
        if let Some(a) = self.names.get(lower.as_str()) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(lower);
        self.names.insert(Arc::clone(&a));
        a
    }
}

fn view_of(iv: &models::ViewSummary, fallback: Option<Provisioning>) -> InstanceView {
    InstanceView {
        provisioning: iv
            .provisioning
            .map(|p| Provisioning::parse(p.as_str()))
            .or(fallback),
        power: iv.power.map(|p| Power::parse(p.as_str())),
        health: iv.health.map(|h| Health::parse(h.as_str())),
    }
}

enum Out {
    Set(Box<VirtualMachineScaleSet>),
    Sets(Vec<VirtualMachineScaleSet>),
    Nics(Vec<Nic>),
    Views(HashMap<VmId, InstanceView>),
    Vms(Vec<Vm>),
}

// ---------------------------------------------------------------------------
// Read operations
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    SetGet {
        sub: String,
        rg: String,
        name: String,
    },
    SetList {
        sub: String,
        rg: Option<String>,
    },
    UniformNics {
        sub: String,
        rg: String,
        name: String,
    },
    UniformViews {
        sub: String,
        rg: String,
        name: String,
    },
    FlexVms {
        sub: String,
        rg: String,
        set_id: String,
        expand: bool,
    },
    VmList {
        sub: String,
        rg: Option<String>,
    },
    VmStatus {
        sub: String,
    },
    Nics {
        sub: String,
        rg: String,
    },
}

/// True for the key of a scale set read of step 1 (a GET or a list of sets).
fn is_set_read_key(key: &str) -> bool {
    key.starts_with("get ") || key.starts_with("sets ")
}

impl Op {
    /// True for a scale set read of step 1 (a GET or a list of sets).
    fn is_set_read(&self) -> bool {
        matches!(self, Op::SetGet { .. } | Op::SetList { .. })
    }

    /// Identity (lower-cased): equal keys are one read.
    fn key(&self) -> String {
        let k = match self {
            Op::SetGet { sub, rg, name } => format!("get {sub}/{rg}/{name}"),
            Op::SetList { sub, rg } => format!("sets {sub}/{}", rg.as_deref().unwrap_or("*")),
            Op::UniformNics { sub, rg, name } => format!("unics {sub}/{rg}/{name}"),
            Op::UniformViews { sub, rg, name } => format!("uviews {sub}/{rg}/{name}"),
            Op::FlexVms { set_id, expand, .. } => format!("fvms {set_id} {expand}"),
            Op::VmList { sub, rg } => format!("vms {sub}/{}", rg.as_deref().unwrap_or("*")),
            Op::VmStatus { sub } => format!("status {sub}"),
            Op::Nics { sub, rg } => format!("nics {sub}/{rg}"),
        };
        k.to_ascii_lowercase()
    }

    async fn run(&self, arm: &ArmClient, ids: &Ids) -> Result<Out, ArmError> {
        Ok(match self {
            Op::SetGet { sub, rg, name } => {
                Out::Set(Box::new(arm.get_scale_set(sub, rg, name).await?))
            }
            Op::SetList { sub, rg } => Out::Sets(
                arm.list(&ListRequest::scale_sets(sub, rg.as_deref())?)
                    .await?,
            ),
            Op::UniformNics { sub, rg, name } => Out::Nics(
                arm.list_map(&ListRequest::scale_set_nics(sub, rg, name)?, |n| {
                    Nic::from_model(n, ids)
                })
                .await?,
            ),
            Op::UniformViews { sub, rg, name } => {
                // A member without its view is left out here and judged with the set
                // (a member known from the NIC list without a view is a failed read).
                let req = ListRequest::scale_set_vms(sub, rg, name, true)?;
                let views = arm
                    .list_map(&req, |v: models::ScaleSetVmView| {
                        let id = ids.get(&v.id?);
                        let prov = v
                            .properties
                            .provisioning_state
                            .map(|p| Provisioning::parse(p.as_str()));
                        let iv = v.properties.instance_view.as_ref()?;
                        Some((id, view_of(iv, prov)))
                    })
                    .await?;
                Out::Views(views.into_iter().collect())
            }
            Op::FlexVms {
                sub,
                rg,
                set_id,
                expand,
            } => {
                let mut groups = Interner::new(ids);
                Out::Vms(
                    arm.list_map(
                        &ListRequest::vms(sub, Some(rg), Some(set_id), *expand)?,
                        |v| Vm::from_model(v, &mut groups, false),
                    )
                    .await?,
                )
            }
            Op::VmList { sub, rg } => {
                let mut groups = Interner::new(ids);
                Out::Vms(
                    arm.list_map(&ListRequest::vms(sub, rg.as_deref(), None, false)?, |v| {
                        Vm::listed(v, &mut groups, false)
                    })
                    .await?,
                )
            }
            Op::VmStatus { sub } => {
                let mut groups = Interner::new(ids);
                Out::Vms(
                    arm.list_map(&ListRequest::vm_statuses(sub)?, |v| {
                        Vm::listed(v, &mut groups, true).filter(|v| v.view.is_some())
                    })
                    .await?,
                )
            }
            Op::Nics { sub, rg } => Out::Nics(
                arm.list_map(&ListRequest::nics(sub, rg)?, |n| Nic::from_model(n, ids))
                    .await?,
            ),
        })
    }
}

type Results = HashMap<String, Result<Arc<Out>, DiscoveryError>>;

/// Runs every read not already in `done`, at most `concurrency` at a time.
async fn run_all(arm: &ArmClient, ids: &Ids, ops: Vec<Op>, concurrency: usize, done: &mut Results) {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut planned = HashSet::default();
    for op in ops {
        let key = op.key();
        if done.contains_key(&key) || !planned.insert(key.clone()) {
            continue;
        }
        let arm = arm.clone();
        let ids = ids.clone();
        let limit = Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let r = op
                .run(&arm, &ids)
                .await
                .map(Arc::new)
                .map_err(DiscoveryError::from);
            (key, r)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((key, r)) => {
                done.insert(key, r);
            }
            Err(e) => tracing::error!(error = %e, "A discovery read ended abnormally."),
        }
    }
}

fn get<'r>(done: &'r Results, op: &Op) -> Result<&'r Out, DiscoveryError> {
    match done.get(&op.key()) {
        Some(Ok(out)) => Ok(out),
        Some(Err(e)) => Err(e.clone()),
        None => Err(DiscoveryError::Partial(format!(
            "read {} was not made",
            op.key()
        ))),
    }
}

// ---------------------------------------------------------------------------
// Scale sets: which ones each selection names
// ---------------------------------------------------------------------------

/// A scale set some selection matched.
#[derive(Clone)]
struct Matched {
    key: ScaleSetKey,
    model: Arc<VirtualMachineScaleSet>,
}

fn mode_of(m: &VirtualMachineScaleSet, key: &ScaleSetKey) -> Result<Orchestration, DiscoveryError> {
    match m.orchestration_mode() {
        models::OrchestrationMode::Uniform => Ok(Orchestration::Uniform),
        models::OrchestrationMode::Flexible => Ok(Orchestration::Flexible),
        models::OrchestrationMode::Other(o) => {
            Err(DiscoveryError::UnknownMode(key.to_string(), o.clone()))
        }
    }
}

fn group_key(sub: &str, rg: &str) -> String {
    format!("{sub}/{rg}").to_ascii_lowercase()
}

/// Plans step 1.
fn plan_sets(state: &DiscoveryState, selections: &[&Selection]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut vm_ops = Vec::new();
    let mut listed: BTreeSet<String> = BTreeSet::new();
    // (sub, rg) → the names asked for there, lower-cased → as configured.
    let mut named: BTreeMap<String, (String, String, BTreeMap<String, String>)> = BTreeMap::new();
    for sel in selections {
        let sub = &sel.subscription;
        if sel.is_exact() {
            if let Groups::Named(g) = &sel.groups {
                let rg = &g[0];
                let e = named
                    .entry(group_key(sub, rg))
                    .or_insert_with(|| (sub.clone(), rg.clone(), BTreeMap::new()));
                for name in &sel.sets {
                    e.2.entry(name.to_ascii_lowercase())
                        .or_insert_with(|| name.clone());
                }
            }
        } else {
            match &sel.groups {
                Groups::All => {
                    listed.insert(format!("{sub}/*").to_ascii_lowercase());
                    ops.push(Op::SetList {
                        sub: sub.clone(),
                        rg: None,
                    });
                }
                Groups::Named(g) => {
                    for rg in g {
                        listed.insert(group_key(sub, rg));
                        ops.push(Op::SetList {
                            sub: sub.clone(),
                            rg: Some(rg.clone()),
                        });
                    }
                }
            }
        }
        if sel.includes_vms() {
            match &sel.groups {
                Groups::All => vm_ops.push(Op::VmList {
                    sub: sub.clone(),
                    rg: None,
                }),
                Groups::Named(g) => vm_ops.extend(g.iter().map(|rg| Op::VmList {
                    sub: sub.clone(),
                    rg: Some(rg.clone()),
                })),
            }
        }
    }
    let refused = state.refused().clone();
    for (gk, (sub, rg, names)) in named {
        if listed.contains(&gk) {
            continue;
        }
        if names.len() >= 2 && !refused.contains(&gk) {
            ops.push(Op::SetList { sub, rg: Some(rg) });
        } else {
            ops.extend(names.into_values().map(|name| Op::SetGet {
                sub: sub.clone(),
                rg: rg.clone(),
                name,
            }));
        }
    }
    ops.extend(vm_ops);
    ops
}

/// Named sets whose resource-group list was refused (403): remembered, and read one by
/// one instead (a role assigned on the scale sets themselves cannot list the group).
fn fallback_gets(state: &DiscoveryState, selections: &[&Selection], done: &Results) -> Vec<Op> {
    let mut out = Vec::new();
    for sel in selections.iter().filter(|s| s.is_exact()) {
        let Groups::Named(g) = &sel.groups else {
            continue;
        };
        let list = Op::SetList {
            sub: sel.subscription.clone(),
            rg: Some(g[0].clone()),
        };
        let refused = matches!(
            done.get(&list.key()),
            Some(Err(DiscoveryError::Arm(e))) if e.status() == Some(403)
        );
        if refused {
            state.refused().insert(group_key(&sel.subscription, &g[0]));
            out.extend(sel.sets.iter().map(|name| Op::SetGet {
                sub: sel.subscription.clone(),
                rg: g[0].clone(),
                name: name.clone(),
            }));
        }
    }
    out
}

/// The scale sets a selection names, from the step-1 reads.
fn sets_of(sel: &Selection, done: &Results) -> Result<Vec<Matched>, DiscoveryError> {
    let sub = &sel.subscription;
    let mut out = Vec::new();
    let mut push = |m: &VirtualMachineScaleSet, rg: &str| -> Result<(), DiscoveryError> {
        let name = m.name.clone().unwrap_or_default();
        let rg =
            m.id.as_deref()
                .and_then(models::resource_group_of)
                .unwrap_or(rg)
                .to_string();
        let key = ScaleSetKey::new(sub, &rg, &name);
        mode_of(m, &key)?;
        out.push(Matched {
            key,
            model: Arc::new(m.clone()),
        });
        Ok(())
    };
    if sel.is_exact() {
        let Groups::Named(g) = &sel.groups else {
            return Ok(out);
        };
        let rg = &g[0];
        let list = Op::SetList {
            sub: sub.clone(),
            rg: Some(rg.clone()),
        };
        for name in &sel.sets {
            match done.get(&list.key()) {
                Some(Ok(out_list)) if matches!(**out_list, Out::Sets(_)) => {
                    let Out::Sets(sets) = &**out_list else {
                        continue;
                    };
                    let m = sets
                        .iter()
                        .find(|s| {
                            s.name
                                .as_deref()
                                .is_some_and(|n| n.eq_ignore_ascii_case(name))
                        })
                        .ok_or_else(|| DiscoveryError::NotFound {
                            resource_group: rg.clone(),
                            name: name.clone(),
                        })?;
                    push(m, rg)?;
                }
                listed => {
                    let op = Op::SetGet {
                        sub: sub.clone(),
                        rg: rg.clone(),
                        name: name.clone(),
                    };
                    // A group list that failed, and was not replaced by GETs (only a
                    // refusal is), carries the cause to every set it was to name.
                    if let (Some(Err(e)), None) = (listed, done.get(&op.key())) {
                        return Err(e.clone());
                    }
                    if let Out::Set(m) = get(done, &op)? {
                        push(m, rg)?;
                    }
                }
            }
        }
        return Ok(out);
    }
    let lists: Vec<(Op, String)> = match &sel.groups {
        Groups::All => vec![(
            Op::SetList {
                sub: sub.clone(),
                rg: None,
            },
            String::new(),
        )],
        Groups::Named(g) => g
            .iter()
            .map(|rg| {
                (
                    Op::SetList {
                        sub: sub.clone(),
                        rg: Some(rg.clone()),
                    },
                    rg.clone(),
                )
            })
            .collect(),
    };
    for (op, rg) in lists {
        if let Out::Sets(sets) = get(done, &op)? {
            for m in sets {
                let name = m.name.as_deref().unwrap_or_default();
                let set_rg =
                    m.id.as_deref()
                        .and_then(models::resource_group_of)
                        .unwrap_or(&rg);
                if !name.is_empty() && sel.selects_set(set_rg, name, &m.tags) {
                    push(m, set_rg)?;
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// The cycle
// ---------------------------------------------------------------------------

/// Per matched set: what to read about its members.
struct SetPlan {
    matched: Matched,
    mode: Orchestration,
    views: bool,
}

impl SetPlan {
    fn sub(&self) -> &str {
        &self.matched.key.subscription
    }
    fn rg(&self) -> &str {
        &self.matched.key.resource_group
    }
    fn name(&self) -> &str {
        &self.matched.key.name
    }
    fn id(&self) -> String {
        self.matched.model.id.clone().unwrap_or_else(|| {
            format!(
                "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
                self.sub(),
                self.rg(),
                self.name()
            )
        })
    }
    fn cache_key(&self) -> String {
        format!("set {}", self.id().to_ascii_lowercase())
    }
    /// The step 1 reads that may name this set: its GET, its group's list and its
    /// subscription's list.
    fn set_ops(&self) -> [Op; 3] {
        [
            Op::SetGet {
                sub: self.sub().to_string(),
                rg: self.rg().to_string(),
                name: self.name().to_string(),
            },
            Op::SetList {
                sub: self.sub().to_string(),
                rg: Some(self.rg().to_string()),
            },
            Op::SetList {
                sub: self.sub().to_string(),
                rg: None,
            },
        ]
    }
    /// The keys of [`SetPlan::set_ops`].
    fn set_reads(&self) -> Vec<String> {
        self.set_ops().iter().map(Op::key).collect()
    }
    fn nics(&self) -> Op {
        Op::UniformNics {
            sub: self.sub().to_string(),
            rg: self.rg().to_string(),
            name: self.name().to_string(),
        }
    }
    fn uviews(&self) -> Op {
        Op::UniformViews {
            sub: self.sub().to_string(),
            rg: self.rg().to_string(),
            name: self.name().to_string(),
        }
    }
    fn flex(&self, expand: bool) -> Op {
        Op::FlexVms {
            sub: self.sub().to_string(),
            rg: self.rg().to_string(),
            set_id: self.id(),
            expand,
        }
    }
}

fn status_key(sub: &str) -> String {
    format!("vms {sub}").to_ascii_lowercase()
}

/// Checks every selection's scale sets exist and are supported (startup): step 1 only.
/// Returns, per selection, the names of the sets it matched.
pub async fn check(
    arm: &ArmClient,
    state: &DiscoveryState,
    selections: &[Selection],
    opts: &Options,
) -> BTreeMap<Selection, Result<Vec<String>, DiscoveryError>> {
    let sels: Vec<&Selection> = selections.iter().collect();
    let mut done = Results::default();
    let ops = plan_sets(state, &sels);
    run_all(arm, &state.ids, ops, opts.concurrency, &mut done).await;
    let fb = fallback_gets(state, &sels, &done);
    run_all(arm, &state.ids, fb, opts.concurrency, &mut done).await;
    state.prime(Instant::now(), &done);
    sels.iter()
        .map(|s| {
            let r = sets_of(s, &done).map(|m| m.iter().map(|m| m.key.to_string()).collect());
            ((*s).clone(), r)
        })
        .collect()
}

/// One cycle of discovery for every selection.
pub async fn discover(
    arm: &ArmClient,
    state: &DiscoveryState,
    selections: &[Selection],
    opts: &Options,
) -> Discovered {
    let now = Instant::now();
    // The ids of VMs gone since the last cycle (held by nothing but the shared copies).
    state.ids.prune();
    let mut seen = BTreeSet::new();
    let sels: Vec<&Selection> = selections.iter().filter(|s| seen.insert(*s)).collect();
    let mut done = Results::default();

    // Step 1: scale sets and standalone VM lists (those the startup check just read are
    // not read again).
    let mut primed = state.take_primed(now);
    let ops = plan_sets(state, &sels);
    reuse(&mut primed, &ops, &mut done);
    // With events, scale set reads of earlier cycles may stand for this one's.
    let mut reused = match opts.sets_watched_since {
        Some(since) => state.reuse_sets(&ops, since, now, opts.max_reuse_age, &mut done),
        None => BTreeSet::new(),
    };
    let not_read_now: HashSet<String> = done.keys().cloned().collect();
    run_all(arm, &state.ids, ops, opts.concurrency, &mut done).await;
    let fb = fallback_gets(state, &sels, &done);
    reuse(&mut primed, &fb, &mut done);
    if let Some(since) = opts.sets_watched_since {
        reused.extend(state.reuse_sets(&fb, since, now, opts.max_reuse_age, &mut done));
    }
    let not_read_now: HashSet<String> = not_read_now
        .into_iter()
        .chain(reused.iter().cloned())
        .collect();
    run_all(arm, &state.ids, fb, opts.concurrency, &mut done).await;
    state.keep_set_reads(&done, &not_read_now, now);

    let mut matched: BTreeMap<Selection, Result<Vec<Matched>, DiscoveryError>> = BTreeMap::new();
    let mut plans: BTreeMap<String, SetPlan> = BTreeMap::new();
    for sel in &sels {
        let r = sets_of(sel, &done);
        if let Ok(sets) = &r {
            for m in sets {
                let key = m.key.to_string().to_ascii_lowercase();
                let Ok(mode) = mode_of(&m.model, &m.key) else {
                    continue;
                };
                let p = plans.entry(key).or_insert_with(|| SetPlan {
                    matched: m.clone(),
                    mode,
                    views: false,
                });
                p.views |= sel.views;
            }
        }
        matched.insert((*sel).clone(), r);
    }
    let pressure = |sub: &str| arm.throttle().under_pressure(sub);
    let interval = opts.health_interval;

    // Step 2: members.
    let mut ops = Vec::new();
    let mut views_read: HashSet<String> = HashSet::default();
    for p in plans.values() {
        let due = p.views && state.due(&p.cache_key(), now, interval, pressure(p.sub()));
        if due {
            views_read.insert(p.cache_key());
        }
        match p.mode {
            Orchestration::Uniform => {
                // With views due and a recent NIC list, the views tell whether the
                // members changed; the NIC list is read (step 3) only if they did.
                if !(due && state.nic_list_fresh(&p.cache_key(), now, opts.max_reuse_age)) {
                    ops.push(p.nics());
                }
                if due {
                    ops.push(p.uviews());
                }
            }
            Orchestration::Flexible => {
                ops.push(p.flex(due));
                ops.push(Op::Nics {
                    sub: p.sub().to_string(),
                    rg: p.rg().to_string(),
                });
            }
        }
    }
    let mut status_subs: BTreeSet<String> = BTreeSet::new();
    for sel in sels.iter().filter(|s| s.includes_vms()) {
        let sets = matched
            .get(*sel)
            .and_then(|r| r.as_ref().ok())
            .map(|m| set_ids(m))
            .unwrap_or_default();
        let mut alone = false;
        for op in vm_lists(sel) {
            if let Ok(Out::Vms(vms)) = get(&done, &op) {
                for vm in vms.iter().filter(|v| v.taken_alone(sel, &sets)) {
                    alone = true;
                    ops.push(Op::Nics {
                        sub: sel.subscription.clone(),
                        rg: vm.nic_group().to_string(),
                    });
                }
            }
        }
        // The subscription's status list only when the selection takes some VM alone:
        // members' views come with their set's reads.
        if sel.views && alone {
            let sub = sel.subscription.clone();
            if state.due(&status_key(&sub), now, interval, pressure(&sub)) {
                views_read.insert(status_key(&sub));
                ops.push(Op::VmStatus { sub: sub.clone() });
            }
            status_subs.insert(sub);
        }
    }
    run_all(arm, &state.ids, ops, opts.concurrency, &mut done).await;

    // Step 3: NIC lists named only by NIC ids, Uniform NIC lists whose members changed,
    // and early views for new members.
    let mut ops = Vec::new();
    let mut nics_kept: HashSet<String> = HashSet::default();
    for p in plans.values() {
        if p.mode == Orchestration::Uniform && !done.contains_key(&p.nics().key()) {
            let kept = match get(&done, &p.uviews()) {
                Ok(Out::Views(v)) => state.same_members(&p.cache_key(), v),
                _ => None,
            };
            match kept {
                Some(nics) => {
                    nics_kept.insert(p.nics().key());
                    done.insert(p.nics().key(), Ok(nics));
                }
                None => ops.push(p.nics()),
            }
        }
    }
    for p in plans.values() {
        match p.mode {
            Orchestration::Uniform => {
                if p.views && !views_read.contains(&p.cache_key()) {
                    if let Ok(Out::Nics(nics)) = get(&done, &p.nics()) {
                        if !state.knows_all(&p.cache_key(), nics.iter().map(|n| &n.vm)) {
                            views_read.insert(p.cache_key());
                            ops.push(p.uviews());
                        }
                    }
                }
            }
            Orchestration::Flexible => {
                let expanded = views_read.contains(&p.cache_key());
                if let Ok(Out::Vms(vms)) = get(&done, &p.flex(expanded)) {
                    for vm in vms {
                        if let Some(rg) = vm.nic_rg() {
                            if !rg.eq_ignore_ascii_case(p.rg()) {
                                ops.push(Op::Nics {
                                    sub: p.sub().to_string(),
                                    rg: rg.to_string(),
                                });
                            }
                        }
                    }
                    if p.views
                        && !expanded
                        && !state.knows_all(&p.cache_key(), vms.iter().map(|v| &v.id))
                    {
                        views_read.insert(p.cache_key());
                        ops.push(p.flex(true));
                    }
                }
            }
        }
    }
    for sub in &status_subs {
        if views_read.contains(&status_key(sub)) {
            continue;
        }
        let known = sels
            .iter()
            .filter(|s| s.includes_vms() && &s.subscription == sub)
            .flat_map(|s| vm_lists(s))
            .filter_map(|op| match get(&done, &op) {
                Ok(Out::Vms(v)) => Some(v.iter().map(|v| v.id.clone()).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect::<Vec<_>>();
        if !state.knows_all(&status_key(sub), known.iter()) {
            views_read.insert(status_key(sub));
            ops.push(Op::VmStatus { sub: sub.clone() });
        }
    }
    run_all(arm, &state.ids, ops, opts.concurrency, &mut done).await;
    for p in plans.values().filter(|p| p.mode == Orchestration::Uniform) {
        let key = p.nics().key();
        if nics_kept.contains(&key) {
            continue;
        }
        if let Some(Ok(nics)) = done.get(&key) {
            state.keep_nic_list(&p.cache_key(), now, Arc::clone(nics));
        }
    }

    // A reused scale set read stands only for a set whose members and views are as
    // before: the others' are read again now, before their reads are judged.
    if !reused.is_empty() {
        let stale = changed_sets(&plans, &reused, &views_read, &done, state);
        if !stale.is_empty() {
            let ops: Vec<Op> = stale
                .iter()
                .filter_map(|k| {
                    done.remove(k);
                    plans_op(k, &plans)
                })
                .collect();
            let before: HashSet<String> = done.keys().cloned().collect();
            run_all(arm, &state.ids, ops, opts.concurrency, &mut done).await;
            state.keep_set_reads(&done, &before, now);
            for sel in &sels {
                let r = sets_of(sel, &done);
                if let Ok(sets) = &r {
                    for m in sets {
                        if let Some(p) = plans.get_mut(&m.key.to_string().to_ascii_lowercase()) {
                            p.matched = m.clone();
                        }
                    }
                }
                // A set that only the new read names was not read: that selection
                // fails this cycle (nothing changes) and reads it next cycle.
                matched.insert((*sel).clone(), r);
            }
        }
    }

    // Assemble.
    let nics = NicIndex::new(&done);
    let mut snapshots: HashMap<String, Result<Arc<ScaleSetSnapshot>, DiscoveryError>> =
        HashMap::default();
    for (key, p) in &plans {
        let expanded = views_read.contains(&p.cache_key());
        snapshots.insert(key.clone(), snapshot(p, expanded, &done, &nics, state, now));
    }
    for sub in &status_subs {
        if views_read.contains(&status_key(sub)) {
            if let Ok(Out::Vms(vms)) = get(&done, &Op::VmStatus { sub: sub.clone() }) {
                let views = vms
                    .iter()
                    .filter_map(|v| Some((v.id.clone(), v.view?)))
                    .collect();
                state.store(&status_key(sub), now, views);
            }
        }
    }
    let mut results = BTreeMap::new();
    for (sel, sets) in matched {
        let r = sets.and_then(|sets| {
            let mut found = Found {
                exact: sel.is_exact(),
                ..Found::default()
            };
            let ids = if sel.includes_vms() {
                set_ids(&sets)
            } else {
                HashSet::default()
            };
            for m in sets {
                match snapshots.get(&m.key.to_string().to_ascii_lowercase()) {
                    Some(Ok(s)) => found.sets.push(Arc::clone(s)),
                    Some(Err(e)) => return Err(e.clone()),
                    None => {
                        return Err(DiscoveryError::Partial(format!(
                            "scale set {} was not read",
                            m.key
                        )))
                    }
                }
            }
            if sel.includes_vms() {
                found.vms = standalone(&sel, &ids, &done, &nics, state)?;
            }
            Ok(found)
        });
        results.insert(sel, r);
    }
    Discovered {
        results,
        operations: done.len(),
    }
}

/// The reused scale set reads (of `reused`) that may name a set whose read this cycle is
/// empty, has other members than its last read used, or shows a changed instance view.
fn changed_sets(
    plans: &BTreeMap<String, SetPlan>,
    reused: &BTreeSet<String>,
    views_read: &HashSet<String>,
    done: &Results,
    state: &DiscoveryState,
) -> BTreeSet<String> {
    let flexible = plans.values().any(|p| p.mode == Orchestration::Flexible);
    let index = flexible.then(|| NicIndex::new(done));
    let mut stale = BTreeSet::new();
    for p in plans.values() {
        let reads = p.set_reads();
        if !reads.iter().any(|k| reused.contains(k)) {
            continue;
        }
        if !unchanged(p, views_read, done, index.as_ref(), state) {
            stale.extend(reads.into_iter().filter(|k| reused.contains(k)));
        }
    }
    stale
}

/// True when the set's read this cycle found members (VM ids with an address), exactly
/// those of its last read used, each with the instance view read before (when views
/// were read this cycle).
fn unchanged(
    p: &SetPlan,
    views_read: &HashSet<String>,
    done: &Results,
    nics: Option<&NicIndex<'_>>,
    state: &DiscoveryState,
) -> bool {
    let ck = p.cache_key();
    let Some(used) = state.used(&ck) else {
        return false;
    };
    let expanded = views_read.contains(&ck);
    // (id, view read this cycle) of each member with an address, sorted by id.
    let mut members: Vec<(&VmId, Option<InstanceView>)> = Vec::new();
    match p.mode {
        Orchestration::Uniform => {
            let Ok(Out::Nics(list)) = get(done, &p.nics()) else {
                return false;
            };
            let views = match (expanded, get(done, &p.uviews())) {
                (true, Ok(Out::Views(v))) => Some(v),
                (true, _) => return false,
                (false, _) => None,
            };
            for n in list.iter().filter(|n| n.ip.is_some()) {
                members.push((&n.vm, views.and_then(|v| v.get(&n.vm).copied())));
            }
        }
        Orchestration::Flexible => {
            let (Ok(Out::Vms(vms)), Some(nics)) = (get(done, &p.flex(expanded)), nics) else {
                return false;
            };
            for vm in vms {
                if let Ok(Some(_)) = nics.address(p.sub(), vm.nic_group(), &vm.id) {
                    members.push((&vm.id, vm.view));
                }
            }
        }
    }
    members.sort_by(|a, b| a.0.cmp(b.0));
    members.dedup_by(|a, b| a.0 == b.0);
    if members.is_empty() || members.len() != used.instances.len() {
        return false;
    }
    let same_ids = members
        .iter()
        .zip(&used.instances)
        .all(|(m, i)| *m.0 == i.vm_id);
    let same_views = !expanded
        || !p.views
        || members
            .iter()
            .all(|(id, v)| v.is_some() && *v == state.cached(&ck, id));
    same_ids && same_views
}

/// The step 1 read named `key` among the reads that may name the planned sets.
fn plans_op(key: &str, plans: &BTreeMap<String, SetPlan>) -> Option<Op> {
    plans
        .values()
        .flat_map(SetPlan::set_ops)
        .find(|op| op.key() == key)
}

/// Lower-cased ids of the scale sets a selection matched.
fn set_ids(sets: &[Matched]) -> HashSet<String> {
    sets.iter()
        .map(|m| {
            m.model.id.clone().map_or_else(
                || {
                    format!(
                        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
                        m.key.subscription, m.key.resource_group, m.key.name
                    )
                },
                |id| id.trim().to_string(),
            )
            .to_ascii_lowercase()
        })
        .collect()
}

fn vm_lists(sel: &Selection) -> Vec<Op> {
    match &sel.groups {
        Groups::All => vec![Op::VmList {
            sub: sel.subscription.clone(),
            rg: None,
        }],
        Groups::Named(g) => g
            .iter()
            .map(|rg| Op::VmList {
                sub: sel.subscription.clone(),
                rg: Some(rg.clone()),
            })
            .collect(),
    }
}

/// Every NIC read from resource-group NIC lists, sorted by the VM it is attached to, and
/// which resource groups were read (or failed).
struct NicIndex<'a> {
    by_vm: Vec<&'a Nic>,
    groups: HashMap<String, Result<(), DiscoveryError>>,
}

impl<'a> NicIndex<'a> {
    fn new(done: &'a Results) -> Self {
        let mut by_vm: Vec<&Nic> = Vec::new();
        let mut groups = HashMap::default();
        for (key, r) in done {
            let Some(group) = key.strip_prefix("nics ") else {
                continue;
            };
            match r {
                Ok(out) => {
                    if let Out::Nics(nics) = &**out {
                        by_vm.extend(nics.iter());
                    }
                    groups.insert(group.to_string(), Ok(()));
                }
                Err(e) => {
                    groups.insert(group.to_string(), Err(e.clone()));
                }
            }
        }
        by_vm.sort_by(|a, b| a.vm.cmp(&b.vm));
        NicIndex { by_vm, groups }
    }

    /// The address of a VM whose NICs are in resource group `rg`: an error when that
    /// group's list failed (or was not made), None when the VM has no NIC with an address.
    fn address(&self, sub: &str, rg: &str, vm: &VmId) -> Result<Option<Ipv4Addr>, DiscoveryError> {
        match self.groups.get(&group_key(sub, rg)) {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(DiscoveryError::Partial(format!(
                    "the NICs of resource group {rg} were not read"
                )))
            }
        }
        let start = self.by_vm.partition_point(|n| n.vm < *vm);
        let end = start + self.by_vm[start..].partition_point(|n| n.vm == *vm);
        Ok(pick_address(&self.by_vm[start..end]))
    }
}

/// One address per VM: the primary NIC's primary IPv4 configuration; when no NIC is
/// marked primary, the first (in a stable order) that has an address.
fn pick_address(nics: &[&Nic]) -> Option<Ipv4Addr> {
    if let [only] = nics {
        return only.ip;
    }
    let mut sorted: Vec<&&Nic> = nics.iter().collect();
    sorted.sort_by_key(|n| (!n.primary, n.order));
    sorted.iter().find_map(|n| n.ip)
}

fn snapshot(
    p: &SetPlan,
    expanded: bool,
    done: &Results,
    nics: &NicIndex<'_>,
    state: &DiscoveryState,
    now: Instant,
) -> Result<Arc<ScaleSetSnapshot>, DiscoveryError> {
    let model = &p.matched.model;
    let ck = p.cache_key();
    let mut instances = Vec::new();
    // Views read this cycle, stored only when every member has one.
    let mut fresh_views: Option<HashMap<VmId, InstanceView>> = None;
    match p.mode {
        Orchestration::Uniform => {
            let Out::Nics(list) = get(done, &p.nics())? else {
                return Err(DiscoveryError::Partial("unexpected answer".into()));
            };
            if expanded {
                if let Out::Views(v) = get(done, &p.uviews())? {
                    fresh_views = Some(v.clone());
                }
            }
            // One shared copy per VM id ([`Ids`]): equal ids are the same pointer.
            let mut sorted: Vec<&Nic> = list.iter().collect();
            sorted.sort_by(|a, b| a.vm.cmp(&b.vm));
            instances.reserve_exact(sorted.len());
            for vm_nics in sorted.chunk_by(|a, b| a.vm == b.vm) {
                let vm = &vm_nics[0].vm;
                if let Some(ip) = pick_address(vm_nics) {
                    let view = match (&fresh_views, p.views) {
                        (_, false) => None,
                        (Some(v), true) => v.get(vm).copied(),
                        (None, true) => state.cached(&ck, vm),
                    };
                    instances.push(Instance {
                        vm_id: vm.clone(),
                        ip,
                        view,
                        tags: BTreeMap::new(),
                        location: None,
                    });
                }
            }
        }
        Orchestration::Flexible => {
            let Out::Vms(vms) = get(done, &p.flex(expanded))? else {
                return Err(DiscoveryError::Partial("unexpected answer".into()));
            };
            if expanded {
                fresh_views = Some(
                    vms.iter()
                        .filter_map(|v| Some((v.id.clone(), v.view?)))
                        .collect(),
                );
            }
            instances.reserve_exact(vms.len());
            for vm in vms {
                let rg = vm.nic_group();
                let Some(ip) = nics.address(p.sub(), rg, &vm.id)? else {
                    continue;
                };
                let view = if !p.views {
                    None
                } else if expanded {
                    vm.view
                } else {
                    state.cached(&ck, &vm.id).map(|mut v| {
                        v.provisioning = vm.provisioning.or(v.provisioning);
                        v
                    })
                };
                instances.push(Instance {
                    vm_id: vm.id.clone(),
                    ip,
                    view,
                    tags: vm.tags().clone(),
                    location: None,
                });
            }
        }
    }
    instances.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    instances.dedup_by(|a, b| a.vm_id == b.vm_id);
    // Kept until the set's next read is used: without the room left by growing.
    instances.shrink_to_fit();
    // The read is judged on its own: against the set's capacity and its members at the
    // last read used, and every member must have a view when views are needed.
    let without_view = if p.views {
        instances.iter().filter(|i| i.view.is_none()).count()
    } else {
        0
    };
    if let (Some(views), 0) = (fresh_views, without_view) {
        state.store(&ck, now, views);
    }
    let key = &p.matched.key;
    let verdict = crate::plan::judge_read(&crate::plan::SetRead {
        capacity: model.sku.capacity,
        found: instances.len(),
        previous: state.used_count(&ck),
        seen: state.unused_count(&ck),
        without_view,
    });
    let (fault, add_only) = match verdict {
        crate::plan::Judgement::Use => (None, false),
        crate::plan::Judgement::AddOnly(f) => (Some(f), true),
        crate::plan::Judgement::Hold(f) => (Some(f), false),
    };
    // Kept for the snapshot of a held set, and for the add-only one (reads not used).
    let mut held = None;
    if let Some(fault) = fault {
        let previous = state.used(&ck);
        let mut earlier: Vec<Instance> = previous
            .as_ref()
            .map(|s| s.instances.clone())
            .unwrap_or_default();
        // Every member found since the last read used, this read's included: none of
        // their servers may leave while the reads are not used.
        let unused = state.not_used(&ck, &instances);
        earlier.extend(unused);
        earlier.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        earlier.dedup_by(|a, b| a.vm_id == b.vm_id);
        if add_only {
            tracing::warn!(
                subscription = %key.subscription,
                resource_group = %key.resource_group,
                scale_set = %key.name,
                "Using this read of scale set {} (subscription {}) only to add: {fault}; none \
                 of its servers leaves until a read is plausible.",
                key,
                key.subscription,
            );
        } else {
            tracing::warn!(
                subscription = %key.subscription,
                resource_group = %key.resource_group,
                scale_set = %key.name,
                "Not using this read of scale set {} (subscription {}): {fault}; its servers are \
                 kept as they are until a read is plausible.",
                key,
                key.subscription,
            );
        }
        held = Some(crate::model::HeldRead {
            fault,
            members_known: previous.is_some(),
            add_only,
            earlier: if add_only {
                earlier.clone()
            } else {
                Vec::new()
            },
        });
        if !add_only {
            let snap = ScaleSetSnapshot {
                key: key.clone(),
                capacity: model.sku.capacity,
                orchestration: p.mode,
                reports_health: previous.as_ref().is_some_and(|s| s.reports_health),
                tags: model.tags.clone(),
                location: model
                    .location
                    .as_deref()
                    .map(location_name)
                    .unwrap_or_default(),
                terminate_delay: model.terminate_delay(),
                instances: earlier,
                held,
            };
            return Ok(Arc::new(snap));
        }
    }
    // A set reports health when its instances do (`vmHealth` in their views). A model
    // that names a health source whose instances report none (the extension not rolled
    // out yet, or an api-version without `vmHealth` on plain VMs) falls back to
    // `running`: gating on a health nobody reports would take every instance out.
    let reports_health = instances
        .iter()
        .any(|i| i.view.is_some_and(|v| v.health.is_some()));
    if p.views && !reports_health && model.reports_health() && !instances.is_empty() {
        tracing::debug!(
            scale_set = %p.matched.key,
            "The scale set's model has a health source but no instance reports vmHealth; \
             registering running instances."
        );
    }
    let snap = Arc::new(ScaleSetSnapshot {
        key: p.matched.key.clone(),
        capacity: model.sku.capacity,
        orchestration: p.mode,
        reports_health,
        tags: model.tags.clone(),
        location: model
            .location
            .as_deref()
            .map(location_name)
            .unwrap_or_default(),
        terminate_delay: model.terminate_delay(),
        instances,
        held,
    });
    if snap.held.is_none() {
        state.use_read(&ck, Arc::clone(&snap));
    }
    Ok(snap)
}

/// The VMs a selection takes alone: standalone VMs, and members of Flexible sets it does
/// not take (`sets`) whose own tags match.
fn standalone(
    sel: &Selection,
    sets: &HashSet<String>,
    done: &Results,
    nics: &NicIndex<'_>,
    state: &DiscoveryState,
) -> Result<Vec<Arc<Instance>>, DiscoveryError> {
    let status = Op::VmStatus {
        sub: sel.subscription.clone(),
    };
    if let (true, Some(Err(e))) = (sel.views, done.get(&status.key())) {
        return Err(e.clone());
    }
    let mut out = Vec::new();
    for op in vm_lists(sel) {
        let Out::Vms(vms) = get(done, &op)? else {
            continue;
        };
        if sel.views {
            get(
                done,
                &Op::VmStatus {
                    sub: sel.subscription.clone(),
                },
            )
            .map(|_| ())
            .or_else(|e| {
                // Not read this cycle (cached) is fine; a failed read is not.
                match done.get(
                    &Op::VmStatus {
                        sub: sel.subscription.clone(),
                    }
                    .key(),
                ) {
                    Some(Err(_)) => Err(e),
                    _ => Ok(()),
                }
            })?;
        }
        for vm in vms.iter().filter(|v| v.taken_alone(sel, sets)) {
            let rg = vm.nic_group();
            let Some(ip) = nics.address(&sel.subscription, rg, &vm.id)? else {
                continue;
            };
            let view = if sel.views {
                state
                    .cached(&status_key(&sel.subscription), &vm.id)
                    .map(|mut v| {
                        v.provisioning = vm.provisioning.or(v.provisioning);
                        v
                    })
            } else {
                None
            };
            out.push(Arc::new(Instance {
                vm_id: vm.id.clone(),
                ip,
                view,
                tags: vm.tags().clone(),
                location: vm.location().cloned(),
            }));
        }
    }
    out.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    out.dedup_by(|a, b| a.vm_id == b.vm_id);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = "/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachinescalesets/web/virtualmachines/";

    #[test]
    fn ids_give_one_shared_vm_id_per_id_and_one_parent_per_path() {
        let ids = Ids::default();
        let a = ids.get(&format!("{SET}1"));
        let again = ids.get(&format!("{SET}1"));
        let b = ids.get(&format!("{SET}2"));
        assert!(VmId::ptr_eq(&a, &again));
        assert!(!VmId::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(a.parent(), b.parent()));
        assert_eq!(a.to_string(), format!("{SET}1"));
        assert!(b.is(&format!("{SET}2")));
    }

    #[test]
    fn ids_prune_forgets_only_the_ids_nothing_else_holds() {
        let ids = Ids::default();
        let kept = ids.get(&format!("{SET}1"));
        let gone = ids.get(&format!("{SET}2"));
        drop(gone);
        let other = ids.get("/subscriptions/s/resourcegroups/other/providers/microsoft.compute/virtualmachines/vm_1");
        drop(other);
        ids.prune();
        let table = ids.lock();
        assert_eq!(table.len(), 1, "the parent path nothing holds is forgotten");
        let known: Vec<String> = table
            .values()
            .flat_map(|s| s.iter().map(|v| v.0.to_string()))
            .collect();
        assert_eq!(known, vec![kept.to_string()]);
    }
}
