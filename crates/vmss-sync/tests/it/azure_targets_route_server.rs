//! The Azure Route Server target through the real binary against the testbed's fake
//! `virtualHubs/{hub}/bgpConnections`: one peering per instance, written one at a time and
//! followed to the end of each long-running operation; people's peerings untouched; the
//! peering limit; 409 conflicts and operations that never finish, then recovery.

use crate::support::common;
use crate::support::ops_common;

use common::*;
use ops_common::{get, sample};
use std::time::Duration;
use vmss_testbed::{LroHeaders, Orchestration, Service, TestbedOptions};

const HUB: &str = "rs-1";
const ASN: u64 = 65010;

fn target(extra: &str) -> String {
    format!(
        "targets:\n  rs:\n    type: azure_route_server\n    subscription: {SUB}\n    resource_group: {RG}\n    virtual_hub: {HUB}\n    peer_asn: {ASN}\n{extra}"
    )
}

fn upstream() -> String {
    "  - name: nva\n    virtual_machine_scale_set: nva\n    port: 179\n    kind: stream\n    target: rs\n    drain_timeout: 0s\n".to_string()
}

async fn setup(n: usize) -> Env {
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "nva", Orchestration::Uniform, "eastus");
    env.tb.fleet().scale_to(SUB, RG, "nva", n);
    env.tb.network().add_route_server(SUB, RG, HUB);
    env.tb
        .network()
        .add_peering(SUB, RG, HUB, "onprem-firewall", "10.99.0.1", 64999);
    env
}

