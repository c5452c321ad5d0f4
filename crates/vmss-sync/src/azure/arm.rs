//! A thin typed Azure Resource Manager client: bearer auth, bounded retries
//! (Retry-After aware), `nextLink` paging and clear ARM error messages.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use url::Url;

use super::auth::{check_secure, truncate_chars, AccessToken, AuthError, TokenCredential};
use super::models;
use super::retry;
use super::throttle::{self, Observed, ReadBudget, Throttle};

/// Public-cloud ARM endpoint and token audience.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// Compute api-version used for scale sets and their VMs.
pub const COMPUTE_API_VERSION: &str = "2024-07-01";
/// Network api-version for normal network resources.
pub const NETWORK_API_VERSION: &str = "2024-07-01";
/// The only api-version the VMSS network-interface sub-resources accept.
pub const VMSS_NETWORK_API_VERSION: &str = "2018-10-01";

/// Operation names (used in stats, logs and errors).
pub const OP_GET_SCALE_SET: &str = "VirtualMachineScaleSets_Get";
pub const OP_LIST_SCALE_SET_NICS: &str =
    "NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces";
pub const OP_LIST_SCALE_SET_VMS: &str = "VirtualMachineScaleSetVMs_List";
pub const OP_LIST_SCALE_SETS: &str = "VirtualMachineScaleSets_List";
pub const OP_LIST_ALL_SCALE_SETS: &str = "VirtualMachineScaleSets_ListAll";
pub const OP_LIST_VMS: &str = "VirtualMachines_List";
pub const OP_LIST_ALL_VMS: &str = "VirtualMachines_ListAll";
pub const OP_LIST_NICS: &str = "NetworkInterfaces_List";

/// Safety stop for runaway paging.
const MAX_PAGES: usize = 10_000;
/// Longest ARM message / body snippet kept in an error.
const MAX_MESSAGE: usize = 500;

#[derive(Debug, Clone)]
pub struct ArmOptions {
    pub endpoint: Url,
    /// Token audience, e.g. `https://management.azure.com`; the scope is
    /// `audience + "/.default"`.
    pub audience: String,
    /// Per-request timeout (connect + response + body). Default 30 s.
    pub request_timeout: Duration,
    /// Retries after the first attempt. Default 4.
    pub max_retries: u32,
    /// Cap on a single `Retry-After` wait. Default 300 s.
    pub max_retry_after: Duration,
    /// 429 answers waited out per request before it fails. They do not spend
    /// `max_retries`. Default 5.
    pub max_throttled_waits: u32,
    /// The per-subscription read budget every request waits for (default ARM's own:
    /// 250, refilled at 25 per second).
    pub read_budget: ReadBudget,
}

impl Default for ArmOptions {
    fn default() -> Self {
        ArmOptions {
            // A constant, well-formed URL: parsing it cannot fail (the unit test
            // `default_options_point_at_the_public_cloud` runs this very line).
            #[allow(clippy::expect_used)]
            endpoint: Url::parse(DEFAULT_ARM_ENDPOINT).expect("constant URL parses"),
            audience: DEFAULT_ARM_ENDPOINT.to_string(),
            request_timeout: Duration::from_secs(30),
            max_retries: 4,
            max_retry_after: Duration::from_secs(300),
            max_throttled_waits: 5,
            read_budget: ReadBudget::default(),
        }
    }
}

impl ArmOptions {
    /// Defaults with another endpoint (the audience stays the public-cloud one).
    pub fn new(endpoint: Url) -> Self {
        ArmOptions {
            endpoint,
            ..ArmOptions::default()
        }
    }

    /// `audience + "/.default"`.
    pub fn scope(&self) -> String {
        format!("{}/.default", self.audience.trim_end_matches('/'))
    }
}

/// Counters since the client was created. Cloned out by [`ArmClient::stats`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmStats {
    /// Every HTTP request sent (first attempts, retries and pages).
    pub requests: u64,
    pub by_operation: BTreeMap<String, u64>,
    /// Responses by HTTP status (transport failures are not counted here).
    pub by_status: BTreeMap<u16, u64>,
    /// Responses by operation and HTTP status.
    pub by_operation_status: BTreeMap<(String, u16), u64>,
    /// Retries of any kind.
    pub retries: u64,
    /// 429/503 answers that were waited out.
    pub throttled_waits: u64,
    /// Time slept because of `Retry-After` headers.
    pub retry_after_wait: Duration,
    /// Time slept in exponential backoff (no `Retry-After`).
    pub backoff_wait: Duration,
    pub transport_errors: u64,
    pub timeouts: u64,
    /// Tokens re-fetched after a 401.
    pub token_refreshes: u64,
    /// Last `x-ms-ratelimit-remaining-subscription-reads` seen.
    pub remaining_subscription_reads: Option<u64>,
    /// Last `x-ms-ratelimit-remaining-resource` seen (raw, e.g.
    /// `Microsoft.Compute/HighCostGet3Min;107,...`).
    pub remaining_resource: Option<String>,
    /// Requests that waited for the read budget.
    pub budget_waits: u64,
    /// Time spent waiting for the read budget.
    pub budget_wait: Duration,
}

impl ArmStats {
    /// Counts one answer, by status and by operation and status.
    fn count_response(&mut self, operation: &str, status: u16) {
        *self.by_status.entry(status).or_default() += 1;
        *self
            .by_operation_status
            .entry((operation.to_string(), status))
            .or_default() += 1;
    }
}

/// The error for a request that got no answer: a timeout or a transport failure.
fn transport_error(
    operation: &'static str,
    path: String,
    attempts: u32,
    timeout: Duration,
    e: reqwest::Error,
) -> ArmError {
    if e.is_timeout() {
        ArmError::Timeout {
            operation,
            path,
            attempts,
            timeout,
        }
    } else {
        ArmError::Transport {
            operation,
            path,
            attempts,
            detail: error_detail(&e),
            source: e,
        }
    }
}

