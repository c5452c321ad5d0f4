//! The fake NGINX Plus API follows the OpenAPI spec and NGINX's observable behaviour.

use crate::support::common;

use common::*;
use serde_json::{json, Value};
use vmss_testbed::{TestbedOptions, UpstreamKind};

async fn post(e: &Env, path: &str, body: &str) -> Resp {
    read(
        e.http
            .post(e.nginx(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn patch(e: &Env, path: &str, body: &str) -> Resp {
    read(
        e.http
            .patch(e.nginx(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn get(e: &Env, path: &str) -> Resp {
    read(e.http.get(e.nginx(path)).send().await.unwrap()).await
}

async fn delete(e: &Env, path: &str) -> Resp {
    read(e.http.delete(e.nginx(path)).send().await.unwrap()).await
}

/// Asserts an NginxError body with the given status and code; returns its text.
fn nginx_error(r: &Resp, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["status"], status, "{}", r.text);
    assert_eq!(v["error"]["code"], code, "{}", r.text);
    assert!(v["request_id"].as_str().unwrap().len() == 32);
    assert_eq!(
        v["href"],
        "https://nginx.org/en/docs/http/ngx_http_api_module.html"
    );
    v["error"]["text"].as_str().unwrap().to_string()
}

async fn with_backend() -> Env {
    let e = env().await;
    e.tb.nginx().add_upstream(UpstreamKind::Http, "backend");
    e.tb.nginx().add_upstream(UpstreamKind::Stream, "tcp");
    e
}

#[tokio::test]
async fn api_root_lists_versions_and_unknown_versions_are_404() {
    let e = with_backend().await;
    for p in ["", "/"] {
        let r = get(&e, p).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!([1, 2, 3, 4, 5, 6, 7, 8, 9]));
    }
    let r = get(&e, "/10/http/upstreams/backend/servers").await;
    assert_eq!(nginx_error(&r, 404, "UnknownVersion"), "unknown version");
    let r = get(&e, "/x/http/upstreams/backend/servers").await;
    nginx_error(&r, 404, "UnknownVersion");
}

#[tokio::test]
async fn api_versions_follow_options() {
    let e = env_with(TestbedOptions {
        nginx_versions: vec![4, 5, 6, 7, 8],
        ..TestbedOptions::default()
    })
    .await;
    e.tb.nginx().add_upstream(UpstreamKind::Http, "backend");
    assert_eq!(get(&e, "").await.json(), json!([4, 5, 6, 7, 8]));
    nginx_error(
        &get(&e, "/9/http/upstreams/backend/servers").await,
        404,
        "UnknownVersion",
    );
    assert_eq!(
        get(&e, "/8/http/upstreams/backend/servers").await.status,
        200
    );
}

#[tokio::test]
async fn post_fills_nginx_defaults_and_answers_201() {
    let e = with_backend().await;
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers/",
        r#"{"server":"10.0.0.1:8080"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"id":0,"server":"10.0.0.1:8080","weight":1,"max_conns":0,"max_fails":1,
               "fail_timeout":"10s","slow_start":"0s","route":"","backup":false,"down":false})
    );
    // NGINX's own field order
    assert!(
        r.text
            .starts_with(r#"{"id":0,"server":"10.0.0.1:8080","weight":1,"#),
        "{}",
        r.text
    );

    let r = post(
        &e,
        "/9/stream/upstreams/tcp/servers",
        r#"{"server":"10.0.0.1:5432"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(
        r.json(),
        json!({"id":0,"server":"10.0.0.1:5432","weight":1,"max_conns":0,"max_fails":1,
               "fail_timeout":"10s","slow_start":"0s","backup":false,"down":false})
    );

    // a server without a port gets :80, as ngx_parse_url does
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.2"}"#,
    )
    .await;
    assert_eq!(r.json()["server"], "10.0.0.2:80");
    let r = get(&e, "/9/http/upstreams/backend/servers").await;
    assert_eq!(r.status, 200);
    let all = r.json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    assert_eq!(
        all,
        Value::Array(e.tb.nginx().servers(UpstreamKind::Http, "backend"))
    );
}

#[tokio::test]
async fn post_echoes_times_in_seconds_and_refuses_bad_values() {
    let e = with_backend().await;
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.1:80","fail_timeout":"1m","slow_start":"1h1s","weight":5,"max_conns":10,"max_fails":0,"route":"a","backup":true,"down":true}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let v = r.json();
    assert_eq!(v["fail_timeout"], "60s");
    assert_eq!(v["slow_start"], "3601s");
    assert_eq!(
        (
            v["weight"].as_i64(),
            v["max_conns"].as_i64(),
            v["max_fails"].as_i64()
        ),
        (Some(5), Some(10), Some(0))
    );
    assert_eq!(
        (
            v["route"].as_str(),
            v["backup"].as_bool(),
            v["down"].as_bool()
        ),
        (Some("a"), Some(true), Some(true))
    );

    let cases = [
        (
            r#"{"server":"10.0.0.9:80","fail_timeout":"500ms"}"#,
            "UpstreamBadFailTimeout",
        ),
        (
            r#"{"server":"10.0.0.9:80","slow_start":"soon"}"#,
            "UpstreamBadSlowStart",
        ),
        (
            r#"{"server":"10.0.0.9:80","weight":0}"#,
            "UpstreamBadWeight",
        ),
        (
            r#"{"server":"10.0.0.9:80","max_conns":-1}"#,
            "UpstreamBadMaxConns",
        ),
        (
            r#"{"server":"10.0.0.9:80","max_fails":-1}"#,
            "UpstreamBadMaxFails",
        ),
        (
            r#"{"server":"10.0.0.9:80","weight":"5"}"#,
            "UpstreamConfFormatError",
        ),
        (
            r#"{"server":"10.0.0.9:80","route":"0123456789012345678901234567890123"}"#,
            "UpstreamBadRoute",
        ),
        (
            r#"{"server":"10.0.0.9:80","down":{"a":1}}"#,
            "UpstreamConfFormatError",
        ),
        (r#"{"weight":1}"#, "UpstreamConfFormatError"),
    ];
    for (body, code) in cases {
        let r = post(&e, "/9/http/upstreams/backend/servers", body).await;
        nginx_error(&r, 400, code);
    }
    assert_eq!(e.tb.nginx().servers(UpstreamKind::Http, "backend").len(), 1);
}

#[tokio::test]
async fn post_refuses_unknown_parameters_including_id_and_stream_drain() {
    let e = with_backend().await;
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.1:80","foo":1}"#,
    )
    .await;
    assert_eq!(
        nginx_error(&r, 400, "UpstreamConfFormatError"),
        r#"unknown parameter "foo""#
    );
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.1:80","id":3}"#,
    )
    .await;
    assert_eq!(
        nginx_error(&r, 400, "UpstreamConfFormatError"),
        r#"unknown parameter "id""#
    );
    let r = post(
        &e,
        "/9/stream/upstreams/tcp/servers",
        r#"{"server":"10.0.0.1:80","drain":true}"#,
    )
    .await;
    assert_eq!(
        nginx_error(&r, 400, "UpstreamConfFormatError"),
        r#"unknown parameter "drain""#
    );
    let r = post(
        &e,
        "/9/stream/upstreams/tcp/servers",
        r#"{"server":"10.0.0.1:80","route":"x"}"#,
    )
    .await;
    assert_eq!(
        nginx_error(&r, 400, "UpstreamConfFormatError"),
        r#"unknown parameter "route""#
    );
}

#[tokio::test]
async fn post_refuses_bad_addresses_and_duplicates() {
    let e = with_backend().await;
    for bad in [
        "10.0.0.1:99999",
        "10.0.0.1:x",
        "10.0.0.300:80",
        "",
        "a b:80",
    ] {
        let r = post(
            &e,
            "/9/http/upstreams/backend/servers",
            &json!({"server": bad}).to_string(),
        )
        .await;
        nginx_error(&r, 400, "UpstreamBadAddress");
    }
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"backend.example.com:80"}"#,
    )
    .await;
    nginx_error(&r, 400, "UpstreamConfNoResolver");

    let body = r#"{"server":"10.0.0.1:80"}"#;
    assert_eq!(
        post(&e, "/9/http/upstreams/backend/servers", body)
            .await
            .status,
        201
    );
    let r = post(&e, "/9/http/upstreams/backend/servers", body).await;
    assert_eq!(nginx_error(&r, 409, "EntryExists"), "entry exists");
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.1"}"#,
    )
    .await;
    nginx_error(&r, 409, "EntryExists");
}

