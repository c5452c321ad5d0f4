//! Keys of the `targets:` section and of `upstreams[].target`. A child module of `schema`,
//! so it parses with the same context, slots and messages as the other keys.
//!
//! Each target is a mapping with a `type`; the type picks the table of keys it accepts, so
//! an unknown key gets a did-you-mean among that type's own keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::super::targets::{
    DataplaneApiVersion, HaproxyDataplaneTarget, HaproxyRuntimeTarget, HaproxyServerMode,
    LbPoolTarget, NginxFileTarget, NginxPlusTarget, RouteServerTarget, RuntimeAddress, ServerSlots,
    SlotGrowth, TargetConfig, TargetSpec,
};
use super::super::{Secret, UpstreamConfig, UpstreamKind};
use super::substitute;
use super::yaml::{Node, NodeKind, Pos};
use super::{
    did_you_mean, field, is_loopback, parse_int, redact_userinfo, Cx, Field, Section, Slot,
};

/// Default prefix of the names of the servers vmss-sync manages in HAProxy.
pub(crate) const DEFAULT_SERVER_PREFIX: &str = "vmss-";
/// Default bound on one target operation.
const DEFAULT_TARGET_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on the validation and reload commands of `nginx_file`.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_PREFIX_LEN: usize = 32;
/// Default prefix of the names of the peerings and pool addresses vmss-sync manages.
pub(crate) const DEFAULT_AZURE_NAME_PREFIX: &str = "vmss-sync-";
/// Route Server's documented peer limit.
const DEFAULT_MAX_PEERINGS: u32 = 8;
const DEFAULT_ROUTE_SERVER_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_LB_POOL_TIMEOUT: Duration = Duration::from_secs(300);
/// ASNs Azure reserves; Route Server refuses peers with them.
const RESERVED_ASNS: &[u32] = &[8074, 8075, 12076, 65515, 65516, 65517, 65518, 65519, 65520];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TargetType {
    NginxPlus,
    HaproxyRuntime,
    HaproxyDataplane,
    NginxFile,
    AzureRouteServer,
    AzureLbPool,
}

const TARGET_TYPES: &[(&str, TargetType)] = &[
    ("haproxy_runtime", TargetType::HaproxyRuntime),
    ("haproxy_dataplane", TargetType::HaproxyDataplane),
    ("nginx_file", TargetType::NginxFile),
    ("nginx_plus", TargetType::NginxPlus),
    ("azure_route_server", TargetType::AzureRouteServer),
    ("azure_lb_pool", TargetType::AzureLbPool),
];

const MODES: &[(&str, HaproxyServerMode)] = &[
    ("auto", HaproxyServerMode::Auto),
    ("dynamic", HaproxyServerMode::Dynamic),
    ("slots", HaproxyServerMode::Slots),
];

const API_VERSIONS: &[(&str, DataplaneApiVersion)] = &[
    ("v3", DataplaneApiVersion::V3),
    ("v2", DataplaneApiVersion::V2),
];

/// `balance` of backends created through the Data Plane API: the algorithms that take no
/// parameter (the others need settings vmss-sync does not write).
const BALANCE_ALGORITHMS: &[(&str, &str)] = &[
    ("roundrobin", "roundrobin"),
    ("static-rr", "static-rr"),
    ("leastconn", "leastconn"),
    ("first", "first"),
    ("source", "source"),
    ("uri", "uri"),
    ("random", "random"),
];

const GROWTH_TYPES: &[(&str, SlotGrowth)] = &[
    ("linear", SlotGrowth::Linear),
    ("exponential", SlotGrowth::Exponential),
];

#[derive(Default)]
pub(super) struct TargetBuilder {
    api_endpoint: Slot<Url>,
    custom_headers: Slot<Vec<(String, Secret)>>,
    address: Slot<RuntimeAddress>,
    mode: Slot<HaproxyServerMode>,
    server_prefix: Slot<String>,
    check: Slot<bool>,
    create_backends: Slot<bool>,
    balance: Slot<&'static str>,
    timeout: Slot<Duration>,
    url: Slot<Url>,
    api_version: Slot<DataplaneApiVersion>,
    username: Slot<String>,
    password: Slot<Secret>,
    server_slots: Slot<ServerSlots>,
    path: Slot<PathBuf>,
    validate_command: Slot<Vec<String>>,
    reload_command: Slot<Vec<String>>,
    subscription: Slot<String>,
    resource_group: Slot<String>,
    virtual_hub: Slot<String>,
    peer_asn: Slot<u32>,
    name_prefix: Slot<String>,
    max_peerings: Slot<u32>,
    operation_timeout: Slot<Duration>,
    load_balancer: Slot<String>,
    backend_pool: Slot<String>,
    virtual_network: Slot<String>,
    ca_file: Slot<PathBuf>,
}

