//! One configuration, every kind of target, one scale set: NGINX Plus (the testbed's API, via
//! the top-level `api_endpoint`), a real HAProxy through its Runtime API, the fake HAProxy
//! Data Plane API, and a real nginx through a rendered file. The same fleet, scaled out and
//! in, is followed by all four, with the set read once per cycle.

use crate::support::common;
use crate::support::targets_common;

use common::*;
use std::net::Ipv4Addr;
use targets_common::*;
use vmss_testbed::{
    Orchestration, TestbedOptions, UpstreamKind, DATAPLANE_PASSWORD, DATAPLANE_USER,
};

#[tokio::test(flavor = "multi_thread")]
async fn one_file_feeds_nginx_plus_haproxy_runtime_dataplane_and_nginx_from_one_read() {
    if !have("haproxy") || !have("nginx") {
        return;
    }
    let env = testbed(TestbedOptions::default()).await;
    env.tb
        .fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    env.tb
        .fleet()
        .set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, 30));
    env.tb.fleet().scale_to(SUB, RG, "web", 3);
    let pool = ips(30, 37);
    let (_backends, port) = Backends::start_free(&pool).await;
    let dir = env.dir.path();

    env.upstream(UpstreamKind::Http, "web_plus");
    env.tb.dataplane().add_backend("web_dp");
    let hap_dir = dir.join("haproxy");
    std::fs::create_dir(&hap_dir).unwrap();
    let hap = Haproxy::start(
        &hap_dir,
        "web_rt",
        "backend web_rt\n    balance roundrobin\n",
    )
    .await;
    let ngx_dir = dir.join("nginx");
    std::fs::create_dir(&ngx_dir).unwrap();
    let file = ngx_dir.join("upstreams.conf");
    placeholder_upstreams(&file, &["web_oss"]);
    let nginx = Nginx::start(&ngx_dir, "web_oss", &file).await;
    let nginx_bin = which("nginx");
    let flags = Nginx::flags(&ngx_dir).join("\", \"");

    let targets = format!(
        "targets:\n\
         \x20 rt:\n    type: haproxy_runtime\n    address: {sock}\n\
         \x20 dp:\n    type: haproxy_dataplane\n    url: {dp}\n    username: {DATAPLANE_USER}\n    password: ${{DPAPI_PASSWORD}}\n    server_slots: {{base: 4}}\n\
         \x20 oss:\n    type: nginx_file\n    path: {file}\n    validate_command: [\"{nginx_bin}\", \"{flags}\", \"-t\"]\n    reload_command: [\"{nginx_bin}\", \"{flags}\", \"-s\", \"reload\"]\n",
        sock = hap.socket.display(),
        dp = env.tb.dataplane_url(),
        file = file.display(),
    );
    // Leaving servers are removed at once (drain_timeout: 0s), so each run shows the result.
    let mut upstreams = format!(
        "{}    drain_timeout: 0s\n",
        upstream_yaml("web_plus", "web", port, "http")
    );
    for (name, target) in [("web_rt", "rt"), ("web_dp", "dp"), ("web_oss", "oss")] {
        upstreams.push_str(&format!(
            "  - name: {name}\n    virtual_machine_scale_set: web\n    port: {port}\n    kind: http\n    target: {target}\n    drain_timeout: 0s\n"
        ));
    }
    let cfg = env.config(&targets, &upstreams);
    let mut secrets = env.sp_env();
    secrets.push(("DPAPI_PASSWORD".into(), DATAPLANE_PASSWORD.into()));
    let args = ["once", "--config", cfg.to_str().unwrap()];
    let client = client();

    for n in [3, 5, 2] {
        env.tb.fleet().scale_to(SUB, RG, "web", n);
        env.tb.clear_requests();
        let out = run(&args, &secrets).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        let want = env.ips("web", port);
        assert_eq!(want.len(), n);
        assert_eq!(
            env.servers(UpstreamKind::Http, "web_plus"),
            want,
            "NGINX Plus"
        );
        assert_eq!(
            env.tb.dataplane().active_addresses("web_dp"),
            want,
            "Data Plane API"
        );
        assert_eq!(answered(&client, &hap.url(), 6 * n).await, want, "HAProxy");
        assert_eq!(
            until_answered(
                &fresh_client(),
                &nginx.url(),
                &want,
                std::time::Duration::from_secs(10)
            )
            .await,
            want,
            "nginx"
        );
        let arm_requests = env.arm_requests();
        // The same cycle with one upstream reads ARM exactly as much.
        env.tb.clear_requests();
        let one = env.write(
            "one.yaml",
            &std::fs::read_to_string(&cfg)
                .unwrap()
                .replace(&upstreams, &upstream_yaml("web_plus", "web", port, "http")),
        );
        let out = run(&["once", "--config", one.to_str().unwrap()], &secrets).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            arm_requests,
            env.arm_requests(),
            "one read of the set serves every target"
        );
    }
}
