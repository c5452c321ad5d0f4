//! One full, idempotent reconcile of every upstream.
//!
//! A cycle reads every scale set once (however many upstreams name it), then, for each
//! upstream independently and concurrently: observes the target, plans, applies the
//! safety guard, and applies. A failure in one upstream never touches another, and an
//! upstream whose discovery failed in any way is left untouched for the cycle.

use crate::azure::arm::ArmClient;
use crate::config::{Config, ServicesConfig, UpstreamConfig, UpstreamKind};
use crate::discovery::{self, Discovered, DiscoveryState, Groups, Selection, TagFilter};
use crate::model::{
    desired_servers, held_servers, Found, ObservedServer, RegisterWhen, Registration, ServerParams,
    ServerState,
};
use crate::plan::{self, Drain, Hold, Plan};
use crate::services;
use crate::target::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upstreams synced at the same time, at most.
const UPSTREAMS_IN_FLIGHT: usize = 8;

/// Says whether this replica may write to targets right now (leader election). Checked
/// when an upstream is planned and again just before its writes (or its target's batch);
/// a closed gate means no write.
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

    /// Forgets the clocks of drains that were cancelled (servers restored): a later
    /// drain of the same server starts a whole `drain_timeout` again.
    fn cancelled(&self, upstream: &str, servers: &[String]) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(clocks) = book.get_mut(upstream) {
            for s in servers {
                clocks.remove(s);
            }
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
    /// Set on a template: every service its selection finds by tags becomes its own
    /// upstream, named `{name}{separator}{service}{separator}{port}{separator}{region}`.
    pub services: Option<ServicesConfig>,
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
            .field("services", &self.services)
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
            services: u.source.services.clone(),
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
    /// Upstream name (for a service of a template: its backend's name).
    pub upstream: String,
    /// The template (configured upstream with `services`) a service comes from.
    pub template: Option<String>,
    /// The target kind (`Target::kind`).
    pub target: &'static str,
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
    fn new(up: &UpstreamSpec, template: Option<String>) -> Self {
        Self {
            upstream: up.target.name.clone(),
            template,
            target: up.sink.kind(),
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
        }
    }

    fn failed(up: &UpstreamSpec, template: Option<String>, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(up, template)
        }
    }

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
            // A template's backends are named by what discovery finds, and created when
            // missing: there is nothing to check before then.
            let check = match up.services {
                Some(_) => Ok(()),
                None => up.sink.check(&up.target).await,
            };
            if let Err(e) = check {
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
        let (jobs, mut failed) = self.expand(&snapshots).await;
        // Upstreams are independent; a bound keeps connections and buffers to the targets
        // bounded however many upstreams there are.
        let limit = Arc::new(tokio::sync::Semaphore::new(UPSTREAMS_IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        for (index, job) in jobs.into_iter().enumerate() {
            let drains = Arc::clone(&self.drains);
            let gate = self.gate.clone();
            let limit = Arc::clone(&limit);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                (index, prepare(job, &drains, gate.as_ref()).await)
            });
        }
        let prepared = join_sorted(&mut tasks).await;
        let writes = match mode {
            Mode::DryRun => Vec::new(),
            Mode::Apply => self.apply_all(&prepared, &limit).await,
        };
        let mut outcomes: Vec<(usize, UpstreamOutcome)> = Vec::new();
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

    /// Turns the configured upstreams into this cycle's jobs: a plain upstream is one
    /// job; a template (`services`) is one job per service its selection found, plus one
    /// per backend of an earlier service that the target still holds (emptied, never
    /// deleted). Upstreams whose selection failed come back as failed outcomes.
    async fn expand(&self, snapshots: &Discovered) -> (Vec<Job>, Vec<(usize, UpstreamOutcome)>) {
        let mut jobs = Vec::new();
        let mut failed = Vec::new();
        for (index, up) in self.upstreams.iter().enumerate() {
            let order = index * ORDER_STRIDE;
            let found = match snapshots.get(&up.selection) {
                Some(Ok(found)) => found,
                Some(Err(e)) => {
                    let group = up.group();
                    let msg = format!("Couldn't get the IP addresses for {group}: {e}");
                    tracing::warn!(upstream = %up.target.name, group = %group, "{msg}");
                    failed.push((order, UpstreamOutcome::failed(up, None, msg)));
                    continue;
                }
                None => {
                    let msg = format!("{} was not read", up.group());
                    failed.push((order, UpstreamOutcome::failed(up, None, msg)));
                    continue;
                }
            };
            let Some(services) = &up.services else {
                jobs.push(Job {
                    order,
                    spec: up.clone(),
                    template: None,
                    found: Arc::new(found.clone()),
                });
                continue;
            };
            let (specs, listing) = self.expand_template(up, services, found).await;
            for (i, (spec, found)) in specs.into_iter().enumerate() {
                jobs.push(Job {
                    order: order + 1 + i.min(ORDER_STRIDE - 2),
                    spec,
                    template: Some(up.target.name.clone()),
                    found: Arc::new(found),
                });
            }
            if let Err(msg) = listing {
                // The services found are still synced; only the emptying of vanished
                // ones waits for a listing that works.
                tracing::warn!(upstream = %up.target.name, target = up.sink.kind(), "{msg}");
                failed.push((order, UpstreamOutcome::failed(up, None, msg)));
            }
        }
        (jobs, failed)
    }

    /// The services of one template, each with what it found, and whether the target's
    /// backends could be listed (without a listing, vanished services are not emptied).
    async fn expand_template(
        &self,
        up: &UpstreamSpec,
        cfg: &ServicesConfig,
        found: &Found,
    ) -> (Vec<(UpstreamSpec, Found)>, Result<(), String>) {
        let prefix = &up.target.name;
        let (services, unported) = services::split(found, prefix, cfg);
        if let Some(first) = unported.first() {
            tracing::warn!(
                upstream = %prefix,
                skipped = unported.len(),
                "{} instance(s) have a service name tag but no usable service; first: {}: {}",
                unported.len(),
                first.vm_id,
                first.reason
            );
        }
        let mut out: Vec<(UpstreamSpec, Found)> = Vec::with_capacity(services.len());
        let mut seen = std::collections::BTreeSet::new();
        for svc in services {
            seen.insert(svc.backend.clone());
            let spec = up.service(&svc.backend, svc.port, cfg);
            out.push((spec, svc.found));
        }
        // Backends of services that are gone: emptied into maintenance, never deleted.
        let listing = up
            .sink
            .list_upstreams(&format!("{prefix}{}", cfg.separator))
            .await
            .map_err(|e| {
                format!(
                    "Couldn't list the backends of {prefix} in {} (services that are gone \
                     are emptied once it works): {}",
                    target_name(up.sink.kind()),
                    e.message
                )
            });
        // A complete read that found other instances proves a vanished service is gone;
        // an empty read proves nothing (the guard then holds its removals), nor does one
        // in which a set's read was judged failed (its services are not known).
        let proven =
            (!found.sets.is_empty() || !found.vms.is_empty()) && found.held().next().is_none();
        let (listed, listing) = match listing {
            Ok(listed) => (listed.unwrap_or_default(), Ok(())),
            Err(msg) => (Vec::new(), Err(msg)),
        };
        for backend in listed {
            if seen.contains(&backend)
                || !services::is_service_backend(&backend, prefix, &cfg.separator)
            {
                continue;
            }
            let gone = Found {
                exact: proven,
                ..Found::default()
            };
            out.push((up.service(&backend, 0, cfg), gone));
        }
        out.sort_by(|a, b| a.0.target.name.cmp(&b.0.target.name));
        (out, listing)
    }

    /// Applies every prepared plan that has writes; returns the reports by job index.
    async fn apply_all(
        &self,
        prepared: &[(usize, Prepared)],
        limit: &Arc<tokio::sync::Semaphore>,
    ) -> Vec<(usize, ApplyReport)> {
        // Group the writing jobs by target (the same `Arc`), keeping their order.
        let mut groups: Vec<(Arc<dyn Target>, Vec<Write>)> = Vec::new();
        for (index, p) in prepared {
            let Some(plan) = p.outcome.plan.clone().filter(|_| p.write) else {
                continue;
            };
            let sink = Arc::clone(&p.spec.sink);
            let item = (*index, p.spec.target.clone(), plan);
            match groups.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &sink)) {
                Some((_, items)) => items.push(item),
                None => groups.push((sink, vec![item])),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (sink, items) in groups {
            if sink.batches() {
                let limit = Arc::clone(limit);
                let gate = self.gate.clone();
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let (indexes, batch): (Vec<usize>, Vec<(UpstreamRef, Plan)>) =
                        items.into_iter().map(|(i, u, p)| (i, (u, p))).unzip();
                    if !gate_open(gate.as_ref()) {
                        let stopped = indexes.into_iter().map(|i| (i, failed_report(NOT_LEADER)));
                        return stopped.collect();
                    }
                    let mut reports = sink.apply_batch(&batch).await;
                    reports.resize_with(indexes.len(), || {
                        failed_report("the target gave no report for this upstream")
                    });
                    indexes.into_iter().zip(reports).collect::<Vec<_>>()
                });
            } else {
                for (index, upstream, plan) in items {
                    let sink = Arc::clone(&sink);
                    let limit = Arc::clone(limit);
                    let gate = self.gate.clone();
                    tasks.spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        if !gate_open(gate.as_ref()) {
                            return vec![(index, failed_report(NOT_LEADER))];
                        }
                        vec![(index, sink.apply(&upstream, &plan).await)]
                    });
                }
            }
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(reports) => out.extend(reports),
                Err(e) => tracing::error!(error = %e, "A target's writes ended abnormally."),
            }
        }
        out
    }
}

