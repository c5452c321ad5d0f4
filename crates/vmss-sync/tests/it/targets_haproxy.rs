//! HAProxy through its Runtime API, proven with a real HAProxy and real traffic: the testbed
//! fleet's instances are HTTP backends on 127.0.0.x that answer with their own address, the
//! real `vmss-sync` binary keeps an HAProxy backend in sync through the stats socket, and
//! requests through HAProxy show which instances take traffic.

use crate::support::common;
use crate::support::targets_common;

use common::*;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use targets_common::*;
use vmss_testbed::{Orchestration, TestbedOptions};

const WAIT: Duration = Duration::from_secs(20);

fn runtime_target(name: &str, socket: &std::path::Path, extra: &str) -> String {
    format!(
        "targets:\n  {name}:\n    type: haproxy_runtime\n    address: {}\n{extra}",
        socket.display()
    )
}

/// An upstream on `target`; leaving servers drain for `drain` (`0s`: removed at once).
fn upstream_to(name: &str, set: &str, port: u16, target: &str, drain: &str) -> String {
    format!(
        "  - name: {name}\n    virtual_machine_scale_set: {set}\n    port: {port}\n    kind: http\n    target: {target}\n    drain_timeout: {drain}\n"
    )
}

/// A fleet `set` whose instances get addresses from 127.0.0.2 on, scaled to `n`.
fn fleet(env: &Env, set: &str, n: usize) {
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, set, Orchestration::Uniform, "eastus");
    env.tb
        .fleet()
        .set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, 2));
    env.tb.fleet().scale_to(SUB, RG, set, n);
}

/// Managed servers taking new traffic (neither in maintenance nor draining).
fn managed(servers: &[(String, String, u32)]) -> Vec<String> {
    let mut v: Vec<String> = servers
        .iter()
        .filter(|(name, _, admin)| name.starts_with("vmss-") && admin & (0x01 | 0x08) == 0)
        .map(|(_, addr, _)| addr.clone())
        .collect();
    v.sort();
    v
}

/// Managed servers that exist, whatever their state.
fn present(servers: &[(String, String, u32)]) -> Vec<String> {
    let mut v: Vec<String> = servers
        .iter()
        .filter(|(name, _, _)| name.starts_with("vmss-"))
        .map(|(_, addr, _)| addr.clone())
        .collect();
    v.sort();
    v
}

