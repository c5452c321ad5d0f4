//! One full, idempotent reconcile of every upstream.
//!
//! A cycle reads every scale set once (however many upstreams name it), then, for each
//! upstream independently and concurrently: observes the target, plans, applies the
//! safety guard, and applies. A failure in one upstream never touches another, and an
//! upstream whose discovery failed in any way is left untouched for the cycle.

use crate::azure::arm::ArmClient;
use crate::config::{Config, UpstreamConfig, UpstreamKind};
use crate::discovery::{self, Discovered, DiscoveryState, Groups, Selection, TagFilter};
use crate::model::{
    desired_servers, ObservedServer, RegisterWhen, Registration, ServerParams, ServerState,
};
use crate::plan::{self, Drain, Hold, Plan};
use crate::target::{ApplyReport, Permanence, Target, UpstreamRef};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upstreams synced at the same time, at most.
const UPSTREAMS_IN_FLIGHT: usize = 8;

/// Says whether this replica may write to targets right now (leader election). Checked
/// before every upstream's writes; a closed gate means no write.
pub type WriteGate = Arc<dyn Fn() -> bool + Send + Sync>;

/// When each draining server started draining, per upstream. In memory only: after a
/// restart, servers found draining start a fresh clock (never removed early, and their
/// drain still ends).
#[derive(Default)]
struct DrainBook(Mutex<BTreeMap<String, BTreeMap<String, Instant>>>);

impl DrainBook {
    /// Syncs the clock of one upstream with what the target shows, and returns for how
    /// long each draining server has drained.
    fn elapsed(
        &self,
        upstream: &str,
        observed: &[ObservedServer],
        now: Instant,
    ) -> BTreeMap<String, Duration> {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = book.entry(upstream.to_string()).or_default();
        clocks.retain(|server, _| {
            observed
                .iter()
                .any(|o| &o.server == server && o.state == ServerState::Draining)
        });
        for o in observed.iter().filter(|o| o.state == ServerState::Draining) {
            clocks.entry(o.server.clone()).or_insert(now);
        }
        clocks
            .iter()
            .map(|(s, t)| (s.clone(), now.saturating_duration_since(*t)))
            .collect()
    }

    /// Records drains that were just started.
    fn started(&self, upstream: &str, servers: &[String], now: Instant) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = book.entry(upstream.to_string()).or_default();
        for s in servers {
            clocks.entry(s.clone()).or_insert(now);
        }
    }
}

/// Whether a cycle writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Apply plans to targets.
    Apply,
    /// Compute plans and write nothing.
    DryRun,
}

