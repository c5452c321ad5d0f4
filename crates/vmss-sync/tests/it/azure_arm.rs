//! ARM client against the testbed's fake ARM, over real sockets.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;
use vmss_sync::azure::arm::{
    ArmClient, ArmError, ArmOptions, COMPUTE_API_VERSION, OP_GET_SCALE_SET, OP_LIST_SCALE_SET_NICS,
    OP_LIST_SCALE_SET_VMS, VMSS_NETWORK_API_VERSION,
};
use vmss_sync::azure::auth::{AccessToken, AuthError, StaticToken, TokenCredential};
use vmss_sync::azure::models::{self, OrchestrationMode, VirtualMachineScaleSet};
use vmss_testbed::{Fault, Orchestration, RecordedRequest, Service, Testbed, TestbedOptions};

const SUB: &str = "sub-1";
const RG: &str = "rg-1";

async fn testbed() -> Testbed {
    Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed starts")
}

fn options(tb: &Testbed) -> ArmOptions {
    ArmOptions {
        endpoint: Url::parse(&tb.arm_url()).expect("arm url"),
        audience: "https://management.azure.com".into(),
        request_timeout: Duration::from_secs(5),
        max_retries: 4,
        max_retry_after: Duration::from_secs(2),
        ..ArmOptions::default()
    }
}

/// A client with a valid static token and a 5 ms backoff base (fast tests).
fn client_with(tb: &Testbed, opts: ArmOptions) -> ArmClient {
    ArmClient::new(
        opts,
        Arc::new(StaticToken(tb.issue_token())),
        reqwest::Client::new(),
    )
    .with_backoff_base(Duration::from_millis(5))
}

fn client(tb: &Testbed) -> ArmClient {
    client_with(tb, options(tb))
}

fn arm_requests(tb: &Testbed) -> Vec<RecordedRequest> {
    tb.requests_to(Service::Arm)
}

