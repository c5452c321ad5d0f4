//! The Target contract (ARCHITECTURE.md, "The Target contract"), checked once for every
//! target: real HAProxy through its Runtime API (dynamic servers and `server-template`
//! slots), real nginx through the `nginx_file` target, and the testbed's NGINX Plus API,
//! HAProxy Data Plane API, Azure Route Server and Azure Load Balancer pool.
//!
//! Each check is written once in `checks` against the [`Harness`] trait and calls the
//! library's `Target` implementations directly, with plans made by `plan::plan`; the
//! `conformance!` macro generates one test per (harness, check), named
//! `conformance::{harness}::{check}`. A new target gets the whole suite by implementing `Harness`.

mod harnesses;

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use vmss_sync::model::{DesiredServers, ObservedServer, ServerParams, ServerState};
use vmss_sync::plan::{plan, Drain, Plan};
use vmss_sync::target::{ApplyReport, Target, UpstreamRef};

/// How a target takes a server out of service before removing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainKind {
    /// The server stays, takes no new traffic, and is read back as draining.
    Observed,
    /// The target has no drain (Route Server, LB pool): a drain deletes the entry at once.
    Deletes,
}

/// One target as the suite drives it: a real process or a testbed fake on loopback, the
/// entries people put there, and ways to read what it holds without the target's code.
#[async_trait]
pub trait Harness: Sized + Send + Sync + 'static {
    /// Starts the process or fake with people's entries in place; `None` skips the test
    /// (a real program missing with `VMSS_SYNC_SKIP_REAL_TARGETS` set).
    async fn start() -> Option<Self>;
    /// A new target object built through the library's public constructor, as a freshly
    /// started vmss-sync builds it, with `secret` as its credential where it takes one.
    fn target_with(&self, secret: &str) -> Arc<dyn Target>;
    /// The credential the service accepts (basic auth password, custom header value,
    /// bearer token), or `None` when the target takes none.
    fn secret(&self) -> Option<String> {
        None
    }
    /// A new target object with the right credential.
    fn target(&self) -> Arc<dyn Target> {
        self.target_with(&self.secret().unwrap_or_default())
    }
    /// The upstream (backend, hub, pool) under test.
    fn upstream(&self) -> UpstreamRef;
    /// An upstream the target does not hold.
    fn missing(&self) -> UpstreamRef;
    /// Three addresses the target can hold, sorted.
    fn servers(&self) -> Vec<String>;
    /// The parameters of every server.
    fn params(&self) -> ServerParams;
    /// How the target drains.
    fn drain(&self) -> DrainKind;
    /// False when the target holds no server parameters (Route Server, LB pool): `observe`
    /// then reports the configured ones and a change of parameters writes nothing.
    fn holds_params(&self) -> bool {
        true
    }
    /// People's entries (servers, upstreams, peerings, pool addresses vmss-sync does not
    /// own), read straight from the process or fake; never empty.
    async fn foreign(&self) -> String;
    /// Our entries as the process or fake holds them: (address, takes no new traffic).
    async fn held(&self) -> Vec<(String, bool)>;
    /// What shows the writes the process or fake has received so far (the count of
    /// requests other than GET; nginx's reloads and the file's inode), or `None` when it
    /// keeps no trace of them (HAProxy's stats socket).
    async fn writes(&self) -> Option<String> {
        None
    }
    /// Who answers real requests through the load balancer, polled until `want` or a
    /// timeout; `None` when no traffic flows through the target in the test.
    async fn serving(&self, want: &[String]) -> Option<Vec<String>> {
        let _ = want;
        None
    }
    /// The writes of one cycle with one item that must fail on its own beside `good`
    /// (default: an address that is not an IPv4 address and port), and a word every
    /// error for it names.
    fn failing(&self, good: Plan) -> (Vec<(UpstreamRef, Plan)>, String) {
        let mut p = good;
        p.add.push(("not-an-ip:80".to_string(), self.params()));
        (vec![(self.upstream(), p)], "not-an-ip".to_string())
    }
}

fn desired<H: Harness>(h: &H, servers: &[String]) -> DesiredServers {
    servers.iter().map(|s| (s.clone(), h.params())).collect()
}

/// The addresses observed, sorted, with their states.
fn states(observed: &[ObservedServer]) -> Vec<(String, ServerState)> {
    let mut v: Vec<_> = observed
        .iter()
        .map(|o| (o.server.clone(), o.state))
        .collect();
    v.sort();
    v
}

fn active(servers: &[String]) -> Vec<(String, ServerState)> {
    servers
        .iter()
        .map(|s| (s.clone(), ServerState::Active))
        .collect()
}

fn not_draining(servers: &[String]) -> Vec<(String, bool)> {
    servers.iter().map(|s| (s.clone(), false)).collect()
}

