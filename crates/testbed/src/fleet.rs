//! The simulated Azure fleet: subscriptions, resource groups, scale sets, instances, NICs.
//!
//! Everything is indexed by lower-cased names (ARM matches paths case-insensitively) while
//! the canonical casing given by the test is kept for the ids the fake returns.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use crate::util::{guid, lock, now_epoch};

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
    pub vm_id: String,
    pub ip: Ipv4Addr,
    pub secondary: Vec<Ipv4Addr>,
    pub power_state: String,
    pub provisioning_state: String,
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

    /// Name of NIC configuration number `idx` (0 = primary) of a Uniform set.
    pub fn uniform_nic_name(&self, idx: usize) -> String {
        if idx == 0 {
            format!("{}-nic", self.name)
        } else {
            format!("{}-nic{}", self.name, idx + 1)
        }
    }
}

/// Where a Flexible VM or NIC lives, for the per-resource-group indexes.
#[derive(Debug, Clone)]
pub(crate) struct FlexRef {
    pub set_key: String,
    pub id: u64,
    /// NIC index (0 = primary); unused for VMs.
    pub nic: usize,
}

#[derive(Debug, Default)]
pub(crate) struct ResourceGroup {
    pub name: String,
    pub sets: BTreeMap<String, ScaleSet>,
    /// Flexible member VMs of every set in the group, by lower-cased VM name.
    pub flex_vms: BTreeMap<String, FlexRef>,
    /// NICs of Flexible member VMs, by lower-cased NIC name.
    pub flex_nics: BTreeMap<String, FlexRef>,
}

#[derive(Debug, Default)]
pub(crate) struct Subscription {
    pub name: String,
    pub rgs: BTreeMap<String, ResourceGroup>,
}

#[derive(Debug)]
pub(crate) struct FleetState {
    pub subs: HashMap<String, Subscription>,
    next_ip: u32,
}

impl Default for FleetState {
    fn default() -> Self {
        FleetState {
            subs: HashMap::new(),
            next_ip: u32::from(Ipv4Addr::new(10, 0, 0, 4)),
        }
    }
}

impl FleetState {
    pub fn rg(&self, sub: &str, rg: &str) -> Option<&ResourceGroup> {
        self.subs
            .get(&sub.to_ascii_lowercase())?
            .rgs
            .get(&rg.to_ascii_lowercase())
    }

    pub fn set(&self, sub: &str, rg: &str, name: &str) -> Option<&ScaleSet> {
        self.rg(sub, rg)?.sets.get(&name.to_ascii_lowercase())
    }

