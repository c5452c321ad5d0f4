//! Every token flow end to end: success gives a token the fake ARM accepts; each
//! misconfiguration gets the real service's error.

use crate::support::common;

use common::*;
use serde_json::Value;
use vmss_testbed::{Orchestration, TokenFlow};

const ARM_SCOPE: &str = "https://management.azure.com/.default";

async fn arm_accepts(e: &Env, token: &str) -> u16 {
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    e.http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn post_token(e: &Env, tenant: &str, form: &[(&str, &str)]) -> Resp {
    read(
        e.http
            .post(format!(
                "{}/{tenant}/oauth2/v2.0/token",
                e.tb.authority_url()
            ))
            .form(form)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn secret_form<'a>(secret: &'a str, client: &'a str, scope: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", client),
        ("client_secret", secret),
        ("scope", scope),
    ]
}

fn aad_code(r: &Resp) -> (String, u64) {
    let v = r.json();
    (
        v["error"].as_str().unwrap().to_string(),
        v["error_codes"][0].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn client_secret_flow_issues_a_token_arm_accepts() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let r = post_token(
        &e,
        "tenant-1",
        &secret_form("secret-1", "client-1", ARM_SCOPE),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3600, "expires_in is a number here");
    assert!(v["ext_expires_in"].is_number());
    let tok = v["access_token"].as_str().unwrap();
    assert_eq!(tok.split('.').count(), 3, "JWT-shaped");
    assert_eq!(arm_accepts(&e, tok).await, 200);
    // the double-slash scope SDKs build from "https://management.azure.com/" also works
    let r = post_token(
        &e,
        "tenant-1",
        &secret_form(
            "secret-1",
            "client-1",
            "https://management.azure.com//.default",
        ),
    )
    .await;
    assert_eq!(
        arm_accepts(&e, r.json()["access_token"].as_str().unwrap()).await,
        200
    );
    assert_eq!(e.tb.tokens_issued_by(TokenFlow::ClientSecret), 2);
}

#[tokio::test]
async fn wrong_client_secret_is_401_invalid_client_aadsts7000215() {
    let e = env().await;
    let r = post_token(&e, "tenant-1", &secret_form("nope", "client-1", ARM_SCOPE)).await;
    assert_eq!(r.status, 401);
    assert_eq!(aad_code(&r), ("invalid_client".into(), 7000215));
    let v = r.json();
    assert!(v["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS7000215: Invalid client secret provided."));
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(v[k].is_string(), "{k}");
    }
    assert_eq!(e.tb.tokens_issued(), 0);
}

#[tokio::test]
async fn unknown_tenant_is_400_aadsts90002() {
    let e = env().await;
    let r = post_token(
        &e,
        "other-tenant",
        &secret_form("secret-1", "client-1", ARM_SCOPE),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(aad_code(&r), ("invalid_request".into(), 90002));
}

#[tokio::test]
async fn unknown_client_is_400_unauthorized_client_aadsts700016() {
    let e = env().await;
    let r = post_token(
        &e,
        "tenant-1",
        &secret_form("secret-1", "client-2", ARM_SCOPE),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(aad_code(&r), ("unauthorized_client".into(), 700016));
}

#[tokio::test]
async fn scope_without_default_suffix_is_400_invalid_scope() {
    let e = env().await;
    let r = post_token(
        &e,
        "tenant-1",
        &secret_form("secret-1", "client-1", "https://management.azure.com/"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(aad_code(&r), ("invalid_scope".into(), 1002012));
}

#[tokio::test]
async fn token_endpoint_needs_a_form_body_and_post() {
    let e = env().await;
    let url = format!("{}/tenant-1/oauth2/v2.0/token", e.tb.authority_url());
    let json_body = serde_json::json!({"grant_type": "client_credentials", "client_id": "client-1", "client_secret": "secret-1", "scope": ARM_SCOPE});
    let r = read(e.http.post(&url).json(&json_body).send().await.unwrap()).await;
    assert_eq!(r.status, 400);
    assert_eq!(aad_code(&r), ("invalid_request".into(), 900144));
    let r = read(e.http.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 400);
    assert_eq!(aad_code(&r), ("invalid_request".into(), 900561));
    let r = post_token(&e, "tenant-1", &[("client_id", "client-1")]).await;
    assert_eq!(aad_code(&r), ("invalid_request".into(), 900144));
    assert!(r.text.contains("'grant_type'"));
    let r = post_token(
        &e,
        "tenant-1",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "client-1"),
            ("scope", ARM_SCOPE),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(aad_code(&r), ("invalid_client".into(), 7000218));
}

#[tokio::test]
async fn workload_identity_flow_accepts_the_federated_token_only() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let form = |assertion: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "client-1"),
            ("scope", ARM_SCOPE),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ]
    };
    let r = post_token(&e, "tenant-1", &form("federated-jwt-1")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        arm_accepts(&e, r.json()["access_token"].as_str().unwrap()).await,
        200
    );
    assert_eq!(e.tb.tokens_issued_by(TokenFlow::WorkloadIdentity), 1);

    let r = post_token(&e, "tenant-1", &form("some-other-jwt")).await;
    assert_eq!(r.status, 400);
    assert_eq!(aad_code(&r), ("invalid_client".into(), 700211));
    assert_eq!(e.tb.tokens_issued(), 1);
}

#[tokio::test]
async fn imds_flow_answers_string_numbers_and_the_token_works() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let url = format!("{}/metadata/identity/oauth2/token", e.tb.imds_url());
    for v in ["2018-02-01", "2019-08-01"] {
        let r = read(
            e.http
                .get(&url)
                .query(&[
                    ("api-version", v),
                    ("resource", "https://management.azure.com/"),
                ])
                .header("Metadata", "true")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let j = r.json();
        for k in ["expires_in", "expires_on", "not_before"] {
            let s = j[k]
                .as_str()
                .unwrap_or_else(|| panic!("{k} must be a string"));
            s.parse::<u64>().unwrap();
        }
        assert_eq!(j["refresh_token"], "");
        assert_eq!(j["token_type"], "Bearer");
        assert_eq!(j["resource"], "https://management.azure.com/");
        assert_eq!(j["client_id"], "client-1");
        assert_eq!(
            arm_accepts(&e, j["access_token"].as_str().unwrap()).await,
            200
        );
    }
    // a user-assigned identity selected by the right client_id
    let r = e
        .http
        .get(&url)
        .query(&[
            ("api-version", "2018-02-01"),
            ("resource", "https://management.azure.com/"),
            ("client_id", "client-1"),
        ])
        .header("Metadata", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(e.tb.tokens_issued_by(TokenFlow::Imds), 3);
}

#[tokio::test]
async fn imds_refuses_missing_metadata_header_unknown_identity_and_bad_queries() {
    let e = env().await;
    let url = format!("{}/metadata/identity/oauth2/token", e.tb.imds_url());
    let good = [
        ("api-version", "2018-02-01"),
        ("resource", "https://management.azure.com/"),
    ];
    let r = read(e.http.get(&url).query(&good).send().await.unwrap()).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "invalid_request", "error_description": "Required metadata header not specified"})
    );
    let r = read(
        e.http
            .get(&url)
            .query(&good)
            .query(&[("client_id", "someone-else")])
            .header("Metadata", "true")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error_description"], "Identity not found");
    for q in [
        vec![("resource", "https://management.azure.com/")],
        vec![
            ("api-version", "2099-01-01"),
            ("resource", "https://management.azure.com/"),
        ],
        vec![("api-version", "2018-02-01")],
    ] {
        let r = read(
            e.http
                .get(&url)
                .query(&q)
                .header("Metadata", "true")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 400, "{q:?}");
        assert_eq!(r.json()["error"], "invalid_request");
    }
    assert_eq!(e.tb.tokens_issued(), 0);
}

