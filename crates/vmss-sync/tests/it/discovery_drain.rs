//! Draining before removal, end to end through the daemon: every way an instance leaves
//! (deleted, stopped, evicted, unhealthy, reimaged, gone) drains its server for
//! `drain_timeout` first; one that comes back is restored in place; a restart in the
//! middle of a drain neither removes early nor drains forever.

use crate::support::common;

use common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{Orchestration, Service, TestbedOptions, UpstreamKind};

fn ip(env: &Env, set: &str, id: &str) -> String {
    format!("{}:80", env.tb.fleet().instance_ip(SUB, RG, set, id))
}

fn server_id(env: &Env, kind: UpstreamKind, upstream: &str, server: &str) -> Option<u64> {
    env.tb
        .nginx()
        .servers(kind, upstream)
        .iter()
        .find(|s| s["server"] == server)
        .and_then(|s| s["id"].as_u64())
}

/// Polls until `f` holds, returning when it first did (None after `within`).
async fn when(within: Duration, mut f: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaving_instance_is_drained_for_drain_timeout_then_removed() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config(
        "",
        &format!(
            "{}    drain_timeout: 3s\n",
            upstream_yaml("web", "web", 80, "http")
        ),
    );
    let mut d = Daemon::run(&env, &cfg).log("daemon.log").spawn();
    assert!(
        when(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 3)
        .await
        .is_some(),
        "{}",
        d.log_text()
    );
    let leaving = ip(&env, "web", "2");
    let id = server_id(&env, UpstreamKind::Http, "web", &leaving);
    env.tb.fleet().remove_instance(SUB, RG, "web", "2");
    let drained = when(Duration::from_secs(10), || {
        env.draining(UpstreamKind::Http, "web") == vec![leaving.clone()]
    })
    .await
    .unwrap_or_else(|| panic!("never drained: {}", d.log_text()));
    assert_eq!(
        server_id(&env, UpstreamKind::Http, "web", &leaving),
        id,
        "drained in place"
    );
    let removed = when(Duration::from_secs(15), || {
        !env.all_servers(UpstreamKind::Http, "web")
            .contains(&leaving)
    })
    .await
    .unwrap_or_else(|| panic!("never removed: {}", d.log_text()));
    let drained_for = removed - drained;
    assert!(
        drained_for >= Duration::from_millis(2900) && drained_for <= Duration::from_secs(7),
        "drained for {drained_for:?} with drain_timeout 3s"
    );
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert!(d.log_text().contains("Draining: ["), "{}", d.log_text());
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_way_an_instance_leaves_drains_it_and_one_that_comes_back_is_restored_in_place() {
    let env = testbed(TestbedOptions::default()).await;
    let f = env.tb.fleet();
    f.add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    f.set_health_extension(SUB, RG, "web", true);
    f.scale_to(SUB, RG, "web", 7);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config(
        "health_interval: 1s\n",
        &format!(
            "{}    drain_timeout: 60s\n",
            upstream_yaml("web", "web", 80, "http")
        ),
    );
    let mut d = Daemon::run(&env, &cfg).log("daemon.log").spawn();
    assert!(
        when(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 7)
        .await
        .is_some(),
        "{}",
        d.log_text()
    );
    let ips: Vec<String> = (0..7).map(|i| ip(&env, "web", &i.to_string())).collect();
    let ids: Vec<Option<u64>> = ips
        .iter()
        .map(|s| server_id(&env, UpstreamKind::Http, "web", s))
        .collect();
    // 1 scale-in (deleting, then gone), 2 stopped, 3 Spot eviction, 4 unhealthy,
    // 5 reimaged by a rolling upgrade (healthy again after 4 s), 6 gone at once.
    f.delete_instance(SUB, RG, "web", "1", Duration::from_secs(2));
    f.set_power_state(SUB, RG, "web", "2", "stopped");
    f.evict_instance(SUB, RG, "web", "3");
    f.set_health(SUB, RG, "web", "4", Some("unhealthy"));
    f.rolling_upgrade(SUB, RG, "web", "5", Duration::from_secs(4));
    f.remove_instance(SUB, RG, "web", "6");
    let mut leaving: Vec<String> = ips[1..].to_vec();
    leaving.sort();
    assert!(
        when(Duration::from_secs(10), || env
            .draining(UpstreamKind::Http, "web")
            == leaving)
        .await
        .is_some(),
        "every leaving instance drains: {:?}\n{}",
        env.draining(UpstreamKind::Http, "web"),
        d.log_text()
    );
    assert_eq!(env.servers(UpstreamKind::Http, "web"), vec![ips[0].clone()]);
    // The reimaged instance comes back healthy: restored, same server, never re-added.
    assert!(
        when(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .contains(&ips[5]))
        .await
        .is_some(),
        "{}",
        d.log_text()
    );
    for (i, s) in ips.iter().enumerate() {
        if let Some(now) = server_id(&env, UpstreamKind::Http, "web", s) {
            assert_eq!(Some(now), ids[i], "{s} kept its server id");
        }
    }
    let posts_after_start = env
        .tb
        .requests_to(Service::Nginx)
        .iter()
        .filter(|r| r.method == "POST" || r.method == "DELETE")
        .count();
    assert_eq!(
        posts_after_start, 7,
        "7 adds at start; no delete, no re-add"
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_in_the_middle_of_a_drain_neither_removes_early_nor_drains_forever() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config(
        "",
        &format!(
            "{}    drain_timeout: 4s\n",
            upstream_yaml("web", "web", 80, "http")
        ),
    );
    let mut a = Daemon::run(&env, &cfg).log("a.log").spawn();
    assert!(
        when(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 3)
        .await
        .is_some(),
        "{}",
        a.log_text()
    );
    let leaving = ip(&env, "web", "0");
    env.tb.fleet().remove_instance(SUB, RG, "web", "0");
    let drained = when(Duration::from_secs(10), || {
        env.draining(UpstreamKind::Http, "web") == vec![leaving.clone()]
    })
    .await
    .unwrap_or_else(|| panic!("never drained: {}", a.log_text()));
    a.signal("TERM");
    assert_eq!(a.wait(Duration::from_secs(15)).await, 0);
    assert_eq!(
        env.draining(UpstreamKind::Http, "web"),
        vec![leaving.clone()],
        "shutdown leaves the drain as it is"
    );
    let restarted = Instant::now();
    let mut b = Daemon::run(&env, &cfg).log("b.log").spawn();
    let removed = when(Duration::from_secs(20), || {
        !env.all_servers(UpstreamKind::Http, "web")
            .contains(&leaving)
    })
    .await
    .unwrap_or_else(|| panic!("drained forever: {}", b.log_text()));
    assert!(
        removed - drained >= Duration::from_secs(4),
        "not removed before drain_timeout: {:?}",
        removed - drained
    );
    assert!(
        removed - restarted >= Duration::from_millis(3900),
        "the new process found it draining and gave it a whole drain_timeout: {:?}",
        removed - restarted
    );
    b.signal("TERM");
    assert_eq!(b.wait(Duration::from_secs(15)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_upstream_drains_with_down() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("db", 2);
    env.upstream(UpstreamKind::Stream, "db");
    let cfg = env.config(
        "",
        &format!(
            "{}    drain_timeout: 30s\n",
            upstream_yaml("db", "db", 5432, "stream")
        ),
    );
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    let leaving = format!("{}:5432", env.tb.fleet().instance_ip(SUB, RG, "db", "1"));
    env.tb.fleet().remove_instance(SUB, RG, "db", "1");
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let servers = env.tb.nginx().servers(UpstreamKind::Stream, "db");
    let s = servers
        .iter()
        .find(|s| s["server"] == leaving.as_str())
        .expect("still there while draining");
    assert_eq!(s["down"], true, "{s}");
}
