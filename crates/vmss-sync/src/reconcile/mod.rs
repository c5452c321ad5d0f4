//! One full, idempotent reconcile of every upstream, in two phases.
//!
//! A cycle ([`Reconciler::reconcile`]) reads every scale set once, however many upstreams
//! name it (discovery), then:
//!
//! - **expands templates** (`templates.rs`): an upstream with `services` becomes one
//!   upstream per service its selection found, plus one per backend of a vanished service
//!   that its target still holds (emptied, never deleted);
//! - **prepares** every upstream concurrently, at most 8 at a time (`cycle.rs`): an
//!   upstream whose target failed the startup check is checked again first, and while it
//!   still fails it is a failed outcome with the condition `unusable`; otherwise its target
//!   is observed, the plan made against what was found (the servers of sets whose read was
//!   judged failed are kept as they are), the safety guard applied, and the write gate
//!   asked. Nothing is written in this phase;
//! - **applies** the plans (`apply.rs`), grouped by target: one `apply_batch` for a target
//!   that batches (the Data Plane API: one transaction per cycle), else one `apply` per
//!   upstream; the write gate is asked again just before each batch or `apply`;
//! - **finishes** each outcome (`outcome.rs`): what the writes did, the drain clocks
//!   (`drain.rs`) started or forgotten, the changes and errors logged in nginx-asg-sync's
//!   words. The report lists outcomes in configuration order, a template's services after
//!   it.
//!
//! A failure in one upstream never touches another, and an upstream whose discovery failed
//! in any way is left untouched for the cycle. [`Reconciler::reconcile_selected`] runs
//! the same phases for only the upstreams whose selection an event concerns, with their
//! instance views read now; `Mode::DryRun` plans and writes nothing.
//!
//! Names: a *target* is what holds upstreams, a [`crate::target::Target`]
//! ([`UpstreamSpec::target`]; [`UpstreamOutcome::target`] is its kind); an *upstream* is
//! one upstream in it, a [`crate::target::UpstreamRef`] ([`UpstreamSpec::upstream`]).

mod apply;
mod cycle;
mod drain;
mod outcome;
mod specs;
mod templates;

pub use apply::WriteGate;
pub use cycle::{Mode, Reconciler, StartupProblem};
pub use outcome::{CycleReport, UpstreamOutcome, RECHECKED};
pub use specs::{selection_of, UpstreamSpec};
