//! vmss-testbed: strict local fakes of the services vmss-sync talks to.
//!
//! * a fake **Azure Resource Manager** (Compute + Network reads for VM Scale Sets, and
//!   the Network writes of Route Server `bgpConnections` and IP-based Load Balancer
//!   backend pools, with long-running operations),
//! * a fake **Entra ID** token endpoint (client secret and workload identity),
//! * a fake **IMDS** managed-identity endpoint,
//! * a fake **App Service / Container Apps** managed-identity endpoint,
//! * a fake **NGINX Plus REST API** (upstream servers, also under `/nplus` like NGINXaaS),
//! * a fake **HAProxy Data Plane API** (v3 and v2: backends, servers, transactions).
//!
//! Each fake listens on its own `127.0.0.1:0` port, is as strict as the real service
//! (authentication, api-versions, error bodies, paging) and records every request.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use vmss_testbed::{Orchestration, Testbed, TestbedOptions, UpstreamKind};
//! let tb = Testbed::start(TestbedOptions::default()).await?;
//! tb.fleet().add_scale_set("sub-1", "rg-1", "web", Orchestration::Uniform, "eastus");
//! tb.fleet().scale_to("sub-1", "rg-1", "web", 3);
//! tb.nginx().add_upstream(UpstreamKind::Http, "backend");
//! // point the daemon at tb.arm_url(), tb.authority_url(), tb.nginx_url() ...
//! # Ok(()) }
//! ```

mod arm;
mod chaos;
mod dataplane;
mod faults;
mod fleet;
mod network;
mod nginx;
mod tokens;
mod util;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use arm::ComputeLimits;
pub use chaos::{MemberState, ScaleSetState};
pub use dataplane::{server as dataplane_server, DataPlane, DATAPLANE_PASSWORD, DATAPLANE_USER};
pub use faults::{Fault, Faults};
pub use fleet::{
    Change, EventSink, Fleet, FleetEvent, Orchestration, AVAILABILITY_CHANGED, RESOURCE_ACTION,
    RESOURCE_DELETE, RESOURCE_WRITE, STANDALONE_VMS,
};
pub use network::{LroHeaders, Network, NetworkOperation};
pub use nginx::{NginxPlus, UpstreamKind};
pub use tokens::TokenFlow;
pub use wire::{COMPUTE_API_VERSIONS, NETWORK_API_VERSIONS, VMSS_NETWORK_API_VERSIONS};

use dataplane::DataplaneState;
use fleet::FleetState;
use network::NetworkState;
use nginx::NginxState;
use tokens::{TokenStore, ARM_AUDIENCE};
use util::{lock, Reply, Req};

/// Which fake a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Arm,
    Authority,
    Imds,
    AppServiceMsi,
    Nginx,
    /// The fake HAProxy Data Plane API.
    Dataplane,
}

/// Configuration of a testbed.
#[derive(Debug, Clone)]
pub struct TestbedOptions {
    /// ARM list page size (default 2, so paging is always exercised).
    pub page_size: usize,
    /// Lifetime of issued access tokens (default 3600 s).
    pub token_lifetime: Duration,
    /// The accepted service principal.
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// The accepted `client_assertion` for workload identity.
    pub federated_token: String,
    /// The accepted `X-IDENTITY-HEADER` of the App Service managed identity endpoint.
    pub identity_header: String,
    /// If set, the NGINX API requires `Authorization: ApiKey <key>` (NGINXaaS), else 401.
    pub nginx_api_key: Option<String>,
    /// NGINX Plus API versions offered (default 1..=9).
    pub nginx_versions: Vec<u32>,
    /// When true, ARM answers 429 once the subscription's read bucket (250, +25/s) or a
    /// Compute policy ([`ComputeLimits`]) is empty, as Azure does. Default false: the
    /// remaining-count headers are always sent, but nothing is refused.
    pub enforce_limits: bool,
    /// Compute's throttling policies as the fake applies them.
    pub compute_limits: ComputeLimits,
    /// ARM's own buckets per subscription and principal (reads, writes, deletes).
    pub arm_limits: ArmLimits,
}

