//! Thin typed Azure client: credentials ([`auth`]) and the ARM client ([`arm`]).
//! No Azure SDK crates: reqwest + serde only.

pub mod arm;
pub mod auth;
pub mod json;
pub mod models;
pub mod network;
mod retry;
pub mod throttle;

pub use arm::{ArmClient, ArmError, ArmOptions, ArmStats};
pub use auth::{default_credential, AccessToken, AuthError, Env, StaticToken, TokenCredential};
pub use throttle::ReadBudget;
