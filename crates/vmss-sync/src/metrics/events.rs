//! The metrics of event-driven reconciles (issue 15): events by type and outcome, cycles
//! by trigger, the delay from an event's enqueue time to the write it caused, and the
//! event queue's read errors. Label values are fixed words.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::time::Duration;

/// Event types, as [`crate::events::EventType::label`] writes them, and `unreadable`.
pub const EVENT_TYPES: [&str; 8] = [
    "resource_write",
    "resource_delete",
    "resource_action",
    "created_or_updated",
    "deleted",
    "availability_status_changed",
    "other",
    "unreadable",
];
/// What became of an event.
pub const OUTCOMES: [&str; 4] = ["reconciled", "ignored", "malformed", "dequeued_too_often"];
/// Why a cycle ran.
pub const TRIGGERS: [&str; 5] = ["timer", "event", "follow_up", "reload", "leadership"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabels {
    trigger: &'static str,
}

/// The event metrics (cheap clones share the series).
#[derive(Clone, Debug)]
pub struct EventMetrics {
    events: Family<EventLabels, Counter>,
    cycles: Family<TriggerLabels, Counter>,
    delay: Histogram,
    queue_errors: Counter,
    queue_up: Gauge,
}

impl Default for EventMetrics {
    fn default() -> Self {
        EventMetrics {
            events: Family::default(),
            cycles: Family::default(),
            // 50 ms to ~7 min.
            delay: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            queue_errors: Counter::default(),
            queue_up: Gauge::default(),
        }
    }
}

impl EventMetrics {
    /// Registers every series (under the caller's prefix) and creates the fixed ones at 0.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "events",
            "Events read from the event queue, by type and outcome (reconciled, ignored: \
             nothing selected, malformed, dequeued_too_often)",
            self.events.clone(),
        );
        registry.register(
            "cycles_by_trigger",
            "Reconciles by what started them (timer, event, follow_up, reload, leadership); \
             event and follow_up reconciles cover only the upstreams concerned",
            self.cycles.clone(),
        );
        registry.register_with_unit(
            "event_to_write_delay",
            "From an event's enqueue time to the end of the reconcile that wrote for it",
            Unit::Seconds,
            self.delay.clone(),
        );
        registry.register(
            "event_queue_errors",
            "Failed reads and deletes of the event queue",
            self.queue_errors.clone(),
        );
        registry.register(
            "event_queue_up",
            "1 while the last read of the event queue worked (0 without an event queue)",
            self.queue_up.clone(),
        );
        for r#type in EVENT_TYPES {
            for outcome in OUTCOMES {
                self.events
                    .get_or_create(&EventLabels { r#type, outcome })
                    .inc_by(0);
            }
        }
        for trigger in TRIGGERS {
            self.cycles
                .get_or_create(&TriggerLabels { trigger })
                .inc_by(0);
        }
    }

    /// Counts one event (`type` from [`EVENT_TYPES`], `outcome` from [`OUTCOMES`]).
    pub fn event(&self, r#type: &'static str, outcome: &'static str) {
        self.events
            .get_or_create(&EventLabels { r#type, outcome })
            .inc();
    }

    /// Counts one cycle (`trigger` from [`TRIGGERS`]).
    pub fn cycle(&self, trigger: &'static str) {
        self.cycles.get_or_create(&TriggerLabels { trigger }).inc();
    }

    /// Records one event-to-write delay.
    pub fn delay(&self, d: Duration) {
        self.delay.observe(d.as_secs_f64());
    }

    /// Records a read (`ok`) or a failed read or delete.
    pub fn queue_read(&self, ok: bool) {
        self.queue_up.set(i64::from(ok));
        if !ok {
            self.queue_errors.inc();
        }
    }

    /// Counts a failed delete.
    pub fn queue_error(&self) {
        self.queue_errors.inc();
    }
}
