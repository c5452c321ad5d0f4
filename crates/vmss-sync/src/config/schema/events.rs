//! The `events` section: the Storage Queue that Event Grid delivers resource events to. A
//! child module of `schema`, so it parses with the same context, slots and messages as the
//! other keys.

use std::time::Duration;

use base64::Engine as _;
use url::{Host, Url};

use super::super::{EventsConfig, QueueAuthConfig, Secret};
use super::yaml::Node;
use super::{field, is_loopback, redact_userinfo, Cx, Field, Section, Slot};

/// Default visibility timeout: how long a message handed out stays hidden (a reconcile
/// must finish and the message be deleted within it, or it is handed out again).
pub(crate) const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(120);
/// Default: a message handed out this many times is deleted with a warning.
pub(crate) const DEFAULT_MAX_DEQUEUE_COUNT: u32 = 5;
/// Default pause between reads of an empty queue.
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Token,
    SharedKey,
    Sas,
}

const AUTH_KINDS: &[(&str, AuthKind)] = &[
    ("token", AuthKind::Token),
    ("shared_key", AuthKind::SharedKey),
    ("sas", AuthKind::Sas),
];

#[derive(Default)]
pub(super) struct EventsBuilder {
    queue_url: Slot<Url>,
    auth: Slot<AuthKind>,
    account_name: Slot<String>,
    account_key: Slot<Secret>,
    sas_token: Slot<Secret>,
    visibility_timeout: Slot<Duration>,
    max_dequeue_count: Slot<u32>,
    poll_interval: Slot<Duration>,
    ca_file: Slot<std::path::PathBuf>,
}

/// Keys of `events`.
#[rustfmt::skip]
pub(super) const EVENTS_FIELDS: &[Field<EventsBuilder>] = &[
    field("queue_url", |cx, n, p, b| b.queue_url = cx.queue_url(n, p)),
    field("auth", |cx, n, p, b| b.auth = cx.one_of(n, p, AUTH_KINDS)),
    field("account_name", |cx, n, p, b| b.account_name = cx.string(n, p)),
    field("account_key", |cx, n, p, b| b.account_key = cx.queue_secret(n, p, true)),
    field("sas_token", |cx, n, p, b| b.sas_token = cx.queue_secret(n, p, false)),
    field("visibility_timeout", |cx, n, p, b| b.visibility_timeout = cx.go_duration(n, p)),
    field("max_dequeue_count", |cx, n, p, b| b.max_dequeue_count = cx.count(n, p)),
    field("poll_interval", |cx, n, p, b| b.poll_interval = cx.go_duration(n, p)),
    field("ca_file", |cx, n, p, b| b.ca_file = cx.ca_file(n, p)),
];

