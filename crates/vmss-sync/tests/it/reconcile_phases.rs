//! The reconciler's two phases against the fake ARM and a recording target: every
//! upstream is planned first, then a batching target gets all of a cycle's plans in one
//! call and another target one call per upstream; the leader gate is asked again just
//! before the writes, so a replica that lost its lease while planning writes nothing.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use url::Url;
use vmss_sync::azure::arm::{ArmClient, ArmOptions};
use vmss_sync::azure::auth::StaticToken;
use vmss_sync::config;
use vmss_sync::model::ObservedServer;
use vmss_sync::plan::Plan;
use vmss_sync::reconcile::{Mode, Reconciler, UpstreamSpec};
use vmss_sync::target::{ApplyReport, Target, TargetError, UpstreamRef};
use vmss_testbed::{Orchestration, Testbed, TestbedOptions};

const SUB: &str = "00000000-0000-0000-0000-0000000000a1";

/// Records the calls it gets; holds nothing, so every cycle plans the same adds.
struct Recorder {
    batches: bool,
    /// One entry per write call: the upstreams it carried.
    calls: Mutex<Vec<Vec<String>>>,
}

impl Recorder {
    fn new(batches: bool) -> Arc<Self> {
        Arc::new(Self {
            batches,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Target for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }
    async fn check(&self, _: &UpstreamRef) -> Result<(), TargetError> {
        Ok(())
    }
    async fn observe(&self, _: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        Ok(Vec::new())
    }
    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport {
        self.calls
            .lock()
            .expect("lock")
            .push(vec![upstream.name.clone()]);
        ApplyReport {
            added: plan.add.iter().map(|(s, _)| s.clone()).collect(),
            ..ApplyReport::default()
        }
    }
    fn batches(&self) -> bool {
        self.batches
    }
    async fn apply_batch(&self, items: &[(UpstreamRef, Plan)]) -> Vec<ApplyReport> {
        self.calls
            .lock()
            .expect("lock")
            .push(items.iter().map(|(u, _)| u.name.clone()).collect());
        items
            .iter()
            .map(|(_, p)| ApplyReport {
                added: p.add.iter().map(|(s, _)| s.clone()).collect(),
                ..ApplyReport::default()
            })
            .collect()
    }
}

async fn fleet() -> Testbed {
    let tb = Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed");
    tb.fleet()
        .add_scale_set(SUB, "rg", "web", Orchestration::Uniform, "eastus");
    tb.fleet().scale_to(SUB, "rg", "web", 3);
    tb
}

/// Upstreams `a`, `b`, `c` on the batching target and `x`, `y` on the other, all fed by
/// the scale set `web`.
fn reconciler(tb: &Testbed, batching: &Arc<Recorder>, plain: &Arc<Recorder>) -> Reconciler {
    let mut ups = String::new();
    for name in ["a", "b", "c", "x", "y"] {
        ups.push_str(&format!(
            "  - name: {name}\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n    \
             register_when: always\n"
        ));
    }
    let text = format!(
        "subscription_id: {SUB}\nresource_group_name: rg\napi_endpoint: http://127.0.0.1:9/api\n\
         upstreams:\n{ups}"
    );
    let cfg = config::parse(&text, Path::new("cfg.yaml"), &|_| None).expect("config");
    let specs = cfg
        .upstreams
        .iter()
        .map(|u| {
            let target: Arc<dyn Target> = if ["a", "b", "c"].contains(&u.name.as_str()) {
                Arc::clone(batching) as Arc<dyn Target>
            } else {
                Arc::clone(plain) as Arc<dyn Target>
            };
            UpstreamSpec::from_config(&cfg, u, target)
        })
        .collect();
    let arm = ArmClient::new(
        ArmOptions {
            endpoint: Url::parse(&tb.arm_url()).expect("arm url"),
            audience: "https://management.azure.com".into(),
            request_timeout: Duration::from_secs(5),
            ..ArmOptions::default()
        },
        Arc::new(StaticToken(tb.issue_token())),
        reqwest::Client::new(),
    );
    Reconciler::new(specs, arm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_target_gets_one_call_per_cycle_and_another_one_call_per_upstream() {
    let tb = fleet().await;
    let (batching, plain) = (Recorder::new(true), Recorder::new(false));
    let r = reconciler(&tb, &batching, &plain);
    let report = r.reconcile(Mode::Apply).await;
    assert!(report.all_in_sync(), "{report:?}");
    let names: Vec<&str> = report
        .outcomes
        .iter()
        .map(|o| o.upstream.as_str())
        .collect();
    assert_eq!(names, ["a", "b", "c", "x", "y"], "configuration order");
    assert_eq!(batching.calls(), [vec!["a", "b", "c"]]);
    let mut per_upstream = plain.calls();
    per_upstream.sort();
    assert_eq!(per_upstream, [vec!["x"], vec!["y"]]);
    for o in &report.outcomes {
        assert_eq!(o.report.as_ref().map(|r| r.added.len()), Some(3), "{o:?}");
        assert_eq!(o.target, "recorder");
        // The writes took the plans, not copies: each is back in its outcome.
        assert!(o.plan.as_ref().is_some_and(|p| p.add.len() == 3), "{o:?}");
    }

    // A dry run plans the same and writes nothing.
    let report = r.reconcile(Mode::DryRun).await;
    assert!(report
        .outcomes
        .iter()
        .all(|o| o.plan.as_ref().is_some_and(|p| p.add.len() == 3)));
    assert_eq!(batching.calls().len(), 1);
    assert_eq!(plain.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_closes_after_planning_stops_every_write() {
    let tb = fleet().await;
    let (batching, plain) = (Recorder::new(true), Recorder::new(false));
    let mut r = reconciler(&tb, &batching, &plain);
    // Open for the five upstreams' planning, closed from then on (the lease was lost
    // between planning and writing).
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    r.set_write_gate(Arc::new(move || counter.fetch_add(1, Ordering::SeqCst) < 5));
    let started = Instant::now();
    let report = r
        .apply_snapshots(Arc::new(r.discover().await), Mode::Apply, started)
        .await;
    assert!(
        asked.load(Ordering::SeqCst) > 5,
        "asked again before writing"
    );
    assert!(batching.calls().is_empty(), "{:?}", batching.calls());
    assert!(plain.calls().is_empty(), "{:?}", plain.calls());
    for o in &report.outcomes {
        assert!(!o.in_sync());
        let errors: Vec<&str> = o
            .report
            .iter()
            .flat_map(|r| r.errors.iter().map(|e| e.message.as_str()))
            .collect();
        assert_eq!(
            errors,
            ["not written: this replica is not the leader"],
            "{o:?}"
        );
    }

    // Closed from the start: nothing is even handed to the write phase.
    r.set_write_gate(Arc::new(|| false));
    let report = r.reconcile(Mode::Apply).await;
    assert!(batching.calls().is_empty() && plain.calls().is_empty());
    assert!(report
        .outcomes
        .iter()
        .all(|o| o.error.as_deref() == Some("not written: this replica is not the leader")));
}
