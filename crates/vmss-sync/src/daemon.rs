//! The long-running loop: reconcile every `sync_interval` (with a little jitter), reload
//! the configuration on request, and stop cleanly.
//!
//! Signals are turned into [`Control`] messages by `main`; the loop itself is plain async
//! code so tests and the demo drive it through a channel.
//!
//! The daemon also serves `/metrics`, `/healthz` and `/readyz` ([`crate::admin`]) and, with
//! `leader_election`, runs an [`Elector`]: a cycle writes only while this replica holds the
//! lease (the reconciler also asks the gate before each upstream's writes); a standby runs
//! dry-run cycles, so it keeps discovering, and reconciles at once when it becomes leader.

use crate::admin::{AdminServer, ElectionProbe, Health};
use crate::azure::arm::{ArmClient, ArmOptions};
use crate::azure::auth::{cached, default_chain, AccessToken, AuthError, Env, TokenCredential};
use crate::config::{self, Config, LeaderElectionConfig, StorageAuth};
use crate::leader::blob::{BlobAuth, BlobLeaseClient};
use crate::leader::shared_key::SharedKey;
use crate::leader::{Elector, Timing};
use crate::metrics::Metrics;
use crate::model::UpstreamKind;
use crate::reconcile::{CycleReport, Mode, Reconciler, StartupProblem, UpstreamSpec, RECHECKED};
use crate::target::TargetError;
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The async runtime the daemon runs on (`run`, `once` and `plan` alike): one thread.
///
/// vmss-sync waits on ARM and on its targets; its own work is decoding ARM's pages and
/// comparing server lists (about a second of CPU per cycle at 100,000 instances, spread
/// over the cycle's reads). A second worker thread would decode two pages at once but
/// costs its own malloc arena: memory freed by one thread is not reused by the other,
/// and at 100,000 instances that was about a sixth of the daemon's resident memory
/// (`docs/benchmarks.md`). Blocking work (the NGINX file target's writes) still runs on
/// tokio's blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Timeout of every request to a target.
pub const TARGET_TIMEOUT: Duration = Duration::from_secs(10);

/// Timeout of every request to the event queue.
const QUEUE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the outside world can ask of a running daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the configuration file (SIGHUP).
    Reload,
    /// Finish the apply in flight and stop (SIGTERM, SIGINT).
    Shutdown,
}

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration file is invalid.
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    /// A client could not be built.
    #[error("{0}")]
    Build(String),
    /// The startup check found problems that need a change of configuration.
    #[error("{}", format_problems(.0))]
    Startup(Vec<StartupProblem>),
}

