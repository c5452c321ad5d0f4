//! A scale-in inside Azure's terminate window, proven with a real HAProxy (Runtime API) and
//! real traffic: the testbed fleet's instances are HTTP backends on 127.0.0.x, the real
//! `vmss-sync` binary keeps the HAProxy backend in sync, and a backend process is stopped
//! only when the testbed actually deletes its VM (never earlier), as a VM stops serving
//! only when Azure deletes it.
//!
//! With a terminate notification, leaving instances stay `Deleting` (still running) for
//! the delay: vmss-sync drains them while they serve, and no request fails. Without one
//! they vanish at once; that run is measured beside it (failed requests counted and
//! printed, not asserted: some fail whatever the load balancer does).

use crate::support::common;
use crate::support::targets_common;

use common::*;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use targets_common::*;
use vmss_testbed::{Orchestration, TestbedOptions};

const WAIT: Duration = Duration::from_secs(20);

/// Managed servers taking new traffic (neither in maintenance nor draining).
fn managed(servers: &[(String, String, u32)]) -> BTreeSet<String> {
    servers
        .iter()
        .filter(|(name, _, admin)| name.starts_with("vmss-") && admin & (0x01 | 0x08) == 0)
        .map(|(_, addr, _)| addr.clone())
        .collect()
}

/// Managed servers that exist, whatever their state.
fn present(servers: &[(String, String, u32)]) -> BTreeSet<String> {
    servers
        .iter()
        .filter(|(name, _, _)| name.starts_with("vmss-"))
        .map(|(_, addr, _)| addr.clone())
        .collect()
}

/// What one scale-in under load saw.
struct Run {
    ok: u64,
    failed: u64,
    seconds: f64,
    /// Leaving servers HAProxy still sent new requests to when their VM was deleted.
    served_when_deleted: Vec<String>,
    /// From the scale-in to the first leaving server taking no new request (None: never
    /// seen before they were gone).
    drain_started: Option<Duration>,
    /// From the scale-in to the last leaving VM's deletion.
    deleted_after: Duration,
}

