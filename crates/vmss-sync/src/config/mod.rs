//! The configuration file: nginx-asg-sync's Azure YAML format, read unchanged, plus a few new
//! optional keys.
//!
//! [`load`] reads a file, [`parse`] parses text. Both check the whole file and report **every**
//! problem at once as [`ConfigErrors`]; each [`ConfigError`] names the file, line, column, key
//! (a dotted path such as `upstreams[1].port`, list indexes counted from 0) and, where it is not
//! secret, the offending value as written in the file.
//!
//! Differences from nginx-asg-sync, all deliberate:
//! - Unknown keys are errors (with a did-you-mean), not silently ignored.
//! - `sync_interval` defaults to 5s instead of being required (the NGINXaaS docs say so).
//! - `max_fails` defaults to 1, as documented (nginx-asg-sync's code sends 0).
//! - `port` must be 1..=65535; duplicate upstream names are errors.
//! - `${VAR}` in any value is replaced from the environment (`$${` is a literal `${`).
//! - `cloud_provider` may be left out only when `subscription_id` is set (see [`Config::cloud_provider`]).
//! - `custom_headers` (which may carry an API key) are refused over plain http to a host that is
//!   not a loopback address.

mod env;
mod schema;
mod targets;
mod time;
mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::targets::{
    DataplaneApiVersion, HaproxyDataplaneTarget, HaproxyRuntimeTarget, HaproxyServerMode,
    LbPoolTarget, NginxFileTarget, NginxPlusTarget, RouteServerTarget, RuntimeAddress, ServerSlots,
    SlotGrowth, TargetConfig, TargetSpec,
};
pub use self::time::{format_nginx_time, parse_nginx_time};
/// Re-exported from [`crate::model`], where it lives.
pub use crate::model::UpstreamKind;

/// Every key the configuration file accepts, as `(section, key)` pairs read from the
/// parser's own key tables (sections: `top`, `upstreams`, `upstreams.tags`,
/// `upstreams.services`, `leader_election`, `targets.{type}`,
/// `targets.haproxy_dataplane.server_slots`). Used by the documentation test.
#[doc(hidden)]
pub fn all_keys() -> Vec<(String, &'static str)> {
    schema::all_keys()
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file the configuration came from.
    pub path: PathBuf,
    /// Always [`CloudProvider::Azure`]. nginx-asg-sync defaults an absent `cloud_provider` to
    /// AWS; vmss-sync treats an absent `cloud_provider` as Azure only when `subscription_id` is
    /// set (an Azure-only key), and otherwise reports an error asking for `cloud_provider: Azure`.
    /// `cloud_provider: AWS` is an error: vmss-sync supports Azure only.
    pub cloud_provider: CloudProvider,
    /// Azure subscription holding the scale sets.
    pub subscription_id: String,
    /// Resource group holding the scale sets (and their VMs and NICs).
    pub resource_group_name: String,
    /// NGINX Plus API base URL, e.g. `http://127.0.0.1:8080/api` or
    /// `https://x.nginxaas.net/nplus`. The path is kept as given, minus trailing slashes (so
    /// `as_str()` ends in `/` only when the path is the root). No query or fragment.
    ///
    /// `None` when every upstream names a `target` and the file has no `api_endpoint`.
    pub api_endpoint: Option<url::Url>,
    /// Pause between sync passes. Go duration syntax; default 5s; always > 0.
    pub sync_interval: Duration,
    /// Extra headers sent with every NGINX Plus API request: (name, value), in file order.
    /// Names are HTTP tokens, values visible ASCII plus space and tab.
    pub custom_headers: Vec<(String, Secret)>,
    /// `api_ca_file`: PEM certificates trusted, besides the system trust store, for the
    /// NGINX Plus API of `api_endpoint` (an internal CA).
    pub api_ca_file: Option<std::path::PathBuf>,
    /// `resource_manager_ca_file`: PEM certificates trusted, besides the system trust
    /// store, for ARM and the token endpoints (Azure Stack Hub, on-premises clouds).
    pub resource_manager_ca_file: Option<std::path::PathBuf>,
    /// Azure Resource Manager base URL; default `https://management.azure.com`. https, or plain
    /// http to a loopback host (127.0.0.0/8, ::1, localhost). Trailing slashes of a non-root
    /// path are removed.
    pub resource_manager_endpoint: url::Url,
    /// Audience (resource) for ARM access tokens. Default `https://management.azure.com`, or the
    /// sovereign cloud's own for `management.usgovcloudapi.net` and
    /// `management.chinacloudapi.cn`.
    pub resource_manager_audience: String,
    /// Log line format; default text.
    pub log_format: LogFormat,
    /// One of `error`, `warn`, `info`, `debug`, `trace`, when set.
    pub log_level: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; `None` with `admin_listen: off`.
    /// Default `127.0.0.1:8371`. Read at startup only (a reload does not move it).
    pub admin_listen: Option<std::net::SocketAddr>,
    /// `/readyz` says ready only while every upstream had a successful reconcile at most this
    /// long ago. Default 3 × `sync_interval`, at least 30 s.
    pub readiness_max_age: Duration,
    /// Leader election between replicas on an Azure Blob Storage lease; `None` (the default)
    /// means this is the only replica and always writes. Read at startup only.
    pub leader_election: Option<LeaderElectionConfig>,
    /// `events`: the Storage Queue Event Grid delivers resource events to; None: polling
    /// only. Read at startup only.
    pub events: Option<EventsConfig>,
    /// At least one; names are unique.
    pub upstreams: Vec<UpstreamConfig>,
    /// Named targets (`targets:`), in file order; empty when the file has none.
    pub targets: Vec<TargetConfig>,
    /// Instance views (power state, health) are read at most this often. Default 15 s.
    pub health_interval: Duration,
    /// ARM reads the daemon may spend at once per subscription. Default 250 (ARM's bucket).
    pub arm_read_burst: u32,
    /// Reads per second the budget refills at. Default 25 (ARM's refill rate).
    pub arm_reads_per_second: f64,
}