/// Formats startup problems one per line.
pub fn format_problems(problems: &[StartupProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("upstream {}: {}", p.upstream, p.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Builds the reconciler for a configuration: credential chain, ARM client, target.
pub fn build(cfg: &Config, env: &Env) -> Result<Reconciler, DaemonError> {
    build_with_metrics(cfg, env, None)
}

/// [`build`], counting the credential chain's token fetches in `metrics` when given.
pub fn build_with_metrics(
    cfg: &Config,
    env: &Env,
    metrics: Option<&Arc<Metrics>>,
) -> Result<Reconciler, DaemonError> {
    let http = crate::net::client_builder(cfg.resource_manager_ca_file.as_deref())
        .map_err(|e| DaemonError::Build(format!("resource_manager_ca_file: {e}")))?
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| DaemonError::Build(format!("cannot build the HTTP client: {e}")))?;
    let chain: Arc<dyn TokenCredential> = Arc::new(default_chain(env, http.clone()));
    let credential = match metrics {
        Some(m) => cached(Arc::new(CountingCredential::new(
            chain,
            "arm",
            Arc::clone(m),
        ))),
        None => cached(chain),
    };
    let arm = ArmClient::new(
        ArmOptions {
            endpoint: cfg.resource_manager_endpoint.clone(),
            audience: cfg.resource_manager_audience.clone(),
            read_budget: crate::azure::ReadBudget {
                burst: cfg.arm_read_burst,
                per_second: cfg.arm_reads_per_second,
            },
            ..ArmOptions::default()
        },
        credential,
        http,
    );
    let targets = crate::target::configured::upstream_targets(cfg, TARGET_TIMEOUT, &arm)
        .map_err(|TargetError { message, .. }| DaemonError::Build(message))?;
    let upstreams = cfg
        .upstreams
        .iter()
        .zip(targets)
        .map(|(u, target)| UpstreamSpec::from_config(cfg, u, target))
        .collect();
    Ok(Reconciler::new(upstreams, arm).with_intervals(cfg.sync_interval, cfg.health_interval))
}

/// Runs the startup check. A target that cannot be used does not stop the others: its
/// upstreams are reported (log, metrics, `/readyz`) and checked again every cycle, so
/// only permanent problems of scale sets fail, and permanent target problems when no
/// upstream at all could be synced. Transient problems are logged and left to the cycles.
pub async fn checked(reconciler: Reconciler) -> Result<Reconciler, DaemonError> {
    let problems = reconciler.startup_check().await;
    let upstreams = reconciler.upstreams().len();
    let stopped: std::collections::BTreeSet<&str> = problems
        .iter()
        .filter(|p| p.permanent)
        .map(|p| p.upstream.as_str())
        .collect();
    let nothing_works = stopped.len() >= upstreams;
    let (fatal, logged): (Vec<_>, Vec<_>) = problems
        .into_iter()
        .partition(|p| p.permanent && (!p.target || nothing_works));
    if !fatal.is_empty() {
        return Err(DaemonError::Startup(fatal));
    }
    for p in &logged {
        if p.permanent {
            tracing::error!(upstream = %p.upstream, "Startup check: {} (this upstream is {RECHECKED})", p.message);
        } else {
            tracing::warn!(upstream = %p.upstream, "Startup check: {} (will retry every cycle)", p.message);
        }
    }
    Ok(reconciler)
}

/// Logs a one-line summary per upstream that failed or held removals.
pub fn log_cycle(report: &CycleReport) {
    let failed = report.outcomes.iter().filter(|o| !o.in_sync()).count();
    tracing::debug!(
        upstreams = report.outcomes.len(),
        failed,
        duration_ms = report.duration.as_millis() as u64,
        "Reconcile finished."
    );
}

/// Starts the elector of a `leader_election` section: a Blob lease client authorised by
/// a token from the credential chain (scope `https://storage.azure.com/.default`) or by
/// Shared Key.
pub fn start_elector(
    le: &LeaderElectionConfig,
    env: &Env,
    metrics: &Arc<Metrics>,
) -> Result<Elector, DaemonError> {
    let timing = Timing::for_lease(le.lease_duration);
    let http = crate::net::client_builder(le.ca_file.as_deref())
        .map_err(|e| DaemonError::Build(format!("leader_election.ca_file: {e}")))?
        .connect_timeout(timing.request_timeout)
        .build()
        .map_err(|e| DaemonError::Build(format!("cannot build the HTTP client: {e}")))?;
    let auth = match &le.auth {
        StorageAuth::Token => {
            let chain = Arc::new(default_chain(env, http.clone()));
            BlobAuth::Token(cached(Arc::new(CountingCredential::new(
                chain,
                "storage",
                Arc::clone(metrics),
            ))))
        }
        StorageAuth::SharedKey {
            account_name,
            account_key,
        } => BlobAuth::SharedKey(
            SharedKey::new(account_name, account_key.expose())
                .map_err(|e| DaemonError::Build(format!("leader_election.account_key: {e}")))?,
        ),
    };
    let client = BlobLeaseClient::new(
        &le.account_url,
        &le.container,
        &le.blob,
        auth,
        http,
        timing.request_timeout,
    )
    .map_err(|e| DaemonError::Build(e.to_string()))?
    .with_metrics(Arc::clone(metrics));
    Ok(Elector::start(client, timing, Some(Arc::clone(metrics))))
}

/// Starts the consumer of an `events` section: a Queue client authorised by a token from
/// the credential chain (scope `https://storage.azure.com/.default`), Shared Key or a SAS,
/// trusting `events.ca_file` besides the system's roots; it reads only while `may_consume`
/// (this replica may write).
pub fn start_events(
    ev: &crate::config::EventsConfig,
    env: &Env,
    metrics: &Arc<Metrics>,
    may_consume: Arc<dyn Fn() -> bool + Send + Sync>,
) -> Result<crate::events::consumer::Consumer, DaemonError> {
    use crate::config::QueueAuthConfig;
    use crate::events::queue::{QueueAuth, QueueClient};
    let timeout = QUEUE_READ_TIMEOUT;
    let http = crate::net::client_builder(ev.ca_file.as_deref())
        .map_err(|e| DaemonError::Build(format!("events.ca_file: {e}")))?
        .connect_timeout(timeout)
        .build()
        .map_err(|e| DaemonError::Build(format!("cannot build the HTTP client: {e}")))?;
    let mut url = ev.queue_url.clone();
    let auth = match &ev.auth {
        QueueAuthConfig::Token => {
            let chain = Arc::new(default_chain(env, http.clone()));
            QueueAuth::Token(cached(Arc::new(CountingCredential::new(
                chain,
                "storage",
                Arc::clone(metrics),
            ))))
        }
        QueueAuthConfig::SharedKey {
            account_name,
            account_key,
        } => QueueAuth::SharedKey(
            SharedKey::new(account_name, account_key.expose())
                .map_err(|e| DaemonError::Build(format!("events.account_key: {e}")))?,
        ),
        QueueAuthConfig::Sas(sas) => {
            url.set_query(Some(sas.expose()));
            QueueAuth::Sas
        }
    };
    let client = QueueClient::new(&url, auth, http, timeout)
        .map_err(|e| DaemonError::Build(e.to_string()))?;
    Ok(crate::events::consumer::Consumer::start(
        client,
        crate::events::consumer::ConsumerOptions {
            visibility_timeout: ev.visibility_timeout,
            max_dequeue_count: ev.max_dequeue_count,
            poll_interval: ev.poll_interval,
            coalesce: Duration::from_millis(100),
        },
        may_consume,
        Some(metrics.events.clone()),
    ))
}

fn upstream_list(cfg: &Config) -> Vec<(String, UpstreamKind)> {
    cfg.upstreams
        .iter()
        .map(|u| (u.name.clone(), u.kind))
        .collect()
}

/// Creates the series of every configured upstream (templates' services are created by
/// the cycle that finds them).
fn declare_upstreams(metrics: &Metrics, reconciler: &Reconciler) {
    metrics.declare_upstreams(
        reconciler
            .upstreams()
            .iter()
            .filter(|u| u.services.is_none())
            .map(|u| (u.upstream.name.as_str(), u.upstream.kind, u.target.kind())),
    );
}

/// The daemon.
pub struct Daemon {
    path: PathBuf,
    env: Env,
    config: Config,
    reconciler: Reconciler,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    elector: Option<Elector>,
    admin: Option<AdminServer>,
    /// A reload asked for during start-up, applied as soon as the loop runs.
    pending_reload: bool,
    events: Option<crate::events::consumer::Consumer>,
    follow_ups: crate::events::FollowUps,
}

impl Daemon {
    /// Loads, builds and checks, then starts the elector (with `leader_election`) and the
    /// admin endpoint (unless `admin_listen: off`). Fails on an invalid file or a permanent
    /// startup problem.
    pub async fn start(path: PathBuf, env: Env) -> Result<Self, DaemonError> {
        let config = config::load(&path, &|k| env.get(k).map(str::to_string))?;
        let metrics = Arc::new(Metrics::new());
        let reconciler = checked(build_with_metrics(&config, &env, Some(&metrics))?).await?;
        declare_upstreams(&metrics, &reconciler);
        let health = Arc::new(Health::new(
            &upstream_list(&config),
            config.sync_interval,
            config.readiness_max_age,
        ));
        let elector = match &config.leader_election {
            Some(le) => Some(start_elector(le, &env, &metrics)?),
            None => {
                metrics.set_leader(true);
                None
            }
        };
        if let Some(e) = &elector {
            let probe: ElectionProbe = e.status_probe();
            health.set_election(Some(probe));
        }
        let admin = config
            .admin_listen
            .map(|addr| AdminServer::start(addr, Arc::clone(&metrics), Arc::clone(&health)));
        let events = match &config.events {
            Some(ev) => {
                let may_consume: Arc<dyn Fn() -> bool + Send + Sync> = match &elector {
                    Some(e) => e.write_gate(),
                    None => Arc::new(|| true),
                };
                let consumer = start_events(ev, &env, &metrics, may_consume)?;
                health.set_event_queue(Some(consumer.error_probe()));
                Some(consumer)
            }
            None => None,
        };
        let mut daemon = Self {
            path,
            env,
            config,
            reconciler,
            metrics,
            health,
            elector,
            admin,
            pending_reload: false,
            events,
            follow_ups: crate::events::FollowUps::default(),
        };
        daemon.gate_writes();
        Ok(daemon)
    }

    /// [`Daemon::start`] while listening to `control`, so that a signal at any moment of
    /// start-up (the startup check can wait out ARM's `Retry-After` for a long time) is
    /// honoured: [`Control::Shutdown`] (or a closed channel) abandons start-up at once and
    /// gives `Ok(None)` (start-up only reads: nothing has been written); [`Control::Reload`]
    /// is remembered and applied as soon as [`Daemon::run`] starts.
    pub async fn start_interruptible(
        path: PathBuf,
        env: Env,
        control: &mut mpsc::Receiver<Control>,
    ) -> Result<Option<Self>, DaemonError> {
        let start = Self::start(path, env);
        tokio::pin!(start);
        let mut pending_reload = false;
        loop {
            tokio::select! {
                biased;
                msg = control.recv() => match msg {
                    Some(Control::Reload) => {
                        if !pending_reload {
                            tracing::info!("Reload asked for during start-up: it is applied once the daemon runs.");
                        }
                        pending_reload = true;
                    }
                    Some(Control::Shutdown) | None => {
                        tracing::info!("Terminating during start-up; nothing was written.");
                        return Ok(None);
                    }
                },
                started = &mut start => {
                    let mut daemon = started?;
                    daemon.pending_reload = pending_reload;
                    return Ok(Some(daemon));
                }
            }
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The daemon's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Where the admin endpoint listens, once it does (`None` with `admin_listen: off`).
    pub async fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.admin {
            Some(a) => a.local_addr().await,
            None => None,
        }
    }

    /// Sets how old a reused read may be (15 minutes by default), now and after reloads:
    /// for tests and benchmarks that compress time.
    pub fn set_max_reuse_age(&mut self, age: std::time::Duration) {
        self.reconciler.set_max_reuse_age(age);
    }

    /// Since when the event queue has been read without a break, when it is read now:
    /// its last read succeeded within two poll intervals and a request timeout. None
    /// without events, while reads fail, and on a standby.
    fn queue_watched_since(&self) -> Option<std::time::Instant> {
        let events = self.events.as_ref()?;
        let poll = self
            .config
            .events
            .as_ref()
            .map_or(Duration::ZERO, |e| e.poll_interval);
        events.watched_since(poll.saturating_mul(2) + QUEUE_READ_TIMEOUT + Duration::from_secs(5))
    }

    /// True when this replica may write now: it is the only one, or it holds the lease.
    fn may_write(&self) -> bool {
        self.elector.as_ref().is_none_or(Elector::is_leader)
    }

    /// Hands the election's write gate to the reconciler, which asks it before each
    /// upstream's writes: a replica that loses the lease during a cycle writes no more.
    fn gate_writes(&mut self) {
        if let Some(e) = &self.elector {
            self.reconciler.set_write_gate(e.write_gate());
        }
    }

    fn record(&self, report: &CycleReport, mode: Mode) {
        self.metrics.record_cycle(report, mode);
        self.metrics.record_arm(&self.reconciler.arm().stats());
        self.health.record_cycle(report);
        self.metrics.set_leader(self.may_write());
    }

    /// Reloads the configuration, telling systemd (Type=notify) when it starts and ends.
    async fn reload(&mut self) {
        let mut states = vec![sd_notify::NotifyState::Reloading];
        states.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
        notify_systemd(&states);
        self.reload_config().await;
        notify_systemd(&[sd_notify::NotifyState::Ready]);
    }

    async fn reload_config(&mut self) {
        let loaded = config::load(&self.path, &|k| self.env.get(k).map(str::to_string));
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reload(false);
                tracing::error!(file = %self.path.display(), "Configuration reload failed; keeping the running configuration:\n{e}");
                return;
            }
        };
        // The new reconciler keeps each scale set's read history and the drain clocks:
        // a reload is not a restart, and must not judge the next reads as right after one.
        let built = match build_with_metrics(&config, &self.env, Some(&self.metrics)) {
            Ok(r) => checked(r.inherit(&self.reconciler)).await,
            Err(e) => Err(e),
        };
        match built {
            Ok(r) => {
                if config.admin_listen != self.config.admin_listen {
                    tracing::warn!(
                        "admin_listen changed: the new address takes effect at the next restart."
                    );
                }
                if config.leader_election != self.config.leader_election {
                    tracing::warn!("leader_election changed: the new settings take effect at the next restart.");
                }
                self.reconciler = r;
                self.config = config;
                self.gate_writes();
                self.metrics.config_reload(true);
                self.metrics.arm_client_replaced();
                let upstreams = upstream_list(&self.config);
                self.metrics.retain_upstreams(&upstreams);
                declare_upstreams(&self.metrics, &self.reconciler);
                self.health.set_upstreams(
                    &upstreams,
                    self.config.sync_interval,
                    self.config.readiness_max_age,
                );
                tracing::info!(file = %self.path.display(), upstreams = self.config.upstreams.len(), "Configuration reloaded.");
            }
            Err(e) => {
                self.metrics.config_reload(false);
                tracing::error!(file = %self.path.display(), "Configuration reload failed; keeping the running configuration:\n{e}")
            }
        }
    }

    /// Runs until [`Control::Shutdown`] arrives or the channel closes. A shutdown that
    /// arrives during discovery abandons the reads; one that arrives during an apply lets
    /// it finish. Servers are never removed because of a shutdown.
    pub async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            upstreams = self.config.upstreams.len(),
            leader_election = self.elector.is_some(),
            "vmss-sync started."
        );
        let mut became_leader = self.elector.as_ref().map(Elector::became_leader);
        if std::mem::take(&mut self.pending_reload) {
            self.reload().await;
        }
        let mut trigger = "timer";
        'cycles: loop {
            self.health.heartbeat();
            let started = std::time::Instant::now();
            // A timer cycle with a watched event queue may reuse the scale set reads of
            // earlier cycles (every change of a set raises an event, which reads it
            // afresh); a start, a reload, a new leader and polling read them.
            let since = match trigger {
                "timer" => self.queue_watched_since(),
                _ => None,
            };
            let discovered = tokio::select! {
                biased;
                msg = control.recv() => match msg {
                    Some(Control::Reload) => { self.reload().await; trigger = "reload"; continue; }
                    Some(Control::Shutdown) | None => break,
                },
                d = self.reconciler.discover_watched(since) => d,
            };
            let mode = if self.may_write() {
                Mode::Apply
            } else {
                Mode::DryRun
            };
            let report = self
                .reconciler
                .apply_snapshots(Arc::new(discovered), mode, started)
                .await;
            log_cycle(&report);
            self.record(&report, mode);
            self.metrics.events.cycle(trigger);
            trigger = "timer";
            let mut next_cycle = tokio::time::Instant::now() + jittered(self.config.sync_interval);
            // Between cycles, events and their follow-ups reconcile the upstreams they
            // concern; the timer's full cycle stays the safety net. A reconcile of every
            // upstream (all of them concerned) is a full cycle come early: the timer then
            // counts `sync_interval` from it, so every upstream is still read at least
            // once per `sync_interval`, never less often.
            loop {
                let follow_up = self.follow_ups.next();
                tokio::select! {
                    msg = control.recv() => match msg {
                        Some(Control::Reload) => { self.reload().await; trigger = "reload"; break; }
                        Some(Control::Shutdown) | None => break 'cycles,
                    },
                    _ = tokio::time::sleep_until(next_cycle) => break,
                    _ = leadership_gained(&mut became_leader) => {
                        tracing::debug!("This replica became the leader: reconciling now.");
                        trigger = "leadership";
                        break;
                    }
                    Some(batch) = next_batch(&mut self.events) => {
                        if self.on_events(batch).await {
                            next_cycle = tokio::time::Instant::now() + jittered(self.config.sync_interval);
                        }
                    }
                    _ = sleep_until_opt(follow_up) => {
                        if self.on_follow_up().await {
                            next_cycle = tokio::time::Instant::now() + jittered(self.config.sync_interval);
                        }
                    }
                }
            }
        }
        tracing::info!("Terminating...");
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        self.health.stopping();
        if let Some(c) = self.events.take() {
            c.stop();
        }
        if let Some(e) = self.elector.take() {
            e.shutdown().await;
        }
        if let Some(a) = self.admin.take() {
            a.shutdown().await;
        }
    }
}

