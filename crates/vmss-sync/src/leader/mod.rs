//! Two replicas, one writer: leader election on an Azure Blob Storage lease.
//!
//! Every replica runs an [`Elector`]. A standby tries to acquire the lease every
//! [`Timing::retry_every`]; the leader renews it every [`Timing::renew_every`] and releases it
//! on a clean shutdown, so that a standby takes over at once.
//!
//! The [`Gate`] is what the reconciler asks before each write. It is open only while
//! `now < (time the last successful acquire or renew was sent) + lease − margin`. The Blob
//! service starts the lease when it receives the request, which is after it was sent, so
//! the lease lasts at least until `sent + lease`: the gate closes `margin` before the lease
//! can expire, by itself, even if the elector task is stuck. Another replica can acquire
//! only after the lease expired (or was released), so two writers never overlap; a write
//! already on its way when the gate closes has `margin` (a third of the lease) to land.
//!
//! A leader that learns for certain that it lost the lease (taken, broken: HTTP 404, 409 or
//! 412 on renewal) closes the gate at once and leaves the lease to the others for
//! [`Timing::cooldown`]. One that merely cannot reach storage keeps writing until the gate
//! closes by itself, then tries to acquire again like any standby.

pub mod blob;
pub mod shared_key;

use crate::metrics::Metrics;
use blob::{Acquire, BlobLeaseClient, LeaseError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The timing of an election, all derived from the lease duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Lease duration (15–60 s).
    pub lease: Duration,
    /// The leader renews this long after its last successful renewal: a third of the lease.
    pub renew_every: Duration,
    /// The gate closes this long before the lease could expire: a third of the lease.
    pub margin: Duration,
    /// A standby tries to acquire, and a leader whose renewal failed tries again, this
    /// often: a fifteenth of the lease, at least 1 s.
    pub retry_every: Duration,
    /// Timeout of every Blob request: a fifth of the lease, at most 10 s (less than the
    /// margin, so a hanging renewal cannot keep the gate open).
    pub request_timeout: Duration,
}

impl Timing {
    /// How long a replica that lost its lease for certain (taken, broken) waits before it
    /// tries to acquire it again: a lease and two retries, so that a standby takes over.
    pub fn cooldown(&self) -> Duration {
        self.lease + self.retry_every * 2
    }

    /// The timing for a lease of `lease`.
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            lease,
            renew_every: lease / 3,
            margin: lease / 3,
            retry_every: (lease / 15).max(Duration::from_secs(1)),
            request_timeout: (lease / 5).min(Duration::from_secs(10)),
        }
    }
}

/// The write gate: open while this replica holds the lease with time to spare.
#[derive(Debug, Default)]
pub struct Gate {
    open_until: Mutex<Option<Instant>>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.open_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while writes are allowed.
    pub fn is_open(&self) -> bool {
        self.lock().is_some_and(|t| Instant::now() < t)
    }

    /// How long the gate stays open without another renewal (`None` when closed).
    pub fn remaining(&self) -> Option<Duration> {
        let t = (*self.lock())?;
        let now = Instant::now();
        (now < t).then(|| t - now)
    }

    fn open_until(&self, t: Instant) {
        *self.lock() = Some(t);
    }

    fn close(&self) {
        *self.lock() = None;
    }
}

/// What a replica knows about the election, for `/readyz` and logs.
#[derive(Clone, Debug, Default)]
pub struct ElectionStatus {
    /// True while the gate is open.
    pub leader: bool,
    /// When the Blob service last gave a definite answer (lease acquired, renewed, or held
    /// by another replica).
    pub last_contact: Option<Instant>,
    /// The last failure to reach or use the lease blob, cleared by the next definite answer.
    pub last_error: Option<String>,
}

struct Shared {
    gate: Gate,
    status: Mutex<ElectionStatus>,
    /// Counts the times this replica became leader (the daemon wakes up on a change).
    became_leader: watch::Sender<u64>,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, ElectionStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contact(&self) {
        let mut s = self.status();
        s.last_contact = Some(Instant::now());
        s.last_error = None;
    }

    fn failed(&self, e: &LeaseError) {
        self.status().last_error = Some(e.to_string());
    }
}

/// A random version-4 UUID: this process's lease ID.
pub fn new_lease_id() -> String {
    let a = fastrand::u32(..);
    let b = fastrand::u16(..);
    let c = fastrand::u16(..) & 0x0fff;
    let d = (fastrand::u16(..) & 0x3fff) | 0x8000;
    let e = fastrand::u64(..) & 0xffff_ffff_ffff;
    format!("{a:08x}-{b:04x}-4{c:03x}-{d:04x}-{e:012x}")
}

