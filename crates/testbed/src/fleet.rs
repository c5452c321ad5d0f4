//! The simulated Azure fleet: subscriptions, resource groups, scale sets, instances, NICs,
//! standalone VMs, tags, health, and instances that change over time.
//!
//! Everything is indexed by lower-cased names (ARM matches paths case-insensitively) while
//! the canonical casing given by the test is kept for the ids the fake returns.
//!
//! Flexible members and standalone VMs are ordinary VMs with ordinary NICs, indexed per
//! resource group (`flex_vms`, `flex_nics`). A NIC may live in another resource group than
//! its VM ([`Fleet::move_nics`]). Standalone VMs are kept in a hidden per-group container
//! ([`STANDALONE_VMS`]) that is never listed as a scale set.
//!
//! Changes can be scheduled ([`Fleet::schedule`] and the lifecycle helpers
//! [`Fleet::boot_instance`], [`Fleet::delete_instance`], [`Fleet::evict_instance`],
//! [`Fleet::rolling_upgrade`]); they take effect when the fake ARM serves a request at or
//! after their time, as on Azure where state changes on its own.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{guid, lock, now_epoch};

/// The pseudo scale set name under which standalone VMs are addressed in the instance
/// methods (`set_power_state(sub, rg, STANDALONE_VMS, "vm-name", …)`).
pub const STANDALONE_VMS: &str = "(standalone)";
/// Index key of the hidden container of standalone VMs.
const STANDALONE_KEY: &str = "\u{1}standalone";

/// VM Scale Set orchestration mode (`properties.orchestrationMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Orchestration {
    /// Classic scale set: instances are `virtualMachineScaleSets/{set}/virtualMachines/{n}`,
    /// NICs live under the scale set (`microsoft.Compute/.../networkInterfaces`).
    Uniform,
    /// Flexible scale set: instances are ordinary `Microsoft.Compute/virtualMachines/{set}_{n}`
    /// with ordinary `Microsoft.Network/networkInterfaces/{set}_{n}-nic` NICs.
    Flexible,
}

impl Orchestration {
    pub fn as_str(self) -> &'static str {
        match self {
            Orchestration::Uniform => "Uniform",
            Orchestration::Flexible => "Flexible",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Instance {
    pub id: u64,
    /// Own name (standalone VMs); members are named after their set.
    pub name: Option<String>,
    pub vm_id: String,
    pub ip: Ipv4Addr,
    pub secondary: Vec<Ipv4Addr>,
    pub power_state: String,
    pub provisioning_state: String,
    /// `vmHealth` state ("healthy", "unhealthy", "unknown"); None: no health source.
    pub health: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// Resource group of the VM's NICs when not the VM's own (Flexible and standalone).
    pub nic_rg: Option<String>,
    /// The VM's own region when not its set's (standalone VMs: see [`Fleet::set_vm_location`]).
    pub location: Option<String>,
    pub created: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct ScaleSet {
    pub sub: String,
    pub rg: String,
    pub name: String,
    pub mode: Orchestration,
    pub location: String,
    pub capacity: u64,
    pub next_id: u64,
    pub unique_id: String,
    pub created: u64,
    pub tags: BTreeMap<String, String>,
    pub instances: BTreeMap<u64, Instance>,
    /// The model carries the Application Health extension (instances report `vmHealth`).
    pub health_extension: bool,
    /// The hidden container of a group's standalone VMs (never listed as a scale set).
    pub standalone: bool,
    /// The terminate notification (`scheduledEventsProfile.terminateNotificationProfile`):
    /// its delay when enabled. A scale-in then keeps leaving instances `Deleting` (still
    /// running) for the delay before they disappear.
    pub terminate_notification: Option<Duration>,
}

impl ScaleSet {
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            self.sub, self.rg, self.name
        )
    }

    /// Name of a Flexible member VM.
    pub fn flex_vm_name(&self, id: u64) -> String {
        format!("{}_{}", self.name, id)
    }

    /// Name of NIC number `idx` (0 = primary) of a Flexible member VM.
    pub fn flex_nic_name(&self, id: u64, idx: usize) -> String {
        if idx == 0 {
            format!("{}_{}-nic", self.name, id)
        } else {
            format!("{}_{}-nic{}", self.name, id, idx + 1)
        }
    }

    /// Name of an ordinary VM (Flexible member or standalone).
    pub fn vm_name(&self, inst: &Instance) -> String {
        inst.name
            .clone()
            .unwrap_or_else(|| self.flex_vm_name(inst.id))
    }

    /// Name of NIC `idx` of an ordinary VM.
    pub fn nic_name(&self, inst: &Instance, idx: usize) -> String {
        match &inst.name {
            Some(n) if idx == 0 => format!("{n}-nic"),
            Some(n) => format!("{n}-nic{}", idx + 1),
            None => self.flex_nic_name(inst.id, idx),
        }
    }

    /// Resource group of an ordinary VM's NICs.
    pub fn nic_rg<'a>(&'a self, inst: &'a Instance) -> &'a str {
        inst.nic_rg.as_deref().unwrap_or(&self.rg)
    }

    /// Name of NIC configuration number `idx` (0 = primary) of a Uniform set.
    pub fn uniform_nic_name(&self, idx: usize) -> String {
        if idx == 0 {
            format!("{}-nic", self.name)
        } else {
            format!("{}-nic{}", self.name, idx + 1)
        }
    }

    /// True for sets whose members are ordinary VMs (Flexible, and standalone VMs).
    pub fn ordinary_vms(&self) -> bool {
        self.standalone || self.mode == Orchestration::Flexible
    }

    fn find(&self, id: &str) -> Option<u64> {
        if let Ok(n) = id.parse::<u64>() {
            if self.instances.contains_key(&n) {
                return Some(n);
            }
        }
        self.instances
            .values()
            .find(|i| self.vm_name(i).eq_ignore_ascii_case(id))
            .map(|i| i.id)
    }
}

/// Where an ordinary VM or NIC lives, for the per-resource-group indexes.
#[derive(Debug, Clone)]
pub(crate) struct FlexRef {
    /// Lower-cased resource group of the set holding the VM.
    pub set_rg: String,
    pub set_key: String,
    pub id: u64,
    /// NIC index (0 = primary); unused for VMs.
    pub nic: usize,
}

#[derive(Debug, Default)]
pub(crate) struct ResourceGroup {
    pub name: String,
    pub sets: BTreeMap<String, ScaleSet>,
    /// Ordinary VMs (Flexible members and standalone VMs) in the group, by lower-cased name.
    pub flex_vms: BTreeMap<String, FlexRef>,
    /// NICs of ordinary VMs in the group (whatever group their VM is in), by lower-cased name.
    pub flex_nics: BTreeMap<String, FlexRef>,
}

#[derive(Debug, Default)]
pub(crate) struct Subscription {
    pub name: String,
    pub rgs: BTreeMap<String, ResourceGroup>,
}

impl Subscription {
    /// The set and instance an index entry points at.
    pub fn resolve(&self, r: &FlexRef) -> Option<(&ScaleSet, &Instance)> {
        let ss = self.rgs.get(&r.set_rg)?.sets.get(&r.set_key)?;
        Some((ss, ss.instances.get(&r.id)?))
    }
}

/// A scheduled change of one instance (fields left None are kept).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// New power state ("running", "stopped", "deallocated", …).
    pub power: Option<String>,
    /// New provisioning state ("Succeeded", "Updating", "Deleting", …).
    pub provisioning: Option<String>,
    /// New health: `Some(Some("healthy"))`, or `Some(None)` for no health source.
    pub health: Option<Option<String>>,
    /// Remove the instance (it is gone).
    pub remove: bool,
}