#[tokio::test]
async fn non_json_body_is_415_json_error() {
    let e = with_backend().await;
    let r = post(&e, "/9/http/upstreams/backend/servers", "server=10.0.0.1").await;
    nginx_error(&r, 415, "JsonError");
    let id = e.tb.nginx().insert_server(
        UpstreamKind::Http,
        "backend",
        json!({"server": "10.0.0.1:80"}),
    );
    let r = patch(
        &e,
        &format!("/9/http/upstreams/backend/servers/{id}"),
        "{not json",
    )
    .await;
    nginx_error(&r, 415, "JsonError");
}

#[tokio::test]
async fn unknown_and_static_upstreams_are_refused() {
    let e = with_backend().await;
    e.tb.nginx()
        .add_static_upstream(UpstreamKind::Http, "fixed");
    let r = get(&e, "/9/http/upstreams/nope/servers").await;
    assert_eq!(
        nginx_error(&r, 404, "UpstreamNotFound"),
        "upstream not found"
    );
    let r = get(&e, "/9/stream/upstreams/backend/servers").await;
    nginx_error(&r, 404, "UpstreamNotFound");
    let r = get(&e, "/9/http/upstreams/fixed/servers").await;
    assert_eq!(nginx_error(&r, 400, "UpstreamStatic"), "upstream is static");
    let r = post(
        &e,
        "/9/http/upstreams/fixed/servers",
        r#"{"server":"10.0.0.1:80"}"#,
    )
    .await;
    nginx_error(&r, 400, "UpstreamStatic");
    let r = get(&e, "/9/http/nothing").await;
    nginx_error(&r, 404, "PathNotFound");
}

