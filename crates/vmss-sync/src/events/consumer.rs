//! The queue consumer: a task that reads the event queue while this replica may write
//! (the leader, or the only replica), hands the events of each read to the daemon as one
//! [`Batch`] (a burst is one reconcile), and deletes the messages only once the daemon says
//! the reconcile they triggered has finished. A crash or stop in between leaves them in
//! the queue: they come back after the visibility timeout and trigger a harmless
//! reconcile. Malformed messages and messages handed out too often are deleted at once,
//! with a warning, and counted. A queue that cannot be read is reported while polling goes
//! on (the timer's cycles do not depend on it).

use super::queue::{QueueClient, QueueMessage, MAX_BATCH};
use super::{parse_message, Event};
use crate::metrics::events::EventMetrics;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};

/// How the consumer reads.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// How long a message handed out stays hidden.
    pub visibility_timeout: Duration,
    /// A message handed out more often than this is deleted with a warning.
    pub max_dequeue_count: u32,
    /// Pause between reads of an empty queue (and while not leader).
    pub poll_interval: Duration,
    /// After a read that found messages, how long to wait for more of the same burst.
    pub coalesce: Duration,
}

/// The events of one read, for one reconcile.
#[derive(Debug)]
pub struct Batch {
    /// The events (known and unknown types; the daemon routes them).
    pub events: Vec<Event>,
    /// When each message was put in the queue (for the event-to-write delay).
    pub enqueued: Vec<SystemTime>,
    /// Send when the reconcile finished (whatever its outcome): the messages are then
    /// deleted. Dropped unsent: they are left to come back.
    pub done: oneshot::Sender<()>,
}

/// What the consumer has done, for metrics, logs and `/readyz`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages read, by outcome: `handled`, `malformed`, `dequeued_too_often`.
    pub messages: BTreeMap<&'static str, u64>,
    /// Messages deleted.
    pub deleted: u64,
    /// Failed reads and deletes.
    pub errors: u64,
    /// The last read's error, None once a read works again.
    pub last_error: Option<String>,
    /// Since when the queue has been read without a break: every read since this
    /// instant's succeeded, while this replica may consume, and no message was deleted
    /// without the reconcile it asked for (a malformed one, or one handed out too often).
    /// Every event enqueued since then reaches the daemon. None while reads fail.
    pub watched_since: Option<Instant>,
    /// When the last read succeeded.
    pub last_read: Option<Instant>,
}

/// A running consumer.
pub struct Consumer {
    /// Batches for the daemon.
    pub batches: mpsc::Receiver<Batch>,
    stats: Arc<Mutex<ConsumerStats>>,
    task: tokio::task::JoinHandle<()>,
}

impl Consumer {
    /// Starts reading `client`'s queue whenever `may_consume` says so.
    pub fn start(
        client: QueueClient,
        opts: ConsumerOptions,
        may_consume: Arc<dyn Fn() -> bool + Send + Sync>,
        metrics: Option<EventMetrics>,
    ) -> Consumer {
        let (tx, rx) = mpsc::channel(1);
        let stats = Arc::new(Mutex::new(ConsumerStats::default()));
        let task = tokio::spawn(run(
            client,
            opts,
            may_consume,
            tx,
            Arc::clone(&stats),
            metrics,
        ));
        Consumer {
            batches: rx,
            stats,
            task,
        }
    }

    /// The last read's error (None while reads work), for `/readyz`.
    pub fn error_probe(&self) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
        let stats = Arc::clone(&self.stats);
        Arc::new(move || {
            stats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last_error
                .clone()
        })
    }

    /// Since when the queue has been read without a break, provided its last read
    /// succeeded less than `max_gap` ago: every change of a scale set since then (a write
    /// to the set raises an event) reaches the daemon as an event. None otherwise (reads
    /// fail, the consumer is stuck, or this replica does not consume).
    pub fn watched_since(&self, max_gap: Duration) -> Option<Instant> {
        let s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let recent = s.last_read.is_some_and(|t| t.elapsed() < max_gap);
        s.watched_since.filter(|_| recent)
    }

    /// What it has done so far.
    pub fn stats(&self) -> ConsumerStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops reading. Messages handed to the daemon and not confirmed are left to come
    /// back after their visibility timeout.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn note(stats: &Mutex<ConsumerStats>, f: impl FnOnce(&mut ConsumerStats)) {
    f(&mut stats.lock().unwrap_or_else(|e| e.into_inner()));
}

async fn delete_all(
    client: &QueueClient,
    msgs: &[QueueMessage],
    stats: &Mutex<ConsumerStats>,
    metrics: Option<&EventMetrics>,
) {
    for m in msgs {
        match client.delete_message(m).await {
            Ok(()) => note(stats, |s| s.deleted += 1),
            // Gone already, or handed out again since: either way not ours to delete.
            Err(e) if matches!(e.status(), Some(404 | 400)) => {
                tracing::debug!(queue = client.name(), message = %m.id, "Event message already gone or handed out again: {e}");
            }
            Err(e) => {
                note(stats, |s| s.errors += 1);
                if let Some(m) = metrics {
                    m.queue_error();
                }
                tracing::warn!(queue = client.name(), message = %m.id, "Could not delete an event message (it comes back after the visibility timeout and triggers one more reconcile): {e}");
            }
        }
    }
}

