//! With events, a timer cycle need not read the scale sets again (step 1: a set's GET,
//! or its group's or subscription's list): every change such a read would show
//! (capacity, tags, model, terminate notification, deletion) is a write to the set,
//! which raises an Event Grid event, and an event reads its sets afresh. These tests
//! pin when a reused read stands and when it is read again: at least every
//! `max_reuse_age` (15 minutes; injected short here), whenever the queue has not been
//! read without a break since the read (a restarted watch, a failed queue), for a set
//! whose members or instance views changed (read again in the same cycle, before the
//! read is judged against the capacity), and for the sets of an event. Polling (no
//! watched queue) reads step 1 every cycle, as before.
//!
//! The first tests drive the library's reconciler against the testbed (its ARM over real
//! sockets), with the instant since which the queue is watched given by the test; the
//! last ones run the real binary with Azurite's queue service.

use crate::support::common;
use crate::support::events_common;

use common::*;
use events_common::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmss_sync::reconcile::{Mode, Reconciler};
use vmss_testbed::{Orchestration, Service, TestbedOptions, UpstreamKind};

async fn fleet() -> Env {
    testbed(TestbedOptions {
        page_size: 1000,
        ..TestbedOptions::default()
    })
    .await
}

/// A reconciler for `upstreams` with instance views due at every cycle.
fn reconciler(env: &Env, upstreams: &str) -> Reconciler {
    let path = env.config("health_interval: 1ms\n", upstreams);
    env.reconciler_from(&path)
}

/// What an ARM request read.
fn kind_of(path: &str, query: &str) -> &'static str {
    let p = path.to_ascii_lowercase();
    if p.contains("/networkinterfaces") {
        "nics"
    } else if p.ends_with("/virtualmachines") && query.contains("instanceView") {
        "views"
    } else if p.ends_with("/virtualmachines") {
        "vm list"
    } else if p.ends_with("/virtualmachinescalesets") {
        "set list"
    } else if p.contains("/virtualmachinescalesets/") {
        "set get"
    } else {
        "other"
    }
}

/// ARM reads since the last clear, by kind.
fn reads(env: &Env) -> BTreeMap<&'static str, usize> {
    let mut by = BTreeMap::new();
    for r in env.tb.requests_to(Service::Arm) {
        *by.entry(kind_of(&r.path, &r.query)).or_insert(0) += 1;
    }
    by
}

fn step1(r: &BTreeMap<&'static str, usize>) -> usize {
    r.get("set get").copied().unwrap_or(0) + r.get("set list").copied().unwrap_or(0)
}

/// A timer cycle: the scale set reads made at or after `since` may be reused (None:
/// polling). Gives the reads it made.
async fn timer_cycle(
    env: &Env,
    rec: &Reconciler,
    since: Option<Instant>,
) -> BTreeMap<&'static str, usize> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    env.tb.clear_requests();
    let started = Instant::now();
    let found = rec.discover_watched(since).await;
    let report = rec
        .apply_snapshots(Arc::new(found), Mode::Apply, started)
        .await;
    assert!(report.all_in_sync(), "{:?}", report.outcomes);
    reads(env)
}

fn views_only() -> BTreeMap<&'static str, usize> {
    BTreeMap::from([("views", 1)])
}