/// One NGINX Plus upstream fed from one scale set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    /// `virtual_machine_scale_set` as a label for logs: the name, or the names and globs
    /// joined with `,`; empty when the upstream selects by tags only (the names themselves
    /// are in `source.scale_sets`).
    pub virtual_machine_scale_set: String,
    /// 1..=65535. Optional only with `port_tag` (then the port when the tag is absent).
    pub port: Option<u16>,
    /// Where the servers come from and when they are registered.
    pub source: SourceConfig,
    pub kind: UpstreamKind,
    /// Default 0.
    pub max_conns: u32,
    /// Default 1.
    pub max_fails: u32,
    /// Default 10s.
    pub fail_timeout: Duration,
    /// Default 0s.
    pub slow_start: Duration,
    /// The `targets:` entry holding it; `None`: the NGINX Plus API of `api_endpoint`.
    pub target: Option<String>,
    /// Line of this upstream's entry in the file.
    pub line: usize,
}

/// Where an upstream's servers come from and when they are registered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceConfig {
    /// `virtual_machine_scale_set`: scale set names or globs (`*`, `?`); empty when the
    /// upstream selects by `tags` only.
    pub scale_sets: Vec<String>,
    /// `subscription_id` of this upstream; None: the top-level one.
    pub subscription_id: Option<String>,
    /// `resource_group_name` of this upstream (one or a list; `*` alone: every resource
    /// group of the subscription); None: the top-level one.
    pub resource_groups: Option<Vec<String>>,
    /// `tags`: scale sets (and, without `virtual_machine_scale_set`, standalone VMs) whose
    /// tags match every `allow` entry and no `deny` entry.
    pub tags: Option<TagsConfig>,
    /// `port_tag`: a tag holding the port, on the VM or else on its scale set.
    pub port_tag: Option<String>,
    /// `register_when`; None: `healthy` for sets that report health, `running` otherwise.
    pub register_when: Option<crate::model::RegisterWhen>,
    /// `drain_timeout`: how long a leaving server drains before it is removed. Default 30 s.
    pub drain_timeout: Duration,
    /// `services`: the upstream is a template; every service found by tags (name, port,
    /// region) becomes its own backend `{name}{separator}{service}{separator}{port}{separator}{region}`.
    pub services: Option<ServicesConfig>,
}