/// One upstream as the reconciler sees it: where it lives and what feeds it.
#[derive(Clone)]
pub struct UpstreamSpec {
    /// Target address of the upstream.
    pub target: UpstreamRef,
    /// The target that holds it.
    pub sink: Arc<dyn Target>,
    /// What feeds it: scale sets by name, list or glob, or scale sets and VMs by tags.
    pub selection: Selection,
    /// Port the instances serve on (the fallback when `port_tag` is set).
    pub port: Option<u16>,
    /// A tag holding the port (on the VM, else on its scale set).
    pub port_tag: Option<String>,
    /// When an instance is registered; None: `healthy` for sets that report health,
    /// `running` otherwise.
    pub register_when: Option<RegisterWhen>,
    /// Server parameters.
    pub params: ServerParams,
    /// How long a leaving server drains before removal (zero: removed at once).
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSpec")
            .field("target", &self.target)
            .field("sink", &self.sink.kind())
            .field("selection", &self.selection)
            .field("port", &self.port)
            .field("port_tag", &self.port_tag)
            .field("register_when", &self.register_when)
            .field("params", &self.params)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl UpstreamSpec {
    /// Builds the spec of one configured upstream, held by `sink`.
    pub fn from_config(cfg: &Config, u: &UpstreamConfig, sink: Arc<dyn Target>) -> Self {
        Self {
            target: UpstreamRef::new(u.name.clone(), u.kind),
            sink,
            selection: selection_of(cfg, u),
            port: u.port,
            port_tag: u.source.port_tag.clone(),
            register_when: u.source.register_when,
            params: ServerParams {
                max_conns: u.max_conns,
                max_fails: u.max_fails,
                fail_timeout: u.fail_timeout,
                slow_start: u.slow_start,
            },
            drain_timeout: u.source.drain_timeout,
        }
    }

    /// What the upstream is fed from, for logs (nginx-asg-sync's "group").
    pub fn group(&self) -> String {
        self.selection.label()
    }
}

/// The selection of one configured upstream: its own `subscription_id` and
/// `resource_group_name` when set, the top-level ones otherwise.
pub fn selection_of(cfg: &Config, u: &UpstreamConfig) -> Selection {
    let src = &u.source;
    let groups = match &src.resource_groups {
        Some(g) if g.iter().any(|x| x == "*") => Groups::All,
        Some(g) => Groups::Named(g.clone()),
        None => Groups::Named(vec![cfg.resource_group_name.clone()]),
    };
    Selection {
        subscription: src
            .subscription_id
            .clone()
            .unwrap_or_else(|| cfg.subscription_id.clone()),
        groups,
        sets: src.scale_sets.clone(),
        tags: src.tags.as_ref().map(|t| TagFilter {
            allow: t.allow.clone(),
            deny: t.deny.clone(),
        }),
        views: src.register_when != Some(RegisterWhen::Always),
    }
}

/// What happened to one upstream in one cycle.
#[derive(Debug)]
pub struct UpstreamOutcome {
    /// Upstream name.
    pub upstream: String,
    /// HTTP or stream.
    pub kind: UpstreamKind,
    /// The scale set feeding it.
    pub group: String,
    /// The plan (after the guard), when discovery and observation worked.
    pub plan: Option<Plan>,
    /// Why removals were held back, if they were.
    pub hold: Option<Hold>,
    /// What the apply did (None in a dry run or when nothing was planned).
    pub report: Option<ApplyReport>,
    /// Why the upstream failed this cycle, if it did.
    pub error: Option<String>,
    /// Servers observed before the cycle.
    pub observed: usize,
    /// Servers wanted.
    pub desired: usize,
    /// Active servers the upstream holds after the cycle (as planned).
    pub active: usize,
    /// Draining servers the upstream holds after the cycle (as planned).
    pub draining: usize,
    /// From the start of the cycle (discovery included) to the end of this upstream's
    /// writes.
    pub duration: Duration,
}

impl UpstreamOutcome {
    /// True when the upstream ended the cycle holding exactly the wanted servers.
    pub fn in_sync(&self) -> bool {
        self.error.is_none()
            && self.hold.is_none()
            && self.report.as_ref().is_none_or(|r| r.errors.is_empty())
    }
}

/// What one cycle did.
#[derive(Debug)]
pub struct CycleReport {
    /// One entry per configured upstream, in configuration order.
    pub outcomes: Vec<UpstreamOutcome>,
    /// Wall time of the cycle.
    pub duration: Duration,
}

impl CycleReport {
    /// True when every upstream is in sync.
    pub fn all_in_sync(&self) -> bool {
        self.outcomes.iter().all(UpstreamOutcome::in_sync)
    }
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
}

/// The reconciler: discovery, planning and the targets, for one configuration.
pub struct Reconciler {
    upstreams: Vec<UpstreamSpec>,
    arm: ArmClient,
    options: discovery::Options,
    sync_interval: Duration,
    state: Arc<DiscoveryState>,
    budget_warned: AtomicBool,
    drains: Arc<DrainBook>,
    gate: Option<WriteGate>,
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
        }
    }

    /// Sets the cycle interval (to tell when the read budget cannot keep up) and how often
    /// instance views are read.
    pub fn with_intervals(mut self, sync_interval: Duration, health_interval: Duration) -> Self {
        self.sync_interval = sync_interval;
        self.options.health_interval = health_interval;
        self
    }

    /// Makes every write wait for `gate` to be open (leader election).
    pub fn set_write_gate(&mut self, gate: WriteGate) {
        self.gate = Some(gate);
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
            if let Err(e) = up.sink.check(&up.target).await {
                problems.push(StartupProblem {
                    upstream: up.target.name.clone(),
                    message: format!(
                        "Problem with the {} configuration: {}",
                        target_name(up.sink.kind()),
                        e.message
                    ),
                    permanent: e.permanence == Permanence::Permanent,
                });
            }
            match sets.get(&up.selection) {
                Some(Err(e)) => problems.push(StartupProblem {
                    upstream: up.target.name.clone(),
                    message: format!("scale set {}: {e}", up.group()),
                    permanent: e.is_permanent(),
                }),
                Some(Ok(found)) if found.is_empty() => tracing::warn!(
                    upstream = %up.target.name,
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

    /// Reads what every upstream selects, each resource once.
    pub async fn discover(&self) -> Discovered {
        let before = self.arm.stats();
        let started = Instant::now();
        let found =
            discovery::discover(&self.arm, &self.state, &self.selections(), &self.options).await;
        self.check_budget(&before, started.elapsed());
        found
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

    /// Second half of a cycle: plan and apply every upstream against the snapshots.
    pub async fn apply_snapshots(
        &self,
        snapshots: Arc<Discovered>,
        mode: Mode,
        started: Instant,
    ) -> CycleReport {
        let mut tasks = tokio::task::JoinSet::new();
        // Upstreams are independent; a bound keeps connections and buffers to the targets
        // bounded however many upstreams there are.
        let limit = Arc::new(tokio::sync::Semaphore::new(UPSTREAMS_IN_FLIGHT));
        for (index, up) in self.upstreams.iter().enumerate() {
            let up = up.clone();
            let target = Arc::clone(&up.sink);
            let snapshots = Arc::clone(&snapshots);
            let ctx = Ctx {
                drains: Arc::clone(&self.drains),
                gate: self.gate.clone(),
                mode,
            };
            let limit = Arc::clone(&limit);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let mut outcome = sync_upstream(&up, target.as_ref(), &snapshots, &ctx).await;
                outcome.duration = started.elapsed();
                (index, outcome)
            });
        }
        let mut outcomes: Vec<(usize, UpstreamOutcome)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(o) => outcomes.push(o),
                Err(e) => tracing::error!(error = %e, "An upstream task ended abnormally."),
            }
        }
        outcomes.sort_by_key(|(i, _)| *i);
        CycleReport {
            outcomes: outcomes.into_iter().map(|(_, o)| o).collect(),
            duration: started.elapsed(),
        }
    }
}

