//! vmss-sync: keeps load balancers pointed at the right Azure VMs.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view and the codemap.

// Library code returns errors instead of panicking on what comes from outside; the few
// calls that cannot fail carry an `#[allow]` saying why. Unit tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod azure;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod leader;
pub mod man;
pub mod metrics;
pub mod model;
pub mod net;
pub mod plan;
pub mod reconcile;
pub mod services;
pub mod target;
