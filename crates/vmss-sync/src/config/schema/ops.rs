//! Keys for running vmss-sync as a service: `admin_listen`, `readiness_max_age` and the
//! `leader_election` section. A child module of `schema`, so it parses with the same context,
//! slots and messages as the other keys.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use url::{Host, Url};

use super::super::{LeaderElectionConfig, Secret, StorageAuth};
use super::parse_go_duration;
use super::yaml::Node;
use super::{field, is_loopback, redact_userinfo, Cx, Field, Section, Slot};

/// Default address of the admin endpoint.
pub(crate) const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8371,
));
/// Default lease blob name.
pub(crate) const DEFAULT_LEASE_BLOB: &str = "vmss-sync-leader";
/// Default lease duration: the Blob service's minimum, for the fastest failover.
pub(crate) const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// The Blob service's limits on a fixed lease.
const LEASE_LIMITS: (u64, u64) = (15, 60);
/// Floor of the default `readiness_max_age`.
const MIN_DEFAULT_READINESS_MAX_AGE: Duration = Duration::from_secs(30);

pub(super) fn default_admin_listen() -> Option<SocketAddr> {
    Some(DEFAULT_ADMIN_LISTEN)
}

/// 3 × `sync_interval`, at least 30 s.
pub(super) fn default_readiness_max_age(sync_interval: Duration) -> Duration {
    sync_interval
        .saturating_mul(3)
        .max(MIN_DEFAULT_READINESS_MAX_AGE)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Token,
    SharedKey,
}

const AUTH_KINDS: &[(&str, AuthKind)] = &[
    ("token", AuthKind::Token),
    ("shared_key", AuthKind::SharedKey),
];

#[derive(Default)]
pub(super) struct LeaderBuilder {
    account_url: Slot<Url>,
    account_name: Slot<String>,
    container: Slot<String>,
    blob: Slot<String>,
    lease_duration: Slot<Duration>,
    auth: Slot<AuthKind>,
    account_key: Slot<Secret>,
    ca_file: Slot<std::path::PathBuf>,
}

/// Keys of `leader_election`.
#[rustfmt::skip]
pub(super) const LEADER_FIELDS: &[Field<LeaderBuilder>] = &[
    field("account_url", |cx, n, p, b| b.account_url = cx.url(n, p)),
    field("account_name", |cx, n, p, b| b.account_name = cx.storage_account_name(n, p)),
    field("container", |cx, n, p, b| b.container = cx.container_name(n, p)),
    field("blob", |cx, n, p, b| b.blob = cx.blob_name(n, p)),
    field("lease_duration", |cx, n, p, b| b.lease_duration = cx.lease_duration(n, p)),
    field("auth", |cx, n, p, b| b.auth = cx.one_of(n, p, AUTH_KINDS)),
    field("account_key", |cx, n, p, b| b.account_key = cx.account_key(n, p)),
    field("ca_file", |cx, n, p, b| b.ca_file = cx.ca_file(n, p)),
];