/// `type` is read before the table is chosen.
fn type_key(_: &mut Cx<'_>, _: &Node, _: &str, _: &mut TargetBuilder) {}

#[rustfmt::skip]
const NGINX_PLUS_FIELDS: &[Field<TargetBuilder>] = &[
    field("type", type_key),
    field("api_endpoint", |cx, n, p, b| b.api_endpoint = cx.url(n, p)),
    field("custom_headers", |cx, n, p, b| b.custom_headers = cx.headers(n, p)),
    field("ca_file", |cx, n, p, b| b.ca_file = cx.ca_file(n, p)),
];

#[rustfmt::skip]
const HAPROXY_RUNTIME_FIELDS: &[Field<TargetBuilder>] = &[
    field("type", type_key),
    field("address", |cx, n, p, b| b.address = cx.runtime_address(n, p)),
    field("mode", |cx, n, p, b| b.mode = cx.one_of(n, p, MODES)),
    field("server_prefix", |cx, n, p, b| b.server_prefix = cx.server_prefix(n, p)),
    field("check", |cx, n, p, b| b.check = cx.boolean(n, p)),
    field("timeout", |cx, n, p, b| b.timeout = cx.go_duration(n, p)),
];

#[rustfmt::skip]
const HAPROXY_DATAPLANE_FIELDS: &[Field<TargetBuilder>] = &[
    field("type", type_key),
    field("url", |cx, n, p, b| b.url = cx.url(n, p)),
    field("api_version", |cx, n, p, b| b.api_version = cx.one_of(n, p, API_VERSIONS)),
    field("username", |cx, n, p, b| b.username = cx.string(n, p)),
    field("password", |cx, n, p, b| b.password = cx.password(n, p)),
    field("server_prefix", |cx, n, p, b| b.server_prefix = cx.server_prefix(n, p)),
    field("server_slots", |cx, n, p, b| b.server_slots = cx.server_slots(n, p)),
    field("check", |cx, n, p, b| b.check = cx.boolean(n, p)),
    field("create_backends", |cx, n, p, b| b.create_backends = cx.boolean(n, p)),
    field("balance", |cx, n, p, b| b.balance = cx.one_of(n, p, BALANCE_ALGORITHMS)),
    field("timeout", |cx, n, p, b| b.timeout = cx.go_duration(n, p)),
    field("ca_file", |cx, n, p, b| b.ca_file = cx.ca_file(n, p)),
];

#[rustfmt::skip]
const NGINX_FILE_FIELDS: &[Field<TargetBuilder>] = &[
    field("type", type_key),
    field("path", |cx, n, p, b| b.path = cx.absolute_path(n, p)),
    field("validate_command", |cx, n, p, b| b.validate_command = cx.command(n, p)),
    field("reload_command", |cx, n, p, b| b.reload_command = cx.command(n, p)),
    field("timeout", |cx, n, p, b| b.timeout = cx.go_duration(n, p)),
];

#[rustfmt::skip]
const ROUTE_SERVER_FIELDS: &[Field<TargetBuilder>] = &[
    field("type", type_key),
    field("subscription", |cx, n, p, b| b.subscription = cx.azure_name(n, p)),
    field("resource_group", |cx, n, p, b| b.resource_group = cx.azure_name(n, p)),
    field("virtual_hub", |cx, n, p, b| b.virtual_hub = cx.azure_name(n, p)),
    field("peer_asn", |cx, n, p, b| b.peer_asn = cx.peer_asn(n, p)),
    field("name_prefix", |cx, n, p, b| b.name_prefix = cx.name_prefix(n, p)),
    field("max_peerings", |cx, n, p, b| b.max_peerings = cx.count(n, p)),
    field("operation_timeout", |cx, n, p, b| b.operation_timeout = cx.go_duration(n, p)),
];

#[rustfmt::skip]
const LB_POOL_FIELDS: &[Field<TargetBuilder>] = &[
    field("type", type_key),
    field("subscription", |cx, n, p, b| b.subscription = cx.azure_name(n, p)),
    field("resource_group", |cx, n, p, b| b.resource_group = cx.azure_name(n, p)),
    field("load_balancer", |cx, n, p, b| b.load_balancer = cx.azure_name(n, p)),
    field("backend_pool", |cx, n, p, b| b.backend_pool = cx.azure_name(n, p)),
    field("virtual_network", |cx, n, p, b| b.virtual_network = cx.vnet_id(n, p)),
    field("name_prefix", |cx, n, p, b| b.name_prefix = cx.name_prefix(n, p)),
    field("operation_timeout", |cx, n, p, b| b.operation_timeout = cx.go_duration(n, p)),
];

#[derive(Default)]
pub(super) struct SlotsBuilder {
    base: Slot<u32>,
    growth_factor: Slot<f64>,
    growth_type: Slot<SlotGrowth>,
}

#[rustfmt::skip]
const SLOTS_FIELDS: &[Field<SlotsBuilder>] = &[
    field("base", |cx, n, p, b| b.base = cx.count(n, p)),
    field("growth_factor", |cx, n, p, b| b.growth_factor = cx.growth_factor(n, p)),
    field("growth_type", |cx, n, p, b| b.growth_type = cx.one_of(n, p, GROWTH_TYPES)),
];

fn fields_of(t: TargetType) -> &'static [Field<TargetBuilder>] {
    match t {
        TargetType::NginxPlus => NGINX_PLUS_FIELDS,
        TargetType::HaproxyRuntime => HAPROXY_RUNTIME_FIELDS,
        TargetType::HaproxyDataplane => HAPROXY_DATAPLANE_FIELDS,
        TargetType::NginxFile => NGINX_FILE_FIELDS,
        TargetType::AzureRouteServer => ROUTE_SERVER_FIELDS,
        TargetType::AzureLbPool => LB_POOL_FIELDS,
    }
}

