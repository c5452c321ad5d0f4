//! Services found by tags, through the fake ARM: a template's configuration gives its
//! selection (by the service name tag), discovery reads scale sets, Flexible members and
//! standalone VMs with their regions, and `services::split` groups them into backends
//! `{name}-{service}-{port}-{region}`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use url::Url;
use vmss_sync::azure::arm::{ArmClient, ArmOptions};
use vmss_sync::azure::auth::StaticToken;
use vmss_sync::config::{self, Config};
use vmss_sync::discovery::{self, DiscoveryState, Options};
use vmss_sync::model::{desired_servers, Found, RegisterWhen, Registration, ServerParams};
use vmss_sync::reconcile::selection_of;
use vmss_sync::services::{self, Service};
use vmss_testbed::{Orchestration, Testbed, TestbedOptions};

const SUB: &str = "00000000-0000-0000-0000-00000000005e";
const NAME: &str = "HAProxy:Service:Name";
const PORT: &str = "HAProxy:Service:Port";
const IPORT: &str = "HAProxy:Instance:Port";

fn client(tb: &Testbed) -> ArmClient {
    ArmClient::new(
        ArmOptions {
            endpoint: Url::parse(&tb.arm_url()).expect("arm url"),
            audience: "https://management.azure.com".into(),
            request_timeout: Duration::from_secs(5),
            ..ArmOptions::default()
        },
        Arc::new(StaticToken(tb.issue_token())),
        reqwest::Client::new(),
    )
}

fn template(upstream: &str) -> Config {
    let text = format!(
        "subscription_id: {SUB}\nresource_group_name: rg-a\ntargets:\n  edge:\n    \
         type: haproxy_dataplane\n    url: http://127.0.0.1:5555\n    username: admin\n    \
         password: p\nupstreams:\n{upstream}"
    );
    config::parse(&text, Path::new("cfg.yaml"), &|_| None).unwrap_or_else(|e| panic!("{e}"))
}

/// Discovers the first upstream's selection and splits it.
async fn split_of(tb: &Testbed, cfg: &Config) -> (Vec<Service>, Vec<String>) {
    let u = &cfg.upstreams[0];
    let sel = selection_of(cfg, u);
    let d = discovery::discover(
        &client(tb),
        &DiscoveryState::default(),
        std::slice::from_ref(&sel),
        &Options::default(),
    )
    .await;
    let found = match d.get(&sel) {
        Some(Ok(f)) => f.clone(),
        other => panic!("discovery: {other:?}"),
    };
    let svc = u.source.services.as_ref().expect("a template");
    let (services, unported) = services::split(&found, &u.name, svc);
    (
        services,
        unported
            .into_iter()
            .map(|u| format!("{} {}", u.vm_id.rsplit('/').next().unwrap_or(""), u.reason))
            .collect(),
    )
}

/// Addresses of a service's instances, sorted.
fn ips(found: &Found) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = found
        .sets
        .iter()
        .flat_map(|s| s.instances.iter().map(|i| i.ip))
        .chain(found.vms.iter().map(|i| i.ip))
        .collect();
    v.sort();
    v
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("an address")
}

