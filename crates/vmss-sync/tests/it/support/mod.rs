//! Helpers shared by the test modules (one copy, compiled once).
//!
//! Ports: none is chosen by binding a port and releasing it before its user binds it again.
//! - In-process servers (the testbed, `targets_common::Backends::start_free`, the fake
//!   servers of single tests) bind port 0 and keep their listener.
//! - The daemon binds its admin endpoint on port 0 and the tests read the address back
//!   from its log (`common`'s daemon guard, `admin_addr`); Prometheus (`ops_metrics`) likewise
//!   (`--web.listen-address=127.0.0.1:0`, its "Listening on" log line).
//! - HAProxy and nginx (`targets_common::Haproxy`, `Nginx`) get a listener the test bound
//!   on port 0 as an inherited descriptor, their standard input (`ports::ChildListener`;
//!   the workspace forbids the `unsafe` of clearing close-on-exec on another descriptor):
//!   HAProxy through `bind fd@0`, nginx through `NGINX="0;"` (its binary-upgrade
//!   hand-over) with a `listen` line naming the same address. Both keep it across
//!   their reloads (HAProxy's master-worker `USR2`, `nginx -s reload`); the test keeps its
//!   copy until the guard drops, so the port stays taken while the guard lives.
//! - A port where connections must be refused (`azure_auth`'s IMDS, `errors_named`'s NGINX
//!   Plus endpoint, the IMDS of every spawned daemon) is `ports::refused_addr`: a socket
//!   bound for the whole run and never listening (a SYN gets a reset), so no test can
//!   listen there meanwhile.
//! - Azurite (`azurite`, blob or queue) is started on port 0 and the tests read the port
//!   it bound from its output.

pub mod azurite;
pub mod common;
pub mod events_common;
pub mod ops_common;
pub mod pki;
pub mod ports;
pub mod targets_common;
