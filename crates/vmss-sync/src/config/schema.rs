//! The keys of the configuration file, their types, defaults and checks.
//!
//! Each section (top level, upstream) is a table of [`Field`]s: a key and a function that parses
//! that key's value into the section's builder. To add a key, add a builder field and one line
//! to the table; a new nested section (e.g. a `haproxy:` target) is a new builder plus a table,
//! parsed with [`Cx::mapping`] from its parent's table entry.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use url::Url;

mod events;
mod ops;
mod sources;
mod targets;

use super::env::{substitute, Expander};
use super::time::{parse_go_duration, parse_nginx_time, GoDurationError};
use super::yaml::{self, Key, Node, NodeKind, Pos};
use super::{
    CloudProvider, Config, ConfigError, ConfigErrors, ErrorList, LogFormat, Secret, UpstreamConfig,
    UpstreamKind,
};

const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_MAX_CONNS: u32 = 0;
const DEFAULT_MAX_FAILS: u32 = 1;
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SLOW_START: Duration = Duration::ZERO;
const DEFAULT_RESOURCE_MANAGER_ENDPOINT: &str = "https://management.azure.com";
const PUBLIC_CLOUD_AUDIENCE: &str = "https://management.azure.com";
/// ARM hosts of sovereign clouds and their token audiences.
const SOVEREIGN_AUDIENCES: &[(&str, &str)] = &[
    (
        "management.usgovcloudapi.net",
        "https://management.usgovcloudapi.net",
    ),
    (
        "management.chinacloudapi.cn",
        "https://management.chinacloudapi.cn",
    ),
];
/// nginx-asg-sync's limit on headers per request (`main.go` `headerTransport`).
const MAX_CUSTOM_HEADERS: usize = 100;
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const LOG_LEVELS: &[(&str, &str)] = &[
    ("error", "error"),
    ("warn", "warn"),
    ("info", "info"),
    ("debug", "debug"),
    ("trace", "trace"),
];

/// One key of a section: its name and how to parse its value into the builder `B`.
/// The function gets the context, the value node and the key's dotted path.
pub(crate) struct Field<B> {
    pub key: &'static str,
    pub parse: fn(&mut Cx<'_>, &Node, &str, &mut B),
}

const fn field<B>(key: &'static str, parse: fn(&mut Cx<'_>, &Node, &str, &mut B)) -> Field<B> {
    Field { key, parse }
}

/// Top-level keys.
#[rustfmt::skip]
const TOP_FIELDS: &[Field<TopBuilder>] = &[
    field("cloud_provider", |cx, n, p, b| b.cloud_provider = cx.string(n, p)),
    field("subscription_id", |cx, n, p, b| b.subscription_id = cx.azure_name(n, p)),
    field("resource_group_name", |cx, n, p, b| b.resource_group_name = cx.azure_name(n, p)),
    field("api_endpoint", |cx, n, p, b| b.api_endpoint = cx.url(n, p)),
    field("sync_interval", |cx, n, p, b| b.sync_interval = cx.go_duration(n, p)),
    field("custom_headers", |cx, n, p, b| b.custom_headers = cx.headers(n, p)),
    field("upstreams", |cx, n, p, b| { b.target_refs = cx.target_refs(n); b.upstreams = cx.upstreams(n, p) }),
    field("targets", |cx, n, p, b| b.targets = cx.targets(n, p)),
    field("resource_manager_endpoint", |cx, n, p, b| b.resource_manager_endpoint = cx.url(n, p)),
    field("resource_manager_audience", |cx, n, p, b| b.resource_manager_audience = cx.string(n, p)),
    field("api_ca_file", |cx, n, p, b| b.api_ca_file = cx.ca_file(n, p)),
    field("resource_manager_ca_file", |cx, n, p, b| b.resource_manager_ca_file = cx.ca_file(n, p)),
    field("log_format", |cx, n, p, b| b.log_format = cx.one_of(n, p, LOG_FORMATS)),
    field("log_level", |cx, n, p, b| b.log_level = cx.one_of(n, p, LOG_LEVELS)),
    field("admin_listen", |cx, n, p, b| b.admin_listen = cx.admin_listen(n, p)),
    field("readiness_max_age", |cx, n, p, b| b.readiness_max_age = cx.go_duration(n, p)),
    field("leader_election", |cx, n, p, b| b.leader_election = cx.leader_election(n, p)),
    field("events", |cx, n, p, b| b.events = cx.events(n, p)),
    field("health_interval", |cx, n, p, b| b.sources.health_interval = cx.go_duration(n, p)),
    field("arm_read_burst", |cx, n, p, b| b.sources.arm_read_burst = cx.read_burst(n, p)),
    field("arm_reads_per_second", |cx, n, p, b| b.sources.arm_reads_per_second = cx.reads_per_second(n, p)),
];

