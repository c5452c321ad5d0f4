//! The integration tests of `vmss_sync`, as one test binary: one link per build instead
//! of one per test file. Each former `tests/<name>.rs` is the module `<name>` here
//! (`cargo test -p vmss-sync --test it <name>::` runs one); shared helpers are in
//! `support/`.

mod support;

mod azure_arm;
mod azure_auth;
mod azure_targets_lb_pool;
mod azure_targets_route_server;
mod chaos_soak;
mod config_errors;
mod config_fuzz;
mod config_limits;
mod conformance;
mod discovery_config;
mod discovery_drain;
mod discovery_flexible;
mod discovery_health;
mod discovery_partial_reads;
mod discovery_read_floor;
mod discovery_selection;
mod discovery_services;
mod discovery_throttle;
mod docs;
mod e2e_daemon;
mod e2e_once;
mod e2e_signals;
mod errors_named;
mod events_daemon;
mod events_fleet;
mod events_queue;
mod events_set_reads;
mod layering;
mod licenses;
mod ops_config;
mod ops_kubernetes;
mod ops_leader;
mod ops_logs;
mod ops_metrics;
mod ops_packaging;
mod ops_permissions;
mod reconcile_phases;
mod scale_in_window;
mod targets_config;
mod targets_dataplane;
mod targets_haproxy;
mod targets_mixed;
mod targets_nginx;
mod targets_unusable;
mod tls_trust;
