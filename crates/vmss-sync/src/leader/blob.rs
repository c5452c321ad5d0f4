//! A minimal Azure Blob Storage client for one lease blob: acquire, renew, release and break
//! its lease (`PUT {blob}?comp=lease`), and create the container and the empty blob when
//! they are missing. Knows the Blob service's REST protocol (version
//! [`STORAGE_API_VERSION`]) and nothing of upstreams.
//!
//! Requests are authorised with a bearer token for [`STORAGE_SCOPE`] from a
//! [`TokenCredential`], or signed with the account key ([`SharedKey`]). Neither the token, the
//! key nor a signature ever appears in an error.

use super::shared_key::SharedKey;
use crate::azure::auth::{check_secure, AuthError, TokenCredential};
use crate::metrics::{LeaseResult, Metrics};
use reqwest::Method;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

/// Blob service REST version sent as `x-ms-version` (bearer tokens need 2017-11-09 or later).
pub const STORAGE_API_VERSION: &str = "2021-12-02";
/// Token scope for Azure Storage (every cloud).
pub const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Longest service message kept in an error.
const MAX_MESSAGE: usize = 200;

/// How requests are authorised.
#[derive(Clone, Debug)]
pub enum BlobAuth {
    /// `Authorization: Bearer` with a token for [`STORAGE_SCOPE`].
    Token(Arc<dyn TokenCredential>),
    /// `Authorization: SharedKey account:signature`.
    SharedKey(SharedKey),
}

/// What an acquire found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// This replica holds the lease now.
    Acquired,
    /// Another holder has it (the service's error code says how: `LeaseAlreadyPresent`,
    /// `LeaseIsBreakingAndCannotBeAcquired`).
    Held(String),
}

/// A failed Blob service request. Names the action, the container/blob path, the status and
/// the service's error code; never a token, key, signature or lease ID.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The service answered with an error status.
    #[error("lease {action} on {path}: HTTP {status} {code}{}", message_suffix(.message))]
    Service {
        action: &'static str,
        path: String,
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection failure or timeout.
    #[error("lease {action} on {path}: {detail}")]
    Transport {
        action: &'static str,
        path: String,
        detail: String,
    },
    /// No token for Azure Storage.
    #[error("lease {action} on {path}: {source}")]
    Auth {
        action: &'static str,
        path: String,
        #[source]
        source: AuthError,
    },
    /// The client cannot be built from these settings.
    #[error("leader election: {0}")]
    Invalid(String),
}