/// ARM's request buckets, kept per subscription and security principal: each a token
/// bucket of `*_bucket` requests refilled at `*_per_second` (ARM's published model:
/// 250 reads +25/s, 200 writes +10/s, 200 deletes +10/s). Reads answer
/// `x-ms-ratelimit-remaining-subscription-reads`, writes (PUT, PATCH, POST)
/// `…-subscription-writes`, deletes `…-subscription-deletes`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmLimits {
    pub read_bucket: u32,
    pub reads_per_second: f64,
    pub write_bucket: u32,
    pub writes_per_second: f64,
    pub delete_bucket: u32,
    pub deletes_per_second: f64,
}

impl Default for ArmLimits {
    fn default() -> Self {
        ArmLimits {
            read_bucket: 250,
            reads_per_second: 25.0,
            write_bucket: 200,
            writes_per_second: 10.0,
            delete_bucket: 200,
            deletes_per_second: 10.0,
        }
    }
}

/// Which of ARM's buckets a request draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ArmAction {
    Read,
    Write,
    Delete,
}

impl ArmAction {
    pub(crate) fn of(method: &str) -> Self {
        match method {
            "GET" | "HEAD" => ArmAction::Read,
            "DELETE" => ArmAction::Delete,
            _ => ArmAction::Write,
        }
    }

    /// The word of ARM's header and 429 message.
    pub(crate) fn word(self) -> &'static str {
        match self {
            ArmAction::Read => "reads",
            ArmAction::Write => "writes",
            ArmAction::Delete => "deletes",
        }
    }
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            page_size: 2,
            token_lifetime: Duration::from_secs(3600),
            tenant_id: "tenant-1".into(),
            client_id: "client-1".into(),
            client_secret: "secret-1".into(),
            federated_token: "federated-jwt-1".into(),
            identity_header: "identity-header-1".into(),
            nginx_api_key: None,
            nginx_versions: (1..=9).collect(),
            enforce_limits: false,
            compute_limits: ComputeLimits::default(),
            arm_limits: ArmLimits::default(),
        }
    }
}

/// One request as seen by a fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub service: Service,
    pub method: String,
    pub path: String,
    /// Raw query string without '?', as received.
    pub query: String,
    /// Response status (0 while the request is still being served).
    pub status: u16,
    /// Request body (lossy UTF-8).
    pub body: String,
}

pub(crate) struct Urls {
    pub arm: String,
    pub authority: String,
    pub imds: String,
    pub msi: String,
    pub nginx: String,
    pub dataplane: String,
}

#[derive(Default)]
struct Log {
    next_seq: u64,
    entries: Vec<(u64, RecordedRequest)>,
}

/// One of ARM's buckets (the 2024 token-bucket model).
struct ArmBucket {
    tokens: f64,
    at: Instant,
}

pub(crate) struct Shared {
    pub opts: TestbedOptions,
    pub urls: Urls,
    pub fleet: Arc<Mutex<FleetState>>,
    pub nginx: Arc<Mutex<NginxState>>,
    pub dataplane: Arc<Mutex<DataplaneState>>,
    pub network: Arc<Mutex<NetworkState>>,
    pub faults: Faults,
    pub tokens: Mutex<TokenStore>,
    log: Mutex<Log>,
    /// ARM's buckets by (subscription, principal, action).
    arm_buckets: Mutex<HashMap<(String, String, ArmAction), ArmBucket>>,
    pub compute: Mutex<arm::ComputeBuckets>,
}

