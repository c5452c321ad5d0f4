//! The cycle: discovery, then every upstream prepared (observed and planned), then the
//! writes, then the outcomes.

use super::apply::{gate_open, WriteGate, NOT_LEADER};
use super::drain::DrainBook;
use super::outcome::{
    check_failed, count_states, finish, kind_word, states_after, still_unusable, target_name,
    CycleReport, Order, UpstreamOutcome,
};
use super::specs::UpstreamSpec;
use crate::azure::arm::ArmClient;
use crate::discovery::{self, Discovered, DiscoveryState, Selection};
use crate::model::{desired_servers, held_servers, Found, Registration};
use crate::plan::{self, Drain, Hold};
use crate::target::{ApplyReport, Permanence};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upstreams synced at the same time, at most.
const UPSTREAMS_IN_FLIGHT: usize = 8;

/// Whether a cycle writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Apply plans to targets.
    Apply,
    /// Compute plans and write nothing.
    DryRun,
}

/// A problem found by the startup check.
#[derive(Debug, Clone)]
pub struct StartupProblem {
    /// Upstream concerned.
    pub upstream: String,
    /// What is wrong.
    pub message: String,
    /// True when it will not go away without a change of configuration.
    pub permanent: bool,
    /// True for a problem of the upstream's target (the reconciler then checks it again
    /// every cycle before syncing the upstream); false for one of its scale sets.
    pub target: bool,
}

/// The reconciler: discovery, planning and the targets, for one configuration.
pub struct Reconciler {
    pub(super) upstreams: Vec<UpstreamSpec>,
    arm: ArmClient,
    options: discovery::Options,
    sync_interval: Duration,
    state: Arc<DiscoveryState>,
    budget_warned: AtomicBool,
    drains: Arc<DrainBook>,
    pub(super) gate: Option<WriteGate>,
    /// Upstreams whose target failed the startup check: checked again every cycle
    /// before anything else, and synced once the check passes.
    unusable: Arc<Mutex<BTreeMap<String, String>>>,
    window: crate::window::Warnings,
}

impl Reconciler {
    /// Builds a reconciler from its upstreams (each with its target) and the ARM client.
    pub fn new(upstreams: Vec<UpstreamSpec>, arm: ArmClient) -> Self {
        Self {
            upstreams,
            arm,
            options: discovery::Options::default(),
            sync_interval: Duration::from_secs(5),
            state: Arc::default(),
            budget_warned: AtomicBool::new(false),
            drains: Arc::default(),
            gate: None,
            unusable: Arc::default(),
            window: crate::window::Warnings::default(),
        }
    }

    /// Sets the cycle interval (to tell when the read budget cannot keep up) and how often
    /// instance views are read.
    pub fn with_intervals(mut self, sync_interval: Duration, health_interval: Duration) -> Self {
        self.sync_interval = sync_interval;
        self.options.health_interval = health_interval;
        self
    }

    /// Takes over what `old` (the reconciler of the configuration this one replaces)
    /// remembers between cycles: each scale set's read history (what its reads are judged
    /// against) and the drain clocks. A reload then judges the next read of a set it
    /// keeps as the cycle before would have, not as right after a start.
    pub fn inherit(mut self, old: &Reconciler) -> Self {
        self.state.adopt_history(&old.state);
        self.drains = Arc::clone(&old.drains);
        self.options.max_reuse_age = old.options.max_reuse_age;
        self
    }

    /// Makes every write wait for `gate` to be open (leader election).
    pub fn set_write_gate(&mut self, gate: WriteGate) {
        self.gate = Some(gate);
    }

    /// The distinct selections of the configured upstreams (what events are routed to).
    pub fn selection_list(&self) -> Vec<Selection> {
        self.selections()
    }

    /// The configured upstreams.
    pub fn upstreams(&self) -> &[UpstreamSpec] {
        &self.upstreams
    }

    /// The ARM client (for its request statistics).
    pub fn arm(&self) -> &ArmClient {
        &self.arm
    }

