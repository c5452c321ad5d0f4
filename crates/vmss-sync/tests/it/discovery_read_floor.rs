//! ARM reads at the floor, per selection shape: a start (the startup check and the first
//! cycle) reads every resource exactly once, a steady cycle with instance views due the
//! same but each Uniform set's NIC list (its views show the members unchanged and
//! settled), and the subscription's VM status list only when a selection takes a
//! standalone VM. The formulas are those of `docs/benchmarks.md`; pages are kept out of the count
//! (one page per list) so that each list is one read.

use crate::support::common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;
use vmss_sync::reconcile::Mode;
use vmss_testbed::{Orchestration, Service, TestbedOptions, UpstreamKind};

/// A testbed whose lists fit in one page.
async fn fleet() -> Env {
    testbed(TestbedOptions {
        page_size: 1000,
        ..TestbedOptions::default()
    })
    .await
}

fn set(env: &Env, rg: &str, name: &str, mode: Orchestration, n: usize) {
    let f = env.tb.fleet();
    f.add_scale_set(SUB, rg, name, mode, "eastus");
    f.scale_to(SUB, rg, name, n);
}

/// ARM reads since the last clear, by operation (method, path shape, query).
fn reads(env: &Env) -> (usize, BTreeMap<String, usize>) {
    let mut by = BTreeMap::new();
    let reqs = env.tb.requests_to(Service::Arm);
    for r in &reqs {
        let path: Vec<&str> = r.path.split('/').collect();
        let shape: Vec<&str> = path
            .iter()
            .enumerate()
            .map(|(i, s)| if i % 2 == 0 && i > 2 { "…" } else { s })
            .collect();
        let query: Vec<&str> = r
            .query
            .split('&')
            .filter(|q| !q.starts_with("api-version"))
            .collect();
        *by.entry(format!(
            "{} {}?{}",
            r.method,
            shape.join("/"),
            query.join("&")
        ))
        .or_insert(0) += 1;
    }
    (reqs.len(), by)
}

/// Runs a start (startup check and first cycle), then a steady cycle with views due;
/// returns the reads of each.
async fn start_and_steady(env: &Env, upstreams: &str) -> (usize, usize, String) {
    let path = env.config("health_interval: 1ms\n", upstreams);
    let rec = env.reconciler_from(&path);
    env.tb.clear_requests();
    let problems = rec.startup_check().await;
    assert!(problems.is_empty(), "{problems:?}");
    let report = rec.reconcile(Mode::Apply).await;
    assert!(report.all_in_sync(), "{:?}", report.outcomes);
    let (start, by_start) = reads(env);
    tokio::time::sleep(Duration::from_millis(5)).await;
    env.tb.clear_requests();
    let report = rec.reconcile(Mode::Apply).await;
    assert!(report.all_in_sync(), "{:?}", report.outcomes);
    let (steady, by_steady) = reads(env);
    (
        start,
        steady,
        format!("start: {by_start:#?}\nsteady: {by_steady:#?}"),
    )
}

