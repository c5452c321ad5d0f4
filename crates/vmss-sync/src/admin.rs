//! The admin HTTP endpoint: `/metrics` (Prometheus), `/healthz` (liveness) and `/readyz`
//! (readiness), on `admin_listen` (default `127.0.0.1:8371`).
//!
//! `/metrics` answers in the classic Prometheus text format 0.0.4, or in OpenMetrics when
//! the `Accept` header asks for it ([`Format::negotiate`]).
//!
//! - `/healthz`: 200 while the daemon's loop turns: its last iteration began less than
//!   [`liveness_max_age`] ago (10 × `sync_interval`, at least 10 minutes, so that a
//!   slow but working cycle never gets the process restarted). 503 before the first
//!   iteration and after shutdown began.
//! - `/readyz`: 200 when every configured upstream had a successful reconcile at most
//!   `readiness_max_age` ago, and this replica is the leader, the only replica, or a standby
//!   that reached the lease blob within `readiness_max_age` (so it can take over). 503
//!   otherwise.
//!
//! Both answer a short JSON object saying why. Nothing here needs authentication: the
//! endpoint shows no secret, and it listens on loopback unless configured otherwise.

use crate::leader::ElectionStatus;
use crate::metrics::{secs, Format, Metrics};
use crate::model::UpstreamKind;
use crate::reconcile::CycleReport;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Floor of the liveness limit.
const MIN_LIVENESS_MAX_AGE: Duration = Duration::from_secs(600);
/// Pause between attempts to bind the admin address when it is taken.
const BIND_RETRY: Duration = Duration::from_secs(10);

/// Where the role of this replica comes from.
pub type ElectionProbe = Arc<dyn Fn() -> ElectionStatus + Send + Sync>;

/// One upstream as readiness sees it.
#[derive(Clone, Debug)]
struct UpstreamHealth {
    name: String,
    kind: UpstreamKind,
    last_success: Option<Instant>,
    /// Why the latest reconcile failed; `None` when it succeeded (or none ran yet).
    last_error: Option<String>,
    ran: bool,
}

#[derive(Debug)]
struct Inner {
    started: Instant,
    last_iteration: Option<Instant>,
    stopping: bool,
    readiness_max_age: Duration,
    liveness_max_age: Duration,
    upstreams: Vec<UpstreamHealth>,
}

/// What `/healthz` and `/readyz` answer from: the loop's heartbeats, the outcome of each
/// upstream's last reconcile and the election.
pub struct Health {
    inner: Mutex<Inner>,
    election: Mutex<Option<ElectionProbe>>,
    events: Mutex<Option<EventQueueProbe>>,
}

/// The event queue's last read error (None while reads work), for `/readyz`'s detail.
pub type EventQueueProbe = Arc<dyn Fn() -> Option<String> + Send + Sync>;

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

/// An answer: the status code and the JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// True for 200, false for 503.
    pub ok: bool,
    /// The JSON body.
    pub body: Value,
}

