//! Azure AD / Entra ID credentials, hand-rolled (no Azure SDK crates).
//!
//! [`default_credential`] assembles the same order the Azure SDKs'
//! `DefaultAzureCredential` uses:
//!
//! 1. client secret (`AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`),
//! 2. workload identity (`AZURE_FEDERATED_TOKEN_FILE` + tenant + client id),
//! 3. managed identity (App Service protocol when `IDENTITY_ENDPOINT` and
//!    `IDENTITY_HEADER` are set, IMDS otherwise),
//! 4. Azure CLI (`az account get-access-token`).
//!
//! and wraps the chain in a [`CachedCredential`]. Tokens and secrets never appear
//! in `Debug` output, error messages or logs.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use url::Url;

use super::retry;

/// Default Entra ID authority host (public cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";
/// Default IMDS base URL. Overridable with `AZURE_POD_IDENTITY_AUTHORITY_HOST`.
pub const DEFAULT_IMDS_HOST: &str = "http://169.254.169.254";
/// IMDS managed identity api-version.
pub const IMDS_API_VERSION: &str = "2018-02-01";
/// App Service / Container Apps managed identity api-version.
pub const APP_SERVICE_API_VERSION: &str = "2019-08-01";

const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const IMDS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const IMDS_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
const IMDS_MAX_RETRIES: u32 = 3;
const IMDS_RETRY_BASE: Duration = Duration::from_millis(500);
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Longest description kept from a token service error.
const MAX_DESCRIPTION: usize = 600;

// ---------------------------------------------------------------------------
// AccessToken / TokenCredential
// ---------------------------------------------------------------------------

/// A bearer token and its expiry. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_at: SystemTime,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expires_in = self
            .expires_at
            .duration_since(SystemTime::now())
            .map(|d| format!("{}s", d.as_secs()))
            .unwrap_or_else(|_| "expired".to_string());
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("expires_in", &expires_in)
            .finish()
    }
}

/// Something that can produce bearer tokens for a scope
/// (`https://management.azure.com/.default`).
#[async_trait]
pub trait TokenCredential: Send + Sync + fmt::Debug {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError>;

    /// `"client_secret"`, `"workload_identity"`, `"managed_identity_app_service"`,
    /// `"managed_identity_imds"`, `"azure_cli"`, `"chain"` or `"static"`.
    fn kind(&self) -> &'static str;

    /// Tells a caching credential that `token` was rejected by a service
    /// (HTTP 401), so the next `get_token` fetches a new one. No-op by default.
    async fn invalidate(&self, _scope: &str, _token: &str) {}
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What one credential of a chain did (for the "nothing worked" message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialAttempt {
    pub credential: &'static str,
    pub outcome: String,
}

/// Authentication failure. Says which credential failed and what the token
/// service answered; never contains a secret or a token.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credential cannot be used here (not configured, endpoint absent,
    /// not logged in). A chain moves on to the next credential.
    #[error("{credential} credential unavailable: {reason}")]
    Unavailable {
        credential: &'static str,
        reason: String,
    },
    /// The token service rejected the request. A chain stops here.
    #[error("{credential} credential: authentication failed ({}): {description}", status_and_code(*.status, .code))]
    Failed {
        credential: &'static str,
        status: Option<u16>,
        code: String,
        description: String,
    },
    /// The credential is configured but the configuration is unusable.
    #[error("{credential} credential: invalid configuration: {detail}")]
    Config {
        credential: &'static str,
        detail: String,
    },
    /// The token endpoint could not be reached or timed out.
    #[error("{credential} credential: request to {endpoint} failed: {detail}")]
    Transport {
        credential: &'static str,
        endpoint: String,
        detail: String,
    },
    /// The token endpoint answered 2xx with something that is not a token.
    #[error("{credential} credential: unexpected token response: {detail}")]
    InvalidResponse {
        credential: &'static str,
        detail: String,
    },
    /// Every credential in the chain was unavailable.
    #[error("no Azure credential could provide a token: {}", format_attempts(.attempts))]
    NoCredential { attempts: Vec<CredentialAttempt> },
}

fn status_and_code(status: Option<u16>, code: &str) -> String {
    match (status, code.is_empty()) {
        (Some(s), false) => format!("HTTP {s}, {code}"),
        (Some(s), true) => format!("HTTP {s}"),
        (None, false) => code.to_string(),
        (None, true) => "no status".to_string(),
    }
}

fn format_attempts(attempts: &[CredentialAttempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("[{}: {}]", a.credential, a.outcome))
        .collect::<Vec<_>>()
        .join(" ")
}

impl AuthError {
    /// The credential kind the error comes from (`"chain"` for [`AuthError::NoCredential`]).
    pub fn credential(&self) -> &'static str {
        match self {
            AuthError::Unavailable { credential, .. }
            | AuthError::Failed { credential, .. }
            | AuthError::Config { credential, .. }
            | AuthError::Transport { credential, .. }
            | AuthError::InvalidResponse { credential, .. } => credential,
            AuthError::NoCredential { .. } => "chain",
        }
    }

    /// True when a chain should try the next credential.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::Unavailable { .. })
    }
}

/// Replaces every occurrence of the given secrets and truncates.
fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if s.len() >= 3 {
            out = out.replace(s, "<redacted>");
        }
    }
    truncate_chars(out.trim(), MAX_DESCRIPTION)
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

// ---------------------------------------------------------------------------
// Env
// ---------------------------------------------------------------------------