/// Keys of one entry of `upstreams`.
#[rustfmt::skip]
const UPSTREAM_FIELDS: &[Field<UpstreamBuilder>] = &[
    field("name", |cx, n, p, b| b.name = cx.upstream_name(n, p)),
    field("virtual_machine_scale_set", |cx, n, p, b| b.source.scale_sets = cx.scale_sets(n, p)),
    field("port", |cx, n, p, b| b.port = cx.port(n, p, &b.label)),
    field("kind", |cx, n, p, b| b.kind = cx.kind(n, p, &b.label)),
    field("max_conns", |cx, n, p, b| b.max_conns = cx.count(n, p)),
    field("max_fails", |cx, n, p, b| b.max_fails = cx.count(n, p)),
    field("fail_timeout", |cx, n, p, b| b.fail_timeout = cx.nginx_time(n, p)),
    field("slow_start", |cx, n, p, b| b.slow_start = cx.nginx_time(n, p)),
    field("target", |cx, n, p, b| b.target = cx.target_name(n, p)),
    field("subscription_id", |cx, n, p, b| b.source.subscription_id = cx.azure_name(n, p)),
    field("resource_group_name", |cx, n, p, b| b.source.resource_groups = cx.resource_groups(n, p)),
    field("tags", |cx, n, p, b| b.source.tags = cx.tags(n, p)),
    field("port_tag", |cx, n, p, b| b.source.port_tag = cx.port_tag(n, p)),
    field("register_when", |cx, n, p, b| b.source.register_when = cx.register_when(n, p)),
    field("drain_timeout", |cx, n, p, b| b.source.drain_timeout = cx.duration_or_zero(n, p)),
    field("services", |cx, n, p, b| b.source.services = cx.services(n, p)),
];

/// nginx-asg-sync keys that only mean something for AWS.
const AWS_TOP_KEYS: &[&str] = &["region", "profile"];
const AWS_UPSTREAM_KEYS: &[&str] = &["autoscaling_group", "in_service"];

/// The state of one key after parsing its value.
#[derive(Debug, Default)]
pub(crate) enum Slot<T> {
    /// The key is not in the file.
    #[default]
    Absent,
    /// The key is there with a null or blank value, at this position.
    Empty(Pos),
    /// The value was wrong; the error is already reported.
    Invalid,
    /// A good value, at this position, with its text as written (for later messages).
    Set(T, Pos, String),
}

impl<T> Slot<T> {
    fn empty_pos(&self) -> Option<Pos> {
        match self {
            Slot::Empty(pos) => Some(*pos),
            _ => None,
        }
    }

    /// The value when set, `Some(None)` when absent or empty; `None` when invalid.
    fn optional(self) -> Option<Option<T>> {
        match self {
            Slot::Absent | Slot::Empty(_) => Some(None),
            Slot::Invalid => None,
            Slot::Set(v, _, _) => Some(Some(v)),
        }
    }

    /// The value, or `default` when the key is absent or empty; `None` when invalid.
    fn or_default(self, default: T) -> Option<T> {
        match self {
            Slot::Absent | Slot::Empty(_) => Some(default),
            Slot::Invalid => None,
            Slot::Set(v, _, _) => Some(v),
        }
    }
}

#[derive(Default)]
pub(crate) struct TopBuilder {
    cloud_provider: Slot<String>,
    subscription_id: Slot<String>,
    resource_group_name: Slot<String>,
    api_endpoint: Slot<Url>,
    sync_interval: Slot<Duration>,
    custom_headers: Slot<Vec<(String, Secret)>>,
    upstreams: Slot<Vec<Option<UpstreamConfig>>>,
    resource_manager_endpoint: Slot<Url>,
    resource_manager_audience: Slot<String>,
    api_ca_file: Slot<std::path::PathBuf>,
    resource_manager_ca_file: Slot<std::path::PathBuf>,
    log_format: Slot<LogFormat>,
    log_level: Slot<&'static str>,
    admin_listen: Slot<Option<std::net::SocketAddr>>,
    readiness_max_age: Slot<Duration>,
    leader_election: Slot<super::LeaderElectionConfig>,
    events: Slot<super::EventsConfig>,
    targets: Slot<targets::ParsedTargets>,
    /// `upstreams[i].target` as written, for reference checks.
    target_refs: Vec<Option<targets::TargetRef>>,
    sources: sources::TopSourceBuilder,
}

#[derive(Default)]
pub(crate) struct UpstreamBuilder {
    /// "the upstream NAME" or "an upstream", for messages.
    label: String,
    name: Slot<String>,
    /// `virtual_machine_scale_set`, `tags` and the other keys of `sources`.
    source: sources::SourceBuilder,
    port: Slot<u16>,
    kind: Slot<UpstreamKind>,
    max_conns: Slot<u32>,
    max_fails: Slot<u32>,
    fail_timeout: Slot<Duration>,
    slow_start: Slot<Duration>,
    target: Slot<String>,
}

/// Parsing context: where messages go and how to look up `${VAR}`.
pub(crate) struct Cx<'e> {
    file: &'e Path,
    env: &'e Expander<'e>,
    errors: ErrorList,
}

/// A scalar value after `${VAR}` substitution.
struct Scalar {
    /// The value to use.
    text: String,
    /// The value as written in the file (before substitution), for messages.
    raw: String,
    pos: Pos,
}

pub(crate) fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let env = Expander::new(env);
    let mut cx = Cx {
        file: path,
        env: &env,
        errors: ErrorList::default(),
    };
    let config = match yaml::parse(text) {
        Err(e) => {
            cx.error(e.pos, "", None, e.message);
            None
        }
        Ok(root) => {
            let root = root.unwrap_or(Node {
                pos: Pos { line: 1, column: 1 },
                kind: NodeKind::Map(Vec::new()),
            });
            cx.top(&root)
        }
    };
    match config {
        Some(config) if cx.errors.is_empty() => Ok(config),
        _ => {
            if cx.errors.is_empty() {
                // Every path that yields no config reports why; this is a safety net.
                cx.error(
                    Pos { line: 1, column: 1 },
                    "",
                    None,
                    "the configuration is invalid".to_owned(),
                );
            }
            Err(cx.errors.finish())
        }
    }
}