impl Verdict {
    fn status(&self) -> StatusCode {
        if self.ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

/// The liveness limit for a sync interval: 10 × the interval, at least 10 minutes.
pub fn liveness_max_age(sync_interval: Duration) -> Duration {
    sync_interval.saturating_mul(10).max(MIN_LIVENESS_MAX_AGE)
}

impl Health {
    /// Health of a daemon with these upstreams (name, kind).
    pub fn new(
        upstreams: &[(String, UpstreamKind)],
        sync_interval: Duration,
        readiness_max_age: Duration,
    ) -> Self {
        let h = Health {
            inner: Mutex::new(Inner {
                started: Instant::now(),
                last_iteration: None,
                stopping: false,
                readiness_max_age,
                liveness_max_age: liveness_max_age(sync_interval),
                upstreams: Vec::new(),
            }),
            election: Mutex::new(None),
            events: Mutex::new(None),
        };
        h.set_upstreams(upstreams, sync_interval, readiness_max_age);
        h
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the event queue whose state `/readyz` shows (a detail: a queue that cannot be
    /// read does not make the replica unready, the timer's cycles go on).
    pub fn set_event_queue(&self, probe: Option<EventQueueProbe>) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = probe;
    }

    /// Sets the election whose status readiness reports (none: the only replica).
    pub fn set_election(&self, probe: Option<ElectionProbe>) {
        *self.election.lock().unwrap_or_else(|e| e.into_inner()) = probe;
    }

    /// After a reload: the configured upstreams and limits. Upstreams that stay keep their
    /// history.
    pub fn set_upstreams(
        &self,
        upstreams: &[(String, UpstreamKind)],
        sync_interval: Duration,
        readiness_max_age: Duration,
    ) {
        let mut inner = self.lock();
        let old = std::mem::take(&mut inner.upstreams);
        inner.upstreams = upstreams
            .iter()
            .map(|(name, kind)| {
                old.iter()
                    .find(|u| &u.name == name && u.kind == *kind)
                    .cloned()
                    .unwrap_or(UpstreamHealth {
                        name: name.clone(),
                        kind: *kind,
                        last_success: None,
                        last_error: None,
                        ran: false,
                    })
            })
            .collect();
        inner.readiness_max_age = readiness_max_age;
        inner.liveness_max_age = liveness_max_age(sync_interval);
    }

    /// The loop began an iteration.
    pub fn heartbeat(&self) {
        self.lock().last_iteration = Some(Instant::now());
    }

    /// The daemon is stopping: both probes fail from now on.
    pub fn stopping(&self) {
        self.lock().stopping = true;
    }

    /// Records the outcome of a cycle.
    pub fn record_cycle(&self, report: &CycleReport) {
        let now = Instant::now();
        let mut inner = self.lock();
        // The services of a template count under the template's name: it succeeded when
        // all of them did.
        let mut errors: Vec<(&str, UpstreamKind, Option<&str>)> = Vec::new();
        for o in &report.outcomes {
            let name = o.template.as_deref().unwrap_or(&o.upstream);
            let error = o.error.as_deref();
            match errors
                .iter_mut()
                .find(|(n, k, _)| *n == name && *k == o.kind)
            {
                Some((_, _, e)) => *e = e.or(error),
                None => errors.push((name, o.kind, error)),
            }
        }
        for (name, kind, error) in errors {
            if let Some(u) = inner
                .upstreams
                .iter_mut()
                .find(|u| u.name == name && u.kind == kind)
            {
                u.ran = true;
                match error {
                    None => {
                        u.last_success = Some(now);
                        u.last_error = None;
                    }
                    Some(e) => u.last_error = Some(crate::azure::auth::truncate_chars(e, 300)),
                }
            }
        }
    }

    /// `/healthz` at `now`.
    pub fn liveness(&self, now: Instant) -> Verdict {
        let inner = self.lock();
        let limit = inner.liveness_max_age;
        let (ok, reason) = if inner.stopping {
            (false, "shutting down".to_string())
        } else {
            match inner.last_iteration {
                None => (false, "the loop has not started yet".to_string()),
                Some(t) => {
                    let age = now.saturating_duration_since(t);
                    if age <= limit {
                        (true, "the loop is running".to_string())
                    } else {
                        (
                            false,
                            format!(
                                "the loop's last iteration began {:.0} s ago (limit {} s)",
                                age.as_secs_f64(),
                                limit.as_secs()
                            ),
                        )
                    }
                }
            }
        };
        let last = inner
            .last_iteration
            .map(|t| secs(now.saturating_duration_since(t)));
        Verdict {
            ok,
            body: json!({
                "status": if ok { "ok" } else { "failing" },
                "reason": reason,
                "last_iteration_seconds_ago": last,
                "uptime_seconds": secs(now.saturating_duration_since(inner.started)),
            }),
        }
    }

    /// `/readyz` at `now`.
    pub fn readiness(&self, now: Instant) -> Verdict {
        let election = self
            .election
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|probe| probe());
        let inner = self.lock();
        let max_age = inner.readiness_max_age;
        let mut reasons: Vec<String> = Vec::new();
        if inner.stopping {
            reasons.push("shutting down".into());
        }
        let mut upstreams = Vec::new();
        for u in &inner.upstreams {
            let age = u.last_success.map(|t| now.saturating_duration_since(t));
            let fresh = age.is_some_and(|a| a <= max_age);
            if !fresh {
                reasons.push(match (&u.last_error, age, u.ran) {
                    (_, _, false) => format!("upstream {} ({}): no reconcile yet", u.name, u.kind),
                    (Some(e), _, _) => format!(
                        "upstream {} ({}): no successful reconcile in the last {} s; the last one failed: {e}",
                        u.name,
                        u.kind,
                        max_age.as_secs()
                    ),
                    (None, _, _) => format!(
                        "upstream {} ({}): no successful reconcile in the last {} s",
                        u.name,
                        u.kind,
                        max_age.as_secs()
                    ),
                });
            }
            upstreams.push(json!({
                "name": u.name,
                "kind": u.kind.as_str(),
                "last_success_seconds_ago": age.map(secs),
                "last_error": u.last_error,
            }));
        }
        let role = match &election {
            None => "single",
            Some(s) if s.leader => "leader",
            Some(_) => "standby",
        };
        if let Some(s) = &election {
            if !s.leader {
                let contact = s.last_contact.map(|t| now.saturating_duration_since(t));
                if contact.is_none_or(|a| a > max_age) {
                    reasons.push(match &s.last_error {
                        Some(e) => format!("standby cannot reach the lease blob: {e}"),
                        None => "standby has not reached the lease blob yet".into(),
                    });
                }
            }
        }
        let ok = reasons.is_empty();
        let mut body = json!({
            "status": if ok { "ready" } else { "not ready" },
            "role": role,
            "reasons": reasons,
            "readiness_max_age_seconds": max_age.as_secs(),
            "upstreams": upstreams,
        });
        if let Some(probe) = self
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let error = probe();
            body["event_queue"] = json!({"readable": error.is_none(), "last_error": error});
        }
        Verdict { ok, body }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The router: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(metrics_handler))
        .route("/healthz", axum::routing::get(healthz_handler))
        .route("/readyz", axum::routing::get(readyz_handler))
        .with_state(AppState { metrics, health })
}

async fn metrics_handler(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let format = Format::negotiate((!accept.is_empty()).then_some(accept.as_str()));
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        s.metrics.encode_as(format),
    )
        .into_response()
}