/// A snapshot of environment variables. `Debug` lists the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The current process environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Env {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    pub fn from_pairs(pairs: &[(&str, &str)]) -> Env {
        Env(pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect())
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    /// Returns a copy with `k` set to `v`.
    pub fn with(mut self, k: &str, v: &str) -> Env {
        self.0.insert(k.to_string(), v.to_string());
        self
    }

    /// A variable that is set and not blank (the SDKs treat empty as unset).
    fn var(&self, k: &str) -> Option<&str> {
        self.get(k).map(str::trim).filter(|v| !v.is_empty())
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

// ---------------------------------------------------------------------------
// helpers: URLs, scopes, token responses
// ---------------------------------------------------------------------------

pub(crate) use crate::net::check_secure;

/// `https://management.azure.com/.default` → `https://management.azure.com`.
pub fn scope_to_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

/// URL without query or fragment, for messages.
fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 256
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// A JSON number or a string holding a number.
fn json_u64(v: Option<&serde_json::Value>) -> Option<u64> {
    match v? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f >= 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}

fn json_str<'a>(v: &'a serde_json::Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(serde_json::Value::as_str))
        .filter(|s| !s.is_empty())
}

/// Lifetime assumed for a token whose expiry cannot be read.
const UNKNOWN_EXPIRY_LIFETIME: Duration = Duration::from_secs(600);

/// Parses an OAuth2-style token response (AAD, IMDS, App Service).
/// `expires_in` (relative; robust to clock skew) wins over `expires_on`.
fn parse_token_body(
    credential: &'static str,
    body: &[u8],
    requested_at: SystemTime,
) -> Result<AccessToken, AuthError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| AuthError::InvalidResponse {
            credential,
            detail: format!("body is not JSON ({e})"),
        })?;
    let token = json_str(&v, &["access_token", "accessToken"]).ok_or_else(|| {
        AuthError::InvalidResponse {
            credential,
            detail: "no access_token in response".to_string(),
        }
    })?;
    let expires_at = if let Some(secs) = json_u64(v.get("expires_in")) {
        requested_at.checked_add(Duration::from_secs(secs))
    } else if let Some(epoch) = json_u64(v.get("expires_on")) {
        UNIX_EPOCH.checked_add(Duration::from_secs(epoch))
    } else {
        // An expiry in a form we do not read (older App Service answers give a date
        // string): use the token, and fetch a new one soon rather than fail.
        tracing::debug!(
            credential,
            "Token response has no numeric expiry; treating the token as valid for 10 minutes."
        );
        requested_at.checked_add(UNKNOWN_EXPIRY_LIFETIME)
    }
    .ok_or_else(|| AuthError::InvalidResponse {
        credential,
        detail: "no usable expires_in/expires_on in response".to_string(),
    })?;
    Ok(AccessToken {
        token: token.to_string(),
        expires_at,
    })
}

/// Extracts (code, description) from an error body of a token service:
/// AAD `{"error":"..","error_description":".."}`, App Service
/// `{"error":{"code","message"}}` or `{"message":..}`, else a body snippet.
fn token_error_details(body: &[u8], secrets: &[&str]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let (code, desc) = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            let err = v.get("error");
            let code = match err {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(o @ serde_json::Value::Object(_)) => {
                    json_str(o, &["code", "Code"]).unwrap_or("").to_string()
                }
                _ => json_str(&v, &["code", "Code"]).unwrap_or("").to_string(),
            };
            let desc = json_str(&v, &["error_description", "message", "Message"])
                .map(str::to_string)
                .or_else(|| {
                    err.filter(|e| e.is_object())
                        .and_then(|e| json_str(e, &["message", "Message"]))
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.to_string());
            (code, desc)
        }
        Err(_) => (String::new(), text.to_string()),
    };
    (redact(&code, secrets), redact(&desc, secrets))
}

use crate::net::transport_detail;

/// POSTs a client-credentials style form to `{authority}/{tenant}/oauth2/v2.0/token`.
async fn request_aad_token(
    credential: &'static str,
    http: &reqwest::Client,
    authority: &str,
    tenant: &str,
    form: &[(&str, &str)],
    secrets: &[&str],
) -> Result<AccessToken, AuthError> {
    let authority_url = Url::parse(authority.trim()).map_err(|e| AuthError::Config {
        credential,
        detail: format!("authority host {authority:?} is not a URL: {e}"),
    })?;
    check_secure(&authority_url).map_err(|detail| AuthError::Config {
        credential,
        detail: format!("authority host: {detail}"),
    })?;
    if !valid_tenant(tenant) {
        return Err(AuthError::Config {
            credential,
            detail: "AZURE_TENANT_ID contains characters not allowed in a tenant id".to_string(),
        });
    }
    let mut token_url = authority_url;
    let base_path = token_url.path().trim_end_matches('/').to_string();
    token_url.set_path(&format!("{base_path}/{tenant}/oauth2/v2.0/token"));
    token_url.set_query(None);

    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form.iter())
        .finish();
    let requested_at = SystemTime::now();
    let resp = http
        .post(token_url.clone())
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(reqwest::header::ACCEPT, "application/json")
        .timeout(TOKEN_REQUEST_TIMEOUT)
        .body(body)
        .send()
        .await
        .map_err(|e| AuthError::Transport {
            credential,
            endpoint: display_url(&token_url),
            detail: transport_detail(&e),
        })?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| AuthError::Transport {
        credential,
        endpoint: display_url(&token_url),
        detail: transport_detail(&e),
    })?;
    if !status.is_success() {
        let (code, description) = token_error_details(&bytes, secrets);
        return Err(AuthError::Failed {
            credential,
            status: Some(status.as_u16()),
            code,
            description,
        });
    }
    parse_token_body(credential, &bytes, requested_at)
}

