//! The long-running loop: reconcile every `sync_interval` (with a little jitter), reload
//! the configuration on request, and stop cleanly.
//!
//! Signals are turned into [`Control`] messages by `main`; the loop itself is plain async
//! code so tests and the demo drive it through a channel.

use crate::azure::arm::{ArmClient, ArmOptions};
use crate::azure::auth::{default_credential, Env};
use crate::config::{self, Config};
use crate::reconcile::{CycleReport, Mode, Reconciler, StartupProblem, UpstreamSpec};
use crate::target::nginx_plus::NginxPlus;
use crate::target::{Target, TargetError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

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
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| DaemonError::Build(format!("cannot build the HTTP client: {e}")))?;
    let credential = default_credential(env, http.clone());
    let arm = ArmClient::new(
        ArmOptions {
            endpoint: cfg.resource_manager_endpoint.clone(),
            audience: cfg.resource_manager_audience.clone(),
            ..ArmOptions::default()
        },
        credential,
        http,
    );
    let nginx_plus: Arc<dyn Target> = Arc::new(
        NginxPlus::new(&cfg.api_endpoint, &cfg.custom_headers, TARGET_TIMEOUT)
            .map_err(|TargetError { message, .. }| DaemonError::Build(message))?,
    );
    let upstreams = cfg
        .upstreams
        .iter()
        .map(|u| UpstreamSpec::from_config(cfg, u, Arc::clone(&nginx_plus)))
        .collect();
    Ok(Reconciler::new(upstreams, arm))
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

/// The daemon.
pub struct Daemon {
    path: PathBuf,
    env: Env,
    config: Config,
    reconciler: Reconciler,
}

impl Daemon {
    /// Loads, builds and checks. Fails on an invalid file or a permanent startup problem.
    pub async fn start(path: PathBuf, env: Env) -> Result<Self, DaemonError> {
        let config = config::load(&path, &|k| env.get(k).map(str::to_string))?;
        let reconciler = checked(build(&config, &env)?).await?;
        Ok(Self {
            path,
            env,
            config,
            reconciler,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    async fn reload(&mut self) {
        let loaded = config::load(&self.path, &|k| self.env.get(k).map(str::to_string));
        let config = match loaded {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(file = %self.path.display(), "Configuration reload failed; keeping the running configuration:\n{e}");
                return;
            }
        };
        let built = match build(&config, &self.env) {
            Ok(r) => checked(r).await,
            Err(e) => Err(e),
        };
        match built {
            Ok(r) => {
                self.reconciler = r;
                self.config = config;
                tracing::info!(file = %self.path.display(), upstreams = self.config.upstreams.len(), "Configuration reloaded.");
            }
            Err(e) => {
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
            "vmss-sync started."
        );
        loop {
            let started = std::time::Instant::now();
            let discovered = tokio::select! {
                biased;
                msg = control.recv() => match msg {
                    Some(Control::Reload) => { self.reload().await; continue; }
                    Some(Control::Shutdown) | None => break,
                },
                d = self.reconciler.discover() => d,
            };
            let report = self
                .reconciler
                .apply_snapshots(Arc::new(discovered), Mode::Apply, started)
                .await;
            log_cycle(&report);
            let wait = jittered(self.config.sync_interval);
            tokio::select! {
                msg = control.recv() => match msg {
                    Some(Control::Reload) => self.reload().await,
                    Some(Control::Shutdown) | None => break,
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::info!("Terminating...");
    }
}

/// `interval` ± 10 %, so that many daemons do not read ARM in lockstep.
pub fn jittered(interval: Duration) -> Duration {
    let factor = 0.9 + fastrand::f64() * 0.2;
    interval.mul_f64(factor)
}
