//! One full, idempotent reconcile of every upstream.
//!
//! A cycle reads every scale set once (however many upstreams name it), then, for each
//! upstream independently and concurrently: observes the target, plans, applies the
//! safety guard, and applies. A failure in one upstream never touches another, and an
//! upstream whose discovery failed in any way is left untouched for the cycle.
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
pub use outcome::{CycleReport, UpstreamOutcome};
pub use specs::{selection_of, UpstreamSpec};