#[derive(Debug, Clone)]
struct Scheduled {
    at: Instant,
    sub: String,
    rg: String,
    set: String,
    id: u64,
    change: Change,
}

/// A resource event Event Grid would raise for a change of the fleet, at the moment it
/// would raise it: when the operation has succeeded (a scale-out once its instances
/// exist, a scale-in once its instances are gone, after the terminate window if any; a
/// start, stop or deallocate once the VM is in that state; a tag write at once), and a
/// Resource Health availability change (`AvailabilityStatusChanged`) when a VM becomes
/// available or unavailable (started, stopped, deallocated, evicted), which Resource
/// Health reports whoever caused it. An application health change (`vmHealth`) raises
/// nothing: Resource Health does not report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetEvent {
    /// `Microsoft.Resources.ResourceWriteSuccess`, `...ResourceDeleteSuccess`,
    /// `...ResourceActionSuccess` or
    /// `Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged`.
    pub event_type: &'static str,
    /// The resource id: the scale set, a Uniform instance
    /// (`.../virtualMachineScaleSets/SET/virtualMachines/ID`), an ordinary VM (a Flexible
    /// member or a standalone VM), or for a health event the VM's
    /// `.../providers/Microsoft.ResourceHealth/availabilityStatuses/current`.
    pub subject: String,
    /// The ARM operation (`data.operationName`), e.g.
    /// `Microsoft.Compute/virtualMachines/deallocate/action`; empty for a health event.
    pub operation: String,
    /// For a health event: `Available` or `Unavailable`.
    pub availability: Option<&'static str>,
    /// The subscription (the topic's).
    pub subscription: String,
    /// A unique id.
    pub id: String,
}

/// Event types the fleet raises.
pub const RESOURCE_WRITE: &str = "Microsoft.Resources.ResourceWriteSuccess";
pub const RESOURCE_DELETE: &str = "Microsoft.Resources.ResourceDeleteSuccess";
pub const RESOURCE_ACTION: &str = "Microsoft.Resources.ResourceActionSuccess";
pub const AVAILABILITY_CHANGED: &str =
    "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged";

impl FleetEvent {
    /// The event as Event Grid writes it into a queue message, before base64: the Event
    /// Grid schema, or CloudEvents 1.0 with `cloud`.
    pub fn json(&self, cloud: bool) -> serde_json::Value {
        let time = crate::util::rfc3339_now();
        let data = match self.availability {
            // Azure Resource Notifications: the health resource and its new state.
            Some(state) => serde_json::json!({
                "resourceInfo": {
                    "id": self.subject,
                    "name": "current",
                    "type": "Microsoft.ResourceHealth/availabilityStatuses",
                    "properties": {
                        "targetResourceId": self.subject
                            .split("/providers/Microsoft.ResourceHealth")
                            .next()
                            .unwrap_or_default(),
                        "targetResourceType": "Microsoft.Compute/virtualMachines",
                        "availabilityState": state,
                        "occurredTime": time,
                    },
                },
                "operationalInfo": {"resourceEventTime": time},
            }),
            None => serde_json::json!({
                "resourceUri": self.subject,
                "resourceProvider": "Microsoft.Compute",
                "operationName": self.operation,
                "status": "Succeeded",
                "subscriptionId": self.subscription,
            }),
        };
        if cloud {
            serde_json::json!({
                "source": format!("/subscriptions/{}", self.subscription),
                "subject": self.subject, "type": self.event_type, "time": time,
                "id": self.id, "data": data, "specversion": "1.0",
            })
        } else {
            serde_json::json!({
                "subject": self.subject, "eventType": self.event_type, "eventTime": time,
                "id": self.id, "data": data, "dataVersion": "2", "metadataVersion": "1",
                "topic": format!("/subscriptions/{}", self.subscription),
            })
        }
    }
}

/// Receives the fleet's events ([`Fleet::set_event_sink`]); called with the fleet locked,
/// so it must only hand the event on (a channel), never call the fleet.
pub type EventSink = Arc<dyn Fn(FleetEvent) + Send + Sync>;

struct Sink(Option<EventSink>);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Sink(set)"
        } else {
            "Sink(none)"
        })
    }
}