fn upstream(name: &str, selection: &str) -> String {
    format!("  - name: {name}\n{selection}    port: 80\n    kind: http\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_named_uniform_set_reads_one_get_and_two_lists_once_at_start_and_per_cycle() {
    let env = fleet().await;
    set(&env, RG, "web", Orchestration::Uniform, 3);
    env.upstream(UpstreamKind::Http, "web");
    let (start, steady, why) = start_and_steady(
        &env,
        &upstream("web", "    virtual_machine_scale_set: web\n"),
    )
    .await;
    // 1 GET of the set + its NIC list + its VM list with instance views; a steady cycle
    // whose views show the same settled members keeps the addresses of that NIC list.
    assert_eq!(start, 3, "{why}");
    assert_eq!(steady, 2, "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn named_sets_in_one_group_read_the_group_list_once_and_each_set_s_members() {
    let env = fleet().await;
    set(&env, RG, "a", Orchestration::Uniform, 2);
    set(&env, RG, "b", Orchestration::Uniform, 2);
    set(&env, RG, "c", Orchestration::Flexible, 2);
    set(&env, RG, "d", Orchestration::Flexible, 2);
    let mut ups = String::new();
    for n in ["a", "b", "c", "d"] {
        env.upstream(UpstreamKind::Http, n);
        ups.push_str(&upstream(
            n,
            &format!("    virtual_machine_scale_set: {n}\n"),
        ));
    }
    // A fifth upstream on two of the same sets reads nothing more.
    env.upstream(UpstreamKind::Http, "ab");
    ups.push_str(&upstream("ab", "    virtual_machine_scale_set: [a, c]\n"));
    let (start, steady, why) = start_and_steady(&env, &ups).await;
    // 1 group list + 2 per Uniform set + 1 filtered VM list per Flexible set + 1 NIC list
    // of the group holding the Flexible members' NICs.
    let floor = 1 + 2 * 2 + 2 + 1;
    assert_eq!(start, floor, "{why}");
    assert_eq!(steady, floor - 2, "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_glob_over_two_groups_reads_each_group_list_and_each_matched_set_s_members() {
    let env = fleet().await;
    set(&env, "rg-a", "web-1", Orchestration::Uniform, 2);
    set(&env, "rg-a", "db-1", Orchestration::Uniform, 2);
    set(&env, "rg-b", "web-2", Orchestration::Flexible, 2);
    env.upstream(UpstreamKind::Http, "web");
    let (start, steady, why) = start_and_steady(
        &env,
        &upstream(
            "web",
            "    resource_group_name: [rg-a, rg-b]\n    virtual_machine_scale_set: \"web-*\"\n",
        ),
    )
    .await;
    // 2 group lists + 2 (Uniform web-1) + 1 + 1 (Flexible web-2 and rg-b's NIC list).
    assert_eq!(start, 6, "{why}");
    assert_eq!(steady, 5, "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_without_standalone_vms_read_no_vm_status_list() {
    let env = fleet().await;
    set(&env, "rg-a", "web", Orchestration::Uniform, 2);
    env.tb
        .fleet()
        .set_tag(SUB, "rg-a", "web", "role", Some("web"));
    set(&env, "rg-a", "db", Orchestration::Uniform, 2);
    env.upstream(UpstreamKind::Http, "web");
    let (start, steady, why) = start_and_steady(
        &env,
        &upstream(
            "web",
            "    resource_group_name: \"*\"\n    tags: {allow: {role: web}}\n",
        ),
    )
    .await;
    // The subscription's scale set list and VM list + 2 for the tagged Uniform set; no
    // `statusOnly` list, since no VM is taken alone.
    assert_eq!(start, 4, "{why}");
    assert_eq!(steady, 3, "{why}");
    assert!(!why.contains("statusOnly"), "{why}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_with_a_standalone_vm_add_its_nic_group_list_and_one_vm_status_list() {
    let env = fleet().await;
    set(&env, "rg-a", "web", Orchestration::Uniform, 2);
    let f = env.tb.fleet();
    f.set_tag(SUB, "rg-a", "web", "role", Some("web"));
    f.add_vm(SUB, "rg-vms", "vm-a", Some("10.50.0.1".parse().unwrap()));
    f.set_vm_tag(SUB, "rg-vms", "vm-a", "role", Some("web"));
    f.add_vm(SUB, "rg-vms", "vm-b", Some("10.50.0.2".parse().unwrap()));
    env.upstream(UpstreamKind::Http, "web");
    let (start, steady, why) = start_and_steady(
        &env,
        &upstream(
            "web",
            "    resource_group_name: \"*\"\n    tags: {allow: {role: web}}\n",
        ),
    )
    .await;
    // 4 as without standalone VMs + rg-vms's NIC list + the subscription's status list.
    assert_eq!(start, 6, "{why}");
    assert_eq!(steady, 5, "{why}");
    assert_eq!(why.matches("statusOnly=true").count(), 2, "{why}");
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 3);
}

/// A reconciler for `upstreams` with instance views due at every cycle.
fn reconciler(env: &Env, upstreams: &str) -> vmss_sync::reconcile::Reconciler {
    let path = env.config("health_interval: 1ms\n", upstreams);
    env.reconciler_from(&path)
}

/// NIC list reads of the last cycle.
fn nic_reads(env: &Env) -> usize {
    env.tb
        .requests_to(Service::Arm)
        .iter()
        .filter(|r| r.path.contains("/networkInterfaces"))
        .count()
}

async fn cycle(env: &Env, rec: &vmss_sync::reconcile::Reconciler) -> usize {
    tokio::time::sleep(Duration::from_millis(5)).await;
    env.tb.clear_requests();
    let report = rec.reconcile(Mode::Apply).await;
    assert!(report.all_in_sync(), "{:?}", report.outcomes);
    nic_reads(env)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_uniform_set_s_nic_list_is_read_again_only_when_its_instance_views_show_a_change() {
    let env = fleet().await;
    set(&env, RG, "web", Orchestration::Uniform, 3);
    env.upstream(UpstreamKind::Http, "web");
    let rec = reconciler(
        &env,
        &upstream("web", "    virtual_machine_scale_set: web\n"),
    );
    assert!(rec.startup_check().await.is_empty());
    assert_eq!(cycle(&env, &rec).await, 1, "the first cycle reads the NICs");
    // Same members, all Succeeded: the views read says so, the addresses are kept.
    assert_eq!(cycle(&env, &rec).await, 0, "unchanged members: no NIC list");
    assert_eq!(cycle(&env, &rec).await, 0);
    // A new member: read in the same cycle, and synced.
    let f = env.tb.fleet();
    f.scale_to(SUB, RG, "web", 4);
    assert_eq!(cycle(&env, &rec).await, 1, "a new member: the NIC list");
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert_eq!(cycle(&env, &rec).await, 0);
    // A member being updated (its NIC could change): the NIC list, until the update
    // has been seen finished at two reads.
    f.set_provisioning_state(SUB, RG, "web", "1", "Updating");
    assert_eq!(cycle(&env, &rec).await, 1, "a member Updating");
    f.set_provisioning_state(SUB, RG, "web", "1", "Succeeded");
    assert_eq!(
        cycle(&env, &rec).await,
        1,
        "Succeeded now, not at the last read"
    );
    assert_eq!(cycle(&env, &rec).await, 0, "settled");
    // A member gone: read, and removed.
    f.scale_to(SUB, RG, "web", 3);
    assert_eq!(cycle(&env, &rec).await, 1, "a member gone");
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_instance_views_due_a_cycle_reads_the_nic_list_for_the_members() {
    let env = fleet().await;
    set(&env, RG, "web", Orchestration::Uniform, 2);
    env.upstream(UpstreamKind::Http, "web");
    // health_interval far longer than the cycles: membership comes from the NIC list.
    let path = env.config(
        "health_interval: 1h\n",
        &upstream("web", "    virtual_machine_scale_set: web\n"),
    );
    let rec = env.reconciler_from(&path);
    assert!(rec.startup_check().await.is_empty());
    assert_eq!(cycle(&env, &rec).await, 1);
    assert_eq!(
        cycle(&env, &rec).await,
        1,
        "no views this cycle: the NIC list"
    );
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    assert_eq!(cycle(&env, &rec).await, 1);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
}