impl Cx<'_> {
    /// The `events` mapping, checked as a whole.
    pub(super) fn events(&mut self, node: &Node, path: &str) -> Slot<EventsConfig> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let Some(b) = self.section(
            node,
            path,
            "queue_url and its auth",
            EVENTS_FIELDS,
            Section::Events,
        ) else {
            return Slot::Invalid;
        };
        let key = |k: &str| format!("{path}.{k}");
        let suffix = " for events";

        let queue_url = match b.queue_url {
            Slot::Set(url, pos, shown) => {
                let problem = if url.scheme() == "http" && !is_loopback(&url) {
                    Some(
                        "must use https: plain http is allowed only to a loopback address \
                         (127.0.0.0/8, ::1, localhost)",
                    )
                } else if !url.username().is_empty() || url.password().is_some() {
                    Some("must not hold credentials: use auth and account_key or sas_token")
                } else if url.query().is_some() {
                    Some("must not have a query: put a SAS in sas_token (auth: sas)")
                } else if url.path().trim_matches('/').is_empty() {
                    Some("must name the queue: https://ACCOUNT.queue.core.windows.net/QUEUE")
                } else {
                    None
                };
                match problem {
                    Some(p) => {
                        self.error(pos, &key("queue_url"), Some(&shown), p.to_owned());
                        None
                    }
                    None => Some(url),
                }
            }
            other => self.required(other, node.pos, &key("queue_url"), suffix),
        };
        let key_set = matches!(b.account_key, Slot::Set(..) | Slot::Invalid);
        let sas_set = matches!(b.sas_token, Slot::Set(..) | Slot::Invalid);
        let kind = match b.auth {
            Slot::Set(kind, _, _) => Some(kind),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) if key_set => Some(AuthKind::SharedKey),
            Slot::Absent | Slot::Empty(_) if sas_set => Some(AuthKind::Sas),
            Slot::Absent | Slot::Empty(_) => Some(AuthKind::Token),
        };
        let misplaced = |cx: &mut Self, set: bool, name: &str, auth: &str| {
            if set {
                cx.error(
                    node.pos,
                    &key(name),
                    None,
                    format!("{name} is set but auth is {auth}: remove it, or change auth"),
                );
                true
            } else {
                false
            }
        };
        let auth = match kind {
            None => None,
            Some(AuthKind::Token) => {
                let bad = misplaced(self, key_set, "account_key", "token")
                    | misplaced(self, sas_set, "sas_token", "token");
                (!bad).then_some(QueueAuthConfig::Token)
            }
            Some(AuthKind::Sas) => {
                let bad = misplaced(self, key_set, "account_key", "sas");
                let sas = self.required(b.sas_token, node.pos, &key("sas_token"), suffix);
                sas.filter(|_| !bad).map(QueueAuthConfig::Sas)
            }
            Some(AuthKind::SharedKey) => {
                let bad = misplaced(self, sas_set, "sas_token", "shared_key");
                let account_key =
                    self.required(b.account_key, node.pos, &key("account_key"), suffix);
                let account_name = match b.account_name {
                    Slot::Set(name, _, _) => Some(name),
                    Slot::Invalid => None,
                    Slot::Absent | Slot::Empty(_) => match queue_url.as_ref() {
                        None => None,
                        Some(url) => {
                            let name = account_from_queue_url(url);
                            if name.is_none() {
                                self.error(
                                    node.pos,
                                    &key("account_name"),
                                    None,
                                    "the storage account name cannot be read from queue_url \
                                     (it is the first label of the host name, or for an emulator \
                                     the first path segment): set account_name"
                                        .to_owned(),
                                );
                            }
                            name
                        }
                    },
                };
                match (account_name, account_key, bad) {
                    (Some(account_name), Some(account_key), false) => {
                        Some(QueueAuthConfig::SharedKey {
                            account_name,
                            account_key,
                        })
                    }
                    _ => None,
                }
            }
        };
        let visibility_timeout = b.visibility_timeout.or_default(DEFAULT_VISIBILITY_TIMEOUT);
        let max_dequeue_count = b.max_dequeue_count.or_default(DEFAULT_MAX_DEQUEUE_COUNT);
        let poll_interval = b.poll_interval.or_default(DEFAULT_POLL_INTERVAL);
        let ca_file = b.ca_file.optional();
        match (
            queue_url,
            auth,
            visibility_timeout,
            max_dequeue_count,
            poll_interval,
            ca_file,
        ) {
            (
                Some(queue_url),
                Some(auth),
                Some(visibility_timeout),
                Some(max_dequeue_count),
                Some(poll_interval),
                Some(ca_file),
            ) => Slot::Set(
                EventsConfig {
                    queue_url,
                    auth,
                    visibility_timeout,
                    max_dequeue_count: max_dequeue_count.max(1),
                    poll_interval,
                    ca_file,
                },
                node.pos,
                String::new(),
            ),
            _ => Slot::Invalid,
        }
    }

    /// An http(s) URL; a query (a SAS, secret) is never shown in a message.
    fn queue_url(&mut self, node: &Node, path: &str) -> Slot<Url> {
        let Some(s) = self.scalar(node, path, true) else {
            return Slot::Invalid;
        };
        let text = s.text.trim();
        if text.is_empty() {
            return Slot::Empty(s.pos);
        }
        let shown = redact_userinfo(text.split(['?', '#']).next().unwrap_or_default());
        match Url::parse(text) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Slot::Set(url, s.pos, shown)
            }
            _ => {
                self.error(
                    s.pos,
                    path,
                    Some(&shown),
                    "the field queue_url has invalid value: it must be an http or https URL                      such as https://ACCOUNT.queue.core.windows.net/QUEUE"
                        .to_owned(),
                );
                Slot::Invalid
            }
        }
    }

    /// A secret (never in a message): the account key (base64) or a SAS token.
    fn queue_secret(&mut self, node: &Node, path: &str, base64_key: bool) -> Slot<Secret> {
        let Some(s) = self.scalar(node, path, true) else {
            return Slot::Invalid;
        };
        let text = s.text.trim().trim_start_matches('?');
        if text.is_empty() {
            return Slot::Empty(s.pos);
        }
        let ok = if base64_key {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .is_ok_and(|b| b.len() >= 16)
        } else {
            text.contains("sig=") && !text.contains(char::is_whitespace)
        };
        if ok {
            return Slot::Set(Secret::new(text), s.pos, String::new());
        }
        let message = if base64_key {
            "the field account_key has invalid value: it must be the storage account key in \
             base64, as the Azure portal shows it (the value is not shown: it is secret)"
        } else {
            "the field sas_token has invalid value: it must be a shared access signature \
             query such as sv=...&sig=... (the value is not shown: it is secret)"
        };
        self.error(s.pos, path, None, message.to_owned());
        Slot::Invalid
    }
}