#[derive(Debug)]
pub(crate) struct FleetState {
    pub subs: HashMap<String, Subscription>,
    next_ip: u32,
    timeline: Vec<Scheduled>,
    sink: Sink,
    /// A thread applies due changes while a sink is set.
    ticking: bool,
}

impl Default for FleetState {
    fn default() -> Self {
        FleetState {
            subs: HashMap::new(),
            next_ip: u32::from(Ipv4Addr::new(10, 0, 0, 4)),
            timeline: Vec::new(),
            sink: Sink(None),
            ticking: false,
        }
    }
}

fn state_health(ss: &ScaleSet) -> Option<String> {
    ss.health_extension.then(|| "healthy".to_string())
}

impl FleetState {
    pub fn rg(&self, sub: &str, rg: &str) -> Option<&ResourceGroup> {
        self.subs
            .get(&sub.to_ascii_lowercase())?
            .rgs
            .get(&rg.to_ascii_lowercase())
    }

    pub fn set(&self, sub: &str, rg: &str, name: &str) -> Option<&ScaleSet> {
        self.rg(sub, rg)?.sets.get(&set_key(name))
    }

    fn rg_mut(&mut self, sub: &str, rg: &str) -> Option<&mut ResourceGroup> {
        self.subs
            .get_mut(&sub.to_ascii_lowercase())?
            .rgs
            .get_mut(&rg.to_ascii_lowercase())
    }

    fn set_mut(&mut self, sub: &str, rg: &str, name: &str) -> Option<&mut ScaleSet> {
        self.rg_mut(sub, rg)?.sets.get_mut(&set_key(name))
    }

    /// The group, created (with this casing) when missing.
    fn ensure_rg(&mut self, sub: &str, rg: &str) -> &mut ResourceGroup {
        let s = self
            .subs
            .entry(sub.to_ascii_lowercase())
            .or_insert_with(|| Subscription {
                name: sub.to_string(),
                rgs: BTreeMap::new(),
            });
        s.rgs
            .entry(rg.to_ascii_lowercase())
            .or_insert_with(|| ResourceGroup {
                name: rg.to_string(),
                ..ResourceGroup::default()
            })
    }

    fn alloc_ip(&mut self) -> Ipv4Addr {
        loop {
            let ip = Ipv4Addr::from(self.next_ip);
            self.next_ip = self.next_ip.wrapping_add(1);
            let last = ip.octets()[3];
            if last != 0 && last != 255 {
                return ip;
            }
        }
    }

    /// Adds the index entries of an ordinary VM and its NICs.
    fn index(&mut self, sub: &str, rg: &str, set: &str, id: u64) {
        let Some(ss) = self.set(sub, rg, set) else {
            return;
        };
        if !ss.ordinary_vms() {
            return;
        }
        let Some(inst) = ss.instances.get(&id) else {
            return;
        };
        let vm = ss.vm_name(inst).to_ascii_lowercase();
        let nic_rg = ss.nic_rg(inst).to_string();
        let nics: Vec<(String, usize)> = (0..=inst.secondary.len())
            .map(|i| (ss.nic_name(inst, i).to_ascii_lowercase(), i))
            .collect();
        let r = FlexRef {
            set_rg: rg.to_ascii_lowercase(),
            set_key: set_key(set),
            id,
            nic: 0,
        };
        self.ensure_rg(sub, rg).flex_vms.insert(vm, r.clone());
        let group = self.ensure_rg(sub, &nic_rg);
        for (name, i) in nics {
            group.flex_nics.insert(
                name,
                FlexRef {
                    nic: i,
                    ..r.clone()
                },
            );
        }
    }

    /// Removes the index entries of an ordinary VM and its NICs.
    fn unindex(&mut self, sub: &str, rg: &str, set: &str, id: u64) {
        let Some(ss) = self.set(sub, rg, set) else {
            return;
        };
        let Some(inst) = ss.instances.get(&id) else {
            return;
        };
        if !ss.ordinary_vms() {
            return;
        }
        let vm = ss.vm_name(inst).to_ascii_lowercase();
        let nic_rg = ss.nic_rg(inst).to_string();
        let nics: Vec<String> = (0..=inst.secondary.len())
            .map(|i| ss.nic_name(inst, i).to_ascii_lowercase())
            .collect();
        if let Some(g) = self.rg_mut(sub, rg) {
            g.flex_vms.remove(&vm);
        }
        if let Some(g) = self.rg_mut(sub, &nic_rg) {
            for n in nics {
                g.flex_nics.remove(&n);
            }
        }
    }

    fn add_instance(&mut self, sub: &str, rg: &str, set: &str, ip: Ipv4Addr) -> String {
        let id = self.insert_instance(sub, rg, set, ip, None);
        id.to_string()
    }

    fn insert_instance(
        &mut self,
        sub: &str,
        rg: &str,
        set: &str,
        ip: Ipv4Addr,
        name: Option<String>,
    ) -> u64 {
        let Some(ss) = self.set_mut(sub, rg, set) else {
            panic!("vmss-testbed: no scale set {sub}/{rg}/{set}; call add_scale_set first");
        };
        let id = ss.next_id;
        ss.next_id += 1;
        let health = state_health(ss);
        ss.instances.insert(
            id,
            Instance {
                id,
                name,
                vm_id: guid(),
                ip,
                secondary: Vec::new(),
                power_state: "running".into(),
                provisioning_state: "Succeeded".into(),
                health,
                tags: BTreeMap::new(),
                nic_rg: None,
                location: None,
                created: now_epoch(),
            },
        );
        ss.capacity = ss.instances.len() as u64;
        self.index(sub, rg, set, id);
        id
    }

    fn remove_instance(&mut self, sub: &str, rg: &str, set: &str, id: u64) -> bool {
        self.unindex(sub, rg, set, id);
        let Some(ss) = self.set_mut(sub, rg, set) else {
            return false;
        };
        let removed = ss.instances.remove(&id).is_some();
        ss.capacity = ss.instances.len() as u64;
        removed
    }

