//! NGINX Plus (and NGINXaaS for Azure) upstreams through the NGINX Plus REST API.
//!
//! The API version is negotiated once: `GET {api_endpoint}` lists the versions the
//! server speaks and the highest one this build knows (up to [`MAX_API_VERSION`]) is used.
//! `custom_headers` (NGINXaaS: `Authorization: ApiKey …`) go on every request and are
//! marked sensitive so they never show in debug output.

use super::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use crate::config::{format_nginx_time, parse_nginx_time, Secret};
use crate::model::UpstreamKind;
use crate::model::{ObservedServer, ServerParams, ServerState};
use crate::plan::Plan;
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::OnceCell;
use url::Url;

/// Highest NGINX Plus API version this build speaks.
pub const MAX_API_VERSION: u32 = 9;

/// Client for one NGINX Plus API endpoint.
pub struct NginxPlus {
    endpoint: Url,
    http: reqwest::Client,
    version: OnceCell<u32>,
}

impl std::fmt::Debug for NginxPlus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NginxPlus")
            .field("endpoint", &self.endpoint.as_str())
            .finish_non_exhaustive()
    }
}

/// A server as the API lists it; the times are borrowed from the answer's text when they
/// hold no escape (an upstream of 20,000 servers is read every cycle).
#[derive(Deserialize)]
struct ApiServer<'a> {
    id: u64,
    server: String,
    #[serde(default)]
    max_conns: Option<u32>,
    #[serde(default)]
    max_fails: Option<u32>,
    #[serde(default, borrow)]
    fail_timeout: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    slow_start: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    drain: Option<bool>,
    #[serde(default)]
    down: Option<bool>,
}

#[derive(Serialize, Default)]
struct ServerBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_conns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_fails: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fail_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    slow_start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drain: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    down: Option<bool>,
}

