//! The admin endpoint of the real binary against the testbed: `/metrics` moves with a scale
//! event, throttling and reloads; `/healthz` and `/readyz` answer as the README says; and
//! the idle cost of the daemon (RSS, CPU) is measured and printed.

mod common;
mod ops_common;

use common::*;
use ops_common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{Fault, Service, TestbedOptions, UpstreamKind};

const WEB: &str = "upstream=\"web\",kind=\"http\"";

fn servers_label(state: &str) -> String {
    format!("{WEB},target=\"nginx-plus\",state=\"{state}\"")
}

fn change_label(change: &str) -> String {
    format!("{WEB},target=\"nginx-plus\",change=\"{change}\"")
}

async fn scrape(addr: &str) -> String {
    let a = get(addr, "/metrics").await;
    assert_eq!(a.status, 200);
    assert!(
        a.content_type.starts_with("application/openmetrics-text"),
        "{}",
        a.content_type
    );
    a.body
}

/// Scrapes every 100 ms until `pred` holds (or `within` passes); returns the last page.
async fn scrape_until(addr: &str, within: Duration, pred: impl Fn(&str) -> bool) -> (bool, String) {
    let deadline = Instant::now() + within;
    loop {
        let page = scrape(addr).await;
        if pred(&page) {
            return (true, page);
        }
        if Instant::now() > deadline {
            return (false, page);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_a_scale_out_and_in_throttling_and_reloads() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.write(
        "config.yaml",
        &config_text(&env, &env.tb.nginx_url(), "readiness_max_age: 5s\n"),
    );
    let mut d = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("daemon.log"),
    );
    let addr = admin_addr(&d).await;
    let synced = |n: usize| {
        env.servers(UpstreamKind::Http, "web") == env.ips("web", 80)
            && env.ips("web", 80).len() == n
    };
    assert!(
        eventually(Duration::from_secs(15), || synced(2)).await,
        "{}",
        d.log_text()
    );

    // Right after the first writes: 2 added, 2 active servers, one leader (the only replica).
    let (ok, page) = scrape_until(&addr, Duration::from_secs(10), |page| {
        sample(
            page,
            "vmss_sync_server_changes_total",
            &change_label("added"),
        ) == Some(2.0)
            && sample(page, "vmss_sync_upstream_servers", &servers_label("active")) == Some(2.0)
    })
    .await;
    assert!(ok, "{page}");
    assert_eq!(
        sample(
            &page,
            "vmss_sync_upstream_servers",
            &servers_label("draining")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&page, "vmss_sync_upstream_desired_servers", WEB),
        Some(2.0)
    );
    assert_eq!(sample(&page, "vmss_sync_leader", ""), Some(1.0));
    assert!(
        sample(
            &page,
            "vmss_sync_upstream_last_success_timestamp_seconds",
            WEB
        )
        .unwrap_or(0.0)
            > 1.6e9
    );
    assert!(sample(&page, "vmss_sync_reconcile_duration_seconds_count", "").unwrap_or(0.0) >= 1.0);
    assert!(
        sample(
            &page,
            "vmss_sync_arm_requests_total",
            "operation=\"VirtualMachineScaleSets_Get\""
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(sample_sum_with(&page, "vmss_sync_arm_responses_total", "code=\"200\"") >= 2.0);
    assert!(
        sample(
            &page,
            "vmss_sync_arm_responses_total",
            "operation=\"VirtualMachineScaleSets_Get\",code=\"200\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "responses by operation and code: {page}"
    );
    assert_eq!(
        sample(
            &page,
            "vmss_sync_token_fetches_total",
            "service=\"arm\",result=\"ok\""
        ),
        Some(1.0)
    );
    assert!(sample(
        &page,
        "vmss_sync_build_info",
        &format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))
    )
    .is_some());
    let arm_before = sample_sum(&page, "vmss_sync_arm_requests_total");
    let last_success_before = sample(
        &page,
        "vmss_sync_upstream_last_success_timestamp_seconds",
        WEB,
    )
    .unwrap_or(0.0);

    // Scale out to 5: three more added; the gauges follow.
    env.tb.fleet().scale_to(SUB, RG, "web", 5);
    assert!(eventually(Duration::from_secs(15), || synced(5)).await);
    let (ok, page) = scrape_until(&addr, Duration::from_secs(10), |page| {
        sample(
            page,
            "vmss_sync_server_changes_total",
            &change_label("added"),
        ) == Some(5.0)
            && sample(page, "vmss_sync_upstream_servers", &servers_label("active")) == Some(5.0)
    })
    .await;
    assert!(ok, "{page}");
    assert_eq!(
        sample(&page, "vmss_sync_upstream_desired_servers", WEB),
        Some(5.0)
    );
    assert!(sample_sum(&page, "vmss_sync_arm_requests_total") > arm_before);

    // Scale in to 3: two leave (removed at once, or set draining first when the upstream
    // drains); the active gauge follows, and what drains is counted as draining.
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    assert!(eventually(Duration::from_secs(15), || synced(3)).await);
    let (ok, page) = scrape_until(&addr, Duration::from_secs(10), |page| {
        let left = sample(
            page,
            "vmss_sync_server_changes_total",
            &change_label("removed"),
        )
        .unwrap_or(0.0)
            + sample(
                page,
                "vmss_sync_server_changes_total",
                &change_label("drained"),
            )
            .unwrap_or(0.0);
        left == 2.0
            && sample(page, "vmss_sync_upstream_servers", &servers_label("active")) == Some(3.0)
    })
    .await;
    assert!(ok, "{page}");
    assert_eq!(
        sample(
            &page,
            "vmss_sync_target_write_failures_total",
            &format!("{WEB},target=\"nginx-plus\"")
        ),
        Some(0.0)
    );
    assert!(
        sample(
            &page,
            "vmss_sync_upstream_last_success_timestamp_seconds",
            WEB
        )
        .unwrap_or(0.0)
            > last_success_before
    );
    assert!(
        sample(
            &page,
            "vmss_sync_upstream_reconciles_total",
            &format!("{WEB},mode=\"apply\",result=\"ok\"")
        )
        .unwrap_or(0.0)
            >= 3.0
    );

    // ARM throttles once (429 with Retry-After: 1): counted, and the wait is measured.
    env.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web",
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "slow down".into(),
            retry_after: Some(1),
        },
        1,
    );
    let (ok, page) = scrape_until(&addr, Duration::from_secs(15), |page| {
        sample(page, "vmss_sync_arm_throttled_total", "") == Some(1.0)
    })
    .await;
    assert!(ok, "{page}");
    assert_eq!(
        sample_sum_with(&page, "vmss_sync_arm_responses_total", "code=\"429\""),
        1.0
    );
    assert!(
        sample(&page, "vmss_sync_arm_throttle_wait_seconds_total", "").unwrap_or(0.0) >= 1.0,
        "{page}"
    );

    // Reloads: a valid file, then an invalid one.
    d.signal("HUP");
    let (ok, page) = scrape_until(&addr, Duration::from_secs(10), |page| {
        sample(page, "vmss_sync_config_reloads_total", "result=\"ok\"") == Some(1.0)
    })
    .await;
    assert!(ok, "{page}\n{}", d.log_text());
    env.write("config.yaml", "upstreams: [\n");
    d.signal("HUP");
    let (ok, page) = scrape_until(&addr, Duration::from_secs(10), |page| {
        sample(page, "vmss_sync_config_reloads_total", "result=\"failed\"") == Some(1.0)
    })
    .await;
    assert!(ok, "{page}\n{}", d.log_text());
    // Counters survive reloads; nothing secret is in any label.
    assert_eq!(
        sample(
            &page,
            "vmss_sync_server_changes_total",
            &change_label("added")
        ),
        Some(5.0)
    );
    assert!(
        !page.contains(&TestbedOptions::default().client_secret),
        "{page}"
    );
    assert!(!page.contains("Bearer"), "{page}");
    assert!(page.ends_with("# EOF\n"));

    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_and_readyz_answer_as_the_readme_says() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.write(
        "config.yaml",
        &config_text(&env, &env.tb.nginx_url(), "readiness_max_age: 3s\n"),
    );
    let mut d = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("daemon.log"),
    );
    let addr = admin_addr(&d).await;
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 2)
        .await
    );

    let live = get(&addr, "/healthz").await;
    assert_eq!(live.status, 200, "{}", live.body);
    assert_eq!(live.content_type, "application/json");
    assert_eq!(live.json()["status"], "ok");
    let ok = eventually_async(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.status == 200 }
    })
    .await;
    assert!(ok);
    let ready = get(&addr, "/readyz").await.json();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["role"], "single");
    assert_eq!(ready["reasons"], serde_json::json!([]));
    assert_eq!(ready["upstreams"][0]["name"], "web");

    // NGINX answers 500 for the upstream: the reconciles fail, and once the last success is
    // older than readiness_max_age (3 s) the replica is not ready and says why. It stays
    // alive: the loop turns.
    env.tb.faults().inject(
        Service::Nginx,
        "/upstreams/web",
        Fault::Status {
            status: 500,
            code: "InternalError".into(),
            message: "simulated".into(),
            retry_after: None,
        },
        usize::MAX,
    );
    let failing_since = Instant::now();
    let ok = eventually_async(Duration::from_secs(15), || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.status == 503 }
    })
    .await;
    assert!(ok, "{}", d.log_text());
    assert!(
        failing_since.elapsed() >= Duration::from_secs(2),
        "readiness waits for readiness_max_age"
    );
    let not_ready = get(&addr, "/readyz").await.json();
    assert_eq!(not_ready["status"], "not ready");
    let reasons = not_ready["reasons"].to_string();
    assert!(reasons.contains("upstream web (http)"), "{reasons}");
    assert!(reasons.contains("500"), "{reasons}");
    assert_eq!(get(&addr, "/healthz").await.status, 200);

    // NGINX recovers: ready again.
    env.tb.faults().clear();
    let ok = eventually_async(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { get(&addr, "/readyz").await.status == 200 }
    })
    .await;
    assert!(ok);
    assert_eq!(get(&addr, "/nothing").await.status, 404);
    let head = reqwest::Client::new()
        .head(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200, "HEAD works too");

    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
    assert!(
        reqwest::Client::new()
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_err(),
        "the endpoint is gone after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listen_off_serves_nothing_and_the_daemon_still_syncs() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let text = config_text(&env, &env.tb.nginx_url(), "")
        .replace("admin_listen: 127.0.0.1:0\n", "admin_listen: off\n");
    let cfg = env.write("config.yaml", &text);
    let mut d = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("daemon.log"),
    );
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 2)
        .await
    );
    assert!(
        !d.log_text().contains("Admin endpoint listening"),
        "{}",
        d.log_text()
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

/// Idle cost: one upstream fed by a set of 10, sync_interval 5 s, measured over 30 s after
/// the first sync. Prints RSS and CPU; fails only on gross regressions.
#[tokio::test(flavor = "multi_thread")]
async fn idle_daemon_memory_and_cpu_are_small() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 10);
    env.upstream(UpstreamKind::Http, "web");
    let text = config_text(&env, &env.tb.nginx_url(), "")
        .replace("sync_interval: 1s\n", "sync_interval: 5s\n");
    let cfg = env.write("config.yaml", &text);
    let mut d = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("daemon.log"),
    );
    let pid = d.child.id().expect("pid");
    let addr = admin_addr(&d).await;
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 10)
        .await
    );
    let window = Duration::from_secs(30);
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    let arm0 = env.arm_requests();
    tokio::time::sleep(window).await;
    let cpu = cpu_time(pid).saturating_sub(cpu0);
    let wall = t0.elapsed();
    let rss = status_kib(pid, "VmRSS");
    let peak = status_kib(pid, "VmHWM");
    let page = scrape(&addr).await;
    let cycles = sample(&page, "vmss_sync_reconcile_duration_seconds_count", "").unwrap_or(0.0);
    let percent = cpu.as_secs_f64() / wall.as_secs_f64() * 100.0;
    println!(
        "idle vmss-sync (1 upstream, 10 instances, sync_interval 5s): RSS {:.1} MiB (peak {:.1} MiB), \
         CPU {:.3} s over {:.1} s = {percent:.2} % of one core; {} ARM requests; {cycles} cycles in all",
        rss as f64 / 1024.0,
        peak as f64 / 1024.0,
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        env.arm_requests() - arm0,
    );
    assert!(rss < 64 * 1024, "RSS {rss} KiB");
    assert!(percent < 5.0, "CPU {percent:.2} %");
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}