/// ARM call failure. `Display` names the operation, the URL path (never a
/// token or query), the status, and ARM's error code and message.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("{operation} GET {path}: HTTP {status} {code}: {message}{}", fmt_request_id(.request_id))]
    Api {
        operation: &'static str,
        path: String,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("{operation} GET {path}: not found (HTTP 404 {code}): {message}{}", fmt_request_id(.request_id))]
    NotFound {
        operation: &'static str,
        path: String,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    #[error("{operation} GET {path}: throttled (HTTP {status} {code}) after {}: {message}{}", fmt_attempts(*.attempts), fmt_request_id(.request_id))]
    Throttled {
        operation: &'static str,
        path: String,
        status: u16,
        code: String,
        message: String,
        attempts: u32,
        request_id: Option<String>,
    },
    #[error("{operation} GET {path}: transport error after {}: {detail}", fmt_attempts(*.attempts))]
    Transport {
        operation: &'static str,
        path: String,
        attempts: u32,
        detail: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation} GET {path}: timed out after {} ({timeout:?} each)", fmt_attempts(*.attempts))]
    Timeout {
        operation: &'static str,
        path: String,
        attempts: u32,
        timeout: Duration,
    },
    #[error("{operation} GET {path}: cannot decode response: {detail}")]
    Decode {
        operation: &'static str,
        path: String,
        detail: String,
    },
    #[error("{operation} GET {path}: refusing to send credentials: {reason}")]
    Insecure {
        operation: &'static str,
        path: String,
        reason: String,
    },
    #[error("{operation} GET {path}: paging failed: {detail}")]
    Paging {
        operation: &'static str,
        path: String,
        detail: String,
    },
    #[error("{operation}: invalid request: {detail}")]
    InvalidRequest {
        operation: &'static str,
        detail: String,
    },
    #[error("ARM authentication failed: {0}")]
    Auth(#[from] AuthError),
}

fn fmt_attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".to_string()
    } else {
        format!("{n} attempts")
    }
}

fn fmt_request_id(id: &Option<String>) -> String {
    id.as_deref()
        .map(|r| format!(" (x-ms-request-id {r})"))
        .unwrap_or_default()
}

impl ArmError {
    /// The HTTP status of the final response, when there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            ArmError::Api { status, .. } | ArmError::Throttled { status, .. } => Some(*status),
            ArmError::NotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// The ARM error code (`ResourceNotFound`, `AuthorizationFailed`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            ArmError::Api { code, .. }
            | ArmError::NotFound { code, .. }
            | ArmError::Throttled { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when retrying will not help until something is changed: the
    /// resource is missing, the request or permissions are wrong, the
    /// credential is rejected or not configured, the endpoint is insecure.
    /// Throttling, 5xx, timeouts, transport and decode errors are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            ArmError::NotFound { .. }
            | ArmError::Insecure { .. }
            | ArmError::InvalidRequest { .. } => true,
            ArmError::Api { status, .. } => matches!(status, 400 | 401 | 403 | 405 | 410 | 414),
            ArmError::Auth(e) => matches!(
                e,
                AuthError::Config { .. }
                    | AuthError::NoCredential { .. }
                    | AuthError::Failed {
                        status: Some(400 | 401 | 403),
                        ..
                    }
            ),
            ArmError::Throttled { .. }
            | ArmError::Transport { .. }
            | ArmError::Timeout { .. }
            | ArmError::Decode { .. }
            | ArmError::Paging { .. } => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, ArmError::NotFound { .. })
    }

    pub fn is_throttled(&self) -> bool {
        matches!(self, ArmError::Throttled { .. })
    }

    /// The operation name, when the error belongs to one.
    pub fn operation(&self) -> Option<&'static str> {
        match self {
            ArmError::Api { operation, .. }
            | ArmError::NotFound { operation, .. }
            | ArmError::Throttled { operation, .. }
            | ArmError::Transport { operation, .. }
            | ArmError::Timeout { operation, .. }
            | ArmError::Decode { operation, .. }
            | ArmError::Insecure { operation, .. }
            | ArmError::Paging { operation, .. }
            | ArmError::InvalidRequest { operation, .. } => Some(operation),
            ArmError::Auth(_) => None,
        }
    }
}

struct Inner {
    opts: ArmOptions,
    scope: String,
    credential: Arc<dyn TokenCredential>,
    http: reqwest::Client,
    backoff_base: Duration,
    stats: Mutex<ArmStats>,
    throttle: Throttle,
    /// The write budget (PUT, DELETE), separate from and slower than the read budget.
    writes: Throttle,
}

/// ARM client. Cheap to clone (shares connection pool, credential and stats).
#[derive(Clone)]
pub struct ArmClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmClient")
            .field("endpoint", &self.inner.opts.endpoint.as_str())
            .field("credential", &self.inner.credential.kind())
            .finish()
    }
}

/// What a path segment keeps unencoded: RFC 3986's unreserved characters and `(` `)`
/// (ARM names may hold `.`, `(`, `)`, spaces…; everything else is percent-encoded).
const SEGMENT_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'(')
    .remove(b')');

/// What a query key or value keeps: the unreserved characters and `$` (so `$filter`
/// stays readable).
const QUERY_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'$');

/// Percent-encodes one path segment (UTF-8, upper-case hex).
fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT_KEEP).to_string()
}

/// Percent-encodes a query key or value (UTF-8, upper-case hex).
fn encode_query(s: &str) -> String {
    utf8_percent_encode(s, QUERY_KEEP).to_string()
}