    fn find(&self, sub: &str, rg: &str, set: &str, id: &str) -> u64 {
        self.set(sub, rg, set)
            .and_then(|s| s.find(id))
            .unwrap_or_else(|| {
                panic!("vmss-testbed: no instance {id} in scale set {sub}/{rg}/{set}")
            })
    }

    fn instance_mut(&mut self, sub: &str, rg: &str, set: &str, id: &str) -> &mut Instance {
        let n = self.find(sub, rg, set, id);
        let Some(inst) = self
            .set_mut(sub, rg, set)
            .and_then(|s| s.instances.get_mut(&n))
        else {
            panic!("vmss-testbed: no instance {id} in scale set {sub}/{rg}/{set}");
        };
        inst
    }

    /// Applies every scheduled change that is due.
    pub fn advance(&mut self, now: Instant) {
        if self.timeline.is_empty() {
            return;
        }
        self.timeline.sort_by_key(|s| s.at);
        let due = self.timeline.partition_point(|s| s.at <= now);
        let changes: Vec<Scheduled> = self.timeline.drain(..due).collect();
        for s in changes {
            self.apply(&s);
        }
    }

    /// Hands an event for the set (and, with `deleted`, that instance) to the sink.
    fn emit(&self, sub: &str, rg: &str, set: &str, deleted: Option<u64>) {
        match deleted {
            None => {
                if let Some(id) = self.set(sub, rg, set).map(ScaleSet::id) {
                    self.raise(
                        RESOURCE_WRITE,
                        sub,
                        id,
                        "Microsoft.Compute/virtualMachineScaleSets/write",
                    );
                }
            }
            Some(id) => self.raise_instance(RESOURCE_DELETE, sub, rg, set, id, "delete"),
        }
    }

    /// The resource id of an instance: a Uniform set's `.../virtualMachines/ID`, or the
    /// ordinary VM of a Flexible member or a standalone VM.
    fn instance_subject(
        &self,
        sub: &str,
        rg: &str,
        set: &str,
        id: u64,
    ) -> Option<(String, String)> {
        let ss = self.set(sub, rg, set)?;
        let inst = ss.instances.get(&id);
        Some(if ss.ordinary_vms() {
            let name = match inst {
                Some(i) => ss.vm_name(i),
                None => ss.flex_vm_name(id),
            };
            (
                format!(
                    "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachines/{name}",
                    ss.sub, ss.rg
                ),
                "Microsoft.Compute/virtualMachines".to_string(),
            )
        } else {
            (
                format!("{}/virtualMachines/{id}", ss.id()),
                "Microsoft.Compute/virtualMachineScaleSets/virtualMachines".to_string(),
            )
        })
    }

    /// An event of one instance: `verb` is `write`, `delete` or an action (`start`,
    /// `powerOff`, `deallocate`).
    fn raise_instance(
        &self,
        event_type: &'static str,
        sub: &str,
        rg: &str,
        set: &str,
        id: u64,
        verb: &str,
    ) {
        let Some((subject, kind)) = self.instance_subject(sub, rg, set, id) else {
            return;
        };
        let operation = if event_type == RESOURCE_ACTION {
            format!("{kind}/{verb}/action")
        } else {
            format!("{kind}/{verb}")
        };
        self.raise(event_type, sub, subject, &operation);
    }

    /// Resource Health's event for an instance's VM becoming `state`.
    fn raise_availability(&self, sub: &str, rg: &str, set: &str, id: u64, state: &'static str) {
        let Some(sink) = &self.sink.0 else {
            return;
        };
        let Some((vm, _)) = self.instance_subject(sub, rg, set, id) else {
            return;
        };
        let subscription = self
            .set(sub, rg, set)
            .map_or_else(|| sub.to_string(), |s| s.sub.clone());
        sink(FleetEvent {
            event_type: AVAILABILITY_CHANGED,
            subject: format!(
                "{vm}/providers/Microsoft.ResourceHealth/availabilityStatuses/current"
            ),
            operation: String::new(),
            availability: Some(state),
            subscription,
            id: guid(),
        });
    }

    fn raise(&self, event_type: &'static str, sub: &str, subject: String, operation: &str) {
        let Some(sink) = &self.sink.0 else {
            return;
        };
        let subscription = self
            .subs
            .get(&sub.to_ascii_lowercase())
            .map_or_else(|| sub.to_string(), |s| s.name.clone());
        sink(FleetEvent {
            event_type,
            subject,
            operation: operation.to_string(),
            availability: None,
            subscription,
            id: guid(),
        });
    }

    /// The events of an instance's power state going from `before` to `after`: the
    /// action's success when `action` (an ARM operation, not the platform) caused it, and
    /// Resource Health's when the VM became available or unavailable.
    fn power_changed(
        &self,
        sub: &str,
        rg: &str,
        set: &str,
        id: u64,
        (before, after): (&str, &str),
        action: bool,
    ) {
        if before.eq_ignore_ascii_case(after) {
            return;
        }
        if action {
            let verb = match after.to_ascii_lowercase().as_str() {
                "running" => Some("start"),
                "stopped" => Some("powerOff"),
                "deallocated" => Some("deallocate"),
                _ => None,
            };
            if let Some(verb) = verb {
                self.raise_instance(RESOURCE_ACTION, sub, rg, set, id, verb);
            }
        }
        let available = |p: &str| p.eq_ignore_ascii_case("running");
        let down = |p: &str| matches!(p.to_ascii_lowercase().as_str(), "stopped" | "deallocated");
        if available(after) && !available(before) {
            self.raise_availability(sub, rg, set, id, "Available");
        } else if down(after) && !down(before) {
            self.raise_availability(sub, rg, set, id, "Unavailable");
        }
    }

    /// The events of an instance created on its own (not by a scale-out): its VM's write
    /// for an ordinary VM, the set's write (a scale-out by one) for a Uniform set.
    fn created(&self, sub: &str, rg: &str, set: &str, instance: &str) {
        let Some(ss) = self.set(sub, rg, set) else {
            return;
        };
        if ss.ordinary_vms() {
            if let Some(n) = ss.find(instance) {
                self.raise_instance(RESOURCE_WRITE, sub, rg, set, n, "write");
            }
        } else {
            self.emit(sub, rg, set, None);
        }
    }

