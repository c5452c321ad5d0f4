//! Credential flows against the testbed's fake Entra ID, IMDS and App Service
//! managed identity endpoint, over real sockets. No test ever talks to
//! 169.254.169.254: every environment overrides AZURE_POD_IDENTITY_AUTHORITY_HOST.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use url::Url;
use vmss_sync::azure::arm::{ArmClient, ArmOptions};
use vmss_sync::azure::auth::{
    default_credential, AuthError, Env, TokenCredential, WorkloadIdentityCredential,
};
use vmss_testbed::{Orchestration, RecordedRequest, Service, Testbed, TestbedOptions};

const SCOPE: &str = "https://management.azure.com/.default";
const SUB: &str = "sub-1";
const RG: &str = "rg-1";

async fn testbed_with(opts: TestbedOptions) -> Testbed {
    let tb = Testbed::start(opts).await.expect("testbed starts");
    tb.fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    tb.fleet().scale_to(SUB, RG, "web", 2);
    tb
}

async fn testbed() -> Testbed {
    testbed_with(TestbedOptions::default()).await
}

/// A loopback URL nobody listens on (connection refused at once): a socket bound for the
/// whole run and never listening, so no other test can start listening there.
fn dead_url() -> String {
    crate::support::ports::refused_url()
}

const NO_PATH: &str = "/nonexistent-vmss-sync-test-path";