impl Cx<'_> {
    /// `host:port`, `[v6]:port`, or `off` (no admin endpoint).
    pub(super) fn admin_listen(&mut self, node: &Node, path: &str) -> Slot<Option<SocketAddr>> {
        self.typed(node, path, |s| {
            let s = s.trim();
            if s.eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            s.parse::<SocketAddr>().map(Some).map_err(|_| {
                "the field admin_listen has invalid value: it must be an IP address and port such \
                 as 127.0.0.1:8371 or [::1]:8371, or off"
                    .to_owned()
            })
        })
    }

    /// The `leader_election` mapping, checked as a whole.
    pub(super) fn leader_election(
        &mut self,
        node: &Node,
        path: &str,
    ) -> Slot<LeaderElectionConfig> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let Some(b) = self.section(
            node,
            path,
            "account_url, container and the other lease settings",
            LEADER_FIELDS,
            Section::LeaderElection,
        ) else {
            return Slot::Invalid;
        };
        let key = |k: &str| format!("{path}.{k}");
        let suffix = " for leader_election";

        let account_url = match b.account_url {
            Slot::Set(url, pos, raw) => {
                let has_userinfo = !url.username().is_empty() || url.password().is_some();
                if url.scheme() == "http" && !is_loopback(&url) {
                    self.error(
                        pos,
                        &key("account_url"),
                        Some(&redact_userinfo(&raw)),
                        "must use https: plain http is allowed only to a loopback address \
                         (127.0.0.0/8, ::1, localhost)"
                            .to_owned(),
                    );
                    None
                } else if has_userinfo {
                    self.error(
                        pos,
                        &key("account_url"),
                        Some(&redact_userinfo(&raw)),
                        "must not hold credentials: use auth and account_key".to_owned(),
                    );
                    None
                } else {
                    Some(url)
                }
            }
            other => self.required(other, node.pos, &key("account_url"), suffix),
        };
        let container = self.required(b.container, node.pos, &key("container"), suffix);
        let blob = b.blob.or_default(DEFAULT_LEASE_BLOB.to_owned());
        let lease_duration = b.lease_duration.or_default(DEFAULT_LEASE_DURATION);

        let key_set = matches!(b.account_key, Slot::Set(..) | Slot::Invalid);
        let auth = match b.auth {
            Slot::Set(AuthKind::Token, pos, raw) if key_set => {
                self.error(
                    pos,
                    &key("auth"),
                    Some(&raw),
                    "auth is token but account_key is set: use auth: shared_key, or remove \
                     account_key"
                        .to_owned(),
                );
                None
            }
            Slot::Set(kind, _, _) => Some(kind),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) if key_set => Some(AuthKind::SharedKey),
            Slot::Absent | Slot::Empty(_) => Some(AuthKind::Token),
        };
        let auth = match auth {
            None => None,
            Some(AuthKind::Token) => Some(StorageAuth::Token),
            Some(AuthKind::SharedKey) => {
                let account_key =
                    self.required(b.account_key, node.pos, &key("account_key"), suffix);
                let account_name = match b.account_name {
                    Slot::Set(name, _, _) => Some(name),
                    Slot::Invalid => None,
                    Slot::Absent | Slot::Empty(_) => match account_url.as_ref() {
                        None => None,
                        Some(url) => match account_from_url(url) {
                            Some(name) => Some(name),
                            None => {
                                self.error(
                                    node.pos,
                                    &key("account_name"),
                                    None,
                                    "the storage account name cannot be read from account_url \
                                     (it is the first label of the host name, or for an \
                                     emulator the first path segment): set account_name"
                                        .to_owned(),
                                );
                                None
                            }
                        },
                    },
                };
                match (account_name, account_key) {
                    (Some(account_name), Some(account_key)) => Some(StorageAuth::SharedKey {
                        account_name,
                        account_key,
                    }),
                    _ => None,
                }
            }
        };
        let ca_file = b.ca_file.optional();
        match (account_url, container, blob, lease_duration, auth, ca_file) {
            (
                Some(account_url),
                Some(container),
                Some(blob),
                Some(lease_duration),
                Some(auth),
                Some(ca_file),
            ) => Slot::Set(
                LeaderElectionConfig {
                    account_url,
                    container,
                    blob,
                    lease_duration,
                    auth,
                    ca_file,
                },
                node.pos,
                String::new(),
            ),
            _ => Slot::Invalid,
        }
    }

    /// 3 to 24 lower-case letters and digits.
    fn storage_account_name(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            if is_account_name(s) {
                Ok(s.to_owned())
            } else {
                Err(
                    "the field account_name has invalid value: a storage account name is 3 to \
                     24 lower-case letters and digits"
                        .to_owned(),
                )
            }
        })
    }

    /// 3 to 63 lower-case letters, digits and single hyphens, starting and ending with a
    /// letter or digit.
    fn container_name(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            let ok = (3..=63).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            if ok {
                Ok(s.to_owned())
            } else {
                Err(
                    "the field container has invalid value: a container name is 3 to 63 \
                     lower-case letters, digits and single hyphens, starting and ending with a \
                     letter or digit"
                        .to_owned(),
                )
            }
        })
    }

    /// Letters, digits, `-`, `_`, `.` and `/` between non-empty segments; at most 1024.
    fn blob_name(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            let ok = (1..=1024).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
                && s.split('/')
                    .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
            if ok {
                Ok(s.to_owned())
            } else {
                Err(
                    "the field blob has invalid value: use letters, digits, -, _ and ., with / \
                     between non-empty parts (at most 1024 characters)"
                        .to_owned(),
                )
            }
        })
    }

    /// A Go duration of 15 to 60 whole seconds.
    fn lease_duration(&mut self, node: &Node, path: &str) -> Slot<Duration> {
        let (min, max) = LEASE_LIMITS;
        self.typed(node, path, |s| {
            let message = || {
                format!(
                    "the field lease_duration has invalid value: a blob lease lasts {min} to \
                     {max} whole seconds, such as 15s or 1m"
                )
            };
            let d = parse_go_duration(s.trim()).map_err(|_| message())?;
            if d.subsec_nanos() != 0 || !(min..=max).contains(&d.as_secs()) {
                return Err(message());
            }
            Ok(d)
        })
    }

    /// The account key: secret (never in a message), base64 of at least 16 bytes.
    fn account_key(&mut self, node: &Node, path: &str) -> Slot<Secret> {
        let Some(s) = self.scalar(node, path, true) else {
            return Slot::Invalid;
        };
        let text = s.text.trim();
        if text.is_empty() {
            return Slot::Empty(s.pos);
        }
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) if bytes.len() >= 16 => Slot::Set(Secret::new(text), s.pos, String::new()),
            _ => {
                self.error(
                    s.pos,
                    path,
                    None,
                    "the field account_key has invalid value: it must be the storage account key \
                     in base64, as the Azure portal shows it (the value is not shown: it is \
                     secret)"
                        .to_owned(),
                );
                Slot::Invalid
            }
        }
    }
}

fn is_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The storage account named by a blob service URL: the first label of a DNS host
/// (`acct.blob.core.windows.net`), or the first path segment for an IP or `localhost` host
/// (`http://127.0.0.1:10000/devstoreaccount1`, the emulator's path-style URL).
fn account_from_url(url: &Url) -> Option<String> {
    let candidate = match url.host()? {
        Host::Domain(d) if !d.eq_ignore_ascii_case("localhost") => d.split('.').next()?,
        _ => url.path_segments()?.next()?,
    };
    is_account_name(candidate).then(|| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_name_comes_from_the_host_or_the_emulator_path() {
        let name = |u: &str| account_from_url(&Url::parse(u).unwrap());
        assert_eq!(
            name("https://acct1.blob.core.windows.net").as_deref(),
            Some("acct1")
        );
        assert_eq!(
            name("http://127.0.0.1:10000/devstoreaccount1").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(
            name("http://localhost:10000/devstoreaccount1").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(name("http://127.0.0.1:10000/"), None);
        assert_eq!(name("https://my-acct.blob.core.windows.net"), None);
    }

    #[test]
    fn default_readiness_age_is_three_intervals_and_at_least_30_s() {
        assert_eq!(
            default_readiness_max_age(Duration::from_secs(5)),
            Duration::from_secs(30)
        );
        assert_eq!(
            default_readiness_max_age(Duration::from_secs(60)),
            Duration::from_secs(180)
        );
    }
}