// ---------------------------------------------------------------------------
// Client secret
// ---------------------------------------------------------------------------

/// Service principal with a client secret (OAuth2 client credentials grant).
#[derive(Clone)]
pub struct ClientSecretCredential {
    tenant_id: String,
    client_id: String,
    client_secret: String,
    authority_host: String,
    http: reqwest::Client,
}

impl ClientSecretCredential {
    pub fn new(
        tenant_id: &str,
        client_id: &str,
        client_secret: &str,
        authority_host: &str,
        http: reqwest::Client,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            authority_host: authority_host.to_string(),
            http,
        }
    }
}

impl fmt::Debug for ClientSecretCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecretCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("authority_host", &self.authority_host)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for ClientSecretCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        request_aad_token(
            self.kind(),
            &self.http,
            &self.authority_host,
            &self.tenant_id,
            &[
                ("client_id", self.client_id.as_str()),
                ("scope", scope),
                ("client_secret", self.client_secret.as_str()),
                ("grant_type", "client_credentials"),
            ],
            &[&self.client_secret],
        )
        .await
    }

    fn kind(&self) -> &'static str {
        "client_secret"
    }
}

// ---------------------------------------------------------------------------
// Workload identity
// ---------------------------------------------------------------------------

/// AKS workload identity: a federated token file exchanged for an access token
/// (client assertion grant). The file is re-read on every request (it rotates).
#[derive(Clone)]
pub struct WorkloadIdentityCredential {
    tenant_id: String,
    client_id: String,
    token_file: PathBuf,
    authority_host: String,
    http: reqwest::Client,
}

impl WorkloadIdentityCredential {
    pub fn new(
        tenant_id: &str,
        client_id: &str,
        token_file: impl Into<PathBuf>,
        authority_host: &str,
        http: reqwest::Client,
    ) -> Self {
        Self {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            token_file: token_file.into(),
            authority_host: authority_host.to_string(),
            http,
        }
    }
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredential")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .field("authority_host", &self.authority_host)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for WorkloadIdentityCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let credential = self.kind();
        let assertion = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| AuthError::Config {
                credential,
                detail: format!(
                    "cannot read federated token file {}: {e}",
                    self.token_file.display()
                ),
            })?;
        let assertion = assertion.trim();
        if assertion.is_empty() {
            return Err(AuthError::Config {
                credential,
                detail: format!(
                    "federated token file {} is empty",
                    self.token_file.display()
                ),
            });
        }
        request_aad_token(
            credential,
            &self.http,
            &self.authority_host,
            &self.tenant_id,
            &[
                ("client_id", self.client_id.as_str()),
                ("scope", scope),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                ("client_assertion", assertion),
                ("grant_type", "client_credentials"),
            ],
            &[assertion],
        )
        .await
    }

    fn kind(&self) -> &'static str {
        "workload_identity"
    }
}

// ---------------------------------------------------------------------------
// Managed identity: App Service / Container Apps
// ---------------------------------------------------------------------------

/// Managed identity via the App Service / Container Apps / Functions endpoint
/// (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`). Plain http is allowed: the
/// platform serves it that way.
#[derive(Clone)]
pub struct AppServiceManagedIdentityCredential {
    endpoint: String,
    identity_header: String,
    client_id: Option<String>,
    http: reqwest::Client,
}

impl AppServiceManagedIdentityCredential {
    pub fn new(
        endpoint: &str,
        identity_header: &str,
        client_id: Option<&str>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            identity_header: identity_header.to_string(),
            client_id: client_id.map(str::to_string),
            http,
        }
    }
}

impl fmt::Debug for AppServiceManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppServiceManagedIdentityCredential")
            .field("endpoint", &self.endpoint)
            .field("identity_header", &"<redacted>")
            .field("client_id", &self.client_id)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for AppServiceManagedIdentityCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let credential = self.kind();
        let mut url = Url::parse(self.endpoint.trim()).map_err(|e| AuthError::Config {
            credential,
            detail: format!("IDENTITY_ENDPOINT is not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AuthError::Config {
                credential,
                detail: format!(
                    "IDENTITY_ENDPOINT has unsupported scheme {:?}",
                    url.scheme()
                ),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", APP_SERVICE_API_VERSION);
            q.append_pair("resource", scope_to_resource(scope));
            if let Some(c) = &self.client_id {
                q.append_pair("client_id", c);
            }
        }
        let requested_at = SystemTime::now();
        let resp = self
            .http
            .get(url.clone())
            .header("X-IDENTITY-HEADER", &self.identity_header)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(TOKEN_REQUEST_TIMEOUT)
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return Err(AuthError::Unavailable {
                    credential,
                    reason: format!(
                        "managed identity endpoint {} unreachable: {}",
                        display_url(&url),
                        transport_detail(&e)
                    ),
                })
            }
            Err(e) => {
                return Err(AuthError::Transport {
                    credential,
                    endpoint: display_url(&url),
                    detail: transport_detail(&e),
                })
            }
        };
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| AuthError::Transport {
            credential,
            endpoint: display_url(&url),
            detail: transport_detail(&e),
        })?;
        if !status.is_success() {
            let (code, description) = token_error_details(&bytes, &[&self.identity_header]);
            return Err(AuthError::Failed {
                credential,
                status: Some(status.as_u16()),
                code,
                description,
            });
        }
        parse_token_body(credential, &bytes, requested_at)
    }

    fn kind(&self) -> &'static str {
        "managed_identity_app_service"
    }
}

