//! Every kind of fleet change Event Grid reports reaches the target within 2 s with
//! `sync_interval: 60s`: the testbed raises the event when the change has succeeded
//! (`vmss_testbed::FleetEvent`), a forwarder puts it into Azurite's queue as Event Grid
//! would (only the kind under test is forwarded, in the Event Grid schema or as a
//! CloudEvent), and the real `vmss-sync` binary reacts. Kinds: a power action
//! (`ResourceActionSuccess`: deallocate, start), a VM created and deleted (a Flexible
//! member: `ResourceWriteSuccess`/`ResourceDeleteSuccess` of the VM), a tag write
//! (`ResourceWriteSuccess` of a scale set that starts to match a tag filter), and a
//! Resource Health change (`AvailabilityStatusChanged` for a Spot eviction, which no ARM
//! operation of anyone's reports).

use crate::support::common;
use crate::support::events_common;

use common::*;
use events_common::*;
use std::time::{Duration, Instant};
use vmss_testbed::{Orchestration, TestbedOptions, UpstreamKind};

const WRITE: &str = "Microsoft.Resources.ResourceWriteSuccess";
const DELETE: &str = "Microsoft.Resources.ResourceDeleteSuccess";
const ACTION: &str = "Microsoft.Resources.ResourceActionSuccess";
const HEALTH: &str = "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged";

/// A daemon with `sync_interval: 60s` (and `health_interval: 60s`) reading `queue`, with
/// the upstream `web` as `upstream` (YAML of one list item) says.
struct Rig {
    env: Env,
    daemon: Daemon,
    forwarder: Forwarder,
    _azurite: Azurite,
}

async fn rig(setup: impl FnOnce(&Env), upstream: &str, cloud: bool, only: &[&'static str]) -> Rig {
    let az = Azurite::queue();
    let q = az.client("fleet", DEV_KEY);
    q.create().await.expect("create queue");
    let env = testbed(TestbedOptions::default()).await;
    setup(&env);
    env.upstream(UpstreamKind::Http, "web");
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {}\nresource_manager_endpoint: {}\nsync_interval: 60s\n\
         health_interval: 60s\nadmin_listen: off\nlog_level: debug\n\
         events:\n  queue_url: {}\n  auth: shared_key\n  account_key: ${{QUEUE_KEY}}\n  \
         poll_interval: 200ms\nupstreams:\n{upstream}",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        az.queue_url("fleet"),
    );
    let cfg = env.write("config.yaml", &text);
    let mut envs = env.sp_env();
    envs.push(("QUEUE_KEY".into(), DEV_KEY.into()));
    let forwarder = Forwarder::start(&env.tb.fleet(), az.client("fleet", DEV_KEY), cloud, only);
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        &envs,
        &env.dir.path().join("vmss-sync.log"),
    );
    Rig {
        env,
        daemon,
        forwarder,
        _azurite: az,
    }
}

impl Rig {
    /// The servers taking new traffic (a leaving one is drained: `drain_timeout` default).
    fn servers(&self) -> Vec<String> {
        self.env.servers(UpstreamKind::Http, "web")
    }

    async fn settle(&self, want: &[String]) {
        let ok = eventually(Duration::from_secs(20), || self.servers() == want).await;
        assert!(
            ok,
            "first cycle: {:?}\n{}",
            self.servers(),
            self.daemon.log_text()
        );
    }

