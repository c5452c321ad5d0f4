//! The integration tests of the testbed, as one test binary (one link per build).
//! Each former `tests/<name>.rs` is the module `<name>` here; shared helpers are in
//! `support/`.

mod support;

mod arm;
mod azure_examples;
mod binary;
mod chaos;
mod faults;
mod fleet_lifecycle;
mod nginx;
mod tokens;