// ---------------------------------------------------------------------------
// Managed identity: IMDS
// ---------------------------------------------------------------------------

/// Managed identity via the Instance Metadata Service. The first request is
/// a probe with a 1 s connect timeout: if IMDS cannot be reached, or answers
/// 400 (no identity assigned), the credential is *unavailable*.
pub struct ImdsManagedIdentityCredential {
    base: String,
    client_id: Option<String>,
    http: reqwest::Client,
    probed: AtomicBool,
    retry_base: Duration,
}

impl ImdsManagedIdentityCredential {
    /// `base` is e.g. `http://169.254.169.254`. A dedicated HTTP client
    /// (1 s connect timeout, never through a proxy) is used when it can be
    /// built; `fallback_http` otherwise.
    pub fn new(base: &str, client_id: Option<&str>, fallback_http: reqwest::Client) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(IMDS_CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or(fallback_http);
        Self {
            base: base.to_string(),
            client_id: client_id.map(str::to_string),
            http,
            probed: AtomicBool::new(false),
            retry_base: IMDS_RETRY_BASE,
        }
    }

    fn token_url(&self, scope: &str) -> Result<Url, AuthError> {
        let credential = self.kind();
        let mut url = Url::parse(self.base.trim()).map_err(|e| AuthError::Config {
            credential,
            detail: format!("IMDS host {:?} is not a URL: {e}", self.base),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AuthError::Config {
                credential,
                detail: format!("IMDS host has unsupported scheme {:?}", url.scheme()),
            });
        }
        let base_path = url.path().trim_end_matches('/').to_string();
        url.set_path(&format!("{base_path}/metadata/identity/oauth2/token"));
        url.set_query(None);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("api-version", IMDS_API_VERSION);
            q.append_pair("resource", scope_to_resource(scope));
            if let Some(c) = &self.client_id {
                q.append_pair("client_id", c);
            }
        }
        Ok(url)
    }
}

impl fmt::Debug for ImdsManagedIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImdsManagedIdentityCredential")
            .field("base", &self.base)
            .field("client_id", &self.client_id)
            .finish()
    }
}

#[async_trait]
impl TokenCredential for ImdsManagedIdentityCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let credential = self.kind();
        let url = self.token_url(scope)?;
        let mut attempt = 0u32;
        loop {
            let probing = !self.probed.load(Ordering::Acquire);
            let requested_at = SystemTime::now();
            let sent = self
                .http
                .get(url.clone())
                .header("Metadata", "true")
                .header(reqwest::header::ACCEPT, "application/json")
                .timeout(if probing {
                    IMDS_PROBE_TIMEOUT
                } else {
                    TOKEN_REQUEST_TIMEOUT
                })
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) if probing => {
                    return Err(AuthError::Unavailable {
                        credential,
                        reason: format!(
                            "IMDS endpoint {} unreachable: {}",
                            display_url(&url),
                            transport_detail(&e)
                        ),
                    })
                }
                Err(e) => {
                    return Err(AuthError::Transport {
                        credential,
                        endpoint: display_url(&url),
                        detail: transport_detail(&e),
                    })
                }
            };
            let status = resp.status().as_u16();
            let bytes = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    return Err(AuthError::Transport {
                        credential,
                        endpoint: display_url(&url),
                        detail: transport_detail(&e),
                    })
                }
            };
            if (200..300).contains(&status) {
                return match parse_token_body(credential, &bytes, requested_at) {
                    Ok(t) => {
                        self.probed.store(true, Ordering::Release);
                        Ok(t)
                    }
                    // Something that is not IMDS answered the probe.
                    Err(e) if probing => Err(AuthError::Unavailable {
                        credential,
                        reason: format!("unexpected answer from {}: {e}", display_url(&url)),
                    }),
                    Err(e) => Err(e),
                };
            }
            let (code, description) = token_error_details(&bytes, &[]);
            let unreachable_network = status == 403 && description.contains("unreachable");
            if status == 400 || unreachable_network {
                return Err(AuthError::Unavailable {
                    credential,
                    reason: format!(
                        "IMDS has no usable identity (HTTP {status} {code}): {description}"
                    ),
                });
            }
            self.probed.store(true, Ordering::Release);
            let retryable = matches!(status, 404 | 410 | 429) || status >= 500;
            if retryable && attempt < IMDS_MAX_RETRIES {
                let wait = retry::backoff_delay(self.retry_base, attempt);
                attempt += 1;
                tracing::debug!(
                    credential,
                    status,
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "retrying IMDS token request"
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(AuthError::Failed {
                credential,
                status: Some(status),
                code,
                description,
            });
        }
    }

    fn kind(&self) -> &'static str {
        "managed_identity_imds"
    }
}

// ---------------------------------------------------------------------------
// Azure CLI
// ---------------------------------------------------------------------------

/// Runs `az account get-access-token --output json --resource <resource>`.
/// `az` is looked up on the `PATH` of the given [`Env`], and the child runs with
/// exactly that environment. Its `expires_on` (epoch seconds, newer CLIs) is preferred;
/// the legacy `expiresOn` is a local date-time of the zone `az` ran in (`TZ` of that
/// environment, else the system's zone) and is read in that zone.
#[derive(Clone)]
pub struct AzureCliCredential {
    env: Env,
    timeout: Duration,
}

