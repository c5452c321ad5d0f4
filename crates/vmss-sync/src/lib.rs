//! vmss-sync: keeps load balancers pointed at the right Azure VMs.
//!
//! See ARCHITECTURE.md at the repository root for the bird's-eye view and the codemap.

pub mod admin;
pub mod azure;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod discovery;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod net;
pub mod plan;
pub mod reconcile;
pub mod services;
pub mod target;
pub mod window;
