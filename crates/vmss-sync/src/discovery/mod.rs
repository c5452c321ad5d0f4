//! Discovery: reads scale sets from ARM and produces [`ScaleSetSnapshot`]s.
//!
//! A Uniform scale set costs one `VirtualMachineScaleSets_Get` (orchestration mode and
//! capacity) and one `NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces`
//! (all pages) per cycle, however many upstreams name it. Any failure, including one
//! failed page, makes the whole read fail: a partial read is never returned.

use crate::azure::arm::{ArmClient, ArmError};
use crate::azure::models::{self, NetworkInterface};
use crate::model::{Instance, Orchestration, ScaleSetKey, ScaleSetSnapshot};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a scale set could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// ARM refused or failed.
    #[error("{0}")]
    Arm(#[from] ArmError),
    /// The set uses Flexible orchestration.
    #[error(
        "scale set {0} uses Flexible orchestration, which this version of vmss-sync does not support yet \
         (only Uniform scale sets are read)"
    )]
    FlexibleNotSupported(String),
}

impl DiscoveryError {
    /// True when retrying will not help until something is changed (missing set,
    /// unsupported mode, missing permission).
    pub fn is_permanent(&self) -> bool {
        match self {
            DiscoveryError::FlexibleNotSupported(_) => true,
            DiscoveryError::Arm(e) => e.is_permanent(),
        }
    }
}

fn orchestration(vmss: &models::VirtualMachineScaleSet) -> Orchestration {
    match vmss.orchestration_mode() {
        models::OrchestrationMode::Flexible => Orchestration::Flexible,
        _ => Orchestration::Uniform,
    }
}

/// Checks that a scale set exists and is supported (startup).
pub async fn check_scale_set(arm: &ArmClient, key: &ScaleSetKey) -> Result<(), DiscoveryError> {
    let vmss = arm
        .get_scale_set(&key.subscription, &key.resource_group, &key.name)
        .await?;
    match orchestration(&vmss) {
        Orchestration::Flexible => Err(DiscoveryError::FlexibleNotSupported(key.to_string())),
        Orchestration::Uniform => Ok(()),
    }
}

/// Reads one scale set: its capacity and mode, then every NIC (all pages).
pub async fn read_scale_set(
    arm: &ArmClient,
    key: &ScaleSetKey,
) -> Result<ScaleSetSnapshot, DiscoveryError> {
    let vmss = arm
        .get_scale_set(&key.subscription, &key.resource_group, &key.name)
        .await?;
    let mode = orchestration(&vmss);
    if mode == Orchestration::Flexible {
        return Err(DiscoveryError::FlexibleNotSupported(key.to_string()));
    }
    let nics = arm
        .list_scale_set_nics(&key.subscription, &key.resource_group, &key.name)
        .await?;
    Ok(ScaleSetSnapshot {
        key: key.clone(),
        capacity: vmss.sku.capacity,
        orchestration: mode,
        instances: instances_from_nics(&nics),
    })
}

/// One address per VM: the primary NIC's primary IPv4 configuration. A VM with several
/// NICs is registered once (nginx-asg-sync registers it once per NIC). NICs attached to
/// no VM are ignored. When no NIC of a VM is marked primary, the one with the lowest id
/// that has an address is used.
pub fn instances_from_nics(nics: &[NetworkInterface]) -> Vec<Instance> {
    let mut by_vm: BTreeMap<String, Vec<&NetworkInterface>> = BTreeMap::new();
    for nic in nics {
        if let Some(vm) = models::vm_id_of_nic(nic) {
            by_vm.entry(vm).or_default().push(nic);
        }
    }
    let mut out = Vec::with_capacity(by_vm.len());
    for (vm_id, mut vm_nics) in by_vm {
        vm_nics.sort_by_key(|n| {
            (
                !n.is_primary(),
                n.id.clone().unwrap_or_default().to_ascii_lowercase(),
            )
        });
        if let Some(ip) = vm_nics.iter().find_map(|n| models::primary_ipv4(n)) {
            out.push(Instance { vm_id, ip });
        }
    }
    out
}

/// Reads every scale set once, at most `concurrency` at a time.
pub async fn discover(
    arm: &ArmClient,
    keys: &[ScaleSetKey],
    concurrency: usize,
) -> BTreeMap<ScaleSetKey, Result<ScaleSetSnapshot, DiscoveryError>> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let arm = arm.clone();
        let key = key.clone();
        let limit = Arc::clone(&limit);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let r = read_scale_set(&arm, &key).await;
            (key, r)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((key, r)) => {
                out.insert(key, r);
            }
            Err(e) => tracing::error!(error = %e, "A discovery task ended abnormally."),
        }
    }
    out
}