/// `services` of an upstream: services found by tags, as the HAProxy Azure daemon finds
/// them (its tag names are the defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicesConfig {
    /// `name_tag`: the tag holding the service name (default `HAProxy:Service:Name`).
    pub name_tag: String,
    /// `port_tag`: the tag holding the service port (default `HAProxy:Service:Port`).
    pub port_tag: String,
    /// `instance_port_tag`: a tag overriding the port of one instance (default
    /// `HAProxy:Instance:Port`).
    pub instance_port_tag: String,
    /// `separator` between the parts of a backend name (default `-`).
    pub separator: String,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            name_tag: "HAProxy:Service:Name".into(),
            port_tag: "HAProxy:Service:Port".into(),
            instance_port_tag: "HAProxy:Instance:Port".into(),
            separator: "-".into(),
        }
    }
}

/// `tags` of an upstream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagsConfig {
    /// Every entry must match (tag names case-insensitive; values exact, `*`/`?` allowed).
    pub allow: std::collections::BTreeMap<String, String>,
    /// No entry may match.
    pub deny: std::collections::BTreeMap<String, String>,
}

/// `leader_election`: two or more replicas, one writer, through a lease on an Azure Storage blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// The account's blob service URL: `https://ACCOUNT.blob.core.windows.net`, or an
    /// emulator's `http://127.0.0.1:10000/devstoreaccount1`. https, or plain http to a loopback
    /// host. No trailing slash.
    pub account_url: url::Url,
    /// Container of the lease blob (created when missing). Azure container naming rules.
    pub container: String,
    /// The lease blob (an empty block blob, created when missing). Default `vmss-sync-leader`.
    pub blob: String,
    /// Lease duration: 15 to 60 whole seconds (the Blob service's limits). Default 15 s.
    pub lease_duration: Duration,
    /// How requests to the Blob service are authorised.
    pub auth: StorageAuth,
    /// `ca_file`: PEM certificates trusted, besides the system trust store, for the Blob
    /// service (an emulator or a private endpoint behind an internal CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// `events`: resource events from Event Grid, through an Azure Storage queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventsConfig {
    /// The queue: `https://ACCOUNT.queue.core.windows.net/QUEUE`, or an emulator's
    /// `http://127.0.0.1:10001/devstoreaccount1/QUEUE`. https, or plain http to a loopback
    /// host; no query (a SAS goes in `sas_token`).
    pub queue_url: url::Url,
    /// How requests to the Queue service are authorised.
    pub auth: QueueAuthConfig,
    /// How long a message handed out stays hidden. Default 120 s.
    pub visibility_timeout: Duration,
    /// A message handed out this many times is deleted with a warning. Default 5.
    pub max_dequeue_count: u32,
    /// Pause between reads of an empty queue. Default 1 s.
    pub poll_interval: Duration,
    /// PEM certificates trusted for the queue's HTTPS, besides the system's (checked at
    /// load: readable, holding a certificate).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Authorisation of Queue service requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueAuthConfig {
    /// A bearer token from the credential chain (scope `https://storage.azure.com/.default`).
    Token,
    /// Shared Key, as for `leader_election`.
    SharedKey {
        /// Storage account name (from `account_name`, or read from `queue_url`).
        account_name: String,
        /// The account key, base64 as the portal shows it.
        account_key: Secret,
    },
    /// A shared access signature (`sv=...&sig=...`), sent as the query of every request.
    Sas(Secret),
}

/// Authorisation of Blob service requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageAuth {
    /// A bearer token from the credential chain (scope `https://storage.azure.com/.default`).
    Token,
    /// Shared Key: requests signed with the account key (HMAC-SHA256); the key never leaves
    /// the process.
    SharedKey {
        /// Storage account name (from `account_name`, or read from `account_url`).
        account_name: String,
        /// The account key, base64 as the portal shows it.
        account_key: Secret,
    },
}

