//! Token issuing: fake Entra ID (client secret and workload identity), fake IMDS, fake
//! App Service / Container Apps managed identity endpoint. Tokens are JWT-shaped, with the
//! claims Entra ID gives (audience, the v1 issuer `https://sts.windows.net/TENANT/`,
//! `iat`/`nbf`/`exp`; Azurite's `--oauth basic` checks them, not the signature); the fake
//! ARM accepts exactly the tokens issued here.

use std::collections::HashMap;
use std::time::Instant;

use serde_json::json;

use crate::util::{aad_time, base64url, guid, now_epoch, Reply, Req};
use crate::TestbedOptions;

/// The way a token was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenFlow {
    /// Entra ID client credentials with `client_secret`.
    ClientSecret,
    /// Entra ID client credentials with a federated `client_assertion` (workload identity).
    WorkloadIdentity,
    /// Azure Instance Metadata Service managed identity.
    Imds,
    /// App Service / Container Apps managed identity (`IDENTITY_ENDPOINT`).
    AppServiceMsi,
    /// Minted by `Testbed::issue_token` (not counted by `tokens_issued`).
    Direct,
}

pub(crate) struct TokenInfo {
    pub expires: Instant,
    pub expires_epoch: u64,
    pub audience: String,
    /// The security principal the token stands for (ARM's limits are per principal).
    pub principal: String,
}

#[derive(Default)]
pub(crate) struct TokenStore {
    pub tokens: HashMap<String, TokenInfo>,
    pub counts: HashMap<TokenFlow, usize>,
}

pub(crate) const ARM_AUDIENCE: &str = "https://management.azure.com/";

pub(crate) struct Issued {
    pub token: String,
    pub lifetime_secs: u64,
    pub expires_on: u64,
    pub not_before: u64,
}

impl TokenStore {
    pub fn issue(&mut self, opts: &TestbedOptions, flow: TokenFlow, audience: &str) -> Issued {
        let lifetime = opts.token_lifetime;
        let now = now_epoch();
        let exp = now + lifetime.as_secs();
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": "vmss-testbed"});
        let claims = json!({
            "aud": audience,
            // Entra ID's v1 issuer, whatever authority host minted it (as real tokens for
            // ARM and Storage carry it; Azurite's `--oauth basic` checks this prefix).
            "iss": format!("https://sts.windows.net/{}/", opts.tenant_id),
            "iat": now, "nbf": now, "exp": exp,
            "appid": opts.client_id, "tid": opts.tenant_id, "oid": guid(), "sub": guid(),
            "idtyp": "app", "jti": guid(),
        });
        let token = format!(
            "{}.{}.{}",
            base64url(header.to_string().as_bytes()),
            base64url(claims.to_string().as_bytes()),
            base64url(&fastrand::u128(..).to_be_bytes())
        );
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                expires: Instant::now() + lifetime,
                expires_epoch: exp,
                audience: audience.to_string(),
                principal: match flow {
                    TokenFlow::Imds | TokenFlow::AppServiceMsi => "managed-identity".to_string(),
                    _ => opts.client_id.clone(),
                },
            },
        );
        *self.counts.entry(flow).or_insert(0) += 1;
        Issued {
            token,
            lifetime_secs: lifetime.as_secs(),
            expires_on: exp,
            not_before: now,
        }
    }

    pub fn total_http_issued(&self) -> usize {
        self.counts
            .iter()
            .filter(|(f, _)| **f != TokenFlow::Direct)
            .map(|(_, n)| *n)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------
// Entra ID (login.microsoftonline.com)
// ---------------------------------------------------------------------------------------

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn aad_error(authority: &str, status: u16, error: &str, code: u32, description: &str) -> Reply {
    let trace = guid();
    let corr = guid();
    let ts = aad_time(now_epoch());
    Reply::json(
        status,
        &json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}"
            ),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
            "error_uri": format!("{}/error?code={code}", authority.trim_end_matches('/')),
        }),
    )
    .header("cache-control", "no-store, no-cache")
    .header("pragma", "no-cache")
}

fn missing_param(authority: &str, name: &str) -> Reply {
    aad_error(
        authority,
        400,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
    )
}

