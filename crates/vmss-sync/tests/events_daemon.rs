//! The daemon driven by events: the real `vmss-sync` binary with `sync_interval: 60s` and an
//! `events` queue in Azurite's queue service, the testbed's ARM and NGINX Plus. A scale-out
//! and a scale-in reach NGINX Plus within 2 s of their event being enqueued (the timer
//! alone would take up to a minute); messages are deleted once handled; a malformed
//! message is deleted; an event for nothing selected changes nothing.

mod common;
mod events_common;

use common::*;
use events_common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{TestbedOptions, UpstreamKind};

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

#[tokio::test(flavor = "multi_thread")]
async fn with_events_a_scale_out_and_a_scale_in_reach_the_target_within_2_s_at_a_60_s_timer() {
    let az = AzuriteQueue::start();
    let q = az.client("vmss-events", DEV_KEY);
    q.create().await.expect("create queue");
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.uniform("other", 1);
    env.upstream(UpstreamKind::Http, "web");
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {}\nresource_manager_endpoint: {}\nsync_interval: 60s\n\
         health_interval: 60s\nadmin_listen: off\nlog_level: debug\n\
         events:\n  queue_url: {}\n  auth: shared_key\n  account_key: ${{QUEUE_KEY}}\n  \
         poll_interval: 200ms\n\
         upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    \
         kind: http\n    drain_timeout: 0s\n",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        az.queue_url("vmss-events"),
    );
    let cfg = env.write("config.yaml", &text);
    let mut envs = env.sp_env();
    envs.push(("QUEUE_KEY".into(), DEV_KEY.into()));
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &envs,
        &env.dir.path().join("vmss-sync.log"),
    );
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
}
