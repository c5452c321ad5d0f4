//! Helpers shared by the test modules (one copy, compiled once).
//!
//! Ports. In-process servers (the testbed, `targets_common::Backends::start_free`, the
//! fake servers of single tests) bind port 0 and keep their listener, so no other test can
//! take their port; the daemon binds its admin endpoint on port 0 and the tests read the
//! address back from its log (`ops_common::admin_addr`); Azurite (`azurite`, blob or
//! queue) is started on port 0 and the tests read the port it bound from its output. What is still racy: ports for
//! separate processes that take a port number, not a socket (HAProxy and nginx frontends
//! from `targets_common::free_port`, Prometheus in `ops_metrics`): the port is found by binding
//! port 0 and released before the child binds it, so another socket may take it in between
//! (rare: the kernel hands out ephemeral ports in turn). `azure_auth`'s `dead_url` and
//! `errors_named`'s refused NGINX Plus endpoint release a port on purpose (nobody may
//! listen there); another test could start listening on it meanwhile.

pub mod azurite;
pub mod common;
pub mod events_common;
pub mod ops_common;
pub mod pki;
pub mod targets_common;
