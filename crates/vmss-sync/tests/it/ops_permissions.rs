//! Least privilege, checked against what the client really sends: the real binary runs
//! against the testbed with every kind of selection (a named Uniform set with health, a
//! glob over a resource group, tags over the whole subscription with standalone VMs, a
//! Flexible set) and both Azure targets (Route Server peerings, a Load Balancer pool;
//! long-running operations followed through `Azure-AsyncOperation` and through
//! `Location`). Every ARM request is turned into the RBAC action Azure checks for it
//! (provider namespace, resource types, and read/write/delete by method), and each must be
//! in the custom role of packaging/azure-roles/ for its feature set; each role holds
//! nothing that no request needed. The lease's storage operations are checked against
//! the lease role from the client's own list of them.

use crate::support::common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use vmss_testbed::{LroHeaders, Orchestration, RecordedRequest, Service, TestbedOptions};

fn role(file: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/azure-roles")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    for key in ["Name", "Description", "AssignableScopes"] {
        assert!(!v[key].is_null(), "{file}: {key}");
    }
    let set = |key: &str| -> BTreeSet<String> {
        v[key]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: {key}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_ascii_lowercase())
            .collect()
    };
    assert!(set("NotActions").is_empty() && set("NotDataActions").is_empty());
    (set("Actions"), set("DataActions"))
}

/// The RBAC action for an ARM request: `{namespace}/{type}[/{type}...]/{read|write|delete}`,
/// from the path after `providers/` (types and names alternate; a list ends on a type).
fn action(r: &RecordedRequest) -> String {
    let path = r.path.trim_end_matches('/');
    let (_, provider) = path
        .split_once("/providers/")
        .unwrap_or_else(|| panic!("not a provider path: {} {}", r.method, r.path));
    let segs: Vec<&str> = provider.split('/').collect();
    let mut parts = vec![segs[0].to_string()];
    parts.extend(segs[1..].iter().step_by(2).map(|s| s.to_string()));
    let verb = match r.method.as_str() {
        "GET" | "HEAD" => "read",
        "PUT" | "PATCH" => "write",
        "DELETE" => "delete",
        m => panic!("unexpected ARM method {m} {}", r.path),
    };
    parts.push(verb.into());
    // Azure compares actions case-insensitively (the VMSS NIC list's path is spelled
    // `microsoft.Compute` in the REST specification).
    parts.join("/").to_ascii_lowercase()
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone, Copy)]
enum Feature {
    Discovery,
    RouteServer,
    LbPool,
    /// Long-running operations: either Azure target's writes.
    Operation,
}

fn feature(r: &RecordedRequest) -> Feature {
    if r.path.contains("/virtualHubs/") {
        Feature::RouteServer
    } else if r.path.contains("/loadBalancers/") {
        Feature::LbPool
    } else if r.path.contains("/locations/") {
        Feature::Operation
    } else {
        Feature::Discovery
    }
}

const HUB: &str = "rs-1";
const LB: &str = "lb-1";
const POOL: &str = "web-pool";

fn vnet() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/virtualNetworks/vnet-1")
}