impl Shared {
    /// Takes one request of `action` from the bucket of `subscription` and `principal`
    /// and returns what is left. With `enforce`, an empty bucket takes nothing and says
    /// how long until a request is available.
    pub(crate) fn consume(
        &self,
        action: ArmAction,
        subscription: &str,
        principal: &str,
        enforce: bool,
    ) -> Result<u64, Duration> {
        let l = &self.opts.arm_limits;
        let (cap, rate) = match action {
            ArmAction::Read => (l.read_bucket, l.reads_per_second),
            ArmAction::Write => (l.write_bucket, l.writes_per_second),
            ArmAction::Delete => (l.delete_bucket, l.deletes_per_second),
        };
        let (cap, rate) = (f64::from(cap.max(1)), rate.max(0.001));
        let now = Instant::now();
        let mut buckets = lock(&self.arm_buckets);
        let b = buckets
            .entry((
                subscription.to_ascii_lowercase(),
                principal.to_string(),
                action,
            ))
            .or_insert(ArmBucket {
                tokens: cap,
                at: now,
            });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        if enforce && b.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - b.tokens) / rate));
        }
        b.tokens = (b.tokens - 1.0).max(0.0);
        Ok(b.tokens as u64)
    }

    fn record_start(&self, service: Service, req: &Req) -> u64 {
        let mut log = lock(&self.log);
        let seq = log.next_seq;
        log.next_seq += 1;
        log.entries.push((
            seq,
            RecordedRequest {
                service,
                method: req.method.clone(),
                path: req.path.clone(),
                query: req.query.clone(),
                status: 0,
                body: String::from_utf8_lossy(&req.body).into_owned(),
            },
        ));
        seq
    }

    fn record_finish(&self, seq: u64, status: u16) {
        let mut log = lock(&self.log);
        if let Some((_, r)) = log.entries.iter_mut().rev().find(|(s, _)| *s == seq) {
            r.status = status;
        }
    }
}