impl AzureCliCredential {
    pub fn new(env: Env) -> Self {
        Self {
            env,
            timeout: CLI_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for AzureCliCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureCliCredential")
            .field("timeout", &self.timeout)
            .finish()
    }
}

fn is_executable(p: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(p) else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Finds `name` in the `PATH` of `env`.
fn find_on_path(env: &Env, name: &str) -> Option<PathBuf> {
    let path = env.get("PATH")?;
    std::env::split_paths(path)
        .filter(|d| !d.as_os_str().is_empty())
        .flat_map(|d| {
            let mut c = vec![d.join(name)];
            if cfg!(windows) {
                c.push(d.join(format!("{name}.cmd")));
            }
            c
        })
        .find(|p| is_executable(p))
}

/// The zone the CLI prints `expiresOn` in: `TZ` of its environment (an IANA name,
/// `:name`, or a POSIX rule such as `IST-5:30`), else the system's zone; UTC when neither
/// can be read.
fn cli_time_zone(tz: Option<&str>) -> jiff::tz::TimeZone {
    use jiff::tz::TimeZone;
    if let Some(tz) = tz.map(str::trim).filter(|t| !t.is_empty()) {
        let name = tz.strip_prefix(':').unwrap_or(tz);
        let zone = if name.starts_with('/') {
            std::fs::read(name)
                .ok()
                .and_then(|data| TimeZone::tzif(name, &data).ok())
        } else {
            TimeZone::get(name).ok()
        };
        match zone.or_else(|| TimeZone::posix(name).ok()) {
            Some(z) => return z,
            None => tracing::warn!(
                tz = name,
                "TZ names no time zone known here; reading the Azure CLI's expiresOn in the \
                 system time zone."
            ),
        }
    }
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

/// Reads the CLI's legacy `expiresOn` (`2024-01-01 12:00:00.000000`), a local date-time
/// of `zone`. A time skipped or repeated by a daylight-saving change takes the earlier
/// instant (the token is then refreshed early rather than used late).
fn cli_local_expiry(s: &str, zone: &jiff::tz::TimeZone) -> Option<SystemTime> {
    // `YYYY-MM-DD HH:MM:SS[.fraction]` (or with a `T`); a trailing `Z` is tolerated and,
    // as before, does not change the zone the CLI's local time is read in.
    let s = s.trim();
    let civil: jiff::civil::DateTime = s.strip_suffix('Z').unwrap_or(s).parse().ok()?;
    let ts = zone.to_ambiguous_timestamp(civil).earlier().ok()?;
    Some(SystemTime::from(ts))
}

/// Parses the JSON printed by `az account get-access-token`; `zone` is the one `az`
/// ran in (for the legacy `expiresOn`).
fn parse_cli_output(stdout: &[u8], zone: &jiff::tz::TimeZone) -> Result<AccessToken, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("output is not JSON ({e})"))?;
    let token = json_str(&v, &["accessToken", "access_token"])
        .ok_or_else(|| "no accessToken in output".to_string())?;
    let expires_at = if let Some(epoch) = json_u64(v.get("expires_on")) {
        UNIX_EPOCH.checked_add(Duration::from_secs(epoch))
    } else if let Some(s) = json_str(&v, &["expiresOn"]) {
        cli_local_expiry(s, zone)
    } else {
        None
    }
    .ok_or_else(|| "no usable expires_on/expiresOn in output".to_string())?;
    Ok(AccessToken {
        token: token.to_string(),
        expires_at,
    })
}

#[async_trait]
impl TokenCredential for AzureCliCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let credential = self.kind();
        let resource = scope_to_resource(scope);
        if resource.is_empty()
            || !resource
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":/.-_".contains(&b))
        {
            return Err(AuthError::Config {
                credential,
                detail: format!("invalid scope {scope:?}"),
            });
        }
        let Some(az) = find_on_path(&self.env, "az") else {
            return Err(AuthError::Unavailable {
                credential,
                reason: "az not found on PATH".to_string(),
            });
        };
        let mut cmd = tokio::process::Command::new(&az);
        cmd.args([
            "account",
            "get-access-token",
            "--output",
            "json",
            "--resource",
            resource,
        ])
        .env_clear()
        .envs(self.env.iter())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);

        // A freshly written script can be briefly "busy" (ETXTBSY) while another
        // thread's fork still holds the write descriptor: retry the spawn.
        let mut spawn_attempts = 0;
        let child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(26) && spawn_attempts < 5 => {
                    spawn_attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(AuthError::Unavailable {
                        credential,
                        reason: format!("cannot run {}: {e}", az.display()),
                    })
                }
            }
        };
        let output = match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(AuthError::Unavailable {
                    credential,
                    reason: format!("running az failed: {e}"),
                })
            }
            Err(_) => {
                return Err(AuthError::Failed {
                    credential,
                    status: None,
                    code: "Timeout".to_string(),
                    description: format!(
                        "az account get-access-token did not finish within {:?}",
                        self.timeout
                    ),
                })
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let description = redact(&stderr, &[]);
            if stderr.contains("az login") || stderr.contains("az account set") {
                return Err(AuthError::Unavailable {
                    credential,
                    reason: format!("not logged in: {description}"),
                });
            }
            return Err(AuthError::Failed {
                credential,
                status: None,
                code: format!("exit status {}", output.status.code().unwrap_or(-1)),
                description,
            });
        }
        parse_cli_output(&output.stdout, &cli_time_zone(self.env.get("TZ")))
            .map_err(|detail| AuthError::InvalidResponse { credential, detail })
    }

    fn kind(&self) -> &'static str {
        "azure_cli"
    }
}

// ---------------------------------------------------------------------------
// Static token (tests)
// ---------------------------------------------------------------------------

