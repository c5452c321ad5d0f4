//! The HAProxy Data Plane API target against the testbed's strict fake Data Plane API:
//! through the real binary (slots, one transaction per change, conflicts retried from a
//! fresh transaction, basic auth, v3 and v2 paths, backends never deleted), and through the
//! library over real sockets for batches (one transaction for every backend of a cycle, a
//! failing backend failing alone, backends of services created in the batch, listing
//! backends by prefix).

use crate::support::common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
use vmss_sync::config::{
    DataplaneApiVersion, HaproxyDataplaneTarget, Secret, ServerSlots, SlotGrowth, UpstreamKind,
};
use vmss_sync::model::{ServerParams, ServerState};
use vmss_sync::plan::{Plan, Removal};
use vmss_sync::target::haproxy_dataplane::{HaproxyDataplane, MAX_ATTEMPTS};
use vmss_sync::target::{ApplyReport, Target, UpstreamRef};
use vmss_testbed::{
    dataplane_server, Fault, Orchestration, Service, TestbedOptions, DATAPLANE_PASSWORD,
    DATAPLANE_USER,
};

const PW_VAR: &str = "DPAPI_PASSWORD";

fn target(env: &Env, extra: &str) -> String {
    format!(
        "targets:\n  remote:\n    type: haproxy_dataplane\n    url: {}\n    username: {DATAPLANE_USER}\n    password: ${{{PW_VAR}}}\n{extra}",
        env.tb.dataplane_url()
    )
}

/// An upstream on the Data Plane API target whose leaving servers are removed at once.
fn upstream(name: &str, set: &str) -> String {
    upstream_draining(name, set, "0s")
}

fn upstream_draining(name: &str, set: &str, drain: &str) -> String {
    format!(
        "  - name: {name}\n    virtual_machine_scale_set: {set}\n    port: 8080\n    kind: http\n    max_conns: 100\n    slow_start: 5s\n    target: remote\n    drain_timeout: {drain}\n"
    )
}

fn env_with(env: &Env, password: &str) -> Vec<(String, String)> {
    let mut e = env.sp_env();
    e.push((PW_VAR.into(), password.into()));
    e
}

/// Managed slots of a backend: (name, address:port or "free").
fn slots(env: &Env, backend: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = env
        .tb
        .dataplane()
        .servers(backend)
        .iter()
        .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("vmss-")))
        .map(|s| {
            let state = if s["maintenance"] == "enabled" {
                "free".to_string()
            } else {
                format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"])
            };
            (s["name"].as_str().unwrap_or("").to_string(), state)
        })
        .collect();
    v.sort_by_key(|(n, _)| n.trim_start_matches("vmss-").parse::<u32>().unwrap_or(0));
    v
}

fn held(env: &Env, backend: &str) -> Vec<String> {
    let mut v: Vec<String> = slots(env, backend)
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s != "free")
        .collect();
    v.sort();
    v
}

fn transactions_started(env: &Env) -> usize {
    env.tb
        .requests_to(Service::Dataplane)
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/transactions"))
        .count()
}