/// Every key any target type accepts (for "this key belongs to another type" hints).
pub(super) fn all_target_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = [
        NGINX_PLUS_FIELDS,
        HAPROXY_RUNTIME_FIELDS,
        HAPROXY_DATAPLANE_FIELDS,
        NGINX_FILE_FIELDS,
        ROUTE_SERVER_FIELDS,
        LB_POOL_FIELDS,
    ]
    .iter()
    .flat_map(|t| t.iter().map(|f| f.key))
    .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// One `upstreams[i].target` as written, with its position (for reference checks).
#[derive(Debug)]
pub(super) struct TargetRef {
    name: String,
    raw: String,
    pos: Pos,
}

/// What `targets:` parsed to: every name (also of invalid entries, so that references to
/// them are not reported twice) and the targets when all are valid.
pub(super) struct ParsedTargets {
    names: Vec<String>,
    targets: Option<Vec<TargetConfig>>,
}

impl Cx<'_> {
    /// The `targets:` mapping.
    pub(super) fn targets(&mut self, node: &Node, path: &str) -> Slot<ParsedTargets> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "targets must be a mapping of target names to target settings, not {}",
                    node.describe()
                ),
            );
            return Slot::Invalid;
        };
        let mut names = Vec::new();
        let mut targets = Some(Vec::new());
        let mut seen: HashMap<&str, usize> = HashMap::new();
        // file path -> (target name) of the first nginx_file target writing it
        let mut files: HashMap<PathBuf, String> = HashMap::new();
        for (key, value) in entries {
            let key_path = super::join(path, &key.text);
            if let Some(line) = seen.get(key.text.as_str()) {
                self.error(
                    key.pos,
                    &key_path,
                    None,
                    format!("duplicate key: {} is already set at line {line}", key.text),
                );
                targets = None;
                continue;
            }
            seen.insert(&key.text, key.pos.line);
            names.push(key.text.clone());
            if let Err(message) = check_target_name(&key.text) {
                self.error(key.pos, &key_path, None, message);
                targets = None;
            }
            let target = self.target(&key.text, value, &key_path);
            if let Some(TargetConfig {
                spec: TargetSpec::NginxFile(f),
                ..
            }) = &target
            {
                if let Some(first) = files.get(&f.path) {
                    self.error(
                        value.pos,
                        &format!("{key_path}.path"),
                        Some(&f.path.display().to_string()),
                        format!(
                            "targets.{first} already writes this file; upstreams that share a \
                             file belong to one nginx_file target"
                        ),
                    );
                    targets = None;
                } else {
                    files.insert(f.path.clone(), key.text.clone());
                }
            }
            match (target, targets.as_mut()) {
                (Some(t), Some(list)) => list.push(t),
                (None, _) => targets = None,
                (Some(_), None) => {}
            }
        }
        Slot::Set(ParsedTargets { names, targets }, node.pos, String::new())
    }

    fn target(&mut self, name: &str, node: &Node, path: &str) -> Option<TargetConfig> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "a target must be a mapping with a type ({}) and its settings, not {}",
                    type_words(),
                    node.describe()
                ),
            );
            return None;
        };
        let type_node = entries.iter().find(|(k, _)| k.text == "type");
        let ty = match type_node {
            None => {
                self.error(
                    node.pos,
                    &format!("{path}.type"),
                    None,
                    format!(
                        "the mandatory field type is missing for the target {name}: it must be \
                         one of {}",
                        type_words()
                    ),
                );
                return None;
            }
            Some((_, v)) => match self.one_of(v, &format!("{path}.type"), TARGET_TYPES) {
                Slot::Set(t, _, _) => t,
                Slot::Empty(pos) => {
                    self.error(
                        pos,
                        &format!("{path}.type"),
                        None,
                        format!(
                            "the mandatory field type is empty for the target {name}: it must be \
                             one of {}",
                            type_words()
                        ),
                    );
                    return None;
                }
                Slot::Invalid | Slot::Absent => return None,
            },
        };
        let mut b = TargetBuilder::default();
        self.mapping(node, path, fields_of(ty), &mut b, Section::Target);
        let key = |k: &str| format!("{path}.{k}");
        let suffix = format!(" for the target {name}");
        let timeout = b.timeout.or_default(match ty {
            TargetType::NginxFile => DEFAULT_COMMAND_TIMEOUT,
            _ => DEFAULT_TARGET_TIMEOUT,
        });
        let server_prefix = b.server_prefix.or_default(DEFAULT_SERVER_PREFIX.to_owned());
        let check = b.check.or_default(false);
        let spec = match ty {
            TargetType::NginxPlus => {
                let has_headers = match &b.custom_headers {
                    Slot::Set(h, _, _) => !h.is_empty(),
                    Slot::Invalid => true,
                    Slot::Absent | Slot::Empty(_) => false,
                };
                let custom_headers = b.custom_headers.or_default(Vec::new());
                let api_endpoint = match b.api_endpoint {
                    Slot::Set(url, pos, raw) => {
                        if url.scheme() == "http" && !is_loopback(&url) && has_headers {
                            self.error(
                                pos,
                                &key("api_endpoint"),
                                Some(&redact_userinfo(&raw)),
                                "plain http to a host that is not a loopback address is not \
                                 allowed when custom_headers are set (they may carry an API key); \
                                 secrets must not be sent unencrypted: use https"
                                    .to_owned(),
                            );
                            None
                        } else {
                            Some(url)
                        }
                    }
                    other => self.required(other, node.pos, &key("api_endpoint"), &suffix),
                };
                TargetSpec::NginxPlus(NginxPlusTarget {
                    api_endpoint: api_endpoint?,
                    custom_headers: custom_headers?,
                    ca_file: b.ca_file.optional()?,
                })
            }
            TargetType::HaproxyRuntime => {
                let address = self.required(b.address, node.pos, &key("address"), &suffix);
                let mode = b.mode.or_default(HaproxyServerMode::Auto);
                TargetSpec::HaproxyRuntime(HaproxyRuntimeTarget {
                    address: address?,
                    mode: mode?,
                    server_prefix: server_prefix?,
                    check: check?,
                    timeout: timeout?,
                })
            }
            TargetType::HaproxyDataplane => {
                let url = match b.url {
                    Slot::Set(url, pos, raw) => {
                        if url.scheme() == "http" && !is_loopback(&url) {
                            self.error(
                                pos,
                                &key("url"),
                                Some(&redact_userinfo(&raw)),
                                "must use https: the Data Plane API password must not be sent \
                                 unencrypted (plain http is allowed only to a loopback address)"
                                    .to_owned(),
                            );
                            None
                        } else if !url.username().is_empty() || url.password().is_some() {
                            self.error(
                                pos,
                                &key("url"),
                                Some(&redact_userinfo(&raw)),
                                "must not hold credentials: use username and password".to_owned(),
                            );
                            None
                        } else {
                            Some(url)
                        }
                    }
                    other => self.required(other, node.pos, &key("url"), &suffix),
                };
                let api_version = b.api_version.or_default(DataplaneApiVersion::V3);
                let username = self.required(b.username, node.pos, &key("username"), &suffix);
                let password = self.required(b.password, node.pos, &key("password"), &suffix);
                let server_slots = b.server_slots.or_default(ServerSlots::default());
                let create_backends = b.create_backends.or_default(false);
                let balance = b.balance.or_default("roundrobin");
                TargetSpec::HaproxyDataplane(HaproxyDataplaneTarget {
                    url: url?,
                    api_version: api_version?,
                    username: username?,
                    password: password?,
                    server_prefix: server_prefix?,
                    server_slots: server_slots?,
                    check: check?,
                    create_backends: create_backends?,
                    balance: balance?.to_owned(),
                    ca_file: b.ca_file.optional()?,
                    timeout: timeout?,
                })
            }
            TargetType::NginxFile => {
                let file = self.required(b.path, node.pos, &key("path"), &suffix);
                let validate = b
                    .validate_command
                    .or_default(vec!["nginx".to_owned(), "-t".to_owned()]);
                let reload = b.reload_command.or_default(vec![
                    "nginx".to_owned(),
                    "-s".to_owned(),
                    "reload".to_owned(),
                ]);
                TargetSpec::NginxFile(NginxFileTarget {
                    path: file?,
                    validate_command: validate?,
                    reload_command: reload?,
                    timeout: timeout?,
                })
            }
            TargetType::AzureRouteServer => {
                let subscription =
                    self.required(b.subscription, node.pos, &key("subscription"), &suffix);
                let resource_group =
                    self.required(b.resource_group, node.pos, &key("resource_group"), &suffix);
                let virtual_hub =
                    self.required(b.virtual_hub, node.pos, &key("virtual_hub"), &suffix);
                let peer_asn = self.required(b.peer_asn, node.pos, &key("peer_asn"), &suffix);
                let name_prefix = b
                    .name_prefix
                    .or_default(DEFAULT_AZURE_NAME_PREFIX.to_owned());
                let max_peerings = match b.max_peerings {
                    Slot::Set(0, pos, raw) => {
                        self.error(
                            pos,
                            &key("max_peerings"),
                            Some(&raw),
                            "the field max_peerings has invalid value: it must be at least 1"
                                .to_owned(),
                        );
                        None
                    }
                    other => other.or_default(DEFAULT_MAX_PEERINGS),
                };
                let operation_timeout =
                    b.operation_timeout.or_default(DEFAULT_ROUTE_SERVER_TIMEOUT);
                TargetSpec::AzureRouteServer(RouteServerTarget {
                    subscription: subscription?,
                    resource_group: resource_group?,
                    virtual_hub: virtual_hub?,
                    peer_asn: peer_asn?,
                    name_prefix: name_prefix?,
                    max_peerings: max_peerings?,
                    operation_timeout: operation_timeout?,
                })
            }
            TargetType::AzureLbPool => {
                let subscription =
                    self.required(b.subscription, node.pos, &key("subscription"), &suffix);
                let resource_group =
                    self.required(b.resource_group, node.pos, &key("resource_group"), &suffix);
                let load_balancer =
                    self.required(b.load_balancer, node.pos, &key("load_balancer"), &suffix);
                let backend_pool =
                    self.required(b.backend_pool, node.pos, &key("backend_pool"), &suffix);
                let virtual_network = self.required(
                    b.virtual_network,
                    node.pos,
                    &key("virtual_network"),
                    &suffix,
                );
                let name_prefix = b
                    .name_prefix
                    .or_default(DEFAULT_AZURE_NAME_PREFIX.to_owned());
                let operation_timeout = b.operation_timeout.or_default(DEFAULT_LB_POOL_TIMEOUT);
                TargetSpec::AzureLbPool(LbPoolTarget {
                    subscription: subscription?,
                    resource_group: resource_group?,
                    load_balancer: load_balancer?,
                    backend_pool: backend_pool?,
                    virtual_network: virtual_network?,
                    name_prefix: name_prefix?,
                    operation_timeout: operation_timeout?,
                })
            }
        };
        Some(TargetConfig {
            name: name.to_owned(),
            line: node.pos.line,
            spec,
        })
    }

    /// `/path`, `unix:/path`, `unix@/path`, `host:port`, `ipv4@host:port`, `tcp:host:port`.
    fn runtime_address(&mut self, node: &Node, path: &str) -> Slot<RuntimeAddress> {
        self.typed(node, path, |s| {
            let s = s.trim();
            let unix = s
                .strip_prefix("unix:")
                .or_else(|| s.strip_prefix("unix@"))
                .or_else(|| s.starts_with('/').then_some(s));
            if let Some(p) = unix {
                if !p.starts_with('/') {
                    return Err(
                        "the field address has invalid value: a unix socket path must be \
                                absolute"
                            .to_owned(),
                    );
                }
                return Ok(RuntimeAddress::Unix(PathBuf::from(p)));
            }
            let tcp = ["tcp:", "ipv4@", "ipv6@", "tcp@"]
                .iter()
                .find_map(|p| s.strip_prefix(p))
                .unwrap_or(s);
            let ok = tcp.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty()
                    && !host.contains(char::is_whitespace)
                    && parse_int(port).is_some_and(|p| (1..=65535).contains(&p))
            });
            if ok {
                Ok(RuntimeAddress::Tcp(tcp.to_owned()))
            } else {
                Err(
                    "the field address has invalid value: it must be the stats socket, as a \
                     unix socket path (/run/haproxy/admin.sock) or host:port (127.0.0.1:9999)"
                        .to_owned(),
                )
            }
        })
    }

    /// Letters, digits, `-`, `_` and `.`, not ending in a digit (slot numbers follow it).
    fn server_prefix(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            let ok = (1..=MAX_PREFIX_LEN).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !s.ends_with(|c: char| c.is_ascii_digit());
            if ok {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "the field server_prefix has invalid value: it must be 1 to {MAX_PREFIX_LEN} \
                     letters, digits, -, _ and ., not ending in a digit"
                ))
            }
        })
    }

    /// A BGP ASN (1 to 4294967294) that Azure does not reserve.
    fn peer_asn(&mut self, node: &Node, path: &str) -> Slot<u32> {
        self.typed(node, path, |s| {
            let asn = parse_int(s)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..u32::MAX).contains(n))
                .ok_or_else(|| {
                    "the field peer_asn has invalid value: it must be a BGP AS number from 1 to \
                     4294967294"
                        .to_owned()
                })?;
            if RESERVED_ASNS.contains(&asn) {
                return Err(format!(
                    "the field peer_asn has invalid value: Azure reserves AS number {asn} \
                     (8074, 8075, 12076 and 65515 to 65520); give the appliances another ASN"
                ));
            }
            Ok(asn)
        })
    }

    /// Prefix of Azure child resource names: letters, digits, `-`, `_` and `.`, starting
    /// with a letter or digit.
    fn name_prefix(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            let ok = (1..=MAX_PREFIX_LEN).contains(&s.len())
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if ok {
                Ok(s.to_owned())
            } else {
                Err(format!(
                    "the field name_prefix has invalid value: it must be 1 to {MAX_PREFIX_LEN} \
                     letters, digits, -, _ and ., starting with a letter or digit"
                ))
            }
        })
    }

    /// A virtual network resource id.
    fn vnet_id(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            let segs: Vec<&str> = s.trim().split('/').collect();
            let ok = segs.len() == 9
                && segs[0].is_empty()
                && segs[1].eq_ignore_ascii_case("subscriptions")
                && segs[3].eq_ignore_ascii_case("resourceGroups")
                && segs[5].eq_ignore_ascii_case("providers")
                && segs[6].eq_ignore_ascii_case("Microsoft.Network")
                && segs[7].eq_ignore_ascii_case("virtualNetworks")
                && [2, 4, 8].iter().all(|&i| !segs[i].trim().is_empty());
            if ok {
                Ok(s.trim().to_owned())
            } else {
                Err(
                    "the field virtual_network has invalid value: it must be a virtual network \
                     resource id, such as /subscriptions/SUB/resourceGroups/RG/providers/\
                     Microsoft.Network/virtualNetworks/NAME"
                        .to_owned(),
                )
            }
        })
    }

    /// `true` or `false`.
    fn boolean(&mut self, node: &Node, path: &str) -> Slot<bool> {
        let field = super::last_segment(path).to_owned();
        self.typed(node, path, |s| match s.trim() {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            _ => Err(format!(
                "the field {field} has invalid value: it must be true or false"
            )),
        })
    }

    /// A secret: never shown in messages.
    fn password(&mut self, node: &Node, path: &str) -> Slot<Secret> {
        let Some(s) = self.scalar(node, path, true) else {
            return Slot::Invalid;
        };
        if s.text.is_empty() {
            return Slot::Empty(s.pos);
        }
        Slot::Set(Secret::new(s.text), s.pos, String::new())
    }

    fn absolute_path(&mut self, node: &Node, path: &str) -> Slot<PathBuf> {
        self.typed(node, path, |s| {
            let p = PathBuf::from(s);
            if p.is_absolute() && p.file_name().is_some() {
                Ok(p)
            } else {
                Err(
                    "the field path has invalid value: it must be an absolute file path, such \
                     as /etc/nginx/conf.d/vmss-upstreams.conf"
                        .to_owned(),
                )
            }
        })
    }

    /// A command as a non-empty list of words (argv; no shell).
    fn command(&mut self, node: &Node, path: &str) -> Slot<Vec<String>> {
        let field = super::last_segment(path).to_owned();
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "the field {field} has invalid value: it must be a list of words (the \
                     program and its arguments, no shell), such as [nginx, -s, reload]"
                ),
            );
            return Slot::Invalid;
        };
        if items.is_empty() {
            self.error(
                node.pos,
                path,
                None,
                format!("the field {field} has invalid value: the command is empty"),
            );
            return Slot::Invalid;
        }
        let mut words = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match self.scalar(item, &format!("{path}[{i}]"), false) {
                Some(s) if i == 0 && s.text.trim().is_empty() => {
                    self.error(
                        s.pos,
                        &format!("{path}[{i}]"),
                        None,
                        format!("the field {field} has invalid value: the program name is empty"),
                    );
                    ok = false;
                }
                Some(s) => words.push(s.text),
                None => ok = false,
            }
        }
        if ok {
            Slot::Set(words, node.pos, String::new())
        } else {
            Slot::Invalid
        }
    }

    fn growth_factor(&mut self, node: &Node, path: &str) -> Slot<f64> {
        self.typed(node, path, |s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && (1.0..=100.0).contains(f))
                .ok_or_else(|| {
                    "the field growth_factor has invalid value: it must be a number from 1 to \
                     100, such as 1.5"
                        .to_owned()
                })
        })
    }

    /// `server_slots:` of a Data Plane API target.
    fn server_slots(&mut self, node: &Node, path: &str) -> Slot<ServerSlots> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let Some(b) = self.section(
            node,
            path,
            "base, growth_factor and growth_type",
            SLOTS_FIELDS,
            Section::ServerSlots,
        ) else {
            return Slot::Invalid;
        };
        let defaults = ServerSlots::default();
        let base = match b.base {
            Slot::Set(0, pos, raw) => {
                self.error(
                    pos,
                    &format!("{path}.base"),
                    Some(&raw),
                    "the field base has invalid value: a backend needs at least one slot"
                        .to_owned(),
                );
                None
            }
            other => other.or_default(defaults.base),
        };
        let growth_type = b.growth_type.or_default(defaults.growth_type);
        let growth_factor = match (b.growth_factor, growth_type) {
            (Slot::Set(f, pos, raw), Some(SlotGrowth::Exponential)) if f <= 1.0 => {
                self.error(
                    pos,
                    &format!("{path}.growth_factor"),
                    Some(&raw),
                    "the field growth_factor has invalid value: exponential growth needs a \
                     factor greater than 1"
                        .to_owned(),
                );
                None
            }
            (other, _) => other.or_default(defaults.growth_factor),
        };
        match (base, growth_factor, growth_type) {
            (Some(base), Some(growth_factor), Some(growth_type)) => Slot::Set(
                ServerSlots {
                    base,
                    growth_factor,
                    growth_type,
                },
                node.pos,
                String::new(),
            ),
            _ => Slot::Invalid,
        }
    }

    /// The `target` of every entry of `upstreams` (None where there is none), read from the
    /// YAML so that references can be checked with their positions once `targets` is known.
    /// Reports nothing: the upstream's own parse reports bad values.
    pub(super) fn target_refs(&mut self, node: &Node) -> Vec<Option<TargetRef>> {
        let NodeKind::Seq(items) = &node.kind else {
            return Vec::new();
        };
        items
            .iter()
            .map(|item| {
                let NodeKind::Map(entries) = &item.kind else {
                    return None;
                };
                let (_, v) = entries.iter().find(|(k, _)| k.text == "target")?;
                let NodeKind::Scalar { text, .. } = &v.kind else {
                    return None;
                };
                if v.is_null() {
                    return None;
                }
                let name = substitute(text, self.env).ok()?;
                Some(TargetRef {
                    name: name.trim().to_owned(),
                    raw: text.clone(),
                    pos: v.pos,
                })
            })
            .collect()
    }

    /// An upstream's `target:`: a target name.
    pub(super) fn target_name(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            check_target_name(s.trim()).map(|()| s.trim().to_owned())
        })
    }

    /// Checks that every `upstreams[].target` names a target, and that the upstreams of one
    /// `nginx_file` target share a kind. Returns false when it reported a problem.
    pub(super) fn check_target_refs(
        &mut self,
        targets: Option<&ParsedTargets>,
        upstreams: Option<&[UpstreamConfig]>,
        refs: &[Option<TargetRef>],
    ) -> bool {
        let mut ok = true;
        let names: Vec<&str> = targets
            .map(|t| t.names.iter().map(String::as_str).collect())
            .unwrap_or_default();
        // nginx_file target name -> (kind, upstream index) of its first upstream
        let mut file_kinds: HashMap<&str, (UpstreamKind, usize)> = HashMap::new();
        // Azure target name -> index of its upstream
        let mut azure_users: HashMap<&str, usize> = HashMap::new();
        for (i, r) in refs.iter().enumerate() {
            let Some(r) = r else {
                // The default target (NGINX Plus) cannot create backends for services.
                if let Some(up) = upstreams
                    .and_then(|u| u.get(i))
                    .filter(|u| u.source.services.is_some())
                {
                    self.error(
                        Pos {
                            line: up.line,
                            column: 1,
                        },
                        &format!("upstreams[{i}].services"),
                        None,
                        SERVICES_TARGET.to_string(),
                    );
                    ok = false;
                }
                continue;
            };
            let key = format!("upstreams[{i}].target");
            if !names.contains(&r.name.as_str()) {
                let message = if names.is_empty() {
                    format!(
                        "there is no target named {}: targets is not set; define it under \
                         targets, or leave target out to use the NGINX Plus API of api_endpoint",
                        r.name
                    )
                } else if let Some(s) = did_you_mean(&r.name, &names) {
                    format!("there is no target named {}; did you mean {s}?", r.name)
                } else {
                    format!(
                        "there is no target named {}; the targets are {}",
                        r.name,
                        names.join(", ")
                    )
                };
                self.error(r.pos, &key, Some(&r.raw), message);
                ok = false;
                continue;
            }
            let (Some(list), Some(ups)) = (targets.and_then(|t| t.targets.as_ref()), upstreams)
            else {
                continue;
            };
            let Some(up) = ups.get(i) else { continue };
            if up.source.services.is_some() {
                if let Some(t) = list.iter().find(|t| {
                    t.name == r.name && !matches!(t.spec, TargetSpec::HaproxyDataplane(_))
                }) {
                    self.error(
                        r.pos,
                        &key,
                        Some(&r.raw),
                        format!("{SERVICES_TARGET}; {} is {}", r.name, t.spec.type_name()),
                    );
                    ok = false;
                    continue;
                }
            }
            let is_azure = list.iter().any(|t| {
                t.name == r.name
                    && matches!(
                        t.spec,
                        TargetSpec::AzureRouteServer(_) | TargetSpec::AzureLbPool(_)
                    )
            });
            if is_azure {
                if up.port.is_none() {
                    self.error(
                        r.pos,
                        &key,
                        Some(&r.raw),
                        format!(
                            "the Azure target {} needs the upstream's port to be set (it is \
                             ignored: peerings and pool addresses have no port), not a port tag",
                            r.name
                        ),
                    );
                    ok = false;
                }
                if let Some(first) = azure_users.get(r.name.as_str()) {
                    self.error(
                        r.pos,
                        &key,
                        Some(&r.raw),
                        format!(
                            "the Azure target {} already holds upstreams[{first}]; an Azure \
                             target holds one upstream (define another target)",
                            r.name
                        ),
                    );
                    ok = false;
                } else {
                    azure_users.insert(&r.name, i);
                }
                continue;
            }
            let is_file = list
                .iter()
                .any(|t| t.name == r.name && matches!(t.spec, TargetSpec::NginxFile(_)));
            if !is_file {
                continue;
            }
            match file_kinds.get(r.name.as_str()) {
                Some((kind, first)) if *kind != up.kind => {
                    self.error(
                        r.pos,
                        &key,
                        Some(&r.raw),
                        format!(
                            "the nginx_file target {} already holds {kind} upstreams \
                             (upstreams[{first}]) and one file is included in one context: use \
                             another nginx_file target for {} upstreams",
                            r.name, up.kind
                        ),
                    );
                    ok = false;
                }
                Some(_) => {}
                None => {
                    file_kinds.insert(&r.name, (up.kind, i));
                }
            }
        }
        ok
    }
}