/// A running set of fakes. Dropping it (or `shutdown().await`) stops the servers.
pub struct Testbed {
    shared: Arc<Shared>,
    stop: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Testbed {
    /// Binds every fake to `127.0.0.1:0` and starts serving on the current tokio runtime.
    pub async fn start(opts: TestbedOptions) -> std::io::Result<Testbed> {
        let mut listeners = Vec::new();
        for _ in 0..6 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await?);
        }
        let mut base = Vec::new();
        for l in &listeners {
            base.push(format!("http://{}", l.local_addr()?));
        }
        let urls = Urls {
            arm: base[0].clone(),
            authority: base[1].clone(),
            imds: base[2].clone(),
            msi: format!("{}/msi/token", base[3]),
            nginx: format!("{}/api", base[4]),
            dataplane: base[5].clone(),
        };
        let shared = Arc::new(Shared {
            opts,
            urls,
            fleet: Arc::new(Mutex::new(FleetState::default())),
            nginx: Arc::new(Mutex::new(NginxState::default())),
            dataplane: Arc::new(Mutex::new(DataplaneState::default())),
            network: Arc::new(Mutex::new(NetworkState::default())),
            faults: Faults::default(),
            tokens: Mutex::new(TokenStore::default()),
            log: Mutex::new(Log::default()),
            arm_buckets: Mutex::new(HashMap::new()),
            compute: Mutex::new(arm::ComputeBuckets::default()),
        });
        let (tx, rx) = watch::channel(false);
        let services = [
            Service::Arm,
            Service::Authority,
            Service::Imds,
            Service::AppServiceMsi,
            Service::Nginx,
            Service::Dataplane,
        ];
        let mut tasks = Vec::new();
        for (service, listener) in services.into_iter().zip(listeners) {
            let sh = shared.clone();
            let router = axum::Router::new().fallback(move |req: Request| {
                let sh = sh.clone();
                async move { dispatch(sh, service, req).await }
            });
            let mut rx = rx.clone();
            tasks.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|v| *v).await;
                };
                let _ = axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await;
            }));
        }
        Ok(Testbed {
            shared,
            stop: Some(tx),
            tasks,
        })
    }

    /// Base URL of the fake Azure Resource Manager, e.g. `http://127.0.0.1:41234`.
    pub fn arm_url(&self) -> String {
        self.shared.urls.arm.clone()
    }

    /// Base URL of the fake Entra ID; the token endpoint is `POST /{tenant}/oauth2/v2.0/token`.
    pub fn authority_url(&self) -> String {
        self.shared.urls.authority.clone()
    }

    /// Base URL of the fake IMDS; the token endpoint is `GET /metadata/identity/oauth2/token`.
    pub fn imds_url(&self) -> String {
        self.shared.urls.imds.clone()
    }

    /// Full URL for `IDENTITY_ENDPOINT` (App Service / Container Apps managed identity).
    pub fn identity_endpoint(&self) -> String {
        self.shared.urls.msi.clone()
    }

    /// `http://127.0.0.1:PORT/api` (the same API is also served under `/nplus`).
    pub fn nginx_url(&self) -> String {
        self.shared.urls.nginx.clone()
    }

    /// The NGINXaaS-style URL `http://127.0.0.1:PORT/nplus`.
    pub fn nginx_nplus_url(&self) -> String {
        format!("{}/nplus", self.shared.urls.nginx.trim_end_matches("/api"))
    }

    pub fn options(&self) -> &TestbedOptions {
        &self.shared.opts
    }

    pub fn fleet(&self) -> Fleet {
        Fleet {
            state: self.shared.fleet.clone(),
        }
    }

    /// Base URL of the fake HAProxy Data Plane API, e.g. `http://127.0.0.1:41239` (paths
    /// `/v3/services/haproxy/…` and `/v2/…`; basic auth [`DATAPLANE_USER`] /
    /// [`DATAPLANE_PASSWORD`]).
    pub fn dataplane_url(&self) -> String {
        self.shared.urls.dataplane.clone()
    }

    /// Handle to inspect and script the fake Data Plane API.
    pub fn dataplane(&self) -> DataPlane {
        DataPlane {
            state: self.shared.dataplane.clone(),
        }
    }

    /// Handle to script and inspect the fake Route Server peerings and Load Balancer
    /// backend pools (served by the fake ARM).
    pub fn network(&self) -> Network {
        Network {
            state: self.shared.network.clone(),
        }
    }

    pub fn nginx(&self) -> NginxPlus {
        NginxPlus {
            state: self.shared.nginx.clone(),
        }
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// Every request to every fake, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log)
            .entries
            .iter()
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// Requests to one fake, in arrival order.
    pub fn requests_to(&self, service: Service) -> Vec<RecordedRequest> {
        lock(&self.shared.log)
            .entries
            .iter()
            .filter(|(_, r)| r.service == service)
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).entries.clear();
    }

    /// Mints a valid ARM bearer token directly (for tests that skip authentication).
    pub fn issue_token(&self) -> String {
        lock(&self.shared.tokens)
            .issue(&self.shared.opts, TokenFlow::Direct, ARM_AUDIENCE)
            .token
    }

    /// Mints a valid ARM bearer token for another security principal (ARM's buckets are
    /// per subscription and principal).
    pub fn issue_token_as(&self, principal: &str) -> String {
        let mut store = lock(&self.shared.tokens);
        let token = store
            .issue(&self.shared.opts, TokenFlow::Direct, ARM_AUDIENCE)
            .token;
        if let Some(info) = store.tokens.get_mut(&token) {
            info.principal = principal.to_string();
        }
        token
    }

    /// Tokens issued over HTTP by all flows (Entra ID, IMDS, App Service); excludes
    /// `issue_token`.
    pub fn tokens_issued(&self) -> usize {
        lock(&self.shared.tokens).total_http_issued()
    }

    /// The tokens issued for `audience` (compared without a trailing slash), e.g.
    /// `https://storage.azure.com`: what a test looks for in logs that must not show them.
    pub fn tokens_for(&self, audience: &str) -> Vec<String> {
        let want = audience.trim_end_matches('/');
        lock(&self.shared.tokens)
            .tokens
            .iter()
            .filter(|(_, i)| i.audience.trim_end_matches('/') == want)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Tokens issued by one flow.
    pub fn tokens_issued_by(&self, flow: TokenFlow) -> usize {
        lock(&self.shared.tokens)
            .counts
            .get(&flow)
            .copied()
            .unwrap_or(0)
    }

    /// Stops every server: idle connections are closed, in-flight requests get up to 5 s.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
        for t in std::mem::take(&mut self.tasks) {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(true);
        }
    }
}