/// One Uniform set `web` of `n` instances, its reconciler, and the instant since which
/// the queue is watched; the cycles after the start have read the set once since then.
async fn settled(env: &Env, n: usize) -> (Reconciler, Instant) {
    env.uniform("web", n);
    env.upstream(UpstreamKind::Http, "web");
    let rec = reconciler(env, &upstream_yaml("web", "web", 80, "http"));
    let since = Instant::now();
    assert!(rec.startup_check().await.is_empty());
    timer_cycle(env, &rec, Some(since)).await;
    let second = timer_cycle(env, &rec, Some(since)).await;
    assert_eq!(
        step1(&second),
        1,
        "the startup check's read served the first cycle and is not reused: {second:?}"
    );
    (rec, since)
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_watched_queue_a_timer_cycle_of_a_settled_uniform_set_reads_only_its_instance_views()
{
    let env = fleet().await;
    let (rec, since) = settled(&env, 3).await;
    for _ in 0..3 {
        assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    }
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    // Polling reads the set every cycle, as it always did: its GET and the views (the
    // NIC list is skipped while the views show the same settled members).
    let polling = timer_cycle(&env, &rec, None).await;
    assert_eq!(
        polling,
        BTreeMap::from([("set get", 1), ("views", 1)]),
        "polling's reads per cycle are unchanged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reused_scale_set_read_is_read_again_once_it_is_max_reuse_age_old() {
    let env = fleet().await;
    let (mut rec, since) = settled(&env, 2).await;
    rec.set_max_reuse_age(Duration::from_millis(600));
    // The set was read by the second cycle: reused until it is 600 ms old.
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let aged = timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(
        step1(&aged),
        1,
        "read again once max_reuse_age old: {aged:?}"
    );
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scale_set_read_made_before_the_queue_was_watched_or_while_it_fails_is_read_again() {
    let env = fleet().await;
    let (rec, since) = settled(&env, 2).await;
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    // The queue could not be read (the daemon then gives no instant): every read.
    let failed = timer_cycle(&env, &rec, None).await;
    assert_eq!(step1(&failed), 1, "{failed:?}");
    // It is read again from now on: what was read before may have missed an event.
    let again = Instant::now();
    let first = timer_cycle(&env, &rec, Some(again)).await;
    assert_eq!(step1(&first), 1, "read before the watch began: {first:?}");
    assert_eq!(timer_cycle(&env, &rec, Some(again)).await, views_only());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_whose_members_changed_is_read_again_in_the_same_cycle_before_its_read_is_judged() {
    let env = fleet().await;
    let (rec, since) = settled(&env, 4).await;
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    // A scale-in nobody told us of: the views show fewer members. Judged against the
    // capacity read earlier (4), this read of 2 would only add; the set is read again
    // in the same cycle, its capacity says 2, and the leaving servers go at once.
    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let scaled_in = timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(step1(&scaled_in), 1, "{scaled_in:?}");
    assert_eq!(
        env.servers(UpstreamKind::Http, "web"),
        env.ips("web", 80),
        "judged against the fresh capacity"
    );
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    // A scale-out, and an instance view that changed (a member stopped): read again.
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    let scaled_out = timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(step1(&scaled_out), 1, "{scaled_out:?}");
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    let id = env.tb.fleet().instance_ids(SUB, RG, "web")[0].clone();
    env.tb
        .fleet()
        .set_power_state(SUB, RG, "web", &id, "stopped");
    let stopped = timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(step1(&stopped), 1, "a changed view: {stopped:?}");
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_reads_its_sets_afresh_and_the_next_timer_cycles_reuse_that_read() {
    let env = fleet().await;
    let (rec, since) = settled(&env, 2).await;
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
    env.tb.clear_requests();
    let all = rec.selection_list().into_iter().collect();
    let (report, _) = rec.reconcile_selected(&all, Mode::Apply).await;
    assert!(report.all_in_sync(), "{:?}", report.outcomes);
    let event = reads(&env);
    assert_eq!(
        step1(&event),
        1,
        "the event's sets are read afresh: {event:?}"
    );
    assert_eq!(timer_cycle(&env, &rec, Some(since)).await, views_only());
}

/// Two Uniform sets `a` and `b` tagged `role: web`, one upstream selecting by that tag.
fn tagged(env: &Env) -> String {
    let f = env.tb.fleet();
    for name in ["a", "b"] {
        f.add_scale_set(SUB, RG, name, Orchestration::Uniform, "eastus");
        f.scale_to(SUB, RG, name, 2);
        f.set_tag(SUB, RG, name, "role", Some("web"));
    }
    env.upstream(UpstreamKind::Http, "web");
    "  - name: web\n    virtual_machine_scale_set: \"*\"\n    tags: {allow: {role: web}}\n    \
     port: 80\n    kind: http\n    drain_timeout: 0s\n"
        .to_string()
}

fn servers_of(env: &Env, sets: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = sets.iter().flat_map(|s| env.ips(s, 80)).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_removed_without_an_event_is_noticed_once_the_set_list_is_max_reuse_age_old() {
    let env = fleet().await;
    let ups = tagged(&env);
    let mut rec = reconciler(&env, &ups);
    let age = Duration::from_millis(1500);
    rec.set_max_reuse_age(age);
    let since = Instant::now();
    assert!(rec.startup_check().await.is_empty());
    timer_cycle(&env, &rec, Some(since)).await;
    timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(
        env.servers(UpstreamKind::Http, "web"),
        servers_of(&env, &["a", "b"])
    );
    // The tag goes, and no event says so: the group's list read earlier still selects
    // `b` until it is max_reuse_age old; then `b`'s servers leave.
    env.tb.fleet().set_tag(SUB, RG, "b", "role", None);
    let removed = Instant::now();
    let mut kept_for = Duration::ZERO;
    loop {
        timer_cycle(&env, &rec, Some(since)).await;
        if env.servers(UpstreamKind::Http, "web") == servers_of(&env, &["a"]) {
            break;
        }
        kept_for = removed.elapsed();
        assert!(
            kept_for < age + Duration::from_secs(2),
            "not noticed within max_reuse_age"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = removed.elapsed();
    println!("a tag removed without an event noticed after {took:?} (max_reuse_age {age:?})");
    // Within max_reuse_age and one cycle (here: 100 ms and the cycle's own time).
    assert!(took <= age + Duration::from_millis(1500), "{took:?}");
    assert!(
        kept_for > Duration::ZERO,
        "the list read earlier stood meanwhile"
    );
}

fn set_id(set: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{set}")
}

/// The daemon's configuration: `sync_interval`, views due at every cycle, the queue.
fn daemon_config(
    env: &Env,
    az: &Azurite,
    queue: &str,
    sync: &str,
    upstreams: &str,
) -> std::path::PathBuf {
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {}\nresource_manager_endpoint: {}\nsync_interval: {sync}\n\
         health_interval: 100ms\nadmin_listen: off\nlog_level: debug\n\
         events:\n  queue_url: {}\n  auth: shared_key\n  account_key: ${{QUEUE_KEY}}\n  \
         poll_interval: 100ms\nupstreams:\n{upstreams}",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        az.queue_url(queue),
    );
    env.write("config.yaml", &text)
}

async fn reached(env: &Env, want: &[String], within: Duration) -> Option<Duration> {
    let since = Instant::now();
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

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_s_timer_cycles_read_only_instance_views_while_the_queue_is_read_and_every_read_once_it_fails(
) {
    let mut az = Azurite::queue();
    let q = az.client("timer", DEV_KEY);
    q.create().await.expect("create queue");
    let env = fleet().await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = daemon_config(
        &env,
        &az,
        "timer",
        "1s",
        &upstream_yaml("web", "web", 80, "http"),
    );
    let d = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("d.log")
        .spawn();
    let first = env.ips("web", 80);
    assert!(
        reached(&env, &first, Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    // The first cycle used the startup check's read, the second read the set: from then
    // on the timer's cycles read the instance views alone.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.tb.clear_requests();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let watched = reads(&env);
    println!("4 s of 1 s timer cycles with the queue read: {watched:?}");
    assert!(
        watched.get("views").copied().unwrap_or(0) >= 3,
        "{watched:?}\n{}",
        d.log_text()
    );
    assert_eq!(
        watched.keys().copied().collect::<Vec<_>>(),
        vec!["views"],
        "nothing but the views\n{}",
        d.log_text()
    );
    // The queue goes away: every cycle reads the set again, at once.
    az.stop();
    assert!(
        d.logged("Cannot read the event queue", Duration::from_secs(10))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    env.tb.clear_requests();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let failed = reads(&env);
    println!("3.5 s of 1 s timer cycles with the queue unreadable: {failed:?}");
    assert!(step1(&failed) >= 2, "{failed:?}\n{}", d.log_text());
    // One read of the set per cycle (the window may cut one cycle between its two reads).
    let views = failed.get("views").copied().unwrap_or(0);
    assert!(
        step1(&failed).abs_diff(views) <= 1,
        "one read of the set per cycle: {failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_removed_with_an_event_is_noticed_within_2_s_at_a_60_s_timer() {
    let az = Azurite::queue();
    let q = az.client("tags", DEV_KEY);
    q.create().await.expect("create queue");
    let env = fleet().await;
    let ups = tagged(&env);
    let cfg = daemon_config(&env, &az, "tags", "60s", &ups);
    let d = Daemon::run(&env, &cfg)
        .var("QUEUE_KEY", DEV_KEY)
        .log("d.log")
        .spawn();
    let both = servers_of(&env, &["a", "b"]);
    assert!(
        reached(&env, &both, Duration::from_secs(20))
            .await
            .is_some(),
        "{}",
        d.log_text()
    );
    env.tb.fleet().set_tag(SUB, RG, "b", "role", None);
    let sent = Instant::now();
    q.put_message(&event_message(
        "Microsoft.Resources.ResourceWriteSuccess",
        &set_id("b"),
        false,
    ))
    .await
    .expect("enqueue");
    let a = servers_of(&env, &["a"]);
    let took = reached(&env, &a, Duration::from_secs(10))
        .await
        .map(|_| sent.elapsed());
    println!("a tag removed with an event noticed after {took:?}");
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "{took:?}\n{}",
        d.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flexible_set_s_timer_cycle_reads_its_members_not_the_set_and_reads_the_set_when_they_change(
) {
    let env = fleet().await;
    let f = env.tb.fleet();
    f.add_scale_set(SUB, RG, "web", Orchestration::Flexible, "eastus");
    f.scale_to(SUB, RG, "web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let rec = reconciler(&env, &upstream_yaml("web", "web", 80, "http"));
    let since = Instant::now();
    assert!(rec.startup_check().await.is_empty());
    timer_cycle(&env, &rec, Some(since)).await;
    timer_cycle(&env, &rec, Some(since)).await;
    // Its members (the group's VM list filtered on the set, with views) and the group's
    // NIC list; not the set.
    let steady = timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(
        steady,
        BTreeMap::from([("nics", 1), ("views", 1)]),
        "{steady:?}"
    );
    f.scale_to(SUB, RG, "web", 1);
    let scaled_in = timer_cycle(&env, &rec, Some(since)).await;
    assert_eq!(step1(&scaled_in), 1, "{scaled_in:?}");
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert_eq!(
        timer_cycle(&env, &rec, Some(since)).await,
        BTreeMap::from([("nics", 1), ("views", 1)])
    );
}