async fn sorted_held<H: Harness>(h: &H) -> Vec<(String, bool)> {
    let mut v = h.held().await;
    v.sort();
    v
}

/// One reconcile of the upstream: observe, plan, apply (as the reconciler does, through
/// `apply_batch`). Returns the plan and the report.
async fn cycle<H: Harness>(
    h: &H,
    t: &dyn Target,
    want: &[String],
    drain: &Drain<'_>,
) -> (Plan, ApplyReport) {
    let up = h.upstream();
    let observed = t.observe(&up).await.expect("observe");
    let p = plan(&desired(h, want), &observed, drain);
    let mut reports = t.apply_batch(&[(up, p.clone())]).await;
    assert_eq!(reports.len(), 1, "one report per item");
    (p, reports.remove(0))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Everything a message can show: its text and its debug form.
fn texts(errors: &[vmss_sync::target::TargetError]) -> Vec<String> {
    errors
        .iter()
        .flat_map(|e| [e.to_string(), format!("{e:?}")])
        .collect()
}

pub mod checks {
    use super::*;

    const LONG_DRAIN: Duration = Duration::from_secs(3600);

    /// (1) A fresh target observes nothing of its own, and people's entries are there.
    pub async fn observe_on_a_fresh_target_is_empty<H: Harness>(h: &H) {
        let t = h.target();
        let up = h.upstream();
        t.check(&up).await.expect("check passes");
        assert_eq!(t.observe(&up).await.expect("observe"), Vec::new());
        assert!(!h.foreign().await.is_empty(), "people's entries are seeded");
        assert_eq!(h.held().await, Vec::new());
    }

    /// (2) After `apply(plan(desired, observed))`, `observe` equals what the plan said, and
    /// the process itself holds it (and, with traffic, serves it).
    pub async fn after_apply_observe_equals_the_plan<H: Harness>(h: &H) {
        let t = h.target();
        let all = h.servers();
        t.check(&h.upstream()).await.expect("check passes");
        let (p, report) = cycle(h, &*t, &all, &Drain::NONE).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(p.add.len(), 3, "{p:?}");
        assert_eq!(sorted(report.added.clone()), all, "{report:?}");
        let seen = t.observe(&h.upstream()).await.expect("observe");
        assert_eq!(states(&seen), active(&all));
        for o in &seen {
            assert_eq!(o.params, Some(h.params()), "parameters read back: {o:?}");
        }
        assert_eq!(
            sorted_held(h).await,
            not_draining(&all),
            "held by the process"
        );
        if let Some(got) = h.serving(&all).await {
            assert_eq!(got, all, "traffic reaches every server");
        }
        if !h.holds_params() {
            return;
        }
        // Change one server's parameters: updated in place, read back.
        let mut changed = h.params();
        changed.max_conns += 5;
        let mut want = desired(h, &all);
        want.insert(all[0].clone(), changed);
        let observed = t.observe(&h.upstream()).await.expect("observe");
        let p = plan(&want, &observed, &Drain::NONE);
        assert!(p.add.is_empty() && p.remove.is_empty(), "in place: {p:?}");
        let report = t.apply(&h.upstream(), &p).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.updated, vec![all[0].clone()]);
        let seen = t.observe(&h.upstream()).await.expect("observe");
        let o = seen
            .iter()
            .find(|o| o.server == all[0])
            .expect("still there");
        assert_eq!(o.params, Some(changed), "new parameters read back: {o:?}");
        assert!(plan(&want, &seen, &Drain::NONE).is_empty());
    }

    /// (3) A second cycle plans and writes nothing, also from a restarted vmss-sync.
    pub async fn second_cycle_writes_nothing<H: Harness>(h: &H) {
        let t = h.target();
        let all = h.servers();
        t.check(&h.upstream()).await.expect("check passes");
        let fresh = h.writes().await;
        let (_, report) = cycle(h, &*t, &all, &Drain::NONE).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let before = sorted_held(h).await;
        let writes = h.writes().await;
        if writes.is_some() {
            assert_ne!(writes, fresh, "the first cycle's writes are seen");
        }
        let (p, report) = cycle(h, &*t, &all, &Drain::NONE).await;
        assert!(p.is_empty(), "second plan: {p:?}");
        assert!(!t.needs_write(&h.upstream()));
        assert!(
            report.added.is_empty()
                && report.removed.is_empty()
                && report.updated.is_empty()
                && report.drained.is_empty()
                && report.errors.is_empty(),
            "{report:?}"
        );
        let restarted = h.target();
        restarted.check(&h.upstream()).await.expect("check passes");
        let seen = restarted.observe(&h.upstream()).await.expect("observe");
        assert!(plan(&desired(h, &all), &seen, &Drain::NONE).is_empty());
        assert!(!restarted.needs_write(&h.upstream()));
        assert_eq!(
            sorted_held(h).await,
            before,
            "nothing changed in the process"
        );
        assert_eq!(h.writes().await, writes, "nothing was sent to the process");
    }

    /// (4) People's entries are never changed or removed, nor reported as ours, through
    /// adds, a drain, a restore and removals.
    pub async fn foreign_entries_are_never_touched<H: Harness>(h: &H) {
        let theirs = h.foreign().await;
        let t = h.target();
        let all = h.servers();
        let drain = Drain {
            timeout: LONG_DRAIN,
            elapsed: &BTreeMap::new(),
        };
        let steps: [(&[String], &Drain<'_>); 4] = [
            (&all, &Drain::NONE),
            (&all[..2], &drain),
            (&all, &drain),
            (&[], &Drain::NONE),
        ];
        for (want, drain) in steps {
            let (_, report) = cycle(h, &*t, want, drain).await;
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            let seen = t.observe(&h.upstream()).await.expect("observe");
            assert!(
                seen.iter().all(|o| all.contains(&o.server)),
                "only our servers are observed: {seen:?}"
            );
            assert_eq!(h.foreign().await, theirs, "people's entries unchanged");
        }
        assert_eq!(t.observe(&h.upstream()).await.expect("observe"), Vec::new());
        assert_eq!(h.held().await, Vec::new());
        assert_eq!(h.foreign().await, theirs);
    }

    /// (5) A server planned for drain is observed draining (the process sends it no new
    /// traffic) and a restarted vmss-sync still observes it draining, neither removing it
    /// early nor draining it again; it is restored in place and removed when its time is
    /// up. A target without drain deletes instead, and the restart sees it gone.
    pub async fn drain_survives_a_restart<H: Harness>(h: &H) {
        let all = h.servers();
        let rest = all[..2].to_vec();
        let leaving = all[2].clone();
        let t = h.target();
        let (_, report) = cycle(h, &*t, &all, &Drain::NONE).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        if let Some(got) = h.serving(&all).await {
            assert_eq!(got, all);
        }
        let elapsed = BTreeMap::new();
        let drain = Drain {
            timeout: LONG_DRAIN,
            elapsed: &elapsed,
        };
        let (p, report) = cycle(h, &*t, &rest, &drain).await;
        assert_eq!(
            p.drains().map(|u| u.server.clone()).collect::<Vec<_>>(),
            vec![leaving.clone()],
            "{p:?}"
        );
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let restarted = h.target();
        restarted.check(&h.upstream()).await.expect("check passes");
        let seen = restarted.observe(&h.upstream()).await.expect("observe");
        match h.drain() {
            DrainKind::Observed => {
                assert_eq!(report.drained, vec![leaving.clone()], "{report:?}");
                let mut want = active(&rest);
                want.push((leaving.clone(), ServerState::Draining));
                want.sort();
                assert_eq!(
                    states(&seen),
                    want,
                    "the drain is read back after a restart"
                );
                let mut held = not_draining(&rest);
                held.push((leaving.clone(), true));
                held.sort();
                assert_eq!(sorted_held(h).await, held, "the process drains it");
                // Restarted in the middle of the drain: not removed early, not drained again.
                let p = plan(&desired(h, &rest), &seen, &drain);
                assert!(p.is_empty(), "{p:?}");
            }
            DrainKind::Deletes => {
                assert_eq!(report.removed, vec![leaving.clone()], "{report:?}");
                assert!(report.drained.is_empty(), "{report:?}");
                assert_eq!(states(&seen), active(&rest), "a drain deletes at once");
                assert_eq!(sorted_held(h).await, not_draining(&rest));
                assert!(plan(&desired(h, &rest), &seen, &drain).is_empty());
            }
        }
        if let Some(got) = h.serving(&rest).await {
            assert_eq!(got, rest, "a draining server gets no new request");
        }

        // It comes back: restored in place (or added again where a drain deleted it).
        let (p, report) = cycle(h, &*restarted, &all, &drain).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        if h.drain() == DrainKind::Observed {
            assert!(p.add.is_empty() && p.remove.is_empty(), "in place: {p:?}");
            assert_eq!(report.updated, vec![leaving.clone()], "{report:?}");
        }
        let seen = restarted.observe(&h.upstream()).await.expect("observe");
        assert_eq!(states(&seen), active(&all));
        assert_eq!(sorted_held(h).await, not_draining(&all));
        if let Some(got) = h.serving(&all).await {
            assert_eq!(got, all, "restored");
        }

        // Removed when its drain is over (here: no drain).
        let (_, report) = cycle(h, &*restarted, &rest, &Drain::NONE).await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.removed, vec![leaving.clone()], "{report:?}");
        let seen = restarted.observe(&h.upstream()).await.expect("observe");
        assert_eq!(states(&seen), active(&rest));
        assert_eq!(sorted_held(h).await, not_draining(&rest), "deleted");
        if let Some(got) = h.serving(&rest).await {
            assert_eq!(got, rest, "removed");
        }
    }

    /// (6) One failing item does not stop the others and is reported on its own.
    pub async fn one_failing_item_fails_alone<H: Harness>(h: &H) {
        let t = h.target();
        let all = h.servers();
        let good = plan(&desired(h, &all[..2]), &[], &Drain::NONE);
        let (items, needle) = h.failing(good);
        let reports = t.apply_batch(&items).await;
        assert_eq!(reports.len(), items.len(), "one report per item");
        let errors: Vec<&vmss_sync::target::TargetError> =
            reports.iter().flat_map(|r| r.errors.iter()).collect();
        assert_eq!(errors.len(), 1, "exactly the failing item: {errors:?}");
        assert!(
            errors[0].message.contains(&needle),
            "the error names the item {needle:?}: {}",
            errors[0]
        );
        let added: Vec<String> = sorted(reports.iter().flat_map(|r| r.added.clone()).collect());
        assert_eq!(added, all[..2].to_vec(), "the others are written");
        let seen = t.observe(&h.upstream()).await.expect("observe");
        assert_eq!(states(&seen), active(&all[..2]));
        assert_eq!(sorted_held(h).await, not_draining(&all[..2]));
    }

    /// (7) No message carries a secret: errors of a missing upstream, of failing items,
    /// and of a target whose credential the service refuses.
    pub async fn no_secret_in_any_message<H: Harness>(h: &H) {
        let right = h.secret().expect("a target that takes a secret");
        let wrong = format!("wrong-{right}-Zq9");
        let mut messages = Vec::new();

        let t = h.target();
        if let Err(e) = t.check(&h.missing()).await {
            messages.push(e.to_string());
        }
        if let Err(e) = t.observe(&h.missing()).await {
            messages.push(e.to_string());
        }
        let adds = plan(&desired(h, &h.servers()), &[], &Drain::NONE);
        messages.extend(texts(&t.apply(&h.missing(), &adds).await.errors));
        let (items, _) = h.failing(plan(&desired(h, &h.servers()[..1]), &[], &Drain::NONE));
        for r in t.apply_batch(&items).await {
            messages.extend(texts(&r.errors));
        }

        let refused = h.target_with(&wrong);
        let mut refusals = Vec::new();
        if let Err(e) = refused.check(&h.upstream()).await {
            refusals.push(e.to_string());
            refusals.push(format!("{e:?}"));
        }
        if let Err(e) = refused.observe(&h.upstream()).await {
            refusals.push(e.to_string());
        }
        refusals.extend(texts(&refused.apply(&h.upstream(), &adds).await.errors));
        assert!(
            refusals.len() >= 3,
            "the service refuses a wrong credential: {refusals:?}"
        );
        eprintln!("refused: {refusals:?}");
        messages.extend(refusals);

        assert!(messages.len() >= 3, "errors were produced: {messages:?}");
        for m in &messages {
            assert!(
                !m.contains(&right) && !m.contains(&wrong),
                "a message shows the secret: {m}"
            );
        }
        eprintln!(
            "{} messages checked, e.g. {:?}",
            messages.len(),
            messages.first()
        );
    }
}

