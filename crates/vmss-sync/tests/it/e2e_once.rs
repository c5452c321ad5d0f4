//! End to end through the real binary: `vmss-sync once|plan|validate` against the
//! testbed's ARM, token endpoints and NGINX Plus API over real sockets.

use crate::support::common;

use common::*;
use std::time::Duration;
use vmss_testbed::{Fault, Service, TestbedOptions, UpstreamKind};

fn http_upstream(set: &str) -> String {
    upstream_yaml(set, set, 80, "http")
}

#[tokio::test(flavor = "multi_thread")]
async fn once_adds_every_instance_and_a_second_once_writes_nothing() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 5);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert!(
        out.stderr
            .contains("Updated HTTP servers of web for group web ; Added: ["),
        "nginx-asg-sync's log line: {}",
        out.stderr
    );
    let writes_before = env.nginx_writes().len();
    assert_eq!(writes_before, 5);
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        env.nginx_writes().len(),
        writes_before,
        "no write when nothing changed"
    );
    assert!(!out.stderr.contains("Updated HTTP"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn once_follows_scale_out_and_scale_in() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    env.tb.fleet().scale_to(SUB, RG, "web", 7);
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn nic_list_is_read_across_all_pages_with_its_own_api_version() {
    let env = testbed(TestbedOptions {
        page_size: 3,
        ..TestbedOptions::default()
    })
    .await;
    env.uniform("web", 10);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 10);
    let nic_pages: Vec<_> = env
        .tb
        .requests()
        .into_iter()
        .filter(|r| {
            r.service == Service::Arm && r.path.to_lowercase().ends_with("/networkinterfaces")
        })
        .collect();
    assert_eq!(nic_pages.len(), 4, "10 NICs in pages of 3");
    assert!(nic_pages
        .iter()
        .all(|r| r.query.contains("api-version=2018-10-01")));
    // Spelled as in the REST spec and the Azure SDKs.
    assert!(nic_pages.iter().all(|r| r
        .path
        .contains("/providers/microsoft.Compute/virtualMachineScaleSets/web/networkInterfaces")));
}

#[tokio::test(flavor = "multi_thread")]
async fn throttled_read_is_retried_after_retry_after() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    env.tb.faults().inject(
        Service::Arm,
        "/networkInterfaces",
        Fault::Status {
            status: 429,
            code: "TooManyRequests".into(),
            message: "Too many requests".into(),
            retry_after: Some(1),
        },
        1,
    );
    let cfg = env.config("", &http_upstream("web"));
    let started = std::time::Instant::now();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited out Retry-After"
    );
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_page_removes_no_server() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 6);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    let before = env.servers(UpstreamKind::Http, "web");
    // 4 NICs in pages of 2: page 1 fails after page 0 succeeded.
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    env.tb.faults().inject(
        Service::Arm,
        "/networkInterfaces",
        Fault::FailPage {
            page: 1,
            status: 400,
        },
        usize::MAX,
    );
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(
        out.code, 1,
        "a failed read is a failed upstream: {}",
        out.stdout
    );
    assert!(
        out.stderr.contains("Couldn't get the IP addresses for web"),
        "{}",
        out.stderr
    );
    assert_eq!(
        env.servers(UpstreamKind::Http, "web"),
        before,
        "nothing removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_arm_body_removes_no_server() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    env.tb.fleet().scale_to(SUB, RG, "web", 0);
    env.tb.faults().inject(
        Service::Arm,
        "/networkInterfaces",
        Fault::MalformedBody,
        usize::MAX,
    );
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 1);
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_read_is_held_while_capacity_disagrees_and_applied_when_capacity_is_zero() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 4);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    // The NIC list comes back empty but the set still says it has 4 instances.
    env.tb.fleet().scale_to(SUB, RG, "web", 0);
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 4);
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 1, "held is not in sync: {}", out.stdout);
    assert!(out.stdout.contains("held"), "{}", out.stdout);
    assert!(out.stderr.contains("Holding removals"), "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 4);
    // Capacity 0 agrees: the set really is empty.
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 0);
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(env.servers(UpstreamKind::Http, "web").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn mass_removal_is_held_until_capacity_agrees() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 10);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 10);
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 1);
    assert_eq!(
        env.servers(UpstreamKind::Http, "web").len(),
        10,
        "7 of 10 kept"
    );
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 3);
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
}

