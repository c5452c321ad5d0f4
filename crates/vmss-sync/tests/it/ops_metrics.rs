//! The admin endpoint of the real binary against the testbed: `/metrics` moves with a scale
//! event, throttling and reloads; it answers the classic text format by default (checked by
//! `promtool check metrics`) and OpenMetrics when asked (scraped by a real Prometheus);
//! the alert rules pass `promtool check rules` and `promtool test rules`, and they and the
//! Grafana dashboard name only metrics a scrape has and are valid PromQL; `/healthz` and
//! `/readyz` answer as docs/operations.md says; and the idle cost of the daemon (RSS, CPU) is
//! measured and printed. promtool and prometheus come from Debian's `prometheus` package
//! (scripts/test.sh installs it); without them the tests that need them say so and skip,
//! except under CI, where they fail.

use crate::support::common;
use crate::support::ops_common;

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

/// A scrape as Prometheus 2.42 asks for it (OpenMetrics preferred).
async fn scrape(addr: &str) -> String {
    let a = get_accepting(addr, "/metrics", PROMETHEUS_ACCEPT).await;
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
    let mut d = Daemon::run(&env, &cfg).spawn();
    let addr = d.admin_addr().await;
    let synced = |n: usize| {
        env.servers(UpstreamKind::Http, "web") == env.ips("web", 80)
            && env.ips("web", 80).len() == n
    };
    d.until(Duration::from_secs(15), "synced(2)", || synced(2))
        .await;

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
    let mut d = Daemon::run(&env, &cfg).spawn();
    let addr = d.admin_addr().await;
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
    let mut d = Daemon::run(&env, &cfg).spawn();
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
    let mut d = Daemon::run(&env, &cfg).spawn();
    let pid = d.child.id().expect("pid");
    let addr = d.admin_addr().await;
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

/// The repository's root (the workspace).
fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Metric names (`vmss_sync_*`, `process_*`) a PromQL-bearing file refers to.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for prefix in ["vmss_sync_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let before = rest[..i].chars().last();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// Names of every sample in a text page (`_bucket`, `_sum` and `_count` included).
fn sample_names(page: &str) -> std::collections::BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

/// Starts a daemon syncing `web` (2 instances) and waits for its first writes.
async fn synced_daemon(env: &Env) -> (Daemon, String) {
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.write("config.yaml", &config_text(env, &env.tb.nginx_url(), ""));
    let d = Daemon::run(env, &cfg).spawn();
    let addr = d.admin_addr().await;
    d.until(
        Duration::from_secs(15),
        "env.servers(UpstreamKind::Http, \"web\").len() == 2",
        || env.servers(UpstreamKind::Http, "web").len() == 2,
    )
    .await;
    (d, addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn classic_format_by_default_passes_promtool_and_openmetrics_on_accept_has_the_same_samples()
{
    let env = testbed(TestbedOptions::default()).await;
    let (mut d, addr) = synced_daemon(&env).await;
    let (ok, _) = scrape_until(&addr, Duration::from_secs(10), |page| {
        sample(
            page,
            "vmss_sync_server_changes_total",
            &change_label("added"),
        ) == Some(2.0)
    })
    .await;
    assert!(ok);

    // curl and scrapers that do not ask: the classic format.
    let classic = get(&addr, "/metrics").await;
    assert_eq!(classic.status, 200);
    assert_eq!(
        classic.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let om = get_accepting(&addr, "/metrics", PROMETHEUS_ACCEPT).await;
    assert_eq!(
        om.content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(!classic.body.contains("# EOF"), "{}", classic.body);
    assert!(!classic.body.contains("# UNIT"), "{}", classic.body);
    assert!(
        classic
            .body
            .contains("# TYPE vmss_sync_server_changes_total counter\n"),
        "{}",
        classic.body
    );
    assert!(
        classic.body.contains("# TYPE vmss_sync_build_info gauge\n"),
        "{}",
        classic.body
    );
    // The same series in both (the process's figures move between scrapes, the rest
    // only with a cycle, which may come in between).
    assert_eq!(sample_names(&classic.body), sample_names(&om.body));

    // process_* from the first scrape, with plausible values.
    let pid = d.child.id().expect("pid");
    let page = &classic.body;
    let rss = sample(page, "process_resident_memory_bytes", "").expect("rss");
    let rss_now = status_kib(pid, "VmRSS") as f64 * 1024.0;
    assert!(
        rss > 1e6 && (rss - rss_now).abs() < 16e6,
        "{rss} vs {rss_now}"
    );
    let start = sample(page, "process_start_time_seconds", "").expect("start");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start <= now && start > now - 60.0, "{start} vs {now}");
    assert!(sample(page, "process_cpu_seconds_total", "").expect("cpu") >= 0.0);
    assert!(sample(page, "process_open_fds", "").expect("fds") >= 3.0);
    assert!(sample(page, "process_max_fds", "").expect("max fds") >= 64.0);
    assert!(sample(page, "process_virtual_memory_bytes", "").expect("vsz") >= rss);
    // Counters that have not moved are there, at 0.
    for (name, labels) in [
        ("vmss_sync_arm_throttled_total", String::new()),
        (
            "vmss_sync_config_reloads_total",
            "result=\"failed\"".to_string(),
        ),
        ("vmss_sync_server_changes_total", change_label("removed")),
        (
            "vmss_sync_upstream_reconciles_total",
            format!("{WEB},mode=\"apply\",result=\"failed\""),
        ),
        (
            "vmss_sync_target_write_failures_total",
            format!("{WEB},target=\"nginx-plus\""),
        ),
    ] {
        assert_eq!(sample(page, name, &labels), Some(0.0), "{name}{{{labels}}}");
    }

    let Some(tool) = prometheus_tool("promtool") else {
        d.signal("TERM");
        return;
    };
    let (code, out) = promtool(&tool, &["check", "metrics"], &classic.body, env.dir.path());
    println!(
        "promtool check metrics (classic 0.0.4 scrape of {} lines): exit {code}, output {out:?}",
        classic.body.lines().count()
    );
    assert_eq!((code, out.as_str()), (0, ""), "{}", classic.body);
    // promtool 2.42 lints the classic format only: on OpenMetrics it stops at the first
    // `info` type (a real Prometheus scrape checks OpenMetrics, below). Printed for the record.
    let (code, out) = promtool(&tool, &["check", "metrics"], &om.body, env.dir.path());
    println!("promtool check metrics (OpenMetrics scrape): exit {code}, output {out:?}");
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

/// A Prometheus server (Debian's 2.42) on loopback, scraping `target` every second;
/// killed by pid when dropped. It listens on port 0 (`--web.listen-address=127.0.0.1:0`)
/// and the port it got is read back from its log, so no port is chosen before it binds.
struct Prometheus {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vmss-sync\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(log.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("spawn prometheus");
        let mut prom = Prometheus {
            child,
            addr: String::new(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        prom.addr = loop {
            if let Some(addr) = listening_addr(&prom.log()) {
                break addr;
            }
            assert!(
                matches!(prom.child.try_wait(), Ok(None)) && Instant::now() < deadline,
                "Prometheus logged no listening address:\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        reqwest::Client::new()
            .get(format!("http://{}/api/v1/{path}", self.addr))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// The value of an instant query with one result.
    async fn value(&self, query: &str) -> Option<f64> {
        let q: String = url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let v = self.api(&format!("query?query={q}")).await?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// The address in Prometheus's `msg="Listening on" address=127.0.0.1:PORT` log line.
fn listening_addr(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("msg=\"Listening on\""))?;
    let addr = line.split_once(" address=")?.1.split_whitespace().next()?;
    Some(addr.to_string())
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_the_openmetrics_answer_without_error() {
    let Some(bin) = prometheus_tool("prometheus") else {
        return;
    };
    let env = testbed(TestbedOptions::default()).await;
    let (mut d, addr) = synced_daemon(&env).await;
    let prom = Prometheus::start(&bin, &addr);
    // The target is up once a scrape went through Prometheus's parser (OpenMetrics: its
    // Accept header prefers it); any parse error would show as lastError.
    let deadline = Instant::now() + Duration::from_secs(30);
    let target = loop {
        let t = prom
            .api("targets")
            .await
            .map(|v| v["data"]["activeTargets"][0].clone())
            .unwrap_or_default();
        if t["health"] == "up" || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(target["health"], "up", "{target}\n{}", prom.log());
    assert_eq!(target["lastError"], "", "{target}");
    let ok = eventually_async(Duration::from_secs(15), || async {
        prom.value("vmss_sync_server_changes_total{change=\"added\"}")
            .await
            == Some(2.0)
    })
    .await;
    assert!(ok, "{}", prom.log());
    assert_eq!(prom.value("vmss_sync_build_info").await, Some(1.0));
    assert_eq!(prom.value("vmss_sync_leader").await, Some(1.0));
    let scraped = prom.value("scrape_samples_scraped").await.unwrap_or(0.0);
    let page = scrape(&addr).await;
    let samples = page.lines().filter(|l| !l.starts_with('#')).count() as f64;
    println!("Prometheus 2.42 scraped {scraped} samples over OpenMetrics; the page has {samples}");
    // All of the page went in (an OpenMetrics parse error drops the whole scrape); series of
    // ARM operations first used between the two reads may differ.
    assert!((scraped - samples).abs() <= 10.0, "{scraped} vs {samples}");
    assert!(
        prom.value("process_start_time_seconds")
            .await
            .unwrap_or(0.0)
            > 1.6e9
    );

    // Every query of the dashboard and every alert expression is valid PromQL for this
    // Prometheus, and those of the dashboard that should have data have it.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("packaging/grafana/vmss-sync.json")).unwrap(),
    )
    .unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*")
                .replace("$upstream", ".*")
        })
        .collect();
    let dashboard_queries = exprs.len();
    let rules = std::fs::read_to_string(repo().join("packaging/prometheus/alerts.yml")).unwrap();
    exprs.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_string),
    );
    let mut empty = Vec::new();
    for e in &exprs {
        let q: String = url::form_urlencoded::byte_serialize(e.as_bytes()).collect();
        let v = prom
            .api(&format!("query?query={q}"))
            .await
            .expect("query answer");
        assert_eq!(v["status"], "success", "{e}: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(e.clone());
        }
    }
    println!(
        "{dashboard_queries} dashboard queries and {} alert expressions accepted by Prometheus 2.42; without data now: {empty:?}",
        exprs.len() - dashboard_queries
    );
    for e in &empty[..] {
        // Alerts that are not firing have no result; so have failed lease requests
        // (no election here) and, within the first minute, changes over 1m windows.
        assert!(
            !e.contains("vmss_sync_upstream_servers") && !e.contains("process_resident"),
            "{e} has no data"
        );
    }
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn alert_rules_pass_promtool_check_and_unit_tests_and_name_only_real_metrics() {
    let rules = repo().join("packaging/prometheus/alerts.yml");
    let tests = repo().join("packaging/prometheus/alerts.test.yml");
    let dashboard = repo().join("packaging/grafana/vmss-sync.json");
    let rules_text = std::fs::read_to_string(&rules).expect("alerts.yml");
    let dashboard_text = std::fs::read_to_string(&dashboard).expect("dashboard");
    let dash: serde_json::Value = serde_json::from_str(&dashboard_text).expect("dashboard JSON");
    assert!(
        dash["panels"].as_array().is_some_and(|p| p.len() >= 8),
        "panels"
    );

    // Every metric the rules and the dashboard name is on a real scrape (histogram
    // samples by their own names).
    let env = testbed(TestbedOptions::default()).await;
    let (mut d, addr) = synced_daemon(&env).await;
    let page = get(&addr, "/metrics").await.body;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
    let exposed = sample_names(&page);
    let mut used = metric_names_in(&rules_text);
    used.extend(metric_names_in(&dashboard_text));
    // Those labelled by ARM operation appear with the first ARM request, which has come.
    let missing: Vec<_> = used.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(missing.is_empty(), "not exposed: {missing:?}\n{page}");
    assert!(used.len() >= 12, "{used:?}");

    let Some(tool) = prometheus_tool("promtool") else {
        return;
    };
    let dir = rules.parent().unwrap();
    let (code, out) = promtool(&tool, &["check", "rules", "alerts.yml"], "", dir);
    println!("promtool check rules alerts.yml: exit {code}\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    let (code, out) = promtool(&tool, &["test", "rules", "alerts.test.yml"], "", dir);
    println!("promtool test rules alerts.test.yml: exit {code}\n{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(tests.exists());
}
