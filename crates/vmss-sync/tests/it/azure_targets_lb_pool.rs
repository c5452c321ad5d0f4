//! The Azure Load Balancer backend pool target through the real binary against the
//! testbed's fake `loadBalancers/{lb}/backendAddressPools/{pool}`: the whole pool PUT with
//! `If-Match`, other addresses kept as they are, 412 answered by reading again.

use crate::support::common;

use common::*;
use std::time::Duration;
use vmss_testbed::{Orchestration, Service, TestbedOptions};

const LB: &str = "lb-1";
const POOL: &str = "web-pool";
const PEOPLE_VNET: &str =
    "/subscriptions/other/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/legacy";

fn vnet() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/virtualNetworks/vnet-1")
}

fn target() -> String {
    format!(
        "targets:\n  lb:\n    type: azure_lb_pool\n    subscription: {SUB}\n    resource_group: {RG}\n    load_balancer: {LB}\n    backend_pool: {POOL}\n    virtual_network: {}\n",
        vnet()
    )
}

fn upstream() -> String {
    "  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n    target: lb\n    drain_timeout: 0s\n".to_string()
}

async fn setup(n: usize) -> Env {
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    env.tb.fleet().scale_to(SUB, RG, "web", n);
    env.tb.network().add_backend_pool(
        SUB,
        RG,
        LB,
        POOL,
        &[("legacy-vm", "10.50.0.7", PEOPLE_VNET)],
    );
    env
}

/// Our addresses as (name, IP), sorted by IP; each in the configured VNet.
fn ours(env: &Env) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .tb
        .network()
        .pool_addresses(SUB, RG, LB, POOL)
        .into_iter()
        .filter(|(n, ..)| n.starts_with("vmss-sync-"))
        .map(|(n, ip, net)| {
            assert_eq!(net, vnet(), "{n}");
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
        .instance_ips(SUB, RG, "web")
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

fn others(env: &Env) -> Vec<(String, String, String)> {
    env.tb
        .network()
        .pool_addresses(SUB, RG, LB, POOL)
        .into_iter()
        .filter(|(n, ..)| !n.starts_with("vmss-sync-"))
        .collect()
}

fn puts(env: &Env) -> Vec<u16> {
    env.tb
        .requests_to(Service::Arm)
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.status)
        .collect()
}

async fn once(env: &Env, cfg: &std::path::Path) -> Output {
    run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn lb_pool_follows_2_8_4_with_one_conditional_put_per_change_keeping_other_addresses() {
    let env = setup(2).await;
    let cfg = env.config(&target(), &upstream());
    for n in [2usize, 8, 4] {
        env.tb.fleet().scale_to(SUB, RG, "web", n);
        let out = once(&env, &cfg).await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert_eq!(ours(&env), wanted(&env));
        assert_eq!(ours(&env).len(), n);
        assert_eq!(
            others(&env),
            [(
                "legacy-vm".to_string(),
                "10.50.0.7".to_string(),
                PEOPLE_VNET.to_string()
            )]
        );
    }
    assert_eq!(puts(&env), [200, 200, 200], "one PUT per change");
    let ops = env.tb.network().operations();
    assert_eq!(ops.len(), 3);
    assert!(ops.iter().all(|o| o.finished.is_some()));
    assert_eq!(env.tb.network().conflicts(), 0);
    assert_eq!(
        env.tb.network().conditional_pool_writes(),
        3,
        "every PUT carried the pool's ETag in If-Match"
    );

    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(puts(&env).len(), 3, "in sync: nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn lb_pool_stale_etag_412_is_read_again_and_retried_keeping_the_concurrent_change() {
    let env = setup(3).await;
    let cfg = env.config(&target(), &upstream());
    env.tb.network().race_pool_writes(SUB, RG, LB, POOL, 1);
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(puts(&env), [412, 200]);
    assert_eq!(ours(&env), wanted(&env));
    let names: Vec<String> = others(&env).into_iter().map(|(n, ..)| n).collect();
    assert_eq!(
        names,
        ["legacy-vm", "people-race-1"],
        "the concurrent writer's address is kept"
    );

    // A pool that keeps changing: bounded attempts, an error, and the next cycle converges.
    env.tb.fleet().scale_to(SUB, RG, "web", 5);
    env.tb.network().race_pool_writes(SUB, RG, LB, POOL, 3);
    let out = once(&env, &cfg).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    assert!(all.contains("kept changing"), "{all}");
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    assert_eq!(ours(&env).len(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn lb_pool_has_no_drain_so_a_drain_removes_the_address_at_once() {
    let env = setup(3).await;
    let cfg = env.config(
        &target(),
        &upstream().replace("drain_timeout: 0s", "drain_timeout: 5m"),
    );
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(ours(&env), wanted(&env));
    assert_eq!(ours(&env).len(), 2);
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(puts(&env).len(), 2, "in sync: nothing more written");
}

#[tokio::test(flavor = "multi_thread")]
async fn lb_pool_instance_already_in_the_pool_under_another_name_counts_as_present_and_keeps_its_name(
) {
    let env = setup(3).await;
    let first = env.tb.fleet().instance_ips(SUB, RG, "web")[0].to_string();
    // A pool made by hand: it already holds one instance under a name of its own.
    env.tb.network().add_backend_pool(
        SUB,
        RG,
        LB,
        POOL,
        &[
            ("legacy-vm", "10.50.0.7", PEOPLE_VNET),
            ("web-0-by-hand", &first, &vnet()),
        ],
    );
    let cfg = env.config(&target(), &upstream());
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        puts(&env),
        [200],
        "one PUT, not refused for a duplicate address"
    );
    let all = env.tb.network().pool_addresses(SUB, RG, LB, POOL);
    let mut addresses: Vec<&str> = all.iter().map(|(_, ip, _)| ip.as_str()).collect();
    addresses.sort();
    let before = addresses.len();
    addresses.dedup();
    assert_eq!(addresses.len(), before, "one entry per IP: {all:?}");
    assert!(
        all.contains(&("web-0-by-hand".to_string(), first.clone(), vnet())),
        "the entry keeps its name: {all:?}"
    );
    let mut want = wanted(&env);
    want.retain(|(_, ip)| *ip != first);
    assert_eq!(ours(&env), want, "the other instances are added");
    assert_eq!(ours(&env).len(), 2);

    // In sync: the next cycle writes nothing.
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(puts(&env).len(), 1, "nothing written");

    // A scale-out adds the new instances and still leaves the entry alone.
    env.tb.fleet().scale_to(SUB, RG, "web", 5);
    let out = once(&env, &cfg).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(puts(&env), [200, 200]);
    assert_eq!(ours(&env).len(), 4);
    assert!(env
        .tb
        .network()
        .pool_addresses(SUB, RG, LB, POOL)
        .contains(&("web-0-by-hand".to_string(), first.clone(), vnet())));

    // A daemon finds the entry once and counts it from then on; when the instances go,
    // its own entries are removed and the hand-made ones stay.
    let mut d = Daemon::run(&env, &cfg).spawn();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(puts(&env).len(), 2, "{}", d.log_text());
    assert_eq!(
        d.log_text().matches("counts as this instance's").count(),
        1,
        "found once, then reported by observe: {}",
        d.log_text()
    );
    env.tb.fleet().scale_to(SUB, RG, "web", 0);
    d.until(Duration::from_secs(15), "ours(&env).is_empty()", || {
        ours(&env).is_empty()
    })
    .await;
    let names: Vec<String> = others(&env).into_iter().map(|(n, ..)| n).collect();
    assert_eq!(names, ["legacy-vm", "web-0-by-hand"]);
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
}