#[tokio::test(flavor = "multi_thread")]
async fn parameter_change_is_a_patch_only() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    let ids: Vec<u64> = env
        .tb
        .nginx()
        .servers(UpstreamKind::Http, "web")
        .iter()
        .filter_map(|s| s["id"].as_u64())
        .collect();
    env.tb.clear_requests();
    env.config(
        "",
        &format!(
            "{}    max_conns: 20\n    fail_timeout: 1m\n    slow_start: 30s\n",
            http_upstream("web")
        ),
    );
    let out = run(&args, &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let writes = env.nginx_writes();
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert!(writes.iter().all(|w| w.starts_with("PATCH ")), "{writes:?}");
    let servers = env.tb.nginx().servers(UpstreamKind::Http, "web");
    let new_ids: Vec<u64> = servers.iter().filter_map(|s| s["id"].as_u64()).collect();
    assert_eq!(ids, new_ids, "same servers, not re-added");
    assert!(servers.iter().all(|s| s["max_conns"] == 20));
    // NGINX echoes 1m as 60s: the next cycle must still see it as in sync.
    env.tb.clear_requests();
    assert_eq!(run(&args, &env.sp_env()).await.code, 0);
    assert!(env.nginx_writes().is_empty(), "{:?}", env.nginx_writes());
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_and_http_upstreams_share_one_read_of_the_scale_set() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("app", 3);
    env.upstream(UpstreamKind::Http, "app-http");
    env.upstream(UpstreamKind::Stream, "app-tcp");
    let ups = format!(
        "{}{}",
        upstream_yaml("app-http", "app", 8080, "http"),
        upstream_yaml("app-tcp", "app", 5432, "stream")
    );
    let cfg = env.config("", &ups);
    env.tb.clear_requests();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        env.servers(UpstreamKind::Http, "app-http"),
        env.ips("app", 8080)
    );
    assert_eq!(
        env.servers(UpstreamKind::Stream, "app-tcp"),
        env.ips("app", 5432)
    );
    assert!(
        out.stderr.contains("Updated Stream servers of app-tcp"),
        "{}",
        out.stderr
    );
    let vmss_gets = env
        .tb
        .requests()
        .iter()
        .filter(|r| {
            r.service == Service::Arm
                && r.path
                    .to_lowercase()
                    .ends_with("/virtualmachinescalesets/app")
        })
        .count();
    // one GET in the startup check, which serves the cycle too; not one per upstream
    assert_eq!(vmss_gets, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_with_two_nics_is_registered_once() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.tb
        .fleet()
        .add_secondary_nic(SUB, RG, "web", "0", "10.9.9.9".parse().unwrap());
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    assert_eq!(
        run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env())
            .await
            .code,
        0
    );
    let servers = env.servers(UpstreamKind::Http, "web");
    assert_eq!(servers, env.ips("web", 80));
    assert!(!servers.contains(&"10.9.9.9:80".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_static_upstreams_are_named_at_startup() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.tb
        .nginx()
        .add_static_upstream(UpstreamKind::Http, "static-one");
    let ups = format!(
        "{}{}",
        upstream_yaml("nowhere", "web", 80, "http"),
        upstream_yaml("static-one", "web", 80, "http")
    );
    let cfg = env.config("", &ups);
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("upstream nowhere"), "{}", out.stderr);
    assert!(out.stderr.contains("UpstreamNotFound"), "{}", out.stderr);
    assert!(out.stderr.contains("upstream static-one"), "{}", out.stderr);
    assert!(out.stderr.contains("UpstreamStatic"), "{}", out.stderr);
    assert!(env.nginx_writes().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn flexible_scale_set_syncs_with_one_vm_list_and_one_nic_list() {
    let env = testbed(TestbedOptions::default()).await;
    env.tb.fleet().add_scale_set(
        SUB,
        RG,
        "flex",
        vmss_testbed::Orchestration::Flexible,
        "eastus",
    );
    env.tb.fleet().scale_to(SUB, RG, "flex", 5);
    env.upstream(UpstreamKind::Http, "flex");
    let cfg = env.config("", &http_upstream("flex"));
    env.tb.clear_requests();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "flex"), env.ips("flex", 80));
    let arm: Vec<String> = env
        .tb
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::Arm)
        .map(|r| r.path.to_lowercase())
        .collect();
    // Never one GET per VM or per NIC: only the set, the VM list and the NIC list (pages).
    assert!(
        arm.iter()
            .all(|p| p.ends_with("/virtualmachinescalesets/flex")
                || p.ends_with("/microsoft.compute/virtualmachines")
                || p.ends_with("/microsoft.network/networkinterfaces")),
        "{arm:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failing_upstream_does_not_block_another() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("good", 2);
    env.uniform("bad", 2);
    env.upstream(UpstreamKind::Http, "good");
    env.upstream(UpstreamKind::Http, "bad");
    env.tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets/bad/networkInterfaces",
        Fault::Status {
            status: 500,
            code: "InternalServerError".into(),
            message: "boom".into(),
            retry_after: None,
        },
        usize::MAX,
    );
    let cfg = env.config(
        "",
        &format!("{}{}", http_upstream("good"), http_upstream("bad")),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1);
    assert_eq!(env.servers(UpstreamKind::Http, "good").len(), 2);
    assert!(env.servers(UpstreamKind::Http, "bad").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn app_service_managed_identity_drives_a_full_sync() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let msi = vec![
        ("IDENTITY_ENDPOINT".to_string(), env.tb.identity_endpoint()),
        (
            "IDENTITY_HEADER".to_string(),
            TestbedOptions::default().identity_header,
        ),
    ];
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &msi).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
    assert!(env
        .tb
        .requests()
        .iter()
        .any(|r| r.service == Service::AppServiceMsi));
}