/// Why writes were not made when the gate is closed.
const NOT_LEADER: &str = "not written: this replica is not the leader";

/// True when there is no gate or it is open.
fn gate_open(gate: Option<&WriteGate>) -> bool {
    gate.is_none_or(|g| g())
}

/// The report of writes that were not attempted, for a transient reason.
fn failed_report(message: &str) -> ApplyReport {
    ApplyReport {
        errors: vec![TargetError {
            message: message.to_string(),
            permanence: Permanence::Transient,
        }],
        ..ApplyReport::default()
    }
}

/// One upstream's writes: its job index, the upstream and the plan.
type Write = (usize, UpstreamRef, Plan);

/// Orders outcomes: a configured upstream's position times this, its services after it.
const ORDER_STRIDE: usize = 1 << 20;

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

impl UpstreamSpec {
    /// The upstream of one service of this template.
    fn service(&self, backend: &str, port: u16, cfg: &ServicesConfig) -> UpstreamSpec {
        UpstreamSpec {
            target: UpstreamRef {
                name: backend.to_string(),
                kind: self.target.kind,
                create: true,
            },
            sink: Arc::clone(&self.sink),
            selection: self.selection.clone(),
            port: (port != 0).then_some(port),
            port_tag: Some(cfg.instance_port_tag.clone()),
            register_when: self.register_when,
            params: self.params,
            drain_timeout: self.drain_timeout,
            services: None,
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

fn count_states(servers: &[ObservedServer]) -> (usize, usize) {
    let draining = servers
        .iter()
        .filter(|o| o.state == ServerState::Draining)
        .count();
    (servers.len() - draining, draining)
}

/// One upstream to sync this cycle: a configured one, or one service of a template.
struct Job {
    /// Where its outcome goes in the report.
    order: usize,
    spec: UpstreamSpec,
    /// The template it comes from, for a service.
    template: Option<String>,
    found: Arc<Found>,
}

/// An upstream observed and planned, before its writes.
struct Prepared {
    order: usize,
    spec: UpstreamSpec,
    outcome: UpstreamOutcome,
    /// True when the plan has something to write and this replica may write it.
    write: bool,
    /// The servers observed (for the counts after the writes).
    observed: Vec<ObservedServer>,
    /// When the plan was made (drain clocks start then).
    now: Instant,
}

/// Observes the target, plans against what was found, and holds removals the guard
/// refuses. Writes nothing.
async fn prepare(job: Job, drains: &DrainBook, gate: Option<&WriteGate>) -> Prepared {
    let Job {
        order,
        spec: up,
        template,
        found,
    } = job;
    let mut out = UpstreamOutcome::new(&up, template);
    let now = Instant::now();
    let prepared = |out, write, observed| Prepared {
        order,
        spec: up.clone(),
        outcome: out,
        write,
        observed,
        now,
    };
    let observed = match up.sink.observe(&up.target).await {
        Ok(o) => o,
        Err(e) => {
            let msg = format!(
                "Couldn't update {} servers in {}: {}",
                kind_word(up.target.kind),
                target_name(up.sink.kind()),
                e.message
            );
            tracing::warn!(upstream = %up.target.name, target = up.sink.kind(), "{msg}");
            out.error = Some(msg);
            return prepared(out, false, Vec::new());
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
    let elapsed = drains.elapsed(&up.target.name, &observed, now);
    let drain = Drain {
        timeout: up.drain_timeout,
        elapsed: &elapsed,
    };
    let (desired, rest) = plan::except(&desired, &observed, &held.servers);
    let mut p = plan::plan(&desired, &rest, &drain);
    for s in found.held() {
        let Some(h) = &s.held else { continue };
        let hold = Hold::ReadFailed {
            set: s.key.to_string(),
            fault: h.fault.clone(),
        };
        tracing::warn!(
            upstream = %up.target.name,
            group = %out.group,
            scale_set = %s.key,
            "Holding removals for upstream {}: {hold}{}.",
            up.target.name,
            if h.members_known {
                ""
            } else {
                "; no read of the set has been used since vmss-sync started, so which servers are its is not known and no server leaves the upstream"
            }
        );
        out.hold.get_or_insert(hold);
    }
    if held.unknown {
        p = plan::without_leaving(p);
    }
    if let Some(hold) = plan::guard(&p, &rest, found.found(), found.capacity()) {
        tracing::warn!(
            upstream = %up.target.name,
            group = %out.group,
            "Holding removals for upstream {}: {hold}.",
            up.target.name
        );
        out.hold = Some(hold);
        p = plan::without_removals(p);
    }
    let write = !p.is_empty() && gate_open(gate);
    if !p.is_empty() && !write {
        out.error = Some(NOT_LEADER.to_string());
    }
    out.plan = Some(p);
    prepared(out, write, observed)
}

/// Completes an outcome with what the writes did (None: nothing was written), starts
/// the drain clocks of servers set draining, and logs the changes and errors.
fn finish(p: Prepared, report: Option<ApplyReport>, drains: &DrainBook) -> UpstreamOutcome {
    let Prepared {
        spec: up,
        mut outcome,
        observed,
        now,
        ..
    } = p;
    let Some(report) = report else {
        return outcome;
    };
    let Some(plan) = &outcome.plan else {
        return outcome;
    };
    let drained: Vec<String> = plan
        .drains()
        .filter(|u| report.drained.contains(&u.server))
        .map(|u| u.server.clone())
        .collect();
    drains.started(&up.target.name, &drained, now);
    let restored: Vec<String> = plan
        .update
        .iter()
        .filter(|u| u.was == ServerState::Draining && u.state == ServerState::Active)
        .filter(|u| report.updated.contains(&u.server))
        .map(|u| u.server.clone())
        .collect();
    drains.cancelled(&up.target.name, &restored);
    (outcome.active, outcome.draining) = count_states(&plan::simulate(&observed, plan));
    let kind = up.sink.kind();
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
            group = %outcome.group,
            target = kind,
            added = ?report.added,
            removed = ?report.removed,
            updated = ?report.updated,
            drained = ?report.drained,
            "Updated {} servers of {} for group {} ; Added: {}, Removed: {}, Updated: {}{draining}",
            kind_word(up.target.kind),
            up.target.name,
            outcome.group,
            list(&report.added),
            list(&report.removed),
            list(&report.updated),
        );
    }
    for e in &report.errors {
        tracing::warn!(
            upstream = %up.target.name,
            target = kind,
            "Couldn't update {} servers in {}: {}",
            kind_word(up.target.kind),
            target_name(kind),
            e.message
        );
    }
    if !report.errors.is_empty() {
        outcome.error = Some(
            report
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    outcome.report = Some(report);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(state: ServerState) -> ObservedServer {
        ObservedServer {
            id: 1,
            server: "10.0.0.1:80".into(),
            params: None,
            state,
        }
    }

    #[test]
    fn a_cancelled_drain_forgets_its_clock() {
        let book = DrainBook::default();
        let t0 = Instant::now();
        let s = vec!["10.0.0.1:80".to_string()];
        book.started("web", &s, t0);
        let later = t0 + Duration::from_secs(20);
        let draining = [server(ServerState::Draining)];
        assert_eq!(
            book.elapsed("web", &draining, later)["10.0.0.1:80"],
            Duration::from_secs(20)
        );
        book.cancelled("web", &s);
        // Drained again later (by a real leave): a whole drain_timeout from then.
        book.started("web", &s, later);
        assert_eq!(
            book.elapsed("web", &draining, later + Duration::from_secs(1))["10.0.0.1:80"],
            Duration::from_secs(1)
        );
    }
}