/// A fleet `set` of `n` instances and a Data Plane API with backend `web` holding one
/// server of its own.
async fn setup(set: &str, n: usize) -> Env {
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, set, Orchestration::Uniform, "eastus");
    env.tb.fleet().scale_to(SUB, RG, set, n);
    env.tb.dataplane().add_backend("web");
    env.tb
        .dataplane()
        .insert_server("web", dataplane_server("static1", "192.0.2.10", 80));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_slots_follow_scale_out_and_scale_in_with_one_transaction_per_change() {
    let env = setup("web", 3).await;
    let cfg = env.config(
        &target(
            &env,
            "    server_slots: {base: 4, growth_type: linear, growth_factor: 1}\n",
        ),
        &upstream("web", "web"),
    );
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let secrets = env_with(&env, DATAPLANE_PASSWORD);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(held(&env, "web"), env.ips("web", 8080));
    assert_eq!(
        slots(&env, "web").len(),
        4,
        "base slots: {:?}",
        slots(&env, "web")
    );
    let used = env.tb.dataplane().servers("web");
    let first = used.iter().find(|s| s["name"] == "vmss-1").unwrap();
    assert_eq!(first["maxconn"], 100);
    assert_eq!(
        first["slowstart"], 5000,
        "slow_start maps to HAProxy's slowstart (ms)"
    );
    assert_eq!(first["maintenance"], "disabled");
    assert_eq!(
        env.tb.dataplane().commits(),
        1,
        "one transaction, one commit"
    );
    assert!(!out.stderr.contains(DATAPLANE_PASSWORD), "{}", out.stderr);

    let started = transactions_started(&env);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        transactions_started(&env),
        started,
        "nothing changed: no transaction"
    );
    assert_eq!(env.tb.dataplane().commits(), 1);

    env.tb.fleet().scale_to(SUB, RG, "web", 7);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(held(&env, "web"), env.ips("web", 8080));
    assert_eq!(
        slots(&env, "web").len(),
        7,
        "linear growth: 4 + ceil(3 × 1)"
    );
    assert_eq!(env.tb.dataplane().commits(), 2);

    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(held(&env, "web"), env.ips("web", 8080));
    let s = slots(&env, "web");
    assert_eq!(s.len(), 4, "shrunk back to the base: {s:?}");
    assert_eq!(env.tb.dataplane().commits(), 3);

    env.tb.fleet().scale_to(SUB, RG, "web", 0);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(held(&env, "web").is_empty());
    assert!(
        slots(&env, "web").iter().all(|(_, s)| s == "free"),
        "an empty set leaves its slots in maintenance"
    );
    assert_eq!(
        env.tb.dataplane().backends(),
        ["web"],
        "the backend is never deleted"
    );
    assert!(
        env.tb
            .dataplane()
            .servers("web")
            .iter()
            .any(|s| s["name"] == "static1"),
        "servers vmss-sync does not manage are left alone"
    );
    assert!(env
        .tb
        .dataplane()
        .transactions()
        .iter()
        .all(|(_, status)| status == "success"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_version_conflicts_restart_from_a_fresh_transaction_at_most_three_times() {
    let env = setup("web", 2).await;
    let cfg = env.config(&target(&env, ""), &upstream("web", "web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let secrets = env_with(&env, DATAPLANE_PASSWORD);
    env.tb.dataplane().inject_commit_conflicts(2, 406);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(held(&env, "web"), env.ips("web", 8080));
    assert_eq!(
        transactions_started(&env),
        3,
        "two conflicts, then a fresh transaction"
    );
    assert_eq!(env.tb.dataplane().commits(), 1);

    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    env.tb.dataplane().inject_commit_conflicts(3, 409);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("changed under 3 transactions in a row"),
        "{}",
        out.stderr
    );
    assert_eq!(held(&env, "web").len(), 2, "nothing half-applied");
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "the next cycle succeeds: {}", out.stderr);
    assert_eq!(held(&env, "web"), env.ips("web", 8080));
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_wrong_password_fails_startup_without_showing_the_password() {
    let env = setup("web", 2).await;
    let cfg = env.config(&target(&env, ""), &upstream("web", "web"));
    let out = run(
        &["once", "--config", cfg.to_str().unwrap()],
        &env_with(&env, "wrong-pw-1234"),
    )
    .await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("check username and password"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("wrong-pw-1234"), "{}", out.stderr);
    assert!(env
        .tb
        .requests_to(Service::Dataplane)
        .iter()
        .all(|r| r.status == 401));
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_missing_backend_is_a_startup_error_and_is_not_created() {
    let env = setup("web", 2).await;
    let cfg = env.config(&target(&env, ""), &upstream("api", "web"));
    let out = run(
        &["once", "--config", cfg.to_str().unwrap()],
        &env_with(&env, DATAPLANE_PASSWORD),
    )
    .await;
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("backend api does not exist"),
        "{}",
        out.stderr
    );
    assert_eq!(env.tb.dataplane().backends(), ["web"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_v2_paths_work_too() {
    let env = setup("web", 3).await;
    let cfg = env.config(
        &target(&env, "    api_version: v2\n"),
        &upstream("web", "web"),
    );
    let out = run(
        &["once", "--config", cfg.to_str().unwrap()],
        &env_with(&env, DATAPLANE_PASSWORD),
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(held(&env, "web"), env.ips("web", 8080));
    let reqs = env.tb.requests_to(Service::Dataplane);
    assert!(reqs.iter().all(|r| r.path.starts_with("/v2/")), "{reqs:?}");
    assert!(reqs
        .iter()
        .any(|r| r.path == "/v2/services/haproxy/configuration/servers"
            && r.query.contains("backend=web")));
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_fake_is_strict_about_auth_fields_and_versions() {
    let env = testbed(TestbedOptions::default()).await;
    env.tb.dataplane().add_backend("web");
    let base = env.tb.dataplane_url();
    let http = reqwest::Client::new();
    let servers = format!("{base}/v3/services/haproxy/configuration/backends/web/servers");
    let r = http.get(&servers).send().await.unwrap();
    assert_eq!(r.status(), 401, "basic auth required");
    let r = http
        .post(&servers)
        .basic_auth(DATAPLANE_USER, Some(DATAPLANE_PASSWORD))
        .json(&serde_json::json!({"name": "a", "address": "10.0.0.1", "port": 80, "colour": "red"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "unknown fields are refused");
    let r = http
        .post(format!(
            "{base}/v3/services/haproxy/transactions?version=999"
        ))
        .basic_auth(DATAPLANE_USER, Some(DATAPLANE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a stale version is a conflict");
    let r = http
        .get(format!(
            "{base}/v3/services/haproxy/configuration/backends/nope/servers"
        ))
        .basic_auth(DATAPLANE_USER, Some(DATAPLANE_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_leaving_servers_drain_with_weight_zero_then_free_their_slot() {
    let env = setup("web", 3).await;
    let cfg = env.config(&target(&env, ""), &upstream_draining("web", "web", "2s"));
    let mut daemon = Daemon::run(&env, &cfg)
        .env(&env_with(&env, DATAPLANE_PASSWORD))
        .log("vmss-sync.log")
        .spawn();
    let all = env.ips("web", 8080);
    daemon
        .until(
            std::time::Duration::from_secs(20),
            "held(&env, \"web\") == all",
            || held(&env, "web") == all,
        )
        .await;
    env.tb.fleet().scale_to(SUB, RG, "web", 2);
    let want = env.ips("web", 8080);
    let leaving: Vec<String> = all.iter().filter(|a| !want.contains(a)).cloned().collect();
    let weight_zero = |env: &Env| -> Vec<String> {
        env.tb
            .dataplane()
            .servers("web")
            .iter()
            .filter(|s| s["weight"] == 0 && s["maintenance"] == "disabled")
            .map(|s| format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]))
            .collect()
    };
    assert!(
        eventually(std::time::Duration::from_secs(20), || weight_zero(&env)
            == leaving)
        .await,
        "the leaving server drains with weight 0 first\n{}",
        daemon.log_text()
    );
    assert!(
        eventually(std::time::Duration::from_secs(20), || held(&env, "web")
            == want)
        .await,
        "then its slot is freed\n{}",
        daemon.log_text()
    );
    assert!(weight_zero(&env).is_empty());
    daemon.signal("TERM");
    assert_eq!(daemon.wait(std::time::Duration::from_secs(10)).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_creates_a_missing_backend_when_asked_and_fills_its_slots() {
    let env = setup("web", 2).await;
    let cfg = env.config(
        &target(
            &env,
            "    create_backends: true\n    server_slots: {base: 3}\n",
        ),
        &upstream("api", "web"),
    );
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let secrets = env_with(&env, DATAPLANE_PASSWORD);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.tb.dataplane().backends(), ["api", "web"]);
    let api = env
        .tb
        .dataplane()
        .backend("api")
        .expect("created through the API");
    assert_eq!(api["mode"], "http");
    assert_eq!(api["balance"]["algorithm"], "roundrobin");
    assert_eq!(held(&env, "api"), env.ips("web", 8080));
    assert_eq!(slots(&env, "api").len(), 3);
    assert_eq!(
        env.tb.dataplane().commits(),
        1,
        "created and filled in one transaction"
    );
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.tb.dataplane().commits(), 1, "nothing more to do");
}

// ---- Batches, through the library -------------------------------------------------------

/// The Data Plane API target of `env`'s fake: slots `vmss-1…`, base 2, linear growth.
fn dataplane_target(
    env: &Env,
    version: DataplaneApiVersion,
    create_backends: bool,
) -> HaproxyDataplane {
    let cfg = HaproxyDataplaneTarget {
        url: url::Url::parse(&env.tb.dataplane_url()).expect("fake URL"),
        api_version: version,
        username: DATAPLANE_USER.into(),
        password: Secret::new(DATAPLANE_PASSWORD),
        server_prefix: "vmss-".into(),
        server_slots: ServerSlots {
            base: 2,
            growth_factor: 1.0,
            growth_type: SlotGrowth::Linear,
        },
        check: false,
        create_backends,
        balance: "roundrobin".into(),
        timeout: Duration::from_secs(5),
        ca_file: None,
    };
    HaproxyDataplane::new(&cfg, BTreeMap::new(), BTreeMap::new()).expect("target builds")
}

fn params() -> ServerParams {
    ServerParams {
        max_conns: 0,
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
        slow_start: Duration::ZERO,
    }
}

fn adds(servers: &[&str]) -> Plan {
    Plan {
        add: servers.iter().map(|s| (s.to_string(), params())).collect(),
        ..Plan::default()
    }
}

fn backend(name: &str) -> UpstreamRef {
    UpstreamRef::new(name, UpstreamKind::Http)
}

/// The backend of a service found by tags: created when missing.
fn service_backend(name: &str) -> UpstreamRef {
    UpstreamRef {
        create: true,
        ..backend(name)
    }
}

fn errors(report: &ApplyReport) -> Vec<String> {
    report.errors.iter().map(|e| e.message.clone()).collect()
}

/// A testbed whose fake Data Plane API holds the empty backends `names`.
async fn dataplane_with(names: &[&str]) -> Env {
    let env = testbed(TestbedOptions::default()).await;
    for n in names {
        env.tb.dataplane().add_backend(n);
    }
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_batch_of_three_backends_is_one_transaction_and_one_commit_holding_all_three() {
    let env = dataplane_with(&["a", "b", "c"]).await;
    let target = dataplane_target(&env, DataplaneApiVersion::V3, false);
    assert!(
        target.batches(),
        "the reconciler must hand it a whole cycle"
    );
    let items = vec![
        (backend("a"), adds(&["10.0.0.1:80"])),
        (backend("b"), adds(&["10.0.0.2:80", "10.0.0.3:80"])),
        (
            backend("c"),
            adds(&["10.0.0.4:80", "10.0.0.5:80", "10.0.0.6:80"]),
        ),
    ];
    let reports = target.apply_batch(&items).await;
    assert_eq!(reports.len(), 3, "one report per item");
    for (report, (_, plan)) in reports.iter().zip(&items) {
        assert!(report.errors.is_empty(), "{:?}", errors(report));
        let want: Vec<String> = plan.add.iter().map(|(s, _)| s.clone()).collect();
        assert_eq!(
            report.added, want,
            "reports list what was added, per backend"
        );
    }
    assert_eq!(transactions_started(&env), 1);
    assert_eq!(env.tb.dataplane().transactions_committed(), 1);
    assert_eq!(env.tb.dataplane().commits(), 1, "one HAProxy reload");
    assert_eq!(env.tb.dataplane().active_addresses("a"), ["10.0.0.1:80"]);
    assert_eq!(
        env.tb.dataplane().active_addresses("b"),
        ["10.0.0.2:80", "10.0.0.3:80"]
    );
    assert_eq!(
        env.tb.dataplane().active_addresses("c"),
        ["10.0.0.4:80", "10.0.0.5:80", "10.0.0.6:80"]
    );
    assert_eq!(slots(&env, "c").len(), 3, "grown past the base of 2");

    // Observed back, nothing left to do: an empty batch item opens no transaction.
    let observed = target.observe(&backend("b")).await.expect("observe");
    assert_eq!(observed.len(), 2);
    assert!(observed.iter().all(|o| o.state == ServerState::Active));
    let reports = target.apply_batch(&[(backend("a"), Plan::default())]).await;
    assert!(reports[0].errors.is_empty());
    assert_eq!(
        transactions_started(&env),
        1,
        "nothing to write: no transaction"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_batch_missing_backend_that_may_not_be_created_fails_only_its_item() {
    let env = dataplane_with(&["a", "c"]).await;
    let target = dataplane_target(&env, DataplaneApiVersion::V3, false);
    let reports = target
        .apply_batch(&[
            (backend("a"), adds(&["10.0.0.1:80"])),
            (backend("missing"), adds(&["10.0.0.2:80"])),
            (backend("c"), adds(&["10.0.0.3:80"])),
        ])
        .await;
    assert!(reports[0].errors.is_empty(), "{:?}", errors(&reports[0]));
    assert!(reports[2].errors.is_empty(), "{:?}", errors(&reports[2]));
    assert_eq!(reports[1].errors.len(), 1);
    assert!(
        reports[1].errors[0]
            .message
            .contains("backend missing does not exist"),
        "{:?}",
        errors(&reports[1])
    );
    assert!(
        reports[1].added.is_empty(),
        "a failed item reports nothing done"
    );
    assert_eq!(
        transactions_started(&env),
        1,
        "the others in the same transaction"
    );
    assert_eq!(env.tb.dataplane().transactions_committed(), 1);
    assert_eq!(env.tb.dataplane().active_addresses("a"), ["10.0.0.1:80"]);
    assert_eq!(env.tb.dataplane().active_addresses("c"), ["10.0.0.3:80"]);
    assert_eq!(env.tb.dataplane().backends(), ["a", "c"], "not created");
    assert!(target.check(&backend("missing")).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_batch_creates_a_service_backend_inside_the_batch_transaction() {
    let env = dataplane_with(&["a"]).await;
    // create_backends is off: only backends of services found by tags are created.
    let target = dataplane_target(&env, DataplaneApiVersion::V3, false);
    let svc = service_backend("svc-web-8080-eastus");
    target
        .check(&svc)
        .await
        .expect("a missing service backend passes the check");
    assert!(
        target.observe(&svc).await.expect("observe").is_empty(),
        "a missing service backend is observed empty"
    );
    assert_eq!(transactions_started(&env), 0);
    let reports = target
        .apply_batch(&[
            (backend("a"), adds(&["10.0.0.1:80"])),
            (svc.clone(), adds(&["10.0.0.7:8080", "10.0.0.8:8080"])),
        ])
        .await;
    assert!(reports.iter().all(|r| r.errors.is_empty()), "{reports:?}");
    assert_eq!(reports[1].added, ["10.0.0.7:8080", "10.0.0.8:8080"]);
    assert_eq!(transactions_started(&env), 1);
    assert_eq!(
        env.tb.dataplane().transactions_committed(),
        1,
        "created and filled with the other backend in one transaction"
    );
    assert_eq!(env.tb.dataplane().backends(), ["a", "svc-web-8080-eastus"]);
    let created = env
        .tb
        .dataplane()
        .backend("svc-web-8080-eastus")
        .expect("created through the API");
    assert_eq!(created["mode"], "http");
    assert_eq!(created["balance"]["algorithm"], "roundrobin");
    assert_eq!(
        env.tb.dataplane().active_addresses("svc-web-8080-eastus"),
        ["10.0.0.7:8080", "10.0.0.8:8080"]
    );
    assert_eq!(target.observe(&svc).await.expect("observe").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_batch_version_conflicts_restart_the_whole_batch_at_most_three_times() {
    assert_eq!(MAX_ATTEMPTS, 3);
    let env = dataplane_with(&["a", "b"]).await;
    let target = dataplane_target(&env, DataplaneApiVersion::V3, false);
    env.tb.dataplane().inject_commit_conflicts(2, 406);
    let reports = target
        .apply_batch(&[
            (backend("a"), adds(&["10.0.0.1:80"])),
            (backend("b"), adds(&["10.0.0.2:80"])),
        ])
        .await;
    assert!(reports.iter().all(|r| r.errors.is_empty()), "{reports:?}");
    assert_eq!(
        reports[0].added,
        ["10.0.0.1:80"],
        "reported once, not per attempt"
    );
    assert_eq!(
        transactions_started(&env),
        3,
        "two conflicts, then a fresh transaction"
    );
    assert_eq!(env.tb.dataplane().transactions_committed(), 1);
    assert_eq!(env.tb.dataplane().active_addresses("a"), ["10.0.0.1:80"]);
    assert_eq!(env.tb.dataplane().active_addresses("b"), ["10.0.0.2:80"]);

    env.tb.dataplane().inject_commit_conflicts(3, 409);
    let reports = target
        .apply_batch(&[
            (backend("a"), adds(&["10.0.0.3:80"])),
            (backend("b"), adds(&["10.0.0.4:80"])),
        ])
        .await;
    assert_eq!(
        transactions_started(&env),
        6,
        "three more transactions, no fourth"
    );
    assert_eq!(env.tb.dataplane().transactions_committed(), 1);
    for (report, name) in reports.iter().zip(["a", "b"]) {
        assert_eq!(report.errors.len(), 1, "{:?}", errors(report));
        let message = &report.errors[0].message;
        assert!(
            message.contains(&format!("backend {name}"))
                && message.contains("changed under 3 transactions in a row"),
            "{message}"
        );
    }
    assert_eq!(
        env.tb.dataplane().active_addresses("a"),
        ["10.0.0.1:80"],
        "nothing half-applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_batch_write_refused_after_staged_writes_drops_that_backend_and_commits_the_others(
) {
    let env = dataplane_with(&["a", "b"]).await;
    for n in 1..=2 {
        env.tb.dataplane().insert_server(
            "b",
            dataplane_server(&format!("vmss-{n}"), &format!("10.0.1.{n}"), 80),
        );
    }
    let target = dataplane_target(&env, DataplaneApiVersion::V3, false);
    // Emptying b writes slot 1 then slot 2; the write of slot 2 is refused.
    env.tb.faults().inject(
        Service::Dataplane,
        "/backends/b/servers/vmss-2",
        Fault::Status {
            status: 400,
            code: "400".into(),
            message: "refused for the test".into(),
            retry_after: None,
        },
        1,
    );
    let empty_b = Plan {
        remove: (1..=2u64)
            .map(|n| Removal {
                id: n,
                server: format!("10.0.1.{n}:80"),
                state: ServerState::Active,
            })
            .collect(),
        ..Plan::default()
    };
    let reports = target
        .apply_batch(&[
            (backend("a"), adds(&["10.0.0.1:80"])),
            (backend("b"), empty_b),
        ])
        .await;
    assert!(reports[0].errors.is_empty(), "{:?}", errors(&reports[0]));
    assert_eq!(reports[0].added, ["10.0.0.1:80"]);
    assert_eq!(reports[1].errors.len(), 1, "{:?}", errors(&reports[1]));
    assert!(
        reports[1].errors[0].message.contains("400"),
        "{:?}",
        errors(&reports[1])
    );
    assert!(reports[1].removed.is_empty());
    assert_eq!(
        env.tb.dataplane().active_addresses("b"),
        ["10.0.1.1:80", "10.0.1.2:80"],
        "b's staged write of slot 1 was dropped with its transaction"
    );
    assert_eq!(env.tb.dataplane().active_addresses("a"), ["10.0.0.1:80"]);
    assert_eq!(
        transactions_started(&env),
        2,
        "a fresh transaction without b"
    );
    assert_eq!(env.tb.dataplane().transactions_committed(), 1);
    assert!(
        env.tb
            .dataplane()
            .transactions()
            .iter()
            .all(|(_, status)| status == "success"),
        "the dropped transaction was deleted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_batch_server_error_fails_every_item_and_commits_nothing() {
    let env = dataplane_with(&["a", "b"]).await;
    let target = dataplane_target(&env, DataplaneApiVersion::V3, false);
    env.tb.faults().inject(
        Service::Dataplane,
        "/backends/b/servers",
        Fault::Status {
            status: 500,
            code: "500".into(),
            message: "broken".into(),
            retry_after: None,
        },
        usize::MAX,
    );
    let reports = target
        .apply_batch(&[
            (backend("a"), adds(&["10.0.0.1:80"])),
            (backend("b"), adds(&["10.0.0.2:80"])),
        ])
        .await;
    env.tb.faults().clear();
    assert!(
        reports
            .iter()
            .all(|r| r.errors.len() == 1 && r.added.is_empty()),
        "{reports:?}"
    );
    assert_eq!(env.tb.dataplane().transactions_committed(), 0);
    assert!(env.tb.dataplane().active_addresses("a").is_empty());
    assert!(!format!("{reports:?}").contains(DATAPLANE_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_list_upstreams_returns_the_backend_names_starting_with_the_prefix() {
    let env = dataplane_with(&["svc-api-443-westus", "svc-web-80-eastus", "svcx", "web"]).await;
    for version in [DataplaneApiVersion::V3, DataplaneApiVersion::V2] {
        let target = dataplane_target(&env, version, false);
        let names = target
            .list_upstreams("svc-")
            .await
            .expect("list")
            .expect("the Data Plane API can list its backends");
        assert_eq!(
            names,
            ["svc-api-443-westus", "svc-web-80-eastus"],
            "{version:?}"
        );
        assert_eq!(
            target.list_upstreams("none-").await.expect("list"),
            Some(Vec::new())
        );
    }
    let reqs = env.tb.requests_to(Service::Dataplane);
    for path in [
        "/v3/services/haproxy/configuration/backends",
        "/v2/services/haproxy/configuration/backends",
    ] {
        assert!(
            reqs.iter().any(|r| r.method == "GET" && r.path == path),
            "{path}"
        );
    }
}

/// A template over the whole resource group with the default service tags.
const SERVICES_TEMPLATE: &str = "  - name: azure\n    target: remote\n    services: {}\n    \
     kind: http\n    register_when: always\n    drain_timeout: 0s\n";

/// web:80 on a Uniform set `web` in West Europe and on a standalone VM in East US;
/// api:8080 on a Flexible set `api` in East US; an untagged set that no backend gets; a
/// Data Plane API with a backend `other` of its own.
async fn services_fleet() -> Env {
    let env = testbed(TestbedOptions::default()).await;
    let f = env.tb.fleet();
    f.add_scale_set(SUB, RG, "web", Orchestration::Uniform, "West Europe");
    f.set_tag(SUB, RG, "web", "HAProxy:Service:Name", Some("web"));
    f.set_tag(SUB, RG, "web", "HAProxy:Service:Port", Some("80"));
    f.scale_to(SUB, RG, "web", 2);
    f.add_vm(SUB, RG, "vm-east", Some("10.9.0.1".parse().unwrap()));
    f.set_vm_tag(SUB, RG, "vm-east", "HAProxy:Service:Name", Some("web"));
    f.set_vm_tag(SUB, RG, "vm-east", "HAProxy:Service:Port", Some("80"));
    f.add_scale_set(SUB, RG, "api", Orchestration::Flexible, "eastus");
    f.set_tag(SUB, RG, "api", "HAProxy:Service:Name", Some("api"));
    f.set_tag(SUB, RG, "api", "HAProxy:Service:Port", Some("8080"));
    f.scale_to(SUB, RG, "api", 2);
    f.add_scale_set(SUB, RG, "plain", Orchestration::Uniform, "eastus");
    f.scale_to(SUB, RG, "plain", 2);
    env.tb.dataplane().add_backend("other");
    env
}

/// Backends whose names start with `azure-`, each with the addresses it holds.
fn service_backends(env: &Env) -> BTreeMap<String, Vec<String>> {
    env.tb
        .dataplane()
        .backends()
        .into_iter()
        .filter(|b| b.starts_with("azure-"))
        .map(|b| {
            let held = held(env, &b);
            (b, held)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_services_found_by_tags_get_backends_per_region_in_one_transaction_and_are_emptied_never_deleted(
) {
    let env = services_fleet().await;
    let f = env.tb.fleet();
    let cfg = env.config(&target(&env, "    balance: leastconn\n"), SERVICES_TEMPLATE);
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let secrets = env_with(&env, DATAPLANE_PASSWORD);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let want = BTreeMap::from([
        ("azure-api-8080-eastus".to_string(), env.ips("api", 8080)),
        (
            "azure-web-80-eastus".to_string(),
            vec!["10.9.0.1:80".to_string()],
        ),
        ("azure-web-80-westeurope".to_string(), env.ips("web", 80)),
    ]);
    assert_eq!(service_backends(&env), want, "{}", out.stderr);
    assert_eq!(
        env.tb.dataplane().transactions_committed(),
        1,
        "three backends created and filled in one transaction"
    );
    let created = env
        .tb
        .dataplane()
        .backend("azure-web-80-eastus")
        .expect("created through the API");
    assert_eq!(created["mode"], "http");
    assert_eq!(
        created["balance"]["algorithm"], "leastconn",
        "the target's balance"
    );

    // Scale-out of one service and nothing else: one more transaction.
    f.scale_to(SUB, RG, "web", 3);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        service_backends(&env)["azure-web-80-westeurope"],
        env.ips("web", 80)
    );
    assert_eq!(env.tb.dataplane().transactions_committed(), 2);

    // The api service goes away (its tags are removed): its backend is emptied into
    // maintenance, never deleted, in the same kind of single transaction.
    f.set_tag(SUB, RG, "api", "HAProxy:Service:Name", None);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let now = service_backends(&env);
    assert_eq!(
        now["azure-api-8080-eastus"],
        Vec::<String>::new(),
        "{}",
        out.stderr
    );
    assert_eq!(now["azure-web-80-westeurope"], env.ips("web", 80));
    assert_eq!(env.tb.dataplane().transactions_committed(), 3);
    assert!(env.tb.dataplane().backends().contains(&"other".to_string()));

    // A read that finds no service at all proves nothing: every server stays.
    f.set_tag(SUB, RG, "web", "HAProxy:Service:Name", None);
    f.set_vm_tag(SUB, RG, "vm-east", "HAProxy:Service:Name", None);
    let out = run(&args, &secrets).await;
    let after = service_backends(&env);
    assert_eq!(
        after["azure-web-80-westeurope"],
        env.ips("web", 80),
        "held: {}",
        out.stderr
    );
    assert_eq!(after["azure-web-80-eastus"], ["10.9.0.1:80"]);
    assert_eq!(env.tb.dataplane().transactions_committed(), 3);
    assert!(out.stderr.contains("Holding removals"), "{}", out.stderr);
    assert_eq!(out.code, 1, "held removals are not in sync: {}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_services_are_synced_when_listing_backends_fails_and_vanished_ones_emptied_later()
{
    let env = services_fleet().await;
    let f = env.tb.fleet();
    let cfg = env.config(&target(&env, ""), SERVICES_TEMPLATE);
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let secrets = env_with(&env, DATAPLANE_PASSWORD);
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(service_backends(&env).len(), 3);

    // The api service goes and web scales out, while the backends list fails once.
    f.set_tag(SUB, RG, "api", "HAProxy:Service:Name", None);
    f.scale_to(SUB, RG, "web", 3);
    env.tb.faults().inject(
        Service::Dataplane,
        "/configuration/backends",
        Fault::Status {
            status: 500,
            code: "500".into(),
            message: "boom".into(),
            retry_after: None,
        },
        1,
    );
    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 1, "the template is not in sync: {}", out.stderr);
    assert!(
        out.stderr.contains("Couldn't list the backends of azure"),
        "{}",
        out.stderr
    );
    let now = service_backends(&env);
    assert_eq!(
        now["azure-web-80-westeurope"],
        env.ips("web", 80),
        "found services are still synced: {}",
        out.stderr
    );
    assert_eq!(
        now["azure-api-8080-eastus"],
        env.ips("api", 8080),
        "not emptied without a listing"
    );

    let out = run(&args, &secrets).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(service_backends(&env)["azure-api-8080-eastus"].is_empty());
}

/// GETs of `backend`'s server list (inside a transaction or not; v3 and v2 paths).
fn server_list_reads(env: &Env, backend: &str) -> usize {
    let v3 = format!("/backends/{backend}/servers");
    let v2 = format!("backend={backend}");
    env.tb
        .requests_to(Service::Dataplane)
        .iter()
        .filter(|r| {
            r.method == "GET"
                && (r.path.ends_with(&v3)
                    || (r.path.ends_with("/configuration/servers")
                        && r.query.split('&').any(|p| p == v2)))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn dataplane_a_changed_backend_is_read_once_per_cycle_unless_the_version_moved_in_between() {
    for version in [DataplaneApiVersion::V3, DataplaneApiVersion::V2] {
        let env = dataplane_with(&["web"]).await;
        let target = dataplane_target(&env, version, false);
        // A cycle: observe, then apply a change. The transaction starts on the version
        // observe read at, so observe's read serves it.
        assert!(target
            .observe(&backend("web"))
            .await
            .expect("observe")
            .is_empty());
        let reports = target
            .apply_batch(&[(backend("web"), adds(&["10.0.0.1:80", "10.0.0.2:80"]))])
            .await;
        assert!(reports[0].errors.is_empty(), "{:?}", errors(&reports[0]));
        assert_eq!(server_list_reads(&env, "web"), 1, "{version:?}: one read");
        assert_eq!(
            env.tb.dataplane().active_addresses("web"),
            ["10.0.0.1:80", "10.0.0.2:80"]
        );

        // Someone else takes slot vmss-3 between observe and apply: the version moved, so
        // the transaction reads the backend again and the add goes to a free slot.
        let observed = target.observe(&backend("web")).await.expect("observe");
        assert_eq!(observed.len(), 2);
        env.tb
            .dataplane()
            .insert_server("web", dataplane_server("vmss-3", "192.0.2.3", 80));
        let reports = target
            .apply_batch(&[(backend("web"), adds(&["10.0.0.4:80"]))])
            .await;
        assert!(reports[0].errors.is_empty(), "{:?}", errors(&reports[0]));
        assert_eq!(
            server_list_reads(&env, "web"),
            3,
            "{version:?}: observe, then a fresh read in the transaction"
        );
        let mut want = vec!["10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80", "192.0.2.3:80"];
        want.sort();
        let mut got = env.tb.dataplane().active_addresses("web");
        got.sort();
        assert_eq!(got, want, "{version:?}: the other client's slot kept");

        // A batch without an observe of its own (a retried batch) reads in the transaction.
        let reports = target
            .apply_batch(&[(backend("web"), adds(&["10.0.0.5:80"]))])
            .await;
        assert!(reports[0].errors.is_empty(), "{:?}", errors(&reports[0]));
        assert_eq!(server_list_reads(&env, "web"), 4, "{version:?}");
    }
}
