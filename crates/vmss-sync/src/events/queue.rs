//! A minimal Azure Storage Queue client for the event queue: Get Messages (with a
//! visibility timeout), Delete Message (with its pop receipt), Put Message (for tools and
//! tests) and Create Queue. Knows the Queue service's REST protocol (version
//! [`STORAGE_API_VERSION`]) and nothing of events or upstreams.
//!
//! Requests are authorised with a bearer token for [`STORAGE_SCOPE`] (the role "Storage
//! Queue Data Message Processor" allows reading and deleting messages), signed with the
//! account key ([`SharedKey`]), or carry a SAS in the queue URL's query. Neither the
//! token, the key, a signature, a SAS nor a pop receipt ever appears in an error.

use crate::azure::auth::{check_secure, AuthError, TokenCredential};
use crate::leader::blob::{message_suffix, storage_failure, xml_unescape as unescape};
use crate::leader::shared_key::SharedKey;
use crate::net::transport_detail;
use reqwest::Method;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

pub use crate::leader::blob::{STORAGE_API_VERSION, STORAGE_SCOPE};

/// The most messages one Get Messages returns (the service's limit).
pub const MAX_BATCH: u32 = 32;

/// How requests are authorised.
#[derive(Clone, Debug)]
pub enum QueueAuth {
    /// `Authorization: Bearer` with a token for [`STORAGE_SCOPE`].
    Token(Arc<dyn TokenCredential>),
    /// `Authorization: SharedKey account:signature`.
    SharedKey(SharedKey),
    /// A shared access signature: the query of the queue URL, sent with every request.
    Sas,
}

/// One message as Get Messages returns it.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// The message id.
    pub id: String,
    /// What deleting this delivery of the message needs (secret-ish: never logged).
    pub pop_receipt: String,
    /// How many times it was handed out, this time included.
    pub dequeue_count: u32,
    /// When it was put in the queue (None when the service's date did not parse).
    pub inserted: Option<SystemTime>,
    /// Its text (Event Grid writes base64 JSON).
    pub text: String,
}

impl std::fmt::Debug for QueueMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueMessage")
            .field("id", &self.id)
            .field("pop_receipt", &"<redacted>")
            .field("dequeue_count", &self.dequeue_count)
            .field("inserted", &self.inserted)
            .field("text_len", &self.text.len())
            .finish()
    }
}

/// A failed Queue service request. Names the action, the queue, the status and the
/// service's error code; never a token, key, SAS or pop receipt.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The service answered with an error status.
    #[error("queue {action} on {queue}: HTTP {status} {code}{}", message_suffix(.message))]
    Service {
        action: &'static str,
        queue: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection failure or timeout.
    #[error("queue {action} on {queue}: {detail}")]
    Transport {
        action: &'static str,
        queue: String,
        detail: String,
    },
    /// No token for Azure Storage.
    #[error("queue {action} on {queue}: {source}")]
    Auth {
        action: &'static str,
        queue: String,
        #[source]
        source: AuthError,
    },
    /// The answer could not be read.
    #[error("queue {action} on {queue}: unreadable answer: {detail}")]
    Answer {
        action: &'static str,
        queue: String,
        detail: String,
    },
    /// The client cannot be built from these settings.
    #[error("events: {0}")]
    Invalid(String),
}