/// POST /{tenant}/oauth2/v2.0/token (and GET /{tenant}/v2.0/.well-known/openid-configuration).
pub(crate) fn authority(
    opts: &TestbedOptions,
    store: &mut TokenStore,
    authority_url: &str,
    req: &Req,
) -> Reply {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [tenant, "v2.0", ".well-known", "openid-configuration"] => {
            if !tenant.eq_ignore_ascii_case(&opts.tenant_id) {
                return aad_error(
                    authority_url,
                    400,
                    "invalid_tenant",
                    90002,
                    &tenant_msg(tenant),
                );
            }
            let base = format!("{}/{}", authority_url.trim_end_matches('/'), opts.tenant_id);
            Reply::json(
                200,
                &json!({
                    "token_endpoint": format!("{base}/oauth2/v2.0/token"),
                    "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                    "jwks_uri": format!("{base}/discovery/v2.0/keys"),
                    "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                    "subject_types_supported": ["pairwise"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "issuer": format!("{base}/v2.0"),
                    "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
                    "tenant_region_scope": "NA",
                }),
            )
        }
        [tenant, "oauth2", "v2.0", "token"] => token(opts, store, authority_url, tenant, req),
        _ => Reply::json(
            404,
            &json!({"error": "not_found", "error_description": "The requested resource was not found."}),
        ),
    }
}

fn tenant_msg(tenant: &str) -> String {
    format!(
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
    )
}