/// Tells systemd the service's state when it runs the daemon as `Type=notify`
/// (`NOTIFY_SOCKET` set); does nothing otherwise. A failed send is logged at debug level.
pub fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

impl Daemon {
    /// Reconciles the upstreams a burst of events concerns, then lets the consumer delete
    /// the messages. Events for nothing selected are only counted. True when the
    /// reconcile concerned every upstream (a full cycle).
    async fn on_events(&mut self, batch: crate::events::consumer::Batch) -> bool {
        let mut full = false;
        let selections = self.reconciler.selection_list();
        let routed = crate::events::route_all(&batch.events, &selections);
        for e in &batch.events {
            tracing::debug!(event = %e, "Event received.");
            let outcome = if crate::events::route(e, &selections).is_empty() {
                "ignored"
            } else {
                "reconciled"
            };
            self.metrics.events.event(e.kind.label(), outcome);
        }
        if routed.selections.is_empty() {
            tracing::debug!(
                events = batch.events.len(),
                "Events concern no configured upstream; deleting them."
            );
        } else {
            let mode = if self.may_write() {
                Mode::Apply
            } else {
                Mode::DryRun
            };
            let (report, changing) = self
                .reconciler
                .reconcile_selected(&routed.selections, mode)
                .await;
            full = crate::events::covers(&routed.selections, &self.reconciler.selection_list());
            log_cycle(&report);
            self.record(&report, mode);
            self.metrics.events.cycle("event");
            let wrote = report
                .outcomes
                .iter()
                .any(|o| o.report.is_some() && o.plan.as_ref().is_some_and(|p| !p.is_empty()));
            let now = std::time::SystemTime::now();
            for t in batch.enqueued.iter().filter(|_| wrote) {
                if let Ok(d) = now.duration_since(*t) {
                    self.metrics.events.delay(d);
                    tracing::debug!(
                        delay_ms = d.as_millis() as u64,
                        "Event reconciled {} ms after it was enqueued.",
                        d.as_millis()
                    );
                }
            }
            if routed.scale && changing {
                self.follow_ups
                    .schedule(tokio::time::Instant::now(), &routed.selections);
            }
        }
        let _ = batch.done.send(());
        full
    }

