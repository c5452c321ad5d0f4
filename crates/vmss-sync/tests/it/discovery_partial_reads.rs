//! Partial reads judged per scale set, end to end through the real binary, the fake ARM
//! and the fake NGINX Plus: an empty or missing piece of one set's membership read (its
//! NIC list, its member list, its instance views) keeps that set's servers exactly as
//! they are, while the other sets of the same upstream go on syncing; and a server that
//! such a read would have drained still drains for the whole `drain_timeout` once its
//! instance really leaves.

use crate::support::common;

use common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{Fault, Orchestration, Service, TestbedOptions, UpstreamKind};

const HTTP: UpstreamKind = UpstreamKind::Http;

fn flexible(env: &Env, set: &str, n: usize) {
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, set, Orchestration::Flexible, "eastus");
    env.tb.fleet().scale_to(SUB, RG, set, n);
}

/// One upstream `pool` fed by the named sets, draining for `drain` seconds, instance
/// views read every second.
fn pool_config(env: &Env, sets: &str, drain: u64) -> std::path::PathBuf {
    env.config(
        "health_interval: 1s\n",
        &format!(
            "  - name: pool\n    virtual_machine_scale_set: [{sets}]\n    port: 80\n    kind: http\n    drain_timeout: {drain}s\n"
        ),
    )
}

fn all_ips(env: &Env, sets: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = sets.iter().flat_map(|s| env.ips(s, 80)).collect();
    v.sort();
    v
}

/// Starts the daemon and waits until `pool` holds every instance of `sets`.
async fn synced(env: &Env, cfg: &std::path::Path, sets: &[&str]) -> Daemon {
    let d = Daemon::run(env, cfg).spawn();
    let want = all_ips(env, sets);
    assert!(
        eventually(Duration::from_secs(20), || env.servers(HTTP, "pool")
            == want)
        .await,
        "never in sync: {:?}\n{}",
        env.all_servers(HTTP, "pool"),
        d.log_text()
    );
    d
}