/// One test per (harness, check): `conformance!(module: Type { check, ... })`.
macro_rules! conformance {
    ($name:ident: $ty:ty { $($check:ident),* $(,)? }) => {
        mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some(h) = <$ty as Harness>::start().await {
                        checks::$check(&h).await;
                    }
                }
            )*
        }
    };
}

/// Every check but the secret one, for targets that take no credential.
macro_rules! conformance_all {
    ($name:ident: $ty:ty $(, $extra:ident)*) => {
        conformance!($name: $ty {
            observe_on_a_fresh_target_is_empty,
            after_apply_observe_equals_the_plan,
            second_cycle_writes_nothing,
            foreign_entries_are_never_touched,
            drain_survives_a_restart,
            one_failing_item_fails_alone,
            $($extra),*
        });
    };
}

conformance_all!(haproxy_runtime_dynamic: harnesses::HaproxyDynamic);
conformance_all!(haproxy_runtime_template: harnesses::HaproxyTemplate);
conformance_all!(nginx_file: harnesses::NginxFileHarness);
conformance_all!(nginx_plus: harnesses::NginxPlusHarness, no_secret_in_any_message);
conformance_all!(haproxy_dataplane: harnesses::DataplaneHarness, no_secret_in_any_message);
conformance_all!(azure_route_server: harnesses::RouteServerHarness, no_secret_in_any_message);
conformance_all!(azure_lb_pool: harnesses::LbPoolHarness, no_secret_in_any_message);
