//! Prometheus metrics, served at `/metrics` by [`crate::admin`].
//!
//! Everything is recorded from what the daemon already has after a cycle: the
//! [`CycleReport`], the ARM client's [`ArmStats`] (cumulative counters, turned into
//! Prometheus counters by deltas), config reloads, token fetches and the leader elector.
//! Label values are upstream names, kinds, target kinds, ARM operation names, HTTP status
//! codes and fixed words: never a URL, header, token or secret.
//!
//! `/metrics` answers in the classic text format 0.0.4 unless the scraper asks for
//! OpenMetrics ([`Format::negotiate`]); prometheus-client writes OpenMetrics and
//! [`classic`] converts. The standard `process_*` metrics come from [`process`].
//! Every counter, and every gauge whose value is known, has its series from the first
//! scrape: fixed label values are created at 0 in [`Metrics::new`], an upstream's in
//! [`Metrics::declare_upstreams`].
//!
//! The full list of names and labels is in `docs/observability.md`.

pub mod classic;
pub mod events;
pub mod process;

use crate::azure::ArmStats;
use crate::model::UpstreamKind;
use crate::reconcile::{CycleReport, Mode, UpstreamOutcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The two text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format 0.0.4 (the default).
    Classic,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => classic::CONTENT_TYPE,
            Format::OpenMetrics => CONTENT_TYPE,
        }
    }

    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality above 0 and at least that of
    /// `text/plain` (or a wildcard); the classic format otherwise, and without the header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let (mut om, mut other) = (0.0_f64, 0.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f64>().ok())
                .filter(|q| q.is_finite())
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => om = om.max(q),
                "text/plain" | "text/*" | "*/*" => other = other.max(q),
                _ => {}
            }
        }
        if om > 0.0 && om >= other {
            Format::OpenMetrics
        } else {
            Format::Classic
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    kind: &'static str,
    target: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct ConditionLabels {
    upstream: String,
    kind: &'static str,
    target: &'static str,
    condition: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    upstream: String,
    kind: &'static str,
    target: &'static str,
    change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    upstream: String,
    kind: &'static str,
    target: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    upstream: String,
    kind: &'static str,
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    operation: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    service: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The Blob requests `leader/blob.rs` counts (the actions of its `send` calls).
const LEASE_ACTIONS: [&str; 7] = [
    "acquire",
    "renew",
    "release",
    "break",
    "properties",
    "create-container",
    "create-blob",
];

/// How a lease request ended, for [`Metrics::lease_request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    /// The Blob service did what was asked.
    Ok,
    /// The Blob service refused because of the lease's state (held by another replica,
    /// lost, broken).
    Conflict,
    /// No definite answer: transport failure, timeout, authentication or a server error.
    Error,
}

impl LeaseResult {
    fn as_str(self) -> &'static str {
        match self {
            LeaseResult::Ok => "ok",
            LeaseResult::Conflict => "conflict",
            LeaseResult::Error => "error",
        }
    }
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    upstream_servers: Family<ServerLabels, Gauge>,
    desired_servers: Family<UpstreamLabels, Gauge>,
    removals_held: Family<UpstreamLabels, Gauge>,
    server_changes: Family<ChangeLabels, Counter>,
    write_failures: Family<TargetLabels, Counter>,
    reconciles: Family<ReconcileLabels, Counter>,
    last_success: Family<UpstreamLabels, FloatGauge>,
    upstream_duration: Family<UpstreamLabels, FloatGauge>,
    cycle_duration: Histogram,
    last_cycle: FloatGauge,
    arm_requests: Family<OperationLabels, Counter>,
    arm_responses: Family<CodeLabels, Counter>,
    arm_retries: Counter,
    arm_throttled: Counter,
    arm_throttle_wait: FloatCounter,
    arm_backoff_wait: FloatCounter,
    arm_transport_errors: Counter,
    arm_timeouts: Counter,
    arm_token_refreshes: Counter,
    arm_remaining_reads: Gauge,
    token_fetches: Family<TokenLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    leader: Gauge,
    leadership_changes: Family<RoleLabels, Counter>,
    lease_requests: Family<LeaseLabels, Counter>,
    target_condition: Family<ConditionLabels, Gauge>,
    /// Every `target_condition` series (removed with their upstream).
    conditions_on: Mutex<std::collections::BTreeSet<ConditionLabels>>,
    /// Event-driven reconciles (`metrics/events.rs`).
    pub events: events::EventMetrics,
    /// The ARM statistics seen last (to turn cumulative stats into counter increments).
    arm_last: Mutex<ArmStats>,
    /// (upstream, kind, target) of every upstream with gauges.
    /// Upstreams with gauges: (name, kind, target) and the template a service comes from.
    known: Mutex<BTreeMap<UpstreamKey, Option<String>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn counter_value(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Servers the upstream holds after the cycle, as (active, draining), when the target
/// could be read.
fn servers_after(o: &UpstreamOutcome) -> Option<(usize, usize)> {
    o.plan.as_ref()?;
    Some((o.active, o.draining))
}

impl Metrics {
    /// Registers every metric under the `vmss_sync_` prefix, and the `process_*` metrics.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("vmss_sync");
        let m = Metrics {
            upstream_servers: Family::default(),
            desired_servers: Family::default(),
            removals_held: Family::default(),
            server_changes: Family::default(),
            write_failures: Family::default(),
            reconciles: Family::default(),
            last_success: Family::default(),
            upstream_duration: Family::default(),
            cycle_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            last_cycle: FloatGauge::default(),
            arm_requests: Family::default(),
            arm_responses: Family::default(),
            arm_retries: Counter::default(),
            arm_throttled: Counter::default(),
            arm_throttle_wait: FloatCounter::default(),
            arm_backoff_wait: FloatCounter::default(),
            arm_transport_errors: Counter::default(),
            arm_timeouts: Counter::default(),
            arm_token_refreshes: Counter::default(),
            arm_remaining_reads: Gauge::default(),
            token_fetches: Family::default(),
            config_reloads: Family::default(),
            leader: Gauge::default(),
            leadership_changes: Family::default(),
            lease_requests: Family::default(),
            target_condition: Family::default(),
            conditions_on: Mutex::default(),
            events: events::EventMetrics::default(),
            arm_last: Mutex::new(ArmStats::default()),
            known: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "vmss-sync version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        registry.register(
            "upstream_servers",
            "Servers the upstream holds after the last reconcile, by state",
            m.upstream_servers.clone(),
        );
        registry.register(
            "upstream_desired_servers",
            "Servers the scale set calls for at the last reconcile",
            m.desired_servers.clone(),
        );
        registry.register(
            "upstream_removals_held",
            "1 while removals are held back because the scale set's capacity disagrees",
            m.removals_held.clone(),
        );
        registry.register(
            "target_condition",
            "1 while a condition holds an upstream's target back (unusable: it failed its \
             startup check, checked again every cycle; hub_full: the Route Server refused a \
             peering because it is full; max_peerings: max_peerings is reached)",
            m.target_condition.clone(),
        );
        registry.register(
            "server_changes",
            "Servers added, removed, updated and set draining in targets",
            m.server_changes.clone(),
        );
        registry.register(
            "target_write_failures",
            "Writes to a target that failed",
            m.write_failures.clone(),
        );
        registry.register(
            "upstream_reconciles",
            "Reconciles of an upstream by mode (apply, dry_run) and result (ok, held, failed)",
            m.reconciles.clone(),
        );
        registry.register_with_unit(
            "upstream_reconcile_duration",
            "Time from the start of the last cycle (discovery included) to the end of the upstream's writes",
            Unit::Seconds,
            m.upstream_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_last_success_timestamp",
            "Unix time of the last reconcile of the upstream that succeeded",
            Unit::Seconds,
            m.last_success.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Wall time of a reconcile cycle (every upstream, concurrently)",
            Unit::Seconds,
            m.cycle_duration.clone(),
        );
        registry.register_with_unit(
            "last_cycle_timestamp",
            "Unix time the last reconcile cycle finished",
            Unit::Seconds,
            m.last_cycle.clone(),
        );
        registry.register(
            "arm_requests",
            "ARM requests sent (first attempts, retries and pages) by operation",
            m.arm_requests.clone(),
        );
        registry.register(
            "arm_responses",
            "ARM responses by operation and HTTP status code",
            m.arm_responses.clone(),
        );
        registry.register("arm_retries", "ARM request retries", m.arm_retries.clone());
        registry.register(
            "arm_throttled",
            "ARM 429 and 503 answers that were waited out",
            m.arm_throttled.clone(),
        );
        registry.register_with_unit(
            "arm_throttle_wait",
            "Time spent waiting on ARM Retry-After headers",
            Unit::Seconds,
            m.arm_throttle_wait.clone(),
        );
        registry.register_with_unit(
            "arm_backoff_wait",
            "Time spent in exponential backoff between ARM retries",
            Unit::Seconds,
            m.arm_backoff_wait.clone(),
        );
        registry.register(
            "arm_transport_errors",
            "ARM requests that got no HTTP answer",
            m.arm_transport_errors.clone(),
        );
        registry.register(
            "arm_timeouts",
            "ARM requests that timed out",
            m.arm_timeouts.clone(),
        );
        registry.register(
            "arm_token_refreshes",
            "ARM tokens fetched again after a 401",
            m.arm_token_refreshes.clone(),
        );
        registry.register(
            "arm_remaining_subscription_reads",
            "Last x-ms-ratelimit-remaining-subscription-reads seen",
            m.arm_remaining_reads.clone(),
        );
        registry.register(
            "token_fetches",
            "Access tokens fetched from the credential chain (cache misses and refreshes)",
            m.token_fetches.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads (SIGHUP) by result",
            m.config_reloads.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica may write to targets (the leader, or the only replica)",
            m.leader.clone(),
        );
        registry.register(
            "leadership_changes",
            "Times this replica became leader or standby",
            m.leadership_changes.clone(),
        );
        registry.register(
            "lease_requests",
            "Blob lease requests by action and result (ok, conflict, error)",
            m.lease_requests.clone(),
        );
        m.events.register(registry);
        let m = Metrics {
            registry: root,
            ..m
        };
        m.create_fixed_series();
        m
    }

    /// Creates at 0 the series whose label values are fixed words, so that they exist
    /// from the first scrape (`rate()` and `absent()` need them before the first event).
    fn create_fixed_series(&self) {
        for result in ["ok", "failed"] {
            self.config_reloads
                .get_or_create(&ResultLabels { result })
                .inc_by(0);
        }
        for role in ["leader", "standby"] {
            self.leadership_changes
                .get_or_create(&RoleLabels { role })
                .inc_by(0);
        }
        for action in LEASE_ACTIONS {
            for result in [LeaseResult::Ok, LeaseResult::Conflict, LeaseResult::Error] {
                self.lease_requests
                    .get_or_create(&LeaseLabels {
                        action,
                        result: result.as_str(),
                    })
                    .inc_by(0);
            }
        }
        for service in ["arm", "storage"] {
            for result in ["ok", "error"] {
                self.token_fetches
                    .get_or_create(&TokenLabels { service, result })
                    .inc_by(0);
            }
        }
    }

    /// Creates an upstream's counters at 0 (changes, write failures, reconciles by mode
    /// and result) and its hold gauge (0), for upstreams given as (name, kind, target
    /// kind). The daemon declares its configured upstreams at start and after a reload;
    /// a template's services are declared by the cycle that finds them.
    pub fn declare_upstreams<'a>(
        &self,
        upstreams: impl IntoIterator<Item = (&'a str, UpstreamKind, &'static str)>,
    ) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for (name, kind, target) in upstreams {
            known
                .entry((name.to_string(), kind.as_str(), target))
                .or_insert(None);
            self.declare(name, kind.as_str(), target);
        }
    }

    fn declare(&self, upstream: &str, kind: &'static str, target: &'static str) {
        for change in ["added", "removed", "updated", "drained"] {
            self.server_changes
                .get_or_create(&ChangeLabels {
                    upstream: upstream.to_string(),
                    kind,
                    target,
                    change,
                })
                .inc_by(0);
        }
        self.write_failures
            .get_or_create(&TargetLabels {
                upstream: upstream.to_string(),
                kind,
                target,
            })
            .inc_by(0);
        for mode in ["apply", "dry_run"] {
            for result in ["ok", "held", "failed"] {
                self.reconciles
                    .get_or_create(&ReconcileLabels {
                        upstream: upstream.to_string(),
                        kind,
                        mode,
                        result,
                    })
                    .inc_by(0);
            }
        }
        let up = UpstreamLabels {
            upstream: upstream.to_string(),
            kind,
        };
        self.removals_held.get_or_create(&up).get();
        self.last_success.get_or_create(&up).get();
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The metrics in `format`.
    pub fn encode_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.encode(),
            Format::Classic => classic::from_openmetrics(&self.encode()),
        }
    }

    /// Records one cycle.
    pub fn record_cycle(&self, report: &CycleReport, mode: Mode) {
        let now = unix_now();
        let mode_word = match mode {
            Mode::Apply => "apply",
            Mode::DryRun => "dry_run",
        };
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for o in &report.outcomes {
            let target = o.target;
            let first = known
                .insert(
                    (o.upstream.clone(), o.kind.as_str(), target),
                    o.template.clone(),
                )
                .is_none();
            if first {
                self.declare(&o.upstream, o.kind.as_str(), target);
            }
            let up = UpstreamLabels {
                upstream: o.upstream.clone(),
                kind: o.kind.as_str(),
            };
            if let Some((active, draining)) = servers_after(o) {
                for (state, n) in [("active", active), ("draining", draining)] {
                    self.upstream_servers
                        .get_or_create(&ServerLabels {
                            upstream: o.upstream.clone(),
                            kind: o.kind.as_str(),
                            target,
                            state,
                        })
                        .set(gauge_value(n));
                }
                self.desired_servers
                    .get_or_create(&up)
                    .set(gauge_value(o.desired));
                self.removals_held
                    .get_or_create(&up)
                    .set(i64::from(o.hold.is_some()));
            }
            if let Some(r) = &o.report {
                for (change, n) in [
                    ("added", r.added.len()),
                    ("removed", r.removed.len()),
                    ("updated", r.updated.len()),
                    ("drained", r.drained.len()),
                ] {
                    self.server_changes
                        .get_or_create(&ChangeLabels {
                            upstream: o.upstream.clone(),
                            kind: o.kind.as_str(),
                            target,
                            change,
                        })
                        .inc_by(counter_value(n));
                }
                self.write_failures
                    .get_or_create(&TargetLabels {
                        upstream: o.upstream.clone(),
                        kind: o.kind.as_str(),
                        target,
                    })
                    .inc_by(counter_value(r.errors.len()));
            }
            self.record_conditions(o);
            let result = if o.error.is_some() {
                "failed"
            } else if o.hold.is_some() {
                "held"
            } else {
                "ok"
            };
            self.reconciles
                .get_or_create(&ReconcileLabels {
                    upstream: o.upstream.clone(),
                    kind: o.kind.as_str(),
                    mode: mode_word,
                    result,
                })
                .inc();
            self.upstream_duration
                .get_or_create(&up)
                .set(o.duration.as_secs_f64());
            if o.error.is_none() {
                self.last_success.get_or_create(&up).set(now);
            }
        }
        self.cycle_duration.observe(report.duration.as_secs_f64());
        self.last_cycle.set(now);
    }

    /// Sets the `target_condition` series of one upstream: 1 for the conditions of this
    /// cycle, 0 for those that held before and no longer do.
    fn record_conditions(&self, o: &UpstreamOutcome) {
        let mut on = self.conditions_on.lock().unwrap_or_else(|e| e.into_inner());
        let label = |condition| ConditionLabels {
            upstream: o.upstream.clone(),
            kind: o.kind.as_str(),
            target: o.target,
            condition,
        };
        for l in on.iter().filter(|l| {
            l.upstream == o.upstream
                && l.kind == o.kind.as_str()
                && l.target == o.target
                && !o.conditions.contains(&l.condition)
        }) {
            self.target_condition.get_or_create(l).set(0);
        }
        for c in &o.conditions {
            let l = label(c);
            self.target_condition.get_or_create(&l).set(1);
            on.insert(l);
        }
    }

    /// Adds what the ARM client did since the last call (its statistics are cumulative).
    pub fn record_arm(&self, stats: &ArmStats) {
        let mut last = self.arm_last.lock().unwrap_or_else(|e| e.into_inner());
        let delta = |now: u64, before: u64| now.saturating_sub(before);
        for (op, n) in &stats.by_operation {
            let before = last.by_operation.get(op).copied().unwrap_or(0);
            self.arm_requests
                .get_or_create(&OperationLabels {
                    operation: op.clone(),
                })
                .inc_by(delta(*n, before));
        }
        for ((operation, code), n) in &stats.by_operation_status {
            let before = last
                .by_operation_status
                .get(&(operation.clone(), *code))
                .copied()
                .unwrap_or(0);
            self.arm_responses
                .get_or_create(&CodeLabels {
                    operation: operation.clone(),
                    code: code.to_string(),
                })
                .inc_by(delta(*n, before));
        }
        self.arm_retries.inc_by(delta(stats.retries, last.retries));
        self.arm_throttled
            .inc_by(delta(stats.throttled_waits, last.throttled_waits));
        self.arm_throttle_wait.inc_by(
            stats
                .retry_after_wait
                .saturating_sub(last.retry_after_wait)
                .as_secs_f64(),
        );
        self.arm_backoff_wait.inc_by(
            stats
                .backoff_wait
                .saturating_sub(last.backoff_wait)
                .as_secs_f64(),
        );
        self.arm_transport_errors
            .inc_by(delta(stats.transport_errors, last.transport_errors));
        self.arm_timeouts
            .inc_by(delta(stats.timeouts, last.timeouts));
        self.arm_token_refreshes
            .inc_by(delta(stats.token_refreshes, last.token_refreshes));
        if let Some(n) = stats.remaining_subscription_reads {
            self.arm_remaining_reads
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        *last = stats.clone();
    }

    /// A new ARM client replaced the old one (after a reload): its statistics start at 0.
    pub fn arm_client_replaced(&self) {
        *self.arm_last.lock().unwrap_or_else(|e| e.into_inner()) = ArmStats::default();
    }

    /// After a reload: drops the gauges of upstreams that are no longer configured, and of
    /// services whose template is no longer configured (their counters stay, as counters
    /// do).
    pub fn retain_upstreams(&self, keep: &[(String, UpstreamKind)]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|(name, kind, target), template| {
            // A service's backend stays while its template is configured.
            let configured = template.as_deref().unwrap_or(name);
            if keep
                .iter()
                .any(|(n, k)| n == configured && k.as_str() == *kind)
            {
                return true;
            }
            let up = UpstreamLabels {
                upstream: name.clone(),
                kind,
            };
            for state in ["active", "draining"] {
                self.upstream_servers.remove(&ServerLabels {
                    upstream: name.clone(),
                    kind,
                    target,
                    state,
                });
            }
            self.desired_servers.remove(&up);
            self.removals_held.remove(&up);
            self.last_success.remove(&up);
            self.upstream_duration.remove(&up);
            let mut on = self.conditions_on.lock().unwrap_or_else(|e| e.into_inner());
            on.retain(|l| {
                let gone = l.upstream == *name && l.kind == *kind && l.target == *target;
                if gone {
                    self.target_condition.remove(l);
                }
                !gone
            });
            false
        });
    }

    /// Records a configuration reload.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records that this replica became leader (`true`) or standby.
    pub fn leadership_change(&self, leader: bool) {
        self.set_leader(leader);
        self.leadership_changes
            .get_or_create(&RoleLabels {
                role: if leader { "leader" } else { "standby" },
            })
            .inc();
    }

    /// Records one Blob lease request.
    pub fn lease_request(&self, action: &'static str, result: LeaseResult) {
        self.lease_requests
            .get_or_create(&LeaseLabels {
                action,
                result: result.as_str(),
            })
            .inc();
    }

    /// Counts one token fetch of `service` (`vmss_sync_token_fetches_total`).
    pub fn token_fetch(&self, service: &'static str, ok: bool) {
        self.token_fetches
            .get_or_create(&TokenLabels {
                service,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// Seconds as a float, for JSON bodies and logs.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// An upstream's gauges: (name, kind, target).
type UpstreamKey = (String, &'static str, &'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::target::{ApplyReport, Permanence, TargetError};

    fn outcome(name: &str, report: Option<ApplyReport>, error: Option<&str>) -> UpstreamOutcome {
        UpstreamOutcome {
            upstream: name.into(),
            template: None,
            target: "nginx-plus",
            kind: UpstreamKind::Http,
            group: "set".into(),
            plan: error.is_none().then(Plan::default),
            hold: None,
            report,
            error: error.map(str::to_string),
            conditions: Vec::new(),
            observed: 2,
            desired: 3,
            active: 3,
            draining: 1,
            duration: Duration::from_millis(250),
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn target_conditions_are_1_while_they_hold_then_0_and_go_with_their_upstream() {
        let m = Metrics::new();
        let cycle = |conditions: Vec<&'static str>| CycleReport {
            outcomes: vec![UpstreamOutcome {
                conditions,
                ..outcome("web", None, Some("cannot be used"))
            }],
            duration: Duration::from_millis(5),
        };
        let series = "vmss_sync_target_condition{upstream=\"web\",kind=\"http\",target=\"nginx-plus\",condition=\"unusable\"}";
        m.record_cycle(&cycle(vec!["unusable"]), Mode::Apply);
        assert_eq!(
            line(&m.encode(), series),
            Some(format!("{series} 1").as_str())
        );
        m.record_cycle(&cycle(vec![]), Mode::Apply);
        assert_eq!(
            line(&m.encode(), series),
            Some(format!("{series} 0").as_str())
        );
        m.retain_upstreams(&[]);
        assert_eq!(line(&m.encode(), series), None);
    }

    #[test]
    fn a_cycle_moves_server_gauges_change_counters_and_last_success() {
        let m = Metrics::new();
        let report = CycleReport {
            outcomes: vec![
                outcome(
                    "web",
                    Some(ApplyReport {
                        added: vec!["10.0.0.3:80".into()],
                        errors: vec![TargetError {
                            message: "boom".into(),
                            permanence: Permanence::Transient,
                        }],
                        ..ApplyReport::default()
                    }),
                    None,
                ),
                outcome("api", None, Some("Couldn't get the IP addresses")),
            ],
            duration: Duration::from_millis(120),
        };
        m.record_cycle(&report, Mode::Apply);
        let text = m.encode();
        assert!(line(&text, "vmss_sync_upstream_servers{upstream=\"web\",kind=\"http\",target=\"nginx-plus\",state=\"active\"} 3").is_some(), "{text}");
        assert!(line(&text, "vmss_sync_upstream_servers{upstream=\"web\",kind=\"http\",target=\"nginx-plus\",state=\"draining\"} 1").is_some(), "{text}");
        assert!(
            line(&text, "vmss_sync_upstream_servers{upstream=\"api\"").is_none(),
            "{text}"
        );
        assert!(line(&text, "vmss_sync_server_changes_total{upstream=\"web\",kind=\"http\",target=\"nginx-plus\",change=\"added\"} 1").is_some(), "{text}");
        assert!(line(&text, "vmss_sync_target_write_failures_total{upstream=\"web\",kind=\"http\",target=\"nginx-plus\"} 1").is_some(), "{text}");
        assert!(line(&text, "vmss_sync_upstream_reconciles_total{upstream=\"api\",kind=\"http\",mode=\"apply\",result=\"failed\"} 1").is_some(), "{text}");
        assert!(
            line(
                &text,
                "vmss_sync_upstream_reconcile_duration_seconds{upstream=\"web\",kind=\"http\"} 0.25"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "vmss_sync_upstream_last_success_timestamp_seconds{upstream=\"web\""
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "vmss_sync_upstream_last_success_timestamp_seconds{upstream=\"api\",kind=\"http\"} 0"
            )
            .is_some(),
            "an upstream that never succeeded says 0: {text}"
        );
        assert!(
            line(&text, "vmss_sync_reconcile_duration_seconds_count 1").is_some(),
            "{text}"
        );
        assert!(
            line(&text, "vmss_sync_build_info{version=").is_some(),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn arm_statistics_become_counters_by_delta_and_restart_after_a_new_client() {
        let m = Metrics::new();
        let mut s = ArmStats::default();
        s.by_operation
            .insert("VirtualMachineScaleSets_Get".into(), 3);
        s.by_operation_status
            .insert(("VirtualMachineScaleSets_Get".into(), 200), 2);
        s.by_operation_status
            .insert(("VirtualMachineScaleSets_Get".into(), 429), 1);
        s.throttled_waits = 1;
        s.retry_after_wait = Duration::from_millis(1500);
        m.record_arm(&s);
        m.record_arm(&s);
        let text = m.encode();
        assert!(
            line(
                &text,
                "vmss_sync_arm_requests_total{operation=\"VirtualMachineScaleSets_Get\"} 3"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "vmss_sync_arm_responses_total{operation=\"VirtualMachineScaleSets_Get\",code=\"429\"} 1"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(&text, "vmss_sync_arm_throttle_wait_seconds_total 1.5").is_some(),
            "{text}"
        );
        m.arm_client_replaced();
        let mut fresh = ArmStats::default();
        fresh
            .by_operation
            .insert("VirtualMachineScaleSets_Get".into(), 1);
        m.record_arm(&fresh);
        let text = m.encode();
        assert!(
            line(
                &text,
                "vmss_sync_arm_requests_total{operation=\"VirtualMachineScaleSets_Get\"} 4"
            )
            .is_some(),
            "{text}"
        );
    }

    #[test]
    fn a_reload_drops_the_gauges_of_upstreams_no_longer_configured() {
        let m = Metrics::new();
        let service = |name: &str, template: &str| UpstreamOutcome {
            template: Some(template.into()),
            ..outcome(name, None, None)
        };
        let report = CycleReport {
            outcomes: vec![
                outcome("web", None, None),
                outcome("gone", None, None),
                service("azure-api-80-eastus", "azure"),
                service("old-api-80-eastus", "old"),
            ],
            duration: Duration::from_millis(1),
        };
        m.record_cycle(&report, Mode::DryRun);
        m.retain_upstreams(&[
            ("web".to_string(), UpstreamKind::Http),
            ("azure".to_string(), UpstreamKind::Http),
        ]);
        let text = m.encode();
        assert!(
            line(
                &text,
                "vmss_sync_upstream_servers{upstream=\"azure-api-80-eastus\""
            )
            .is_some(),
            "a service of a configured template keeps its gauges: {text}"
        );
        assert!(
            line(
                &text,
                "vmss_sync_upstream_servers{upstream=\"old-api-80-eastus\""
            )
            .is_none(),
            "{text}"
        );
        assert!(
            line(&text, "vmss_sync_upstream_servers{upstream=\"web\"").is_some(),
            "{text}"
        );
        assert!(
            line(&text, "vmss_sync_upstream_servers{upstream=\"gone\"").is_none(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "vmss_sync_upstream_last_success_timestamp_seconds{upstream=\"gone\""
            )
            .is_none(),
            "{text}"
        );
        assert!(line(&text, "vmss_sync_upstream_reconciles_total{upstream=\"gone\",kind=\"http\",mode=\"dry_run\",result=\"ok\"} 1").is_some(), "{text}");
    }

    #[test]
    fn reloads_leadership_and_lease_requests_are_counted() {
        let m = Metrics::new();
        m.config_reload(true);
        m.config_reload(false);
        m.config_reload(false);
        m.leadership_change(true);
        m.lease_request("acquire", LeaseResult::Conflict);
        let text = m.encode();
        assert!(
            line(&text, "vmss_sync_config_reloads_total{result=\"ok\"} 1").is_some(),
            "{text}"
        );
        assert!(
            line(&text, "vmss_sync_config_reloads_total{result=\"failed\"} 2").is_some(),
            "{text}"
        );
        assert!(line(&text, "vmss_sync_leader 1").is_some(), "{text}");
        assert!(
            line(
                &text,
                "vmss_sync_leadership_changes_total{role=\"leader\"} 1"
            )
            .is_some(),
            "{text}"
        );
        assert!(
            line(
                &text,
                "vmss_sync_lease_requests_total{action=\"acquire\",result=\"conflict\"} 1"
            )
            .is_some(),
            "{text}"
        );
    }

    #[test]
    fn accept_picks_openmetrics_only_when_the_scraper_prefers_it() {
        // Prometheus 2.42's header, and one that prefers the classic format.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"
            )),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Classic
        );
        for classic in [
            None,
            Some("*/*"),
            Some("text/plain"),
            Some("application/json"),
        ] {
            assert_eq!(Format::negotiate(classic), Format::Classic, "{classic:?}");
        }
        assert_eq!(
            Format::Classic.content_type(),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            Format::OpenMetrics.content_type(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }

    #[test]
    fn every_counter_exists_at_zero_before_any_event_and_a_declared_upstream_has_its_series() {
        let m = Metrics::new();
        m.declare_upstreams([("web", UpstreamKind::Http, "nginx-plus")]);
        let text = m.encode_as(Format::Classic);
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.strip_suffix(" counter"))
            .collect();
        assert!(families.len() >= 15, "{text}");
        for family in &families {
            // ARM requests and responses are labelled by ARM operation (and status): they
            // appear with the first request.
            // appear with the first request. The process's CPU time is what it is.
            if [
                "vmss_sync_arm_requests_total",
                "vmss_sync_arm_responses_total",
            ]
            .contains(family)
                || family.starts_with("process_")
            {
                continue;
            }
            assert!(
                text.lines().any(|l| l.starts_with(family)
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(0.0)),
                "{family} has no series at 0: {text}"
            );
        }
        for series in [
            "vmss_sync_server_changes_total{upstream=\"web\",kind=\"http\",target=\"nginx-plus\",change=\"removed\"} 0",
            "vmss_sync_target_write_failures_total{upstream=\"web\",kind=\"http\",target=\"nginx-plus\"} 0",
            "vmss_sync_upstream_reconciles_total{upstream=\"web\",kind=\"http\",mode=\"apply\",result=\"failed\"} 0",
            "vmss_sync_upstream_removals_held{upstream=\"web\",kind=\"http\"} 0",
            "vmss_sync_upstream_last_success_timestamp_seconds{upstream=\"web\",kind=\"http\"} 0",
            "vmss_sync_config_reloads_total{result=\"failed\"} 0",
            "vmss_sync_lease_requests_total{action=\"renew\",result=\"error\"} 0",
            "vmss_sync_leadership_changes_total{role=\"leader\"} 0",
            "vmss_sync_arm_throttled_total 0",
        ] {
            assert!(line(&text, series).is_some(), "{series}: {text}");
        }
        if cfg!(target_os = "linux") {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_virtual_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(line(&text, name).is_some(), "{name}: {text}");
            }
        }
        // Declaring again (a reload) keeps what was counted.
        m.config_reload(true);
        m.declare_upstreams([("web", UpstreamKind::Http, "nginx-plus")]);
        assert!(line(
            &m.encode(),
            "vmss_sync_config_reloads_total{result=\"ok\"} 1"
        )
        .is_some());
    }
}