async fn run(
    client: QueueClient,
    opts: ConsumerOptions,
    may_consume: Arc<dyn Fn() -> bool + Send + Sync>,
    tx: mpsc::Sender<Batch>,
    stats: Arc<Mutex<ConsumerStats>>,
    metrics: Option<EventMetrics>,
) {
    let metrics = metrics.as_ref();
    let mut failures: u32 = 0;
    loop {
        if !may_consume() {
            // Another replica may consume meanwhile: the events it takes never come here.
            note(&stats, |s| s.watched_since = None);
            tokio::time::sleep(opts.poll_interval).await;
            continue;
        }
        let asked = Instant::now();
        let mut msgs = match client
            .get_messages(MAX_BATCH, opts.visibility_timeout)
            .await
        {
            Ok(m) => {
                if failures > 0 {
                    tracing::info!(queue = client.name(), "The event queue can be read again.");
                }
                failures = 0;
                note(&stats, |s| {
                    s.last_error = None;
                    s.watched_since.get_or_insert(asked);
                    s.last_read = Some(Instant::now());
                });
                if let Some(mx) = metrics {
                    mx.queue_read(true);
                }
                m
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let text = e.to_string();
                if failures == 1 {
                    tracing::warn!(queue = client.name(), "Cannot read the event queue; polling goes on, and reading is retried: {text}");
                } else {
                    tracing::debug!(
                        queue = client.name(),
                        failures,
                        "Cannot read the event queue: {text}"
                    );
                }
                note(&stats, |s| {
                    s.errors += 1;
                    s.last_error = Some(text);
                    s.watched_since = None;
                });
                if let Some(mx) = metrics {
                    mx.queue_read(false);
                }
                let backoff = opts
                    .poll_interval
                    .saturating_mul(failures.min(30))
                    .min(Duration::from_secs(30));
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        if msgs.is_empty() {
            tokio::time::sleep(opts.poll_interval).await;
            continue;
        }
        // A burst (a scale-out writes the set and each VM): one reconcile for all of it.
        if !opts.coalesce.is_zero() {
            tokio::time::sleep(opts.coalesce).await;
            if let Ok(more) = client
                .get_messages(MAX_BATCH, opts.visibility_timeout)
                .await
            {
                msgs.extend(more);
            }
        }
        let mut drop_now = Vec::new();
        let mut handled = Vec::new();
        let mut events = Vec::new();
        let mut enqueued = Vec::new();
        for m in msgs {
            if m.dequeue_count > opts.max_dequeue_count {
                tracing::warn!(queue = client.name(), message = %m.id, dequeue_count = m.dequeue_count, "An event message was handed out {} times without being handled: deleting it.", m.dequeue_count);
                note(&stats, |s| {
                    *s.messages.entry("dequeued_too_often").or_default() += 1
                });
                if let Some(mx) = metrics {
                    let kind = parse_message(&m.text)
                        .ok()
                        .and_then(|e| e.first().map(|e| e.kind.label()))
                        .unwrap_or("unreadable");
                    mx.event(kind, "dequeued_too_often");
                }
                drop_now.push(m);
                continue;
            }
            match parse_message(&m.text) {
                Ok(evs) => {
                    note(&stats, |s| *s.messages.entry("handled").or_default() += 1);
                    events.extend(evs);
                    if let Some(t) = m.inserted {
                        enqueued.push(t);
                    }
                    handled.push(m);
                }
                Err(e) => {
                    tracing::warn!(queue = client.name(), message = %m.id, "Deleting an event message that cannot be read: {e}");
                    note(&stats, |s| *s.messages.entry("malformed").or_default() += 1);
                    if let Some(mx) = metrics {
                        mx.event("unreadable", "malformed");
                    }
                    drop_now.push(m);
                }
            }
        }
        if !drop_now.is_empty() {
            // Whatever these messages were to say was not acted on: nothing read before
            // now may stand for a later read.
            note(&stats, |s| {
                if s.watched_since.is_some() {
                    s.watched_since = Some(Instant::now());
                }
            });
        }
        delete_all(&client, &drop_now, &stats, metrics).await;
        if handled.is_empty() {
            continue;
        }
        let (done_tx, done_rx) = oneshot::channel();
        let batch = Batch {
            events,
            enqueued,
            done: done_tx,
        };
        if tx.send(batch).await.is_err() {
            return;
        }
        if done_rx.await.is_ok() {
            delete_all(&client, &handled, &stats, metrics).await;
        }
    }
}