fn token(
    opts: &TestbedOptions,
    store: &mut TokenStore,
    authority_url: &str,
    tenant: &str,
    req: &Req,
) -> Reply {
    let a = authority_url;
    if req.method != "POST" {
        return aad_error(
            a,
            400,
            "invalid_request",
            900561,
            &format!(
                "The endpoint only accepts POST requests. Received a {} request.",
                req.method
            ),
        );
    }
    if !tenant.eq_ignore_ascii_case(&opts.tenant_id) {
        return aad_error(a, 400, "invalid_request", 90002, &tenant_msg(tenant));
    }
    // Entra only reads form bodies; anything else looks like an empty form.
    let is_form = req.header("content-type").is_some_and(|ct| {
        ct.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    let form: HashMap<String, String> = if is_form {
        url::form_urlencoded::parse(&req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    } else {
        HashMap::new()
    };
    let get = |k: &str| form.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let Some(grant) = get("grant_type") else {
        return missing_param(a, "grant_type");
    };
    if grant != "client_credentials" {
        return aad_error(
            a,
            400,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant}'."),
        );
    }
    let Some(client_id) = get("client_id") else {
        return missing_param(a, "client_id");
    };
    let Some(scope) = get("scope") else {
        return missing_param(a, "scope");
    };
    let first_scope = scope.split_whitespace().next().unwrap_or_default();
    let Some(resource) = first_scope.strip_suffix("/.default") else {
        return aad_error(
            a,
            400,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        );
    };
    if !client_id.eq_ignore_ascii_case(&opts.client_id) {
        return aad_error(
            a,
            400,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                opts.tenant_id
            ),
        );
    }
    let flow = if let Some(assertion) = get("client_assertion") {
        if get("client_assertion_type") != Some(JWT_BEARER) {
            return aad_error(
                a,
                400,
                "invalid_request",
                700024,
                "Client assertion type is invalid. The value of 'client_assertion_type' must be 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
            );
        }
        if assertion != opts.federated_token {
            return aad_error(
                a,
                400,
                "invalid_client",
                700211,
                "No matching federated identity record found for presented assertion issuer 'https://oidc.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
            );
        }
        TokenFlow::WorkloadIdentity
    } else if let Some(secret) = get("client_secret") {
        if secret != opts.client_secret {
            return aad_error(
                a,
                401,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    opts.client_id
                ),
            );
        }
        TokenFlow::ClientSecret
    } else {
        return aad_error(
            a,
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    };
    let audience = normalize_resource(resource);
    let t = store.issue(opts, flow, &audience);
    Reply::json(
        200,
        &json!({
            "token_type": "Bearer",
            "expires_in": t.lifetime_secs,
            "ext_expires_in": t.lifetime_secs,
            "access_token": t.token,
        }),
    )
    .header("cache-control", "no-store, no-cache")
    .header("pragma", "no-cache")
}

/// The audience a token for `resource` carries: the resource with exactly one trailing
/// slash trimmed to the ARM form (`https://management.azure.com/`).
fn normalize_resource(resource: &str) -> String {
    format!("{}/", resource.trim_end_matches('/'))
}

// ---------------------------------------------------------------------------------------
// IMDS (169.254.169.254)
// ---------------------------------------------------------------------------------------

const IMDS_VERSIONS: &[&str] = &["2018-02-01", "2019-08-01"];

fn imds_error(status: u16, error: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// GET /metadata/identity/oauth2/token
pub(crate) fn imds(opts: &TestbedOptions, store: &mut TokenStore, req: &Req) -> Reply {
    if req.path.trim_end_matches('/') != "/metadata/identity/oauth2/token" {
        return Reply::json(
            404,
            &json!({"error": "Not found", "error_description": "The requested path is not found."}),
        );
    }
    if req.method != "GET" {
        return Reply::json(
            405,
            &json!({"error": "Method not allowed", "error_description": "The requested method is not allowed."}),
        );
    }
    if !req
        .header("metadata")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return imds_error(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if req.header("x-forwarded-for").is_some() {
        return imds_error(
            400,
            "invalid_request",
            "Request with X-Forwarded-For header is not allowed",
        );
    }
    let Some(version) = req.query_get("api-version") else {
        return imds_error(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    };
    if !IMDS_VERSIONS.contains(&version.as_str()) {
        return imds_error(
            400,
            "invalid_request",
            &format!("Invalid api-version '{version}'"),
        );
    }
    let resource = match req.query_get("resource") {
        Some(r) if !r.is_empty() => r,
        _ => {
            return imds_error(
                400,
                "invalid_request",
                "Required audience parameter not specified",
            )
        }
    };
    if let Some(cid) = req.query_get("client_id") {
        if !cid.eq_ignore_ascii_case(&opts.client_id) {
            return imds_error(400, "invalid_request", "Identity not found");
        }
    }
    if req.query_get("object_id").is_some() || req.query_get("msi_res_id").is_some() {
        // Only client_id selection is modelled.
        return imds_error(400, "invalid_request", "Identity not found");
    }
    let audience = normalize_resource(&resource);
    let t = store.issue(opts, TokenFlow::Imds, &audience);
    Reply::json(
        200,
        &json!({
            "access_token": t.token,
            "refresh_token": "",
            "expires_in": t.lifetime_secs.to_string(),
            "expires_on": t.expires_on.to_string(),
            "ext_expires_in": t.lifetime_secs.to_string(),
            "not_before": t.not_before.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": opts.client_id,
        }),
    )
}

// ---------------------------------------------------------------------------------------
// App Service / Container Apps managed identity (IDENTITY_ENDPOINT + IDENTITY_HEADER)
// ---------------------------------------------------------------------------------------

fn msi_error(status: u16, message: &str) -> Reply {
    Reply::json(
        status,
        &json!({"statusCode": status, "message": message, "correlationId": guid()}),
    )
}

/// GET {identity_endpoint}?api-version=2019-08-01&resource=...
pub(crate) fn app_service(opts: &TestbedOptions, store: &mut TokenStore, req: &Req) -> Reply {
    if req.path.trim_end_matches('/') != "/msi/token" {
        return msi_error(404, "Not Found");
    }
    if req.method != "GET" {
        return msi_error(405, "The requested method is not allowed.");
    }
    let Some(header) = req.header("x-identity-header") else {
        return msi_error(400, "The request is missing the X-IDENTITY-HEADER header.");
    };
    if header != opts.identity_header {
        return msi_error(401, "Unauthorized: the X-IDENTITY-HEADER value is invalid.");
    }
    match req.query_get("api-version").as_deref() {
        Some("2019-08-01") => {}
        Some(v) => return msi_error(400, &format!("The api-version '{v}' is not supported.")),
        None => return msi_error(400, "The api-version parameter is required."),
    }
    let resource = match req.query_get("resource") {
        Some(r) if !r.is_empty() => r,
        _ => return msi_error(400, "The resource parameter is required."),
    };
    if let Some(cid) = req.query_get("client_id") {
        if !cid.eq_ignore_ascii_case(&opts.client_id) {
            return msi_error(400, "Unable to load the proper Managed Identity.");
        }
    }
    if req.query_get("principal_id").is_some() || req.query_get("mi_res_id").is_some() {
        return msi_error(400, "Unable to load the proper Managed Identity.");
    }
    let audience = normalize_resource(&resource);
    let t = store.issue(opts, TokenFlow::AppServiceMsi, &audience);
    Reply::json(
        200,
        &json!({
            "access_token": t.token,
            "expires_on": t.expires_on.to_string(),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": opts.client_id,
        }),
    )
}

/// What the fake ARM thinks of a bearer token.
pub(crate) enum TokenCheck {
    Valid(String),
    Unknown,
    Expired { expired_epoch: u64 },
    WrongAudience(String),
}

pub(crate) fn check(store: &TokenStore, token: &str, arm_url: &str) -> TokenCheck {
    let Some(info) = store.tokens.get(token) else {
        return TokenCheck::Unknown;
    };
    if Instant::now() >= info.expires {
        return TokenCheck::Expired {
            expired_epoch: info.expires_epoch,
        };
    }
    let aud = info.audience.trim_end_matches('/').to_ascii_lowercase();
    let ok = aud == "https://management.azure.com"
        || aud == "https://management.core.windows.net"
        || aud == arm_url.trim_end_matches('/').to_ascii_lowercase();
    if ok {
        TokenCheck::Valid(info.principal.clone())
    } else {
        TokenCheck::WrongAudience(info.audience.clone())
    }
}
