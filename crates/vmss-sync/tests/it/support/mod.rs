//! Helpers shared by the test modules (one copy, compiled once).

pub mod common;
pub mod events_common;
pub mod ops_common;
pub mod targets_common;