/// Builds an Env. IMDS points at a dead port and PATH at nothing unless overridden.
fn env(pairs: &[(&str, &str)]) -> Env {
    let dead = dead_url();
    let mut all: Vec<(&str, &str)> = vec![
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", dead.as_str()),
        ("PATH", NO_PATH),
    ];
    for &(k, v) in pairs {
        all.retain(|(x, _)| *x != k);
        all.push((k, v));
    }
    Env::from_pairs(&all)
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Proves a credential's token is accepted by the fake ARM.
async fn assert_token_works(tb: &Testbed, cred: Arc<dyn TokenCredential>) {
    let arm = ArmClient::new(
        ArmOptions {
            endpoint: Url::parse(&tb.arm_url()).expect("url"),
            request_timeout: Duration::from_secs(5),
            ..ArmOptions::default()
        },
        cred,
        http(),
    );
    let vmss = arm
        .get_scale_set(SUB, RG, "web")
        .await
        .expect("token accepted by ARM");
    assert_eq!(vmss.capacity(), 2);
}

fn query_param(r: &RecordedRequest, key: &str) -> Option<String> {
    url::form_urlencoded::parse(r.query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn form_param(r: &RecordedRequest, key: &str) -> Option<String> {
    url::form_urlencoded::parse(r.body.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn epoch_in(secs: u64) -> u64 {
    (SystemTime::now() + Duration::from_secs(secs))
        .duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .as_secs()
}

/// Writes an executable `az` into `dir` that records its arguments and `TZ`
/// in `dir/az-args.txt` and prints `stdout`.
fn write_fake_az(dir: &Path, stdout: &str) -> PathBuf {
    write_script(dir, stdout, "", 0)
}

/// Single-quotes `s` for /bin/sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script uses shell builtins only: the Env's PATH may hold nothing but `dir`.
fn write_script(dir: &Path, stdout: &str, stderr: &str, exit: i32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let args = sh_quote(&dir.join("az-args.txt").display().to_string());
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" > {args}\nprintf 'TZ=%s\\n' \"$TZ\" >> {args}\nprintf '%s' {out}\nprintf '%s' {err} >&2\nexit {exit}\n",
        out = sh_quote(stdout),
        err = sh_quote(stderr),
    );
    let path = dir.join("az");
    std::fs::write(&path, script).expect("write az");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn az_args(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("az-args.txt")).ok()
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) for an epoch, like the CLI's `expiresOn`.
fn cli_time(epoch: u64) -> String {
    let days = i64::try_from(epoch / 86_400).expect("fits");
    let rem = epoch % 86_400;
    // Howard Hinnant's civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.000000",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// Each flow end to end
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_flow_gets_a_token_that_arm_accepts() {
    let tb = testbed().await;
    let authority = tb.authority_url();
    let cred = default_credential(
        &env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", "secret-1"),
            ("AZURE_AUTHORITY_HOST", &authority),
        ]),
        http(),
    );
    assert_eq!(cred.kind(), "chain");
    let token = cred.get_token(SCOPE).await.expect("token");
    assert!(token.expires_at > SystemTime::now() + Duration::from_secs(3000));
    assert!(
        !format!("{token:?}").contains(&token.token),
        "Debug redacts"
    );
    assert_token_works(&tb, cred).await;

    let reqs = tb.requests_to(Service::Authority);
    assert_eq!(reqs.len(), 1, "cached: one token for the test");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, "/tenant-1/oauth2/v2.0/token");
    assert_eq!(
        form_param(&reqs[0], "grant_type").as_deref(),
        Some("client_credentials")
    );
    assert_eq!(form_param(&reqs[0], "scope").as_deref(), Some(SCOPE));
    assert_eq!(
        form_param(&reqs[0], "client_secret").as_deref(),
        Some("secret-1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_flow_works_and_rereads_the_rotated_token_file() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, "federated-jwt-1\n").expect("write");
    let authority = tb.authority_url();
    let file_s = file.display().to_string();
    let cred = default_credential(
        &env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_FEDERATED_TOKEN_FILE", &file_s),
            ("AZURE_AUTHORITY_HOST", &authority),
        ]),
        http(),
    );
    assert_token_works(&tb, cred).await;
    let reqs = tb.requests_to(Service::Authority);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        form_param(&reqs[0], "client_assertion_type").as_deref(),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(
        form_param(&reqs[0], "client_assertion").as_deref(),
        Some("federated-jwt-1")
    );
    assert_eq!(form_param(&reqs[0], "client_secret"), None);

    // Uncached credential: every get_token reads the file again.
    let wi = WorkloadIdentityCredential::new("tenant-1", "client-1", &file, &authority, http());
    std::fs::write(&file, "rotated-assertion-unknown-to-entra").expect("rotate");
    let err = wi.get_token(SCOPE).await.expect_err("rotated file is used");
    assert_eq!(err.credential(), "workload_identity");
    let msg = err.to_string();
    assert!(msg.contains("invalid_client"), "{msg}");
    assert!(msg.contains("AADSTS700211"), "{msg}");
    assert!(!msg.contains("rotated-assertion-unknown-to-entra"), "{msg}");
    let last = tb.requests_to(Service::Authority).pop().expect("request");
    assert_eq!(
        form_param(&last, "client_assertion").as_deref(),
        Some("rotated-assertion-unknown-to-entra")
    );

    std::fs::write(&file, "federated-jwt-1").expect("rotate back");
    wi.get_token(SCOPE).await.expect("valid again");

    std::fs::remove_file(&file).expect("rm");
    let err = wi.get_token(SCOPE).await.expect_err("file gone");
    assert!(matches!(err, AuthError::Config { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_service_managed_identity_flow_works_with_and_without_client_id() {
    let tb = testbed().await;
    let endpoint = tb.identity_endpoint();
    let imds = tb.imds_url();
    for client_id in [None, Some("client-1")] {
        tb.clear_requests();
        let mut pairs = vec![
            ("IDENTITY_ENDPOINT", endpoint.as_str()),
            ("IDENTITY_HEADER", "identity-header-1"),
            // IMDS works too, but App Service takes precedence.
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
        ];
        if let Some(c) = client_id {
            pairs.push(("AZURE_CLIENT_ID", c));
        }
        let cred = default_credential(&env(&pairs), http());
        assert_token_works(&tb, cred).await;
        let reqs = tb.requests_to(Service::AppServiceMsi);
        assert_eq!(reqs.len(), 1);
        assert_eq!(
            query_param(&reqs[0], "api-version").as_deref(),
            Some("2019-08-01")
        );
        assert_eq!(
            query_param(&reqs[0], "resource").as_deref(),
            Some("https://management.azure.com")
        );
        assert_eq!(query_param(&reqs[0], "client_id").as_deref(), client_id);
        assert!(tb.requests_to(Service::Imds).is_empty());
    }

    // A wrong identity header is an authentication failure, not "unavailable".
    let cred = default_credential(
        &env(&[
            ("IDENTITY_ENDPOINT", endpoint.as_str()),
            ("IDENTITY_HEADER", "wrong-header-value"),
        ]),
        http(),
    );
    let err = cred.get_token(SCOPE).await.expect_err("401");
    assert!(
        matches!(
            err,
            AuthError::Failed {
                credential: "managed_identity_app_service",
                status: Some(401),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("wrong-header-value"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_managed_identity_flow_works_with_and_without_client_id() {
    let tb = testbed().await;
    let imds = tb.imds_url();
    for client_id in [None, Some("client-1")] {
        tb.clear_requests();
        let mut pairs = vec![("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str())];
        if let Some(c) = client_id {
            pairs.push(("AZURE_CLIENT_ID", c));
        }
        let cred = default_credential(&env(&pairs), http());
        let token = cred.get_token(SCOPE).await.expect("token");
        assert!(
            token.expires_at > SystemTime::now() + Duration::from_secs(3000),
            "string expires_in parsed"
        );
        assert_token_works(&tb, cred).await;
        let reqs = tb.requests_to(Service::Imds);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].path, "/metadata/identity/oauth2/token");
        assert_eq!(
            query_param(&reqs[0], "api-version").as_deref(),
            Some("2018-02-01")
        );
        assert_eq!(
            query_param(&reqs[0], "resource").as_deref(),
            Some("https://management.azure.com")
        );
        assert_eq!(query_param(&reqs[0], "client_id").as_deref(), client_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_flow_runs_az_from_the_env_path() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = tb.issue_token();
    let exp = epoch_in(3600);
    write_fake_az(
        dir.path(),
        &format!(
            r#"{{"accessToken":"{token}","expires_on":{exp},"subscription":"sub-1","tenant":"tenant-1","tokenType":"Bearer"}}"#
        ),
    );
    let path = dir.path().display().to_string();
    let cred = default_credential(&env(&[("PATH", &path)]), http());
    let got = cred.get_token(SCOPE).await.expect("token from az");
    assert_eq!(got.token, token);
    assert_eq!(
        got.expires_at
            .duration_since(UNIX_EPOCH)
            .expect("epoch")
            .as_secs(),
        exp
    );
    assert_token_works(&tb, cred).await;
    let args = az_args(dir.path()).expect("az ran");
    assert!(
        args.contains(
            "account get-access-token --output json --resource https://management.azure.com"
        ),
        "{args}"
    );
    // The child gets the environment as it is: no TZ forced on it.
    assert!(args.contains("TZ=\n"), "{args}");
    assert_eq!(tb.tokens_issued(), 0, "no token endpoint involved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_legacy_expires_on_local_time_is_parsed() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = tb.issue_token();
    let exp = epoch_in(1800);
    write_fake_az(
        dir.path(),
        &format!(
            r#"{{"accessToken":"{token}","expiresOn":"{}","tokenType":"Bearer"}}"#,
            cli_time(exp)
        ),
    );
    let path = dir.path().display().to_string();
    let cred = default_credential(&env(&[("PATH", &path), ("TZ", "UTC0")]), http());
    let got = cred.get_token(SCOPE).await.expect("token from az");
    assert_eq!(
        got.expires_at
            .duration_since(UNIX_EPOCH)
            .expect("epoch")
            .as_secs(),
        exp,
        "expiresOn is read in the zone az ran in (TZ=UTC0)"
    );
    assert_token_works(&tb, cred).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_cli_expires_on_is_read_in_a_fixed_non_utc_time_zone() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = tb.issue_token();
    let exp = epoch_in(1800);
    // India is UTC+5:30 all year: the CLI prints the expiry 5 h 30 min ahead of UTC.
    write_fake_az(
        dir.path(),
        &format!(
            r#"{{"accessToken":"{token}","expiresOn":"{}","tokenType":"Bearer"}}"#,
            cli_time(exp + 5 * 3600 + 1800)
        ),
    );
    let path = dir.path().display().to_string();
    let cred = default_credential(&env(&[("PATH", &path), ("TZ", "IST-5:30")]), http());
    let got = cred.get_token(SCOPE).await.expect("token from az");
    assert_eq!(
        got.expires_at
            .duration_since(UNIX_EPOCH)
            .expect("epoch")
            .as_secs(),
        exp,
        "17:30 in India is 12:00 UTC"
    );
    let args = az_args(dir.path()).expect("az ran");
    assert!(
        args.contains("TZ=IST-5:30"),
        "az runs in the caller's zone: {args}"
    );
    assert_token_works(&tb, cred).await;
}

// ---------------------------------------------------------------------------
// Chain semantics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_prefers_client_secret_over_every_other_credential() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("fed");
    std::fs::write(&file, "federated-jwt-1").expect("write");
    let cli_token = tb.issue_token();
    write_fake_az(
        dir.path(),
        &format!(
            r#"{{"accessToken":"{cli_token}","expires_on":{}}}"#,
            epoch_in(3600)
        ),
    );
    let (authority, endpoint, imds) = (tb.authority_url(), tb.identity_endpoint(), tb.imds_url());
    let (file_s, path) = (file.display().to_string(), dir.path().display().to_string());
    let base = [
        ("AZURE_TENANT_ID", "tenant-1"),
        ("AZURE_CLIENT_ID", "client-1"),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
        ("AZURE_FEDERATED_TOKEN_FILE", file_s.as_str()),
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", "identity-header-1"),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.as_str()),
        ("PATH", path.as_str()),
    ];

    // 1. client secret wins over everything
    let mut pairs = base.to_vec();
    pairs.push(("AZURE_CLIENT_SECRET", "secret-1"));
    let cred = default_credential(&env(&pairs), http());
    let t = cred.get_token(SCOPE).await.expect("token");
    assert_ne!(t.token, cli_token);
    let reqs = tb.requests_to(Service::Authority);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        form_param(&reqs[0], "client_secret").as_deref(),
        Some("secret-1")
    );
    assert!(tb.requests_to(Service::AppServiceMsi).is_empty());
    assert!(tb.requests_to(Service::Imds).is_empty());
    assert!(az_args(dir.path()).is_none(), "az not run");

    // 2. without the secret: workload identity
    tb.clear_requests();
    let cred = default_credential(&env(&base), http());
    cred.get_token(SCOPE).await.expect("token");
    let reqs = tb.requests_to(Service::Authority);
    assert_eq!(reqs.len(), 1);
    assert!(form_param(&reqs[0], "client_assertion").is_some());
    assert!(tb.requests_to(Service::AppServiceMsi).is_empty());

    // 3. without the token file: managed identity (App Service before IMDS)
    tb.clear_requests();
    let pairs: Vec<_> = base
        .iter()
        .copied()
        .filter(|(k, _)| *k != "AZURE_FEDERATED_TOKEN_FILE")
        .collect();
    default_credential(&env(&pairs), http())
        .get_token(SCOPE)
        .await
        .expect("token");
    assert!(tb.requests_to(Service::Authority).is_empty());
    assert_eq!(tb.requests_to(Service::AppServiceMsi).len(), 1);
    assert!(tb.requests_to(Service::Imds).is_empty());
    assert!(az_args(dir.path()).is_none(), "az not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_falls_through_unreachable_imds_to_azure_cli_quickly() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = tb.issue_token();
    write_fake_az(
        dir.path(),
        &format!(
            r#"{{"accessToken":"{token}","expires_on":{}}}"#,
            epoch_in(3600)
        ),
    );
    let path = dir.path().display().to_string();
    // IMDS at a dead port (the env() default)
    let cred = default_credential(&env(&[("PATH", &path)]), http());
    let started = Instant::now();
    let got = cred.get_token(SCOPE).await.expect("CLI token");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(got.token, token);
    assert_token_works(&tb, cred).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_without_the_requested_identity_is_unavailable_and_the_chain_moves_on() {
    let tb = testbed().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = tb.issue_token();
    write_fake_az(
        dir.path(),
        &format!(
            r#"{{"accessToken":"{token}","expires_on":{}}}"#,
            epoch_in(3600)
        ),
    );
    let (imds, path) = (tb.imds_url(), dir.path().display().to_string());
    let cred = default_credential(
        &env(&[
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds),
            ("AZURE_CLIENT_ID", "some-other-identity"),
            ("PATH", &path),
        ]),
        http(),
    );
    let got = cred.get_token(SCOPE).await.expect("CLI token");
    assert_eq!(got.token, token);
    let imds_reqs = tb.requests_to(Service::Imds);
    assert_eq!(imds_reqs.len(), 1);
    assert_eq!(imds_reqs[0].status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nothing_works_the_error_lists_every_credential_and_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_script(
        dir.path(),
        "",
        "ERROR: Please run 'az login' to setup account.",
        1,
    );
    let path = dir.path().display().to_string();
    let cred = default_credential(
        &env(&[("AZURE_CLIENT_ID", "client-1"), ("PATH", &path)]),
        http(),
    );
    let err = cred.get_token(SCOPE).await.expect_err("nothing works");
    let AuthError::NoCredential { attempts } = &err else {
        panic!("{err:?}");
    };
    let kinds: Vec<_> = attempts.iter().map(|a| a.credential).collect();
    assert_eq!(
        kinds,
        [
            "client_secret",
            "workload_identity",
            "managed_identity_imds",
            "azure_cli"
        ]
    );
    let msg = err.to_string();
    assert!(msg.contains("AZURE_CLIENT_SECRET"), "{msg}");
    assert!(msg.contains("AZURE_FEDERATED_TOKEN_FILE"), "{msg}");
    assert!(msg.contains("IMDS"), "{msg}");
    assert!(msg.contains("az login"), "{msg}");

    // az not installed at all
    let cred = default_credential(&env(&[]), http());
    let msg = cred
        .get_token(SCOPE)
        .await
        .expect_err("nothing")
        .to_string();
    assert!(msg.contains("az not found on PATH"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_client_secret_stops_the_chain_with_a_clear_error_without_the_secret() {
    let tb = testbed().await;
    let (authority, imds) = (tb.authority_url(), tb.imds_url());
    let secret = "Wr0ng~Secret~Value~1234567890";
    let cred = default_credential(
        &env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", secret),
            ("AZURE_AUTHORITY_HOST", &authority),
            // IMDS would work: the chain must not fall through to it.
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds),
        ]),
        http(),
    );
    let err = cred.get_token(SCOPE).await.expect_err("wrong secret");
    match &err {
        AuthError::Failed {
            credential,
            status,
            code,
            description,
        } => {
            assert_eq!(*credential, "client_secret");
            assert_eq!(*status, Some(401));
            assert_eq!(code, "invalid_client");
            assert!(description.contains("AADSTS7000215"), "{description}");
        }
        other => panic!("{other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains("client_secret"), "{shown}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(!format!("{err:?}").contains(secret));
    assert!(!format!("{cred:?}").contains(secret));
    assert!(tb.requests_to(Service::Imds).is_empty(), "chain stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_authority_host_is_refused() {
    let cred = default_credential(
        &env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", "secret-1"),
            ("AZURE_AUTHORITY_HOST", "http://login.example.invalid"),
        ]),
        http(),
    );
    let err = cred.get_token(SCOPE).await.expect_err("refused");
    assert!(
        matches!(
            err,
            AuthError::Config {
                credential: "client_secret",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("https"), "{err}");
    assert!(!err.to_string().contains("secret-1"));
}

// ---------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_cached_then_refreshed_before_expiry() {
    let tb = testbed_with(TestbedOptions {
        token_lifetime: Duration::from_secs(4),
        ..TestbedOptions::default()
    })
    .await;
    let authority = tb.authority_url();
    let cred = default_credential(
        &env(&[
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "client-1"),
            ("AZURE_CLIENT_SECRET", "secret-1"),
            ("AZURE_AUTHORITY_HOST", &authority),
        ]),
        http(),
    );
    let first = cred.get_token(SCOPE).await.expect("token");
    for _ in 0..5 {
        let again = cred.get_token(SCOPE).await.expect("token");
        assert_eq!(again.token, first.token);
    }
    assert_token_works(&tb, cred.clone()).await;
    assert_eq!(tb.tokens_issued(), 1, "reused from the cache");

    // Half of a 4 s lifetime (shorter than 5 min) before expiry → refresh.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let second = cred.get_token(SCOPE).await.expect("token");
    assert_ne!(second.token, first.token);
    assert!(
        SystemTime::now() < first.expires_at,
        "refreshed before expiry"
    );
    assert_eq!(tb.tokens_issued(), 2);
    assert_token_works(&tb, cred).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_token_request() {
    let tb = testbed().await;
    let imds = tb.imds_url();
    let cred = default_credential(
        &env(&[("AZURE_POD_IDENTITY_AUTHORITY_HOST", &imds)]),
        http(),
    );
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let cred = cred.clone();
        tasks.push(tokio::spawn(async move { cred.get_token(SCOPE).await }));
    }
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("join").expect("token").token);
    }
    tokens.dedup();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tb.tokens_issued(), 1);
}