/// Scales the set 6 → 3 under 8 keep-alive clients through HAProxy, with
/// `sync_interval: 1s`, `health_interval: 1s`, `drain_timeout: 1s` (a drain needs 3 s of
/// window) and a terminate notification of `window` (None: none). A watcher stops each
/// leaving instance's backend the moment the fleet no longer has its VM.
async fn scale_in_under_load(first_ip: u8, window: Option<Duration>) -> Run {
    let env = testbed(TestbedOptions::default()).await;
    let fleet = env.tb.fleet();
    fleet.add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    fleet.set_terminate_notification(SUB, RG, "web", window);
    fleet.set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, first_ip));
    fleet.scale_to(SUB, RG, "web", 6);
    let pool: Vec<Ipv4Addr> = ips(first_ip, first_ip + 5);
    let (backends, port) = Backends::start_free(&pool).await;
    let backends = Arc::new(Mutex::new(backends));
    let hap = Arc::new(
        Haproxy::start(
            env.dir.path(),
            "web",
            "backend web\n    balance roundrobin\n",
        )
        .await,
    );
    let cfg = env.config(
        &format!(
            "health_interval: 1s\ntargets:\n  edge:\n    type: haproxy_runtime\n    address: {}\n",
            hap.socket.display()
        ),
        &format!(
            "  - name: web\n    virtual_machine_scale_set: web\n    port: {port}\n    kind: http\n    \
             target: edge\n    drain_timeout: 1s\n"
        ),
    );
    let daemon = Daemon::run(&env, &cfg).log("vmss-sync.log").spawn();
    let client = client();
    let all = env.ips("web", port);
    assert_eq!(
        until_answered(&client, &hap.url(), &all, WAIT).await,
        all,
        "{}",
        daemon.log_text()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, client, url) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            client.clone(),
            hap.url(),
        );
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

    let scaled = Instant::now();
    fleet.scale_to(SUB, RG, "web", 3);
    let stay: BTreeSet<String> = fleet
        .instance_ips(SUB, RG, "web")
        .iter()
        .take(3)
        .map(|ip| format!("{ip}:{port}"))
        .collect();
    let leaving: BTreeSet<String> = all.iter().filter(|a| !stay.contains(*a)).cloned().collect();
    assert_eq!(leaving.len(), 3, "three instances leave");

    // The watcher: a VM's backend stops when the fleet deletes the VM, not before; at that
    // moment HAProxy must already have taken it out of rotation.
    let mut running = leaving.clone();
    let mut served_when_deleted = Vec::new();
    let mut drain_started = None;
    let deadline = Instant::now() + WAIT + window.unwrap_or_default();
    while !running.is_empty() && Instant::now() < deadline {
        let in_rotation = managed(&hap.servers("web").await);
        if drain_started.is_none() && leaving.iter().any(|a| !in_rotation.contains(a)) {
            drain_started = Some(scaled.elapsed());
        }
        let fleet_has: BTreeSet<String> = fleet
            .instance_ips(SUB, RG, "web")
            .iter()
            .map(|ip| format!("{ip}:{port}"))
            .collect();
        for gone in running.clone().iter().filter(|a| !fleet_has.contains(*a)) {
            if in_rotation.contains(gone) {
                served_when_deleted.push(gone.clone());
            }
            backends.lock().unwrap().stop(gone);
            running.remove(gone);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deleted_after = scaled.elapsed();
    assert!(running.is_empty(), "the fleet deleted every leaving VM");

    // vmss-sync follows: only the staying servers remain.
    let until = Instant::now() + WAIT;
    loop {
        let got = present(&hap.servers("web").await);
        if got == stay || Instant::now() > until {
            assert_eq!(got, stay, "{}", daemon.log_text());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        let _ = t.await;
    }
    let run = Run {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        served_when_deleted,
        drain_started,
        deleted_after,
    };
    println!(
        "{}: scale-in 6 -> 3 under load, {}: {} requests in {:.1} s = {:.0} req/s through \
         HAProxy, {} failed; first leaving server out of rotation {} after the scale-in, \
         last leaving VM deleted {:.2} s after it; still in rotation when deleted: {:?}",
        version("haproxy", "-v"),
        match window {
            Some(w) => format!("terminate notification of {} s", w.as_secs_f64()),
            None => "no terminate notification".to_string(),
        },
        run.ok,
        run.seconds,
        run.ok as f64 / run.seconds,
        run.failed,
        run.drain_started
            .map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
        run.deleted_after.as_secs_f64(),
        run.served_when_deleted
    );
    if window.is_some() {
        let log = daemon.log_text();
        assert!(
            !log.contains("has no terminate notification"),
            "no warning for a set with a long enough window\n{log}"
        );
    } else {
        let log = daemon.log_text();
        assert!(
            log.contains("has no terminate notification"),
            "the daemon warns about the missing terminate notification\n{log}"
        );
    }
    assert!(run.ok > 100, "the load ran: {} requests", run.ok);
    run
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_scale_in_inside_the_terminate_window_fails_no_request_and_without_one_is_measured()
{
    if !have("haproxy") {
        return;
    }
    let window = Duration::from_secs(5);
    let with = scale_in_under_load(61, Some(window)).await;
    assert!(
        with.served_when_deleted.is_empty(),
        "every leaving server was out of rotation before its VM was deleted: {:?}",
        with.served_when_deleted
    );
    let drain = with
        .drain_started
        .expect("the drain started inside the window");
    assert!(
        drain < window,
        "the drain started {drain:?} after the scale-in, inside the {window:?} window"
    );
    assert!(
        with.deleted_after >= window,
        "the VMs were deleted only when the window ended ({:?})",
        with.deleted_after
    );
    assert_eq!(
        with.failed, 0,
        "no request failed in a scale-in inside the terminate window"
    );

    let without = scale_in_under_load(71, None).await;
    println!(
        "failed requests in a scale-in: {} with a {} s terminate notification, {} without \
         ({} and {} requests)",
        with.failed,
        window.as_secs(),
        without.failed,
        with.ok,
        without.ok
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_warns_about_sets_without_a_terminate_notification_or_with_a_short_one() {
    let env = testbed(TestbedOptions::default()).await;
    let fleet = env.tb.fleet();
    for (set, window) in [
        ("none", None),
        ("short", Some(Duration::from_secs(40))),
        ("long", Some(Duration::from_secs(300))),
    ] {
        env.uniform(set, 2);
        fleet.set_terminate_notification(SUB, RG, set, window);
        env.upstream(vmss_testbed::UpstreamKind::Http, set);
    }
    // drain_timeout 30s (default) + health_interval 15s (default) + sync_interval 1s = 46 s.
    let upstreams: String = ["none", "short", "long"]
        .iter()
        .map(|s| upstream_yaml(s, s, 80, "http"))
        .collect();
    let cfg = env.config("", &upstreams);
    let out = run(&["plan", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let about = |set: &str| -> Vec<&str> {
        lines
            .iter()
            .copied()
            .filter(|l| l.contains(&format!("{RG}/{set}")))
            .collect()
    };
    let none = about("none");
    assert_eq!(none.len(), 1, "{}", out.stderr);
    assert!(
        none[0].contains("has no terminate notification")
            && none[0].contains("--enable-terminate-notification true"),
        "{}",
        none[0]
    );
    let short = about("short");
    assert_eq!(short.len(), 1, "{}", out.stderr);
    assert!(
        short[0].contains("by 40 s, shorter than the 46 s"),
        "{}",
        short[0]
    );
    assert!(about("long").is_empty(), "{}", out.stderr);
}