    /// Applies `change`, waits for the forwarded event of type `kind`, and returns how
    /// long after that event was raised the upstream held exactly `want`.
    async fn reacts(
        &self,
        kind: &str,
        change: impl FnOnce(),
        want: impl Fn() -> Vec<String>,
    ) -> Duration {
        let before = Instant::now();
        change();
        let deadline = Instant::now() + Duration::from_secs(15);
        let raised = loop {
            if let Some((at, t, subject)) = self.forwarder.first_after(before) {
                assert_eq!(t, kind, "{subject}");
                break at;
            }
            assert!(Instant::now() < deadline, "no {kind} event was raised");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let want = want();
        loop {
            if self.servers() == want {
                return raised.elapsed().max(Duration::from_millis(1));
            }
            if raised.elapsed() > Duration::from_secs(10) {
                panic!(
                    "not reached 10 s after the {kind} event: {:?} != {want:?}\n{}",
                    self.servers(),
                    self.daemon.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn within_2s(what: &str, took: Duration, log: &str) {
    println!("{what}: the target followed {took:?} after the event");
    assert!(took < Duration::from_secs(2), "{what}: {took:?}\n{log}");
}

fn ip_port(env: &Env, set: &str, id: &str) -> String {
    format!("{}:80", env.tb.fleet().instance_ip(SUB, RG, set, id))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_power_action_event_deallocate_then_start_reaches_the_target_within_2_s() {
    let r = rig(
        |env| env.uniform("web", 3),
        &upstream_yaml("web", "web", 80, "http"),
        false,
        &[ACTION],
    )
    .await;
    r.settle(&r.env.ips("web", 80)).await;
    let gone = ip_port(&r.env, "web", "1");
    let fleet = r.env.tb.fleet();
    let took = r
        .reacts(
            ACTION,
            || fleet.set_power_state(SUB, RG, "web", "1", "deallocated"),
            || {
                let mut v = r.env.ips("web", 80);
                v.retain(|s| *s != gone);
                v
            },
        )
        .await;
    within_2s("deallocate", took, &r.daemon.log_text());
    let took = r
        .reacts(
            ACTION,
            || fleet.set_power_state(SUB, RG, "web", "1", "running"),
            || r.env.ips("web", 80),
        )
        .await;
    within_2s("start", took, &r.daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_created_and_deleted_event_reaches_the_target_within_2_s() {
    let r = rig(
        |env| {
            let f = env.tb.fleet();
            f.add_scale_set(SUB, RG, "flex", Orchestration::Flexible, "eastus");
            f.scale_to(SUB, RG, "flex", 2);
        },
        &upstream_yaml("web", "flex", 80, "http"),
        true,
        &[WRITE, DELETE],
    )
    .await;
    r.settle(&r.env.ips("flex", 80)).await;
    let fleet = r.env.tb.fleet();
    let took = r
        .reacts(
            WRITE,
            || {
                fleet.add_instance(SUB, RG, "flex", "10.9.0.7".parse().unwrap());
            },
            || r.env.ips("flex", 80),
        )
        .await;
    within_2s("VM created", took, &r.daemon.log_text());
    assert!(r.servers().contains(&"10.9.0.7:80".to_string()));
    let took = r
        .reacts(
            DELETE,
            || fleet.remove_instance(SUB, RG, "flex", "0"),
            || r.env.ips("flex", 80),
        )
        .await;
    within_2s("VM deleted", took, &r.daemon.log_text());
    assert_eq!(r.servers().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_write_event_reaches_the_target_within_2_s() {
    let r = rig(
        |env| {
            env.uniform("tagged", 2);
            env.tb
                .fleet()
                .set_tag(SUB, RG, "tagged", "pool", Some("other"));
        },
        "  - name: web\n    port: 80\n    kind: http\n    tags:\n      allow:\n        pool: web\n",
        false,
        &[WRITE],
    )
    .await;
    // Nothing matches yet; let the first cycle pass.
    assert!(
        logged(&r.daemon, "vmss-sync started.", Duration::from_secs(20)).await,
        "{}",
        r.daemon.log_text()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(r.servers().is_empty());
    let fleet = r.env.tb.fleet();
    let took = r
        .reacts(
            WRITE,
            || fleet.set_tag(SUB, RG, "tagged", "pool", Some("web")),
            || r.env.ips("tagged", 80),
        )
        .await;
    within_2s("tag written", took, &r.daemon.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_health_event_for_a_spot_eviction_reaches_the_target_within_2_s() {
    let r = rig(
        |env| env.uniform("web", 3),
        &upstream_yaml("web", "web", 80, "http"),
        true,
        &[HEALTH],
    )
    .await;
    r.settle(&r.env.ips("web", 80)).await;
    let gone = ip_port(&r.env, "web", "2");
    let fleet = r.env.tb.fleet();
    // Deallocating now, deallocated (unavailable: the event) a second later.
    let took = r
        .reacts(
            HEALTH,
            || fleet.evict_instance(SUB, RG, "web", "2"),
            || {
                let mut v = r.env.ips("web", 80);
                v.retain(|s| *s != gone);
                v
            },
        )
        .await;
    within_2s("evicted (unavailable)", took, &r.daemon.log_text());
}

async fn logged(d: &Daemon, needle: &str, within: Duration) -> bool {
    eventually(within, || d.log_text().contains(needle)).await
}