/// How log lines name a target: NGINX Plus keeps nginx-asg-sync's words.
fn target_name(kind: &str) -> &str {
    match kind {
        "nginx-plus" => "NGINX",
        "haproxy-runtime" => "HAProxy (Runtime API)",
        "haproxy-dataplane" => "HAProxy (Data Plane API)",
        "nginx-file" => "the NGINX upstream file",
        other => other,
    }
}

fn kind_word(kind: UpstreamKind) -> &'static str {
    match kind {
        UpstreamKind::Http => "HTTP",
        UpstreamKind::Stream => "Stream",
    }
}

fn list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

struct Ctx {
    drains: Arc<DrainBook>,
    gate: Option<WriteGate>,
    mode: Mode,
}

fn count_states(servers: &[ObservedServer]) -> (usize, usize) {
    let draining = servers
        .iter()
        .filter(|o| o.state == ServerState::Draining)
        .count();
    (servers.len() - draining, draining)
}

async fn sync_upstream(
    up: &UpstreamSpec,
    target: &dyn Target,
    snapshots: &Discovered,
    ctx: &Ctx,
) -> UpstreamOutcome {
    let mut out = UpstreamOutcome {
        upstream: up.target.name.clone(),
        kind: up.target.kind,
        group: up.group(),
        plan: None,
        hold: None,
        report: None,
        error: None,
        observed: 0,
        desired: 0,
        active: 0,
        draining: 0,
        duration: Duration::ZERO,
    };
    let found = match snapshots.get(&up.selection) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            let msg = format!("Couldn't get the IP addresses for {}: {e}", out.group);
            tracing::warn!(upstream = %up.target.name, group = %out.group, "{msg}");
            out.error = Some(msg);
            return out;
        }
        None => {
            out.error = Some(format!("{} was not read", out.group));
            return out;
        }
    };
    let observed = match target.observe(&up.target).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!(
                "Couldn't update {} servers in {}: {}",
                kind_word(up.target.kind),
                target_name(target.kind()),
                e.message
            );
            tracing::warn!(upstream = %up.target.name, target = target.kind(), "{msg}");
            out.error = Some(msg);
            return out;
        }
    };
    let (desired, unported) = desired_servers(
        found,
        &Registration {
            port: up.port,
            port_tag: up.port_tag.as_deref(),
            when: up.register_when,
            params: up.params,
        },
    );
    if let Some(first) = unported.first() {
        tracing::warn!(
            upstream = %up.target.name,
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
    let now = Instant::now();
    let elapsed = ctx.drains.elapsed(&up.target.name, &observed, now);
    let drain = Drain {
        timeout: up.drain_timeout,
        elapsed: &elapsed,
    };
    let mut p = plan::plan(&desired, &observed, &drain);
    if let Some(hold) = plan::guard(&p, &observed, found.found(), found.capacity()) {
        tracing::warn!(
            upstream = %up.target.name,
            group = %out.group,
            "Holding removals for upstream {}: {hold}.",
            up.target.name
        );
        out.hold = Some(hold);
        p = plan::without_removals(p);
    }
    if ctx.mode == Mode::DryRun || p.is_empty() {
        out.plan = Some(p);
        return out;
    }
    if let Some(gate) = &ctx.gate {
        if !gate() {
            out.error = Some("not written: this replica is not the leader".to_string());
            out.plan = Some(p);
            return out;
        }
    }
    let report = target.apply(&up.target, &p).await;
    let drained: Vec<String> = p
        .drains()
        .filter(|u| report.drained.contains(&u.server))
        .map(|u| u.server.clone())
        .collect();
    ctx.drains.started(&up.target.name, &drained, now);
    (out.active, out.draining) = count_states(&plan::simulate(&observed, &p));
    let changed = !(report.added.is_empty()
        && report.removed.is_empty()
        && report.updated.is_empty()
        && report.drained.is_empty());
    if changed {
        let draining = if report.drained.is_empty() {
            String::new()
        } else {
            format!(", Draining: {}", list(&report.drained))
        };
        tracing::info!(
            upstream = %up.target.name,
            group = %out.group,
            target = target.kind(),
            added = ?report.added,
            removed = ?report.removed,
            updated = ?report.updated,
            drained = ?report.drained,
            "Updated {} servers of {} for group {} ; Added: {}, Removed: {}, Updated: {}{draining}",
            kind_word(up.target.kind),
            up.target.name,
            out.group,
            list(&report.added),
            list(&report.removed),
            list(&report.updated),
        );
    }
    for e in &report.errors {
        tracing::warn!(
            upstream = %up.target.name,
            target = target.kind(),
            "Couldn't update {} servers in {}: {}",
            kind_word(up.target.kind),
            target_name(target.kind()),
            e.message
        );
    }
    if !report.errors.is_empty() {
        out.error = Some(
            report
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    out.plan = Some(p);
    out.report = Some(report);
    out
}