/// The storage account of a queue URL: the first label of a DNS host
/// (`acct.queue.core.windows.net`), or the first path segment for an IP or `localhost` host
/// (`http://127.0.0.1:10001/devstoreaccount1/QUEUE`, the emulator's path-style URL).
fn account_from_queue_url(url: &Url) -> Option<String> {
    let candidate = match url.host()? {
        Host::Domain(d) if !d.eq_ignore_ascii_case("localhost") => d.split('.').next()?,
        _ => url.path_segments()?.next()?,
    };
    let ok = (3..=24).contains(&candidate.len())
        && candidate
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok.then(|| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::super::{parse, Config, QueueAuthConfig};
    use std::path::Path;
    use std::time::Duration;

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn env(k: &str) -> Option<String> {
        match k {
            "KEY" => Some(KEY.to_string()),
            "SAS" => Some("sv=2022-11-02&sp=rp&sig=c2VjcmV0".to_string()),
            _ => None,
        }
    }

    fn with(events: &str) -> Result<Config, String> {
        let text = format!(
            "subscription_id: sub\nresource_group_name: rg\napi_endpoint: http://127.0.0.1:8080/api\n\
             events:\n{events}upstreams:\n  - name: u\n    virtual_machine_scale_set: v\n    port: 80\n    kind: http\n"
        );
        parse(&text, Path::new("test.yaml"), &env).map_err(|e| e.to_string())
    }

    #[test]
    fn events_default_to_token_auth_and_read_the_account_from_the_url() {
        let c = with("  queue_url: https://acct1.queue.core.windows.net/vmss-events\n").unwrap();
        let ev = c.events.expect("events");
        assert_eq!(ev.auth, QueueAuthConfig::Token);
        assert_eq!(ev.visibility_timeout, Duration::from_secs(120));
        assert_eq!(ev.max_dequeue_count, 5);
        assert_eq!(ev.poll_interval, Duration::from_secs(1));
        let c = with(
            "  queue_url: http://127.0.0.1:10001/devstoreaccount1/q\n  account_key: ${KEY}\n  \
             visibility_timeout: 30s\n  max_dequeue_count: 3\n  poll_interval: 200ms\n",
        )
        .unwrap();
        let ev = c.events.expect("events");
        assert!(matches!(
            ev.auth,
            QueueAuthConfig::SharedKey { ref account_name, .. } if account_name == "devstoreaccount1"
        ));
        assert_eq!(
            (ev.visibility_timeout, ev.max_dequeue_count),
            (Duration::from_secs(30), 3)
        );
        let c = with("  queue_url: https://acct1.queue.core.windows.net/q\n  auth: sas\n  sas_token: ${SAS}\n")
            .unwrap();
        assert!(matches!(c.events.unwrap().auth, QueueAuthConfig::Sas(_)));
        assert!(
            with("").unwrap().events.is_none(),
            "an empty section is none"
        );
    }

    #[test]
    fn bad_events_settings_are_named_and_secrets_never_shown() {
        let e = with("  queue_url: http://10.0.0.5/acct/q\n").unwrap_err();
        assert!(
            e.contains("events.queue_url") && e.contains("must use https"),
            "{e}"
        );
        let e = with("  queue_url: https://acct1.queue.core.windows.net/q?sig=SECRETSIG\n")
            .unwrap_err();
        assert!(e.contains("must not have a query"), "{e}");
        assert!(!e.contains("SECRETSIG"), "{e}");
        let e = with("  queue_url: https://acct1.queue.core.windows.net/\n").unwrap_err();
        assert!(e.contains("must name the queue"), "{e}");
        let e = with("  auth: token\n").unwrap_err();
        assert!(
            e.contains("queue_url is either empty or missing for events"),
            "{e}"
        );
        let e = with("  queue_url: https://acct1.queue.core.windows.net/q\n  auth: token\n  account_key: ${KEY}\n")
            .unwrap_err();
        assert!(e.contains("account_key is set but auth is token"), "{e}");
        assert!(!e.contains(KEY), "{e}");
        let e = with("  queue_url: https://acct1.queue.core.windows.net/q\n  auth: shared_key\n")
            .unwrap_err();
        assert!(
            e.contains("account_key is either empty or missing for events"),
            "{e}"
        );
        let e = with("  queue_url: https://acct1.queue.core.windows.net/q\n  auth: sas\n  sas_token: nosignature\n")
            .unwrap_err();
        assert!(
            e.contains("sas_token has invalid value") && !e.contains("nosignature"),
            "{e}"
        );
        let e = with("  queue_url: https://acct1.queue.core.windows.net/q\n  auth: magic\n")
            .unwrap_err();
        assert!(e.contains("events.auth"), "{e}");
        let e = with("  queue_url: https://acct1.queue.core.windows.net/q\n  sync_interval: 5s\n")
            .unwrap_err();
        assert!(e.contains("not an events setting"), "{e}");
        let e = with("  - queue_url\n").unwrap_err();
        assert!(e.contains("events must be a mapping"), "{e}");
    }

    #[test]
    fn events_ca_file_must_be_an_absolute_readable_pem_file_and_is_named_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = "  queue_url: https://acct1.queue.core.windows.net/q\n";
        let missing = dir.path().join("missing.pem");
        let e = with(&format!("{url}  ca_file: {}\n", missing.display())).unwrap_err();
        assert!(
            e.contains("events.ca_file") && e.contains(&missing.display().to_string()),
            "{e}"
        );
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello, not a certificate\n").unwrap();
        let e = with(&format!("{url}  ca_file: {}\n", not_pem.display())).unwrap_err();
        assert!(
            e.contains("events.ca_file") && e.contains(&not_pem.display().to_string()),
            "{e}"
        );
        let e = with(&format!("{url}  ca_file: relative/ca.pem\n")).unwrap_err();
        assert!(
            e.contains("events.ca_file") && e.contains("absolute path"),
            "{e}"
        );
        assert_eq!(with(url).unwrap().events.unwrap().ca_file, None);
    }
}