#[tokio::test(flavor = "multi_thread")]
async fn nginxaas_endpoint_with_api_key_header_works_and_the_key_is_never_printed() {
    let key = "c2VjcmV0LWtleS0xMjM0NQ==";
    let env = testbed(TestbedOptions {
        nginx_api_key: Some(key.into()),
        ..TestbedOptions::default()
    })
    .await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let nplus = env.tb.nginx_url().replace("/api", "/nplus");
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\napi_endpoint: {nplus}\n\
         resource_manager_endpoint: {}\nsync_interval: 5s\nlog_level: trace\ncustom_headers:\n  Content-Type: application/json\n  Authorization: ApiKey ${{NGINX_KEY}}\nupstreams:\n{}",
        env.tb.arm_url(),
        http_upstream("web")
    );
    let cfg = env.write("nplus.yaml", &text);
    let mut e = env.sp_env();
    e.push(("NGINX_KEY".into(), key.into()));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &e).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web").len(), 2);
    let secret = TestbedOptions::default().client_secret;
    for s in [&out.stdout, &out.stderr] {
        assert!(!s.contains(key), "API key leaked");
        assert!(!s.contains(&secret), "client secret leaked");
    }
    // Without the key the API refuses, and the error says so.
    let e2: Vec<_> = env
        .sp_env()
        .into_iter()
        .chain([("NGINX_KEY".to_string(), "wrong".to_string())])
        .collect();
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &e2).await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("401"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_prints_changes_and_writes_nothing() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 3);
    env.upstream(UpstreamKind::Http, "web");
    env.tb.nginx().insert_server(
        UpstreamKind::Http,
        "web",
        serde_json::json!({"server": "10.200.0.1:80"}),
    );
    let cfg = env.config("", &http_upstream("web"));
    let out = run(&["plan", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for ip in env.ips("web", 80) {
        assert!(
            out.stdout.contains(&format!("add     {ip}")),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("drain   10.200.0.1:80"),
        "a server that is not wanted is drained first: {}",
        out.stdout
    );
    assert!(env.nginx_writes().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_needs_no_network_and_bad_files_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "cloud_provider: Azure\nsubscription_id: s\nresource_group_name: r\napi_endpoint: http://127.0.0.1:1/api\nupstreams:\n  - name: a\n    virtual_machine_scale_set: b\n    port: 80\n    kind: http\n",
    )
    .unwrap();
    let out = run(&["validate", "--config", good.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("valid"), "{}", out.stdout);
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "cloud_provider: Azure\nsubscription_id: s\nresource_group_name: r\napi_endpoint: http://127.0.0.1:1/api\nsync_intervall: 5s\nupstreams:\n  - name: a\n    virtual_machine_scale_set: b\n    port: 70000\n    kind: tcp\n",
    )
    .unwrap();
    for cmd in ["validate", "once", "plan", "run"] {
        let out = run(&[cmd, "--config", bad.to_str().unwrap()], &[]).await;
        assert_eq!(out.code, 2, "{cmd}: {}", out.stderr);
        let path = bad.display().to_string();
        assert!(out.stderr.contains(&format!("{path}:5:")), "{}", out.stderr);
        assert!(
            out.stderr.contains("sync_interval"),
            "did-you-mean: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains("upstreams[0].port") && out.stderr.contains("70000"),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains("upstreams[0].kind") && out.stderr.contains("tcp"),
            "{}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn version_flag_prints_the_version() {
    let out = run(&["--version"], &[]).await;
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_version_is_negotiated_to_the_highest_one_both_sides_know() {
    let env = testbed(TestbedOptions {
        nginx_versions: vec![4, 5, 6, 7, 8],
        ..TestbedOptions::default()
    })
    .await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let paths: Vec<String> = env
        .tb
        .requests()
        .into_iter()
        .filter(|r| r.service == Service::Nginx && r.path.contains("/upstreams/"))
        .map(|r| r.path)
        .collect();
    assert!(!paths.is_empty());
    assert!(paths.iter().all(|p| p.starts_with("/api/8/")), "{paths:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_offering_only_unknown_versions_is_refused_with_the_list() {
    let env = testbed(TestbedOptions {
        nginx_versions: vec![10, 11],
        ..TestbedOptions::default()
    })
    .await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("offers versions [10, 11]"),
        "{}",
        out.stderr
    );
    assert!(env.nginx_writes().is_empty());
}

/// The exit code the docs give `plan` (README, operations.md): 0 only when every upstream
/// was read and nothing would be held; a plan that would hold removals exits 1.
#[tokio::test(flavor = "multi_thread")]
async fn plan_exits_1_when_removals_would_be_held_and_0_once_capacity_agrees() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 10);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &http_upstream("web"));
    let path = cfg.to_str().unwrap();
    assert_eq!(
        run(&["once", "--config", path], &env.sp_env()).await.code,
        0
    );
    let writes = env.nginx_writes().len();
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 10);
    let out = run(&["plan", "--config", path], &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("would hold removals"), "{}", out.stdout);
    env.tb.fleet().set_capacity_only(SUB, RG, "web", 3);
    let out = run(&["plan", "--config", path], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.nginx_writes().len(), writes, "plan writes nothing");
}