fn backends(services: &[Service]) -> BTreeMap<&str, Vec<Ipv4Addr>> {
    services
        .iter()
        .map(|s| (s.backend.as_str(), ips(&s.found)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_sets_members_and_vms_in_two_regions_become_one_backend_per_service() {
    let tb = Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed");
    let f = tb.fleet();
    f.set_ip_allocator_base(ip("10.1.0.10"));

    // A Uniform set in westeurope, tagged as a whole.
    f.add_scale_set(SUB, "rg-a", "uni", Orchestration::Uniform, "westeurope");
    f.set_tag(SUB, "rg-a", "uni", NAME, Some("web"));
    f.set_tag(SUB, "rg-a", "uni", PORT, Some("80"));
    f.scale_to(SUB, "rg-a", "uni", 2);
    let uni = f.instance_ips(SUB, "rg-a", "uni");

    // A Flexible set in eastus tagged web:80, one member of which is api:8080 by its own
    // tags and one has its own instance port.
    f.add_scale_set(SUB, "rg-b", "flex", Orchestration::Flexible, "East US");
    f.set_tag(SUB, "rg-b", "flex", NAME, Some("web"));
    f.set_tag(SUB, "rg-b", "flex", PORT, Some("80"));
    f.scale_to(SUB, "rg-b", "flex", 3);
    let flex = f.instance_ips(SUB, "rg-b", "flex");
    f.set_instance_tag(SUB, "rg-b", "flex", "flex_1", NAME, Some("api"));
    f.set_instance_tag(SUB, "rg-b", "flex", "flex_1", PORT, Some("8080"));
    f.set_instance_tag(SUB, "rg-b", "flex", "flex_2", IPORT, Some("9000"));

    // A Flexible set without tags whose members are tagged one by one.
    f.add_scale_set(SUB, "rg-b", "loose", Orchestration::Flexible, "westeurope");
    f.scale_to(SUB, "rg-b", "loose", 3);
    let loose = f.instance_ips(SUB, "rg-b", "loose");
    for m in ["loose_0", "loose_1"] {
        f.set_instance_tag(SUB, "rg-b", "loose", m, NAME, Some("api"));
        f.set_instance_tag(SUB, "rg-b", "loose", m, PORT, Some("8080"));
    }

    // Standalone VMs: one per region, one without a port, one untagged, one denied.
    f.add_vm(SUB, "rg-vms", "vm-east", Some(ip("10.9.0.1")));
    f.set_vm_tag(SUB, "rg-vms", "vm-east", NAME, Some("web"));
    f.set_vm_tag(SUB, "rg-vms", "vm-east", PORT, Some("80"));
    f.add_vm(SUB, "rg-vms", "vm-west", Some(ip("10.9.0.2")));
    f.set_vm_location(SUB, "rg-vms", "vm-west", "westeurope");
    f.set_vm_tag(SUB, "rg-vms", "vm-west", NAME, Some("api"));
    f.set_vm_tag(SUB, "rg-vms", "vm-west", PORT, Some("8080"));
    f.add_vm(SUB, "rg-vms", "vm-noport", Some(ip("10.9.0.3")));
    f.set_vm_tag(SUB, "rg-vms", "vm-noport", NAME, Some("web"));
    f.add_vm(SUB, "rg-vms", "vm-plain", Some(ip("10.9.0.4")));
    f.add_vm(SUB, "rg-vms", "vm-excluded", Some(ip("10.9.0.5")));
    f.set_vm_tag(SUB, "rg-vms", "vm-excluded", NAME, Some("web"));
    f.set_vm_tag(SUB, "rg-vms", "vm-excluded", PORT, Some("80"));
    f.set_vm_tag(
        SUB,
        "rg-vms",
        "vm-excluded",
        "HAProxy:Exclude",
        Some("true"),
    );

    let cfg = template(
        "  - name: azure\n    target: edge\n    resource_group_name: \"*\"\n    \
         tags: {deny: {\"HAProxy:Exclude\": \"true\"}}\n    services: {}\n    \
         register_when: always\n    kind: http\n",
    );
    let (services, unported) = split_of(&tb, &cfg).await;
    let mut west_api = vec![loose[0], loose[1], ip("10.9.0.2")];
    west_api.sort();
    let mut east_web = vec![flex[0], flex[2], ip("10.9.0.1")];
    east_web.sort();
    assert_eq!(
        backends(&services),
        BTreeMap::from([
            ("azure-api-8080-eastus", vec![flex[1]]),
            ("azure-api-8080-westeurope", west_api),
            ("azure-web-80-eastus", east_web),
            ("azure-web-80-westeurope", uni.clone()),
        ])
    );
    assert_eq!(unported.len(), 1, "{unported:?}");
    assert!(
        unported[0].starts_with("vm-noport service web: no tag HAProxy:Service:Port"),
        "{unported:?}"
    );

    // Whole sets keep their capacity; a part of a set has none; members found alone are
    // counted one by one.
    let by = |b: &str| {
        services
            .iter()
            .find(|s| s.backend == b)
            .unwrap_or_else(|| panic!("no {b}"))
    };
    assert_eq!(by("azure-web-80-westeurope").found.capacity(), Some(2));
    assert_eq!(by("azure-web-80-eastus").found.capacity(), None);
    assert_eq!(by("azure-api-8080-westeurope").found.capacity(), Some(3));
    assert_eq!(by("azure-api-8080-westeurope").found.vms.len(), 3);
    assert_eq!(
        by("azure-web-80-eastus").region,
        "eastus",
        "East US, normalised"
    );

    // The instance port tag gives one instance its own port.
    let svc = cfg.upstreams[0].source.services.as_ref().expect("services");
    let east = by("azure-web-80-eastus");
    let reg = Registration {
        port: Some(east.port),
        port_tag: Some(&svc.instance_port_tag),
        when: Some(RegisterWhen::Always),
        params: ServerParams {
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        },
    };
    let (servers, unported) = desired_servers(&east.found, &reg);
    assert!(unported.is_empty());
    let mut want = vec![
        format!("{}:80", flex[0]),
        format!("{}:9000", flex[2]),
        "10.9.0.1:80".to_string(),
    ];
    want.sort();
    assert_eq!(servers.into_keys().collect::<Vec<_>>(), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_selected_set_are_found_once_through_their_set() {
    let tb = Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed");
    let f = tb.fleet();
    f.add_scale_set(SUB, "rg-a", "flex", Orchestration::Flexible, "eastus");
    f.set_tag(SUB, "rg-a", "flex", NAME, Some("web"));
    f.set_tag(SUB, "rg-a", "flex", PORT, Some("80"));
    f.scale_to(SUB, "rg-a", "flex", 2);
    // Tagged like their set: still found through the set only.
    for m in ["flex_0", "flex_1"] {
        f.set_instance_tag(SUB, "rg-a", "flex", m, NAME, Some("web"));
    }
    let cfg = template(
        "  - name: azure\n    target: edge\n    services: {}\n    register_when: always\n    kind: http\n",
    );
    let (services, unported) = split_of(&tb, &cfg).await;
    assert!(unported.is_empty(), "{unported:?}");
    assert_eq!(services.len(), 1);
    assert_eq!(services[0].backend, "azure-web-80-eastus");
    assert_eq!(services[0].found.sets.len(), 1);
    assert!(services[0].found.vms.is_empty());
    assert_eq!(services[0].found.capacity(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_over_named_sets_reads_no_vm_list() {
    let tb = Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed");
    let f = tb.fleet();
    f.add_scale_set(SUB, "rg-a", "web", Orchestration::Uniform, "northeurope");
    f.set_tag(SUB, "rg-a", "web", NAME, Some("web"));
    f.set_tag(SUB, "rg-a", "web", PORT, Some("443"));
    f.scale_to(SUB, "rg-a", "web", 2);
    f.add_scale_set(
        SUB,
        "rg-a",
        "untagged",
        Orchestration::Uniform,
        "northeurope",
    );
    f.scale_to(SUB, "rg-a", "untagged", 1);
    let cfg = template(
        "  - name: lb\n    target: edge\n    virtual_machine_scale_set: [web, untagged]\n    \
         services: {separator: \".\"}\n    register_when: always\n    kind: stream\n",
    );
    let (services, unported) = split_of(&tb, &cfg).await;
    assert!(unported.is_empty(), "{unported:?}");
    assert_eq!(
        backends(&services),
        BTreeMap::from([("lb.web.443.northeurope", f.instance_ips(SUB, "rg-a", "web"))])
    );
    assert!(tb
        .requests_to(vmss_testbed::Service::Arm)
        .iter()
        .all(|r| !r.path.to_ascii_lowercase().ends_with("/virtualmachines")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_found_alone_get_their_instance_views() {
    let tb = Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed");
    let f = tb.fleet();
    f.add_scale_set(SUB, "rg-a", "loose", Orchestration::Flexible, "westeurope");
    f.scale_to(SUB, "rg-a", "loose", 3);
    for m in ["loose_0", "loose_1", "loose_2"] {
        f.set_instance_tag(SUB, "rg-a", "loose", m, NAME, Some("api"));
        f.set_instance_tag(SUB, "rg-a", "loose", m, PORT, Some("8080"));
    }
    f.set_power_state(SUB, "rg-a", "loose", "loose_2", "stopped");
    // Health-aware (the default register_when): the members' views come from the
    // subscription's status list.
    let cfg = template("  - name: azure\n    target: edge\n    services: {}\n    kind: http\n");
    let (services, _) = split_of(&tb, &cfg).await;
    assert_eq!(services.len(), 1);
    let found = &services[0].found;
    assert_eq!(found.vms.len(), 3);
    assert!(found.vms.iter().all(|v| v.view.is_some()), "{found:?}");
    let reg = Registration {
        port: Some(services[0].port),
        port_tag: Some(IPORT),
        when: None,
        params: ServerParams {
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        },
    };
    let (servers, _) = desired_servers(found, &reg);
    assert_eq!(
        servers.len(),
        2,
        "the stopped member is not ready: {servers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_members_found_alone_are_not_read_again_before_they_are_due() {
    let tb = Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed");
    let f = tb.fleet();
    f.add_scale_set(SUB, "rg-a", "loose", Orchestration::Flexible, "westeurope");
    f.scale_to(SUB, "rg-a", "loose", 2);
    for m in ["loose_0", "loose_1"] {
        f.set_instance_tag(SUB, "rg-a", "loose", m, NAME, Some("api"));
    }
    let cfg = template("  - name: azure\n    target: edge\n    services: {}\n    kind: http\n");
    let sel = selection_of(&cfg, &cfg.upstreams[0]);
    let (arm, state) = (client(&tb), DiscoveryState::default());
    let status_reads = || {
        tb.requests_to(vmss_testbed::Service::Arm)
            .iter()
            .filter(|r| r.query.contains("statusOnly"))
            .count()
    };
    for _ in 0..3 {
        let d = discovery::discover(
            &arm,
            &state,
            std::slice::from_ref(&sel),
            &Options::default(),
        )
        .await;
        let found = d.get(&sel).and_then(|r| r.as_ref().ok()).expect("found");
        assert_eq!(found.vms.len(), 2);
        assert!(found.vms.iter().all(|v| v.view.is_some()));
    }
    assert_eq!(status_reads(), 1, "one status read per health_interval");
}