    fn apply(&mut self, s: &Scheduled) {
        if s.change.remove {
            let existed = self
                .set(&s.sub, &s.rg, &s.set)
                .is_some_and(|ss| ss.instances.contains_key(&s.id));
            let subject = self.instance_subject(&s.sub, &s.rg, &s.set, s.id);
            let standalone = self
                .set(&s.sub, &s.rg, &s.set)
                .is_some_and(|ss| ss.standalone);
            self.remove_instance(&s.sub, &s.rg, &s.set, s.id);
            if let (true, Some((subject, kind))) = (existed, subject) {
                // The scale-in's (or the delete's) operation succeeds when the instance
                // is gone.
                self.raise(RESOURCE_DELETE, &s.sub, subject, &format!("{kind}/delete"));
                if !standalone {
                    self.emit(&s.sub, &s.rg, &s.set, None);
                }
            }
            return;
        }
        let Some(inst) = self
            .set_mut(&s.sub, &s.rg, &s.set)
            .and_then(|ss| ss.instances.get_mut(&s.id))
        else {
            return;
        };
        let (power_before, prov_before) =
            (inst.power_state.clone(), inst.provisioning_state.clone());
        if let Some(p) = &s.change.power {
            inst.power_state = p.clone();
        }
        if let Some(p) = &s.change.provisioning {
            inst.provisioning_state = p.clone();
        }
        if let Some(h) = &s.change.health {
            inst.health = h.clone();
        }
        let (power_after, prov_after) = (inst.power_state.clone(), inst.provisioning_state.clone());
        // A create or update (a scale-out's boot, a rolling upgrade) has succeeded.
        let finished = prov_after.eq_ignore_ascii_case("Succeeded")
            && matches!(
                prov_before.to_ascii_lowercase().as_str(),
                "creating" | "updating"
            );
        if finished {
            self.raise_instance(RESOURCE_WRITE, &s.sub, &s.rg, &s.set, s.id, "write");
        }
        // Power changes on a timeline are the platform's (boot, eviction, upgrade): no
        // action of anyone's, but Resource Health sees them.
        self.power_changed(
            &s.sub,
            &s.rg,
            &s.set,
            s.id,
            (&power_before, &power_after),
            false,
        );
    }
}

fn set_key(name: &str) -> String {
    if name == STANDALONE_VMS {
        STANDALONE_KEY.to_string()
    } else {
        name.to_ascii_lowercase()
    }
}

/// Cheap, cloneable handle to the simulated fleet. All methods take effect immediately for
/// the fake ARM. Methods that name a scale set panic if it does not exist (test misuse).
/// Instances are named by instance id ("3"), by VM name ("set_3"), or for standalone VMs
/// (scale set [`STANDALONE_VMS`]) by their VM name.
#[derive(Clone)]
pub struct Fleet {
    pub(crate) state: Arc<Mutex<FleetState>>,
}

impl Fleet {
    /// Creates (or replaces) a scale set with no instances. The subscription and resource
    /// group are created on first use.
    pub fn add_scale_set(
        &self,
        subscription: &str,
        resource_group: &str,
        name: &str,
        mode: Orchestration,
        location: &str,
    ) {
        let mut st = lock(&self.state);
        let ids: Vec<u64> = st
            .set(subscription, resource_group, name)
            .map(|s| s.instances.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            st.unindex(subscription, resource_group, name, id);
        }
        let sub_name = st
            .subs
            .get(&subscription.to_ascii_lowercase())
            .map_or_else(|| subscription.to_string(), |s| s.name.clone());
        let group = st.ensure_rg(subscription, resource_group);
        let rg_name = group.name.clone();
        group.sets.insert(
            set_key(name),
            ScaleSet {
                sub: sub_name,
                rg: rg_name,
                name: name.to_string(),
                mode,
                location: location.to_string(),
                capacity: 0,
                next_id: 0,
                unique_id: guid(),
                created: now_epoch(),
                tags: BTreeMap::new(),
                instances: BTreeMap::new(),
                health_extension: false,
                standalone: false,
                terminate_notification: None,
            },
        );
        st.emit(subscription, resource_group, name, None);
    }

    /// Sets (or, with `None`, removes) a tag on a scale set.
    pub fn set_tag(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        key: &str,
        value: Option<&str>,
    ) {
        let mut st = lock(&self.state);
        let Some(ss) = st.set_mut(subscription, resource_group, scale_set) else {
            panic!("vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}");
        };
        match value {
            Some(v) => ss.tags.insert(key.to_string(), v.to_string()),
            None => ss.tags.remove(key),
        };
        st.emit(subscription, resource_group, scale_set, None);
    }

    /// Sets (or removes) a tag on one instance (a Flexible member or standalone VM: its
    /// own VM tags; a Uniform instance: the tags of its scale set VM).
    pub fn set_instance_tag(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance: &str,
        key: &str,
        value: Option<&str>,
    ) {
        let mut st = lock(&self.state);
        let n = st.find(subscription, resource_group, scale_set, instance);
        let inst = st.instance_mut(subscription, resource_group, scale_set, instance);
        match value {
            Some(v) => inst.tags.insert(key.to_string(), v.to_string()),
            None => inst.tags.remove(key),
        };
        st.raise_instance(
            RESOURCE_WRITE,
            subscription,
            resource_group,
            scale_set,
            n,
            "write",
        );
    }

    /// Gives the scale set's model the Application Health extension (on) or takes it away.
    /// With it, instances report `vmHealth` (existing ones: healthy; see [`Fleet::set_health`]).
    pub fn set_health_extension(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        on: bool,
    ) {
        let mut st = lock(&self.state);
        let Some(ss) = st.set_mut(subscription, resource_group, scale_set) else {
            panic!("vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}");
        };
        ss.health_extension = on;
        for inst in ss.instances.values_mut() {
            inst.health = on.then(|| inst.health.clone().unwrap_or_else(|| "healthy".into()));
        }
    }