/// Error body `{"error":{"code","message"}}` (or the fields at top level) →
/// (code, message); fall back to the status text and a body snippet.
fn parse_error_body(status: reqwest::StatusCode, body: &[u8]) -> (String, String) {
    let reason = status.canonical_reason().unwrap_or("error").to_string();
    let snippet = || {
        let text = String::from_utf8_lossy(body);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            reason.clone()
        } else {
            truncate_chars(&text, 200)
        }
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return (reason.clone(), snippet());
    };
    let obj = match v.get("error") {
        Some(e @ serde_json::Value::Object(_)) => e,
        _ => &v,
    };
    let get = |k: &str, capitalised: &str| {
        obj.get(k)
            .or_else(|| obj.get(capitalised))
            .and_then(serde_json::Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let code = get("code", "Code").unwrap_or_else(|| reason.clone());
    let message = get("message", "Message")
        .map(|m| truncate_chars(&m, MAX_MESSAGE))
        .unwrap_or_else(snippet);
    (code, message)
}

fn header_str(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Worth retrying within the cycle: not a failed TLS handshake (a certificate does not
/// change in seconds; the next cycle tries again).
fn is_transient(e: &reqwest::Error) -> bool {
    !crate::net::is_tls_failure(e)
        && (e.is_timeout() || e.is_connect() || e.is_request() || e.is_body())
}

use crate::net::transport_detail as error_detail;

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

impl ArmClient {
    pub fn new(
        opts: ArmOptions,
        credential: Arc<dyn TokenCredential>,
        http: reqwest::Client,
    ) -> ArmClient {
        ArmClient {
            inner: Arc::new(Inner {
                scope: opts.scope(),
                throttle: Throttle::new(opts.read_budget),
                opts,
                credential,
                http,
                backoff_base: retry::DEFAULT_BACKOFF_BASE,
                stats: Mutex::new(ArmStats::default()),
                writes: Throttle::new(WRITE_BUDGET),
            }),
        }
    }

    /// Changes the exponential backoff base (default 200 ms), e.g. to keep
    /// tests fast. Returns a client that does not share stats with `self`.
    pub fn with_backoff_base(self, base: Duration) -> ArmClient {
        ArmClient {
            inner: Arc::new(Inner {
                opts: self.inner.opts.clone(),
                scope: self.inner.scope.clone(),
                credential: self.inner.credential.clone(),
                http: self.inner.http.clone(),
                backoff_base: base,
                stats: Mutex::new(ArmStats::default()),
                throttle: Throttle::new(self.inner.opts.read_budget),
                writes: Throttle::new(WRITE_BUDGET),
            }),
        }
    }

    pub fn options(&self) -> &ArmOptions {
        &self.inner.opts
    }

    pub fn stats(&self) -> ArmStats {
        self.lock_stats().clone()
    }

    /// The read budget shared by every clone of this client.
    pub fn throttle(&self) -> &Throttle {
        &self.inner.throttle
    }

    fn lock_stats(&self) -> std::sync::MutexGuard<'_, ArmStats> {
        self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    // -- typed operations ---------------------------------------------------

    fn scale_set_path(sub: &str, rg: &str, name: &str) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/virtualMachineScaleSets/{}",
            encode_segment(sub),
            encode_segment(rg),
            encode_segment(name)
        )
    }

    fn check_names(operation: &'static str, names: &[(&str, &str)]) -> Result<(), ArmError> {
        for (what, v) in names {
            if v.trim().is_empty() {
                return Err(ArmError::InvalidRequest {
                    operation,
                    detail: format!("{what} is empty"),
                });
            }
        }
        Ok(())
    }

    /// `VirtualMachineScaleSets_Get` (Compute [`COMPUTE_API_VERSION`]).
    pub async fn get_scale_set(
        &self,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<models::VirtualMachineScaleSet, ArmError> {
        Self::check_names(
            OP_GET_SCALE_SET,
            &[
                ("subscription", sub),
                ("resource group", rg),
                ("scale set", name),
            ],
        )?;
        self.get_json(
            OP_GET_SCALE_SET,
            &Self::scale_set_path(sub, rg, name),
            COMPUTE_API_VERSION,
            &[],
        )
        .await
    }

    /// `NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces`
    /// (api-version [`VMSS_NETWORK_API_VERSION`]), all pages.
    pub async fn list_scale_set_nics(
        &self,
        sub: &str,
        rg: &str,
        vmss: &str,
    ) -> Result<Vec<models::NetworkInterface>, ArmError> {
        self.list(&ListRequest::scale_set_nics(sub, rg, vmss)?)
            .await
    }

    /// `VirtualMachineScaleSetVMs_List` (Compute), all pages, optionally with
    /// `$expand=instanceView`.
    pub async fn list_scale_set_vms(
        &self,
        sub: &str,
        rg: &str,
        vmss: &str,
        expand_instance_view: bool,
    ) -> Result<Vec<models::VirtualMachineScaleSetVm>, ArmError> {
        self.list(&ListRequest::scale_set_vms(
            sub,
            rg,
            vmss,
            expand_instance_view,
        )?)
        .await
    }

    /// `VirtualMachineScaleSets_List` (one resource group) or `_ListAll` (the whole
    /// subscription, `rg` None), all pages.
    pub async fn list_scale_sets(
        &self,
        sub: &str,
        rg: Option<&str>,
    ) -> Result<Vec<models::VirtualMachineScaleSet>, ArmError> {
        self.list(&ListRequest::scale_sets(sub, rg)?).await
    }

    /// `VirtualMachines_List` / `_ListAll`, all pages (see [`ListRequest::vms`]).
    pub async fn list_vms(
        &self,
        sub: &str,
        rg: Option<&str>,
        scale_set_id: Option<&str>,
        expand_instance_view: bool,
    ) -> Result<Vec<models::VirtualMachine>, ArmError> {
        self.list(&ListRequest::vms(
            sub,
            rg,
            scale_set_id,
            expand_instance_view,
        )?)
        .await
    }

    /// `VirtualMachines_ListAll?statusOnly=true`, all pages.
    pub async fn list_vm_statuses(
        &self,
        sub: &str,
    ) -> Result<Vec<models::VirtualMachine>, ArmError> {
        self.list(&ListRequest::vm_statuses(sub)?).await
    }

    /// `NetworkInterfaces_List` of one resource group, all pages.
    pub async fn list_nics(
        &self,
        sub: &str,
        rg: &str,
    ) -> Result<Vec<models::NetworkInterface>, ArmError> {
        self.list(&ListRequest::nics(sub, rg)?).await
    }

    /// Every item of a list operation, all pages.
    pub async fn list<T: DeserializeOwned + 'static>(
        &self,
        req: &ListRequest,
    ) -> Result<Vec<T>, ArmError> {
        self.list_map(req, Some).await
    }

    /// Every item of a list operation, all pages, each turned into `U` by `f` as its page
    /// arrives (items for which `f` gives None are dropped), so that only one page of
    /// full models is held at a time.
    pub async fn list_map<T: DeserializeOwned + 'static, U>(
        &self,
        req: &ListRequest,
        f: impl FnMut(T) -> Option<U>,
    ) -> Result<Vec<U>, ArmError> {
        let query: Vec<(&str, &str)> = req
            .query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.list_pages(req.operation, &req.path, req.api_version, &query, f)
            .await
    }

    // -- generic operations -------------------------------------------------

    /// Builds `endpoint + path ? api-version=..&k=v..`. `path` is an ARM path
    /// starting with `/` whose segments are already encoded where needed.
    fn build_url(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
        query: &[(&str, &str)],
    ) -> Result<Url, ArmError> {
        if api_version.trim().is_empty() {
            return Err(ArmError::InvalidRequest {
                operation,
                detail: "api-version is empty".to_string(),
            });
        }
        let mut url = self.inner.opts.endpoint.clone();
        let base = url.path().trim_end_matches('/').to_string();
        let path = path.trim();
        let sep = if path.starts_with('/') { "" } else { "/" };
        url.set_path(&format!("{base}{sep}{path}"));
        let mut q = format!("api-version={}", encode_query(api_version));
        for (k, v) in query {
            if k.eq_ignore_ascii_case("api-version") {
                continue;
            }
            q.push('&');
            q.push_str(&encode_query(k));
            q.push('=');
            q.push_str(&encode_query(v));
        }
        url.set_query(Some(&q));
        url.set_fragment(None);
        Ok(url)
    }

    /// GET one resource and decode it.
    pub async fn get_json<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ArmError> {
        let url = self.build_url(operation, path, api_version, query)?;
        let body = self.send_get(operation, &url).await?;
        serde_json::from_slice(&body).map_err(|e| ArmError::Decode {
            operation,
            path: url.path().to_string(),
            detail: decode_detail(&e, &body),
        })
    }

    /// GET a pageable list and follow `nextLink` to the end. Any failed page
    /// fails the whole call (never a partial list).
    pub async fn list_all<T: DeserializeOwned + 'static>(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, ArmError> {
        self.list_pages(operation, path, api_version, query, Some)
            .await
    }

    async fn list_pages<T: DeserializeOwned + 'static, U>(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
        query: &[(&str, &str)],
        mut f: impl FnMut(T) -> Option<U>,
    ) -> Result<Vec<U>, ArmError> {
        let first = self.build_url(operation, path, api_version, query)?;
        let endpoint = &self.inner.opts.endpoint;
        let mut url = first;
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for page_no in 0.. {
            if page_no >= MAX_PAGES {
                return Err(ArmError::Paging {
                    operation,
                    path: url.path().to_string(),
                    detail: format!("more than {MAX_PAGES} pages"),
                });
            }
            let body = self.send_get(operation, &url).await?;
            // Each element is reduced by `f` as it is decoded (a failed page keeps nothing:
            // the whole list fails).
            let next_link =
                models::decode_page_with::<T, U, _>(&body, &mut f, &mut out).map_err(|e| {
                    ArmError::Decode {
                        operation,
                        path: url.path().to_string(),
                        detail: format!("page {}: {}", page_no + 1, decode_detail(&e, &body)),
                    }
                })?;
            drop(body);
            let Some(link) = next_link.filter(|l| !l.trim().is_empty()) else {
                break;
            };
            let next = match Url::parse(&link) {
                Ok(u) => u,
                Err(url::ParseError::RelativeUrlWithoutBase) => {
                    endpoint.join(&link).map_err(|e| ArmError::Paging {
                        operation,
                        path: url.path().to_string(),
                        detail: format!("invalid nextLink: {e}"),
                    })?
                }
                Err(e) => {
                    return Err(ArmError::Paging {
                        operation,
                        path: url.path().to_string(),
                        detail: format!("invalid nextLink: {e}"),
                    })
                }
            };
            if !same_origin(&next, endpoint) {
                return Err(ArmError::Paging {
                    operation,
                    path: url.path().to_string(),
                    detail: format!(
                        "nextLink points to {}://{} instead of the ARM endpoint {}; not following it",
                        next.scheme(),
                        next.host_str().unwrap_or(""),
                        endpoint.host_str().unwrap_or("")
                    ),
                });
            }
            if !seen.insert(next.as_str().to_string()) {
                return Err(ArmError::Paging {
                    operation,
                    path: url.path().to_string(),
                    detail: "nextLink repeats an earlier page".to_string(),
                });
            }
            url = next;
        }
        // A list is kept for the rest of the cycle: without the room it grew into.
        out.shrink_to_fit();
        Ok(out)
    }

    // -- transport ----------------------------------------------------------

    async fn token(&self) -> Result<AccessToken, ArmError> {
        Ok(self.inner.credential.get_token(&self.inner.scope).await?)
    }

    async fn sleep_backoff(&self, wait: Duration, from_retry_after: bool) {
        {
            let mut s = self.lock_stats();
            s.retries += 1;
            if from_retry_after {
                s.retry_after_wait += wait;
            } else {
                s.backoff_wait += wait;
            }
        }
        tokio::time::sleep(wait).await;
    }

    /// One logical GET with retries. Returns the 2xx body.
    async fn send_get(&self, operation: &'static str, url: &Url) -> Result<Vec<u8>, ArmError> {
        let path = url.path().to_string();
        check_secure(url).map_err(|reason| ArmError::Insecure {
            operation,
            path: path.clone(),
            reason,
        })?;
        let opts = &self.inner.opts;
        let (sub, provider) = throttle::scope_of(&path);
        let query = url.query().unwrap_or_default().to_ascii_lowercase();
        let class = if query.contains("$expand=instanceview") || query.contains("statusonly=true") {
            format!("{operation}+views")
        } else {
            operation.to_string()
        };
        let mut retries = 0u32;
        let mut throttled = 0u32;
        let mut refreshed = false;
        let mut next_token: Option<AccessToken> = None;
        loop {
            let token = match next_token.take() {
                Some(t) => t,
                None => self.token().await?,
            };
            let waited = self.inner.throttle.acquire(&sub, &provider, &class).await;
            {
                let mut s = self.lock_stats();
                s.requests += 1;
                *s.by_operation.entry(operation.to_string()).or_default() += 1;
                if !waited.is_zero() {
                    s.budget_waits += 1;
                    s.budget_wait += waited;
                }
            }
            let attempt = retries + throttled + 1;
            tracing::debug!(operation, path = %path, attempt, "ARM GET");
            let sent = self
                .inner
                .http
                .get(url.clone())
                .bearer_auth(&token.token)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(opts.request_timeout)
                .send()
                .await;
            let result = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let request_id = header_str(&resp, "x-ms-request-id");
                    let retry_after = header_str(&resp, "retry-after")
                        .and_then(|v| retry::parse_retry_after(&v, SystemTime::now()));
                    let remaining_reads: Option<u64> =
                        header_str(&resp, "x-ms-ratelimit-remaining-subscription-reads")
                            .and_then(|v| v.parse().ok());
                    let remaining_resource = header_str(&resp, "x-ms-ratelimit-remaining-resource");
                    self.inner.throttle.observe(
                        &sub,
                        &provider,
                        &class,
                        &Observed {
                            status: status.as_u16(),
                            remaining_reads,
                            remaining_resource: remaining_resource.as_deref(),
                            retry_after: retry_after.map(|ra| ra.min(opts.max_retry_after)),
                        },
                        std::time::Instant::now(),
                    );
                    {
                        let mut s = self.lock_stats();
                        s.count_response(operation, status.as_u16());
                        if remaining_reads.is_some() {
                            s.remaining_subscription_reads = remaining_reads;
                        }
                        if let Some(v) = remaining_resource {
                            tracing::trace!(operation, remaining = %v, "Compute rate limits");
                            s.remaining_resource = Some(v);
                        }
                    }
                    read_body(resp)
                        .await
                        .map(|b| (status, request_id, retry_after, b))
                }
                Err(e) => Err(e),
            };

            let (status, request_id, retry_after, body) = match result {
                Ok(r) => r,
                Err(e) => {
                    let timeout = e.is_timeout();
                    {
                        let mut s = self.lock_stats();
                        if timeout {
                            s.timeouts += 1;
                        } else {
                            s.transport_errors += 1;
                        }
                    }
                    if is_transient(&e) && retries < opts.max_retries {
                        let wait = retry::backoff_delay(self.inner.backoff_base, retries);
                        tracing::warn!(
                            operation,
                            path = %path,
                            attempt,
                            wait_ms = wait.as_millis() as u64,
                            error = %error_detail(&e),
                            "ARM request failed; retrying"
                        );
                        retries += 1;
                        self.sleep_backoff(wait, false).await;
                        continue;
                    }
                    return Err(transport_error(
                        operation,
                        path,
                        attempt,
                        opts.request_timeout,
                        e,
                    ));
                }
            };

            let code_u16 = status.as_u16();
            if status.is_success() {
                return Ok(body);
            }

            if code_u16 == 401 && !refreshed {
                refreshed = true;
                self.inner
                    .credential
                    .invalidate(&self.inner.scope, &token.token)
                    .await;
                let fresh = self.token().await?;
                if fresh.token != token.token {
                    self.lock_stats().token_refreshes += 1;
                    tracing::info!(
                        operation,
                        path = %path,
                        "ARM answered 401; retrying once with a refreshed token"
                    );
                    next_token = Some(fresh);
                    continue;
                }
            }

            let (code, message) = parse_error_body(status, &body);
            // A 429 is waited out without spending a retry: the request was never served,
            // and the budget already holds every other read until Retry-After has passed.
            if code_u16 == 429 && throttled < opts.max_throttled_waits {
                let (wait, from_header) = match retry_after {
                    Some(ra) => (ra.min(opts.max_retry_after), true),
                    None => (
                        retry::backoff_delay(self.inner.backoff_base, throttled),
                        false,
                    ),
                };
                self.lock_stats().throttled_waits += 1;
                tracing::warn!(
                    operation,
                    path = %path,
                    code = %code,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    retry_after = from_header,
                    "ARM throttled the request (429); waiting it out"
                );
                throttled += 1;
                self.sleep_backoff(wait, from_header).await;
                continue;
            }
            let throttled_status = code_u16 == 503;
            let retryable = code_u16 != 429 && (code_u16 == 408 || status.is_server_error());
            if retryable && retries < opts.max_retries {
                let (wait, from_header) = match retry_after {
                    Some(ra) => (ra.min(opts.max_retry_after), true),
                    None => (
                        retry::backoff_delay(self.inner.backoff_base, retries),
                        false,
                    ),
                };
                if throttled_status {
                    self.lock_stats().throttled_waits += 1;
                }
                tracing::warn!(
                    operation,
                    path = %path,
                    status = code_u16,
                    code = %code,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    retry_after = from_header,
                    "ARM request failed; retrying"
                );
                retries += 1;
                self.sleep_backoff(wait, from_header).await;
                continue;
            }

            return Err(match code_u16 {
                404 => ArmError::NotFound {
                    operation,
                    path,
                    code,
                    message,
                    request_id,
                },
                429 => ArmError::Throttled {
                    operation,
                    path,
                    status: code_u16,
                    code,
                    message,
                    attempts: attempt,
                    request_id,
                },
                _ => ArmError::Api {
                    operation,
                    path,
                    status: code_u16,
                    code,
                    message,
                    request_id,
                },
            });
        }
    }
}