    /// Checks every upstream exists in the target and takes dynamic servers, and every
    /// named scale set exists and is supported. Returns every problem found.
    pub async fn startup_check(&self) -> Vec<StartupProblem> {
        let mut problems = Vec::new();
        let sets =
            discovery::check(&self.arm, &self.state, &self.selections(), &self.options).await;
        for up in &self.upstreams {
            // A template's backends are named by what discovery finds, and created when
            // missing: there is nothing to check before then.
            let check = match up.services {
                Some(_) => Ok(()),
                None => up.target.check(&up.upstream).await,
            };
            if let Err(e) = check {
                let permanent = e.permanence == Permanence::Permanent;
                let message = check_failed(up.target.kind(), &e);
                self.unusable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(up.upstream.name.clone(), e.message.clone());
                problems.push(StartupProblem {
                    upstream: up.upstream.name.clone(),
                    message,
                    permanent,
                    target: true,
                });
            }
            match sets.get(&up.selection) {
                Some(Err(e)) => problems.push(StartupProblem {
                    upstream: up.upstream.name.clone(),
                    message: format!("scale set {}: {e}", up.group()),
                    permanent: e.is_permanent(),
                    target: false,
                }),
                Some(Ok(found)) if found.is_empty() => tracing::warn!(
                    upstream = %up.upstream.name,
                    "No scale set matches {} yet; the upstream is left as it is until one does.",
                    up.group()
                ),
                _ => {}
            }
        }
        problems
    }

    fn selections(&self) -> Vec<Selection> {
        let mut v: Vec<Selection> = self.upstreams.iter().map(|u| u.selection.clone()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Sets how old a reused read may be (a Uniform set's NIC list, a scale set read
    /// reused with events): 15 minutes unless tests or benchmarks say otherwise.
    pub fn set_max_reuse_age(&mut self, age: Duration) {
        self.options.max_reuse_age = age;
    }

    /// Reads what every upstream selects, each resource once.
    pub async fn discover(&self) -> Discovered {
        self.discover_watched(None).await
    }

    /// [`Reconciler::discover`] for a timer cycle with events: scale set reads made at or
    /// after `since` (the event queue has been read without a break since then) may stand
    /// for this cycle's (`discovery::Options::sets_watched_since`).
    pub async fn discover_watched(&self, since: Option<Instant>) -> Discovered {
        let before = self.arm.stats();
        let started = Instant::now();
        let opts = discovery::Options {
            sets_watched_since: since,
            ..self.options
        };
        let found = discovery::discover(&self.arm, &self.state, &self.selections(), &opts).await;
        self.check_budget(&before, started.elapsed());
        self.check_window(&found);
        found
    }

    /// Says once per scale set when a scale-in cannot be drained inside Azure's
    /// terminate window (no terminate notification, or a delay shorter than the drain).
    fn check_window(&self, found: &Discovered) {
        let health = self.options.health_interval;
        let sets = self.upstreams.iter().flat_map(|up| {
            let need = crate::window::needs(up.drain_timeout, health, self.sync_interval);
            let sets = match found.get(&up.selection) {
                Some(Ok(f)) => f.sets.as_slice(),
                _ => &[],
            };
            sets.iter().map(move |s| (s.as_ref(), need))
        });
        self.window.check(sets);
    }

    /// Says once, clearly, when the read budget cannot sustain `sync_interval`: cycles
    /// then stretch (reads wait for the budget) instead of failing.
    fn check_budget(&self, before: &crate::azure::ArmStats, took: Duration) {
        let after = self.arm.stats();
        let reads = after.requests.saturating_sub(before.requests);
        let waited = after.budget_wait.saturating_sub(before.budget_wait);
        let budget = self.arm.throttle().budget();
        let sustained = budget.time_for(reads);
        if !waited.is_zero() && sustained > self.sync_interval {
            if !self.budget_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    reads,
                    budget_reads_per_second = budget.per_second,
                    sync_interval_ms = self.sync_interval.as_millis() as u64,
                    cycle_ms = took.as_millis() as u64,
                    "A cycle needs {reads} ARM reads, which the read budget ({} reads per second) \
                     allows only every {:.1} s, not every {:?} (sync_interval): cycles are \
                     stretched to fit the budget. Raise arm_reads_per_second if the subscription \
                     allows more, or lengthen sync_interval or health_interval.",
                    budget.per_second,
                    sustained.as_secs_f64(),
                    self.sync_interval
                );
            }
        } else if sustained <= self.sync_interval / 2 {
            self.budget_warned.store(false, Ordering::Relaxed);
        }
    }

    /// Runs one full cycle.
    pub async fn reconcile(&self, mode: Mode) -> CycleReport {
        let started = Instant::now();
        let snapshots = Arc::new(self.discover().await);
        self.apply_snapshots(snapshots, mode, started).await
    }

    /// Second half of a cycle: every upstream (templates expanded into their services)
    /// is observed and planned against the snapshots, then the plans are applied, each
    /// target's in one batch when it batches (the Data Plane API: one transaction per
    /// cycle), and the outcomes are logged.
    pub async fn apply_snapshots(
        &self,
        snapshots: Arc<Discovered>,
        mode: Mode,
        started: Instant,
    ) -> CycleReport {
        self.apply_snapshots_of(snapshots, mode, started, None)
            .await
    }

    /// A reconcile of the upstreams whose selection is in `only` (an event's), with their
    /// instance views read now, whatever `health_interval` says. Also says whether what
    /// was found is still coming up ([`crate::events::still_changing`]).
    pub async fn reconcile_selected(
        &self,
        only: &std::collections::BTreeSet<Selection>,
        mode: Mode,
    ) -> (CycleReport, bool) {
        let started = Instant::now();
        let selections: Vec<Selection> = only.iter().cloned().collect();
        let fresh = discovery::Options {
            health_interval: Duration::ZERO,
            ..self.options
        };
        let found = discovery::discover(&self.arm, &self.state, &selections, &fresh).await;
        self.check_window(&found);
        let changing = crate::events::still_changing(&found);
        let report = self
            .apply_snapshots_of(Arc::new(found), mode, started, Some(only))
            .await;
        (report, changing)
    }

    async fn apply_snapshots_of(
        &self,
        snapshots: Arc<Discovered>,
        mode: Mode,
        started: Instant,
        only: Option<&std::collections::BTreeSet<Selection>>,
    ) -> CycleReport {
        let (jobs, mut failed) = self.expand(&snapshots, only).await;
        // Upstreams are independent; a bound keeps connections and buffers to the targets
        // bounded however many upstreams there are.
        let limit = Arc::new(tokio::sync::Semaphore::new(UPSTREAMS_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let drains = Arc::clone(&self.drains);
            let gate = self.gate.clone();
            let limit = Arc::clone(&limit);
            let unusable = Arc::clone(&self.unusable);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                if let Some(failed) = recheck(&job, &unusable).await {
                    return (index, Err(failed));
                }
                (index, Ok(prepare(job, &drains, gate.as_ref(), mode).await))
            });
        }
        let mut prepared = Vec::new();
        for (index, p) in join_sorted(&mut tasks).await {
            match p {
                Ok(p) => prepared.push((index, p)),
                Err(f) => failed.push(f),
            }
        }
        let writes = match mode {
            Mode::DryRun => Vec::new(),
            Mode::Apply => self.apply_all(&mut prepared, &limit).await,
        };
        let mut outcomes: Vec<(Order, UpstreamOutcome)> = Vec::new();
        let mut reports: BTreeMap<usize, ApplyReport> = writes.into_iter().collect();
        for (index, p) in prepared {
            let report = reports.remove(&index);
            let order = p.order;
            let mut outcome = finish(p, report, &self.drains);
            outcome.duration = started.elapsed();
            outcomes.push((order, outcome));
        }
        outcomes.append(&mut failed);
        outcomes.sort_by_key(|(order, _)| *order);
        CycleReport {
            outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
            duration: started.elapsed(),
        }
    }
}