#[derive(Deserialize, Default)]
struct NginxErrorBody {
    #[serde(default)]
    error: NginxErrorInner,
    #[serde(default)]
    request_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct NginxErrorInner {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    code: Option<String>,
}

impl NginxPlus {
    /// Builds a client. `timeout` bounds every request; `ca_file` adds trusted roots to
    /// the system trust store.
    pub fn new(
        endpoint: &Url,
        custom_headers: &[(String, Secret)],
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, TargetError> {
        let mut headers = HeaderMap::new();
        for (name, value) in custom_headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| TargetError {
                message: format!("custom header name {name:?} is not a valid HTTP header name"),
                permanence: Permanence::Permanent,
            })?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| TargetError {
                message: format!(
                    "custom header {name} has a value that is not a valid HTTP header value"
                ),
                permanence: Permanence::Permanent,
            })?;
            value.set_sensitive(true);
            headers.append(name, value);
        }
        let http = crate::net::client_builder(ca_file)
            .map_err(|e| TargetError {
                message: format!("NGINX Plus API at {}: {e}", origin(endpoint)),
                permanence: Permanence::Permanent,
            })?
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .build()
            .map_err(|e| TargetError {
                message: format!("cannot build the NGINX Plus HTTP client: {e}"),
                permanence: Permanence::Permanent,
            })?;
        let mut endpoint = endpoint.clone();
        if endpoint.path().ends_with('/') && endpoint.path() != "/" {
            let trimmed = endpoint.path().trim_end_matches('/').to_string();
            endpoint.set_path(&trimmed);
        }
        Ok(Self {
            endpoint,
            http,
            version: OnceCell::new(),
        })
    }

    /// The negotiated API version (negotiating on first use).
    pub async fn api_version(&self) -> Result<u32, TargetError> {
        self.version
            .get_or_try_init(|| self.negotiate())
            .await
            .copied()
    }

    async fn negotiate(&self) -> Result<u32, TargetError> {
        let mut last = None;
        for url in [self.endpoint.clone(), self.with_trailing_slash()] {
            let resp = self.send(Method::GET, url.clone(), None::<&()>).await?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status == StatusCode::NOT_FOUND {
                last = Some(error_from(&Method::GET, &url, status, &body));
                continue;
            }
            if !status.is_success() {
                return Err(error_from(&Method::GET, &url, status, &body));
            }
            let versions: Vec<u32> = serde_json::from_str(&body).map_err(|e| TargetError {
                message: format!(
                    "NGINX Plus API at {}: the version list is not a JSON array of numbers ({e})",
                    self.endpoint
                ),
                permanence: Permanence::Permanent,
            })?;
            return versions
                .iter()
                .copied()
                .filter(|v| *v <= MAX_API_VERSION)
                .max()
                .ok_or_else(|| TargetError {
                    message: format!(
                        "NGINX Plus API at {} offers versions {versions:?}; this build speaks 1 to {MAX_API_VERSION}",
                        self.endpoint
                    ),
                    permanence: Permanence::Permanent,
                });
        }
        // Neither form of the location answers with a version list: an API that does not
        // list versions (some proxies and fakes). Use the version nginx-asg-sync uses.
        tracing::warn!(
            endpoint = %self.endpoint,
            error = %last.map(|e| e.message).unwrap_or_default(),
            "NGINX Plus API did not list its versions; using version {MAX_API_VERSION}."
        );
        Ok(MAX_API_VERSION)
    }

    fn with_trailing_slash(&self) -> Url {
        let mut u = self.endpoint.clone();
        let p = format!("{}/", u.path().trim_end_matches('/'));
        u.set_path(&p);
        u
    }

    async fn servers_url(&self, up: &UpstreamRef, id: Option<u64>) -> Result<Url, TargetError> {
        let version = self.api_version().await?;
        let mut url = self.endpoint.clone();
        {
            let mut seg = url.path_segments_mut().map_err(|_| TargetError {
                message: format!("api_endpoint {} cannot carry a path", self.endpoint),
                permanence: Permanence::Permanent,
            })?;
            seg.pop_if_empty();
            seg.push(&version.to_string());
            seg.push(kind_path(up.kind));
            seg.push("upstreams");
            seg.push(&up.name);
            seg.push("servers");
            if let Some(id) = id {
                seg.push(&id.to_string());
            }
        }
        Ok(url)
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<reqwest::Response, TargetError> {
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").json(b);
        }
        req.send().await.map_err(|e| TargetError {
            message: format!(
                "NGINX Plus API at {}: {method} {}: {}",
                origin(&url),
                url.path(),
                transport_detail(&e)
            ),
            permanence: Permanence::Transient,
        })
    }

    async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
        expect: StatusCode,
    ) -> Result<String, TargetError> {
        let resp = self.send(method.clone(), url.clone(), body).await?;
        let status = resp.status();
        let text = crate::net::body_text(resp).await.map_err(|e| TargetError {
            message: format!(
                "NGINX Plus API {method} {}: reading the answer failed: {e}",
                url.path()
            ),
            permanence: Permanence::Transient,
        })?;
        // The API answers `expect`; any other success is accepted too, so that a
        // proxy in front of NGINX (NGINXaaS) answering 200 or 204 is not an error.
        if status != expect && !status.is_success() {
            return Err(error_from(&method, &url, status, &text));
        }
        Ok(text)
    }
}

use crate::net::{origin, transport_detail};

fn kind_path(kind: UpstreamKind) -> &'static str {
    match kind {
        UpstreamKind::Http => "http",
        UpstreamKind::Stream => "stream",
    }
}

fn error_from(method: &Method, url: &Url, status: StatusCode, body: &str) -> TargetError {
    let parsed: NginxErrorBody = serde_json::from_str(body).unwrap_or_default();
    let code = parsed.error.code.unwrap_or_default();
    let text = parsed.error.text.unwrap_or_else(|| {
        let snippet: String = body.chars().take(200).collect();
        if snippet.is_empty() {
            status.canonical_reason().unwrap_or("").to_string()
        } else {
            snippet
        }
    });
    let permanent = matches!(
        code.as_str(),
        "UpstreamNotFound" | "UpstreamStatic" | "UnknownVersion" | "MethodDisabled"
    ) || matches!(status.as_u16(), 401 | 403);
    let mut message = format!(
        "NGINX Plus API at {}: {method} {} answered HTTP {}: {text}",
        origin(url),
        url.path(),
        status.as_u16()
    );
    if !code.is_empty() {
        message.push_str(&format!(" ({code})"));
    }
    if let Some(id) = parsed.request_id.filter(|s| !s.is_empty()) {
        message.push_str(&format!(" [request_id {id}]"));
    }
    TargetError {
        message,
        permanence: if permanent {
            Permanence::Permanent
        } else {
            Permanence::Transient
        },
    }
}

