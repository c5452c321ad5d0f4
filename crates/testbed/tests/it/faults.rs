//! Fault injection, request recording and shutdown.

use crate::support::common;

use std::time::{Duration, Instant};

use common::*;
use vmss_testbed::{Fault, Orchestration, Service, UpstreamKind};

fn status(status: u16, code: &str, retry_after: Option<u64>) -> Fault {
    Fault::Status {
        status,
        code: code.into(),
        message: format!("injected {code}"),
        retry_after,
    }
}

#[tokio::test]
async fn status_fault_answers_arm_error_with_retry_after_then_recovers() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    e.tb.faults().inject(
        Service::Arm,
        "/VirtualMachineScaleSets/web",
        status(429, "SubscriptionRequestsThrottled", Some(7)),
        2,
    );
    let q = format!("{}?api-version={COMPUTE}", vmss_path("web"));
    for _ in 0..2 {
        let r = e.arm(&q).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after").as_deref(), Some("7"));
        assert_eq!(
            r.json(),
            serde_json::json!({"error": {"code": "SubscriptionRequestsThrottled", "message": "injected SubscriptionRequestsThrottled"}})
        );
    }
    assert_eq!(e.arm(&q).await.status, 200);
}

#[tokio::test]
async fn status_fault_fires_before_authentication_and_forever_until_cleared() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    e.tb.faults().inject(
        Service::Arm,
        "",
        status(503, "ServiceUnavailable", None),
        usize::MAX,
    );
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    let r = read(e.http.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 503, "faults come before normal handling");
    for _ in 0..5 {
        assert_eq!(e.arm_url(&url).await.status, 503);
    }
    e.tb.faults().clear();
    assert_eq!(e.arm_url(&url).await.status, 200);
}

#[tokio::test]
async fn faults_only_hit_their_service_and_path() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    e.set("api", Orchestration::Uniform, 1);
    e.tb.nginx().add_upstream(UpstreamKind::Http, "backend");
    e.tb.faults().inject(
        Service::Arm,
        "/networkinterfaces",
        status(500, "InternalServerError", None),
        usize::MAX,
    );
    e.tb.faults().inject(
        Service::Nginx,
        "upstreams/backend",
        status(502, "BadGateway", None),
        1,
    );
    assert_eq!(
        e.arm(&format!("{}?api-version={COMPUTE}", vmss_path("web")))
            .await
            .status,
        200
    );
    let r = e
        .arm(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("api")
        ))
        .await;
    assert_eq!(r.status, 500);
    // NGINX faults use the NginxError shape
    let r = read(
        e.http
            .get(e.nginx("/9/http/upstreams/backend/servers"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 502);
    let v = r.json();
    assert_eq!(v["error"]["status"], 502);
    assert_eq!(v["error"]["code"], "BadGateway");
    assert_eq!(v["error"]["text"], "injected BadGateway");
    let r = e
        .http
        .get(e.nginx("/9/http/upstreams/backend/servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn token_endpoint_faults_use_each_services_error_shape() {
    let e = env().await;
    e.tb.faults().inject(
        Service::Authority,
        "oauth2",
        status(503, "temporarily_unavailable", Some(1)),
        1,
    );
    e.tb.faults()
        .inject(Service::Imds, "", status(429, "too_many_requests", None), 1);
    let r = read(
        e.http
            .post(format!(
                "{}/tenant-1/oauth2/v2.0/token",
                e.tb.authority_url()
            ))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    let r = read(
        e.http
            .get(format!(
                "{}/metadata/identity/oauth2/token",
                e.tb.imds_url()
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "too_many_requests");
}

#[tokio::test]
async fn delay_fault_sleeps_then_serves_normally_and_trips_client_timeouts() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    e.tb.faults().inject(
        Service::Arm,
        "web",
        Fault::Delay(Duration::from_millis(400)),
        2,
    );
    let q = format!("{}?api-version={COMPUTE}", vmss_path("web"));
    let t = Instant::now();
    let r = e.arm(&q).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(400));

    let short = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let err = short
        .get(format!("{}{q}", e.tb.arm_url()))
        .bearer_auth(&e.token)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let t = Instant::now();
    assert_eq!(e.arm(&q).await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(300), "rule exhausted");
}

#[tokio::test]
async fn malformed_body_fault_answers_200_with_invalid_json() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    e.tb.faults()
        .inject(Service::Arm, "virtualmachines", Fault::MalformedBody, 1);
    let r = e
        .arm(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(serde_json::from_str::<serde_json::Value>(&r.text).is_err());
    let r = e
        .arm(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(r.status, 200);
    r.json();
}

#[tokio::test]
async fn fail_page_fault_fails_only_that_page_and_a_retry_succeeds() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 5);
    e.tb.faults().inject(
        Service::Arm,
        "/networkInterfaces",
        Fault::FailPage {
            page: 1,
            status: 500,
        },
        1,
    );
    let first = e
        .arm(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(first.status, 200, "page 0 is fine");
    let next = first.json()["nextLink"].as_str().unwrap().to_string();
    let r = e.arm_url(&next).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.code(), "InternalServerError");
    let r = e.arm_url(&next).await;
    assert_eq!(r.status, 200, "the rule fired once");
    let (all, pages) = e
        .arm_all(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("web")
        ))
        .await;
    assert_eq!((all.len(), pages), (5, 3));

    // page 0 can fail too, and non-list operations are never hit by FailPage
    e.tb.faults().inject(
        Service::Arm,
        "",
        Fault::FailPage {
            page: 0,
            status: 429,
        },
        usize::MAX,
    );
    let r = e
        .arm(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "TooManyRequests");
    assert_eq!(
        e.arm(&format!("{}?api-version={COMPUTE}", vmss_path("web")))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn every_request_is_recorded_in_order_with_status_and_body() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    e.tb.nginx().add_upstream(UpstreamKind::Http, "backend");
    e.tb.clear_requests();
    e.arm(&format!("{}?api-version={COMPUTE}", vmss_path("web")))
        .await;
    e.http
        .post(e.nginx("/9/http/upstreams/backend/servers"))
        .body(r#"{"server":"10.0.0.1:80"}"#)
        .send()
        .await
        .unwrap();
    e.arm(&vmss_path("web")).await;
    let reqs = e.tb.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].service, Service::Arm);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, vmss_path("web"));
    assert_eq!(reqs[0].query, format!("api-version={COMPUTE}"));
    assert_eq!(reqs[0].status, 200);
    assert_eq!(reqs[1].service, Service::Nginx);
    assert_eq!(reqs[1].method, "POST");
    assert_eq!(reqs[1].status, 201);
    assert_eq!(reqs[1].body, r#"{"server":"10.0.0.1:80"}"#);
    assert_eq!(reqs[2].status, 400);
    assert_eq!(e.tb.requests_to(Service::Nginx).len(), 1);
    e.tb.clear_requests();
    assert!(e.tb.requests().is_empty());
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_servers() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    assert_eq!(
        e.arm_url(&url).await.status,
        200,
        "opens a keep-alive connection"
    );
    let Env { tb, http, token } = e;
    let nginx = tb.nginx_url();
    tb.shutdown().await;
    let err = http.get(&url).bearer_auth(&token).send().await;
    assert!(err.is_err(), "ARM still answers after shutdown");
    assert!(client().get(&nginx).send().await.is_err());

    let e = env().await;
    let url = format!("{}/", e.tb.nginx_url());
    assert_eq!(e.http.get(&url).send().await.unwrap().status(), 200);
    let http = e.http.clone();
    drop(e);
    // give the server tasks a moment to notice
    let mut stopped = false;
    for _ in 0..50 {
        if http.get(&url).send().await.is_err() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stopped, "server still answering after drop");
}

#[tokio::test]
async fn empty_list_fault_answers_200_with_no_items_for_the_matching_list_only() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 3);
    e.set("api", Orchestration::Uniform, 3);
    e.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/networkInterfaces",
        Fault::EmptyList,
        1,
    );
    let nics = |name: &str| {
        format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path(name)
        )
    };
    let r = e.arm(&nics("web")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), serde_json::json!({"value": []}));
    assert_eq!(
        e.arm_all(&nics("api")).await.0.len(),
        3,
        "other sets untouched"
    );
    assert_eq!(e.arm_all(&nics("web")).await.0.len(), 3, "fired once");
}