fn json_response(v: Verdict) -> Response {
    (
        v.status(),
        [(header::CONTENT_TYPE, "application/json")],
        format!("{}\n", v.body),
    )
        .into_response()
}

async fn healthz_handler(State(s): State<AppState>) -> Response {
    json_response(s.health.liveness(Instant::now()))
}

async fn readyz_handler(State(s): State<AppState>) -> Response {
    json_response(s.health.readiness(Instant::now()))
}

/// The running admin server.
pub struct AdminServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    bound: watch::Receiver<Option<SocketAddr>>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("bound", &*self.bound.borrow())
            .finish()
    }
}

impl AdminServer {
    /// Serves on `addr` (port 0: any free port). When the address is taken the server logs
    /// an error and tries again every 10 s; syncing goes on meanwhile.
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        let (stop, mut stop_rx) = watch::channel(false);
        let (bound_tx, bound) = watch::channel(None);
        let app = router(metrics, health);
        let task = tokio::spawn(async move {
            let mut warned = false;
            let listener = loop {
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => break l,
                    Err(e) => {
                        if warned {
                            tracing::debug!(%addr, "Cannot listen on the admin address: {e}");
                        } else {
                            tracing::error!(%addr, "Cannot listen on the admin address (admin_listen): {e}; /metrics, /healthz and /readyz are unavailable, trying again every {} s.", BIND_RETRY.as_secs());
                            warned = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(BIND_RETRY) => {}
                            _ = stop_rx.wait_for(|v| *v) => return,
                        }
                    }
                }
            };
            let local = listener.local_addr().ok();
            if let Some(local) = local {
                tracing::info!(
                    address = %local,
                    "Admin endpoint listening on http://{local} (/metrics, /healthz, /readyz)."
                );
            }
            let _ = bound_tx.send(local);
            let shutdown = async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!("The admin endpoint stopped: {e}");
            }
        });
        Self { stop, task, bound }
    }

    /// The address actually bound, once bound.
    pub async fn local_addr(&self) -> Option<SocketAddr> {
        let mut rx = self.bound.clone();
        let r = rx.wait_for(Option::is_some).await.ok().and_then(|v| *v);
        r
    }

    /// Stops serving (requests in flight get up to 2 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::UpstreamOutcome;

    fn outcome(name: &str, error: Option<&str>) -> UpstreamOutcome {
        UpstreamOutcome {
            upstream: name.into(),
            template: None,
            target: "nginx-plus",
            kind: UpstreamKind::Http,
            group: "g".into(),
            plan: None,
            hold: None,
            report: None,
            error: error.map(str::to_string),
            conditions: Vec::new(),
            observed: 0,
            desired: 0,
            active: 0,
            draining: 0,
            duration: std::time::Duration::ZERO,
        }
    }

    fn report(outcomes: Vec<UpstreamOutcome>) -> CycleReport {
        CycleReport {
            outcomes,
            duration: Duration::from_millis(5),
        }
    }

    fn health() -> Health {
        Health::new(
            &[
                ("web".into(), UpstreamKind::Http),
                ("api".into(), UpstreamKind::Http),
            ],
            Duration::from_secs(5),
            Duration::from_secs(15),
        )
    }

    #[test]
    fn healthz_fails_before_the_loop_starts_when_it_stalls_and_while_stopping() {
        let h = health();
        let now = Instant::now();
        assert!(!h.liveness(now).ok);
        h.heartbeat();
        let v = h.liveness(Instant::now());
        assert!(v.ok, "{}", v.body);
        let later = Instant::now() + Duration::from_secs(601);
        let v = h.liveness(later);
        assert!(!v.ok);
        assert!(v.body["reason"].as_str().unwrap().contains("limit 600 s"));
        h.stopping();
        assert!(!h.liveness(Instant::now()).ok);
    }

    #[test]
    fn readyz_shows_an_unreadable_event_queue_without_failing() {
        let h = health();
        h.record_cycle(&report(vec![outcome("web", None), outcome("db", None)]));
        assert!(h
            .readiness(Instant::now())
            .body
            .get("event_queue")
            .is_none());
        let error: Arc<Mutex<Option<String>>> = Arc::default();
        let e2 = Arc::clone(&error);
        h.set_event_queue(Some(Arc::new(move || e2.lock().unwrap().clone())));
        let v = h.readiness(Instant::now());
        assert_eq!(v.body["event_queue"]["readable"], true);
        *error.lock().unwrap() = Some("queue get messages on q: HTTP 403".into());
        let v = h.readiness(Instant::now());
        assert_eq!(v.body["event_queue"]["readable"], false);
        assert_eq!(
            v.body["event_queue"]["last_error"],
            "queue get messages on q: HTTP 403"
        );
        assert_eq!(v.ok, h.readiness(Instant::now()).ok);
    }

    #[test]
    fn readyz_needs_a_recent_success_of_every_upstream() {
        let h = health();
        let v = h.readiness(Instant::now());
        assert!(!v.ok);
        assert_eq!(v.body["reasons"].as_array().unwrap().len(), 2);
        h.record_cycle(&report(vec![
            outcome("web", None),
            outcome(
                "api",
                Some("Couldn't get the IP addresses for api: HTTP 500"),
            ),
        ]));
        let v = h.readiness(Instant::now());
        assert!(!v.ok);
        assert_eq!(v.body["role"], "single");
        let reasons = v.body["reasons"].to_string();
        assert!(reasons.contains("upstream api (http)"), "{reasons}");
        assert!(reasons.contains("HTTP 500"), "{reasons}");
        h.record_cycle(&report(vec![outcome("web", None), outcome("api", None)]));
        let v = h.readiness(Instant::now());
        assert!(v.ok, "{}", v.body);
        assert_eq!(v.body["status"], "ready");
        // A single failure does not flip readiness while the last success is fresh…
        h.record_cycle(&report(vec![
            outcome("web", Some("boom")),
            outcome("api", None),
        ]));
        assert!(h.readiness(Instant::now()).ok);
        // …but it does once the success is older than readiness_max_age.
        let v = h.readiness(Instant::now() + Duration::from_secs(16));
        assert!(!v.ok);
        assert!(v.body["reasons"]
            .to_string()
            .contains("the last one failed: boom"));
    }

    #[test]
    fn readyz_wants_a_leader_or_a_standby_that_reaches_the_lease_blob() {
        let h = health();
        h.record_cycle(&report(vec![outcome("web", None), outcome("api", None)]));
        let status = Arc::new(Mutex::new(ElectionStatus::default()));
        let s2 = Arc::clone(&status);
        h.set_election(Some(Arc::new(move || s2.lock().unwrap().clone())));
        let v = h.readiness(Instant::now());
        assert!(!v.ok);
        assert_eq!(v.body["role"], "standby");
        status.lock().unwrap().last_contact = Some(Instant::now());
        let v = h.readiness(Instant::now());
        assert!(v.ok, "{}", v.body);
        assert_eq!(v.body["role"], "standby");
        status.lock().unwrap().last_error = Some("lease acquire on c/b: timed out".into());
        let v = h.readiness(Instant::now() + Duration::from_secs(20));
        assert!(!v.ok);
        assert!(v.body["reasons"].to_string().contains("timed out"));
        status.lock().unwrap().leader = true;
        let v = h.readiness(Instant::now());
        assert!(v.ok);
        assert_eq!(v.body["role"], "leader");
    }

    #[test]
    fn a_reload_keeps_the_history_of_upstreams_that_stay() {
        let h = health();
        h.record_cycle(&report(vec![outcome("web", None), outcome("api", None)]));
        h.set_upstreams(
            &[
                ("web".into(), UpstreamKind::Http),
                ("new".into(), UpstreamKind::Stream),
            ],
            Duration::from_secs(5),
            Duration::from_secs(15),
        );
        let v = h.readiness(Instant::now());
        assert!(!v.ok);
        let reasons = v.body["reasons"].as_array().unwrap();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].as_str().unwrap().contains("new (stream)"));
    }
}