impl Cx<'_> {
    fn error(&mut self, pos: Pos, key: &str, value: Option<&str>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            key: key.to_owned(),
            value: value.map(str::to_owned),
            message,
        });
    }

    // ----- sections -------------------------------------------------------------------------

    fn top(&mut self, root: &Node) -> Option<Config> {
        let mut b = TopBuilder::default();
        if !matches!(root.kind, NodeKind::Map(_)) {
            self.error(
                root.pos,
                "",
                None,
                format!(
                    "the configuration must be a mapping of keys to values, not {}",
                    root.describe()
                ),
            );
            return None;
        }
        self.mapping(root, "", TOP_FIELDS, &mut b, Section::Top);
        self.finish_top(b, root.pos)
    }

    fn finish_top(&mut self, b: TopBuilder, root: Pos) -> Option<Config> {
        // A subscription_id (even a wrong one) shows the file is meant for Azure.
        let has_subscription_id = matches!(b.subscription_id, Slot::Set(..) | Slot::Invalid);
        let subscription_id = self.required(b.subscription_id, root, "subscription_id", "");
        let cloud_provider = match b.cloud_provider {
            Slot::Set(v, pos, raw) => match v.as_str() {
                "Azure" => Some(CloudProvider::Azure),
                "AWS" => {
                    self.error(
                        pos,
                        "cloud_provider",
                        Some(&raw),
                        "vmss-sync supports Azure only: cloud_provider must be Azure".to_owned(),
                    );
                    None
                }
                other => {
                    let hint = if other.eq_ignore_ascii_case("azure") {
                        " (the value is case-sensitive)"
                    } else {
                        ""
                    };
                    self.error(
                        pos,
                        "cloud_provider",
                        Some(&raw),
                        format!(
                            "the field cloud_provider has invalid value: vmss-sync supports Azure \
                             only, so it must be Azure{hint}"
                        ),
                    );
                    None
                }
            },
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) if has_subscription_id => Some(CloudProvider::Azure),
            Slot::Empty(pos) => self.missing_cloud_provider(pos),
            Slot::Absent => self.missing_cloud_provider(root),
        };
        let resource_group_name =
            self.required(b.resource_group_name, root, "resource_group_name", "");
        // Headers count as set even when some are wrong, so that all problems show at once.
        let has_headers = match &b.custom_headers {
            Slot::Set(headers, _, _) => !headers.is_empty(),
            Slot::Invalid => true,
            Slot::Absent | Slot::Empty(_) => false,
        };
        let custom_headers = b.custom_headers.or_default(Vec::new());
        let api_endpoint = match b.api_endpoint {
            Slot::Set(url, pos, raw) => {
                let has_userinfo = !url.username().is_empty() || url.password().is_some();
                if url.scheme() == "http" && !is_loopback(&url) && (has_headers || has_userinfo) {
                    let what = if has_headers {
                        "custom_headers are set (they may carry an API key)"
                    } else {
                        "the URL holds credentials"
                    };
                    self.error(
                        pos,
                        "api_endpoint",
                        Some(&redact_userinfo(&raw)),
                        format!(
                            "plain http to a host that is not a loopback address is not allowed \
                             when {what}; secrets must not be sent unencrypted: use https"
                        ),
                    );
                    None
                } else {
                    Some(url)
                }
            }
            Slot::Invalid => None,
            // Only upstreams without `target:` use it (nginx-asg-sync files: all of them).
            other if targets::needs_api_endpoint(&b.target_refs) => {
                self.required(other, root, "api_endpoint", "")
            }
            Slot::Absent | Slot::Empty(_) => None,
        };
        let sync_interval = b.sync_interval.or_default(DEFAULT_SYNC_INTERVAL);
        let resource_manager_endpoint = match b.resource_manager_endpoint {
            Slot::Set(url, pos, raw) => {
                if url.scheme() == "http" && !is_loopback(&url) {
                    self.error(
                        pos,
                        "resource_manager_endpoint",
                        Some(&redact_userinfo(&raw)),
                        "must use https: plain http is allowed only to a loopback address \
                         (127.0.0.0/8, ::1, localhost)"
                            .to_owned(),
                    );
                    None
                } else {
                    Some(url)
                }
            }
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Url::parse(DEFAULT_RESOURCE_MANAGER_ENDPOINT).ok(),
        };
        let resource_manager_audience = match b.resource_manager_audience {
            Slot::Set(v, _, _) => Some(v),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(default_audience(
                resource_manager_endpoint.as_ref().and_then(Url::host_str),
            )),
        };
        let log_format = b.log_format.or_default(LogFormat::Text);
        let log_level = match b.log_level {
            Slot::Set(v, _, _) => Some(Some(v.to_owned())),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let admin_listen = b.admin_listen.or_default(ops::default_admin_listen());
        let readiness_max_age = b
            .readiness_max_age
            .or_default(ops::default_readiness_max_age(
                sync_interval.unwrap_or(DEFAULT_SYNC_INTERVAL),
            ));
        let leader_election = match b.leader_election {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let events = match b.events {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let top_sources = self.finish_top_sources(b.sources);
        let upstreams = match b.upstreams {
            Slot::Set(list, pos, _) if list.is_empty() => {
                self.no_upstreams(pos);
                None
            }
            Slot::Set(list, _, _) => list.into_iter().collect::<Option<Vec<_>>>(),
            Slot::Invalid => None,
            Slot::Empty(pos) => {
                self.no_upstreams(pos);
                None
            }
            Slot::Absent => {
                self.no_upstreams(root);
                None
            }
        };
        let targets = self.finish_targets(b.targets, upstreams.as_deref(), &b.target_refs);

        Some(Config {
            path: self.file.to_path_buf(),
            cloud_provider: cloud_provider?,
            subscription_id: subscription_id?,
            resource_group_name: resource_group_name?,
            api_endpoint,
            sync_interval: sync_interval?,
            custom_headers: custom_headers?,
            resource_manager_endpoint: resource_manager_endpoint?,
            resource_manager_audience: resource_manager_audience?,
            api_ca_file: b.api_ca_file.optional()?,
            resource_manager_ca_file: b.resource_manager_ca_file.optional()?,
            log_format: log_format?,
            log_level: log_level?,
            admin_listen: admin_listen?,
            readiness_max_age: readiness_max_age?,
            leader_election: leader_election?,
            events: events?,
            upstreams: upstreams?,
            targets: targets?,
            health_interval: top_sources.as_ref()?.health_interval,
            arm_read_burst: top_sources.as_ref()?.arm_read_burst,
            arm_reads_per_second: top_sources.as_ref()?.arm_reads_per_second,
        })
    }

    fn missing_cloud_provider(&mut self, pos: Pos) -> Option<CloudProvider> {
        self.error(
            pos,
            "cloud_provider",
            None,
            "cloud_provider is missing and so is subscription_id: nginx-asg-sync would default to \
             AWS, but vmss-sync supports Azure only; set cloud_provider: Azure"
                .to_owned(),
        );
        None
    }

    fn no_upstreams(&mut self, pos: Pos) {
        self.error(
            pos,
            "upstreams",
            None,
            "there are no upstreams found in the config file: at least one is required".to_owned(),
        );
    }

    fn upstreams(&mut self, node: &Node, path: &str) -> Slot<Vec<Option<UpstreamConfig>>> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let NodeKind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "upstreams must be a list of upstreams, not {}",
                    node.describe()
                ),
            );
            return Slot::Invalid;
        };
        let mut list = Vec::with_capacity(items.len());
        // name -> (index, line) of the first upstream with that name.
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        let mut name_positions = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let (upstream, name) = self.upstream(item, &item_path);
            name_positions.push(name.as_ref().map(|(_, pos)| *pos));
            if let Some((name, name_pos)) = name {
                if let Some((first, first_line)) = names.get(&name) {
                    self.error(
                        name_pos,
                        &format!("{item_path}.name"),
                        Some(&name),
                        format!(
                            "duplicate upstream name: {path}[{first}] at line {first_line} has the \
                             same name; upstream names must be unique"
                        ),
                    );
                    list.push(None);
                    continue;
                }
                names.insert(name, (i, item.pos.line));
            }
            list.push(upstream);
        }
        self.check_template_overlap(&list, &name_positions, path);
        Slot::Set(list, node.pos, String::new())
    }

    /// One entry of `upstreams`, and its name and the name's position when the name is good
    /// (also when other keys are wrong, so that duplicate names are always found).
    fn upstream(
        &mut self,
        node: &Node,
        path: &str,
    ) -> (Option<UpstreamConfig>, Option<(String, Pos)>) {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "each upstream must be a mapping with name, virtual_machine_scale_set, port \
                     and kind, not {}",
                    node.describe()
                ),
            );
            return (None, None);
        };
        let mut b = UpstreamBuilder {
            label: upstream_label(entries, self.env),
            ..UpstreamBuilder::default()
        };
        self.mapping(node, path, UPSTREAM_FIELDS, &mut b, Section::Upstream);

        let label = b.label;
        let name_and_pos = match &b.name {
            Slot::Set(name, pos, _) => Some((name.clone(), *pos)),
            _ => None,
        };
        let name_as_written = match &b.name {
            Slot::Set(name, pos, raw) => Some((name.clone(), *pos, raw.clone())),
            _ => None,
        };
        let name = self.required(
            b.name,
            node.pos,
            &format!("{path}.name"),
            " for an upstream",
        );
        let source = self.finish_source(
            b.source,
            b.port,
            name_as_written
                .as_ref()
                .map(|(n, pos, raw)| (n.as_str(), *pos, raw.as_str())),
            node.pos,
            path,
            &label,
        );
        let kind = match b.kind {
            Slot::Absent | Slot::Empty(_) => {
                let pos = b.kind.empty_pos().unwrap_or(node.pos);
                self.error(
                    pos,
                    &format!("{path}.kind"),
                    None,
                    format!(
                        "the mandatory field kind is either not equal to http or stream or missing \
                         for {label}"
                    ),
                );
                None
            }
            other => other.or_default(UpstreamKind::Http),
        };
        let max_conns = b.max_conns.or_default(DEFAULT_MAX_CONNS);
        let max_fails = b.max_fails.or_default(DEFAULT_MAX_FAILS);
        let fail_timeout = b.fail_timeout.or_default(DEFAULT_FAIL_TIMEOUT);
        let slow_start = b.slow_start.or_default(DEFAULT_SLOW_START);
        let target = match b.target {
            Slot::Set(name, _, _) => Some(Some(name)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let upstream = (|| {
            let (vmss, port, source) = source?;
            Some(UpstreamConfig {
                name: name?,
                virtual_machine_scale_set: vmss,
                port,
                source,
                kind: kind?,
                max_conns: max_conns?,
                max_fails: max_fails?,
                fail_timeout: fail_timeout?,
                slow_start: slow_start?,
                target: target?,
                line: node.pos.line,
            })
        })();
        (upstream, name_and_pos)
    }

    /// Parses the entries of mapping `node` with `fields`; reports duplicate and unknown keys.
    pub(crate) fn mapping<B>(
        &mut self,
        node: &Node,
        path: &str,
        fields: &[Field<B>],
        builder: &mut B,
        section: Section,
    ) {
        let NodeKind::Map(entries) = &node.kind else {
            return;
        };
        let mut seen: HashMap<&str, Pos> = HashMap::new();
        for (key, value) in entries {
            let key_path = join(path, &key.text);
            if let Some(first) = seen.get(key.text.as_str()) {
                self.error(
                    key.pos,
                    &key_path,
                    None,
                    format!(
                        "duplicate key: {} is already set at line {}",
                        key.text, first.line
                    ),
                );
                continue;
            }
            seen.insert(&key.text, key.pos);
            match fields.iter().find(|f| f.key == key.text) {
                Some(field) => (field.parse)(self, value, &key_path, builder),
                None if !self.errors.wants(key.pos.line, key.pos.column) => self.errors.skip(),
                None => {
                    let own: Vec<&str> = fields.iter().map(|f| f.key).collect();
                    let message = unknown_key_message(&key.text, &own, section);
                    self.error(key.pos, &key_path, None, message);
                }
            }
        }
    }

    /// A section of known keys (`events`, `leader_election`, `tags`, `services`,
    /// `server_slots`): its builder filled from `fields` when `node` is a mapping; else
    /// `None`, with the error "KEY must be a mapping with HOLDS, not WHAT IT IS". A null
    /// node is the caller's to judge (absent, or every default), before this.
    pub(crate) fn section<B: Default>(
        &mut self,
        node: &Node,
        path: &str,
        holds: &str,
        fields: &[Field<B>],
        section: Section,
    ) -> Option<B> {
        if !matches!(node.kind, NodeKind::Map(_)) {
            let key = path.rsplit('.').next().unwrap_or(path);
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "{key} must be a mapping with {holds}, not {}",
                    node.describe()
                ),
            );
            return None;
        }
        let mut builder = B::default();
        self.mapping(node, path, fields, &mut builder, section);
        Some(builder)
    }

    /// Turns a missing or empty mandatory value into nginx-asg-sync's message.
    fn required<T>(&mut self, slot: Slot<T>, parent: Pos, path: &str, suffix: &str) -> Option<T> {
        let pos = match slot {
            Slot::Set(v, _, _) => return Some(v),
            Slot::Invalid => return None,
            Slot::Empty(pos) => pos,
            Slot::Absent => parent,
        };
        let field = path.rsplit('.').next().unwrap_or(path);
        self.error(
            pos,
            path,
            None,
            format!("the mandatory field {field} is either empty or missing{suffix}"),
        );
        None
    }

    // ----- value types ----------------------------------------------------------------------

    /// The scalar at `node` after `${VAR}` substitution; `None` (reported) when it is not a
    /// scalar or substitution fails. With `secret`, the value never appears in messages.
    fn scalar(&mut self, node: &Node, path: &str, secret: bool) -> Option<Scalar> {
        let NodeKind::Scalar { text, .. } = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!("expected a single value, not {}", node.describe()),
            );
            return None;
        };
        if node.is_null() {
            return Some(Scalar {
                text: String::new(),
                raw: text.clone(),
                pos: node.pos,
            });
        }
        match substitute(text, self.env) {
            Ok(value) => Some(Scalar {
                text: value,
                raw: text.clone(),
                pos: node.pos,
            }),
            Err(problems) => {
                for problem in problems {
                    let value = (!secret).then_some(text.as_str());
                    self.error(node.pos, path, value, problem.message());
                }
                None
            }
        }
    }

    /// A scalar turned into a slot: blank → `Empty`, otherwise `check`ed.
    fn typed<T>(
        &mut self,
        node: &Node,
        path: &str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Slot<T> {
        let Some(s) = self.scalar(node, path, false) else {
            return Slot::Invalid;
        };
        if s.text.trim().is_empty() {
            return Slot::Empty(s.pos);
        }
        match check(&s.text) {
            Ok(v) => Slot::Set(v, s.pos, s.raw),
            Err(message) => {
                self.error(s.pos, path, Some(&s.raw), message);
                Slot::Invalid
            }
        }
    }

    /// A `ca_file`: an absolute path to a readable file of PEM certificates (read here, so
    /// that a wrong file is an invalid configuration, not a failure at the first request).
    fn ca_file(&mut self, node: &Node, path: &str) -> Slot<std::path::PathBuf> {
        self.typed(node, path, |s| {
            let p = std::path::PathBuf::from(s);
            if !p.is_absolute() {
                return Err(format!(
                    "the field {} has invalid value: it must be an absolute path to a file of \
                     PEM certificates, such as /etc/ssl/certs/internal-ca.pem",
                    last_segment(path)
                ));
            }
            crate::net::read_ca_file(&p)
                .map(|_| p)
                .map_err(|e| format!("the field {} has invalid value: {e}", last_segment(path)))
        })
    }

    fn string(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| Ok(s.to_owned()))
    }

    /// An Azure resource name or id that goes into ARM URL paths.
    fn azure_name(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| check_path_segment(s).map(|()| s.to_owned()))
    }

    /// An NGINX upstream name; it goes into NGINX Plus API URL paths.
    fn upstream_name(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| check_path_segment(s).map(|()| s.to_owned()))
    }

    fn url(&mut self, node: &Node, path: &str) -> Slot<Url> {
        let Some(s) = self.scalar(node, path, false) else {
            return Slot::Invalid;
        };
        if s.text.trim().is_empty() {
            return Slot::Empty(s.pos);
        }
        match parse_http_url(s.text.trim()) {
            Ok(url) => Slot::Set(url, s.pos, s.raw),
            Err(message) => {
                self.error(s.pos, path, Some(&redact_userinfo(&s.raw)), message);
                Slot::Invalid
            }
        }
    }

    fn go_duration(&mut self, node: &Node, path: &str) -> Slot<Duration> {
        let field = last_segment(path).to_owned();
        self.typed(node, path, |s| match parse_go_duration(s.trim()) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) | Err(GoDurationError::Negative) => Err(format!(
                "the mandatory field {field} is either 0, negative or missing: it must be a \
                 duration greater than 0, such as 5s"
            )),
            Err(GoDurationError::MissingUnit) => Err(format!(
                "the field {field} has invalid value: a duration needs a unit, such as 5s, 500ms, \
                 1m30s or 1h"
            )),
            Err(GoDurationError::Overflow) => Err(format!(
                "the field {field} has invalid value: the duration is too long"
            )),
            Err(GoDurationError::Syntax) => Err(format!(
                "the field {field} has invalid value: it must be a duration such as 5s, 500ms, \
                 1m30s or 1h (units ns, us, ms, s, m, h)"
            )),
        })
    }

    fn nginx_time(&mut self, node: &Node, path: &str) -> Slot<Duration> {
        let field = last_segment(path).to_owned();
        self.typed(node, path, |s| {
            let d = parse_nginx_time(s).ok_or_else(|| {
                format!(
                    "the field {field} has invalid value: it must be an NGINX time such as 10s, \
                     90 or 1m30s (units s, m, h, d, w, M, y; a bare number is seconds)"
                )
            })?;
            // NGINX reads server fail_timeout and slow_start in whole seconds.
            if d.subsec_nanos() != 0 {
                return Err(format!(
                    "the field {field} has invalid value: NGINX takes whole seconds here"
                ));
            }
            Ok(d)
        })
    }

    /// A non-negative integer that fits 32 bits.
    fn count(&mut self, node: &Node, path: &str) -> Slot<u32> {
        let field = last_segment(path).to_owned();
        self.typed(node, path, |s| {
            parse_int(s)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    format!(
                        "the field {field} has invalid value: it must be a non-negative integer \
                         (at most {})",
                        u32::MAX
                    )
                })
        })
    }

    fn port(&mut self, node: &Node, path: &str, label: &str) -> Slot<u16> {
        self.typed(node, path, |s| match parse_int(s) {
            Some(0) => Err(format!(
                "the mandatory field port is either zero or missing for {label}: it must be an \
                 integer from 1 to 65535"
            )),
            n => n.and_then(|n| u16::try_from(n).ok()).ok_or_else(|| {
                format!(
                    "the field port has invalid value for {label}: it must be an integer from 1 \
                     to 65535"
                )
            }),
        })
    }

    fn kind(&mut self, node: &Node, path: &str, label: &str) -> Slot<UpstreamKind> {
        self.typed(node, path, |s| match s {
            "http" => Ok(UpstreamKind::Http),
            "stream" => Ok(UpstreamKind::Stream),
            _ => Err(format!(
                "the mandatory field kind is either not equal to http or stream or missing for \
                 {label}"
            )),
        })
    }

    /// A value from a fixed list of words.
    fn one_of<T: Copy>(&mut self, node: &Node, path: &str, choices: &[(&str, T)]) -> Slot<T> {
        let field = last_segment(path).to_owned();
        self.typed(node, path, |s| {
            choices
                .iter()
                .find(|(word, _)| *word == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
                    format!(
                        "the field {field} has invalid value: it must be one of {}",
                        words.join(", ")
                    )
                })
        })
    }

    fn headers(&mut self, node: &Node, path: &str) -> Slot<Vec<(String, Secret)>> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "custom_headers must be a mapping of header names to values, not {}",
                    node.describe()
                ),
            );
            return Slot::Invalid;
        };
        let mut ok = true;
        let mut headers = Vec::with_capacity(entries.len());
        // lower-case name -> line of its first use
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (key, value) in entries {
            let key_path = join(path, &key.text);
            if let Some(line) = seen.get(&key.text.to_ascii_lowercase()) {
                self.error(
                    key.pos,
                    &key_path,
                    None,
                    format!(
                        "duplicate header: {} is already set at line {line} (header names are \
                         case-insensitive)",
                        key.text
                    ),
                );
                ok = false;
                continue;
            }
            seen.insert(key.text.to_ascii_lowercase(), key.pos.line);
            if !is_header_name(&key.text) {
                self.error(
                    key.pos,
                    &key_path,
                    None,
                    "invalid HTTP header name: it must be one or more letters, digits and \
                     !#$%&'*+-.^_`|~"
                        .to_owned(),
                );
                ok = false;
            }
            match self.scalar(value, &key_path, true) {
                Some(s) if is_header_value(&s.text) => {
                    headers.push((key.text.clone(), Secret(s.text)));
                }
                Some(s) => {
                    self.error(
                        s.pos,
                        &key_path,
                        None,
                        "invalid HTTP header value: only visible ASCII characters, spaces and \
                         tabs are allowed (the value is not shown: header values may be secret)"
                            .to_owned(),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        if entries.len() > MAX_CUSTOM_HEADERS {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "too many custom headers ({}): at most {MAX_CUSTOM_HEADERS} are allowed",
                    entries.len()
                ),
            );
            ok = false;
        }
        if ok {
            Slot::Set(headers, node.pos, String::new())
        } else {
            Slot::Invalid
        }
    }
}

