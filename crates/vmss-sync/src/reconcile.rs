//! One full, idempotent reconcile of every upstream.
//!
//! A cycle reads every scale set once (however many upstreams name it), then, for each
//! upstream independently and concurrently: observes the target, plans, applies the
//! safety guard, and applies. A failure in one upstream never touches another, and an
//! upstream whose discovery failed in any way is left untouched for the cycle.

use crate::azure::arm::ArmClient;
use crate::config::{Config, UpstreamConfig, UpstreamKind};
use crate::discovery::{self, DiscoveryError};
use crate::model::{
    desired_servers, ObservedServer, ScaleSetKey, ScaleSetSnapshot, ServerParams, ServerState,
};
use crate::plan::{self, Drain, Hold, Plan};
use crate::target::{ApplyReport, Permanence, Target, UpstreamRef};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// The scale set that feeds it.
    pub scale_set: ScaleSetKey,
    /// Port the instances serve on.
    pub port: u16,
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
            .field("scale_set", &self.scale_set)
            .field("port", &self.port)
            .field("params", &self.params)
            .field("drain_timeout", &self.drain_timeout)
            .finish()
    }
}

impl UpstreamSpec {
    /// Builds the spec of one configured upstream, held by `sink`.
    pub fn from_config(cfg: &Config, u: &UpstreamConfig, sink: Arc<dyn Target>) -> Self {
        Self {
            target: UpstreamRef {
                name: u.name.clone(),
                kind: u.kind,
            },
            sink,
            scale_set: ScaleSetKey::new(
                &cfg.subscription_id,
                &cfg.resource_group_name,
                &u.virtual_machine_scale_set,
            ),
            port: u.port,
            params: ServerParams {
                max_conns: u.max_conns,
                max_fails: u.max_fails,
                fail_timeout: u.fail_timeout,
                slow_start: u.slow_start,
            },
            drain_timeout: Duration::ZERO,
        }
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
    concurrency: usize,
    drains: Arc<DrainBook>,
    gate: Option<WriteGate>,
}

impl Reconciler {
    /// Builds a reconciler from its upstreams (each with its target) and the ARM client.
    pub fn new(upstreams: Vec<UpstreamSpec>, arm: ArmClient) -> Self {
        Self {
            upstreams,
            arm,
            concurrency: 8,
            drains: Arc::default(),
            gate: None,
        }
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
    /// scale set exists and is supported. Returns every problem found.
    pub async fn startup_check(&self) -> Vec<StartupProblem> {
        let mut problems = Vec::new();
        let keys = self.scale_set_keys();
        let mut checks = tokio::task::JoinSet::new();
        for key in keys {
            let arm = self.arm.clone();
            checks.spawn(async move {
                let r = discovery::check_scale_set(&arm, &key).await;
                (key, r)
            });
        }
        let mut sets: BTreeMap<ScaleSetKey, Result<(), DiscoveryError>> = BTreeMap::new();
        while let Some(joined) = checks.join_next().await {
            if let Ok((key, r)) = joined {
                sets.insert(key, r);
            }
        }
        for up in &self.upstreams {
            if let Err(e) = up.sink.check(&up.target).await {
                problems.push(StartupProblem {
                    upstream: up.target.name.clone(),
                    message: format!("Problem with the NGINX configuration: {}", e.message),
                    permanent: e.permanence == Permanence::Permanent,
                });
            }
            if let Some(Err(e)) = sets.get(&up.scale_set) {
                problems.push(StartupProblem {
                    upstream: up.target.name.clone(),
                    message: format!("scale set {}: {e}", up.scale_set),
                    permanent: e.is_permanent(),
                });
            }
        }
        problems
    }

    fn scale_set_keys(&self) -> Vec<ScaleSetKey> {
        let mut keys: Vec<ScaleSetKey> =
            self.upstreams.iter().map(|u| u.scale_set.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Reads every scale set once.
    pub async fn discover(
        &self,
    ) -> BTreeMap<ScaleSetKey, Result<ScaleSetSnapshot, DiscoveryError>> {
        discovery::discover(&self.arm, &self.scale_set_keys(), self.concurrency).await
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
        snapshots: Arc<BTreeMap<ScaleSetKey, Result<ScaleSetSnapshot, DiscoveryError>>>,
        mode: Mode,
        started: Instant,
    ) -> CycleReport {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, up) in self.upstreams.iter().enumerate() {
            let up = up.clone();
            let target = Arc::clone(&up.sink);
            let snapshots = Arc::clone(&snapshots);
            let ctx = Ctx {
                drains: Arc::clone(&self.drains),
                gate: self.gate.clone(),
                mode,
            };
            tasks.spawn(async move {
                let outcome = sync_upstream(&up, target.as_ref(), &snapshots, &ctx).await;
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
    snapshots: &BTreeMap<ScaleSetKey, Result<ScaleSetSnapshot, DiscoveryError>>,
    ctx: &Ctx,
) -> UpstreamOutcome {
    let mut out = UpstreamOutcome {
        upstream: up.target.name.clone(),
        kind: up.target.kind,
        group: up.scale_set.name.clone(),
        plan: None,
        hold: None,
        report: None,
        error: None,
        observed: 0,
        desired: 0,
        active: 0,
        draining: 0,
    };
    let snapshot = match snapshots.get(&up.scale_set) {
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            let msg = format!(
                "Couldn't get the IP addresses for {}: {e}",
                up.scale_set.name
            );
            tracing::warn!(upstream = %up.target.name, group = %up.scale_set.name, "{msg}");
            out.error = Some(msg);
            return out;
        }
        None => {
            out.error = Some(format!("scale set {} was not read", up.scale_set));
            return out;
        }
    };
    let observed = match target.observe(&up.target).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!(
                "Couldn't update {} servers in NGINX: {}",
                kind_word(up.target.kind),
                e.message
            );
            tracing::warn!(upstream = %up.target.name, target = target.kind(), "{msg}");
            out.error = Some(msg);
            return out;
        }
    };
    let desired = desired_servers([snapshot], up.port, up.params);
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
    if let Some(hold) = plan::guard(&p, &observed, snapshot.instances.len(), snapshot.capacity) {
        tracing::warn!(
            upstream = %up.target.name,
            group = %up.scale_set.name,
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
            group = %up.scale_set.name,
            target = target.kind(),
            added = ?report.added,
            removed = ?report.removed,
            updated = ?report.updated,
            drained = ?report.drained,
            "Updated {} servers of {} for group {} ; Added: {}, Removed: {}, Updated: {}{draining}",
            kind_word(up.target.kind),
            up.target.name,
            up.scale_set.name,
            list(&report.added),
            list(&report.removed),
            list(&report.updated),
        );
    }
    for e in &report.errors {
        tracing::warn!(
            upstream = %up.target.name,
            target = target.kind(),
            "Couldn't update {} servers in NGINX: {}",
            kind_word(up.target.kind),
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