async fn join_sorted<T: 'static>(tasks: &mut tokio::task::JoinSet<(usize, T)>) -> Vec<(usize, T)> {
    let mut out = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(o) => out.push(o),
            Err(e) => tracing::error!(error = %e, "An upstream task ended abnormally."),
        }
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// One upstream to sync this cycle: a configured one, or one service of a template.
pub(super) struct Job {
    /// Where its outcome goes in the report.
    pub(super) order: Order,
    pub(super) spec: UpstreamSpec,
    /// The template it comes from, for a service.
    pub(super) template: Option<String>,
    pub(super) found: Arc<Found>,
}

/// An upstream observed and planned, before its writes.
pub(super) struct Prepared {
    pub(super) order: Order,
    pub(super) spec: UpstreamSpec,
    pub(super) outcome: UpstreamOutcome,
    /// True when the plan has something to write and this replica may write it.
    pub(super) write: bool,
    /// The (active, draining) counts once the plan is written (the observed servers
    /// themselves are not kept until the writes are done).
    pub(super) after: (usize, usize),
    /// When the plan was made (drain clocks start then).
    pub(super) now: Instant,
}

/// Checks again the target of an upstream that failed its startup check: `None` when it
/// can be used (now, or all along), else the upstream's failed outcome for this cycle.
async fn recheck(
    job: &Job,
    unusable: &Mutex<BTreeMap<String, String>>,
) -> Option<(Order, UpstreamOutcome)> {
    let up = &job.spec;
    let name = &up.upstream.name;
    if !unusable
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(name)
    {
        return None;
    }
    match up.target.check(&up.upstream).await {
        Ok(()) => {
            unusable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
            tracing::info!(
                upstream = %name,
                target = up.target.kind(),
                "{} can be used now for upstream {name}: syncing it.",
                target_name(up.target.kind())
            );
            None
        }
        Err(e) => {
            let msg = still_unusable(up.target.kind(), &e);
            tracing::warn!(upstream = %name, target = up.target.kind(), "{msg}");
            let mut out = UpstreamOutcome::failed(up, job.template.clone(), msg);
            out.conditions.push("unusable");
            Some((job.order, out))
        }
    }
}

