//! Errors name their cause, wherever they show (log, `plan`, `once`, `/readyz`): an ARM
//! read that fails gives its status, ARM error code and message for every shape of
//! selection; a target that cannot be reached says refused, timed out or which HTTP status
//! it answered, with the endpoint; `plan` speaks in the conditional and never says it
//! failed to update. Real binary, testbed over real sockets.

use crate::support::common;
use crate::support::ops_common;

use common::*;
use std::time::Duration;
use vmss_testbed::{
    Fault, Orchestration, Service, TestbedOptions, UpstreamKind, DATAPLANE_PASSWORD, DATAPLANE_USER,
};

fn rg_not_found() -> Fault {
    Fault::Status {
        status: 404,
        code: "ResourceGroupNotFound".into(),
        message: "Resource group 'rg-web' could not be found.".into(),
        retry_after: None,
    }
}

fn two_sets(env: &Env) {
    for set in ["blue", "green"] {
        env.tb
            .fleet()
            .add_scale_set(SUB, RG, set, Orchestration::Uniform, "eastus");
        env.tb.fleet().scale_to(SUB, RG, set, 2);
    }
    env.upstream(UpstreamKind::Http, "blue");
    env.upstream(UpstreamKind::Http, "green");
}

/// nginx-asg-sync's most common file: two upstreams, two scale sets in one group.
fn two_upstreams() -> String {
    format!(
        "{}{}",
        upstream_yaml("blue", "blue", 80, "http"),
        upstream_yaml("green", "green", 80, "http")
    )
}

