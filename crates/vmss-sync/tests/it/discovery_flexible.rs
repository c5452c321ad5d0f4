//! Flexible scale sets end to end through the real binary: membership from one filtered
//! VM list per set, addresses from the NIC list of each resource group holding the NICs,
//! never one read per VM or NIC.

use crate::support::common;

use common::*;
use vmss_testbed::{Fault, Orchestration, Service, TestbedOptions, UpstreamKind};

fn flexible(env: &Env, set: &str, n: usize) {
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, set, Orchestration::Flexible, "eastus");
    env.tb.fleet().scale_to(SUB, RG, set, n);
}

fn arm_paths(env: &Env) -> Vec<String> {
    env.tb
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::Arm)
        .map(|r| r.path.to_lowercase())
        .collect()
}

/// ARM requests of one `once` run (startup check included).
async fn reads_of_one_run(page_size: usize, instances: usize) -> usize {
    let env = testbed(TestbedOptions {
        page_size,
        ..TestbedOptions::default()
    })
    .await;
    flexible(&env, "flex", instances);
    env.upstream(UpstreamKind::Http, "flex");
    let cfg = env.config("", &upstream_yaml("flex", "flex", 80, "http"));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "flex").len(), instances);
    env.arm_requests()
}

#[tokio::test(flavor = "multi_thread")]
async fn flexible_reads_do_not_grow_with_the_instance_count() {
    let small = reads_of_one_run(500, 3).await;
    let large = reads_of_one_run(500, 300).await;
    assert_eq!(small, large, "3 and 300 instances cost the same reads");
    // One GET (the startup check's, which serves the cycle), one VM list, one NIC list.
    assert_eq!(small, 3);
    // nginx-asg-sync would read 1 + 1 + 2 × 300 = 602 times per cycle for 300.
}

#[tokio::test(flavor = "multi_thread")]
async fn flexible_nic_in_another_resource_group_is_found_by_its_id() {
    let env = testbed(TestbedOptions::default()).await;
    flexible(&env, "flex", 4);
    env.tb
        .fleet()
        .move_nics(SUB, RG, "flex", "flex_1", "rg-network");
    env.tb
        .fleet()
        .move_nics(SUB, RG, "flex", "flex_3", "rg-network");
    env.upstream(UpstreamKind::Http, "flex");
    let cfg = env.config("", &upstream_yaml("flex", "flex", 80, "http"));
    env.tb.clear_requests();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "flex"), env.ips("flex", 80));
    let paths = arm_paths(&env);
    let other_rg_nic_pages = paths
        .iter()
        .filter(|p| {
            p.contains("/resourcegroups/rg-network/providers/microsoft.network/networkinterfaces")
        })
        .count();
    assert_eq!(
        other_rg_nic_pages, 1,
        "the other group is listed once: {paths:?}"
    );
    assert!(
        paths.iter().all(|p| !p.contains("/networkinterfaces/")),
        "no NIC GET: {paths:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn flexible_vm_with_two_nics_is_registered_once_by_its_primary_nic() {
    let env = testbed(TestbedOptions::default()).await;
    flexible(&env, "flex", 2);
    env.tb
        .fleet()
        .add_secondary_nic(SUB, RG, "flex", "flex_0", "10.99.0.9".parse().unwrap());
    env.upstream(UpstreamKind::Http, "flex");
    let cfg = env.config("", &upstream_yaml("flex", "flex", 80, "http"));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let servers = env.servers(UpstreamKind::Http, "flex");
    assert_eq!(servers, env.ips("flex", 80));
    assert!(!servers.contains(&"10.99.0.9:80".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_nic_list_page_removes_no_server_of_a_flexible_set() {
    let env = testbed(TestbedOptions::default()).await;
    flexible(&env, "flex", 6);
    env.upstream(UpstreamKind::Http, "flex");
    let cfg = env.config(
        "",
        &format!(
            "{}    drain_timeout: 0s\n",
            upstream_yaml("flex", "flex", 80, "http")
        ),
    );
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    let before = env.servers(UpstreamKind::Http, "flex");
    env.tb.fleet().scale_to(SUB, RG, "flex", 4);
    env.tb.faults().inject(
        Service::Arm,
        "Microsoft.Network/networkInterfaces",
        Fault::FailPage {
            page: 1,
            status: 400,
        },
        usize::MAX,
    );
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("Couldn't get the IP addresses for flex"),
        "{}",
        out.stderr
    );
    assert_eq!(env.all_servers(UpstreamKind::Http, "flex"), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn uniform_and_flexible_sets_in_one_resource_group_share_its_nic_list() {
    let env = testbed(TestbedOptions::default()).await;
    flexible(&env, "flex-a", 3);
    flexible(&env, "flex-b", 2);
    env.uniform("uni", 2);
    for u in ["flex-a", "flex-b", "uni"] {
        env.upstream(UpstreamKind::Http, u);
    }
    let ups = format!(
        "{}{}{}",
        upstream_yaml("flex-a", "flex-a", 80, "http"),
        upstream_yaml("flex-b", "flex-b", 80, "http"),
        upstream_yaml("uni", "uni", 80, "http"),
    );
    let cfg = env.config("", &ups);
    env.tb.clear_requests();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for u in ["flex-a", "flex-b", "uni"] {
        assert_eq!(env.servers(UpstreamKind::Http, u), env.ips(u, 80), "{u}");
    }
    let paths = arm_paths(&env);
    let nic_list_requests = paths
        .iter()
        .filter(|p| p.ends_with("/microsoft.network/networkinterfaces"))
        .count();
    // 5 Flexible NICs in pages of 2: 3 pages, read once for both sets.
    assert_eq!(nic_list_requests, 3, "{paths:?}");
}