/// A secret string: `Debug` and `Display` print `<redacted>`; use [`Secret::expose`] to read it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloudProvider {
    Azure,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Limits on what a configuration file may ask of the parser, so that a hostile or broken
/// file is refused with a clear message, in bounded time and memory, instead of exhausting
/// the process. `docs/configuration-limits.md` lists them for users.
pub mod limits {
    /// Largest configuration file, in bytes (1 MiB).
    pub const MAX_FILE_BYTES: usize = 1 << 20;
    /// Deepest nesting of lists and mappings (the deepest real configuration needs about 6).
    pub const MAX_DEPTH: usize = 32;
    /// Most YAML nodes (values, lists, mappings) in the document, alias copies included
    /// (a file with 1,000 upstreams has about 10,000).
    pub const MAX_NODES: usize = 100_000;
    /// Most bytes that anchors and aliases may copy, counted as the memory the copies
    /// take: every copied value's and key's text plus the size of each copied node
    /// (1 MiB). An anchored 100 KB string aliased ten times reaches it.
    pub const MAX_ALIAS_BYTES: usize = 1 << 20;
    /// Longest single value, in bytes, as written in the file (64 KiB).
    pub const MAX_SCALAR_BYTES: usize = 64 << 10;
    /// Longest mapping key, in bytes (1 KiB).
    pub const MAX_KEY_BYTES: usize = 1 << 10;
    /// Longest value after `${VAR}` substitution, in bytes (64 KiB).
    pub const MAX_EXPANDED_VALUE_BYTES: usize = 64 << 10;
    /// Most bytes `${VAR}` substitution may read from the environment for the whole file,
    /// inserted or refused (1 MiB).
    pub const MAX_EXPANSION_BYTES: usize = 1 << 20;
    /// Most problems reported; the rest are counted ("… and N more problems").
    pub const MAX_ERRORS: usize = 50;
    /// Longest key or value shown in a message, in characters; longer ones are cut and
    /// marked with "…".
    pub const MAX_SHOWN_CHARS: usize = 200;
}

/// Every problem found in a configuration file (at most [`limits::MAX_ERRORS`], the first
/// ones by position; `omitted` counts the rest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
    /// Problems found but not listed in `errors`.
    pub omitted: usize,
}

impl fmt::Display for ConfigErrors {
    /// One line per error (no trailing newline), then "… and N more problems" when some
    /// were left out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        if self.omitted > 0 {
            let s = if self.omitted == 1 { "" } else { "s" };
            write!(f, "\n… and {} more problem{s}", self.omitted)?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// One problem that belongs to the file as a whole or to one position.
    fn one(file: &Path, line: usize, column: usize, message: String) -> ConfigErrors {
        ConfigErrors {
            errors: vec![ConfigError {
                file: file.to_path_buf(),
                line,
                column,
                key: String::new(),
                value: None,
                message,
            }],
            omitted: 0,
        }
    }
}

/// Collects problems in bounded memory: keeps the [`limits::MAX_ERRORS`] first ones by
/// (line, column), in the order they were found among equal positions, counts the others,
/// and cuts long keys and values.
#[derive(Debug, Default)]
pub(crate) struct ErrorList {
    errors: Vec<ConfigError>,
    omitted: usize,
    /// Once the list has been full: the position of the last problem kept. A problem at
    /// or after it would not be kept.
    cutoff: Option<(usize, usize)>,
}

impl ErrorList {
    /// False when a problem at `line`, `column` would not be listed (enough problems
    /// come before it): the caller may count it with [`ErrorList::skip`] instead of
    /// composing its message.
    pub(crate) fn wants(&self, line: usize, column: usize) -> bool {
        self.cutoff.is_none_or(|c| (line, column) < c)
    }

    /// Counts a problem that is not listed.
    pub(crate) fn skip(&mut self) {
        self.omitted += 1;
    }