/// ": message", or nothing for an empty message (the Storage services' error texts).
pub(crate) fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl LeaseError {
    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            LeaseError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The service's error code (`LeaseAlreadyPresent`, `LeaseIdMismatchWithLeaseOperation`…).
    pub fn code(&self) -> Option<&str> {
        match self {
            LeaseError::Service { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when the answer proves this replica does not hold the lease (gone, taken,
    /// broken or breaking): 404, 409 and 412.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self.status(), Some(404 | 409 | 412))
    }

    /// A definite answer from the service about the lease (as opposed to no answer, an
    /// authentication failure or a server error): the service is reachable and usable.
    pub fn is_definite(&self) -> bool {
        matches!(self.status(), Some(404 | 409 | 412))
    }
}

/// The lease client for one blob.
#[derive(Clone, Debug)]
pub struct BlobLeaseClient {
    http: reqwest::Client,
    container_url: Url,
    blob_url: Url,
    /// `container/blob`, for messages.
    path: String,
    auth: BlobAuth,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
}

/// What a path segment keeps unencoded: RFC 3986's unreserved characters.
const SEGMENT_KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one URL path segment (names are checked by the configuration, so this is
/// a safety net).
fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT_KEEP).to_string()
}

fn lease_result(r: &Result<reqwest::Response, LeaseError>) -> LeaseResult {
    match r {
        Ok(_) => LeaseResult::Ok,
        Err(e) if e.is_definite() => LeaseResult::Conflict,
        Err(_) => LeaseResult::Error,
    }
}

/// What a Storage service (Blob, Queue) says of a failed request, for the lease client
/// and the queue client alike: its status, its error code (`x-ms-error-code`, else the
/// body's `<Code>`, else the status's reason) and the first line of the body's `<Message>`
/// ("" when there is none).
pub(crate) async fn storage_failure(
    resp: reqwest::Response,
) -> (reqwest::StatusCode, String, String) {
    let status = resp.status();
    let header_code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.text().await.unwrap_or_default();
    let (body_code, message) = parse_error_body(&body);
    let code = header_code
        .or(body_code)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    (status, code, message.unwrap_or_default())
}

/// XML text with its entities decoded (the five named ones and character references; an
/// `&` that starts none is kept as it is).
pub(crate) fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let Some(end) = tail.find(';').filter(|e| *e <= 10) else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            e => e
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| e.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `<Code>` and the first line of `<Message>` of a Storage XML error body (entities
/// decoded).
fn parse_error_body(body: &str) -> (Option<String>, Option<String>) {
    let element = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = body.find(&open)? + open.len();
        let end = body[start..].find(&close)? + start;
        Some(xml_unescape(body[start..end].trim()))
    };
    let message = element("Message").and_then(|m| {
        let first = m.lines().next().unwrap_or_default().trim().to_string();
        (!first.is_empty()).then(|| crate::azure::auth::truncate_chars(&first, MAX_MESSAGE))
    });
    (element("Code").filter(|c| !c.is_empty()), message)
}

use crate::net::transport_detail;

impl BlobLeaseClient {
    /// A client for `account_url/container/blob`. `account_url` must be https, or plain
    /// http to a loopback host. Every request times out after `timeout`.
    pub fn new(
        account_url: &Url,
        container: &str,
        blob: &str,
        auth: BlobAuth,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Self, LeaseError> {
        check_secure(account_url).map_err(|e| LeaseError::Invalid(format!("account_url: {e}")))?;
        if account_url.query().is_some() || account_url.cannot_be_a_base() {
            return Err(LeaseError::Invalid(
                "account_url must be a plain https URL without a query".into(),
            ));
        }
        let base = account_url.as_str().trim_end_matches('/');
        let blob_path = blob
            .split('/')
            .map(encode_segment)
            .collect::<Vec<_>>()
            .join("/");
        let container_url = Url::parse(&format!("{base}/{}", encode_segment(container)))
            .map_err(|e| LeaseError::Invalid(format!("container URL: {e}")))?;
        let blob_url = Url::parse(&format!("{}/{blob_path}", container_url.as_str()))
            .map_err(|e| LeaseError::Invalid(format!("blob URL: {e}")))?;
        Ok(Self {
            http,
            container_url,
            blob_url,
            path: format!("{container}/{blob}"),
            auth,
            timeout,
            metrics: None,
        })
    }

    /// Counts every request in `vmss_sync_lease_requests_total`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// `container/blob`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Sends one request with an empty body; `Ok` for a 2xx answer.
    async fn send(
        &self,
        action: &'static str,
        method: Method,
        url: &Url,
        extra: &[(&'static str, String)],
    ) -> Result<reqwest::Response, LeaseError> {
        let r = self.send_inner(action, method, url, extra).await;
        if let Some(m) = &self.metrics {
            m.lease_request(action, lease_result(&r));
        }
        r
    }

    async fn send_inner(
        &self,
        action: &'static str,
        method: Method,
        url: &Url,
        extra: &[(&'static str, String)],
    ) -> Result<reqwest::Response, LeaseError> {
        let mut headers: Vec<(&str, String)> = vec![
            ("x-ms-version", STORAGE_API_VERSION.to_string()),
            ("x-ms-date", httpdate::fmt_http_date(SystemTime::now())),
        ];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let mut token = None;
        let authorization = match &self.auth {
            BlobAuth::Token(credential) => {
                let t = credential
                    .get_token(STORAGE_SCOPE)
                    .await
                    .map_err(|source| LeaseError::Auth {
                        action,
                        path: self.path.clone(),
                        source,
                    })?;
                let value = format!("Bearer {}", t.token);
                token = Some(t.token);
                value
            }
            BlobAuth::SharedKey(key) => {
                let mut signed = headers.clone();
                if method != Method::GET && method != Method::HEAD {
                    signed.push(("Content-Length", "0".into()));
                }
                key.authorization(method.as_str(), url, &signed)
            }
        };
        let mut rb = self
            .http
            .request(method.clone(), url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::AUTHORIZATION, authorization);
        for (k, v) in &headers {
            rb = rb.header(*k, v);
        }
        if method != Method::GET && method != Method::HEAD {
            // The Blob service wants a Content-Length on every PUT; hyper leaves it out for
            // an empty body unless it is set.
            rb = rb
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .body(Vec::new());
        }
        let resp = rb.send().await.map_err(|e| LeaseError::Transport {
            action,
            path: self.path.clone(),
            detail: transport_detail(&e),
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let (status, code, message) = storage_failure(resp).await;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            if let (BlobAuth::Token(credential), Some(t)) = (&self.auth, token) {
                credential.invalidate(STORAGE_SCOPE, &t).await;
            }
        }
        Err(LeaseError::Service {
            action,
            path: self.path.clone(),
            status: status.as_u16(),
            code,
            message,
        })
    }

    fn lease_url(&self) -> Url {
        let mut u = self.blob_url.clone();
        u.set_query(Some("comp=lease"));
        u
    }

    async fn try_acquire(&self, lease_id: &str, duration: Duration) -> Result<Acquire, LeaseError> {
        let r = self
            .send(
                "acquire",
                Method::PUT,
                &self.lease_url(),
                &[
                    ("x-ms-lease-action", "acquire".into()),
                    ("x-ms-lease-duration", duration.as_secs().to_string()),
                    ("x-ms-proposed-lease-id", lease_id.to_string()),
                ],
            )
            .await;
        match r {
            Ok(_) => Ok(Acquire::Acquired),
            Err(e) if e.status() == Some(409) => Ok(Acquire::Held(
                e.code().unwrap_or("LeaseAlreadyPresent").to_string(),
            )),
            Err(e) => Err(e),
        }
    }

    /// Acquires the lease for `duration` (15–60 s) with this replica's `lease_id`. Acquiring
    /// again with the ID of the active lease succeeds (and restarts it). Creates the
    /// container and the blob first when the service says they are missing.
    pub async fn acquire(&self, lease_id: &str, duration: Duration) -> Result<Acquire, LeaseError> {
        match self.try_acquire(lease_id, duration).await {
            Err(e) if e.status() == Some(404) => {
                if e.code() != Some("BlobNotFound") {
                    self.create_container().await?;
                }
                self.create_blob().await?;
                tracing::info!(blob = %self.path, "Leader election: created the lease blob.");
                self.try_acquire(lease_id, duration).await
            }
            other => other,
        }
    }

    /// Renews the lease this replica holds.
    pub async fn renew(&self, lease_id: &str) -> Result<(), LeaseError> {
        self.send(
            "renew",
            Method::PUT,
            &self.lease_url(),
            &[
                ("x-ms-lease-action", "renew".into()),
                ("x-ms-lease-id", lease_id.to_string()),
            ],
        )
        .await
        .map(drop)
    }

    /// Releases the lease this replica holds, so that another replica can acquire it at once.
    pub async fn release(&self, lease_id: &str) -> Result<(), LeaseError> {
        self.send(
            "release",
            Method::PUT,
            &self.lease_url(),
            &[
                ("x-ms-lease-action", "release".into()),
                ("x-ms-lease-id", lease_id.to_string()),
            ],
        )
        .await
        .map(drop)
    }

    /// Breaks the lease whoever holds it (an operator's tool). Without `period` a fixed
    /// lease breaks when its remaining time runs out, so its holder, which stops writing
    /// before that, never overlaps with the next one; `Some(0)` breaks it at once.
    pub async fn break_lease(&self, period: Option<Duration>) -> Result<(), LeaseError> {
        let mut extra = vec![("x-ms-lease-action", "break".to_string())];
        if let Some(p) = period {
            extra.push(("x-ms-lease-break-period", p.as_secs().to_string()));
        }
        self.send("break", Method::PUT, &self.lease_url(), &extra)
            .await
            .map(drop)
    }

    /// The blob's `x-ms-lease-state` (`available`, `leased`, `expired`, `breaking`,
    /// `broken`).
    pub async fn lease_state(&self) -> Result<String, LeaseError> {
        let resp = self
            .send("properties", Method::HEAD, &self.blob_url, &[])
            .await?;
        Ok(resp
            .headers()
            .get("x-ms-lease-state")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string())
    }

    /// Creates the container; one that exists already is fine.
    pub async fn create_container(&self) -> Result<(), LeaseError> {
        let mut u = self.container_url.clone();
        u.set_query(Some("restype=container"));
        match self.send("create-container", Method::PUT, &u, &[]).await {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the empty lease blob unless it exists (`If-None-Match: *`).
    pub async fn create_blob(&self) -> Result<(), LeaseError> {
        match self
            .send(
                "create-blob",
                Method::PUT,
                &self.blob_url,
                &[
                    ("x-ms-blob-type", "BlockBlob".into()),
                    ("If-None-Match", "*".into()),
                ],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.status(), Some(409 | 412)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_error_bodies_give_the_code_and_the_first_line_of_the_message() {
        let body = "\u{feff}<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>LeaseAlreadyPresent</Code><Message>There is already a lease present.\nRequestId:1\nTime:2024</Message></Error>";
        let (code, message) = parse_error_body(body);
        assert_eq!(code.as_deref(), Some("LeaseAlreadyPresent"));
        assert_eq!(
            message.as_deref(),
            Some("There is already a lease present.")
        );
        assert_eq!(parse_error_body(""), (None, None));
        // Entities are decoded, as in the queue's answers.
        let (_, message) =
            parse_error_body("<Error><Code>X</Code><Message>a &amp; b &lt;c&gt;</Message></Error>");
        assert_eq!(message.as_deref(), Some("a & b <c>"));
    }

    #[test]
    fn urls_are_built_from_the_account_url_and_plain_http_only_goes_to_loopback() {
        let key = SharedKey::new("devstoreaccount1", "AAAAAAAAAAAAAAAAAAAAAA==").unwrap();
        let http = reqwest::Client::new();
        let c = BlobLeaseClient::new(
            &Url::parse("http://127.0.0.1:10000/devstoreaccount1").unwrap(),
            "leases",
            "a/b.lock",
            BlobAuth::SharedKey(key.clone()),
            http.clone(),
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(
            c.lease_url().as_str(),
            "http://127.0.0.1:10000/devstoreaccount1/leases/a/b.lock?comp=lease"
        );
        let far = BlobLeaseClient::new(
            &Url::parse("http://acct.blob.core.windows.net").unwrap(),
            "leases",
            "b",
            BlobAuth::SharedKey(key),
            http,
            Duration::from_secs(3),
        );
        assert!(matches!(far, Err(LeaseError::Invalid(_))));
    }

    #[test]
    fn path_segments_keep_only_unreserved_characters() {
        assert_eq!(encode_segment("Az09-._~"), "Az09-._~");
        assert_eq!(encode_segment("a b/(c)$é"), "a%20b%2F%28c%29%24%C3%A9");
    }

    #[test]
    fn only_404_409_and_412_prove_the_lease_is_lost() {
        let e = |status| LeaseError::Service {
            action: "renew",
            path: "c/b".into(),
            status,
            code: "X".into(),
            message: String::new(),
        };
        assert!(e(409).is_lease_lost());
        assert!(e(412).is_lease_lost());
        assert!(!e(500).is_lease_lost());
        assert!(!e(403).is_lease_lost());
        assert_eq!(e(409).to_string(), "lease renew on c/b: HTTP 409 X");
    }
}
