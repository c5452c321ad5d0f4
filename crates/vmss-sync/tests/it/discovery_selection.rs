//! Selection end to end: lists and globs of scale sets, per-upstream subscription and
//! resource groups, tags on scale sets and standalone VMs, ports from tags, and every
//! resource read once per cycle however many upstreams use it.

use crate::support::common;

use common::*;
use std::collections::BTreeMap;
use vmss_testbed::{Orchestration, Service, TestbedOptions, UpstreamKind};

const SUB2: &str = "00000000-0000-0000-0000-000000000002";

fn set(env: &Env, sub: &str, rg: &str, name: &str, mode: Orchestration, n: usize) -> Vec<String> {
    let f = env.tb.fleet();
    f.add_scale_set(sub, rg, name, mode, "eastus");
    f.scale_to(sub, rg, name, n);
    f.instance_ips(sub, rg, name)
        .iter()
        .map(|ip| format!("{ip}:80"))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn once(env: &Env, ups: &str) -> Output {
    let cfg = env.config("", ups);
    run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_of_scale_sets_feeds_one_upstream() {
    let env = testbed(TestbedOptions::default()).await;
    let a = set(&env, SUB, RG, "blue", Orchestration::Uniform, 2);
    let b = set(&env, SUB, RG, "green", Orchestration::Flexible, 3);
    set(&env, SUB, RG, "other", Orchestration::Uniform, 2);
    env.upstream(UpstreamKind::Http, "app");
    let out = once(
        &env,
        "  - name: app\n    virtual_machine_scale_set: [blue, green]\n    port: 80\n    kind: http\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        env.servers(UpstreamKind::Http, "app"),
        sorted([a, b].concat())
    );
    assert!(
        out.stderr.contains("for group blue,green"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_glob_selects_matching_sets_in_several_resource_groups() {
    let env = testbed(TestbedOptions::default()).await;
    let a = set(&env, SUB, "rg-a", "web-1", Orchestration::Uniform, 2);
    let b = set(&env, SUB, "rg-b", "web-2", Orchestration::Flexible, 2);
    set(&env, SUB, "rg-a", "api-1", Orchestration::Uniform, 2);
    set(&env, SUB, "rg-c", "web-3", Orchestration::Uniform, 2);
    env.upstream(UpstreamKind::Http, "web");
    let out = once(
        &env,
        "  - name: web\n    virtual_machine_scale_set: web-*\n    resource_group_name: [rg-a, rg-b]\n    port: 80\n    kind: http\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        env.servers(UpstreamKind::Http, "web"),
        sorted([a, b].concat()),
        "web-3 is in a resource group the upstream does not name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_upstream_subscription_and_resource_group_override_the_top_level_ones() {
    let env = testbed(TestbedOptions::default()).await;
    let here = set(&env, SUB, RG, "web", Orchestration::Uniform, 2);
    let there = set(&env, SUB2, "rg-east", "web", Orchestration::Flexible, 3);
    env.upstream(UpstreamKind::Http, "here");
    env.upstream(UpstreamKind::Http, "there");
    let out = once(
        &env,
        &format!(
            "{}  - name: there\n    virtual_machine_scale_set: web\n    subscription_id: {SUB2}\n    resource_group_name: rg-east\n    port: 80\n    kind: http\n",
            upstream_yaml("here", "web", 80, "http")
        ),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "here"), sorted(here));
    assert_eq!(env.servers(UpstreamKind::Http, "there"), sorted(there));
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_select_scale_sets_and_standalone_vms_with_allow_and_deny_lists() {
    let env = testbed(TestbedOptions::default()).await;
    let f = env.tb.fleet();
    let web = set(&env, SUB, "rg-a", "web-set", Orchestration::Uniform, 2);
    f.set_tag(SUB, "rg-a", "web-set", "role", Some("web"));
    let flex = set(&env, SUB, "rg-b", "web-flex", Orchestration::Flexible, 2);
    f.set_tag(SUB, "rg-b", "web-flex", "Role", Some("web"));
    set(&env, SUB, "rg-a", "db-set", Orchestration::Uniform, 2);
    f.set_tag(SUB, "rg-a", "db-set", "role", Some("db"));
    set(&env, SUB, "rg-b", "web-maint", Orchestration::Uniform, 2);
    f.set_tag(SUB, "rg-b", "web-maint", "role", Some("web"));
    f.set_tag(SUB, "rg-b", "web-maint", "maintenance", Some("true"));
    f.add_vm(SUB, "rg-vms", "vm-a", Some("10.50.0.1".parse().unwrap()));
    f.set_vm_tag(SUB, "rg-vms", "vm-a", "role", Some("web"));
    f.add_vm(SUB, "rg-vms", "vm-b", Some("10.50.0.2".parse().unwrap()));
    f.set_vm_tag(SUB, "rg-vms", "vm-b", "role", Some("web"));
    f.set_vm_tag(SUB, "rg-vms", "vm-b", "maintenance", Some("true"));
    f.add_vm(SUB, "rg-vms", "vm-c", Some("10.50.0.3".parse().unwrap()));
    f.add_vm(SUB, "rg-vms", "vm-d", Some("10.50.0.4".parse().unwrap()));
    f.set_vm_tag(SUB, "rg-vms", "vm-d", "role", Some("web"));
    f.set_power_state(
        SUB,
        "rg-vms",
        vmss_testbed::STANDALONE_VMS,
        "vm-d",
        "stopped",
    );
    env.upstream(UpstreamKind::Http, "web");
    env.tb.clear_requests();
    let out = once(
        &env,
        "  - name: web\n    resource_group_name: \"*\"\n    tags:\n      allow: {role: web}\n      deny: {maintenance: \"true\"}\n    port: 80\n    kind: http\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        env.servers(UpstreamKind::Http, "web"),
        sorted([web, flex, vec!["10.50.0.1:80".to_string()]].concat()),
        "tagged sets and the running tagged VM; not db, not maintenance, not untagged, not stopped"
    );
    let reqs = env.tb.requests_to(Service::Arm);
    assert!(
        reqs.iter().any(|r| r.query.contains("statusOnly=true")),
        "standalone VMs' power states come from one status list"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_port_comes_from_the_tag_named_in_the_config() {
    let env = testbed(TestbedOptions::default()).await;
    let f = env.tb.fleet();
    set(&env, SUB, RG, "app", Orchestration::Flexible, 3);
    f.set_tag(SUB, RG, "app", "app-port", Some("8080"));
    f.set_instance_tag(SUB, RG, "app", "app_2", "app-port", Some("9090"));
    env.upstream(UpstreamKind::Http, "app");
    let out = once(
        &env,
        "  - name: app\n    virtual_machine_scale_set: app\n    port_tag: app-port\n    kind: http\n",
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ip = |id: &str| f.instance_ip(SUB, RG, "app", id);
    assert_eq!(
        env.servers(UpstreamKind::Http, "app"),
        sorted(vec![
            format!("{}:8080", ip("0")),
            format!("{}:8080", ip("1")),
            format!("{}:9090", ip("2")),
        ]),
        "the VM's own tag wins over the set's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_resource_is_read_once_per_cycle_however_many_upstreams_use_it() {
    let env = testbed(TestbedOptions {
        page_size: 100,
        ..TestbedOptions::default()
    })
    .await;
    let f = env.tb.fleet();
    set(&env, SUB, RG, "web", Orchestration::Uniform, 3);
    set(&env, SUB, RG, "api", Orchestration::Flexible, 3);
    f.set_tag(SUB, RG, "web", "role", Some("front"));
    f.set_tag(SUB, RG, "api", "role", Some("front"));
    for u in ["by-name", "by-list", "by-glob", "by-tags", "by-name-tcp"] {
        env.upstream(UpstreamKind::Http, u);
    }
    env.upstream(UpstreamKind::Stream, "by-name-tcp");
    let ups = "  - name: by-name\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n\
               \x20 - name: by-name-tcp\n    virtual_machine_scale_set: web\n    port: 81\n    kind: stream\n\
               \x20 - name: by-list\n    virtual_machine_scale_set: [web, api]\n    port: 80\n    kind: http\n\
               \x20 - name: by-glob\n    virtual_machine_scale_set: \"*\"\n    port: 80\n    kind: http\n\
               \x20 - name: by-tags\n    virtual_machine_scale_set: \"*\"\n    tags: {allow: {role: front}}\n    port: 80\n    kind: http\n";
    let cfg = env.config("", ups);
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    env.tb.clear_requests();
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in env.tb.requests_to(Service::Arm) {
        *count
            .entry(format!(
                "{}?{}",
                r.path.to_lowercase(),
                r.query.to_lowercase()
            ))
            .or_default() += 1;
    }
    // Everything is read once, the scale set list too: the startup check's read serves
    // the first cycle.
    for (req, n) in &count {
        assert_eq!(*n, 1, "{req} read {n} times: {count:#?}");
    }
    assert_eq!(count.len(), 5, "{count:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_glob_that_matches_nothing_removes_nothing() {
    let env = testbed(TestbedOptions::default()).await;
    set(&env, SUB, RG, "web-1", Orchestration::Uniform, 2);
    env.upstream(UpstreamKind::Http, "web");
    let ups = "  - name: web\n    virtual_machine_scale_set: web-*\n    port: 80\n    kind: http\n    drain_timeout: 0s\n";
    assert_eq!(once(&env, ups).await.code, 0);
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 2);
    env.tb.fleet().remove_scale_set(SUB, RG, "web-1");
    let out = once(&env, ups).await;
    assert_eq!(out.code, 1, "held: {}", out.stdout);
    assert!(out.stderr.contains("Holding removals"), "{}", out.stderr);
    assert_eq!(env.all_servers(UpstreamKind::Http, "web").len(), 2);
}