#[tokio::test]
async fn app_service_msi_flow_needs_the_identity_header() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let url = e.tb.identity_endpoint();
    assert!(url.ends_with("/msi/token"));
    let q = [
        ("api-version", "2019-08-01"),
        ("resource", "https://management.azure.com"),
    ];
    let r = read(
        e.http
            .get(&url)
            .query(&q)
            .header("X-IDENTITY-HEADER", "identity-header-1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let j = r.json();
    assert!(j["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["resource"], "https://management.azure.com");
    assert_eq!(j["client_id"], "client-1");
    assert_eq!(
        arm_accepts(&e, j["access_token"].as_str().unwrap()).await,
        200
    );
    assert_eq!(e.tb.tokens_issued_by(TokenFlow::AppServiceMsi), 1);

    let r = e.http.get(&url).query(&q).send().await.unwrap();
    assert_eq!(r.status(), 400, "missing header");
    let r = e
        .http
        .get(&url)
        .query(&q)
        .header("X-IDENTITY-HEADER", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "wrong header");
    let r = e
        .http
        .get(&url)
        .query(&[
            ("api-version", "2017-09-01"),
            ("resource", "https://management.azure.com"),
        ])
        .header("X-IDENTITY-HEADER", "identity-header-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "wrong api-version");
    let r = e
        .http
        .get(&url)
        .query(&q)
        .query(&[("client_id", "other")])
        .header("X-IDENTITY-HEADER", "identity-header-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown identity");
    assert_eq!(e.tb.tokens_issued(), 1);
}

#[tokio::test]
async fn tokens_issued_counts_http_flows_but_not_issue_token() {
    let e = env().await;
    let before = e.tb.tokens_issued();
    let _ = e.tb.issue_token();
    assert_eq!(e.tb.tokens_issued(), before);
    assert_eq!(
        e.tb.tokens_issued_by(TokenFlow::Direct),
        2,
        "env() minted one too"
    );
    let r = post_token(
        &e,
        "tenant-1",
        &secret_form("secret-1", "client-1", ARM_SCOPE),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(e.tb.tokens_issued(), before + 1);
}

#[tokio::test]
async fn openid_configuration_points_at_the_token_endpoint() {
    let e = env().await;
    let r = read(
        e.http
            .get(format!(
                "{}/tenant-1/v2.0/.well-known/openid-configuration",
                e.tb.authority_url()
            ))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let v: Value = r.json();
    assert_eq!(
        v["token_endpoint"],
        format!("{}/tenant-1/oauth2/v2.0/token", e.tb.authority_url())
    );
}