    fn rg_mut(&mut self, sub: &str, rg: &str) -> Option<&mut ResourceGroup> {
        self.subs
            .get_mut(&sub.to_ascii_lowercase())?
            .rgs
            .get_mut(&rg.to_ascii_lowercase())
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

    fn add_instance(&mut self, sub: &str, rg: &str, set: &str, ip: Ipv4Addr) -> String {
        let Some(group) = self.rg_mut(sub, rg) else {
            panic!("vmss-testbed: no resource group {sub}/{rg}; call add_scale_set first");
        };
        let key = set.to_ascii_lowercase();
        let Some(ss) = group.sets.get_mut(&key) else {
            panic!("vmss-testbed: no scale set {sub}/{rg}/{set}; call add_scale_set first");
        };
        let id = ss.next_id;
        ss.next_id += 1;
        ss.instances.insert(
            id,
            Instance {
                id,
                vm_id: guid(),
                ip,
                secondary: Vec::new(),
                power_state: "running".into(),
                provisioning_state: "Succeeded".into(),
                created: now_epoch(),
            },
        );
        ss.capacity = ss.instances.len() as u64;
        if ss.mode == Orchestration::Flexible {
            let vm = ss.flex_vm_name(id).to_ascii_lowercase();
            let nic = ss.flex_nic_name(id, 0).to_ascii_lowercase();
            let r = FlexRef {
                set_key: key.clone(),
                id,
                nic: 0,
            };
            group.flex_vms.insert(vm, r.clone());
            group.flex_nics.insert(nic, r);
        }
        id.to_string()
    }

    fn remove_instance(&mut self, sub: &str, rg: &str, set: &str, id: u64) -> bool {
        let Some(group) = self.rg_mut(sub, rg) else {
            return false;
        };
        let Some(ss) = group.sets.get_mut(&set.to_ascii_lowercase()) else {
            return false;
        };
        let Some(inst) = ss.instances.remove(&id) else {
            return false;
        };
        ss.capacity = ss.instances.len() as u64;
        if ss.mode == Orchestration::Flexible {
            let vm = ss.flex_vm_name(id).to_ascii_lowercase();
            let nics: Vec<String> = (0..=inst.secondary.len())
                .map(|i| ss.flex_nic_name(id, i).to_ascii_lowercase())
                .collect();
            group.flex_vms.remove(&vm);
            for n in nics {
                group.flex_nics.remove(&n);
            }
        }
        true
    }

    fn instance_mut(&mut self, sub: &str, rg: &str, set: &str, id: &str) -> &mut Instance {
        let n = parse_instance_id(set, id);
        let Some(inst) = self
            .rg_mut(sub, rg)
            .and_then(|g| g.sets.get_mut(&set.to_ascii_lowercase()))
            .and_then(|s| s.instances.get_mut(&n))
        else {
            panic!("vmss-testbed: no instance {id} in scale set {sub}/{rg}/{set}");
        };
        inst
    }
}

/// Accepts "3" or, for Flexible sets, the VM name "set_3".
fn parse_instance_id(set: &str, id: &str) -> u64 {
    let tail = match id.rsplit_once('_') {
        Some((prefix, n)) if prefix.eq_ignore_ascii_case(set) => n,
        _ => id,
    };
    tail.parse()
        .unwrap_or_else(|_| panic!("vmss-testbed: bad instance id {id:?}"))
}

/// Cheap, cloneable handle to the simulated fleet. All methods take effect immediately for
/// the fake ARM. Methods that name a scale set panic if it does not exist (test misuse).
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
        let sub = st
            .subs
            .entry(subscription.to_ascii_lowercase())
            .or_insert_with(|| Subscription {
                name: subscription.to_string(),
                rgs: BTreeMap::new(),
            });
        let group = sub
            .rgs
            .entry(resource_group.to_ascii_lowercase())
            .or_insert_with(|| ResourceGroup {
                name: resource_group.to_string(),
                ..ResourceGroup::default()
            });
        let key = name.to_ascii_lowercase();
        group.flex_vms.retain(|_, r| r.set_key != key);
        group.flex_nics.retain(|_, r| r.set_key != key);
        group.sets.insert(
            key,
            ScaleSet {
                sub: sub.name.clone(),
                rg: group.name.clone(),
                name: name.to_string(),
                mode,
                location: location.to_string(),
                capacity: 0,
                next_id: 0,
                unique_id: guid(),
                created: now_epoch(),
                tags: BTreeMap::new(),
                instances: BTreeMap::new(),
            },
        );
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
        let Some(ss) = st
            .rg_mut(subscription, resource_group)
            .and_then(|g| g.sets.get_mut(&scale_set.to_ascii_lowercase()))
        else {
            panic!("vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}");
        };
        match value {
            Some(v) => ss.tags.insert(key.to_string(), v.to_string()),
            None => ss.tags.remove(key),
        };
    }

    /// Deletes a scale set and its instances (later requests answer 404).
    pub fn remove_scale_set(&self, subscription: &str, resource_group: &str, name: &str) {
        let mut st = lock(&self.state);
        if let Some(group) = st.rg_mut(subscription, resource_group) {
            let key = name.to_ascii_lowercase();
            group.sets.remove(&key);
            group.flex_vms.retain(|_, r| r.set_key != key);
            group.flex_nics.retain(|_, r| r.set_key != key);
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
        lock(&self.state).add_instance(subscription, resource_group, scale_set, ip)
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
        let current: Vec<u64> = match st.set(subscription, resource_group, scale_set) {
            Some(s) => s.instances.keys().copied().collect(),
            None => panic!(
                "vmss-testbed: no scale set {subscription}/{resource_group}/{scale_set}; call add_scale_set first"
            ),
        };
        if current.len() < capacity {
            for _ in current.len()..capacity {
                let ip = st.alloc_ip();
                st.add_instance(subscription, resource_group, scale_set, ip);
            }
        } else {
            for id in current.iter().rev().take(current.len() - capacity) {
                st.remove_instance(subscription, resource_group, scale_set, *id);
            }
        }
    }

    /// Removes one instance (no-op if it does not exist). Accepts "3" or a Flexible VM name.
    pub fn remove_instance(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
        instance_id: &str,
    ) {
        let n = parse_instance_id(scale_set, instance_id);
        lock(&self.state).remove_instance(subscription, resource_group, scale_set, n);
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
        let Some(ss) = st
            .rg_mut(subscription, resource_group)
            .and_then(|g| g.sets.get_mut(&scale_set.to_ascii_lowercase()))
        else {
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
        let inst = st.instance_mut(subscription, resource_group, scale_set, instance_id);
        inst.secondary.push(ip);
        let (id, idx) = (inst.id, inst.secondary.len());
        let Some(group) = st.rg_mut(subscription, resource_group) else {
            return;
        };
        let key = scale_set.to_ascii_lowercase();
        if let Some(ss) = group.sets.get(&key) {
            if ss.mode == Orchestration::Flexible {
                let nic = ss.flex_nic_name(id, idx).to_ascii_lowercase();
                group.flex_nics.insert(
                    nic,
                    FlexRef {
                        set_key: key,
                        id,
                        nic: idx,
                    },
                );
            }
        }
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
        st.instance_mut(subscription, resource_group, scale_set, instance_id)
            .power_state = state.to_string();
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

    /// Primary private IPs of the set's instances, sorted. Empty if the set does not exist.
    pub fn instance_ips(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
    ) -> Vec<Ipv4Addr> {
        let st = lock(&self.state);
        let mut ips: Vec<Ipv4Addr> = st
            .set(subscription, resource_group, scale_set)
            .map(|s| s.instances.values().map(|i| i.ip).collect())
            .unwrap_or_default();
        ips.sort();
        ips
    }

    /// Instance ids of the set, in increasing order.
    pub fn instance_ids(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
    ) -> Vec<String> {
        let st = lock(&self.state);
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