/// The running election of one replica. Dropping it without [`Elector::shutdown`] stops the
/// task and closes the gate but does not release the lease (it then expires).
pub struct Elector {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    timing: Timing,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("timing", &self.timing)
            .field("leader", &self.is_leader())
            .finish()
    }
}

impl Elector {
    /// Starts electing on the current tokio runtime, with a fresh lease ID.
    pub fn start(client: BlobLeaseClient, timing: Timing, metrics: Option<Arc<Metrics>>) -> Self {
        let (became_leader, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            gate: Gate::default(),
            status: Mutex::new(ElectionStatus::default()),
            became_leader,
        });
        if let Some(m) = &metrics {
            m.set_leader(false);
        }
        let (stop, stop_rx) = oneshot::channel();
        let task = Campaign {
            client,
            lease_id: new_lease_id(),
            timing,
            shared: Arc::clone(&shared),
            metrics,
            leading: false,
            note: Note::Nothing,
            cooldown_until: None,
        };
        let task = tokio::spawn(task.run(stop_rx));
        Self {
            shared,
            stop: Some(stop),
            task: Some(task),
            timing,
        }
    }

    /// True while this replica may write.
    pub fn is_leader(&self) -> bool {
        self.shared.gate.is_open()
    }

    /// The gate as a closure for the reconciler: true while this replica may write.
    pub fn write_gate(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || shared.gate.is_open())
    }

    /// The election's state now.
    pub fn status(&self) -> ElectionStatus {
        let mut s = self.shared.status().clone();
        s.leader = self.shared.gate.is_open();
        s
    }

    /// The election's state as a closure (for `/readyz`).
    pub fn status_probe(&self) -> Arc<dyn Fn() -> ElectionStatus + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move || {
            let mut s = shared.status().clone();
            s.leader = shared.gate.is_open();
            s
        })
    }

    /// Changes each time this replica becomes leader.
    pub fn became_leader(&self) -> watch::Receiver<u64> {
        self.shared.became_leader.subscribe()
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// Closes the gate, stops the task and releases the lease if this replica held it
    /// (bounded by twice the request timeout).
    pub async fn shutdown(mut self) {
        self.shared.gate.close();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // A renewal in flight, then the release.
            let limit = self.timing.request_timeout * 2 + Duration::from_secs(1);
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Elector {
    fn drop(&mut self) {
        self.shared.gate.close();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The elector task's state.
struct Campaign {
    client: BlobLeaseClient,
    lease_id: String,
    timing: Timing,
    shared: Arc<Shared>,
    metrics: Option<Arc<Metrics>>,
    /// What this task last told the world (logs, metrics).
    leading: bool,
    /// What was logged last about a standby's attempts, to log each change once.
    note: Note,
    /// After losing the lease for certain, this replica does not try to acquire it again
    /// before this time, so that a standby takes over.
    cooldown_until: Option<Instant>,
}

/// The last thing logged about the election, so that repeats go to debug level.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Note {
    Nothing,
    Held,
    Error(String),
}

impl Campaign {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        tracing::info!(
            blob = %self.client.path(),
            lease_seconds = self.timing.lease.as_secs(),
            "Leader election: starting as standby."
        );
        loop {
            let wait = if self.shared.gate.is_open() {
                self.renew().await
            } else {
                if self.leading {
                    self.step_down(
                        "the lease could not be renewed in time; stopped writing before it can \
                         expire",
                    );
                }
                self.acquire().await
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop => break,
            }
        }
        self.shared.gate.close();
        if self.leading {
            self.leading = false;
            if let Some(m) = &self.metrics {
                m.set_leader(false);
            }
            match self.client.release(&self.lease_id).await {
                Ok(()) => {
                    tracing::info!(blob = %self.client.path(), "Leader election: released the lease.")
                }
                Err(e) => {
                    tracing::warn!(blob = %self.client.path(), "Leader election: could not release the lease (it expires by itself): {e}")
                }
            }
        }
    }

    fn warn_once(&mut self, message: String) {
        if self.note == Note::Error(message.clone()) {
            tracing::debug!(blob = %self.client.path(), "{message}");
        } else {
            tracing::warn!(blob = %self.client.path(), "{message}");
            self.note = Note::Error(message);
        }
    }

    fn step_down(&mut self, why: &str) {
        self.shared.gate.close();
        if self.leading {
            self.leading = false;
            tracing::warn!(blob = %self.client.path(), "Leader election: {why}; this replica is now a standby.");
            if let Some(m) = &self.metrics {
                m.leadership_change(false);
            }
        }
    }

    /// One acquire attempt; returns the time to wait before the next step.
    async fn acquire(&mut self) -> Duration {
        if let Some(until) = self.cooldown_until {
            if Instant::now() < until {
                // Let a standby take over; only check that storage is reachable.
                match self.client.lease_state().await {
                    Ok(_) => self.shared.contact(),
                    Err(e) => self.shared.failed(&e),
                }
                return self.timing.retry_every;
            }
            self.cooldown_until = None;
        }
        let sent = Instant::now();
        match self.client.acquire(&self.lease_id, self.timing.lease).await {
            Ok(Acquire::Acquired) => {
                self.shared
                    .gate
                    .open_until(sent + self.timing.lease - self.timing.margin);
                self.shared.contact();
                self.note = Note::Nothing;
                if !self.leading {
                    self.leading = true;
                    tracing::info!(
                        blob = %self.client.path(),
                        "Leader election: acquired the lease; this replica is now the leader and writes."
                    );
                    if let Some(m) = &self.metrics {
                        m.leadership_change(true);
                    }
                    self.shared.became_leader.send_modify(|n| *n += 1);
                }
                self.timing.renew_every.saturating_sub(sent.elapsed())
            }
            Ok(Acquire::Held(code)) => {
                self.shared.contact();
                if self.note != Note::Held {
                    tracing::info!(blob = %self.client.path(), code = %code, "Leader election: another replica holds the lease; standing by.");
                    self.note = Note::Held;
                }
                self.timing.retry_every
            }
            Err(e) => {
                self.shared.failed(&e);
                self.warn_once(format!(
                    "Leader election: cannot acquire the lease: {e}; standing by"
                ));
                self.timing.retry_every
            }
        }
    }

    /// One renewal; returns the time to wait before the next step.
    async fn renew(&mut self) -> Duration {
        let sent = Instant::now();
        match self.client.renew(&self.lease_id).await {
            Ok(()) => {
                self.shared
                    .gate
                    .open_until(sent + self.timing.lease - self.timing.margin);
                self.shared.contact();
                if std::mem::replace(&mut self.note, Note::Nothing) != Note::Nothing {
                    tracing::info!(blob = %self.client.path(), "Leader election: renewed the lease again.");
                }
                self.timing.renew_every.saturating_sub(sent.elapsed())
            }
            Err(e) if e.is_lease_lost() => {
                self.shared.failed(&e);
                self.step_down(&format!(
                    "lost the lease ({e}); stopped writing, and leaving the lease to another \
                     replica for {} s",
                    self.timing.cooldown().as_secs()
                ));
                self.cooldown_until = Some(Instant::now() + self.timing.cooldown());
                self.note = Note::Error(e.to_string());
                self.timing.retry_every
            }
            Err(e) => {
                self.shared.failed(&e);
                let left = self.shared.gate.remaining().unwrap_or_default();
                self.warn_once(format!(
                    "Leader election: cannot renew the lease: {e}; writing stops in {:.1} s \
                     unless a renewal succeeds",
                    left.as_secs_f64()
                ));
                // Try again soon, and once more right before the gate closes.
                self.timing.retry_every.min(left)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_renews_at_a_third_and_closes_the_gate_a_third_before_expiry() {
        let t = Timing::for_lease(Duration::from_secs(15));
        assert_eq!(t.renew_every, Duration::from_secs(5));
        assert_eq!(t.margin, Duration::from_secs(5));
        assert_eq!(t.retry_every, Duration::from_secs(1));
        assert_eq!(t.request_timeout, Duration::from_secs(3));
        let t = Timing::for_lease(Duration::from_secs(60));
        assert_eq!(t.retry_every, Duration::from_secs(4));
        assert_eq!(t.request_timeout, Duration::from_secs(10));
        assert!(t.request_timeout < t.margin);
    }

    #[test]
    fn the_gate_closes_by_itself_at_its_deadline() {
        let g = Gate::default();
        assert!(!g.is_open());
        g.open_until(Instant::now() + Duration::from_millis(50));
        assert!(g.is_open());
        assert!(g.remaining().is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!g.is_open());
        assert_eq!(g.remaining(), None);
        g.open_until(Instant::now() + Duration::from_secs(60));
        g.close();
        assert!(!g.is_open());
    }

    #[test]
    fn lease_ids_are_version_4_uuids() {
        let id = new_lease_id();
        assert_eq!(id.len(), 36);
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(
            parts[3].chars().next(),
            Some('8' | '9' | 'a' | 'b')
        ));
        assert_ne!(new_lease_id(), id);
    }
}