/// Our peerings as (name, peer IP), sorted by IP.
fn ours(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .tb
        .network()
        .peerings(SUB, RG, HUB)
        .into_iter()
        .filter(|(n, ..)| n.starts_with("vmss-sync-"))
        .map(|(n, ip, asn, state)| {
            assert_eq!(asn, ASN, "{n}");
            assert_eq!(state, "Succeeded", "{n}");
            (n, ip)
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

fn wanted(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .tb
        .fleet()
        .instance_ips(SUB, RG, "nva")
        .iter()
        .map(|ip| {
            (
                format!("vmss-sync-{}", ip.to_string().replace('.', "-")),
                ip.to_string(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

fn peoples_untouched(env: &Env) {
    let people: Vec<_> = env
        .tb
        .network()
        .peerings(SUB, RG, HUB)
        .into_iter()
        .filter(|(n, ..)| !n.starts_with("vmss-sync-"))
        .collect();
    assert_eq!(
        people,
        [(
            "onprem-firewall".to_string(),
            "10.99.0.1".to_string(),
            64999,
            "Succeeded".to_string()
        )]
    );
    assert!(
        !env.tb
            .network()
            .operations()
            .iter()
            .any(|o| o.name == "onprem-firewall"),
        "a person's peering was written"
    );
}

/// No operation started before the previous one on the hub had finished.
fn one_at_a_time(env: &Env) {
    let ops = env.tb.network().operations();
    for w in ops.windows(2) {
        let done = w[0].finished.expect("every operation finished");
        assert!(
            done <= w[1].started,
            "{} {} started while {} {} was running",
            w[1].method,
            w[1].name,
            w[0].method,
            w[0].name
        );
    }
    assert_eq!(
        env.tb.network().conflicts(),
        0,
        "no write was refused with 409"
    );
}

async fn once(env: &Env, cfg: &std::path::Path) -> Output {
    run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_follows_2_8_4_one_peering_write_at_a_time_leaving_peoples_peerings() {
    let env = setup(2).await;
    let cfg = env.config(&target("    max_peerings: 9\n"), &upstream());
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    assert_eq!(ours(&env).len(), 2);

    env.tb.fleet().scale_to(SUB, RG, "nva", 8);
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    assert_eq!(ours(&env).len(), 8);

    env.tb.fleet().scale_to(SUB, RG, "nva", 4);
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    assert_eq!(ours(&env).len(), 4);

    let ops = env.tb.network().operations();
    assert_eq!(ops.iter().filter(|o| o.method == "PUT").count(), 8);
    assert_eq!(ops.iter().filter(|o| o.method == "DELETE").count(), 4);
    one_at_a_time(&env);
    peoples_untouched(&env);

    // In sync: another cycle writes nothing.
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.tb.network().operations().len(), 12);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_peering_limit_counts_peoples_peerings_and_names_the_instances_left_out() {
    let env = setup(5).await;
    let cfg = env.config(&target("    max_peerings: 4\n"), &upstream());
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert_eq!(ours(&env).len(), 3, "4 minus the person's peering");
    assert_eq!(env.tb.network().peerings(SUB, RG, HUB).len(), 4);
    assert!(all.contains("peering limit reached"), "{all}");
    assert!(all.contains("got no peering"), "{all}");
    let left: Vec<String> = wanted(&env)
        .into_iter()
        .filter(|w| !ours(&env).contains(w))
        .map(|(_, ip)| ip)
        .collect();
    assert_eq!(left.len(), 2);
    for ip in &left {
        assert!(all.contains(ip.as_str()), "{ip} is named: {all}");
    }
    peoples_untouched(&env);
    one_at_a_time(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_conflict_409_stops_the_cycle_and_the_next_cycle_recovers() {
    let env = setup(3).await;
    let cfg = env.config(&target(""), &upstream());
    env.tb
        .network()
        .set_hub_busy(SUB, RG, HUB, Duration::from_millis(1500));
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(all.contains("AnotherOperationInProgress"), "{all}");
    let puts = env
        .tb
        .requests_to(Service::Arm)
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 1, "the cycle stopped writing after the 409");
    assert!(ours(&env).is_empty());

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    peoples_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_operation_that_never_finishes_times_out_then_recovers() {
    let env = setup(2).await;
    let cfg = env.config(&target("    operation_timeout: 1s\n"), &upstream());
    env.tb.network().hold_operations(true);
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(all.contains("did not finish within"), "{all}");
    assert_eq!(
        env.tb.network().operations().len(),
        1,
        "nothing else was started while the operation ran"
    );

    // Still Updating: the next cycle starts nothing and says why.
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(all.contains("starting nothing until it finishes"), "{all}");
    assert_eq!(env.tb.network().operations().len(), 1);

    env.tb.network().hold_operations(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    one_at_a_time(&env);
    peoples_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_follows_location_or_provisioning_state_when_there_is_no_async_operation_header(
) {
    for mode in [LroHeaders::LocationOnly, LroHeaders::None] {
        let env = setup(3).await;
        env.tb.network().set_lro_headers(mode);
        let cfg = env.config(&target(""), &upstream());
        let out = once(&env, &cfg).await;
        assert_eq!(out.code, 0, "{mode:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(ours(&env), wanted(&env), "{mode:?}");
        env.tb.fleet().scale_to(SUB, RG, "nva", 1);
        let out = once(&env, &cfg).await;
        assert_eq!(out.code, 0, "{mode:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(ours(&env), wanted(&env), "{mode:?}");
        one_at_a_time(&env);
        peoples_untouched(&env);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_failed_operation_is_reported_and_the_failed_peering_rewritten_next_cycle() {
    let env = setup(2).await;
    let cfg = env.config(&target(""), &upstream());
    env.tb.network().fail_next_operations(1);
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(all.contains("the operation ended Failed"), "{all}");
    assert_eq!(
        env.tb.network().operations().len(),
        2,
        "a failed operation does not stop the other writes"
    );
    let failed: Vec<_> = env
        .tb
        .network()
        .peerings(SUB, RG, HUB)
        .into_iter()
        .filter(|p| p.3 == "Failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");

    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    let ops = env.tb.network().operations();
    assert_eq!(ops.len(), 3, "only the failed peering was written again");
    assert_eq!(ops[2].name, failed[0].0);
    assert_eq!(ops[2].method, "PUT");
    one_at_a_time(&env);
    peoples_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_starts_nothing_while_a_persons_peering_is_updating() {
    let env = setup(2).await;
    let cfg = env.config(&target(""), &upstream());
    env.tb
        .network()
        .set_peering_state(SUB, RG, HUB, "onprem-firewall", "Updating");
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(
        all.contains("peering onprem-firewall is Updating; starting nothing"),
        "{all}"
    );
    assert!(env.tb.network().operations().is_empty());

    env.tb
        .network()
        .set_peering_state(SUB, RG, HUB, "onprem-firewall", "Succeeded");
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    peoples_untouched(&env);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_persons_peering_for_an_instance_ip_counts_as_its_peering_never_a_second_one()
{
    let env = setup(3).await;
    let first = env.tb.fleet().instance_ips(SUB, RG, "nva")[0].to_string();
    env.tb
        .network()
        .add_peering(SUB, RG, HUB, "nva-0-by-hand", &first, 64000);
    let cfg = env.config(&target(""), &upstream());
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let mut want = wanted(&env);
    want.retain(|(_, ip)| *ip != first);
    assert_eq!(ours(&env), want, "no second peering for {first}");
    let ops = env.tb.network().operations();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert!(ops.iter().all(|o| o.name != "nva-0-by-hand"), "{ops:?}");
    assert!(env.tb.network().peerings(SUB, RG, HUB).contains(&(
        "nva-0-by-hand".to_string(),
        first.clone(),
        64000,
        "Succeeded".to_string()
    )));
    // In sync: nothing more is written.
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.tb.network().operations().len(), 2);
    peoples_untouched_but(&env, "nva-0-by-hand");

    // A daemon finds the person's peering once and counts it from then on; when the
    // instances go, its own peerings are deleted and the person's stays.
    let mut d = Daemon::run(&env, &cfg).spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env.tb.network().operations().len(), 2, "{}", d.log_text());
    assert_eq!(
        d.log_text().matches("counts as this instance's").count(),
        1,
        "found once, then reported by observe: {}",
        d.log_text()
    );
    env.tb.fleet().scale_to(SUB, RG, "nva", 0);
    d.until(
        Duration::from_secs(15),
        "ready(&env) == 0 && env.tb.network().peerings(SUB, RG, HUB).len() == 2",
        || ready(&env) == 0 && env.tb.network().peerings(SUB, RG, HUB).len() == 2,
    )
    .await;
    assert!(env
        .tb
        .network()
        .peerings(SUB, RG, HUB)
        .iter()
        .any(|p| p.0 == "nva-0-by-hand"));
    peoples_untouched_but(&env, "nva-0-by-hand");
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
}

/// People's peerings other than `but` are as set up and were never written.
fn peoples_untouched_but(env: &Env, but: &str) {
    let people: Vec<_> = env
        .tb
        .network()
        .peerings(SUB, RG, HUB)
        .into_iter()
        .filter(|(n, ..)| !n.starts_with("vmss-sync-") && n != but)
        .collect();
    assert_eq!(people.len(), 1, "{people:?}");
    assert!(!env
        .tb
        .network()
        .operations()
        .iter()
        .any(|o| !o.name.starts_with("vmss-sync-")));
}

#[tokio::test(flavor = "multi_thread")]
async fn route_server_full_hub_stops_creates_until_a_peering_is_removed_and_says_so_in_metrics() {
    let env = setup(5).await;
    // The hub takes 3 peerings: the person's and two of ours.
    env.tb.network().set_hub_peer_limit(SUB, RG, HUB, Some(3));
    let cfg = env.config(&target(""), &upstream());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("admin_listen: off", "admin_listen: 127.0.0.1:0");
    let cfg = env.write("config.yaml", &text);
    let mut d = Daemon::run(&env, &cfg).spawn();
    let admin = d.admin_addr().await;
    let net = env.tb.network();
    d.until(
        Duration::from_secs(20),
        "net.limit_refusals(SUB, RG, HUB) == 1 && ready(&env) == 2",
        || net.limit_refusals(SUB, RG, HUB) == 1 && ready(&env) == 2,
    )
    .await;
    let creates = || {
        env.tb
            .requests_to(Service::Arm)
            .iter()
            .filter(|r| r.method == "PUT")
            .count()
    };
    // Four more cycles (sync_interval 1 s): not one create is sent to the full hub.
    let sent = creates();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(creates(), sent, "{}", d.log_text());
    assert_eq!(sent, 3, "two created, one refused");
    assert_eq!(net.limit_refusals(SUB, RG, HUB), 1);
    let label =
        "upstream=\"nva\",kind=\"stream\",target=\"azure-route-server\",condition=\"hub_full\"";
    let page = get(&admin, "/metrics").await.body;
    assert_eq!(
        sample(&page, "vmss_sync_target_condition", label),
        Some(1.0),
        "{page}"
    );
    let log = d.log_text();
    assert!(log.contains("because it is full"), "{log}");
    assert!(log.contains("no new peering is requested until"), "{log}");

    // The person removes their peering: the next cycle creates one in its place, and
    // stops again at the refusal that follows.
    net.remove_peering(SUB, RG, HUB, "onprem-firewall");
    d.until(
        Duration::from_secs(10),
        "ready(&env) == 3 && net.limit_refusals(SUB, RG, HUB) == 2",
        || ready(&env) == 3 && net.limit_refusals(SUB, RG, HUB) == 2,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(net.limit_refusals(SUB, RG, HUB), 2, "{}", d.log_text());
    assert_eq!(ready(&env), 3);
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
}

/// Our peerings that are Succeeded (while a daemon runs, one may still be Updating).
fn ready(env: &Env) -> usize {
    env.tb
        .network()
        .peerings(SUB, RG, HUB)
        .iter()
        .filter(|(n, _, _, state)| n.starts_with("vmss-sync-") && state == "Succeeded")
        .count()
}