async fn once(env: &Env, cfg: &std::path::Path) {
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_arm_request_of_every_feature_maps_to_an_action_of_its_custom_role_and_no_role_action_is_unused(
) {
    let env = testbed(TestbedOptions::default()).await;
    let f = env.tb.fleet();
    // A named Uniform set reporting health (instance views read), a glob over a group, tags
    // over the subscription (scale sets listed, standalone VMs and their power states),
    // a Flexible set; then the sets of the two Azure targets.
    env.uniform("web", 2);
    f.set_health_extension(SUB, RG, "web", true);
    f.add_scale_set(SUB, "rg-a", "api-1", Orchestration::Uniform, "eastus");
    f.scale_to(SUB, "rg-a", "api-1", 2);
    f.add_scale_set(SUB, "rg-b", "tagged", Orchestration::Uniform, "eastus");
    f.scale_to(SUB, "rg-b", "tagged", 1);
    f.set_tag(SUB, "rg-b", "tagged", "role", Some("front"));
    f.add_vm(SUB, "rg-vms", "vm-a", Some("10.50.0.1".parse().unwrap()));
    f.set_vm_tag(SUB, "rg-vms", "vm-a", "role", Some("front"));
    f.add_scale_set(SUB, RG, "flex", Orchestration::Flexible, "eastus");
    f.scale_to(SUB, RG, "flex", 2);
    env.uniform("nva", 3);
    env.uniform("pool", 3);
    for name in ["web", "api", "front", "flex"] {
        env.upstream(vmss_testbed::UpstreamKind::Http, name);
    }
    env.tb.network().add_route_server(SUB, RG, HUB);
    env.tb.network().add_backend_pool(SUB, RG, LB, POOL, &[]);
    let targets = format!(
        "targets:\n  rs:\n    type: azure_route_server\n    subscription: {SUB}\n    resource_group: {RG}\n    virtual_hub: {HUB}\n    peer_asn: 65010\n  lb:\n    type: azure_lb_pool\n    subscription: {SUB}\n    resource_group: {RG}\n    load_balancer: {LB}\n    backend_pool: {POOL}\n    virtual_network: {}\n",
        vnet()
    );
    let upstreams = "  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n\
                     \x20 - name: api\n    virtual_machine_scale_set: api-*\n    resource_group_name: rg-a\n    port: 80\n    kind: http\n\
                     \x20 - name: front\n    resource_group_name: \"*\"\n    tags:\n      allow: {role: front}\n    port: 80\n    kind: http\n\
                     \x20 - name: flex\n    virtual_machine_scale_set: flex\n    port: 80\n    kind: http\n\
                     \x20 - name: nva\n    virtual_machine_scale_set: nva\n    port: 179\n    kind: stream\n    target: rs\n    drain_timeout: 0s\n\
                     \x20 - name: pool\n    virtual_machine_scale_set: pool\n    port: 80\n    kind: http\n    target: lb\n    drain_timeout: 0s\n";
    let cfg = env.config(&targets, upstreams);
    env.tb.clear_requests();
    once(&env, &cfg).await;
    // Scale in (peerings deleted, the pool rewritten), followed through `Location` only.
    env.tb.network().set_lro_headers(LroHeaders::LocationOnly);
    f.scale_to(SUB, RG, "nva", 2);
    f.scale_to(SUB, RG, "pool", 2);
    once(&env, &cfg).await;
    assert_eq!(
        env.tb
            .network()
            .peerings(SUB, RG, HUB)
            .iter()
            .filter(|p| p.0.starts_with("vmss-sync-"))
            .count(),
        2
    );

    let requests = env.tb.requests_to(Service::Arm);
    let mut seen: std::collections::BTreeMap<Feature, BTreeSet<String>> = Default::default();
    let mut joins_vnet = false;
    for r in &requests {
        seen.entry(feature(r)).or_default().insert(action(r));
        if feature(r) == Feature::LbPool && r.method == "PUT" && r.body.contains(&vnet()) {
            joins_vnet = true;
        }
    }
    for (f, actions) in &seen {
        println!("{f:?}: {actions:?}");
    }
    let discovery = &seen[&Feature::Discovery];
    let operations = &seen[&Feature::Operation];
    assert!(
        operations.contains("microsoft.network/locations/operations/read")
            && operations.contains("microsoft.network/locations/operationresults/read"),
        "both ways of following an operation were exercised: {operations:?}"
    );
    assert!(joins_vnet, "the pool's addresses name the virtual network");

    let (reader, reader_data) = role("vmss-sync-discovery.json");
    assert!(reader_data.is_empty());
    assert_eq!(
        &reader, discovery,
        "the discovery role is exactly the actions discovery sends"
    );
    assert!(
        reader.iter().all(|a| a.ends_with("/read")),
        "read-only: {reader:?}"
    );

    let (rs, rs_data) = role("vmss-sync-route-server.json");
    assert!(rs_data.is_empty());
    let want: BTreeSet<String> = discovery
        .iter()
        .chain(&seen[&Feature::RouteServer])
        .chain(operations)
        .cloned()
        .collect();
    assert_eq!(
        rs, want,
        "route server role: discovery + peerings + operations"
    );

    let (lb, lb_data) = role("vmss-sync-lb-pool.json");
    assert!(lb_data.is_empty());
    let mut want: BTreeSet<String> = discovery
        .iter()
        .chain(&seen[&Feature::LbPool])
        .chain(operations)
        .cloned()
        .collect();
    // Writing an address in a VNet is checked as a linked access on that VNet.
    want.insert("microsoft.network/virtualnetworks/joinloadbalancer/action".into());
    assert_eq!(
        lb, want,
        "lb pool role: discovery + pool + operations + join"
    );
}

/// The Blob lease client's storage operations (each `send("name", Method::..)` in
/// src/leader/blob.rs) and the permission the Storage documentation's authorization
/// table gives for each; every operation the client has must be listed here, and the
/// lease role must grant what they need and nothing else.
#[test]
fn every_lease_storage_operation_maps_to_an_action_of_the_lease_role() {
    let src = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/leader/blob.rs"),
    )
    .unwrap();
    // `send(\n "acquire",\n Method::PUT` or `send("properties", Method::HEAD`: the quoted
    // name right after `send(`, then the method.
    let mut ops = BTreeSet::new();
    for chunk in src.split(".send(").skip(1) {
        let chunk = chunk.trim_start();
        let Some(rest) = chunk.strip_prefix('"') else {
            continue;
        };
        let (name, rest) = rest.split_once('"').unwrap();
        let method = rest
            .trim_start_matches([',', ' ', '\n'])
            .strip_prefix("Method::")
            .and_then(|m| m.split(|c: char| !c.is_ascii_alphabetic()).next())
            .unwrap_or_else(|| panic!("method of {name}"));
        ops.insert((name.to_string(), method.to_string()));
    }
    let blobs = "microsoft.storage/storageaccounts/blobservices/containers/blobs";
    let needs = |name: &str, method: &str| -> (bool, String) {
        match (name, method) {
            // Lease Blob, Put Blob: blobs/write (data action).
            ("acquire" | "renew" | "release" | "break" | "create-blob", "PUT") => {
                (true, format!("{blobs}/write"))
            }
            // Get Blob Properties: blobs/read (data action).
            ("properties", "HEAD") => (true, format!("{blobs}/read")),
            // Create Container: containers/write (an action).
            ("create-container", "PUT") => (
                false,
                "microsoft.storage/storageaccounts/blobservices/containers/write".into(),
            ),
            _ => panic!("{name} ({method}): a storage operation the lease role does not cover"),
        }
    };
    assert!(ops.len() >= 7, "the client's operations: {ops:?}");
    let (actions, data) = role("vmss-sync-lease.json");
    let mut want_actions = BTreeSet::new();
    let mut want_data = BTreeSet::new();
    for (name, method) in &ops {
        match needs(name, method) {
            (true, a) => want_data.insert(a),
            (false, a) => want_actions.insert(a),
        };
    }
    assert_eq!(actions, want_actions);
    assert_eq!(data, want_data);
}