/// Polls HAProxy until the managed servers of `backend` in service are `want`.
async fn until_servers(hap: &Haproxy, backend: &str, want: &[String]) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = managed(&hap.servers(backend).await);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls HAProxy until the managed servers of `backend` that exist at all are `want`.
async fn until_present(hap: &Haproxy, backend: &str, want: &[String]) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = present(&hap.servers(backend).await);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_runtime_traffic_follows_scale_out_scale_in_and_survives_a_reload() {
    if !have("haproxy") {
        return;
    }
    eprintln!("testing against {}", version("haproxy", "-v"));
    let env = testbed(TestbedOptions::default()).await;
    fleet(&env, "web", 3);
    let pool = ips(2, 9);
    let (_backends, port) = Backends::start_free(&pool).await;
    let (_backup, backup_port) = Backends::start_free(&[Ipv4Addr::LOCALHOST]).await;
    let backup = format!("127.0.0.1:{backup_port}");
    let hap = Haproxy::start(
        env.dir.path(),
        "web",
        &format!("backend web\n    balance roundrobin\n    server static-backup {backup} backup\n"),
    )
    .await;
    let client = client();
    assert_eq!(
        answered(&client, &hap.url(), 5).await,
        std::slice::from_ref(&backup),
        "before the first sync only the configuration's backup server answers"
    );

    let cfg = env.config(
        &runtime_target("edge", &hap.socket, ""),
        &upstream_to("web", "web", port, "edge", "2s"),
    );
    let mut daemon = Daemon::run(&env, &cfg).log("vmss-sync.log").spawn();

    let want = env.ips("web", port);
    assert_eq!(want.len(), 3);
    let got = until_answered(&client, &hap.url(), &want, WAIT).await;
    assert_eq!(
        got,
        want,
        "traffic reaches exactly the 3 instances\n{}",
        daemon.log_text()
    );

    env.tb.fleet().scale_to(SUB, RG, "web", 6);
    let want = env.ips("web", port);
    let got = until_answered(&client, &hap.url(), &want, WAIT).await;
    assert_eq!(
        got,
        want,
        "scale-out to 6 is followed\n{}",
        daemon.log_text()
    );

    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let want = env.ips("web", port);
    let got = until_answered(&client, &hap.url(), &want, WAIT).await;
    assert_eq!(
        got,
        want,
        "scale-in to 2 is followed\n{}",
        daemon.log_text()
    );
    // Leaving servers drain first (drain_timeout: 2s): no new request, still present.
    let servers = hap.servers("web").await;
    assert_eq!(managed(&servers), want, "{servers:?}");
    assert!(
        present(&servers).len() > want.len(),
        "draining servers are not deleted at once: {servers:?}"
    );
    assert!(
        daemon.log_text().contains("Draining: ["),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        answered(&client, &hap.url(), 40).await,
        want,
        "leaving instances get no request"
    );
    assert_eq!(
        until_present(&hap, "web", &want).await,
        want,
        "deleted from HAProxy once drained\n{}",
        daemon.log_text()
    );
    let servers = hap.servers("web").await;
    assert!(
        servers
            .iter()
            .any(|(n, a, _)| n == "static-backup" && *a == backup),
        "the configuration's own server is left alone: {servers:?}"
    );

    // A reload forgets every runtime server; the next cycle adds them back.
    let added_before = daemon.log_text().matches("Added: [").count();
    hap.reload();
    let repaired = eventually(WAIT, || {
        daemon.log_text().matches("Added: [").count() > added_before
    })
    .await;
    assert!(
        repaired,
        "a cycle re-added the servers after the reload\n{}",
        daemon.log_text()
    );
    let got = until_answered(&client, &hap.url(), &want, WAIT).await;
    assert_eq!(
        got, want,
        "traffic is back on the instances after the reload"
    );
    let servers = hap.servers("web").await;
    assert_eq!(managed(&servers), want);
    assert!(
        servers
            .iter()
            .any(|(n, _, _)| n.starts_with("vmss-127-0-0-")),
        "servers are named after their address: {servers:?}"
    );
    daemon.signal("TERM");
    assert_eq!(daemon.wait(Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_runtime_fills_and_frees_server_template_slots_on_a_static_backend() {
    if !have("haproxy") {
        return;
    }
    let env = testbed(TestbedOptions::default()).await;
    fleet(&env, "tpl", 3);
    let pool = ips(2, 9);
    let (_backends, port) = Backends::start_free(&pool).await;
    let hap = Haproxy::start(
        env.dir.path(),
        "tpl",
        "backend tpl\n    balance static-rr\n    server-template vmss- 1-4 127.0.0.1:1 disabled\n\n\
         backend nodyn\n    balance static-rr\n",
    )
    .await;
    let client = client();
    let cfg = env.config(
        &runtime_target("edge", &hap.socket, ""),
        &upstream_to("tpl", "tpl", port, "edge", "0s"),
    );
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = env.ips("tpl", port);
    assert_eq!(answered(&client, &hap.url(), 24).await, want);
    let servers = hap.servers("tpl").await;
    assert_eq!(servers.len(), 4, "only the template's slots: {servers:?}");
    assert_eq!(managed(&servers), want);

    // Five instances, four slots: four are served, the fifth is an error that says why.
    env.tb.fleet().scale_to(SUB, RG, "tpl", 5);
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("has no free slot for"),
        "{}",
        out.stderr
    );
    assert_eq!(managed(&hap.servers("tpl").await).len(), 4);

    env.tb.fleet().scale_to(SUB, RG, "tpl", 2);
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = env.ips("tpl", port);
    assert_eq!(answered(&client, &hap.url(), 24).await, want);
    let servers = hap.servers("tpl").await;
    assert_eq!(servers.len(), 4, "slots are never deleted: {servers:?}");
    assert_eq!(
        servers
            .iter()
            .filter(|(_, _, admin)| admin & 0x01 != 0)
            .count(),
        2,
        "freed slots are in maintenance: {servers:?}"
    );

    // Dynamic servers on a static-rr backend: refused by HAProxy, reported with the way out.
    let cfg = env.write(
        "nodyn.yaml",
        &format!(
            "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
             resource_manager_endpoint: {}\n{}upstreams:\n{}",
            env.tb.arm_url(),
            runtime_target("edge", &hap.socket, "    mode: dynamic\n"),
            upstream_to("nodyn", "tpl", port, "edge", "0s"),
        ),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("dynamic balance algorithm") && out.stderr.contains("server-template"),
        "{}",
        out.stderr
    );
}

/// What a load run through HAProxy saw.
struct Load {
    ok: u64,
    failed: u64,
    /// Failures after vmss-sync had removed the instances that went away.
    failed_after_removal: u64,
    seconds: f64,
}

/// Runs 8 keep-alive clients against HAProxy while the fleet scales 3 → 6 → 3 under a running
/// vmss-sync (`drain_timeout: 1s`). With `vanish_first`, the removed instances stop (listener
/// and connections closed) as soon as ARM drops them, before vmss-sync has seen it; otherwise
/// they stop once vmss-sync has drained and deleted them.
async fn scale_under_load(first_ip: u8, backend_extra: &str, vanish_first: bool) -> Load {
    let env = testbed(TestbedOptions::default()).await;
    let pool = ips(first_ip, first_ip + 7);
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "load", Orchestration::Uniform, "eastus");
    env.tb
        .fleet()
        .set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, first_ip));
    env.tb.fleet().scale_to(SUB, RG, "load", 3);
    let (mut backends, port) = Backends::start_free(&pool).await;
    let hap = Haproxy::start(
        env.dir.path(),
        "load",
        &format!("backend load\n    balance roundrobin\n{backend_extra}"),
    )
    .await;
    let cfg = env.config(
        &runtime_target("edge", &hap.socket, ""),
        &upstream_to("load", "load", port, "edge", "1s"),
    );
    let daemon = Daemon::run(&env, &cfg).log("vmss-sync.log").spawn();
    let client = client();
    let want = env.ips("load", port);
    assert_eq!(
        until_answered(&client, &hap.url(), &want, WAIT).await,
        want,
        "{}",
        daemon.log_text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicBool::new(false));
    let failed_after = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, client, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            client.clone(),
            hap.url(),
        );
        let (removed, failed_after) = (removed.clone(), failed_after.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let outcome = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        r.text().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status().as_u16())),
                    Err(e) => Err(e.to_string()),
                };
                match outcome {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if removed.load(Ordering::Relaxed) {
                            failed_after.fetch_add(1, Ordering::Relaxed);
                        }
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("failed request: {e}");
                        }
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.tb.fleet().scale_to(SUB, RG, "load", 6);
    let out_want = env.ips("load", port);
    assert_eq!(
        until_servers(&hap, "load", &out_want).await,
        out_want,
        "scale-out followed under load"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.tb.fleet().scale_to(SUB, RG, "load", 3);
    let in_want = env.ips("load", port);
    let gone: Vec<&String> = out_want.iter().filter(|a| !in_want.contains(a)).collect();
    if vanish_first {
        for g in &gone {
            backends.stop(g);
        }
    }
    assert_eq!(
        until_servers(&hap, "load", &in_want).await,
        in_want,
        "scale-in followed under load: leaving servers take no new request"
    );
    removed.store(true, Ordering::Relaxed);
    assert_eq!(
        until_present(&hap, "load", &in_want).await,
        in_want,
        "deleted after the drain"
    );
    for g in &gone {
        backends.stop(g);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let run = Load {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        failed_after_removal: failed_after.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    };
    println!(
        "{}: scale 3 -> 6 -> 3 under load ({}): {} requests in {:.1} s = {:.0} req/s through \
         HAProxy, {} failed ({} once vmss-sync took the leaving instances out)",
        version("haproxy", "-v"),
        if vanish_first {
            "instances vanish before vmss-sync sees it, HAProxy retry-on"
        } else {
            "instances drained, deleted, then stopped"
        },
        run.ok,
        run.seconds,
        run.ok as f64 / run.seconds,
        run.failed,
        run.failed_after_removal
    );
    assert!(run.ok > 100, "the load ran: {} requests", run.ok);
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_runtime_scale_events_under_load_fail_no_request() {
    if !have("haproxy") {
        return;
    }
    let run = scale_under_load(13, "", false).await;
    assert_eq!(run.failed, 0, "no request failed during the scale events");
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_runtime_instances_that_vanish_first_fail_only_until_the_next_cycle() {
    if !have("haproxy") {
        return;
    }
    // A VM deleted by the scale set is gone before any cycle can see it: until the next
    // cycle removes it, HAProxy's L7 retries (idempotent GETs, redispatched) catch most of
    // the requests sent to it, not all. Once it is removed, nothing fails.
    let run = scale_under_load(
        21,
        "    retry-on conn-failure empty-response response-timeout\n",
        true,
    )
    .await;
    assert_eq!(
        run.failed_after_removal, 0,
        "nothing fails once the instances are removed"
    );
}