    /// Sets what an instance's `vmHealth` says ("healthy", "unhealthy", "unknown"), or
    /// with None that it reports no health.
    pub fn set_health(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance: &str,
        health: Option<&str>,
    ) {
        let mut st = lock(&self.state);
        st.instance_mut(subscription, resource_group, scale_set, instance)
            .health = health.map(str::to_string);
    }

    /// Deletes a scale set and its instances (later requests answer 404).
    pub fn remove_scale_set(&self, subscription: &str, resource_group: &str, name: &str) {
        let mut st = lock(&self.state);
        let ids: Vec<u64> = st
            .set(subscription, resource_group, name)
            .map(|s| s.instances.keys().copied().collect())
            .unwrap_or_default();
        let id = st.set(subscription, resource_group, name).map(ScaleSet::id);
        for id in ids {
            st.unindex(subscription, resource_group, name, id);
        }
        if let Some(group) = st.rg_mut(subscription, resource_group) {
            group.sets.remove(&set_key(name));
        }
        if let Some(id) = id {
            st.raise(
                RESOURCE_DELETE,
                subscription,
                id,
                "Microsoft.Compute/virtualMachineScaleSets/delete",
            );
        }
    }

    /// Adds an instance with the given primary private IP; returns its instance id
    /// ("0", "1", ... increasing per set, never reused). `sku.capacity` follows the count.
    pub fn add_instance(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        ip: Ipv4Addr,
    ) -> String {
        let mut st = lock(&self.state);
        let id = st.add_instance(subscription, resource_group, scale_set, ip);
        st.created(subscription, resource_group, scale_set, &id);
        id
    }

    /// Adds a standalone VM (not in any scale set) with its own NIC and the given IP, or
    /// one from the allocator. It is addressed as instance `name` of [`STANDALONE_VMS`].
    pub fn add_vm(
        &self,
        subscription: &str,
        resource_group: &str,
        name: &str,
        ip: Option<Ipv4Addr>,
    ) {
        let mut st = lock(&self.state);
        if st
            .set(subscription, resource_group, STANDALONE_VMS)
            .is_none()
        {
            let sub_name = st
                .subs
                .get(&subscription.to_ascii_lowercase())
                .map_or_else(|| subscription.to_string(), |s| s.name.clone());
            let group = st.ensure_rg(subscription, resource_group);
            let rg_name = group.name.clone();
            group.sets.insert(
                STANDALONE_KEY.to_string(),
                ScaleSet {
                    sub: sub_name,
                    rg: rg_name,
                    name: STANDALONE_VMS.to_string(),
                    mode: Orchestration::Flexible,
                    location: "eastus".into(),
                    capacity: 0,
                    next_id: 0,
                    unique_id: guid(),
                    created: now_epoch(),
                    tags: BTreeMap::new(),
                    instances: BTreeMap::new(),
                    health_extension: false,
                    standalone: true,
                    terminate_notification: None,
                },
            );
        }
        let ip = ip.unwrap_or_else(|| st.alloc_ip());
        st.insert_instance(
            subscription,
            resource_group,
            STANDALONE_VMS,
            ip,
            Some(name.to_string()),
        );
        st.created(subscription, resource_group, STANDALONE_VMS, name);
    }

    /// Puts a standalone VM in another region (`location`; default `eastus`).
    pub fn set_vm_location(
        &self,
        subscription: &str,
        resource_group: &str,
        vm: &str,
        location: &str,
    ) {
        lock(&self.state)
            .instance_mut(subscription, resource_group, STANDALONE_VMS, vm)
            .location = Some(location.to_string());
    }

    /// Sets (or removes) a tag on a standalone VM.
    pub fn set_vm_tag(
        &self,
        subscription: &str,
        resource_group: &str,
        vm: &str,
        key: &str,
        value: Option<&str>,
    ) {
        self.set_instance_tag(subscription, resource_group, STANDALONE_VMS, vm, key, value);
    }

    /// Adds instances (IPs from the allocator) or removes the highest instance ids until the
    /// set has `capacity` instances.
    pub fn scale_to(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        capacity: usize,
    ) {
        let mut st = lock(&self.state);
        st.advance(Instant::now());
        // Instances already leaving (`Deleting` inside a terminate window) do not count.
        let (current, window): (Vec<u64>, Option<Duration>) =
            match st.set(subscription, resource_group, scale_set) {
                Some(s) => (
                    s.instances
                        .values()
                        .filter(|i| !i.provisioning_state.eq_ignore_ascii_case("Deleting"))
                        .map(|i| i.id)
                        .collect(),
                    s.terminate_notification,
                ),
                None => panic!(
                    "vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}; call add_scale_set first"
                ),
            };
        if current.len() < capacity {
            for _ in current.len()..capacity {
                let ip = st.alloc_ip();
                st.add_instance(subscription, resource_group, scale_set, ip);
            }
            st.emit(subscription, resource_group, scale_set, None);
        } else if current.len() > capacity {
            let leaving: Vec<u64> = current
                .iter()
                .rev()
                .take(current.len() - capacity)
                .copied()
                .collect();
            match window {
                None => {
                    for id in &leaving {
                        st.remove_instance(subscription, resource_group, scale_set, *id);
                        st.emit(subscription, resource_group, scale_set, Some(*id));
                    }
                    st.emit(subscription, resource_group, scale_set, None);
                }
                Some(delay) => {
                    // As Azure with a terminate notification: the VM keeps running (its
                    // Terminate scheduled event is pending) and ARM shows it `Deleting`
                    // until the delay is over; `sku.capacity` says the new count at once.
                    let at = Instant::now() + delay;
                    for id in leaving {
                        if let Some(inst) = st
                            .set_mut(subscription, resource_group, scale_set)
                            .and_then(|s| s.instances.get_mut(&id))
                        {
                            inst.provisioning_state = "Deleting".into();
                        }
                        st.timeline.push(Scheduled {
                            at,
                            sub: subscription.to_string(),
                            rg: resource_group.to_string(),
                            set: scale_set.to_string(),
                            id,
                            change: Change {
                                remove: true,
                                ..Change::default()
                            },
                        });
                    }
                    if let Some(s) = st.set_mut(subscription, resource_group, scale_set) {
                        s.capacity = capacity as u64;
                    }
                }
            }
        }
    }