/// Observes the target, plans against what was found, and holds removals the guard
/// refuses. Writes nothing.
async fn prepare(job: Job, drains: &DrainBook, gate: Option<&WriteGate>, mode: Mode) -> Prepared {
    let Job {
        order,
        spec: up,
        template,
        found,
    } = job;
    let mut out = UpstreamOutcome::new(&up, template);
    let now = Instant::now();
    let prepared = |out, write, after| Prepared {
        order,
        spec: up.clone(),
        outcome: out,
        write,
        after,
        now,
    };
    let observed = match up.target.observe(&up.upstream).await {
        Ok(o) => o,
        Err(e) => {
            // nginx-asg-sync's words when a cycle writes; a dry run never updates, so it
            // says what it could not do: read the servers.
            let msg = match mode {
                Mode::Apply => format!(
                    "Couldn't update {} servers in {}: {}",
                    kind_word(up.upstream.kind),
                    target_name(up.target.kind()),
                    e.message
                ),
                Mode::DryRun => format!(
                    "Couldn't read the {} servers of {} in {}, so no plan: {}",
                    kind_word(up.upstream.kind),
                    up.upstream.name,
                    target_name(up.target.kind()),
                    e.message
                ),
            };
            tracing::warn!(upstream = %up.upstream.name, target = up.target.kind(), "{msg}");
            out.error = Some(msg);
            return prepared(out, false, (0, 0));
        }
    };
    let reg = Registration {
        port: up.port,
        port_tag: up.port_tag.as_deref(),
        when: up.register_when,
        params: up.params,
    };
    let (desired, unported) = desired_servers(&found, &reg);
    // The servers of sets whose read was judged failed are kept exactly as they are:
    // left out of planning (and of the guard's counts).
    let held = held_servers(&found, &reg);
    if let Some(first) = unported.first() {
        tracing::warn!(
            upstream = %up.upstream.name,
            group = %out.group,
            skipped = unported.len(),
            "{} instance(s) have no usable port and are not registered; first: {}: {}",
            unported.len(),
            first.vm_id,
            first.reason
        );
    }
    out.observed = observed.len();
    out.desired = desired.len();
    (out.active, out.draining) = count_states(&observed);
    let elapsed = drains.elapsed(&up.upstream.name, &observed, now);
    let drain = Drain {
        timeout: up.drain_timeout,
        elapsed: &elapsed,
    };
    // Held servers are left out of planning (copies only when some are held).
    let (desired, rest) = if held.servers.is_empty() {
        (
            std::borrow::Cow::Borrowed(&desired),
            std::borrow::Cow::Borrowed(&observed[..]),
        )
    } else {
        let (d, o) = plan::except(&desired, &observed, &held.servers);
        (std::borrow::Cow::Owned(d), std::borrow::Cow::Owned(o))
    };
    let mut p = plan::plan(&desired, &rest, &drain);
    for s in found.held() {
        let Some(h) = &s.held else { continue };
        let hold = Hold::ReadFailed {
            set: s.key.to_string(),
            fault: h.fault.clone(),
            add_only: h.add_only,
        };
        tracing::warn!(
            upstream = %up.upstream.name,
            group = %out.group,
            scale_set = %s.key,
            "Holding removals for upstream {}: {hold}{}.",
            up.upstream.name,
            match (h.add_only, h.members_known) {
                (_, false) => "; no read of the set has been used since vmss-sync started, so which servers are its is not known and no server leaves the upstream",
                (true, true) => "; its ready members are added, none of its servers leaves",
                (false, true) => "",
            }
        );
        out.hold.get_or_insert(hold);
    }
    if held.unknown {
        p = plan::without_leaving(p);
    } else {
        p = plan::without_leaving_of(p, &held.staying);
    }
    if let Some(hold) = plan::guard(&p, &rest, found.found(), found.capacity()) {
        tracing::warn!(
            upstream = %up.upstream.name,
            group = %out.group,
            "Holding removals for upstream {}: {hold}.",
            up.upstream.name
        );
        out.hold = Some(hold);
        p = plan::without_removals(p);
    }
    // A target whose state differs from what it should hold in ways the plan does not
    // show (a rewritten NGINX file) is written even with nothing planned.
    let wanted = !p.is_empty() || up.target.needs_write(&up.upstream);
    let write = wanted && gate_open(gate);
    if wanted && !write {
        out.error = Some(NOT_LEADER.to_string());
    }
    let after = states_after(&observed, &p);
    drop(rest);
    drop(observed);
    out.plan = Some(p);
    prepared(out, write, after)
}