fn assert_names(text: &str, wanted: &[&str]) {
    if std::env::var_os("SHOW").is_some() {
        eprintln!("----\n{text}");
    }
    for w in wanted {
        assert!(text.contains(w), "{w:?} missing from:\n{text}");
    }
    assert!(!text.contains("was not made"), "{text}");
    assert!(!text.contains("partial read"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_group_list_names_status_code_and_message_for_two_sets_in_once_and_plan() {
    let env = testbed(TestbedOptions::default()).await;
    two_sets(&env);
    env.tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets",
        rg_not_found(),
        usize::MAX,
    );
    let cfg = env.config("", &two_upstreams());
    let wanted = [
        "HTTP 404",
        "ResourceGroupNotFound",
        "Resource group 'rg-web' could not be found.",
    ];
    for cmd in ["once", "plan"] {
        let out = run(&[cmd, "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
        assert_eq!(out.code, 1, "{cmd}: {}{}", out.stdout, out.stderr);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert_names(&all, &wanted);
        // Both upstreams carry the cause, not only the first.
        for up in ["blue", "green"] {
            let line = all
                .lines()
                .find(|l| {
                    l.contains(&format!("upstream {up} ")) && l.contains("ResourceGroupNotFound")
                })
                .or_else(|| {
                    all.lines().find(|l| {
                        l.contains(&format!("upstream {up}:"))
                            && l.contains("ResourceGroupNotFound")
                    })
                });
            assert!(
                line.is_some(),
                "{cmd}: no line names the cause for {up}:\n{all}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_arm_outage_with_two_sets_is_named_in_readyz_and_the_log() {
    let env = testbed(TestbedOptions::default()).await;
    two_sets(&env);
    env.tb.faults().inject(
        Service::Arm,
        "virtualMachineScaleSets",
        Fault::Status {
            status: 503,
            code: "ServiceUnavailable".into(),
            message: "The server is currently unable to handle the request.".into(),
            retry_after: Some(0),
        },
        usize::MAX,
    );
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {}\nresource_manager_endpoint: {}\nsync_interval: 1s\n\
         admin_listen: 127.0.0.1:0\nreadiness_max_age: 2s\nupstreams:\n{}",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        two_upstreams()
    );
    let cfg = env.write("config.yaml", &text);
    let log = env.dir.path().join("daemon.log");
    let d = Daemon::run(&env, &cfg).log_path(&log).spawn();
    let addr = d.admin_addr().await;
    let named = ops_common::eventually_async(Duration::from_secs(40), || {
        let addr = addr.clone();
        async move {
            let a = ops_common::get(&addr, "/readyz").await;
            a.status == 503 && a.body.contains("ServiceUnavailable")
        }
    })
    .await;
    let ready = ops_common::get(&addr, "/readyz").await;
    assert!(
        named,
        "/readyz: {} {}\n{}",
        ready.status,
        ready.body,
        d.log_text()
    );
    assert_names(
        &ready.body,
        &["503", "ServiceUnavailable", "unable to handle the request"],
    );
    assert_names(
        &d.log_text(),
        &[
            "HTTP 503 ServiceUnavailable",
            "unable to handle the request",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_credential_is_named_for_two_sets_in_one_group() {
    let env = testbed(TestbedOptions::default()).await;
    two_sets(&env);
    let cfg = env.config("", &two_upstreams());
    // No credential in the environment at all.
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_names(&all, &["ARM authentication failed"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_of_selection_names_the_arm_error() {
    let env = testbed(TestbedOptions::default()).await;
    two_sets(&env);
    env.tb.dataplane().add_backend("web");
    let shapes = [
        ("one set", upstream_yaml("blue", "blue", 80, "http")),
        ("two sets in one group", two_upstreams()),
        (
            "a list",
            "  - name: blue\n    virtual_machine_scale_set: [blue, green]\n    port: 80\n    kind: http\n"
                .to_string(),
        ),
        (
            "a glob",
            "  - name: blue\n    virtual_machine_scale_set: \"bl*\"\n    port: 80\n    kind: http\n"
                .to_string(),
        ),
        (
            "tags",
            "  - name: blue\n    tags: {allow: {role: web}}\n    port: 80\n    kind: http\n"
                .to_string(),
        ),
    ];
    env.tb.faults().inject(
        Service::Arm,
        "/providers/Microsoft.Compute/",
        rg_not_found(),
        usize::MAX,
    );
    let wanted = [
        "HTTP 404",
        "ResourceGroupNotFound",
        "Resource group 'rg-web' could not be found.",
    ];
    for (shape, ups) in shapes {
        let cfg = env.config("", &ups);
        let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
        assert_eq!(out.code, 1, "{shape}");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            wanted.iter().all(|w| all.contains(w)) && !all.contains("was not made"),
            "{shape}:\n{all}"
        );
    }
    // A template of services, on the Data Plane API.
    let text = format!(
        "targets:\n  edge:\n    type: haproxy_dataplane\n    url: {}\n    username: {DATAPLANE_USER}\n    password: ${{DP_PASSWORD}}\n",
        env.tb.dataplane_url()
    );
    let cfg = env.config(
        &text,
        "  - name: azure\n    target: edge\n    virtual_machine_scale_set: \"*\"\n    services: {}\n    kind: http\n",
    );
    let mut e = env.sp_env();
    e.push(("DP_PASSWORD".into(), DATAPLANE_PASSWORD.into()));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &e).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_names(&all, &wanted);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_nginx_plus_api_is_named_refused_with_its_endpoint_not_a_configuration_problem() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    // Bound and never listening: refused for the whole test, and no other socket can take it.
    let dead = crate::support::ports::refused_addr();
    let endpoint = format!("http://{dead}/api");
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {endpoint}\nresource_manager_endpoint: {}\nsync_interval: 1s\n\
         admin_listen: off\nupstreams:\n{}",
        env.tb.arm_url(),
        upstream_yaml("web", "web", 80, "http")
    );
    let cfg = env.write("config.yaml", &text);
    for cmd in ["once", "plan"] {
        let out = run(&[cmd, "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
        assert_eq!(out.code, 1, "{cmd}");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(all.contains("connection refused"), "{cmd}:\n{all}");
        assert!(
            all.contains(&format!("http://{dead}")),
            "{cmd}: the endpoint is named:\n{all}"
        );
        assert!(
            !all.contains("Problem with the NGINX configuration"),
            "{cmd}:\n{all}"
        );
        assert!(
            !all.contains("cannot take dynamic servers"),
            "{cmd}:\n{all}"
        );
    }
    let out = run(&["plan", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert!(
        !out.stderr.contains("Couldn't update") && !out.stdout.contains("Couldn't update"),
        "a dry run never says it failed to update:\n{}{}",
        out.stdout,
        out.stderr
    );
    // A target unusable since the startup check is checked again by the cycle, which
    // reports it as such (still naming the cause) instead of trying to read its servers.
    assert!(
        out.stdout
            .contains("cannot plan: NGINX cannot be used for this upstream")
            && out.stdout.contains("connection refused"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_at_the_target_is_named_with_its_status_and_endpoint() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let cfg = env.config("", &upstream_yaml("web", "web", 80, "http"));
    env.tb.faults().inject(
        Service::Nginx,
        "/upstreams/web/servers",
        Fault::Status {
            status: 502,
            code: "BadGateway".into(),
            message: "upstream NGINX is restarting".into(),
            retry_after: None,
        },
        usize::MAX,
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1);
    let all = format!("{}{}", out.stdout, out.stderr);
    let origin = env.tb.nginx_url();
    let origin = origin.trim_end_matches("/api");
    assert!(all.contains("answered HTTP 502"), "{all}");
    assert!(all.contains(origin), "{origin} named:\n{all}");
    assert!(!all.contains("cannot take dynamic servers"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_never_answers_is_reported_as_timed_out() {
    use vmss_sync::target::nginx_plus::NginxPlus;
    use vmss_sync::target::{Target, UpstreamRef};
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let url = url::Url::parse(&format!("http://{addr}/api")).unwrap();
    let target = NginxPlus::new(&url, &[], Duration::from_millis(300), None).unwrap();
    let e = target
        .check(&UpstreamRef::new(
            "web",
            vmss_sync::config::UpstreamKind::Http,
        ))
        .await
        .expect_err("no answer");
    assert!(e.message.contains("timed out"), "{}", e.message);
    assert!(
        e.message.contains(&format!("http://{addr}")),
        "{}",
        e.message
    );
    assert!(
        !e.message.contains("cannot take dynamic servers"),
        "{}",
        e.message
    );
    hold.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_problem_with_the_nginx_upstream_file_reads_without_a_doubled_article() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    let missing = env.dir.path().join("no-such-dir/upstreams.conf");
    let targets = format!(
        "targets:\n  oss:\n    type: nginx_file\n    path: {}\n",
        missing.display()
    );
    let cfg = env.config(
        &targets,
        "  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n    target: oss\n",
    );
    let out = run(&["plan", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("Problem with the NGINX upstream file configuration"),
        "{all}"
    );
    assert!(!all.contains("the the"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_speaks_in_the_conditional() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    env.tb.nginx().insert_server(
        UpstreamKind::Http,
        "web",
        serde_json::json!({"server": "10.200.0.1:80"}),
    );
    let cfg = env.config("", &upstream_yaml("web", "web", 80, "http"));
    let out = run(&["plan", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for ip in env.ips("web", 80) {
        assert!(
            out.stdout.contains(&format!("would add     {ip}")),
            "{}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("would drain   10.200.0.1:80"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("Couldn't update"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("Updated HTTP servers"),
        "{}",
        out.stderr
    );
}