    pub(crate) fn push(&mut self, mut error: ConfigError) {
        shorten(&mut error.key);
        if let Some(v) = error.value.as_mut() {
            shorten(v);
        }
        self.errors.push(error);
        if self.errors.len() >= 2 * limits::MAX_ERRORS {
            self.keep_first();
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    fn keep_first(&mut self) {
        self.errors.sort_by_key(|e| (e.line, e.column));
        if self.errors.len() > limits::MAX_ERRORS {
            self.omitted += self.errors.len() - limits::MAX_ERRORS;
            self.errors.truncate(limits::MAX_ERRORS);
        }
        if self.errors.len() == limits::MAX_ERRORS {
            self.cutoff = self.errors.last().map(|e| (e.line, e.column));
        }
    }

    /// The problems sorted by position, at most [`limits::MAX_ERRORS`].
    pub(crate) fn finish(mut self) -> ConfigErrors {
        self.keep_first();
        ConfigErrors {
            errors: self.errors,
            omitted: self.omitted,
        }
    }
}

/// Cuts `s` to [`limits::MAX_SHOWN_CHARS`] characters, marking the cut with its length.
fn shorten(s: &mut String) {
    if let Some((cut, _)) = s.char_indices().nth(limits::MAX_SHOWN_CHARS) {
        let total = s.len();
        s.truncate(cut);
        s.push_str(&format!("… ({total} bytes)"));
    }
}

impl std::error::Error for ConfigErrors {}

/// One problem, displayed as `{file}:{line}:{column}: {key}: {message}` followed by
/// ` (value: "{value}")` when there is a value.
///
/// `line` and `column` are 1-based; both are 0 when the problem has no position (the file could
/// not be read), and then the display is `{file}: {message}`. `key` is empty for problems that
/// belong to no key (YAML syntax errors), and then `{key}: ` is left out. `value` is the value as
/// written in the file, before `${VAR}` substitution; it is never set for secrets
/// (`custom_headers` values) or for unknown keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key.escape_debug())?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(value) = &self.value {
            write!(f, " (value: \"{}\")", value.escape_debug())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the configuration file at `path`. `env` looks up environment variables for
/// `${VAR}` substitution (pass `&|name| std::env::var(name).ok()` in production).
///
/// At most [`limits::MAX_FILE_BYTES`] are read; a larger file, or one that is not UTF-8, is
/// refused with the line and column where the problem starts.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    use std::io::Read;
    let unreadable = |e: std::io::Error| {
        ConfigErrors::one(path, 0, 0, format!("couldn't read the config file: {e}"))
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(limits::MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(unreadable)?;
    if bytes.len() > limits::MAX_FILE_BYTES {
        return Err(too_large(path, &bytes));
    }
    match String::from_utf8(bytes) {
        Ok(text) => parse(&text, path, env),
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let bytes = e.as_bytes();
            let (line, column) = line_column(bytes, at);
            Err(ConfigErrors::one(
                path,
                line,
                column,
                format!(
                    "the file is not valid UTF-8: byte 0x{:02x} at offset {at} (save it as UTF-8)",
                    bytes.get(at).copied().unwrap_or(0)
                ),
            ))
        }
    }
}

/// 1-based line and column (in characters, as in the parser's messages) of byte offset `at`.
fn line_column(bytes: &[u8], at: usize) -> (usize, usize) {
    let before = &bytes[..at.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// The file is over [`limits::MAX_FILE_BYTES`]: refused at the line where it crosses it.
fn too_large(path: &Path, text: &[u8]) -> ConfigErrors {
    let (line, column) = line_column(text, limits::MAX_FILE_BYTES);
    ConfigErrors::one(
        path,
        line,
        column,
        format!(
            "the file is larger than {} bytes (1 MiB), the most a configuration file may be",
            limits::MAX_FILE_BYTES
        ),
    )
}

/// Parses configuration `text` that came from `path` (used in messages and [`Config::path`]).
/// `text` is held to the same [`limits`] as a file.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    if text.len() > limits::MAX_FILE_BYTES {
        return Err(too_large(path, text.as_bytes()));
    }
    schema::parse(text, path, env)
}

#[cfg(test)]
mod tests;