/// One ARM list operation: what discovery plans, deduplicates and runs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListRequest {
    /// Operation name (stats, logs, errors).
    pub operation: &'static str,
    /// ARM path, segments encoded.
    pub path: String,
    /// api-version.
    pub api_version: &'static str,
    /// Query parameters besides api-version.
    pub query: Vec<(String, String)>,
}

fn group_path(sub: &str, rg: Option<&str>) -> String {
    match rg {
        Some(rg) => format!(
            "/subscriptions/{}/resourceGroups/{}",
            encode_segment(sub),
            encode_segment(rg)
        ),
        None => format!("/subscriptions/{}", encode_segment(sub)),
    }
}

impl ListRequest {
    fn new(operation: &'static str, path: String, api_version: &'static str) -> Self {
        ListRequest {
            operation,
            path,
            api_version,
            query: Vec::new(),
        }
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.query.push((k.to_string(), v.to_string()));
        self
    }

    /// `VirtualMachineScaleSets_List` of one resource group, or `_ListAll` of the
    /// subscription (`rg` None).
    pub fn scale_sets(sub: &str, rg: Option<&str>) -> Result<Self, ArmError> {
        let op = if rg.is_some() {
            OP_LIST_SCALE_SETS
        } else {
            OP_LIST_ALL_SCALE_SETS
        };
        ArmClient::check_names(
            op,
            &[("subscription", sub), ("resource group", rg.unwrap_or("-"))],
        )?;
        Ok(Self::new(
            op,
            format!(
                "{}/providers/Microsoft.Compute/virtualMachineScaleSets",
                group_path(sub, rg)
            ),
            COMPUTE_API_VERSION,
        ))
    }