/// Which section a mapping is, for unknown-key hints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Top,
    Upstream,
    LeaderElection,
    Events,
    Target,
    ServerSlots,
    Tags,
    Services,
}

fn unknown_key_message(key: &str, own: &[&str], section: Section) -> String {
    let (aws_keys, other_keys, other_where): (&[&str], Vec<&str>, &str) = match section {
        Section::Top => (
            AWS_TOP_KEYS,
            UPSTREAM_FIELDS.iter().map(|f| f.key).collect(),
            "an upstream setting: it belongs in an entry of upstreams",
        ),
        Section::Upstream => (
            AWS_UPSTREAM_KEYS,
            TOP_FIELDS.iter().map(|f| f.key).collect(),
            "a top-level setting, not an upstream setting",
        ),
        Section::LeaderElection => (
            &[],
            TOP_FIELDS.iter().map(|f| f.key).collect(),
            "a top-level setting, not a leader_election setting",
        ),
        Section::Events => (
            &[],
            TOP_FIELDS.iter().map(|f| f.key).collect(),
            "a top-level setting, not an events setting",
        ),
        Section::Target => (
            &[],
            targets::all_target_keys(),
            "a setting of another target type",
        ),
        Section::ServerSlots => (
            &[],
            targets::all_target_keys(),
            "a target setting, not a server_slots setting",
        ),
        Section::Tags => (
            &[],
            UPSTREAM_FIELDS.iter().map(|f| f.key).collect(),
            "an upstream setting, not a tags setting (tags has allow and deny)",
        ),
        Section::Services => (
            &[],
            UPSTREAM_FIELDS.iter().map(|f| f.key).collect(),
            "an upstream setting, not a services setting (services has name_tag, port_tag, \
             instance_port_tag and separator)",
        ),
    };
    if aws_keys.contains(&key) {
        return format!(
            "unknown key: {key} is an nginx-asg-sync setting for AWS; vmss-sync supports Azure only"
        );
    }
    if let Some(suggestion) = did_you_mean(key, own) {
        return format!("unknown key; did you mean {suggestion}?");
    }
    if other_keys.contains(&key) {
        return format!("unknown key here: {key} is {other_where}");
    }
    format!("unknown key; the known keys here are {}", own.join(", "))
}