#[tokio::test]
async fn patch_changes_parameters_and_refuses_id_address_and_backup_changes() {
    let e = with_backend().await;
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.1:80"}"#,
    )
    .await;
    let id = r.json()["id"].as_u64().unwrap();
    let path = format!("/9/http/upstreams/backend/servers/{id}/");

    // what the Go client sends: the whole server, without id, trailing slash
    let r = patch(
        &e,
        &path,
        r#"{"server":"10.0.0.1:80","weight":3,"max_fails":2,"fail_timeout":"2m","down":true}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (v["weight"].as_i64(), v["max_fails"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(v["fail_timeout"], "120s");
    assert_eq!(v["down"], true);
    assert_eq!(v["id"], id);

    let r = patch(&e, &path, r#"{"id":0,"weight":1}"#).await;
    assert_eq!(
        nginx_error(&r, 400, "UpstreamConfFormatError"),
        r#"unknown parameter "id""#
    );
    let r = patch(&e, &path, r#"{"server":"10.0.0.2:80"}"#).await;
    assert_eq!(
        nginx_error(&r, 400, "UpstreamServerImmutable"),
        format!("server \"{id}\" address is immutable")
    );
    let r = patch(&e, &path, r#"{"backup":true}"#).await;
    nginx_error(&r, 400, "UpstreamServerImmutable");
    let r = patch(&e, &path, r#"{"backup":false,"server":"10.0.0.1"}"#).await;
    assert_eq!(r.status, 200, "unchanged values are accepted: {}", r.text);
    let r = patch(&e, &path, r#"{"weight":0}"#).await;
    nginx_error(&r, 400, "UpstreamBadWeight");

    let r = patch(
        &e,
        "/9/http/upstreams/backend/servers/77",
        r#"{"weight":1}"#,
    )
    .await;
    assert_eq!(
        nginx_error(&r, 404, "UpstreamServerNotFound"),
        r#"server with ID "77" does not exist"#
    );
    let r = patch(
        &e,
        "/9/http/upstreams/backend/servers/abc",
        r#"{"weight":1}"#,
    )
    .await;
    nginx_error(&r, 400, "UpstreamBadServerId");
    assert_eq!(
        get(&e, &format!("/9/http/upstreams/backend/servers/{id}"))
            .await
            .json()["weight"],
        3
    );
}

#[tokio::test]
async fn drain_is_http_only_and_shows_as_draining_peer() {
    let e = with_backend().await;
    let id = e.tb.nginx().insert_server(
        UpstreamKind::Http,
        "backend",
        json!({"server": "10.0.0.1:80"}),
    );
    let r = patch(
        &e,
        &format!("/9/http/upstreams/backend/servers/{id}"),
        r#"{"drain":true}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["drain"], true);
    let up = get(&e, "/9/http/upstreams/backend").await.json();
    assert_eq!(up["peers"][0]["state"], "draining");
    assert_eq!(up["zone"], "backend");

    let sid = e.tb.nginx().insert_server(
        UpstreamKind::Stream,
        "tcp",
        json!({"server": "10.0.0.1:80"}),
    );
    let r = patch(
        &e,
        &format!("/9/stream/upstreams/tcp/servers/{sid}"),
        r#"{"drain":true}"#,
    )
    .await;
    nginx_error(&r, 400, "UpstreamConfFormatError");
    let r = patch(
        &e,
        &format!("/9/stream/upstreams/tcp/servers/{sid}"),
        r#"{"down":true}"#,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&e, "/9/stream/upstreams/tcp").await.json()["peers"][0]["state"],
        "down"
    );
}

#[tokio::test]
async fn delete_answers_200_with_remaining_servers_and_ids_are_not_reused() {
    let e = with_backend().await;
    for ip in ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] {
        post(
            &e,
            "/9/http/upstreams/backend/servers",
            &json!({"server": ip}).to_string(),
        )
        .await;
    }
    let r = delete(&e, "/9/http/upstreams/backend/servers/1/").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<u64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 2]);
    let r = delete(&e, "/9/http/upstreams/backend/servers/1").await;
    nginx_error(&r, 404, "UpstreamServerNotFound");
    let r = post(
        &e,
        "/9/http/upstreams/backend/servers",
        r#"{"server":"10.0.0.4:80"}"#,
    )
    .await;
    assert_eq!(r.json()["id"], 3);
    assert_eq!(
        e.tb.nginx().server_addresses(UpstreamKind::Http, "backend"),
        ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80"]
    );
}

#[tokio::test]
async fn same_api_is_served_under_nplus() {
    let e = with_backend().await;
    let url = format!(
        "{}/9/http/upstreams/backend/servers",
        e.tb.nginx_nplus_url()
    );
    assert!(url.contains("/nplus/9/"));
    let r = e
        .http
        .post(&url)
        .body(r#"{"server":"10.0.0.1:80"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        get(&e, "/9/http/upstreams/backend/servers")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let e = env_with(TestbedOptions {
        nginx_api_key: Some("k-123".into()),
        ..TestbedOptions::default()
    })
    .await;
    e.tb.nginx().add_upstream(UpstreamKind::Http, "backend");
    let url = format!(
        "{}/9/http/upstreams/backend/servers",
        e.tb.nginx_nplus_url()
    );
    let r = read(e.http.get(&url).send().await.unwrap()).await;
    nginx_error(&r, 401, "Unauthorized");
    let r = read(
        e.http
            .get(&url)
            .header("Authorization", "ApiKey wrong")
            .send()
            .await
            .unwrap(),
    )
    .await;
    nginx_error(&r, 401, "Unauthorized");
    let r = read(e.http.get(&url).bearer_auth("k-123").send().await.unwrap()).await;
    nginx_error(&r, 401, "Unauthorized");
    let r = e
        .http
        .get(&url)
        .header("Authorization", "ApiKey k-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn wrong_methods_are_405() {
    let e = with_backend().await;
    let r = read(
        e.http
            .put(e.nginx("/9/http/upstreams/backend/servers"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    nginx_error(&r, 405, "MethodNotAllowed");
    let r = post(&e, "/9/http/upstreams/backend/servers/0", "{}").await;
    nginx_error(&r, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn upstream_map_lists_dynamic_upstreams_with_peers() {
    let e = with_backend().await;
    e.tb.nginx().insert_server(
        UpstreamKind::Http,
        "backend",
        json!({"server": "10.0.0.1:80", "backup": true}),
    );
    let v = get(&e, "/9/http/upstreams").await.json();
    assert_eq!(v["backend"]["peers"][0]["server"], "10.0.0.1:80");
    assert_eq!(v["backend"]["peers"][0]["backup"], true);
    assert_eq!(v["backend"]["peers"][0]["state"], "up");
    let v = get(&e, "/9/stream/upstreams").await.json();
    assert!(v["tcp"]["peers"].as_array().unwrap().is_empty());
}
