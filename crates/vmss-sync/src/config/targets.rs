//! The `targets:` section: named load balancers that upstreams point at with `target:`.
//!
//! ```yaml
//! targets:
//!   edge:
//!     type: haproxy_runtime
//!     address: /run/haproxy/admin.sock
//! upstreams:
//!   - name: web
//!     virtual_machine_scale_set: web-vmss
//!     port: 80
//!     kind: http
//!     target: edge
//! ```
//!
//! An upstream without `target:` goes to the NGINX Plus API of the top-level
//! `api_endpoint`, so nginx-asg-sync's files keep working unchanged.

use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

/// One entry of `targets:`.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetConfig {
    /// The key under `targets:`; upstreams name it in `target:`.
    pub name: String,
    /// Line of the entry in the file.
    pub line: usize,
    /// What kind of target, with its settings.
    pub spec: TargetSpec,
}

/// A target's type and settings.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetSpec {
    /// `type: nginx_plus`: another NGINX Plus API (the top-level `api_endpoint` is one too).
    NginxPlus(NginxPlusTarget),
    /// `type: haproxy_runtime`: HAProxy's Runtime API (stats socket).
    HaproxyRuntime(HaproxyRuntimeTarget),
    /// `type: haproxy_dataplane`: the HAProxy Data Plane API.
    HaproxyDataplane(HaproxyDataplaneTarget),
    /// `type: nginx_file`: open-source NGINX through a rendered file and a reload.
    NginxFile(NginxFileTarget),
    /// `type: azure_route_server`: BGP peerings of an Azure Route Server.
    AzureRouteServer(RouteServerTarget),
    /// `type: azure_lb_pool`: an IP-based backend pool of a Standard Load Balancer.
    AzureLbPool(LbPoolTarget),
}

impl TargetSpec {
    /// The `type:` word.
    pub fn type_name(&self) -> &'static str {
        match self {
            TargetSpec::NginxPlus(_) => "nginx_plus",
            TargetSpec::HaproxyRuntime(_) => "haproxy_runtime",
            TargetSpec::HaproxyDataplane(_) => "haproxy_dataplane",
            TargetSpec::NginxFile(_) => "nginx_file",
            TargetSpec::AzureRouteServer(_) => "azure_route_server",
            TargetSpec::AzureLbPool(_) => "azure_lb_pool",
        }
    }
}

/// `type: nginx_plus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxPlusTarget {
    /// NGINX Plus API base URL, as the top-level `api_endpoint`.
    pub api_endpoint: url::Url,
    /// Headers sent with every request (secrets).
    pub custom_headers: Vec<(String, Secret)>,
    /// `ca_file`: PEM certificates trusted, besides the system trust store.
    pub ca_file: Option<PathBuf>,
}

/// Where HAProxy's stats socket listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeAddress {
    /// A unix socket path (`/run/haproxy/admin.sock`, or `unix:/…`, `unix@/…`).
    Unix(PathBuf),
    /// `host:port` of a TCP stats socket (`ipv4@…`, `tcp:…` prefixes accepted).
    Tcp(String),
}

impl std::fmt::Display for RuntimeAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuntimeAddress::Unix(p) => write!(f, "unix:{}", p.display()),
            RuntimeAddress::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// How the HAProxy Runtime API target holds servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HaproxyServerMode {
    /// Slots when the backend has `server-template` slots with the prefix, else dynamic.
    Auto,
    /// `add server` / `del server` (HAProxy 2.6 and later, dynamic balance algorithm).
    Dynamic,
    /// `server-template` slots filled with `set server … addr` and freed with `state maint`.
    Slots,
}

/// `type: haproxy_runtime`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyRuntimeTarget {
    /// The stats socket (level admin).
    pub address: RuntimeAddress,
    /// Dynamic servers, slots, or chosen per backend.
    pub mode: HaproxyServerMode,
    /// Names of the servers vmss-sync manages start with this (default `vmss-`); other
    /// servers are never touched.
    pub server_prefix: String,
    /// Add dynamic servers with `check` and `enable health`.
    pub check: bool,
    /// Bound on connecting and on each reply.
    pub timeout: Duration,
}

