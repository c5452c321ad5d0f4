//! The read budget end to end: 429s waited out without spending retries, a budget too
//! small for the interval stretches cycles and says so once, and Compute's own limits
//! slow instance-view reads down before Compute answers 429.

use crate::support::common;

use common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{ComputeLimits, Fault, Orchestration, Service, TestbedOptions, UpstreamKind};

#[tokio::test(flavor = "multi_thread")]
async fn a_429_is_waited_out_without_spending_retries() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    // Five 429s: more than the four retries a failing read gets.
    env.tb.faults().inject(
        Service::Arm,
        "/networkInterfaces",
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "Too many requests".into(),
            retry_after: Some(1),
        },
        5,
    );
    let cfg = env.config("", &upstream_yaml("web", "web", 80, "http"));
    let started = Instant::now();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        started.elapsed() >= Duration::from_millis(4900),
        "each Retry-After: 1 waited out"
    );
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_too_small_for_the_interval_stretches_cycles_and_says_so_once() {
    let env = testbed(TestbedOptions::default()).await;
    let mut ups = String::new();
    for i in 0..6 {
        let name = format!("set{i}");
        env.uniform(&name, 2);
        env.upstream(UpstreamKind::Http, &name);
        ups.push_str(&upstream_yaml(&name, &name, 80, "http"));
    }
    let cfg = env.config(
        "arm_read_burst: 4\narm_reads_per_second: 4\nhealth_interval: 1s\n",
        &ups,
    );
    let mut d = Daemon::run(&env, &cfg).spawn();
    let all_synced =
        || (0..6).all(|i| env.servers(UpstreamKind::Http, &format!("set{i}")).len() == 2);
    assert!(
        eventually(Duration::from_secs(20), all_synced).await,
        "{}",
        d.log_text()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(20)).await, 0);
    let log = d.log_text();
    assert_eq!(
        log.matches("cycles are stretched to fit the budget")
            .count(),
        1,
        "said once: {log}"
    );
    // 250 reads at once and 25 per second would have been ARM's; 4 and 4 are ours.
    let reqs = env.tb.requests_to(Service::Arm);
    assert!(
        reqs.iter().all(|r| r.status != 429),
        "the budget kept the daemon under any limit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn computes_own_limits_slow_instance_view_reads_before_a_429() {
    let env = testbed(TestbedOptions {
        enforce_limits: true,
        compute_limits: ComputeLimits {
            high_cost_3min: 12,
            high_cost_30min: 120,
            ..ComputeLimits::default()
        },
        ..TestbedOptions::default()
    })
    .await;
    for name in ["a", "b"] {
        env.tb
            .fleet()
            .add_scale_set(SUB, RG, name, Orchestration::Uniform, "eastus");
        env.tb.fleet().set_health_extension(SUB, RG, name, true);
        env.tb.fleet().scale_to(SUB, RG, name, 2);
        env.upstream(UpstreamKind::Http, name);
    }
    let ups = format!(
        "{}{}",
        upstream_yaml("a", "a", 80, "http"),
        upstream_yaml("b", "b", 80, "http")
    );
    let cfg = env.config("health_interval: 1s\n", &ups);
    let mut d = Daemon::run(&env, &cfg).spawn();
    tokio::time::sleep(Duration::from_secs(10)).await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)).await, 0);
    let reqs = env.tb.requests_to(Service::Arm);
    let throttled = reqs.iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 0, "slowed down before Compute said 429");
    let views = reqs
        .iter()
        .filter(|r| r.query.to_lowercase().contains("$expand=instanceview"))
        .count();
    assert!(
        views < 12,
        "2 sets every second would be 20 view reads in 10 s; read {views}"
    );
    assert_eq!(env.servers(UpstreamKind::Http, "a").len(), 2);
    assert_eq!(env.servers(UpstreamKind::Http, "b").len(), 2);
}