    /// `VirtualMachines_List` of one resource group or `_ListAll` (`rg` None).
    /// `scale_set_id` adds `$filter='virtualMachineScaleSet/id' eq '<id>'` (the members of
    /// one Flexible set); `expand_instance_view` adds `$expand=instanceView`, which ARM
    /// accepts only together with that filter.
    pub fn vms(
        sub: &str,
        rg: Option<&str>,
        scale_set_id: Option<&str>,
        expand_instance_view: bool,
    ) -> Result<Self, ArmError> {
        let op = if rg.is_some() {
            OP_LIST_VMS
        } else {
            OP_LIST_ALL_VMS
        };
        ArmClient::check_names(
            op,
            &[("subscription", sub), ("resource group", rg.unwrap_or("-"))],
        )?;
        if expand_instance_view && scale_set_id.is_none() {
            return Err(ArmError::InvalidRequest {
                operation: op,
                detail: "$expand=instanceView needs a scale set $filter".to_string(),
            });
        }
        let mut r = Self::new(
            op,
            format!(
                "{}/providers/Microsoft.Compute/virtualMachines",
                group_path(sub, rg)
            ),
            COMPUTE_API_VERSION,
        );
        if let Some(id) = scale_set_id {
            r = r.with("$filter", &format!("'virtualMachineScaleSet/id' eq '{id}'"));
        }
        if expand_instance_view {
            r = r.with("$expand", "instanceView");
        }
        Ok(r)
    }

    /// `VirtualMachines_ListAll?statusOnly=true`: every VM of the subscription with its
    /// run-time status.
    pub fn vm_statuses(sub: &str) -> Result<Self, ArmError> {
        ArmClient::check_names(OP_LIST_ALL_VMS, &[("subscription", sub)])?;
        Ok(Self::new(
            OP_LIST_ALL_VMS,
            format!(
                "{}/providers/Microsoft.Compute/virtualMachines",
                group_path(sub, None)
            ),
            COMPUTE_API_VERSION,
        )
        .with("statusOnly", "true"))
    }

    /// `NetworkInterfaces_List` of one resource group ([`NETWORK_API_VERSION`]).
    pub fn nics(sub: &str, rg: &str) -> Result<Self, ArmError> {
        ArmClient::check_names(
            OP_LIST_NICS,
            &[("subscription", sub), ("resource group", rg)],
        )?;
        Ok(Self::new(
            OP_LIST_NICS,
            format!(
                "{}/providers/Microsoft.Network/networkInterfaces",
                group_path(sub, Some(rg))
            ),
            NETWORK_API_VERSION,
        ))
    }