impl QueueError {
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            QueueError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The client for one queue.
#[derive(Clone, Debug)]
pub struct QueueClient {
    http: reqwest::Client,
    /// The queue's URL without a query.
    queue_url: Url,
    /// The SAS query, with [`QueueAuth::Sas`].
    sas: Option<String>,
    /// `account/queue` (or the URL's path), for messages.
    name: String,
    auth: QueueAuth,
    timeout: Duration,
}

impl QueueClient {
    /// A client for the queue at `queue_url` (`https://ACCOUNT.queue.core.windows.net/QUEUE`,
    /// or Azurite's `http://127.0.0.1:10001/devstoreaccount1/QUEUE`). It must be https, or
    /// plain http to a loopback host; with [`QueueAuth::Sas`] its query is the SAS, otherwise
    /// it has none. Every request times out after `timeout`.
    pub fn new(
        queue_url: &Url,
        auth: QueueAuth,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self, QueueError> {
        check_secure(queue_url).map_err(|e| QueueError::Invalid(format!("queue_url: {e}")))?;
        if queue_url.cannot_be_a_base()
            || queue_url.path().trim_matches('/').is_empty()
            || queue_url.fragment().is_some()
        {
            return Err(QueueError::Invalid(
                "queue_url must name a queue: https://ACCOUNT.queue.core.windows.net/QUEUE".into(),
            ));
        }
        let sas = match (&auth, queue_url.query()) {
            (QueueAuth::Sas, Some(q)) if !q.is_empty() => Some(q.to_string()),
            (QueueAuth::Sas, _) => {
                return Err(QueueError::Invalid(
                    "queue_url has no SAS token (its query) for auth: sas".into(),
                ))
            }
            (_, Some(_)) => {
                return Err(QueueError::Invalid(
                    "queue_url has a query (a SAS?): use auth: sas, or remove it".into(),
                ))
            }
            (_, None) => None,
        };
        let mut base = queue_url.clone();
        base.set_query(None);
        let path = base.path().trim_end_matches('/').to_string();
        base.set_path(&path);
        Ok(Self {
            http,
            name: format!("{}{}", base.host_str().unwrap_or_default(), base.path()),
            queue_url: base,
            sas,
            auth,
            timeout,
        })
    }

    /// The queue, for logs: host and path, never the SAS.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn url(&self, sub_path: &str, query: &[(&str, String)]) -> Url {
        let mut u = self.queue_url.clone();
        if !sub_path.is_empty() {
            let p = format!("{}/{sub_path}", u.path());
            u.set_path(&p);
        }
        let mut pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        if let Some(s) = &self.sas {
            pairs.push(s.clone());
        }
        if !pairs.is_empty() {
            u.set_query(Some(&pairs.join("&")));
        }
        u
    }