#[tokio::test]
async fn drop_field_fault_removes_instance_view_from_every_listed_vm() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 3);
    e.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/virtualMachines",
        Fault::DropField {
            field: "instanceView".into(),
        },
        usize::MAX,
    );
    let q = format!(
        "{}/virtualMachines?$expand=instanceView&api-version={COMPUTE}",
        vmss_path("web")
    );
    let (damaged, _) = e.arm_all(&q).await;
    assert_eq!(damaged.len(), 3, "items kept");
    assert!(damaged
        .iter()
        .all(|v| v["properties"].get("instanceView").is_none()
            && v["properties"].get("provisioningState").is_some()));
    e.tb.faults().clear();
    let (whole, _) = e.arm_all(&q).await;
    assert!(whole
        .iter()
        .all(|v| v["properties"].get("instanceView").is_some()));
}

#[tokio::test]
async fn drop_items_fault_drops_matching_items_and_keeps_the_rest() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 3);
    e.tb.faults().inject(
        Service::Arm,
        "/virtualMachineScaleSets/web/virtualMachines",
        Fault::DropItems {
            id_contains: "/virtualMachines/1".into(),
        },
        usize::MAX,
    );
    let q = format!(
        "{}/virtualMachines?$expand=instanceView&api-version={COMPUTE}",
        vmss_path("web")
    );
    let (items, _) = e.arm_all(&q).await;
    let ids: Vec<String> = items
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.iter().all(|id| !id.ends_with("/virtualMachines/1")));
}

#[tokio::test]
async fn a_rule_with_a_query_needle_matches_only_requests_with_that_query() {
    let e = env().await;
    e.set("flex", Orchestration::Flexible, 2);
    let set_id = vmss_path("flex");
    e.tb.faults().inject_where(
        Service::Arm,
        "/providers/Microsoft.Compute/virtualMachines",
        &format!("virtualmachinescaleset/id' eq '{set_id}'"),
        Fault::EmptyList,
        usize::MAX,
    );
    let vms = format!(
        "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines"
    );
    let all = e.arm_all(&format!("{vms}?api-version={COMPUTE}")).await.0;
    assert_eq!(all.len(), 2, "the group's list is not matched");
    let filter = format!("'virtualMachineScaleSet/id' eq '{set_id}'");
    let filtered = format!(
        "{vms}?api-version={COMPUTE}&$filter={}",
        url::form_urlencoded::byte_serialize(filter.as_bytes()).collect::<String>()
    );
    let r = e.arm(&filtered).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), serde_json::json!({"value": []}));
}