/// A fixed token (tests, or a token handed in from outside). Valid for 24 h
/// from each request.
#[derive(Clone)]
pub struct StaticToken(pub String);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(&self, _scope: &str) -> Result<AccessToken, AuthError> {
        Ok(AccessToken {
            token: self.0.clone(),
            expires_at: SystemTime::now() + Duration::from_secs(24 * 3600),
        })
    }

    fn kind(&self) -> &'static str {
        "static"
    }
}

// ---------------------------------------------------------------------------
// Chain
// ---------------------------------------------------------------------------

#[derive(Debug)]
enum ChainEntry {
    /// Not configured in the environment; kept for the error message.
    Skipped(CredentialAttempt),
    Source(Arc<dyn TokenCredential>),
}

/// Tries credentials in order. An *unavailable* credential passes to the next;
/// any other error stops the chain. The first credential that succeeds is
/// remembered and used from then on (as the Azure SDKs do).
#[derive(Debug)]
pub struct ChainCredential {
    entries: Vec<ChainEntry>,
    selected: StdMutex<Option<usize>>,
}

impl ChainCredential {
    pub fn new(sources: Vec<Arc<dyn TokenCredential>>) -> Self {
        Self {
            entries: sources.into_iter().map(ChainEntry::Source).collect(),
            selected: StdMutex::new(None),
        }
    }