/// The known key closest to `key`, if it is close enough to be a likely typo.
fn did_you_mean<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_lowercase().replace('-', "_");
    let key_n = norm(key);
    let max_distance = match key_n.chars().count() {
        0..=3 => 1,
        4..=9 => 2,
        _ => 3,
    };
    let mut best: Option<(usize, &'a str)> = None;
    for &candidate in known {
        let cand_n = norm(candidate);
        // Optimal string alignment: Levenshtein plus adjacent transpositions (port → prot
        // is one edit), no substring edited twice.
        let mut distance = strsim::osa_distance(&key_n, &cand_n);
        // A shortened or lengthened key (resource_group → resource_group_name) also counts.
        if distance > max_distance
            && key_n.chars().count() >= 6
            && (cand_n.starts_with(&key_n) || key_n.starts_with(&cand_n))
        {
            distance = max_distance;
        }
        if distance <= max_distance && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, k)| k)
}

/// "the upstream NAME" from the entry's `name` (best effort), else "an upstream".
fn upstream_label(entries: &[(Key, Node)], env: &Expander<'_>) -> String {
    entries
        .iter()
        .find(|(k, _)| k.text == "name")
        .and_then(|(_, v)| match &v.kind {
            NodeKind::Scalar { text, .. } if !v.is_null() => substitute(text, env).ok(),
            _ => None,
        })
        .filter(|name| !name.trim().is_empty())
        .map_or_else(
            || "an upstream".to_owned(),
            |name| format!("the upstream {name}"),
        )
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn last_segment(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// A decimal integer with an optional sign (YAML core schema int, base 10).
fn parse_int(s: &str) -> Option<i128> {
    let s = s.trim();
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || digits.len() > 30 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Names that become one segment of an API URL path must not be able to change the path.
fn check_path_segment(s: &str) -> Result<(), String> {
    if s.chars()
        .any(|c| matches!(c, '/' | '\\' | '?' | '#' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(
            "invalid name: it must not contain /, \\, ?, #, %, spaces or control characters"
                .to_owned(),
        );
    }
    if s == "." || s == ".." {
        return Err("invalid name: . and .. are not names".to_owned());
    }
    Ok(())
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let mut url = match Url::parse(s) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err("must be an absolute URL starting with http:// or https://".to_owned())
        }
        Err(e) => return Err(format!("is not a valid URL: {e}")),
    };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "must be an http:// or https:// URL, not {}:",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("must name a host".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query (?...) or fragment (#...)".to_owned());
    }
    let path = url.path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/').to_owned();
        url.set_path(&trimmed);
    }
    Ok(url)
}

pub(crate) use crate::net::is_loopback;

fn default_audience(host: Option<&str>) -> String {
    SOVEREIGN_AUDIENCES
        .iter()
        .find(|(h, _)| host.is_some_and(|host| host.eq_ignore_ascii_case(h)))
        .map_or(PUBLIC_CLOUD_AUDIENCE, |(_, audience)| audience)
        .to_owned()
}

/// Hides `user:password@` in a URL written in the file, for messages.
fn redact_userinfo(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_len = raw[authority_start..]
        .find(['/', '?', '#'])
        .unwrap_or(raw.len() - authority_start);
    let authority = &raw[authority_start..authority_start + authority_len];
    match authority.rfind('@') {
        Some(at) => format!(
            "{}<redacted>{}",
            &raw[..authority_start],
            &raw[authority_start + at..]
        ),
        None => raw.to_owned(),
    }
}

/// RFC 9110 token.
fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Visible ASCII, space and tab (what `http::HeaderValue::from_str` accepts).
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Every key the parser accepts, as `(section, key)`, read from the key tables: section
/// `top`, `upstreams`, `upstreams.tags`, `upstreams.services`, `leader_election`,
/// `targets.{type}` and `targets.haproxy_dataplane.server_slots`. The documentation test
/// checks each against `docs/configuration.md`; a new table belongs here too.
pub(crate) fn all_keys() -> Vec<(String, &'static str)> {
    let mut keys: Vec<(String, &'static str)> = Vec::new();
    keys.extend(TOP_FIELDS.iter().map(|f| ("top".to_owned(), f.key)));
    keys.extend(
        UPSTREAM_FIELDS
            .iter()
            .map(|f| ("upstreams".to_owned(), f.key)),
    );
    keys.extend(sources::doc_keys());
    keys.extend(
        ops::LEADER_FIELDS
            .iter()
            .map(|f| ("leader_election".to_owned(), f.key)),
    );
    keys.extend(
        events::EVENTS_FIELDS
            .iter()
            .map(|f| ("events".to_owned(), f.key)),
    );
    keys.extend(targets::doc_keys());
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_keys_only() {
        let top: Vec<&str> = TOP_FIELDS.iter().map(|f| f.key).collect();
        assert_eq!(did_you_mean("sync_intervall", &top), Some("sync_interval"));
        assert_eq!(did_you_mean("sync-interval", &top), Some("sync_interval"));
        assert_eq!(did_you_mean("Api_Endpoint", &top), Some("api_endpoint"));
        assert_eq!(
            did_you_mean("resource_group", &top),
            Some("resource_group_name")
        );
        assert_eq!(did_you_mean("upstream", &top), Some("upstreams"));
        assert_eq!(did_you_mean("colour", &top), None);
        let up: Vec<&str> = UPSTREAM_FIELDS.iter().map(|f| f.key).collect();
        assert_eq!(did_you_mean("prot", &up), Some("port"));
        assert_eq!(did_you_mean("max_fail", &up), Some("max_fails"));
        assert_eq!(
            did_you_mean("virtual_machine_scaleset", &up),
            Some("virtual_machine_scale_set")
        );
    }

    #[test]
    fn edit_distance_counts_transpositions_as_one() {
        let edit_distance = strsim::osa_distance;
        assert_eq!(edit_distance("port", "prot"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        // Optimal string alignment, not unrestricted Damerau (which gives 2 here).
        assert_eq!(edit_distance("ca", "abc"), 3);
        // Characters, not bytes.
        assert_eq!(edit_distance("naïve", "naive"), 1);
    }

    #[test]
    fn did_you_mean_suggests_close_keys_including_transpositions() {
        let known = ["port", "resource_group_name", "sync_interval", "name"];
        assert_eq!(did_you_mean("prot", &known), Some("port"));
        assert_eq!(did_you_mean("snyc_interval", &known), Some("sync_interval"));
        assert_eq!(did_you_mean("Sync-Interval", &known), Some("sync_interval"));
        assert_eq!(
            did_you_mean("resource_group", &known),
            Some("resource_group_name")
        );
        assert_eq!(did_you_mean("nmae", &known), Some("name"));
        assert_eq!(did_you_mean("colour", &known), None);
        assert_eq!(did_you_mean("xyz", &known), None);
    }

    #[test]
    fn urls_are_absolute_http_without_trailing_slash() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/api/")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/api"
        );
        assert_eq!(
            parse_http_url("https://x.nginxaas.net/nplus")
                .unwrap()
                .as_str(),
            "https://x.nginxaas.net/nplus"
        );
        assert!(parse_http_url("127.0.0.1:8080/api").is_err());
        assert!(parse_http_url("/api").is_err());
        assert!(parse_http_url("ftp://x/api").is_err());
        assert!(parse_http_url("http://x/api?a=b").is_err());
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (url, expected) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.9.9.9", true),
            ("http://[::1]:8080", true),
            ("http://localhost", true),
            ("http://LOCALHOST", true),
            ("http://10.0.0.1", false),
            ("http://localhost.example.com", false),
            ("http://[::2]", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(url).unwrap()), expected, "{url}");
        }
    }

    #[test]
    fn userinfo_is_redacted_from_urls() {
        assert_eq!(
            redact_userinfo("http://u:p@host/api"),
            "http://<redacted>@host/api"
        );
        assert_eq!(redact_userinfo("http://host/a@b"), "http://host/a@b");
        assert_eq!(redact_userinfo("no url"), "no url");
    }

    #[test]
    fn header_names_and_values_follow_http_rules() {
        assert!(is_header_name("Content-Type"));
        assert!(!is_header_name("Bad Header"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("X:Y"));
        assert!(is_header_value("ApiKey abc=="));
        assert!(is_header_value(""));
        assert!(!is_header_value("a\nb"));
        assert!(!is_header_value("caf\u{e9}"));
    }

    #[test]
    fn integers_are_decimal() {
        assert_eq!(parse_int("80"), Some(80));
        assert_eq!(parse_int("+80"), Some(80));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("8_0"), None);
        assert_eq!(parse_int("0x50"), None);
        assert_eq!(parse_int("80.0"), None);
        assert_eq!(parse_int("9".repeat(40).as_str()), None);
    }
}
