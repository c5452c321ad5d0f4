//! Hooks for chaos soaks: the fleet's truth as a whole (every member's address and
//! run-time state, after scheduled changes) and a restart of the fake NGINX Plus that
//! loses the servers added through its API, as NGINX Plus without a state file does.

use std::net::Ipv4Addr;
use std::time::Instant;

use crate::fleet::{Fleet, Orchestration};
use crate::nginx::NginxPlus;
use crate::util::lock;

/// One member of a scale set as the fleet holds it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    /// Instance id ("0", "1", …).
    pub id: String,
    /// Primary private IPv4 address.
    pub ip: Ipv4Addr,
    /// Power state as instance views show it after `PowerState/` ("running", "stopped", …).
    pub power: String,
    /// `provisioningState` ("Succeeded", "Creating", "Deleting", …).
    pub provisioning: String,
    /// `vmHealth` state; None when the instance reports no health.
    pub health: Option<String>,
}

/// One scale set as the fleet holds it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleSetState {
    pub orchestration: Orchestration,
    /// `sku.capacity`.
    pub capacity: u64,
    /// The model carries the Application Health extension.
    pub reports_health: bool,
    /// Members in instance-id order.
    pub members: Vec<MemberState>,
}

impl Fleet {
    /// The set and its members after every scheduled change that is due; None when the
    /// set does not exist.
    pub fn scale_set_state(
        &self,
        subscription: &str,
        resource_group: &str,
        scale_set: &str,
    ) -> Option<ScaleSetState> {
        let mut st = lock(&self.state);
        st.advance(Instant::now());
        let ss = st.set(subscription, resource_group, scale_set)?;
        Some(ScaleSetState {
            orchestration: ss.mode,
            capacity: ss.capacity,
            reports_health: ss.health_extension,
            members: ss
                .instances
                .values()
                .map(|i| MemberState {
                    id: i.id.to_string(),
                    ip: i.ip,
                    power: i.power_state.clone(),
                    provisioning: i.provisioning_state.clone(),
                    health: i.health.clone(),
                })
                .collect(),
        })
    }
}

impl NginxPlus {
    /// A restart without a state file: every upstream keeps its configuration but loses
    /// the servers added through the API (server ids start again from 0).
    pub fn restart(&self) {
        lock(&self.state).lose_servers();
    }
}
