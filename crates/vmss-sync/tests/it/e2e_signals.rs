//! Signals at any moment of the real binary's life: during a slow start-up (ARM answers
//! 429 with `Retry-After` to the startup check's reads) SIGTERM and SIGINT exit 0 at
//! once and write nothing, and SIGHUP is remembered and applied once the daemon runs; a
//! SIGHUP with a hostile file keeps the running configuration.

use crate::support::common;

use common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{Fault, Service, TestbedOptions, UpstreamKind};

/// Seconds each throttled answer asks the client to wait.
const RETRY_AFTER: u64 = 3;
/// Throttled answers before ARM serves the startup reads: start-up then lasts at least
/// `THROTTLED × RETRY_AFTER` seconds.
const THROTTLED: usize = 3;

/// A testbed whose ARM throttles the scale-set reads `THROTTLED` times, and a daemon started
/// on it with `port`; returns once the daemon's first ARM read was answered (it is then
/// waiting out `Retry-After`).
async fn slow_start(port: u16) -> (Env, Daemon) {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    env.tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets",
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "The request is being throttled.".into(),
            retry_after: Some(RETRY_AFTER),
        },
        THROTTLED,
    );
    let cfg = env.config("", &upstream_yaml("web", "web", port, "http"));
    let d = Daemon::run(&env, &cfg).spawn();
    assert!(
        eventually(Duration::from_secs(15), || env
            .tb
            .requests_to(Service::Arm)
            .iter()
            .any(|r| r.status == 429))
        .await,
        "the startup check reads ARM:\n{}",
        d.log_text()
    );
    (env, d)
}

async fn stop_signal_during_startup_exits_0_at_once(sig: &str) {
    let (env, mut d) = slow_start(80).await;
    // Let the handlers face a process that is really waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    d.signal(sig);
    let code = d.wait(Duration::from_secs(10)).await;
    let took = sent.elapsed();
    eprintln!("SIG{sig} during start-up: exit {code} after {took:?}");
    assert_eq!(code, 0, "SIGTERM/SIGINT during start-up:\n{}", d.log_text());
    assert!(
        took < Duration::from_secs(2),
        "exits at once, not after start-up ({took:?})"
    );
    assert!(env.nginx_writes().is_empty(), "nothing written");
    assert!(
        d.log_text().contains("Terminating during start-up"),
        "{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_throttled_startup_exits_0_at_once_and_writes_nothing() {
    stop_signal_during_startup_exits_0_at_once("TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_a_throttled_startup_exits_0_at_once_and_writes_nothing() {
    stop_signal_during_startup_exits_0_at_once("INT").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_during_a_throttled_startup_is_applied_once_the_daemon_runs() {
    let (env, mut d) = slow_start(80).await;
    // The file changes while start-up waits; SIGHUP asks for it.
    env.config("", &upstream_yaml("web", "web", 8080, "http"));
    d.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "SIGHUP during start-up does not kill the daemon:\n{}",
        d.log_text()
    );
    assert!(
        eventually(Duration::from_secs(30), || env
            .servers(UpstreamKind::Http, "web")
            == env.ips("web", 8080))
        .await,
        "the new file is in force once the daemon runs:\n{}",
        d.log_text()
    );
    let log = d.log_text();
    assert!(log.contains("Configuration reloaded"), "{log}");
    assert!(
        env.all_servers(UpstreamKind::Http, "web")
            .iter()
            .all(|s| s.ends_with(":8080")),
        "the start-up file's port was never written: {:?}",
        env.all_servers(UpstreamKind::Http, "web")
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

/// `prlimit` (util-linux); None (after a message) on a developer machine without it.
fn prlimit() -> Option<&'static str> {
    let p = "/usr/bin/prlimit";
    if std::path::Path::new(p).exists() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prlimit (util-linux) is required in CI"
    );
    eprintln!("SKIPPED: prlimit (util-linux) is not installed");
    None
}

/// `VmSize` of a process, in KiB.
fn vm_size_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_an_alias_bomb_keeps_the_running_configuration_within_its_memory_limit() {
    let Some(prlimit) = prlimit() else { return };
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let good = upstream_yaml("web", "web", 80, "http");
    let cfg = env.config("", &good);
    let mut d = Daemon::run(&env, &cfg).spawn();
    d.until(
        Duration::from_secs(15),
        "env.servers(UpstreamKind::Http, \"web\").len() == 2",
        || env.servers(UpstreamKind::Http, "web").len() == 2,
    )
    .await;
    // 128 MiB more address space than the running daemon has: the 300 MB a 60 KB string
    // aliased 5,000 times would take cannot fit.
    let pid = d.child.id().expect("pid");
    let limit = (vm_size_kib(pid) << 10) + (128 << 20);
    let ok = std::process::Command::new(prlimit)
        .args(["--pid", &pid.to_string(), &format!("--as={limit}")])
        .status()
        .expect("prlimit runs")
        .success();
    assert!(ok, "prlimit --pid {pid}");
    let bomb = format!(
        "{good}x: &s {}\ny: [{}]\n",
        "s".repeat(60_000),
        vec!["*s"; 5_000].join(", ")
    );
    env.config("", &bomb);
    d.signal("HUP");
    d.until(
        Duration::from_secs(10),
        "d.log_text().contains(\"reload failed\")",
        || d.log_text().contains("reload failed"),
    )
    .await;
    assert!(
        d.child.try_wait().expect("try_wait").is_none(),
        "the daemon survives the reload:\n{}",
        d.log_text()
    );
    assert!(
        d.log_text().contains("copy more than 1048576 bytes"),
        "{}",
        d.log_text()
    );
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 3)
        .await,
        "still syncing with the running configuration:\n{}",
        d.log_text()
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}