    /// `NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces` (api-version
    /// [`VMSS_NETWORK_API_VERSION`]).
    pub fn scale_set_nics(sub: &str, rg: &str, vmss: &str) -> Result<Self, ArmError> {
        ArmClient::check_names(
            OP_LIST_SCALE_SET_NICS,
            &[
                ("subscription", sub),
                ("resource group", rg),
                ("scale set", vmss),
            ],
        )?;
        // The spec (and the Azure SDKs) spell this provider segment `microsoft.Compute`;
        // ARM ignores case, a strict replica of the spec may not.
        let path = format!(
            "{}/networkInterfaces",
            ArmClient::scale_set_path(sub, rg, vmss).replacen(
                "/providers/Microsoft.Compute/",
                "/providers/microsoft.Compute/",
                1
            )
        );
        Ok(Self::new(
            OP_LIST_SCALE_SET_NICS,
            path,
            VMSS_NETWORK_API_VERSION,
        ))
    }

    /// `VirtualMachineScaleSetVMs_List`, optionally with `$expand=instanceView`.
    pub fn scale_set_vms(
        sub: &str,
        rg: &str,
        vmss: &str,
        expand_instance_view: bool,
    ) -> Result<Self, ArmError> {
        ArmClient::check_names(
            OP_LIST_SCALE_SET_VMS,
            &[
                ("subscription", sub),
                ("resource group", rg),
                ("scale set", vmss),
            ],
        )?;
        let r = Self::new(
            OP_LIST_SCALE_SET_VMS,
            format!(
                "{}/virtualMachines",
                ArmClient::scale_set_path(sub, rg, vmss)
            ),
            COMPUTE_API_VERSION,
        );
        Ok(if expand_instance_view {
            r.with("$expand", "instanceView")
        } else {
            r
        })
    }
}

/// The body, chunk by chunk into one buffer sized from `Content-Length` when given: a
/// large list page is held once, not once per chunk plus once whole plus once copied.
async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    const MAX_PREALLOC: u64 = 64 << 20;
    let hint = resp.content_length().unwrap_or(0).min(MAX_PREALLOC);
    let mut out = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn decode_detail(e: &serde_json::Error, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        format!("{e} (empty body)")
    } else {
        format!("{e} (body starts: {:?})", truncate_chars(&text, 120))
    }
}

// -- writes ------------------------------------------------------------------------------
//
// A small, general write path for the targets that write to ARM (Route Server peerings,
// Load Balancer pools): PUT with a JSON body and optional `If-Match`, DELETE, and a
// follower of the long-running operation a write starts. Writes wait for their own,
// slower budget (ARM: 200 burst, 10 per second per subscription), apart from reads.

/// ARM's write (and delete) bucket per subscription: 200, refilled at 10 per second.
pub const WRITE_BUDGET: ReadBudget = ReadBudget {
    burst: 200,
    per_second: 10.0,
};

/// The answer to a write (or to a poll of its operation), whatever its status.
#[derive(Debug, Clone, Default)]
pub struct WriteResponse {
    /// HTTP status.
    pub status: u16,
    /// `Azure-AsyncOperation` header.
    pub async_operation: Option<String>,
    /// `Location` header.
    pub location: Option<String>,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// `ETag` header.
    pub etag: Option<String>,
    /// `x-ms-request-id`.
    pub request_id: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl WriteResponse {
    /// ARM's error code and message from the body (or the status text).
    pub fn error(&self) -> (String, String) {
        let status =
            reqwest::StatusCode::from_u16(self.status).unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
        parse_error_body(status, &self.body)
    }
}

/// A write that failed, or whose long-running operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ArmWriteError {
    /// ARM refused the write.
    #[error("{operation} {method} {path}: HTTP {status} {code}: {message}{}", fmt_request_id(.request_id))]
    Api {
        operation: &'static str,
        method: &'static str,
        path: String,
        status: u16,
        code: String,
        message: String,
        request_id: Option<String>,
    },
    /// The operation ended Failed or Canceled.
    #[error("{operation} {path}: the operation ended {status}: {code}: {message}")]
    OperationFailed {
        operation: &'static str,
        path: String,
        status: String,
        code: String,
        message: String,
    },
    /// The operation did not end within the timeout.
    #[error("{operation} {path}: the operation did not finish within {timeout:?} (last state {last}); it may still finish")]
    OperationTimeout {
        operation: &'static str,
        path: String,
        timeout: Duration,
        last: String,
    },
    /// A transport, authentication or decoding problem (also of a poll).
    #[error("{0}")]
    Request(#[from] ArmError),
}

impl ArmWriteError {
    /// The HTTP status of a refused write.
    pub fn status(&self) -> Option<u16> {
        match self {
            ArmWriteError::Api { status, .. } => Some(*status),
            ArmWriteError::Request(e) => e.status(),
            _ => None,
        }
    }

    /// ARM's error code (also of a failed operation).
    pub fn code(&self) -> Option<&str> {
        match self {
            ArmWriteError::Api { code, .. } | ArmWriteError::OperationFailed { code, .. } => {
                Some(code)
            }
            ArmWriteError::Request(e) => e.code(),
            ArmWriteError::OperationTimeout { .. } => None,
        }
    }

    /// True when retrying cannot help until something is changed (bad request, missing
    /// rights, missing parent).
    pub fn is_permanent(&self) -> bool {
        match self {
            ArmWriteError::Api { status, .. } => matches!(status, 400 | 401 | 403 | 404),
            ArmWriteError::Request(e) => e.is_permanent(),
            _ => false,
        }
    }
}

/// How a long-running operation ended well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LroOutcome {
    /// The write finished synchronously, or its operation reported Succeeded.
    Succeeded,
    /// The resource is gone (a DELETE's Location answered 204, or the resource 404).
    Gone,
}

#[derive(serde::Deserialize, Default)]
struct OperationStatus {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error: Option<OperationError>,
}

#[derive(serde::Deserialize, Default)]
struct OperationError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct ProvisioningOnly {
    #[serde(default)]
    properties: Option<ProvisioningProps>,
}

#[derive(serde::Deserialize, Default)]
struct ProvisioningProps {
    #[serde(default, rename = "provisioningState")]
    provisioning_state: Option<String>,
}

const DEFAULT_POLL: Duration = Duration::from_secs(5);
const MAX_POLL: Duration = Duration::from_secs(60);

impl ArmClient {
    /// PUT `body` to `path` (ARM path, api-version added). With `if_match`, the write only
    /// happens when the resource's ETag still matches (else HTTP 412). Any status below 400
    /// is returned as it is; 429, 5xx and transport failures are retried (bounded); other
    /// statuses are an [`ArmWriteError::Api`].
    pub async fn put_json(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
        body: &serde_json::Value,
        if_match: Option<&str>,
    ) -> Result<WriteResponse, ArmWriteError> {
        let url = self.build_url(operation, path, api_version, &[])?;
        let bytes = serde_json::to_vec(body).map_err(|e| ArmError::InvalidRequest {
            operation,
            detail: format!("cannot encode the body: {e}"),
        })?;
        self.send_write(operation, reqwest::Method::PUT, &url, Some(bytes), if_match)
            .await
    }

