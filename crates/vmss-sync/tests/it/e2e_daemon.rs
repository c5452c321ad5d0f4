//! End to end through the real binary running as a daemon: the loop, nginx-asg-sync's
//! flags, SIGHUP reloads and SIGTERM.

use crate::support::common;

use common::*;
use std::time::Duration;
use vmss_testbed::{TestbedOptions, UpstreamKind};

#[tokio::test(flavor = "multi_thread")]
async fn daemon_started_with_nginx_asg_sync_flags_follows_the_fleet_and_stops_on_sigterm() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &upstream_yaml("web", "web", 80, "http"));
    let log_path = env.dir.path().join("asg-sync.log");
    let mut d = Daemon::run(&env, &cfg)
        .args(&[
            &format!("-config_path={}", cfg.display()),
            &format!("-log_path={}", log_path.display()),
        ])
        .log("stderr.log")
        .spawn();
    let synced = |n: usize| {
        let servers = env.servers(UpstreamKind::Http, "web");
        servers.len() == n && servers == env.ips("web", 80)
    };
    d.until(Duration::from_secs(15), "synced(2)", || synced(2))
        .await;
    env.tb.fleet().scale_to(SUB, RG, "web", 5);
    assert!(
        eventually(Duration::from_secs(15), || synced(5)).await,
        "scale out followed"
    );
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    assert!(
        eventually(Duration::from_secs(15), || synced(3)).await,
        "scale in followed"
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
    assert_eq!(
        env.servers(UpstreamKind::Http, "web").len(),
        3,
        "shutdown removes nothing"
    );
    let file_log = std::fs::read_to_string(&log_path).expect("-log_path file written");
    assert!(
        file_log.contains("Updated HTTP servers of web for group web"),
        "{file_log}"
    );
    assert!(file_log.contains("Terminating..."), "{file_log}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "log file is private");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_valid_new_file_and_keeps_running_on_an_invalid_one() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config(
        "log_format: json\n",
        &upstream_yaml("web", "web", 80, "http"),
    );
    let mut d = Daemon::run(&env, &cfg).spawn();
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 2)
        .await
    );
    // An invalid file: the old configuration keeps running.
    env.write("config.yaml", "upstreams: [\n");
    d.signal("HUP");
    d.until(
        Duration::from_secs(10),
        "d.log_text().contains(\"reload failed\")",
        || d.log_text().contains("reload failed"),
    )
    .await;
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 3)
        .await,
        "still syncing with the old configuration"
    );
    // A valid new file with another port: applied.
    env.config(
        "log_format: json\n",
        &upstream_yaml("web", "web", 8080, "http"),
    );
    d.signal("HUP");
    d.until(
        Duration::from_secs(15),
        "env.servers(UpstreamKind::Http, \"web\") == env.ips(\"web\", 8080)",
        || env.servers(UpstreamKind::Http, "web") == env.ips("web", 8080),
    )
    .await;
    d.signal("INT");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
    let log = d.log_text();
    let first = log
        .lines()
        .find(|l| l.contains("Updated HTTP"))
        .expect("an update line");
    let v: serde_json::Value = serde_json::from_str(first).expect("JSON log lines");
    assert_eq!(v["fields"]["upstream"], "web");
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_refuses_to_start_on_a_missing_upstream() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    let cfg = env.config("", &upstream_yaml("web", "web", 80, "http"));
    let mut d = Daemon::run(&env, &cfg).spawn();
    assert_eq!(d.wait(Duration::from_secs(15)).await, 1);
    assert!(
        d.log_text().contains("UpstreamNotFound"),
        "{}",
        d.log_text()
    );
}