/// Asserts `pool` holds exactly `want`, every one active, for `period` (checked every
/// 100 ms).
async fn stays(env: &Env, d: &Daemon, want: &[String], period: Duration) {
    let end = Instant::now() + period;
    while Instant::now() < end {
        assert_eq!(
            env.all_servers(HTTP, "pool"),
            want,
            "a server was added or removed\n{}",
            d.log_text()
        );
        assert!(
            env.draining(HTTP, "pool").is_empty(),
            "drained: {:?}\n{}",
            env.draining(HTTP, "pool"),
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop(mut d: Daemon) {
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0, "{}", d.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_instance_view_list_keeps_every_server_of_the_set() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 10);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web", 2);
    let d = synced(&env, &cfg, &["web"]).await;
    let before = env.all_servers(HTTP, "pool");
    // The VM list with $expand=instanceView answers 200 {"value": []}; the NIC list is
    // complete and the capacity is 10. The set has no health source.
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/virtualMachines",
        Fault::EmptyList,
        usize::MAX,
    );
    d.expect_logged("Not using this read of scale set rg-web/web (subscription 00000000-0000-0000-0000-000000000001): 10 of its 10 members came without an instance view", Duration::from_secs(15)).await;
    // Longer than drain_timeout: nothing drained, nothing removed.
    stays(&env, &d, &before, Duration::from_secs(4)).await;
    // Once the views are back, the set syncs again: a real leave drains.
    env.tb.faults().clear();
    let leaving = format!("{}:80", env.tb.fleet().instance_ip(SUB, RG, "web", "9"));
    env.tb.fleet().remove_instance(SUB, RG, "web", "9");
    d.until(
        Duration::from_secs(15),
        "env.draining(HTTP, \"pool\") == vec![leaving.clone()]",
        || env.draining(HTTP, "pool") == vec![leaving.clone()],
    )
    .await;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_instance_views_in_any_form_keep_the_sets_servers() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 10);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web", 2);
    let d = synced(&env, &cfg, &["web"]).await;
    let before = env.all_servers(HTTP, "pool");
    // One member's item is missing from the VM list read with its views.
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/virtualMachines",
        Fault::DropItems {
            id_contains: "/virtualMachines/3".into(),
        },
        usize::MAX,
    );
    d.expect_logged(
        "1 of its 10 members came without an instance view",
        Duration::from_secs(15),
    )
    .await;
    stays(&env, &d, &before, Duration::from_secs(4)).await;
    // Every item is there but without its instanceView field.
    env.tb.faults().clear();
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/virtualMachines",
        Fault::DropField {
            field: "instanceView".into(),
        },
        usize::MAX,
    );
    d.expect_logged(
        "10 of its 10 members came without an instance view",
        Duration::from_secs(15),
    )
    .await;
    stays(&env, &d, &before, Duration::from_secs(4)).await;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_nic_list_of_a_uniform_set_keeps_its_servers_while_the_flexible_set_syncs() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    flexible(&env, "flex", 7);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web, flex", 2);
    let d = synced(&env, &cfg, &["web", "flex"]).await;
    let web = env.ips("web", 80);
    // 3 of 10 is less than half of the upstream: a guard per upstream lets it through.
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/networkInterfaces",
        Fault::EmptyList,
        usize::MAX,
    );
    d.expect_logged("Not using this read of scale set rg-web/web (subscription 00000000-0000-0000-0000-000000000001): the read found no instances, but its capacity is 3 (3 members at the last read used)", Duration::from_secs(15)).await;
    // The other set of the same upstream goes on: its new instance is added.
    env.tb.fleet().scale_to(SUB, RG, "flex", 8);
    let want = {
        let mut v = web.clone();
        v.extend(env.ips("flex", 80));
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(10), || env.all_servers(HTTP, "pool")
            == want)
        .await,
        "{:?}\n{}",
        env.all_servers(HTTP, "pool"),
        d.log_text()
    );
    stays(&env, &d, &want, Duration::from_secs(4)).await;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_member_list_of_a_flexible_set_keeps_its_servers_while_the_uniform_set_syncs() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 7);
    flexible(&env, "flex", 3);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web, flex", 2);
    let d = synced(&env, &cfg, &["web", "flex"]).await;
    // The filtered VM list of the Flexible set (same path as the group's VM list, told
    // apart by its $filter) answers 200 {"value": []}: 3 of 10 is less than half of the
    // upstream, so a guard per upstream lets it through.
    env.tb.faults().inject_where(
        Service::Arm,
        "/providers/Microsoft.Compute/virtualMachines",
        "/virtualmachinescalesets/flex'",
        Fault::EmptyList,
        usize::MAX,
    );
    d.expect_logged("Not using this read of scale set rg-web/flex (subscription 00000000-0000-0000-0000-000000000001): the read found no instances, but its capacity is 3 (3 members at the last read used)", Duration::from_secs(15)).await;
    env.tb.fleet().scale_to(SUB, RG, "web", 8);
    let want = all_ips(&env, &["web", "flex"]);
    assert!(
        eventually(Duration::from_secs(10), || env.all_servers(HTTP, "pool")
            == want)
        .await,
        "{:?}\n{}",
        env.all_servers(HTTP, "pool"),
        d.log_text()
    );
    stays(&env, &d, &want, Duration::from_secs(4)).await;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_leaves_after_a_failed_read_drains_for_the_whole_drain_timeout() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    flexible(&env, "flex", 7);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web, flex", 4);
    let d = synced(&env, &cfg, &["web", "flex"]).await;
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/networkInterfaces",
        Fault::EmptyList,
        usize::MAX,
    );
    d.expect_logged(
        "Not using this read of scale set rg-web/web",
        Duration::from_secs(15),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The instance really leaves now, and the NIC list is right again.
    let leaving = format!("{}:80", env.tb.fleet().instance_ip(SUB, RG, "web", "1"));
    env.tb.fleet().remove_instance(SUB, RG, "web", "1");
    let left = Instant::now();
    env.tb.faults().clear();
    assert!(
        eventually(Duration::from_secs(20), || !env
            .all_servers(HTTP, "pool")
            .contains(&leaving))
        .await,
        "never removed\n{}",
        d.log_text()
    );
    let drained_for = left.elapsed();
    assert!(
        drained_for >= Duration::from_secs(4),
        "removed {drained_for:?} after its instance left, drain_timeout 4s\n{}",
        d.log_text()
    );
    assert_eq!(
        env.all_servers(HTTP, "pool"),
        all_ips(&env, &["web", "flex"])
    );
    assert!(env.draining(HTTP, "pool").is_empty());
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_started_by_a_plausible_wrong_read_is_cancelled_and_a_real_leave_later_drains_for_the_whole_drain_timeout(
) {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 10);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web", 3);
    let d = synced(&env, &cfg, &["web"]).await;
    // One NIC missing from the list while the set's capacity says 9 too: a plausible
    // read (it agrees with the capacity), so the server drains.
    let wrong = format!("{}:80", env.tb.fleet().instance_ip(SUB, RG, "web", "3"));
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 9);
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/networkInterfaces",
        Fault::DropItems {
            id_contains: "/virtualMachines/3/".into(),
        },
        usize::MAX,
    );
    d.until(
        Duration::from_secs(10),
        "env.draining(HTTP, \"pool\") == vec![wrong.clone()]",
        || env.draining(HTTP, "pool") == vec![wrong.clone()],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The read proves wrong: the instance is there and ready. The drain is cancelled.
    env.tb.faults().clear();
    assert!(
        eventually(Duration::from_secs(10), || env
            .draining(HTTP, "pool")
            .is_empty()
            && env.servers(HTTP, "pool").contains(&wrong))
        .await,
        "never restored\n{}",
        d.log_text()
    );
    // It really leaves now: a whole drain_timeout from now, not from the first drain.
    env.tb.fleet().remove_instance(SUB, RG, "web", "3");
    let left = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || !env
            .all_servers(HTTP, "pool")
            .contains(&wrong))
        .await,
        "never removed\n{}",
        d.log_text()
    );
    assert!(
        left.elapsed() >= Duration::from_secs(3),
        "removed {:?} after its instance left, drain_timeout 3s\n{}",
        left.elapsed(),
        d.log_text()
    );
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn flexible_members_listed_without_their_instance_view_keep_the_sets_servers() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    flexible(&env, "flex", 6);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web, flex", 2);
    let d = synced(&env, &cfg, &["web", "flex"]).await;
    env.tb.faults().inject_where(
        Service::Arm,
        "/providers/Microsoft.Compute/virtualMachines",
        "/virtualmachinescalesets/flex'",
        Fault::DropField {
            field: "instanceView".into(),
        },
        usize::MAX,
    );
    d.expect_logged("Not using this read of scale set rg-web/flex (subscription 00000000-0000-0000-0000-000000000001): 6 of its 6 members came without an instance view", Duration::from_secs(15)).await;
    // The Uniform set of the same upstream goes on.
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    let want = all_ips(&env, &["web", "flex"]);
    assert!(
        eventually(Duration::from_secs(10), || env.all_servers(HTTP, "pool")
            == want)
        .await,
        "{:?}\n{}",
        env.all_servers(HTTP, "pool"),
        d.log_text()
    );
    stays(&env, &d, &want, Duration::from_secs(3)).await;
    stop(d).await;
}