    /// DELETE `path`. 200, 202 and 204 (and 404: already gone) are returned as they are.
    pub async fn delete(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
    ) -> Result<WriteResponse, ArmWriteError> {
        let url = self.build_url(operation, path, api_version, &[])?;
        match self
            .send_write(operation, reqwest::Method::DELETE, &url, None, None)
            .await
        {
            Err(ArmWriteError::Api { status: 404, .. }) => Ok(WriteResponse {
                status: 404,
                ..WriteResponse::default()
            }),
            other => other,
        }
    }

    /// Follows the long-running operation `resp` started on `path`, until it ends or
    /// `timeout` passes: polls `Azure-AsyncOperation` until its status is Succeeded,
    /// Failed or Canceled; else `Location` until it answers 200 or 204; else GETs the
    /// resource until its `provisioningState` is terminal (a 404 there means gone).
    /// Honours `Retry-After` between polls (`min_poll` at least).
    pub async fn follow_operation(
        &self,
        operation: &'static str,
        path: &str,
        api_version: &str,
        resp: &WriteResponse,
        timeout: Duration,
        min_poll: Duration,
    ) -> Result<LroOutcome, ArmWriteError> {
        if resp.status == 404 || resp.status == 204 {
            return Ok(LroOutcome::Gone);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut wait = resp.retry_after.unwrap_or(min_poll).max(min_poll);
        let mut last = "Accepted".to_string();
        let resource = self.build_url(operation, path, api_version, &[])?;
        let async_op = resp
            .async_operation
            .as_deref()
            .and_then(|u| self.poll_url(operation, u));
        let location = resp
            .location
            .as_deref()
            .and_then(|u| self.poll_url(operation, u));
        // A synchronous success without anything to poll: look at the body's state.
        if async_op.is_none() && location.is_none() {
            let state = provisioning_state(&resp.body);
            match state.as_deref() {
                None | Some("Succeeded") if resp.status != 202 => return Ok(LroOutcome::Succeeded),
                _ => {}
            }
        }
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ArmWriteError::OperationTimeout {
                    operation,
                    path: resource.path().to_string(),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(wait.min(deadline - now)).await;
            if tokio::time::Instant::now() >= deadline {
                continue;
            }
            let (url, kind) = match (&async_op, &location) {
                (Some(u), _) => (u, 0),
                (None, Some(u)) => (u, 1),
                (None, None) => (&resource, 2),
            };
            // A poll never outlives the operation's deadline.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(r) = tokio::time::timeout(
                left,
                self.send_write(operation, reqwest::Method::GET, url, None, None),
            )
            .await
            else {
                continue;
            };
            let r = match (kind, r) {
                (2, Err(ArmWriteError::Api { status: 404, .. })) => return Ok(LroOutcome::Gone),
                (_, r) => r?,
            };
            // ARM's Retry-After when given, else doubling from `min_poll` up to 5 s.
            wait = match r.retry_after {
                Some(ra) => ra.clamp(min_poll, MAX_POLL),
                None => (wait * 2).clamp(min_poll, DEFAULT_POLL.max(min_poll)),
            };
            match kind {
                0 => {
                    let st: OperationStatus = serde_json::from_slice(&r.body).unwrap_or_default();
                    let status = st.status.unwrap_or_else(|| "InProgress".into());
                    match status.as_str() {
                        "Succeeded" => return Ok(LroOutcome::Succeeded),
                        "Failed" | "Canceled" | "Cancelled" => {
                            let e = st.error.unwrap_or_default();
                            return Err(ArmWriteError::OperationFailed {
                                operation,
                                path: resource.path().to_string(),
                                status,
                                code: e.code.unwrap_or_default(),
                                message: e.message.unwrap_or_default(),
                            });
                        }
                        _ => last = status,
                    }
                }
                1 => match r.status {
                    200 | 201 => return Ok(LroOutcome::Succeeded),
                    204 => return Ok(LroOutcome::Gone),
                    s => last = format!("HTTP {s}"),
                },
                _ => match provisioning_state(&r.body).as_deref() {
                    Some("Succeeded") | None => return Ok(LroOutcome::Succeeded),
                    Some(s @ ("Failed" | "Canceled")) => {
                        return Err(ArmWriteError::OperationFailed {
                            operation,
                            path: resource.path().to_string(),
                            status: s.to_string(),
                            code: "ProvisioningFailed".into(),
                            message: format!("provisioningState is {s}"),
                        })
                    }
                    Some(s) => last = s.to_string(),
                },
            }
        }
    }

    /// A poll URL from a header: absolute on the ARM endpoint's origin only (a token is
    /// never sent anywhere else), or relative to it.
    fn poll_url(&self, operation: &'static str, raw: &str) -> Option<Url> {
        let endpoint = &self.inner.opts.endpoint;
        let url = match Url::parse(raw) {
            Ok(u) => u,
            Err(url::ParseError::RelativeUrlWithoutBase) => endpoint.join(raw).ok()?,
            Err(_) => return None,
        };
        if same_origin(&url, endpoint) {
            Some(url)
        } else {
            tracing::warn!(
                operation,
                host = url.host_str().unwrap_or(""),
                "ARM pointed an operation at another host; not following it"
            );
            None
        }
    }