    /// A follow-up read after a scale event (new instances boot and turn healthy); the
    /// series stops once nothing is coming up any more. True when it concerned every
    /// upstream (a full cycle).
    async fn on_follow_up(&mut self) -> bool {
        let Some(selections) = self.follow_ups.take_due(tokio::time::Instant::now()) else {
            return false;
        };
        let mode = if self.may_write() {
            Mode::Apply
        } else {
            Mode::DryRun
        };
        let (report, changing) = self.reconciler.reconcile_selected(&selections, mode).await;
        log_cycle(&report);
        self.record(&report, mode);
        self.metrics.events.cycle("follow_up");
        if !changing {
            // Everything has come up: the timer is enough again.
            self.follow_ups.clear();
        }
        crate::events::covers(&selections, &self.reconciler.selection_list())
    }
}

/// The next batch of events; never without an event queue.
async fn next_batch(
    events: &mut Option<crate::events::consumer::Consumer>,
) -> Option<crate::events::consumer::Batch> {
    match events {
        Some(c) => c.batches.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when this replica becomes the leader; never without an election.
async fn leadership_gained(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// `interval` ± 10 %, so that many daemons do not read ARM in lockstep.
pub fn jittered(interval: Duration) -> Duration {
    let factor = 0.9 + fastrand::f64() * 0.2;
    interval.mul_f64(factor)
}

/// A credential that counts the tokens its inner (uncached) credential fetches. Put it
/// under the cache, so that it counts real fetches: first tokens and refreshes.
#[derive(Debug)]
pub struct CountingCredential {
    inner: Arc<dyn TokenCredential>,
    service: &'static str,
    metrics: Arc<Metrics>,
}

impl CountingCredential {
    /// Counts fetches of `inner` as `vmss_sync_token_fetches_total{service=...}`.
    pub fn new(
        inner: Arc<dyn TokenCredential>,
        service: &'static str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            service,
            metrics,
        }
    }
}

#[async_trait]
impl TokenCredential for CountingCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let r = self.inner.get_token(scope).await;
        self.metrics.token_fetch(self.service, r.is_ok());
        r
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn invalidate(&self, scope: &str, token: &str) {
        self.inner.invalidate(scope, token).await;
    }
}