/// A Flexible set `flex` of capacity 8 whose members are `flex_6` … `flex_13`, so that
/// dropping the items whose id contains `/virtualMachines/flex_1` from its member list
/// drops exactly half of them (`flex_10` … `flex_13`).
fn flexible_of_eight(env: &Env) {
    flexible(env, "flex", 14);
    for id in 0..6 {
        env.tb
            .fleet()
            .remove_instance(SUB, RG, "flex", &id.to_string());
    }
    assert_eq!(env.ips("flex", 80).len(), 8);
}

fn half_of_flex_missing(env: &Env) {
    env.tb.faults().inject_where(
        Service::Arm,
        "/providers/Microsoft.Compute/virtualMachines",
        "/virtualmachinescalesets/flex'",
        Fault::DropItems {
            id_contains: "/virtualMachines/flex_1".into(),
        },
        usize::MAX,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn right_after_a_restart_a_flexible_read_of_exactly_half_its_capacity_drains_nothing() {
    let env = testbed(TestbedOptions::default()).await;
    flexible_of_eight(&env);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "flex", 2);
    // The target holds the set's 8 servers; vmss-sync restarts (no earlier read).
    let d = synced(&env, &cfg, &["flex"]).await;
    let before = env.all_servers(HTTP, "pool");
    assert_eq!(before.len(), 8);
    stop(d).await;
    half_of_flex_missing(&env);
    let d = Daemon::run(&env, &cfg).spawn();
    // Several cycles, longer than drain_timeout: nothing drained, nothing removed.
    stays(&env, &d, &before, Duration::from_secs(5)).await;
    d.expect_logged("Using this read of scale set rg-web/flex (subscription 00000000-0000-0000-0000-000000000001) only to add: the read found 4 instances, fewer than its capacity of 8 and fewer than before (no earlier read used)", Duration::from_secs(15)).await;
    // The same short read again and again (the fault persists): still nothing leaves.
    assert!(
        d.log_text()
            .matches("only to add: the read found 4 instances")
            .count()
            >= 3,
        "{}",
        d.log_text()
    );
    // Once the read is whole again, a real leave drains.
    env.tb.faults().clear();
    let leaving = format!("{}:80", env.tb.fleet().instance_ip(SUB, RG, "flex", "7"));
    env.tb.fleet().remove_instance(SUB, RG, "flex", "7");
    assert!(
        eventually(Duration::from_secs(15), || env.draining(HTTP, "pool")
            == vec![leaving.clone()])
        .await,
        "{}",
        d.log_text()
    );
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_short_read_after_a_used_one_adds_new_members_but_drains_none() {
    let env = testbed(TestbedOptions::default()).await;
    flexible_of_eight(&env);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "flex", 2);
    let d = synced(&env, &cfg, &["flex"]).await;
    let before = env.all_servers(HTTP, "pool");
    half_of_flex_missing(&env);
    stays(&env, &d, &before, Duration::from_secs(4)).await;
    d.expect_logged("only to add: the read found 4 instances, fewer than its capacity of 8 and fewer than before (8 members at the last read used)", Duration::from_secs(15)).await;
    // A scale-out to 15 while the reads stay short: flex_14 … flex_20 boot, the fault
    // drops flex_14 … flex_19 too, so the read finds 5 of 15 (still short) with one new
    // member, flex_20. It is added; none of the members the read misses is drained.
    env.tb.fleet().scale_to(SUB, RG, "flex", 15);
    let new = env.tb.fleet().instance_ip(SUB, RG, "flex", "20");
    let want = {
        let mut v = before.clone();
        v.push(format!("{new}:80"));
        v.sort();
        v
    };
    assert!(
        eventually(Duration::from_secs(10), || env.all_servers(HTTP, "pool")
            == want)
        .await,
        "the new member was never added: {:?}\n{}",
        env.all_servers(HTTP, "pool"),
        d.log_text()
    );
    stays(&env, &d, &want, Duration::from_secs(3)).await;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_instance_set_whose_one_member_lacks_an_address_at_start_up_gets_the_other_registered(
) {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web", 2);
    // Instance 1's NIC is missing from the set's NIC list: it has no address.
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/networkInterfaces",
        Fault::DropItems {
            id_contains: "/virtualMachines/1/".into(),
        },
        usize::MAX,
    );
    let d = Daemon::run(&env, &cfg).spawn();
    let other = vec![format!(
        "{}:80",
        env.tb.fleet().instance_ip(SUB, RG, "web", "0")
    )];
    assert!(
        eventually(Duration::from_secs(15), || env.all_servers(HTTP, "pool")
            == other)
        .await,
        "the member with an address was never registered: {:?}\n{}",
        env.all_servers(HTTP, "pool"),
        d.log_text()
    );
    assert!(
        d.log_text()
            .contains("only to add: the read found 1 instances, fewer than its capacity of 2"),
        "{}",
        d.log_text()
    );
    stays(&env, &d, &other, Duration::from_secs(2)).await;
    env.tb.faults().clear();
    let both = all_ips(&env, &["web"]);
    assert!(
        eventually(Duration::from_secs(10), || env.servers(HTTP, "pool")
            == both)
        .await,
        "{}",
        d.log_text()
    );
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_sets_read_history_so_a_short_read_right_after_it_drains_nothing() {
    let env = testbed(TestbedOptions::default()).await;
    flexible_of_eight(&env);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "flex", 2);
    let d = synced(&env, &cfg, &["flex"]).await;
    let before = env.all_servers(HTTP, "pool");
    // SIGHUP, and the set's member list comes back with half its members.
    half_of_flex_missing(&env);
    d.signal("HUP");
    d.expect_logged("Configuration reloaded.", Duration::from_secs(15))
        .await;
    stays(&env, &d, &before, Duration::from_secs(4)).await;
    // After the reload the read is judged against the history of before it (8 members
    // at the last read used), not as right after a start.
    let after_reload = d
        .log_text()
        .split("Configuration reloaded.")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    assert!(
        after_reload.contains(
            "only to add: the read found 4 instances, fewer than its capacity of 8 and fewer \
             than before (8 members at the last read used)"
        ) && !after_reload.contains("no earlier read used"),
        "the reload forgot the set's reads:\n{}",
        d.log_text()
    );
    // An empty list right after another reload: held, nothing drained.
    env.tb.faults().clear();
    env.tb.faults().inject_where(
        Service::Arm,
        "/providers/Microsoft.Compute/virtualMachines",
        "/virtualmachinescalesets/flex'",
        Fault::EmptyList,
        usize::MAX,
    );
    d.signal("HUP");
    d.expect_logged(
        "the read found no instances, but its capacity is 8 (8 members at the last read used)",
        Duration::from_secs(15),
    )
    .await;
    stays(&env, &d, &before, Duration::from_secs(3)).await;
    stop(d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_list_cut_short_that_still_finds_most_members_drains_none_while_the_capacity_counts_them()
{
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 6);
    env.upstream(HTTP, "pool");
    let cfg = pool_config(&env, "web", 2);
    let d = synced(&env, &cfg, &["web"]).await;
    let before = env.all_servers(HTTP, "pool");
    // The set's NIC list comes back without its last member, as a list whose last page
    // answered `{"value": []}` would (the chaos soak, seed 0x5eed0040, lost 2 of 6 so):
    // 5 of 6, more than half, while the capacity still says 6.
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/networkInterfaces",
        Fault::DropItems {
            id_contains: "/virtualMachines/5/".into(),
        },
        usize::MAX,
    );
    stays(&env, &d, &before, Duration::from_secs(4)).await;
    d.expect_logged("only to add: the read found 5 instances, fewer than its capacity of 6 and fewer than before (6 members at the last read used)", Duration::from_secs(15)).await;
    // A real scale-in lowers the capacity first: its instance drains at once.
    env.tb.faults().clear();
    env.tb.fleet().scale_to(SUB, RG, "web", 5);
    let leaving: Vec<String> = before
        .iter()
        .filter(|s| !env.ips("web", 80).contains(s))
        .cloned()
        .collect();
    assert_eq!(leaving.len(), 1);
    assert!(
        eventually(Duration::from_secs(10), || env.draining(HTTP, "pool")
            == leaving)
        .await,
        "{}",
        d.log_text()
    );
    stop(d).await;
}
