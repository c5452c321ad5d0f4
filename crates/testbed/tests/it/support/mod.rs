//! Helpers shared by the test modules (one copy, compiled once).

pub mod common;