    async fn send(
        &self,
        action: &'static str,
        method: Method,
        url: Url,
        body: Option<String>,
    ) -> Result<reqwest::Response, QueueError> {
        let mut headers: Vec<(&str, String)> = vec![
            ("x-ms-version", STORAGE_API_VERSION.to_string()),
            ("x-ms-date", httpdate::fmt_http_date(SystemTime::now())),
        ];
        let body_len = body.as_ref().map_or(0, String::len);
        if body.is_some() {
            headers.push(("Content-Type", "application/xml".into()));
        }
        let mut token = None;
        let authorization = match &self.auth {
            QueueAuth::Token(credential) => {
                let t = credential
                    .get_token(STORAGE_SCOPE)
                    .await
                    .map_err(|source| QueueError::Auth {
                        action,
                        queue: self.name.clone(),
                        source,
                    })?;
                let value = format!("Bearer {}", t.token);
                token = Some(t.token);
                Some(value)
            }
            QueueAuth::SharedKey(key) => {
                let mut signed = headers.clone();
                if method != Method::GET && method != Method::HEAD {
                    signed.push(("Content-Length", body_len.to_string()));
                }
                Some(key.authorization(method.as_str(), &url, &signed))
            }
            QueueAuth::Sas => None,
        };
        let mut rb = self.http.request(method.clone(), url).timeout(self.timeout);
        if let Some(a) = authorization {
            rb = rb.header(reqwest::header::AUTHORIZATION, a);
        }
        for (k, v) in &headers {
            rb = rb.header(*k, v);
        }
        if method != Method::GET && method != Method::HEAD {
            rb = rb
                .header(reqwest::header::CONTENT_LENGTH, body_len.to_string())
                .body(body.unwrap_or_default());
        }
        let resp = rb.send().await.map_err(|e| QueueError::Transport {
            action,
            queue: self.name.clone(),
            detail: transport_detail(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let (status, code, message) = storage_failure(resp).await;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if let (QueueAuth::Token(credential), Some(t)) = (&self.auth, token) {
                credential.invalidate(STORAGE_SCOPE, &t).await;
            }
        }
        Err(QueueError::Service {
            action,
            queue: self.name.clone(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    /// Creates the queue (no error when it exists). For tools and tests: the daemon never
    /// creates its queue.
    pub async fn create(&self) -> Result<(), QueueError> {
        match self
            .send("create", Method::PUT, self.url("", &[]), None)
            .await
        {
            Err(e) if e.status() == Some(409) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Gets up to `max` (1–32) messages and hides them for `visibility` (at least 1 s):
    /// unless deleted before then, they come back.
    pub async fn get_messages(
        &self,
        max: u32,
        visibility: Duration,
    ) -> Result<Vec<QueueMessage>, QueueError> {
        let url = self.url(
            "messages",
            &[
                ("numofmessages", max.clamp(1, MAX_BATCH).to_string()),
                ("visibilitytimeout", visibility.as_secs().max(1).to_string()),
            ],
        );
        let resp = self.send("get messages", Method::GET, url, None).await?;
        let text = resp.text().await.map_err(|e| QueueError::Answer {
            action: "get messages",
            queue: self.name.clone(),
            detail: transport_detail(&e),
        })?;
        parse_messages(&text).ok_or_else(|| QueueError::Answer {
            action: "get messages",
            queue: self.name.clone(),
            detail: "not a QueueMessagesList".into(),
        })
    }

    /// Deletes one delivery of a message (its pop receipt). A message already gone, or
    /// handed out again since (its receipt no longer valid), answers 404.
    pub async fn delete_message(&self, message: &QueueMessage) -> Result<(), QueueError> {
        let url = self.url(
            &format!("messages/{}", encode(&message.id)),
            &[("popreceipt", message.pop_receipt.clone())],
        );
        self.send("delete message", Method::DELETE, url, None)
            .await
            .map(drop)
    }

    /// Puts a message with this text (for tools and tests; Event Grid writes the events).
    pub async fn put_message(&self, text: &str) -> Result<(), QueueError> {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><QueueMessage><MessageText>{}</MessageText></QueueMessage>",
            escape(text)
        );
        self.send(
            "put message",
            Method::POST,
            self.url("messages", &[]),
            Some(body),
        )
        .await
        .map(drop)
    }
}

/// Percent-encodes a query value or path segment.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// The text of the first `<name>` element in `xml` (entities decoded).
fn element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    Some(unescape(&xml[start..end]))
}

/// Reads a Get Messages answer (`<QueueMessagesList>` of `<QueueMessage>`s). None when it
/// is not one. A message without an id or pop receipt is left out (it cannot be deleted).
pub fn parse_messages(xml: &str) -> Option<Vec<QueueMessage>> {
    if !xml.contains("<QueueMessagesList") {
        return None;
    }
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<QueueMessage>") {
        let body = &rest[start + "<QueueMessage>".len()..];
        let end = body.find("</QueueMessage>")?;
        let m = &body[..end];
        rest = &body[end..];
        let (Some(id), Some(pop_receipt)) = (element(m, "MessageId"), element(m, "PopReceipt"))
        else {
            continue;
        };
        out.push(QueueMessage {
            id,
            pop_receipt,
            dequeue_count: element(m, "DequeueCount")
                .and_then(|d| d.trim().parse().ok())
                .unwrap_or(1),
            inserted: element(m, "InsertionTime").and_then(|t| httpdate::parse_http_date(&t).ok()),
            text: element(m, "MessageText").unwrap_or_default(),
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_messages_answer_as_the_rest_reference_shows_it() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<QueueMessagesList>\n  <QueueMessage>\n    \
            <MessageId>5974b586-0df3-4e2d-ad0c-18e3892bfca2</MessageId>\n    \
            <InsertionTime>Fri, 09 Oct 2009 21:04:30 GMT</InsertionTime>\n    \
            <ExpirationTime>Fri, 16 Oct 2009 21:04:30 GMT</ExpirationTime>\n    \
            <PopReceipt>YzQ4Yzg1MDItYTc0Ny00OWNjLTkxYTUtZGM0MDFiZDAwYzEw</PopReceipt>\n    \
            <TimeNextVisible>Fri, 09 Oct 2009 23:29:20 GMT</TimeNextVisible>\n    \
            <DequeueCount>3</DequeueCount>\n    \
            <MessageText>eyJhIjogIjwmPiJ9</MessageText>\n  </QueueMessage>\n  \
            <QueueMessage><MessageId>b</MessageId><PopReceipt>r&amp;2</PopReceipt>\
            <MessageText>{&quot;x&quot;:&#60;1&#x3e;}</MessageText></QueueMessage>\n\
            <QueueMessage><MessageText>no id</MessageText></QueueMessage>\n</QueueMessagesList>";
        let got = parse_messages(xml).expect("a list");
        assert_eq!(got.len(), 2, "the message without an id is left out");
        assert_eq!(got[0].id, "5974b586-0df3-4e2d-ad0c-18e3892bfca2");
        assert_eq!(got[0].dequeue_count, 3);
        assert_eq!(
            got[0].inserted,
            httpdate::parse_http_date("Fri, 09 Oct 2009 21:04:30 GMT").ok()
        );
        assert_eq!(got[0].text, "eyJhIjogIjwmPiJ9");
        assert_eq!(got[1].pop_receipt, "r&2");
        assert_eq!(got[1].text, "{\"x\":<1>}");
        assert_eq!(got[1].dequeue_count, 1);
        assert!(
            !format!("{:?}", got[1]).contains("r&2"),
            "no receipt in Debug"
        );
        assert_eq!(parse_messages("<QueueMessagesList />"), Some(vec![]));
        assert_eq!(parse_messages("<html>proxy error</html>"), None);
    }

    #[test]
    fn escaping_round_trips_and_bad_entities_stay_text() {
        for s in ["plain", "<a & 'b' \"c\">", "&amp;", "50% & more"] {
            assert_eq!(unescape(&escape(s)), s);
        }
        assert_eq!(unescape("a &bogus; b &#xZZ; &"), "a &bogus; b &#xZZ; &");
    }

    #[test]
    fn urls_are_checked_and_never_show_the_sas() {
        let http = reqwest::Client::new();
        let t = Duration::from_secs(1);
        let url = |s: &str| Url::parse(s).unwrap();
        let key = || QueueAuth::SharedKey(SharedKey::new("a", "AAAA").unwrap());
        assert!(QueueClient::new(&url("http://example.com/q"), key(), http.clone(), t).is_err());
        assert!(QueueClient::new(
            &url("https://a.queue.core.windows.net/"),
            key(),
            http.clone(),
            t
        )
        .is_err());
        assert!(QueueClient::new(
            &url("https://a.queue.core.windows.net/q?sig=x"),
            key(),
            http.clone(),
            t
        )
        .is_err());
        assert!(QueueClient::new(
            &url("https://a.queue.core.windows.net/q"),
            QueueAuth::Sas,
            http.clone(),
            t
        )
        .is_err());
        let c = QueueClient::new(
            &url("https://a.queue.core.windows.net/q/?sv=2022&sig=SECRET"),
            QueueAuth::Sas,
            http,
            t,
        )
        .unwrap();
        assert_eq!(c.name(), "a.queue.core.windows.net/q");
        let u = c.url("messages", &[("numofmessages", "32".into())]);
        assert_eq!(
            u.as_str(),
            "https://a.queue.core.windows.net/q/messages?numofmessages=32&sv=2022&sig=SECRET"
        );
    }
}
