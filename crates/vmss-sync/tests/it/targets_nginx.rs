//! Open-source NGINX through a rendered upstream file, proven with a real nginx and real
//! traffic: the testbed fleet's instances are HTTP backends on 127.0.0.x that answer with
//! their own address; the real `vmss-sync` binary renders the upstream file, validates it
//! with `nginx -t` and reloads nginx; requests through nginx show who takes traffic.

use crate::support::common;
use crate::support::targets_common;

use common::*;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use targets_common::*;
use vmss_testbed::{Orchestration, TestbedOptions};

const WAIT: Duration = Duration::from_secs(20);

fn yaml_list(words: &[String]) -> String {
    format!(
        "[{}]",
        words
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// `nginx … -t`, and a reload that also appends a line to `reloads.log`.
fn commands(dir: &Path) -> (Vec<String>, Vec<String>) {
    nginx_commands(dir)
}

fn reloads(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("reloads.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn file_target(dir: &Path, path: &Path) -> String {
    let (validate, reload) = commands(dir);
    format!(
        "targets:\n  oss:\n    type: nginx_file\n    path: {}\n    validate_command: {}\n    reload_command: {}\n",
        path.display(),
        yaml_list(&validate),
        yaml_list(&reload)
    )
}

fn upstream_to(name: &str, set: &str, port: u16) -> String {
    format!(
        "  - name: {name}\n    virtual_machine_scale_set: {set}\n    port: {port}\n    kind: http\n    max_fails: 2\n    fail_timeout: 5s\n    slow_start: 10s\n    target: oss\n    drain_timeout: 1s\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_file_traffic_follows_scale_out_and_scale_in_and_reloads_only_on_change() {
    if !have("nginx") {
        return;
    }
    eprintln!("testing against {}", version("nginx", "-v"));
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    env.tb
        .fleet()
        .set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, 2));
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    let pool = ips(2, 9);
    let (_backends, port) = Backends::start_free(&pool).await;
    let dir = env.dir.path();
    let file = dir.join("upstreams.conf");
    placeholder_upstreams(&file, &["web"]);
    let nginx = Nginx::start(dir, "web", &file).await;
    let client = fresh_client();
    assert_eq!(
        answered(&client, &nginx.url(), 3).await,
        ["<status 502>"],
        "before the first sync the upstream has only the placeholder"
    );

    let cfg = env.config(&file_target(dir, &file), &upstream_to("web", "web", port));
    let mut daemon = Daemon::run(&env, &cfg)
        .log_path(&dir.join("vmss-sync.log"))
        .spawn();
    let want = env.ips("web", port);
    let got = until_answered(&client, &nginx.url(), &want, WAIT).await;
    assert_eq!(
        got,
        want,
        "traffic reaches exactly the 3 instances\n{}",
        daemon.log_text()
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains(&format!(
            "    server {} max_fails=2 fail_timeout=5s;\n",
            want[0]
        )),
        "{text}"
    );
    assert!(
        !text.contains("slow_start"),
        "open-source nginx has no slow_start: {text}"
    );

    env.tb.fleet().scale_to(SUB, RG, "web", 6);
    let want = env.ips("web", port);
    let got = until_answered(&client, &nginx.url(), &want, WAIT).await;
    assert_eq!(
        got,
        want,
        "scale-out to 6 is followed\n{}",
        daemon.log_text()
    );

    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let want = env.ips("web", port);
    let got = until_answered(&client, &nginx.url(), &want, WAIT).await;
    assert_eq!(
        got,
        want,
        "scale-in to 2 is followed\n{}",
        daemon.log_text()
    );
    assert_eq!(
        answered(&client, &nginx.url(), 40).await,
        want,
        "leaving instances get no request"
    );
    // They were drained (rendered `down`) first, then dropped from the file.
    assert!(
        daemon.log_text().contains("Draining: ["),
        "{}",
        daemon.log_text()
    );
    let dropped = eventually(WAIT, || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        text.matches("    server 127.").count() == want.len()
    })
    .await;
    assert!(
        dropped,
        "{}",
        std::fs::read_to_string(&file).unwrap_or_default()
    );

    // The reload of the last change follows its write: let it land first.
    let mut last = reloads(dir);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = reloads(dir);
        if now == last {
            break;
        }
        last = now;
    }
    // Three more cycles with nothing to change: no write, no reload.
    let before = (
        reloads(dir),
        std::fs::metadata(&file).unwrap().modified().unwrap(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = (
        reloads(dir),
        std::fs::metadata(&file).unwrap().modified().unwrap(),
    );
    assert_eq!(
        before, after,
        "nothing changed: nothing written or reloaded"
    );
    assert!(reloads(dir) >= 3, "one reload per change at least");
    assert!(
        !nginx.error_log().contains("[emerg]"),
        "{}",
        nginx.error_log()
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(10)).await, 0);
}

/// The placeholder a user writes by hand so that nginx can start (docs/targets-adoption.md).
const HAND_WRITTEN: &str = "# Filled in by vmss-sync.\nupstream web {\n    zone web 64k;\n    server 127.0.0.1:1 down;\n}\n";

/// Starts nginx on `initial` as the upstream file and `vmss-sync run`; checks traffic
/// reaches the 3 instances, then overwrites the file with `overwrite` and reloads nginx
/// (as configuration management would) and checks the file is repaired and traffic back
/// within one interval (sync_interval 1 s).
async fn adopted_then_repaired(initial: &str, overwrite: &str) {
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    env.tb
        .fleet()
        .set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, 2));
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    let pool = ips(2, 5);
    let (_backends, port) = Backends::start_free(&pool).await;
    let dir = env.dir.path();
    let file = dir.join("upstreams.conf");
    std::fs::write(&file, initial).unwrap();
    let nginx = Nginx::start(dir, "web", &file).await;
    let client = fresh_client();
    assert_eq!(answered(&client, &nginx.url(), 3).await, ["<status 502>"]);

    // Nobody edits the file: traffic reaches the instances.
    let cfg = env.config(&file_target(dir, &file), &upstream_to("web", "web", port));
    let mut daemon = Daemon::run(&env, &cfg)
        .log_path(&dir.join("vmss-sync.log"))
        .spawn();
    let want = env.ips("web", port);
    let got = until_answered(&client, &nginx.url(), &want, WAIT).await;
    assert_eq!(got, want, "placeholder adopted\n{}", daemon.log_text());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with(vmss_sync::target::nginx_file::HEADER),
        "{text}"
    );

    // Configuration management puts a placeholder back and reloads nginx: traffic stops,
    // and vmss-sync repairs the file and reloads within one interval.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&file, overwrite).unwrap();
    let mut reload = std::process::Command::new(which("nginx"));
    reload.args(Nginx::flags(dir)).args(["-s", "reload"]);
    assert!(reload.status().unwrap().success());
    let broken = std::time::Instant::now();
    let got = until_answered(&client, &nginx.url(), &want, WAIT).await;
    let repaired = broken.elapsed();
    assert_eq!(got, want, "repaired\n{}", daemon.log_text());
    eprintln!(
        "overwritten file repaired and traffic back after {} ms (sync_interval 1 s)",
        repaired.as_millis()
    );
    // One interval (1 s ± 10 %) plus the cycle and until_answered's two rounds.
    assert!(
        repaired < Duration::from_secs(4),
        "repaired after {repaired:?}\n{}",
        daemon.log_text()
    );
    assert!(
        daemon.log_text().contains("was changed outside vmss-sync"),
        "{}",
        daemon.log_text()
    );
    assert!(
        !nginx.error_log().contains("[emerg]"),
        "{}",
        nginx.error_log()
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_file_hand_written_placeholder_is_adopted_and_an_overwritten_file_is_repaired_within_one_interval(
) {
    if !have("nginx") {
        return;
    }
    adopted_then_repaired(HAND_WRITTEN, HAND_WRITTEN).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_file_restored_from_an_old_copy_of_its_own_while_running_is_repaired_within_one_interval(
) {
    if !have("nginx") {
        return;
    }
    // vmss-sync's own empty file, as a backup taken before any instance existed.
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.conf");
    placeholder_upstreams(&old, &["web"]);
    let old = std::fs::read_to_string(&old).unwrap();
    adopted_then_repaired(&old, &old).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_file_rejected_by_nginx_t_is_rolled_back_and_not_reloaded() {
    if !have("nginx") {
        return;
    }
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    env.tb
        .fleet()
        .set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, 10));
    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let pool = ips(10, 11);
    let (_backends, port) = Backends::start_free(&pool).await;
    let dir = env.dir.path();
    let file = dir.join("upstreams.conf");
    placeholder_upstreams(&file, &["web"]);
    // nginx.conf defines `dup` itself: a file that also defines it fails `nginx -t`.
    let nginx = Nginx::start_with(
        dir,
        "web",
        &file,
        "    upstream dup { server 127.0.0.1:1; }",
    )
    .await;
    let before = std::fs::read_to_string(&file).unwrap();
    let cfg = env.config(
        &file_target(dir, &file),
        &format!(
            "{}{}",
            upstream_to("web", "web", port),
            upstream_to("dup", "web", port)
        ),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("duplicate upstream"),
        "nginx -t's complaint is reported: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("last good file is back"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        before,
        "last good file restored"
    );
    assert_eq!(reloads(dir), 0, "not reloaded");
    let client = fresh_client();
    assert_eq!(
        answered(&client, &nginx.url(), 3).await,
        ["<status 502>"],
        "nginx still runs its last good configuration"
    );
}