    /// Kinds of the credentials that will be tried, in order.
    pub fn sources(&self) -> Vec<&'static str> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                ChainEntry::Source(s) => Some(s.kind()),
                ChainEntry::Skipped(_) => None,
            })
            .collect()
    }

    fn selected(&self) -> Option<usize> {
        *self.selected.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl TokenCredential for ChainCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        if let Some(i) = self.selected() {
            if let Some(ChainEntry::Source(s)) = self.entries.get(i) {
                return s.get_token(scope).await;
            }
        }
        let mut attempts = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            match entry {
                ChainEntry::Skipped(a) => attempts.push(a.clone()),
                ChainEntry::Source(s) => match s.get_token(scope).await {
                    Ok(t) => {
                        tracing::info!(credential = s.kind(), "Azure credential selected");
                        *self.selected.lock().unwrap_or_else(|e| e.into_inner()) = Some(i);
                        return Ok(t);
                    }
                    Err(AuthError::Unavailable { credential, reason }) => {
                        tracing::debug!(credential, %reason, "Azure credential unavailable");
                        attempts.push(CredentialAttempt {
                            credential,
                            outcome: format!("unavailable: {reason}"),
                        });
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Err(AuthError::NoCredential { attempts })
    }

    fn kind(&self) -> &'static str {
        "chain"
    }

    async fn invalidate(&self, scope: &str, token: &str) {
        if let Some(i) = self.selected() {
            if let Some(ChainEntry::Source(s)) = self.entries.get(i) {
                s.invalidate(scope, token).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct CacheEntry {
    token: AccessToken,
    refresh_at: SystemTime,
}

type Slot = Arc<tokio::sync::Mutex<Option<CacheEntry>>>;

/// Caches tokens per scope. A token is reused until 5 minutes (or half its
/// lifetime, when shorter) before it expires; concurrent callers share one
/// refresh. If a refresh fails while the old token is still valid, the old
/// token is returned (and the failure logged).
pub struct CachedCredential {
    inner: Arc<dyn TokenCredential>,
    slots: StdMutex<HashMap<String, Slot>>,
}

impl CachedCredential {
    pub fn new(inner: Arc<dyn TokenCredential>) -> Self {
        Self {
            inner,
            slots: StdMutex::new(HashMap::new()),
        }
    }

    fn slot(&self, scope: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(scope.to_string()).or_default().clone()
    }
}

impl fmt::Debug for CachedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedCredential")
            .field("inner", &self.inner)
            .finish()
    }
}

/// When to refresh a token obtained at `now`: 5 min before expiry, or at half
/// its lifetime when that is sooner.
fn refresh_time(now: SystemTime, expires_at: SystemTime) -> SystemTime {
    let lifetime = expires_at.duration_since(now).unwrap_or(Duration::ZERO);
    let margin = (lifetime / 2).min(Duration::from_secs(300));
    expires_at.checked_sub(margin).unwrap_or(now)
}

#[async_trait]
impl TokenCredential for CachedCredential {
    async fn get_token(&self, scope: &str) -> Result<AccessToken, AuthError> {
        let slot = self.slot(scope);
        let mut guard = slot.lock().await;
        let now = SystemTime::now();
        if let Some(e) = guard.as_ref() {
            if now < e.refresh_at {
                return Ok(e.token.clone());
            }
        }
        match self.inner.get_token(scope).await {
            Ok(token) => {
                let fetched = SystemTime::now();
                *guard = Some(CacheEntry {
                    refresh_at: refresh_time(fetched, token.expires_at),
                    token: token.clone(),
                });
                Ok(token)
            }
            Err(err) => {
                if let Some(e) = guard.as_ref() {
                    if SystemTime::now() + Duration::from_secs(10) < e.token.expires_at {
                        tracing::warn!(
                            credential = self.inner.kind(),
                            error = %err,
                            "token refresh failed; using the cached token until it expires"
                        );
                        return Ok(e.token.clone());
                    }
                }
                Err(err)
            }
        }
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn invalidate(&self, scope: &str, token: &str) {
        let slot = self.slot(scope);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|e| e.token.token == token) {
            *guard = None;
        }
        drop(guard);
        self.inner.invalidate(scope, token).await;
    }
}

// ---------------------------------------------------------------------------
// default_credential
// ---------------------------------------------------------------------------

fn missing(env: &Env, names: &[&str]) -> Vec<String> {
    names
        .iter()
        .filter(|n| env.var(n).is_none())
        .map(|n| (*n).to_string())
        .collect()
}

/// Builds the uncached DefaultAzureCredential-style chain from `env`.
pub fn default_chain(env: &Env, http: reqwest::Client) -> ChainCredential {
    let authority = env
        .var("AZURE_AUTHORITY_HOST")
        .unwrap_or(DEFAULT_AUTHORITY_HOST)
        .to_string();
    let tenant = env.var("AZURE_TENANT_ID");
    let client = env.var("AZURE_CLIENT_ID");
    let mut entries = Vec::new();

    // 1. client secret
    match (tenant, client, env.var("AZURE_CLIENT_SECRET")) {
        (Some(t), Some(c), Some(s)) => entries.push(ChainEntry::Source(Arc::new(
            ClientSecretCredential::new(t, c, s, &authority, http.clone()),
        ))),
        _ => entries.push(ChainEntry::Skipped(CredentialAttempt {
            credential: "client_secret",
            outcome: format!(
                "not configured (missing {})",
                missing(
                    env,
                    &["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"]
                )
                .join(", ")
            ),
        })),
    }

    // 2. workload identity
    match (tenant, client, env.var("AZURE_FEDERATED_TOKEN_FILE")) {
        (Some(t), Some(c), Some(f)) => entries.push(ChainEntry::Source(Arc::new(
            WorkloadIdentityCredential::new(t, c, f, &authority, http.clone()),
        ))),
        _ => entries.push(ChainEntry::Skipped(CredentialAttempt {
            credential: "workload_identity",
            outcome: format!(
                "not configured (missing {})",
                missing(
                    env,
                    &[
                        "AZURE_FEDERATED_TOKEN_FILE",
                        "AZURE_TENANT_ID",
                        "AZURE_CLIENT_ID"
                    ]
                )
                .join(", ")
            ),
        })),
    }

    // 3. managed identity
    match (env.var("IDENTITY_ENDPOINT"), env.var("IDENTITY_HEADER")) {
        (Some(endpoint), Some(header)) => entries.push(ChainEntry::Source(Arc::new(
            AppServiceManagedIdentityCredential::new(endpoint, header, client, http.clone()),
        ))),
        _ => {
            let imds = env
                .var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
                .unwrap_or(DEFAULT_IMDS_HOST);
            entries.push(ChainEntry::Source(Arc::new(
                ImdsManagedIdentityCredential::new(imds, client, http.clone()),
            )));
        }
    }

    // 4. Azure CLI
    entries.push(ChainEntry::Source(Arc::new(AzureCliCredential::new(
        env.clone(),
    ))));

    ChainCredential {
        entries,
        selected: StdMutex::new(None),
    }
}

/// The DefaultAzureCredential-style chain for `env`, wrapped in a token cache.
pub fn default_credential(env: &Env, http: reqwest::Client) -> Arc<dyn TokenCredential> {
    Arc::new(CachedCredential::new(Arc::new(default_chain(env, http))))
}

/// Wraps any credential in a [`CachedCredential`].
pub fn cached(inner: Arc<dyn TokenCredential>) -> Arc<dyn TokenCredential> {
    Arc::new(CachedCredential::new(inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_is_redacted() {
        let t = AccessToken {
            token: "super-secret-token".into(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
        };
        let s = format!("{t:?}");
        assert!(!s.contains("super-secret-token"), "{s}");
        assert!(!format!("{:?}", StaticToken("abc-token".into())).contains("abc-token"));
        let c =
            ClientSecretCredential::new("t", "c", "hush-hush", "https://x", reqwest::Client::new());
        assert!(!format!("{c:?}").contains("hush-hush"));
        let env = Env::from_pairs(&[("AZURE_CLIENT_SECRET", "hush-hush")]);
        assert!(!format!("{env:?}").contains("hush-hush"));
    }

    #[test]
    fn token_body_numbers_or_strings() {
        let now = SystemTime::now();
        let t = parse_token_body("x", br#"{"access_token":"a","expires_in":"3599"}"#, now)
            .expect("parses");
        assert_eq!(t.expires_at, now + Duration::from_secs(3599));
        let t =
            parse_token_body("x", br#"{"access_token":"a","expires_in":60}"#, now).expect("parses");
        assert_eq!(t.expires_at, now + Duration::from_secs(60));
        let t = parse_token_body(
            "x",
            br#"{"access_token":"a","expires_on":"1506484173"}"#,
            now,
        )
        .expect("parses");
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_506_484_173)
        );
        // An expiry we cannot read (a date string) means "refresh soon", not an error.
        let t = parse_token_body(
            "x",
            br#"{"access_token":"a","expires_on":"11/23/2026 14:00:00 +00:00"}"#,
            now,
        )
        .expect("parses");
        assert_eq!(t.expires_at, now + UNKNOWN_EXPIRY_LIFETIME);
        assert!(parse_token_body("x", br#"{"expires_in":1}"#, now).is_err());
        assert!(parse_token_body("x", b"<html>", now).is_err());
    }

    #[test]
    fn error_details_never_leak_secret() {
        let body = br#"{"error":"invalid_client","error_description":"bad secret s3cr3t-value"}"#;
        let (code, desc) = token_error_details(body, &["s3cr3t-value"]);
        assert_eq!(code, "invalid_client");
        assert!(!desc.contains("s3cr3t-value"));
        let (code, desc) = token_error_details(br#"{"error":{"code":"X","message":"msg"}}"#, &[]);
        assert_eq!((code.as_str(), desc.as_str()), ("X", "msg"));
        let (code, desc) = token_error_details(b"plain text", &[]);
        assert_eq!((code.as_str(), desc.as_str()), ("", "plain text"));
    }

    #[test]
    fn cli_output_formats() {
        let utc = jiff::tz::TimeZone::UTC;
        let t =
            parse_cli_output(br#"{"accessToken":"a","expires_on":1704110400}"#, &utc).expect("ok");
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_704_110_400)
        );
        let t = parse_cli_output(br#"{"accessToken":"a","expires_on":"1704110400"}"#, &utc)
            .expect("ok");
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_704_110_400)
        );
        let t = parse_cli_output(
            br#"{"accessToken":"a","expiresOn":"2024-01-01 12:00:00.000000"}"#,
            &utc,
        )
        .expect("ok");
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_704_110_400)
        );
        assert!(parse_cli_output(br#"{"accessToken":"a"}"#, &utc).is_err());
    }

    #[test]
    fn cli_expires_on_takes_a_fraction_a_t_or_a_z_and_refuses_impossible_dates() {
        let utc = jiff::tz::TimeZone::UTC;
        let noon = UNIX_EPOCH + Duration::from_secs(1_704_110_400); // 2024-01-01 12:00:00 UTC
        for s in [
            "2024-01-01 12:00:00",
            "2024-01-01T12:00:00",
            "2024-01-01 12:00:00Z",
            " 2024-01-01 12:00:00.000000 ",
        ] {
            assert_eq!(cli_local_expiry(s, &utc), Some(noon), "{s:?}");
        }
        assert_eq!(
            cli_local_expiry("2024-01-01 12:00:00.5", &utc),
            Some(noon + Duration::from_millis(500))
        );
        assert_eq!(
            cli_local_expiry("2024-01-01 12:00:00.123456789", &utc),
            Some(noon + Duration::from_nanos(123_456_789))
        );
        for s in [
            "2024-13-01 12:00:00",
            "2024-02-30 12:00:00",
            "2024-01-01 25:00:00",
            "garbage",
            "",
        ] {
            assert_eq!(cli_local_expiry(s, &utc), None, "{s:?}");
        }
    }

    #[test]
    fn cli_expires_on_is_local_time_of_the_zone_az_ran_in() {
        // 2024-01-01 12:00:00 UTC is 17:30 in India (UTC+5:30, no daylight saving).
        let india = cli_time_zone(Some("IST-5:30"));
        let t = parse_cli_output(
            br#"{"accessToken":"a","expiresOn":"2024-01-01 17:30:00.000000"}"#,
            &india,
        )
        .expect("ok");
        assert_eq!(
            t.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_704_110_400)
        );
        // Central Europe: UTC+1 in winter, UTC+2 in summer (a POSIX rule, no tz database).
        let cet = cli_time_zone(Some("CET-1CEST,M3.5.0,M10.5.0/3"));
        let winter = parse_cli_output(
            br#"{"accessToken":"a","expiresOn":"2024-01-01 13:00:00.000000"}"#,
            &cet,
        )
        .expect("ok");
        assert_eq!(
            winter.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_704_110_400)
        );
        // 2024-07-01 12:00:00 UTC = 1719835200 is 14:00 CEST.
        let summer = parse_cli_output(
            br#"{"accessToken":"a","expiresOn":"2024-07-01 14:00:00.000000"}"#,
            &cet,
        )
        .expect("ok");
        assert_eq!(
            summer.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_719_835_200)
        );
        // The epoch field wins over the local one when both are there.
        let both = parse_cli_output(
            br#"{"accessToken":"a","expires_on":1704110400,"expiresOn":"1999-01-01 00:00:00.000000"}"#,
            &cet,
        )
        .expect("ok");
        assert_eq!(
            both.expires_at,
            UNIX_EPOCH + Duration::from_secs(1_704_110_400)
        );
    }

    #[test]
    fn refresh_margin() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        // 1 h token: refresh 5 min before expiry
        assert_eq!(
            refresh_time(now, now + Duration::from_secs(3600)),
            now + Duration::from_secs(3300)
        );
        // 4 s token: refresh at half-life
        assert_eq!(
            refresh_time(now, now + Duration::from_secs(4)),
            now + Duration::from_secs(2)
        );
        // expired
        assert_eq!(
            refresh_time(now, now - Duration::from_secs(4)),
            now - Duration::from_secs(4)
        );
    }

    #[test]
    fn secure_url_rules() {
        let ok = |s: &str| check_secure(&Url::parse(s).expect("url")).is_ok();
        assert!(ok("https://login.microsoftonline.com"));
        assert!(ok("http://127.0.0.1:8080"));
        assert!(ok("http://localhost:1"));
        assert!(ok("http://[::1]:1"));
        assert!(!ok("http://login.microsoftonline.com"));
        assert!(!ok("http://10.0.0.1"));
        assert!(!ok("ftp://localhost"));
    }

    #[test]
    fn default_chain_order() {
        let http = reqwest::Client::new();
        let all = Env::from_pairs(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/tmp/x"),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"),
            ("IDENTITY_HEADER", "h"),
        ]);
        assert_eq!(
            default_chain(&all, http.clone()).sources(),
            [
                "client_secret",
                "workload_identity",
                "managed_identity_app_service",
                "azure_cli"
            ]
        );
        let none = Env::from_pairs(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:1")]);
        assert_eq!(
            default_chain(&none, http).sources(),
            ["managed_identity_imds", "azure_cli"]
        );
    }
}