/// Why `services` needs a Data Plane API target.
const SERVICES_TARGET: &str = "services needs a target of type haproxy_dataplane: only the \
     HAProxy Data Plane API can create the backends of services found by tags";

impl Cx<'_> {
    /// The targets of the file (empty without `targets:`), after checking the upstreams'
    /// references to them; `None` when something is wrong (reported).
    pub(super) fn finish_targets(
        &mut self,
        slot: Slot<ParsedTargets>,
        upstreams: Option<&[UpstreamConfig]>,
        refs: &[Option<TargetRef>],
    ) -> Option<Vec<TargetConfig>> {
        let parsed = match slot {
            Slot::Set(t, _, _) => t,
            // Already reported; references to it would only repeat the problem.
            Slot::Invalid => return None,
            Slot::Absent | Slot::Empty(_) => ParsedTargets {
                names: Vec::new(),
                targets: Some(Vec::new()),
            },
        };
        let refs_ok = self.check_target_refs(Some(&parsed), upstreams, refs);
        parsed.targets.filter(|_| refs_ok)
    }
}

/// Whether any upstream entry goes to the default NGINX Plus target (has no `target`).
/// True when there are no upstream entries at all, so that a file without upstreams still
/// reports a missing `api_endpoint` as nginx-asg-sync does.
pub(super) fn needs_api_endpoint(refs: &[Option<TargetRef>]) -> bool {
    refs.is_empty() || refs.iter().any(Option::is_none)
}

fn check_target_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err("invalid target name: it must be 1 to 64 letters, digits, -, _ and .".to_owned())
    }
}

fn type_words() -> String {
    TARGET_TYPES
        .iter()
        .map(|(w, _)| *w)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every key of `targets:` entries, as `(section, key)`: `targets.{type}` per target type and
/// `targets.haproxy_dataplane.server_slots` (for [`super::all_keys`]).
pub(super) fn doc_keys() -> Vec<(String, &'static str)> {
    let mut keys: Vec<(String, &'static str)> = TARGET_TYPES
        .iter()
        .flat_map(|&(name, t)| {
            fields_of(t)
                .iter()
                .map(move |f| (format!("targets.{name}"), f.key))
        })
        .collect();
    keys.extend(
        SLOTS_FIELDS
            .iter()
            .map(|f| ("targets.haproxy_dataplane.server_slots".to_owned(), f.key)),
    );
    keys
}
