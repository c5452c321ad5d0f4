//! Signals at any moment of the real binary's life: during a slow start-up (ARM answers
//! 429 with `Retry-After` to the startup check's reads) SIGTERM and SIGINT exit 0 at
//! once and write nothing, and SIGHUP is remembered and applied once the daemon runs; a
//! SIGHUP with a hostile file keeps the running configuration.

mod common;

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
    let d = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("daemon.log"),
    );
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