fn params_of(s: &ApiServer<'_>) -> Option<ServerParams> {
    Some(ServerParams {
        max_conns: s.max_conns.unwrap_or(0),
        max_fails: s.max_fails.unwrap_or(1),
        fail_timeout: match &s.fail_timeout {
            Some(t) => parse_nginx_time(t)?,
            None => Duration::from_secs(10),
        },
        slow_start: match &s.slow_start {
            Some(t) => parse_nginx_time(t)?,
            None => Duration::ZERO,
        },
    })
}

fn body<'a>(server: Option<&'a str>, p: &ServerParams) -> ServerBody<'a> {
    ServerBody {
        server,
        max_conns: Some(p.max_conns),
        max_fails: Some(p.max_fails),
        fail_timeout: Some(format_nginx_time(p.fail_timeout)),
        slow_start: Some(format_nginx_time(p.slow_start)),
        ..ServerBody::default()
    }
}

/// Body of a PATCH: new parameters when they change, and the drain flag when the state
/// changes (http: `drain`; stream upstreams have no drain, so `down`).
fn update_body<'a>(kind: UpstreamKind, u: &crate::plan::Update) -> ServerBody<'a> {
    let mut b = match &u.params {
        Some(p) => body(None, p),
        None => ServerBody::default(),
    };
    if u.state != u.was {
        let flag = Some(u.state == ServerState::Draining);
        match kind {
            UpstreamKind::Http => b.drain = flag,
            UpstreamKind::Stream => b.down = flag,
        }
    }
    b
}

fn state_of(kind: UpstreamKind, s: &ApiServer<'_>) -> ServerState {
    let flag = match kind {
        UpstreamKind::Http => s.drain,
        UpstreamKind::Stream => s.down,
    };
    if flag == Some(true) {
        ServerState::Draining
    } else {
        ServerState::Active
    }
}

#[async_trait]
impl Target for NginxPlus {
    fn kind(&self) -> &'static str {
        "nginx-plus"
    }

    async fn check(&self, upstream: &UpstreamRef) -> Result<(), TargetError> {
        self.observe(upstream)
            .await
            .map(|_| ())
            .map_err(|e| TargetError {
                // Only an answer of the API says something about the upstream; a failed
                // exchange (refused, DNS, TLS, timeout) or a server error says nothing.
                message: if e.permanence == Permanence::Permanent {
                    format!(
                        "upstream {} ({}) cannot take dynamic servers: {}",
                        upstream.name,
                        kind_path(upstream.kind),
                        e.message
                    )
                } else {
                    format!(
                        "upstream {} ({}) could not be checked: {}",
                        upstream.name,
                        kind_path(upstream.kind),
                        e.message
                    )
                },
                permanence: e.permanence,
            })
    }

    async fn observe(&self, upstream: &UpstreamRef) -> Result<Vec<ObservedServer>, TargetError> {
        let url = self.servers_url(upstream, None).await?;
        let text = self
            .call(Method::GET, url.clone(), None::<&()>, StatusCode::OK)
            .await?;
        let servers: Vec<ApiServer> = serde_json::from_str(&text).map_err(|e| TargetError {
            message: format!("NGINX Plus API GET {}: unexpected answer: {e}", url.path()),
            permanence: Permanence::Transient,
        })?;
        Ok(servers
            .into_iter()
            .map(|s| {
                let (params, state) = (params_of(&s), state_of(upstream.kind, &s));
                ObservedServer {
                    id: s.id,
                    server: s.server,
                    params,
                    state,
                }
            })
            .collect())
    }

    async fn apply(&self, upstream: &UpstreamRef, plan: &Plan) -> ApplyReport {
        let mut report = ApplyReport::default();
        for (server, params) in &plan.add {
            let res = match self.servers_url(upstream, None).await {
                Ok(url) => {
                    self.call(
                        Method::POST,
                        url,
                        Some(&body(Some(server), params)),
                        StatusCode::CREATED,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(_) => report.added.push(server.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        for u in &plan.update {
            let res = match self.servers_url(upstream, Some(u.id)).await {
                Ok(url) => {
                    self.call(
                        Method::PATCH,
                        url,
                        Some(&update_body(upstream.kind, u)),
                        StatusCode::OK,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(_) if u.state == ServerState::Draining => report.drained.push(u.server.clone()),
                Ok(_) => report.updated.push(u.server.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        for r in &plan.remove {
            let res = match self.servers_url(upstream, Some(r.id)).await {
                Ok(url) => {
                    self.call(Method::DELETE, url, None::<&()>, StatusCode::OK)
                        .await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(_) => report.removed.push(r.server.clone()),
                Err(e) => report.errors.push(e),
            }
        }
        report
    }
}