/// Data Plane API major version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataplaneApiVersion {
    /// `/v2/…` paths (servers addressed with `?backend=`).
    V2,
    /// `/v3/…` paths (servers under `/backends/{name}/servers`).
    V3,
}

/// How server slots grow past `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotGrowth {
    /// `base + ceil((count - base) × growth_factor)`.
    Linear,
    /// The smallest `ceil(base × growth_factor^n)` that holds `count`.
    Exponential,
}

/// `server_slots:` of a Data Plane API target (the HAProxy daemon's keys and defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ServerSlots {
    /// Slots every managed backend keeps at least (default 10).
    pub base: u32,
    /// Default 1.5.
    pub growth_factor: f64,
    /// Default linear.
    pub growth_type: SlotGrowth,
}

impl Default for ServerSlots {
    fn default() -> Self {
        ServerSlots {
            base: 10,
            growth_factor: 1.5,
            growth_type: SlotGrowth::Linear,
        }
    }
}

/// `type: haproxy_dataplane`.
#[derive(Clone, Debug, PartialEq)]
pub struct HaproxyDataplaneTarget {
    /// Base URL of the API, without the `/v3` (https, or http to loopback only).
    pub url: url::Url,
    /// v3 (default) or v2.
    pub api_version: DataplaneApiVersion,
    /// Basic auth user.
    pub username: String,
    /// Basic auth password (secret).
    pub password: Secret,
    /// Slot servers are named `{server_prefix}{n}` (default `vmss-`).
    pub server_prefix: String,
    /// Slot allocation.
    pub server_slots: ServerSlots,
    /// Active slots get `check: enabled`.
    pub check: bool,
    /// Create a backend that does not exist (mode from the upstream's kind, `roundrobin`)
    /// instead of reporting it. Default false.
    pub create_backends: bool,
    /// The balance algorithm of the backends it creates (`roundrobin`, or another that
    /// takes no parameter).
    pub balance: String,
    /// Bound on every request.
    /// `ca_file`: PEM certificates trusted, besides the system trust store.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// `type: nginx_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NginxFileTarget {
    /// The file the upstream blocks are rendered to (absolute).
    pub path: PathBuf,
    /// Validation command (argv), default `nginx -t`.
    pub validate_command: Vec<String>,
    /// Reload command (argv), default `nginx -s reload`.
    pub reload_command: Vec<String>,
    /// Bound on each command.
    pub timeout: Duration,
}

/// `type: azure_route_server`: one BGP peering (`virtualHubs/{hub}/bgpConnections`) per
/// instance, named `{name_prefix}{ip with dashes}`; the port of the upstream is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteServerTarget {
    /// Subscription of the Route Server.
    pub subscription: String,
    /// Its resource group.
    pub resource_group: String,
    /// The Route Server (a `virtualHubs` resource) name.
    pub virtual_hub: String,
    /// ASN of the appliances.
    pub peer_asn: u32,
    /// Peerings whose names start with this are vmss-sync's (default `vmss-sync-`); no
    /// other peering is ever changed, deleted or counted as ours.
    pub name_prefix: String,
    /// Peerings the Route Server holds at most, people's included (default 8).
    pub max_peerings: u32,
    /// Bound on one write and its long-running operation (default 10m).
    pub operation_timeout: Duration,
}

/// `type: azure_lb_pool`: the addresses of an IP-based backend pool, named
/// `{name_prefix}{ip with dashes}`; the port of the upstream is ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbPoolTarget {
    /// Subscription of the load balancer.
    pub subscription: String,
    /// Its resource group.
    pub resource_group: String,
    /// The load balancer name.
    pub load_balancer: String,
    /// The backend pool name.
    pub backend_pool: String,
    /// Resource id of the virtual network the addresses are in.
    pub virtual_network: String,
    /// Addresses whose names start with this are vmss-sync's (default `vmss-sync-`).
    pub name_prefix: String,
    /// Bound on one write and its long-running operation (default 5m).
    pub operation_timeout: Duration,
}