async fn dispatch(sh: Arc<Shared>, service: Service, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let req = Req {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers,
        body,
    };
    let seq = sh.record_start(service, &req);
    let reply = match sh.faults.take(service, &req.path, &req.query) {
        Some(Fault::Status {
            status,
            code,
            message,
            retry_after,
        }) => {
            let r = fault_reply(service, status, &code, &message);
            match retry_after {
                Some(s) => r.header("retry-after", s.to_string()),
                None => r,
            }
        }
        Some(Fault::MalformedBody) => Reply::raw_json(200, br#"{"value":[{"name":"trunc"#.to_vec()),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            serve(&sh, service, &req)
        }
        Some(Fault::EmptyList) => Reply::json(200, &json!({ "value": [] })),
        Some(f @ (Fault::DropItems { .. } | Fault::DropField { .. })) => {
            let mut r = serve(&sh, service, &req);
            if let Some(body) = f.damage(r.status, &r.body) {
                r.body = body;
            }
            r
        }
        Some(Fault::FailPage { .. }) | None => serve(&sh, service, &req),
    };
    sh.record_finish(seq, reply.status);
    into_response(reply)
}

fn serve(sh: &Shared, service: Service, req: &Req) -> Reply {
    match service {
        Service::Arm => arm::handle(sh, req),
        Service::Authority => {
            tokens::authority(&sh.opts, &mut lock(&sh.tokens), &sh.urls.authority, req)
        }
        Service::Imds => tokens::imds(&sh.opts, &mut lock(&sh.tokens), req),
        Service::AppServiceMsi => tokens::app_service(&sh.opts, &mut lock(&sh.tokens), req),
        Service::Nginx => nginx::handle(
            &sh.nginx,
            &sh.opts.nginx_versions,
            sh.opts.nginx_api_key.as_deref(),
            req,
        ),
        Service::Dataplane => dataplane::handle(&sh.dataplane, req),
    }
}

/// The error body an injected `Fault::Status` gets, in the service's own format.
fn fault_reply(service: Service, status: u16, code: &str, message: &str) -> Reply {
    match service {
        Service::Arm => wire::arm_error(status, code, message)
            .header("x-ms-request-id", util::guid())
            .header("x-ms-correlation-request-id", util::guid()),
        Service::Nginx => nginx::error_reply(status, code, message),
        Service::Dataplane => Reply::json(status, &json!({"code": status, "message": message})),
        Service::Authority => Reply::json(
            status,
            &json!({
                "error": code,
                "error_description": message,
                "error_codes": [],
                "timestamp": util::aad_time(util::now_epoch()),
                "trace_id": util::guid(),
                "correlation_id": util::guid(),
            }),
        ),
        Service::Imds | Service::AppServiceMsi => Reply::json(
            status,
            &json!({"error": code, "error_description": message}),
        ),
    }
}

fn into_response(reply: Reply) -> Response {
    let mut builder = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder.body(Body::from(reply.body)).unwrap_or_else(|_| {
        let mut r = Response::new(Body::from("testbed: bad response"));
        *r.status_mut() = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// `../shared` next to the workspace root, if present (reference material).
pub fn shared_dir() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    p.canonicalize().ok().filter(|p| p.is_dir())
}

/// Every `shared/azure-examples/*.json` that parses, as (file name, JSON), sorted by name.
/// Empty when the shared directory is absent.
pub fn azure_examples() -> Vec<(String, Value)> {
    let Some(dir) = shared_dir().map(|d| d.join("azure-examples")) else {
        return Vec::new();
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Value)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") {
                return None;
            }
            let text = std::fs::read_to_string(e.path()).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            Some((name, v))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