    /// Hands every later event of the fleet to `sink`, as Event Grid would raise them, when
    /// the operation has succeeded ([`FleetEvent`]): scale-outs and scale-ins
    /// ([`Fleet::scale_to`], the end of a terminate window, [`Fleet::delete_instance`]),
    /// sets, VMs and instances created or deleted, tag writes, power actions
    /// ([`Fleet::set_power_state`]), creates and updates that finish, and Resource Health's
    /// availability changes (also for the platform's power changes: boot, eviction,
    /// upgrade). `None` stops it.
    ///
    /// While a sink is set, a thread applies the fleet's scheduled changes as they fall due
    /// (every 20 ms), so their events are raised on time even when nobody reads the fleet.
    pub fn set_event_sink(&self, sink: Option<EventSink>) {
        let mut st = lock(&self.state);
        let start = sink.is_some() && !st.ticking;
        st.sink = Sink(sink);
        if start {
            st.ticking = true;
            let state = Arc::downgrade(&self.state);
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_millis(20));
                let Some(state) = state.upgrade() else {
                    return;
                };
                let mut st = lock(&state);
                if st.sink.0.is_none() {
                    st.ticking = false;
                    return;
                }
                st.advance(Instant::now());
            });
        }
    }

    /// Gives the scale set a terminate notification with this delay (`notBeforeTimeout`,
    /// served in the model as ARM does), or with None takes it away. Azure allows 5 to 15
    /// minutes; tests use seconds (the model then says e.g. `PT4S`).
    pub fn set_terminate_notification(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        delay: Option<Duration>,
    ) {
        let mut st = lock(&self.state);
        let Some(ss) = st.set_mut(subscription, resource_group, scale_set) else {
            panic!("vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}");
        };
        ss.terminate_notification = delay;
    }

    /// Ends the terminate window of the set's leaving instances early (as approving their
    /// Terminate scheduled event does): they disappear at most `within` from now.
    pub fn shorten_terminate_window(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        within: Duration,
    ) {
        let mut st = lock(&self.state);
        let at = Instant::now() + within;
        for s in st.timeline.iter_mut().filter(|s| {
            s.change.remove
                && s.sub.eq_ignore_ascii_case(subscription)
                && s.rg.eq_ignore_ascii_case(resource_group)
                && s.set.eq_ignore_ascii_case(scale_set)
        }) {
            s.at = s.at.min(at);
        }
    }

    /// Instance ids of the set that are leaving (`Deleting`), in increasing order.
    pub fn leaving_instance_ids(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
    ) -> Vec<String> {
        let mut st = lock(&self.state);
        st.advance(Instant::now());
        st.set(subscription, resource_group, scale_set)
            .map(|s| {
                s.instances
                    .values()
                    .filter(|i| i.provisioning_state.eq_ignore_ascii_case("Deleting"))
                    .map(|i| i.id.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes one instance (no-op if it does not exist). Accepts "3" or a VM name.
    pub fn remove_instance(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
    ) {
        let mut st = lock(&self.state);
        let found = st
            .set(subscription, resource_group, scale_set)
            .and_then(|s| s.find(instance_id));
        if let Some(n) = found {
            let subject = st.instance_subject(subscription, resource_group, scale_set, n);
            st.remove_instance(subscription, resource_group, scale_set, n);
            if let Some((subject, kind)) = subject {
                st.raise(
                    RESOURCE_DELETE,
                    subscription,
                    subject,
                    &format!("{kind}/delete"),
                );
            }
        }
    }

    /// Changes `sku.capacity` without touching the instances (simulates the two disagreeing).
    /// The next membership change makes capacity follow the instance count again.
    pub fn set_capacity_only(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        capacity: u64,
    ) {
        let mut st = lock(&self.state);
        let Some(ss) = st.set_mut(subscription, resource_group, scale_set) else {
            panic!("vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}");
        };
        ss.capacity = capacity;
    }

    /// Gives an instance one more, non-primary NIC with the given IP.
    pub fn add_secondary_nic(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        ip: Ipv4Addr,
    ) {
        let mut st = lock(&self.state);
        let n = st.find(subscription, resource_group, scale_set, instance_id);
        st.unindex(subscription, resource_group, scale_set, n);
        st.instance_mut(subscription, resource_group, scale_set, instance_id)
            .secondary
            .push(ip);
        st.index(subscription, resource_group, scale_set, n);
    }

    /// Moves the NICs of an ordinary VM (Flexible member or standalone VM) into another
    /// resource group (created when missing); their ids then name that group.
    pub fn move_nics(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        nic_resource_group: &str,
    ) {
        let mut st = lock(&self.state);
        let n = st.find(subscription, resource_group, scale_set, instance_id);
        st.unindex(subscription, resource_group, scale_set, n);
        st.ensure_rg(subscription, nic_resource_group);
        st.instance_mut(subscription, resource_group, scale_set, instance_id)
            .nic_rg = Some(nic_resource_group.to_string());
        st.index(subscription, resource_group, scale_set, n);
    }

    /// Sets the power state shown in instance views (`PowerState/<state>`), e.g.
    /// "running", "stopped", "deallocated", "starting".
    pub fn set_power_state(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        state: &str,
    ) {
        let mut st = lock(&self.state);
        let n = st.find(subscription, resource_group, scale_set, instance_id);
        let inst = st.instance_mut(subscription, resource_group, scale_set, instance_id);
        let before = std::mem::replace(&mut inst.power_state, state.to_string());
        st.power_changed(
            subscription,
            resource_group,
            scale_set,
            n,
            (&before, state),
            true,
        );
    }

    /// Sets `properties.provisioningState` of an instance, e.g. "Creating", "Deleting",
    /// "Failed" (instance views then show `ProvisioningState/<lower-case state>`).
    pub fn set_provisioning_state(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        state: &str,
    ) {
        let mut st = lock(&self.state);
        st.instance_mut(subscription, resource_group, scale_set, instance_id)
            .provisioning_state = state.to_string();
    }

    /// Schedules a change of one instance, `after` from now.
    pub fn schedule(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        after: Duration,
        change: Change,
    ) {
        let mut st = lock(&self.state);
        let id = st.find(subscription, resource_group, scale_set, instance_id);
        st.timeline.push(Scheduled {
            at: Instant::now() + after,
            sub: subscription.to_string(),
            rg: resource_group.to_string(),
            set: scale_set.to_string(),
            id,
            change,
        });
    }

    /// A scale-out instance as Azure creates it: `Creating` and `starting` now, running
    /// after `boot`, and (in a set with a health source) `unknown` until healthy after
    /// `healthy_after`. Returns its instance id.
    pub fn boot_instance(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        boot: Duration,
        healthy_after: Duration,
    ) -> String {
        let (id, reports) = {
            let mut st = lock(&self.state);
            let ip = st.alloc_ip();
            let id = st.add_instance(subscription, resource_group, scale_set, ip);
            let inst = st.instance_mut(subscription, resource_group, scale_set, &id);
            inst.provisioning_state = "Creating".into();
            inst.power_state = "starting".into();
            let reports = inst.health.is_some();
            if reports {
                inst.health = Some("unknown".into());
            }
            (id, reports)
        };
        self.schedule(
            subscription,
            resource_group,
            scale_set,
            &id,
            boot,
            Change {
                power: Some("running".into()),
                provisioning: Some("Succeeded".into()),
                ..Change::default()
            },
        );
        if reports {
            self.schedule(
                subscription,
                resource_group,
                scale_set,
                &id,
                healthy_after.max(boot),
                Change {
                    health: Some(Some("healthy".into())),
                    ..Change::default()
                },
            );
        }
        id
    }

    /// Scale-in or delete as Azure does it: `Deleting` and `stopping` now, gone after
    /// `gone_after`.
    pub fn delete_instance(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        gone_after: Duration,
    ) {
        {
            let mut st = lock(&self.state);
            let inst = st.instance_mut(subscription, resource_group, scale_set, instance_id);
            inst.provisioning_state = "Deleting".into();
            inst.power_state = "stopping".into();
        }
        self.schedule(
            subscription,
            resource_group,
            scale_set,
            instance_id,
            gone_after,
            Change {
                remove: true,
                ..Change::default()
            },
        );
    }

    /// A Spot eviction with the Deallocate policy: `deallocating` now, `deallocated` one
    /// second later; health (when reported) becomes `unknown`. The instance, its NIC and
    /// its address stay.
    pub fn evict_instance(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
    ) {
        {
            let mut st = lock(&self.state);
            let inst = st.instance_mut(subscription, resource_group, scale_set, instance_id);
            inst.power_state = "deallocating".into();
            if inst.health.is_some() {
                inst.health = Some("unknown".into());
            }
        }
        self.schedule(
            subscription,
            resource_group,
            scale_set,
            instance_id,
            Duration::from_secs(1),
            Change {
                power: Some("deallocated".into()),
                ..Change::default()
            },
        );
    }

    /// One instance reimaged by a rolling upgrade: `Updating` and `stopped` now (health
    /// `unknown`), `starting` after half of `takes`, then `Succeeded`, running and (with a
    /// health source) healthy after `takes`.
    pub fn rolling_upgrade(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
        takes: Duration,
    ) {
        let reports = {
            let mut st = lock(&self.state);
            let inst = st.instance_mut(subscription, resource_group, scale_set, instance_id);
            inst.provisioning_state = "Updating".into();
            inst.power_state = "stopped".into();
            let reports = inst.health.is_some();
            if reports {
                inst.health = Some("unknown".into());
            }
            reports
        };
        self.schedule(
            subscription,
            resource_group,
            scale_set,
            instance_id,
            takes / 2,
            Change {
                power: Some("starting".into()),
                ..Change::default()
            },
        );
        self.schedule(
            subscription,
            resource_group,
            scale_set,
            instance_id,
            takes,
            Change {
                power: Some("running".into()),
                provisioning: Some("Succeeded".into()),
                health: reports.then(|| Some("healthy".into())),
                remove: false,
            },
        );
    }

    /// Primary private IPs of the set's instances, sorted. Empty if the set does not exist.
    pub fn instance_ips(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
    ) -> Vec<Ipv4Addr> {
        let mut st = lock(&self.state);
        st.advance(Instant::now());
        let mut ips: Vec<Ipv4Addr> = st
            .set(subscription, resource_group, scale_set)
            .map(|s| s.instances.values().map(|i| i.ip).collect())
            .unwrap_or_default();
        ips.sort();
        ips
    }

    /// The primary private IP of one instance.
    pub fn instance_ip(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
    ) -> Ipv4Addr {
        let mut st = lock(&self.state);
        st.instance_mut(subscription, resource_group, scale_set, instance_id)
            .ip
    }

    /// Instance ids of the set, in increasing order.
    pub fn instance_ids(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
    ) -> Vec<String> {
        let mut st = lock(&self.state);
        st.advance(Instant::now());
        st.set(subscription, resource_group, scale_set)
            .map(|s| s.instances.keys().map(|k| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// Where `scale_to` takes new IPs from (default 10.0.0.4). Addresses ending in .0 or
    /// .255 are skipped; addresses are never handed out twice.
    pub fn set_ip_allocator_base(&self, base: Ipv4Addr) {
        lock(&self.state).next_ip = u32::from(base);
    }
}
