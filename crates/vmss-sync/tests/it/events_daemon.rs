//! The daemon driven by events: the real `vmss-sync` binary with `sync_interval: 60s` and an
//! `events` queue in Azurite's queue service, the testbed's ARM and NGINX Plus. A scale-out
//! and a scale-in reach NGINX Plus within 2 s of their event being enqueued (the timer
//! alone would take up to a minute); messages are deleted once handled; a malformed
//! message is deleted; an event for nothing selected changes nothing; a daemon killed
//! between receiving and deleting a message loses nothing; of two replicas, only the
//! leader consumes.

use crate::support::common;
use crate::support::events_common;
use crate::support::ops_common;

use common::*;
use events_common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{Fault, Service, TestbedOptions, UpstreamKind};

fn set_id(set: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{set}")
}

/// Waits until the fake NGINX Plus upstream `web` holds exactly `want`; returns how long
/// it took from `since`, or None after `within`.
async fn reached(env: &Env, want: &[String], since: Instant, within: Duration) -> Option<Duration> {
    loop {
        if env.all_servers(UpstreamKind::Http, "web") == want {
            return Some(since.elapsed());
        }
        if since.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue_empty(q: &vmss_sync::events::queue::QueueClient, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        // Peeking would not show hidden messages; a get with a 1 s visibility does, and a
        // message it returns comes back before the daemon's next read matters here.
        match q.get_messages(32, Duration::from_secs(1)).await {
            Ok(m) if m.is_empty() => return true,
            _ if Instant::now() > deadline => return false,
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// A configuration with `sync_interval: 60s` and the event queue.
fn events_config(env: &Env, az: &Azurite, queue: &str, visibility: &str) -> std::path::PathBuf {
    let text = events_yaml(
        env,
        az,
        queue,
        "60s",
        "off",
        &format!("200ms\n  visibility_timeout: {visibility}"),
    );
    env.write("config.yaml", &text)
}

/// One upstream `web` of set `web` and the event queue (Shared Key from `${QUEUE_KEY}`),
/// with the given `sync_interval`, `admin_listen` and `poll_interval` (and what follows it
/// in the `events` section).
fn events_yaml(
    env: &Env,
    az: &Azurite,
    queue: &str,
    sync: &str,
    admin: &str,
    poll: &str,
) -> String {
    format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {}\nresource_manager_endpoint: {}\nsync_interval: {sync}\n\
         health_interval: 60s\nadmin_listen: {admin}\nlog_level: debug\n\
         events:\n  queue_url: {}\n  auth: shared_key\n  account_key: ${{QUEUE_KEY}}\n  \
         poll_interval: {poll}\n\
         upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    \
         kind: http\n    drain_timeout: 0s\n",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        az.queue_url(queue),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_between_receiving_and_deleting_an_event_loses_nothing() {
    let az = Azurite::queue();
    let q = az.client("crash", DEV_KEY);
    q.create().await.expect("create queue");
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = events_config(&env, &az, "crash", "2s");
    let first = env.ips("web", 80);
    let a = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("a.log")
        .spawn();
    assert!(
        reached(&env, &first, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        a.log_text()
    );
    // ARM answers slowly: the event's reconcile is still reading when the daemon dies.
    env.tb.faults().inject(
        Service::Arm,
        "",
        Fault::Delay(Duration::from_secs(5)),
        usize::MAX,
    );
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("web"),
        false,
    ))
    .await
    .expect("enqueue");
    assert!(
        a.logged("Event received.", Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        a.log_text()
    );
    a.signal("KILL");
    env.tb.faults().clear();
    assert_eq!(
        env.all_servers(UpstreamKind::Http, "web"),
        first,
        "not applied before the crash"
    );

    // The message was not deleted: it comes back after its visibility timeout...
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let back = q
        .get_messages(32, Duration::from_secs(1))
        .await
        .expect("get");
    assert_eq!(back.len(), 1, "the event survived the crash");
    assert_eq!(back[0].dequeue_count, 2, "handed out once before the crash");
    // ... and the next daemon handles it and deletes it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let b = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("b.log")
        .spawn();
    let out = env.ips("web", 80);
    assert!(
        reached(&env, &out, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        b.log_text()
    );
    assert!(
        b.logged("Event received.", Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        b.log_text()
    );
    assert!(
        queue_empty(&q, Duration::from_secs(10)).await,
        "deleted once handled\n{}",
        b.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn of_two_replicas_only_the_leader_consumes_events() {
    use ops_common::{config_text, leader_yaml, replica_env, Azurite};
    let az = Azurite::queue();
    let q = az.client("replicas", DEV_KEY);
    q.create().await.expect("create queue");
    let blob = Azurite::start();
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let extra = format!(
        "log_level: debug\n{}events:\n  queue_url: {}\n  auth: shared_key\n  \
         account_key: ${{LEASE_KEY}}\n  poll_interval: 200ms\n",
        leader_yaml(&blob, "events", 15),
        az.queue_url("replicas"),
    );
    let a_cfg = env.write("a.yaml", &config_text(&env, &env.tb.nginx_url(), &extra));
    let b_cfg = env.write(
        "b.yaml",
        &config_text(&env, &env.tb.nginx_nplus_url(), &extra),
    );
    let a = Daemon::run(&env, &a_cfg)
        .env(&replica_env(&env))
        .log("a.log")
        .spawn();
    assert!(
        a.logged("this replica is now the leader", Duration::from_secs(15))
            .await
            .is_some(),
        "{}",
        a.log_text()
    );
    let b = Daemon::run(&env, &b_cfg)
        .env(&replica_env(&env))
        .log("b.log")
        .spawn();
    assert!(
        b.logged("another replica holds the lease", Duration::from_secs(15))
            .await
            .is_some(),
        "{}",
        b.log_text()
    );
    for _ in 0..5 {
        q.put_message(&event_message(
            "Microsoft.Resources.ResourceWriteSuccess",
            &set_id("web"),
            false,
        ))
        .await
        .expect("enqueue");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(queue_empty(&q, Duration::from_secs(10)).await, "consumed");
    let (la, lb) = (a.log_text(), b.log_text());
    assert!(la.contains("Event received."), "the leader consumed\n{la}");
    assert!(
        !lb.contains("Event received."),
        "the standby never consumes\n{lb}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_events_a_scale_out_and_a_scale_in_reach_the_target_within_2_s_at_a_60_s_timer() {
    let az = Azurite::queue();
    let q = az.client("vmss-events", DEV_KEY);
    q.create().await.expect("create queue");
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.uniform("other", 1);
    env.upstream(UpstreamKind::Http, "web");
    let text = events_yaml(&env, &az, "vmss-events", "60s", "127.0.0.1:0", "200ms");
    let cfg = env.write("config.yaml", &text);
    let daemon = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("vmss-sync.log")
        .spawn();
    let first = env.ips("web", 80);
    assert!(
        reached(&env, &first, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        daemon.log_text()
    );

    // Scale-out: the set's write succeeded, Event Grid enqueues its event.
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    let out = env.ips("web", 80);
    let sent = Instant::now();
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("web"),
        false,
    ))
    .await
    .expect("enqueue");
    let took_out = reached(&env, &out, sent, Duration::from_secs(10)).await;

    // Scale-in, as a CloudEvent (Azure Resource Notifications).
    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let back = env.ips("web", 80);
    let sent = Instant::now();
    q.put_message(&event_message(
        "Microsoft.ResourceNotifications.Resources.CreatedOrUpdated",
        &set_id("web"),
        true,
    ))
    .await
    .expect("enqueue");
    let took_in = reached(&env, &back, sent, Duration::from_secs(10)).await;
    println!(
        "event-to-target delay with sync_interval 60s: scale-out {:?}, scale-in {:?}",
        took_out, took_in
    );
    let log = daemon.log_text();
    assert!(
        took_out.is_some_and(|d| d < Duration::from_secs(2)),
        "scale-out within 2 s of its event: {took_out:?}\n{log}"
    );
    assert!(
        took_in.is_some_and(|d| d < Duration::from_secs(2)),
        "scale-in within 2 s of its event: {took_in:?}\n{log}"
    );
    assert!(
        queue_empty(&q, Duration::from_secs(5)).await,
        "handled messages are deleted\n{log}"
    );

    // A malformed message and an event for a set nothing selects: deleted, nothing written.
    let writes = env.nginx_writes().len();
    q.put_message("this is not an event")
        .await
        .expect("enqueue");
    env.tb.fleet().scale_to(SUB, RG, "other", 3);
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("other"),
        false,
    ))
    .await
    .expect("enqueue");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        queue_empty(&q, Duration::from_secs(5)).await,
        "malformed and unrouted messages are deleted\n{}",
        daemon.log_text()
    );
    assert_eq!(env.nginx_writes().len(), writes, "nothing written");
    let log = daemon.log_text();
    assert!(
        log.contains("Deleting an event message that cannot be read"),
        "{log}"
    );
    assert!(log.contains("concern no configured upstream"), "{log}");

    // What the metrics say.
    let page = ops_common::get(&daemon.admin_addr().await, "/metrics")
        .await
        .body;
    let events = |t: &str, o: &str| {
        ops_common::sample(
            &page,
            "vmss_sync_events_total",
            &format!("type=\"{t}\",outcome=\"{o}\""),
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(events("resource_write", "reconciled"), 1.0, "{page}");
    assert_eq!(events("created_or_updated", "reconciled"), 1.0, "{page}");
    assert_eq!(events("resource_write", "ignored"), 1.0, "{page}");
    assert_eq!(events("unreadable", "malformed"), 1.0, "{page}");
    assert_eq!(events("deleted", "reconciled"), 0.0, "{page}");
    let cycles = |t: &str| {
        ops_common::sample(
            &page,
            "vmss_sync_cycles_by_trigger_total",
            &format!("trigger=\"{t}\""),
        )
        .unwrap_or(-1.0)
    };
    assert_eq!(
        cycles("timer"),
        1.0,
        "one full cycle at start, none since\n{page}"
    );
    assert!(cycles("event") >= 2.0, "{page}");
    let delays = ops_common::sample(&page, "vmss_sync_event_to_write_delay_seconds_count", "")
        .unwrap_or(0.0);
    assert_eq!(delays, 2.0, "two events wrote\n{page}");
    assert_eq!(
        ops_common::sample(&page, "vmss_sync_event_queue_up", ""),
        Some(1.0),
        "{page}"
    );
    let ready = ops_common::get(&daemon.admin_addr().await, "/readyz")
        .await
        .json();
    assert_eq!(ready["event_queue"]["readable"], true, "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_scale_out_event_follow_ups_register_instances_that_finish_booting() {
    let az = Azurite::queue();
    let q = az.client("boot", DEV_KEY);
    q.create().await.expect("create queue");
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = events_config(&env, &az, "boot", "30s");
    let d = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("d.log")
        .spawn();
    let first = env.ips("web", 80);
    assert!(
        reached(&env, &first, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    // A new instance that is still starting when the event arrives: not registered by the
    // event's reconcile, but by a follow-up once it runs (3 s), long before the 60 s timer.
    env.tb.fleet().boot_instance(
        SUB,
        RG,
        "web",
        Duration::from_secs(3),
        Duration::from_secs(3),
    );
    let sent = Instant::now();
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("web"),
        false,
    ))
    .await
    .expect("enqueue");
    assert!(
        d.logged("Event received.", Duration::from_secs(5))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.all_servers(UpstreamKind::Http, "web"),
        first,
        "still booting"
    );
    let all = env.ips("web", 80);
    let took = reached(&env, &all, sent, Duration::from_secs(20)).await;
    println!("booting instance registered {took:?} after its event (follow-up at 5 s)");
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(10)),
        "registered by a follow-up, not the 60 s timer: {took:?}\n{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_that_cannot_be_read_is_reported_while_the_timer_goes_on() {
    let az = Azurite::queue();
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    // The queue was never created: every read answers 404 QueueNotFound.
    let cfg = events_config(&env, &az, "missing", "30s");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("sync_interval: 60s", "sync_interval: 1s")
        .replace("admin_listen: off", "admin_listen: 127.0.0.1:0");
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("d.log")
        .spawn();
    let first = env.ips("web", 80);
    assert!(
        reached(&env, &first, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    assert!(
        d.logged("Cannot read the event queue", Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    // The timer's cycles go on: a scale-out without any event is followed.
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    let out = env.ips("web", 80);
    assert!(
        reached(&env, &out, Instant::now(), Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    let addr = d.admin_addr().await;
    let ready = ops_common::get(&addr, "/readyz").await;
    let body = ready.json();
    assert_eq!(
        ready.status, 200,
        "an unreadable queue does not make it unready: {body}"
    );
    assert_eq!(body["event_queue"]["readable"], false, "{body}");
    let err = body["event_queue"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        err.contains("QueueNotFound") && !err.contains(DEV_KEY),
        "{err}"
    );
    let page = ops_common::get(&addr, "/metrics").await.body;
    assert_eq!(
        ops_common::sample(&page, "vmss_sync_event_queue_up", ""),
        Some(0.0)
    );
    assert!(
        ops_common::sample(&page, "vmss_sync_event_queue_errors_total", "").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
}

/// Azurite's queue service over HTTPS with `--oauth basic` (it checks a bearer token's
/// audience, issuer and lifetime, not its signature), its certificate from a private CA.
/// None (skipped, with a message) without openssl outside CI.
fn azurite_https_oauth(dir: &std::path::Path) -> Option<(Azurite, crate::support::pki::Pki)> {
    use crate::support::azurite::{Options, Service as AzService};
    let pki = crate::support::pki::pki(dir)?;
    let az = Azurite::with(Options {
        tls: Some((&pki).into()),
        oauth: true,
        ..Options::new(AzService::Queue)
    });
    Some((az, pki))
}

fn token_config(env: &Env, az: &Azurite, queue: &str, ca: &std::path::Path) -> std::path::PathBuf {
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {}\nresource_manager_endpoint: {}\nsync_interval: 60s\n\
         health_interval: 60s\nadmin_listen: off\nlog_level: debug\n\
         events:\n  queue_url: {}\n  auth: token\n  ca_file: {}\n  poll_interval: 200ms\n\
         upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    \
         kind: http\n    drain_timeout: 0s\n",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        az.queue_url(queue),
        ca.display(),
    );
    env.write(&format!("{queue}.yaml"), &text)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_are_consumed_with_a_bearer_token_over_https_trusting_events_ca_file_and_the_token_is_never_logged(
) {
    let env = testbed(TestbedOptions::default()).await;
    let Some((az, pki)) = azurite_https_oauth(env.dir.path()) else {
        return;
    };
    let q = az.client("bearer", DEV_KEY);
    q.create().await.expect("create queue over https");
    // Azurite really checks bearer tokens: one for ARM's audience is refused.
    let refused = az
        .http()
        .get(format!("{}/messages", az.queue_url("bearer")))
        .header("x-ms-version", "2021-12-02")
        .bearer_auth(env.tb.issue_token())
        .send()
        .await
        .expect("request");
    assert!(
        matches!(refused.status().as_u16(), 401 | 403),
        "a token for another audience: {}",
        refused.status()
    );

    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = token_config(&env, &az, "bearer", &pki.ca);
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("bearer.log"),
    );
    let first = env.ips("web", 80);
    assert!(
        reached(&env, &first, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        daemon.log_text()
    );
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    let out = env.ips("web", 80);
    let sent = Instant::now();
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("web"),
        false,
    ))
    .await
    .expect("enqueue");
    let took = reached(&env, &out, sent, Duration::from_secs(10)).await;
    println!("event over HTTPS with a bearer token reached the target in {took:?}");
    assert!(
        took.is_some_and(|d| d < Duration::from_secs(2)),
        "{took:?}\n{}",
        daemon.log_text()
    );
    assert!(
        queue_empty(&q, Duration::from_secs(5)).await,
        "deleted with the bearer token once handled\n{}",
        daemon.log_text()
    );
    let tokens = env.tb.tokens_for("https://storage.azure.com");
    assert!(!tokens.is_empty(), "the daemon fetched a storage token");
    let log = daemon.log_text();
    assert!(
        log.contains("Event received."),
        "the event came through the queue\n{log}"
    );
    for t in &tokens {
        assert!(!log.contains(t.as_str()), "a token in the log\n{log}");
        // Nor any part of it (its signature, or its claims).
        for part in t.split('.') {
            assert!(!log.contains(part), "part of a token in the log\n{log}");
        }
    }
    assert!(!log.contains("Cannot read the event queue"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_queue_behind_an_untrusted_certificate_is_refused_with_a_tls_error_and_polling_goes_on(
) {
    let env = testbed(TestbedOptions::default()).await;
    let Some((az, _pki)) = azurite_https_oauth(env.dir.path()) else {
        return;
    };
    let q = az.client("wrongca", DEV_KEY);
    q.create().await.expect("create queue over https");
    // Another CA, which did not sign Azurite's certificate.
    let other = env.dir.path().join("other");
    std::fs::create_dir_all(&other).expect("dir");
    let other = crate::support::pki::pki(&other).expect("second pki");
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = token_config(&env, &az, "wrongca", &other.ca);
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &env.sp_env(),
        &env.dir.path().join("wrongca.log"),
    );
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("web"),
        false,
    ))
    .await
    .expect("enqueue");
    let refused = eventually(Duration::from_secs(20), || {
        let t = daemon.log_text();
        t.contains("Cannot read the event queue") && t.contains("TLS failed")
    })
    .await;
    let log = daemon.log_text();
    assert!(refused, "a clear TLS error\n{log}");
    // The other CA has the same name as Azurite's: rustls tries it and names the
    // failure (BadSignature; UnknownIssuer for a CA of another name).
    assert!(
        log.contains("invalid peer certificate"),
        "the cause is named\n{log}"
    );
    assert!(!log.contains("Event received."), "{log}");
    // Polling goes on: the timer's first cycle syncs the upstream anyway (the queue's
    // TLS error may be logged before that cycle has written).
    let synced = eventually(Duration::from_secs(20), || {
        env.all_servers(UpstreamKind::Http, "web") == env.ips("web", 80)
    })
    .await;
    assert!(synced, "polling synced the upstream\n{}", daemon.log_text());
    // The message is still there for a replica that can read it.
    let left = q
        .get_messages(32, Duration::from_secs(1))
        .await
        .expect("get");
    assert_eq!(left.len(), 1, "nothing consumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconcile_of_every_upstream_by_an_event_restarts_the_timer() {
    let az = Azurite::queue();
    let q = az.client("restart", DEV_KEY);
    q.create().await.expect("create queue");
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let text = events_yaml(&env, &az, "restart", "3s", "127.0.0.1:0", "100ms");
    let cfg = env.write("restart.yaml", &text);
    let daemon = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("restart.log")
        .spawn();
    let first = env.ips("web", 80);
    assert!(
        reached(&env, &first, Instant::now(), Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        daemon.log_text()
    );
    // An event for the only upstream every 1.5 s for 9 s: each reconcile reads all of it,
    // so the 3 s timer never comes due.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        q.put_message(&event_message(
            "Microsoft.Resources.ResourceWriteSuccess",
            &set_id("web"),
            false,
        ))
        .await
        .expect("enqueue");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let page = ops_common::get(&daemon.admin_addr().await, "/metrics")
        .await
        .body;
    let cycles = |t: &str| {
        ops_common::sample(
            &page,
            "vmss_sync_cycles_by_trigger_total",
            &format!("trigger=\"{t}\""),
        )
        .unwrap_or(-1.0)
    };
    assert!(cycles("event") >= 5.0, "{page}");
    assert_eq!(
        cycles("timer"),
        1.0,
        "only the first cycle: every event reconcile was a full one\n{page}\n{}",
        daemon.log_text()
    );
    // Without events the timer runs again within sync_interval.
    tokio::time::sleep(Duration::from_millis(3800)).await;
    let page = ops_common::get(&daemon.admin_addr().await, "/metrics")
        .await
        .body;
    let timer = ops_common::sample(
        &page,
        "vmss_sync_cycles_by_trigger_total",
        "trigger=\"timer\"",
    )
    .unwrap_or(-1.0);
    assert!(timer >= 2.0, "the timer goes on\n{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_non_pem_events_ca_file_exits_2_naming_file_key_and_value() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 1);
    env.upstream(UpstreamKind::Http, "web");
    let not_pem = env.write("not-a-ca.pem", "hello\n");
    let missing = env.dir.path().join("missing-ca.pem");
    for ca in [&missing, &not_pem] {
        let text = format!(
            "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
             api_endpoint: {}\nresource_manager_endpoint: {}\n\
             events:\n  queue_url: https://acct1.queue.core.windows.net/q\n  ca_file: {}\n\
             upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    \
             kind: http\n",
            env.tb.nginx_url(),
            env.tb.arm_url(),
            ca.display(),
        );
        let cfg = env.write("bad-ca.yaml", &text);
        let out = run(&["run", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
        assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains("bad-ca.yaml:8:"), "the file and line: {all}");
        assert!(all.contains("events.ca_file"), "the key: {all}");
        assert!(all.contains(&ca.display().to_string()), "the value: {all}");
        assert!(env.nginx_writes().is_empty(), "nothing written");
    }
}