    /// One write (or poll) with bounded retries on 429, 5xx and transport failures.
    async fn send_write(
        &self,
        operation: &'static str,
        method: reqwest::Method,
        url: &Url,
        body: Option<Vec<u8>>,
        if_match: Option<&str>,
    ) -> Result<WriteResponse, ArmWriteError> {
        let path = url.path().to_string();
        check_secure(url).map_err(|reason| ArmError::Insecure {
            operation,
            path: path.clone(),
            reason,
        })?;
        let opts = &self.inner.opts;
        let (sub, provider) = throttle::scope_of(&path);
        let is_read = method == reqwest::Method::GET;
        let method_name: &'static str = match method.as_str() {
            "PUT" => "PUT",
            "DELETE" => "DELETE",
            "PATCH" => "PATCH",
            "POST" => "POST",
            _ => "GET",
        };
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self.token().await?;
            let waited = if is_read {
                self.inner
                    .throttle
                    .acquire(&sub, &provider, operation)
                    .await
            } else {
                self.inner.writes.acquire(&sub, &provider, operation).await
            };
            {
                let mut s = self.lock_stats();
                s.requests += 1;
                *s.by_operation.entry(operation.to_string()).or_default() += 1;
                if !waited.is_zero() {
                    s.budget_waits += 1;
                    s.budget_wait += waited;
                }
            }
            tracing::debug!(operation, method = method_name, path = %path, attempt, "ARM write");
            let mut req = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(&token.token)
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(opts.request_timeout);
            if let Some(b) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            if let Some(tag) = if_match {
                req = req.header(reqwest::header::IF_MATCH, tag);
            }
            let sent = match req.send().await {
                Ok(resp) => {
                    let r = WriteResponse {
                        status: resp.status().as_u16(),
                        async_operation: header_str(&resp, "azure-asyncoperation"),
                        location: header_str(&resp, "location"),
                        retry_after: header_str(&resp, "retry-after")
                            .and_then(|v| retry::parse_retry_after(&v, SystemTime::now()))
                            .map(|d| d.min(opts.max_retry_after)),
                        etag: header_str(&resp, "etag"),
                        request_id: header_str(&resp, "x-ms-request-id"),
                        body: Vec::new(),
                    };
                    read_body(resp)
                        .await
                        .map(|b| WriteResponse { body: b, ..r })
                }
                Err(e) => Err(e),
            };
            let r = match sent {
                Ok(r) => r,
                Err(e) => {
                    {
                        let mut s = self.lock_stats();
                        if e.is_timeout() {
                            s.timeouts += 1;
                        } else {
                            s.transport_errors += 1;
                        }
                    }
                    if is_transient(&e) && attempt <= opts.max_retries {
                        let wait = retry::backoff_delay(self.inner.backoff_base, attempt - 1);
                        self.sleep_backoff(wait, false).await;
                        continue;
                    }
                    return Err(
                        transport_error(operation, path, attempt, opts.request_timeout, e).into(),
                    );
                }
            };
            self.lock_stats().count_response(operation, r.status);
            if r.status < 400 {
                return Ok(r);
            }
            if r.status == 401 && !refreshed {
                refreshed = true;
                self.inner
                    .credential
                    .invalidate(&self.inner.scope, &token.token)
                    .await;
                self.lock_stats().token_refreshes += 1;
                continue;
            }
            let retryable = r.status == 429 || r.status == 408 || r.status >= 500;
            if retryable && attempt <= opts.max_retries {
                let (wait, from_header) = match r.retry_after {
                    Some(ra) => (ra, true),
                    None => (
                        retry::backoff_delay(self.inner.backoff_base, attempt - 1),
                        false,
                    ),
                };
                if r.status == 429 {
                    self.lock_stats().throttled_waits += 1;
                }
                let (code, _) = r.error();
                tracing::warn!(
                    operation,
                    method = method_name,
                    path = %path,
                    status = r.status,
                    code = %code,
                    wait_ms = wait.as_millis() as u64,
                    "ARM write failed; retrying"
                );
                self.sleep_backoff(wait, from_header).await;
                continue;
            }
            let (code, message) = r.error();
            return Err(ArmWriteError::Api {
                operation,
                method: method_name,
                path,
                status: r.status,
                code,
                message,
                request_id: r.request_id,
            });
        }
    }
}

/// `properties.provisioningState` of a resource body.
pub fn provisioning_state(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ProvisioningOnly>(body)
        .ok()?
        .properties?
        .provisioning_state
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;

    #[test]
    fn error_bodies() {
        let (c, m) = parse_error_body(
            StatusCode::NOT_FOUND,
            br#"{"error":{"code":"ResourceNotFound","message":"The Resource 'x' was not found."}}"#,
        );
        assert_eq!(c, "ResourceNotFound");
        assert_eq!(m, "The Resource 'x' was not found.");
        let (c, m) = parse_error_body(StatusCode::BAD_REQUEST, br#"{"code":"X","message":"y"}"#);
        assert_eq!((c.as_str(), m.as_str()), ("X", "y"));
        let (c, m) = parse_error_body(StatusCode::BAD_REQUEST, br#"{"Code":"X","Message":"y"}"#);
        assert_eq!((c.as_str(), m.as_str()), ("X", "y"));
        let (c, m) = parse_error_body(StatusCode::BAD_GATEWAY, b"<html>\n  upstream\n</html>");
        assert_eq!(c, "Bad Gateway");
        assert_eq!(m, "<html> upstream </html>");
        let (c, m) = parse_error_body(StatusCode::SERVICE_UNAVAILABLE, b"");
        assert_eq!(
            (c.as_str(), m.as_str()),
            ("Service Unavailable", "Service Unavailable")
        );
        let (c, m) = parse_error_body(StatusCode::CONFLICT, br#"{"error":{}}"#);
        assert_eq!(c, "Conflict");
        assert_eq!(m, r#"{"error":{}}"#);
    }

    #[test]
    fn url_building() {
        let client = ArmClient::new(
            ArmOptions::new(Url::parse("http://127.0.0.1:9/prefix/").expect("url")),
            Arc::new(super::super::auth::StaticToken("t".into())),
            reqwest::Client::new(),
        );
        let url = client
            .build_url(
                "op",
                &ArmClient::scale_set_path("sub", "my rg(1)", "set.a"),
                "2024-07-01",
                &[("$filter", "a eq 'b'"), ("api-version", "ignored")],
            )
            .expect("url");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:9/prefix/subscriptions/sub/resourceGroups/my%20rg(1)/providers/Microsoft.Compute/virtualMachineScaleSets/set.a?api-version=2024-07-01&$filter=a%20eq%20%27b%27"
        );
    }

    #[test]
    fn default_options_point_at_the_public_cloud() {
        let o = ArmOptions::default();
        assert_eq!(o.endpoint.as_str(), "https://management.azure.com/");
        assert_eq!(o.scope(), "https://management.azure.com/.default");
    }

    #[test]
    fn path_segments_and_query_values_percent_encode_all_but_their_kept_characters() {
        // Unreserved characters stay; a segment also keeps ( ), a query part keeps $.
        assert_eq!(encode_segment("Ab9-._~()"), "Ab9-._~()");
        assert_eq!(encode_query("Ab9-._~$"), "Ab9-._~$");
        // Everything else is encoded, upper-case hex, UTF-8 byte by byte.
        assert_eq!(encode_segment("a b/c?d#e%f$g"), "a%20b%2Fc%3Fd%23e%25f%24g");
        assert_eq!(encode_query("a b&c=d+(e)'"), "a%20b%26c%3Dd%2B%28e%29%27");
        assert_eq!(encode_segment("grüße"), "gr%C3%BC%C3%9Fe");
        assert_eq!(encode_segment(""), "");
    }

    #[test]
    fn origins() {
        let p = |s: &str| Url::parse(s).expect("url");
        assert!(same_origin(
            &p("https://management.azure.com/x?y"),
            &p("https://MANAGEMENT.azure.com:443")
        ));
        assert!(!same_origin(
            &p("https://evil.example/x"),
            &p("https://management.azure.com")
        ));
        assert!(!same_origin(
            &p("http://management.azure.com/x"),
            &p("https://management.azure.com")
        ));
        assert!(!same_origin(
            &p("a://example.com/aaaa"),
            &p("https://management.azure.com")
        ));
    }
}