fn query_param(r: &RecordedRequest, key: &str) -> Option<String> {
    url::form_urlencoded::parse(r.query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

fn uniform_set(tb: &Testbed, name: &str, n: usize) {
    tb.fleet()
        .add_scale_set(SUB, RG, name, Orchestration::Uniform, "eastus");
    tb.fleet().scale_to(SUB, RG, name, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_scale_set_reads_capacity_mode_and_uses_pinned_compute_version() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 3);
    tb.fleet()
        .add_scale_set(SUB, RG, "flex", Orchestration::Flexible, "eastus");
    let arm = client(&tb);

    let vmss = arm.get_scale_set(SUB, RG, "web").await.expect("get works");
    assert_eq!(vmss.name.as_deref(), Some("web"));
    assert_eq!(vmss.capacity(), 3);
    assert_eq!(vmss.orchestration_mode(), &OrchestrationMode::Uniform);
    assert!(vmss.is_succeeded());
    assert_eq!(vmss.location.as_deref(), Some("eastus"));

    let flex = arm.get_scale_set(SUB, RG, "flex").await.expect("get works");
    assert_eq!(flex.orchestration_mode(), &OrchestrationMode::Flexible);

    let reqs = arm_requests(&tb);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(
            query_param(r, "api-version").as_deref(),
            Some(COMPUTE_API_VERSION)
        );
        assert_eq!(r.status, 200);
    }
    let stats = arm.stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.by_operation.get(OP_GET_SCALE_SET), Some(&2));
    assert_eq!(stats.by_status.get(&200), Some(&2));
    assert!(
        stats.remaining_subscription_reads.is_some(),
        "x-ms-ratelimit-remaining-subscription-reads recorded: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nic_list_uses_api_version_2018_10_01_and_returns_every_page() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 7); // page size 2 → 4 pages
    let arm = client(&tb);

    let nics = arm
        .list_scale_set_nics(SUB, RG, "web")
        .await
        .expect("list works");
    assert_eq!(nics.len(), 7);
    let mut ips: Vec<Ipv4Addr> = nics.iter().filter_map(models::primary_ipv4).collect();
    ips.sort();
    assert_eq!(ips, tb.fleet().instance_ips(SUB, RG, "web"));
    let mut vm_ids: Vec<String> = nics
        .iter()
        .filter_map(models::scale_set_instance_id_of_nic)
        .collect();
    vm_ids.sort();
    vm_ids.dedup();
    assert_eq!(vm_ids.len(), 7, "one VM per NIC");
    assert!(vm_ids.iter().all(|id| id == &id.to_ascii_lowercase()));

    let reqs = arm_requests(&tb);
    assert_eq!(reqs.len(), 4, "ceil(7/2) pages: {reqs:#?}");
    for r in &reqs {
        assert!(
            r.path.to_ascii_lowercase().ends_with("/networkinterfaces"),
            "{}",
            r.path
        );
        assert_eq!(
            query_param(r, "api-version").as_deref(),
            Some(VMSS_NETWORK_API_VERSION),
            "every page (nextLink included) carries api-version 2018-10-01"
        );
        assert_eq!(r.status, 200);
    }
    assert_eq!(VMSS_NETWORK_API_VERSION, "2018-10-01");
    assert_eq!(
        arm.stats().by_operation.get(OP_LIST_SCALE_SET_NICS),
        Some(&4)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secondary_nics_do_not_change_the_primary_ip() {
    let tb = testbed().await;
    tb.fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    let id = tb
        .fleet()
        .add_instance(SUB, RG, "web", Ipv4Addr::new(10, 9, 0, 4));
    tb.fleet()
        .add_secondary_nic(SUB, RG, "web", &id, Ipv4Addr::new(10, 9, 1, 4));
    let arm = client(&tb);
    let nics = arm.list_scale_set_nics(SUB, RG, "web").await.expect("list");
    assert_eq!(nics.len(), 2);
    let primary: Vec<_> = nics.iter().filter(|n| n.is_primary()).collect();
    assert_eq!(primary.len(), 1);
    assert_eq!(
        models::primary_ipv4(primary[0]),
        Some(Ipv4Addr::new(10, 9, 0, 4))
    );
    assert_eq!(
        models::vm_id_of_nic(&nics[0]),
        models::vm_id_of_nic(&nics[1]),
        "both NICs belong to the same VM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_across_many_pages_collects_everything() {
    let tb = testbed().await;
    uniform_set(&tb, "big", 41); // 21 pages
    let arm = client(&tb);
    let vms = arm
        .list_scale_set_vms(SUB, RG, "big", true)
        .await
        .expect("list works");
    assert_eq!(vms.len(), 41);
    let mut ids: Vec<String> = vms.iter().filter_map(|v| v.instance_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 41, "no duplicates, no gaps");
    assert!(vms
        .iter()
        .all(|v| v.power_state().as_deref() == Some("running")));
    let reqs = arm_requests(&tb);
    assert_eq!(reqs.len(), 21);
    assert!(reqs
        .iter()
        .all(|r| query_param(r, "$expand").as_deref() == Some("instanceView")));
    assert_eq!(
        arm.stats().by_operation.get(OP_LIST_SCALE_SET_VMS),
        Some(&21)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_list_all_and_get_json_work_for_other_operations() {
    let tb = testbed().await;
    uniform_set(&tb, "a", 1);
    uniform_set(&tb, "b", 1);
    uniform_set(&tb, "c", 1);
    let arm = client(&tb);
    let sets: Vec<VirtualMachineScaleSet> = arm
        .list_all(
            "VirtualMachineScaleSets_List",
            &format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets"),
            COMPUTE_API_VERSION,
            &[],
        )
        .await
        .expect("list works");
    let mut names: Vec<_> = sets.iter().filter_map(|s| s.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    let raw: serde_json::Value = arm
        .get_json(
            "VirtualMachineScaleSets_Get",
            &format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/b"),
            COMPUTE_API_VERSION,
            &[],
        )
        .await
        .expect("get works");
    assert_eq!(raw["name"], "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_page_k_is_an_error_never_a_partial_list() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 9); // 5 pages
    tb.faults().inject(
        Service::Arm,
        "networkInterfaces",
        Fault::FailPage {
            page: 2,
            status: 500,
        },
        usize::MAX,
    );
    let arm = client(&tb);
    let err = arm
        .list_scale_set_nics(SUB, RG, "web")
        .await
        .expect_err("a failed page fails the list");
    assert_eq!(err.status(), Some(500), "{err}");
    assert!(!err.is_permanent());
    let msg = err.to_string();
    assert!(msg.contains(OP_LIST_SCALE_SET_NICS), "{msg}");
    assert!(msg.contains("networkInterfaces"), "{msg}");
    // pages 0 and 1 once, page 2 first try + 4 retries, nothing after
    assert_eq!(arm_requests(&tb).len(), 2 + 5);

    // A non-retryable failure on a later page: immediately an error.
    tb.faults().clear();
    tb.clear_requests();
    tb.faults().inject(
        Service::Arm,
        "networkInterfaces",
        Fault::FailPage {
            page: 3,
            status: 404,
        },
        1,
    );
    let err = arm
        .list_scale_set_nics(SUB, RG, "web")
        .await
        .expect_err("a failed page fails the list");
    assert!(err.is_not_found(), "{err}");
    assert_eq!(arm_requests(&tb).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_page_recovers_when_a_retry_succeeds() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 5); // 3 pages
    tb.faults().inject(
        Service::Arm,
        "networkInterfaces",
        Fault::FailPage {
            page: 1,
            status: 503,
        },
        1,
    );
    let mut opts = options(&tb);
    opts.max_retry_after = Duration::from_millis(50); // the page fault says Retry-After: 1
    let arm = client_with(&tb, opts);
    let nics = arm.list_scale_set_nics(SUB, RG, "web").await.expect("list");
    assert_eq!(nics.len(), 5);
    assert_eq!(arm_requests(&tb).len(), 4);
    assert_eq!(arm.stats().throttled_waits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_429_with_retry_after_is_waited_out_then_succeeds() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "Too many requests, retry later.".into(),
            retry_after: Some(1),
        },
        1,
    );
    let arm = client(&tb);
    let started = Instant::now();
    let vmss = arm.get_scale_set(SUB, RG, "web").await.expect("succeeds");
    let elapsed = started.elapsed();
    assert_eq!(vmss.name.as_deref(), Some("web"));
    assert!(
        elapsed >= Duration::from_millis(950),
        "Retry-After: 1 honoured (waited {elapsed:?})"
    );
    let stats = arm.stats();
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.throttled_waits, 1);
    assert_eq!(stats.by_status.get(&429), Some(&1));
    assert_eq!(stats.retry_after_wait, Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_and_throttling_forever_ends_after_bounded_retries() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::Status {
            status: 429,
            code: "SubscriptionRequestsThrottled".into(),
            message: "Number of read requests for subscription exceeded the limit.".into(),
            retry_after: Some(30),
        },
        usize::MAX,
    );
    let mut opts = options(&tb);
    opts.max_retries = 3;
    opts.max_throttled_waits = 3;
    opts.max_retry_after = Duration::from_millis(100);
    let arm = client_with(&tb, opts);
    let started = Instant::now();
    let err = arm
        .get_scale_set(SUB, RG, "web")
        .await
        .expect_err("throttled forever");
    let elapsed = started.elapsed();
    assert!(err.is_throttled(), "{err}");
    assert!(
        matches!(err, ArmError::Throttled { attempts: 4, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("SubscriptionRequestsThrottled"), "{msg}");
    assert!(msg.contains("exceeded the limit"), "{msg}");
    assert!(
        elapsed < Duration::from_secs(5),
        "Retry-After 30 s capped at 100 ms: {elapsed:?}"
    );
    let stats = arm.stats();
    assert_eq!(stats.requests, 4, "1 + max_retries");
    assert_eq!(stats.throttled_waits, 3);
    assert_eq!(stats.retry_after_wait, Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_succeed() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 3);
    let arm = client(&tb);

    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::Status {
            status: 502,
            code: "BadGateway".into(),
            message: "bad gateway".into(),
            retry_after: None,
        },
        1,
    );
    arm.get_scale_set(SUB, RG, "web").await.expect("recovers");
    assert_eq!(arm_requests(&tb).len(), 2);

    tb.clear_requests();
    tb.faults().inject(
        Service::Arm,
        "networkInterfaces",
        Fault::Status {
            status: 500,
            code: "InternalServerError".into(),
            message: "boom".into(),
            retry_after: None,
        },
        2,
    );
    let nics = arm
        .list_scale_set_nics(SUB, RG, "web")
        .await
        .expect("recovers");
    assert_eq!(nics.len(), 3);
    assert_eq!(arm_requests(&tb).len(), 2 + 2, "2 failures + 2 pages");

    let stats = arm.stats();
    assert_eq!(stats.retries, 3);
    assert_eq!(stats.by_status.get(&500), Some(&2));
    assert_eq!(stats.by_status.get(&502), Some(&1));
    assert_eq!(stats.throttled_waits, 0);
    assert!(stats.backoff_wait > Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_forever_fail_after_bounded_retries() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::Status {
            status: 503,
            code: "ServiceUnavailable".into(),
            message: "The service is unavailable.".into(),
            retry_after: None,
        },
        usize::MAX,
    );
    let arm = client(&tb);
    let err = arm.get_scale_set(SUB, RG, "web").await.expect_err("fails");
    assert_eq!(err.status(), Some(503));
    assert_eq!(err.code(), Some("ServiceUnavailable"));
    assert!(
        err.to_string().contains("The service is unavailable."),
        "{err}"
    );
    assert!(err.to_string().contains("x-ms-request-id"), "{err}");
    assert_eq!(arm_requests(&tb).len(), 5, "first try + 4 retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    for (status, code) in [
        (400, "BadRequest"),
        (403, "AuthorizationFailed"),
        (409, "Conflict"),
    ] {
        tb.clear_requests();
        tb.faults().inject(
            Service::Arm,
            "virtualMachineScaleSets/web",
            Fault::Status {
                status,
                code: code.into(),
                message: format!("injected {status}"),
                retry_after: None,
            },
            1,
        );
        let err = client(&tb)
            .get_scale_set(SUB, RG, "web")
            .await
            .expect_err("fails");
        assert_eq!(err.status(), Some(status));
        assert_eq!(err.code(), Some(code));
        assert_eq!(arm_requests(&tb).len(), 1, "{status} is never retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_retried_then_errors() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::Delay(Duration::from_secs(3)),
        usize::MAX,
    );
    let mut opts = options(&tb);
    opts.request_timeout = Duration::from_millis(150);
    opts.max_retries = 2;
    let arm = client_with(&tb, opts);
    let started = Instant::now();
    let err = arm
        .get_scale_set(SUB, RG, "web")
        .await
        .expect_err("times out");
    assert!(
        matches!(err, ArmError::Timeout { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let stats = arm.stats();
    assert_eq!(stats.timeouts, 3);
    assert_eq!(stats.requests, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_answer_is_retried_and_succeeds() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::Delay(Duration::from_secs(3)),
        1,
    );
    let mut opts = options(&tb);
    opts.request_timeout = Duration::from_millis(200);
    let arm = client_with(&tb, opts);
    arm.get_scale_set(SUB, RG, "web")
        .await
        .expect("second try works");
    assert_eq!(arm.stats().timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_body_is_a_decode_error_not_an_empty_result() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 3);
    tb.faults()
        .inject(Service::Arm, "networkInterfaces", Fault::MalformedBody, 1);
    let arm = client(&tb);
    let err = arm
        .list_scale_set_nics(SUB, RG, "web")
        .await
        .expect_err("decode error");
    assert!(matches!(err, ArmError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains(OP_LIST_SCALE_SET_NICS), "{err}");

    tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/web",
        Fault::MalformedBody,
        1,
    );
    let err = arm
        .get_scale_set(SUB, RG, "web")
        .await
        .expect_err("decode error");
    assert!(matches!(err, ArmError::Decode { .. }), "{err:?}");
    assert!(!err.is_permanent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_scale_set_is_not_found_with_arm_code_and_message() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    let arm = client(&tb);
    let err = arm
        .get_scale_set(SUB, RG, "nope")
        .await
        .expect_err("not found");
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.is_permanent());
    let ArmError::NotFound { code, message, .. } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(code, "ResourceNotFound");
    assert!(message.contains("nope"), "{message}");
    let shown = err.to_string();
    assert!(shown.contains(OP_GET_SCALE_SET), "{shown}");
    assert!(shown.contains("/virtualMachineScaleSets/nope"), "{shown}");
    assert!(shown.contains("404"), "{shown}");
    assert_eq!(arm_requests(&tb).len(), 1, "404 is not retried");

    let err = arm
        .list_scale_set_nics(SUB, "no-such-rg", "web")
        .await
        .expect_err("not found");
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(err.code(), Some("ResourceGroupNotFound"), "{err}");
}

/// Hands out an expired token first; after `invalidate`, a fresh one.
#[derive(Debug)]
struct ExpiringCredential {
    expired: String,
    fresh: String,
    invalidated: AtomicBool,
}

#[async_trait::async_trait]
impl TokenCredential for ExpiringCredential {
    async fn get_token(&self, _scope: &str) -> Result<AccessToken, AuthError> {
        let token = if self.invalidated.load(Ordering::SeqCst) {
            self.fresh.clone()
        } else {
            self.expired.clone()
        };
        Ok(AccessToken {
            token,
            expires_at: SystemTime::now() + Duration::from_secs(3600),
        })
    }

    fn kind(&self) -> &'static str {
        "static"
    }

    async fn invalidate(&self, _scope: &str, token: &str) {
        if token == self.expired {
            self.invalidated.store(true, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_401_refreshes_the_token_once_and_retries() {
    let tb = Testbed::start(TestbedOptions {
        token_lifetime: Duration::from_secs(1),
        ..TestbedOptions::default()
    })
    .await
    .expect("testbed");
    uniform_set(&tb, "web", 1);
    let expired = tb.issue_token();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cred = Arc::new(ExpiringCredential {
        expired,
        fresh: tb.issue_token(),
        invalidated: AtomicBool::new(false),
    });
    let arm = ArmClient::new(options(&tb), cred.clone(), reqwest::Client::new());
    arm.get_scale_set(SUB, RG, "web").await.expect("refreshed");
    let reqs = arm_requests(&tb);
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [401, 200]
    );
    assert_eq!(arm.stats().token_refreshes, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_that_does_not_change_is_not_retried_forever() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    let arm = ArmClient::new(
        options(&tb),
        Arc::new(StaticToken("not-a-real-token".into())),
        reqwest::Client::new(),
    );
    let err = arm.get_scale_set(SUB, RG, "web").await.expect_err("401");
    assert_eq!(err.status(), Some(401));
    assert_eq!(err.code(), Some("InvalidAuthenticationToken"));
    assert!(err.is_permanent());
    assert!(!err.to_string().contains("not-a-real-token"), "{err}");
    assert_eq!(arm_requests(&tb).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_never_sent_over_plain_http_to_a_remote_host() {
    let arm = ArmClient::new(
        ArmOptions::new(Url::parse("http://management.example.invalid").expect("url")),
        Arc::new(StaticToken("secret-token-value".into())),
        reqwest::Client::new(),
    );
    let err = arm
        .get_scale_set(SUB, RG, "web")
        .await
        .expect_err("refused");
    assert!(matches!(err, ArmError::Insecure { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret-token-value"));
    assert_eq!(arm.stats().requests, 0);
}

type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// A tiny HTTP/1.1 server on `listener` that answers each request with the next canned
/// JSON body (then `{"value":[]}`) and records the request lines.
fn serve_canned(listener: tokio::net::TcpListener, bodies: Vec<String>) -> Seen {
    let seen: Seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let mut bodies = bodies.into_iter();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 16 * 1024];
            let mut got = Vec::new();
            loop {
                let n = sock.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&got).to_string();
            seen2
                .lock()
                .expect("lock")
                .push(text.lines().next().unwrap_or_default().to_string());
            let body = bodies.next().unwrap_or_else(|| r#"{"value":[]}"#.into());
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    seen
}

async fn bind() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, base)
}

async fn canned_server(bodies: Vec<String>) -> (String, Seen) {
    let (listener, base) = bind().await;
    (base, serve_canned(listener, bodies))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_link_is_followed_verbatim_without_re_encoding() {
    let (listener, base) = bind().await;
    let link = format!(
        "{base}/subscriptions/s/resourceGroups/r/providers/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines?api-version=2024-07-01&$filter=%27a%27%20eq%20%27b%2Fc%27&$skiptoken=x%2By%3D%3D"
    );
    let seen = serve_canned(
        listener,
        vec![
            format!(r#"{{"value":[{{"name":"v_0","instanceId":"0"}}],"nextLink":"{link}"}}"#),
            r#"{"value":[{"name":"v_1","instanceId":"1"}],"nextLink":null}"#.into(),
        ],
    );
    let arm = ArmClient::new(
        ArmOptions::new(Url::parse(&base).expect("url")),
        Arc::new(StaticToken("t".into())),
        reqwest::Client::new(),
    );
    let vms = arm
        .list_scale_set_vms("s", "r", "v", false)
        .await
        .expect("list");
    assert_eq!(vms.len(), 2);
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2);
    let expected_target = link.trim_start_matches(&base);
    assert_eq!(seen[1], format!("GET {expected_target} HTTP/1.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_link_to_another_host_is_refused() {
    let (base, seen) = canned_server(vec![
        r#"{"value":[{"name":"nic1"}],"nextLink":"https://evil.example.com/steal?api-version=2018-10-01"}"#.into(),
    ])
    .await;
    let arm = ArmClient::new(
        ArmOptions::new(Url::parse(&base).expect("url")),
        Arc::new(StaticToken("t".into())),
        reqwest::Client::new(),
    );
    let err = arm
        .list_scale_set_nics("s", "r", "v")
        .await
        .expect_err("refused");
    assert!(matches!(err, ArmError::Paging { .. }), "{err:?}");
    assert!(err.to_string().contains("evil.example.com"), "{err}");
    assert_eq!(seen.lock().expect("lock").len(), 1, "never followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_body_without_value_is_a_decode_error() {
    let (base, _seen) = canned_server(vec![r#"{"nextLink":null}"#.into()]).await;
    let arm = ArmClient::new(
        ArmOptions::new(Url::parse(&base).expect("url")),
        Arc::new(StaticToken("t".into())),
        reqwest::Client::new(),
    );
    let err = arm
        .list_scale_set_nics("s", "r", "v")
        .await
        .expect_err("decode");
    assert!(matches!(err, ArmError::Decode { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_stats() {
    let tb = testbed().await;
    uniform_set(&tb, "web", 1);
    let arm = client(&tb);
    let other = arm.clone();
    other.get_scale_set(SUB, RG, "web").await.expect("get");
    arm.get_scale_set(SUB, RG, "web").await.expect("get");
    assert_eq!(arm.stats().requests, 2);
    assert_eq!(other.stats(), arm.stats());
}
