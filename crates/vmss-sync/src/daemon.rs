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
use crate::azure::auth::{cached, default_chain, Env, TokenCredential};
use crate::config::{self, Config, LeaderElectionConfig, StorageAuth, UpstreamKind};
use crate::leader::blob::{BlobAuth, BlobLeaseClient};
use crate::leader::shared_key::SharedKey;
use crate::leader::{Elector, Timing};
use crate::metrics::{CountingCredential, Metrics};
use crate::reconcile::{CycleReport, Mode, Reconciler, StartupProblem, UpstreamSpec};
use crate::target::TargetError;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Timeout of every request to a target.
pub const TARGET_TIMEOUT: Duration = Duration::from_secs(10);

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
    let http = reqwest::Client::builder()
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
    let sinks = crate::target::configured::sinks(cfg, TARGET_TIMEOUT, &arm)
        .map_err(|TargetError { message, .. }| DaemonError::Build(message))?;
    let upstreams = cfg
        .upstreams
        .iter()
        .zip(sinks)
        .map(|(u, sink)| UpstreamSpec::from_config(cfg, u, sink))
        .collect();
    Ok(Reconciler::new(upstreams, arm).with_intervals(cfg.sync_interval, cfg.health_interval))
}

/// Runs the startup check and fails on permanent problems; transient ones are logged
/// and left to the cycles.
pub async fn checked(reconciler: Reconciler) -> Result<Reconciler, DaemonError> {
    let problems = reconciler.startup_check().await;
    let (permanent, transient): (Vec<_>, Vec<_>) = problems.into_iter().partition(|p| p.permanent);
    for p in &transient {
        tracing::warn!(upstream = %p.upstream, "Startup check: {} (will retry every cycle)", p.message);
    }
    if permanent.is_empty() {
        Ok(reconciler)
    } else {
        Err(DaemonError::Startup(permanent))
    }
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
    let http = reqwest::Client::builder()
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

fn upstream_list(cfg: &Config) -> Vec<(String, UpstreamKind)> {
    cfg.upstreams
        .iter()
        .map(|u| (u.name.clone(), u.kind))
        .collect()
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
}

impl Daemon {
    /// Loads, builds and checks, then starts the elector (with `leader_election`) and the
    /// admin endpoint (unless `admin_listen: off`). Fails on an invalid file or a permanent
    /// startup problem.
    pub async fn start(path: PathBuf, env: Env) -> Result<Self, DaemonError> {
        let config = config::load(&path, &|k| env.get(k).map(str::to_string))?;
        let metrics = Arc::new(Metrics::new());
        let reconciler = checked(build_with_metrics(&config, &env, Some(&metrics))?).await?;
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

    async fn reload(&mut self) {
        let loaded = config::load(&self.path, &|k| self.env.get(k).map(str::to_string));
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                self.metrics.config_reload(false);
                tracing::error!(file = %self.path.display(), "Configuration reload failed; keeping the running configuration:\n{e}");
                return;
            }
        };
        let built = match build_with_metrics(&config, &self.env, Some(&self.metrics)) {
            Ok(r) => checked(r).await,
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
        loop {
            self.health.heartbeat();
            let started = std::time::Instant::now();
            let discovered = tokio::select! {
                biased;
                msg = control.recv() => match msg {
                    Some(Control::Reload) => { self.reload().await; continue; }
                    Some(Control::Shutdown) | None => break,
                },
                d = self.reconciler.discover() => d,
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
            let wait = jittered(self.config.sync_interval);
            tokio::select! {
                msg = control.recv() => match msg {
                    Some(Control::Reload) => self.reload().await,
                    Some(Control::Shutdown) | None => break,
                },
                _ = tokio::time::sleep(wait) => {}
                _ = leadership_gained(&mut became_leader) => {
                    tracing::debug!("This replica became the leader: reconciling now.");
                }
            }
        }
        tracing::info!("Terminating...");
        self.health.stopping();
        if let Some(e) = self.elector.take() {
            e.shutdown().await;
        }
        if let Some(a) = self.admin.take() {
            a.shutdown().await;
        }
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
