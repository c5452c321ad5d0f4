use std::path::Path;
use std::time::Duration;

use super::*;

const ASG_SYNC_EXAMPLE: &str = "\
cloud_provider: Azure
subscription_id: my_subscription_id
resource_group_name: my_resource_group
api_endpoint: http://127.0.0.1:8080/api
sync_interval: 5s

upstreams:
  - name: backend-one
    virtual_machine_scale_set: backend-one-group
    port: 80
    kind: http
    max_conns: 0
    max_fails: 1
    fail_timeout: 10s
    slow_start: 0s
  - name: backend-two
    virtual_machine_scale_set: backend-two-group
    port: 80
    kind: stream
    max_conns: 0
    max_fails: 1
    fail_timeout: 10s
    slow_start: 0s
";

/// The NGINXaaS example of nginx-asg-sync's examples/nginxforazure.md, comments included.
const NGINXAAS_EXAMPLE: &str = "\
# nginx-asg-sync configuration for NGINXaaS for Azure
cloud_provider: Azure
subscription_id: <SUBSCRIPTION_ID>
resource_group_name: your_vmss_resource_group

# NGINXaaS dataplane API endpoint (note the /nplus suffix)
# Example : <DataplaneAPIEndpoint>/nplus
api_endpoint: https://your-nginxaas-endpoint.region.nginxaas.net/nplus
sync_interval: 5s

# Authentication headers for NGINXaaS
custom_headers:
  Content-Type: application/json
  Authorization: ApiKey your_base64_encoded_dataplane_api_key

# VMSS upstreams configuration
upstreams:
  - name: backend-one
    virtual_machine_scale_set: backend-one-vmss
    port: 80
    kind: http
    max_conns: 0
    max_fails: 1
    fail_timeout: 10s
    slow_start: 0s
  - name: backend-two
    virtual_machine_scale_set: backend-two-vmss
    port: 8080
    kind: http
    max_conns: 100
    max_fails: 3
    fail_timeout: 30s
    slow_start: 10s
";

fn no_env(_: &str) -> Option<String> {
    None
}

fn ok(text: &str) -> Config {
    match parse(text, Path::new("test.yaml"), &no_env) {
        Ok(config) => config,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

fn err(text: &str) -> String {
    match parse(text, Path::new("test.yaml"), &no_env) {
        Ok(config) => panic!("unexpectedly valid: {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn minimal(extra: &str) -> String {
    format!(
        "subscription_id: sub\nresource_group_name: rg\napi_endpoint: http://127.0.0.1:8080/api\n\
         {extra}upstreams:\n  - name: u\n    virtual_machine_scale_set: v\n    port: 80\n    kind: http\n"
    )
}

#[test]
fn asg_sync_example_parses_with_its_values() {
    let c = ok(ASG_SYNC_EXAMPLE);
    assert_eq!(c.path, Path::new("test.yaml"));
    assert_eq!(c.cloud_provider, CloudProvider::Azure);
    assert_eq!(c.subscription_id, "my_subscription_id");
    assert_eq!(c.resource_group_name, "my_resource_group");
    assert_eq!(
        c.api_endpoint
            .as_ref()
            .map(url::Url::as_str)
            .unwrap_or_default(),
        "http://127.0.0.1:8080/api"
    );
    assert_eq!(c.sync_interval, Duration::from_secs(5));
    assert!(c.custom_headers.is_empty());
    assert_eq!(c.upstreams.len(), 2);
    assert_eq!(
        c.upstreams[0],
        UpstreamConfig {
            name: "backend-one".to_owned(),
            virtual_machine_scale_set: "backend-one-group".to_owned(),
            port: Some(80),
            source: SourceConfig {
                scale_sets: vec!["backend-one-group".to_owned()],
                drain_timeout: Duration::from_secs(30),
                ..SourceConfig::default()
            },
            kind: UpstreamKind::Http,
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
            target: None,
            line: 8,
        }
    );
    assert_eq!(c.upstreams[1].name, "backend-two");
    assert_eq!(c.upstreams[1].kind, UpstreamKind::Stream);
    assert_eq!(c.upstreams[1].line, 16);
}

#[test]
fn asg_sync_example_gets_defaults_for_new_keys() {
    let c = ok(ASG_SYNC_EXAMPLE);
    assert_eq!(
        c.resource_manager_endpoint.as_str(),
        "https://management.azure.com/"
    );
    assert_eq!(c.resource_manager_audience, "https://management.azure.com");
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, None);
}

#[test]
fn nginxaas_example_parses_with_headers_in_file_order() {
    let c = ok(NGINXAAS_EXAMPLE);
    assert_eq!(
        c.api_endpoint
            .as_ref()
            .map(url::Url::as_str)
            .unwrap_or_default(),
        "https://your-nginxaas-endpoint.region.nginxaas.net/nplus"
    );
    assert_eq!(c.subscription_id, "<SUBSCRIPTION_ID>");
    let headers: Vec<(&str, &str)> = c
        .custom_headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    assert_eq!(
        headers,
        [
            ("Content-Type", "application/json"),
            (
                "Authorization",
                "ApiKey your_base64_encoded_dataplane_api_key"
            )
        ]
    );
    let two = &c.upstreams[1];
    assert_eq!(
        (two.port, two.max_conns, two.max_fails),
        (Some(8080), 100, 3)
    );
    assert_eq!(two.fail_timeout, Duration::from_secs(30));
    assert_eq!(two.slow_start, Duration::from_secs(10));
}

#[test]
fn flow_style_headers_and_upstreams_parse() {
    let c = ok("cloud_provider: Azure\nsubscription_id: s\nresource_group_name: r\n\
                api_endpoint: https://x.eastus2.nginxaas.net/nplus\n\
                custom_headers: {Content-Type: application/json, Authorization: ApiKey abc}\n\
                upstreams:\n  - {name: backend-one, virtual_machine_scale_set: backend-one-vmss, port: 80, kind: http,\n     max_conns: 0, max_fails: 1, fail_timeout: 10s, slow_start: 0s}\n");
    assert_eq!(c.custom_headers.len(), 2);
    assert_eq!(c.custom_headers[1].0, "Authorization");
    assert_eq!(c.custom_headers[1].1.expose(), "ApiKey abc");
    assert_eq!(c.upstreams[0].name, "backend-one");
    assert_eq!(c.upstreams[0].line, 7);
}

#[test]
fn minimal_file_gets_all_defaults() {
    let c = ok(&minimal(""));
    assert_eq!(c.cloud_provider, CloudProvider::Azure);
    assert_eq!(c.sync_interval, Duration::from_secs(5));
    assert!(c.custom_headers.is_empty());
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, None);
    let u = &c.upstreams[0];
    assert_eq!(u.max_conns, 0);
    assert_eq!(u.max_fails, 1);
    assert_eq!(u.fail_timeout, Duration::from_secs(10));
    assert_eq!(u.slow_start, Duration::ZERO);
}

#[test]
fn null_optional_values_mean_default() {
    let c = ok(&minimal("sync_interval:\ncustom_headers:\nlog_level: ~\n"));
    assert_eq!(c.sync_interval, Duration::from_secs(5));
    assert!(c.custom_headers.is_empty());
    assert_eq!(c.log_level, None);
}

#[test]
fn new_keys_are_read() {
    let c = ok(&minimal(
        "resource_manager_endpoint: https://management.usgovcloudapi.net/\n\
         log_format: json\nlog_level: debug\nsync_interval: 1m30s\n",
    ));
    assert_eq!(
        c.resource_manager_endpoint.as_str(),
        "https://management.usgovcloudapi.net/"
    );
    assert_eq!(
        c.resource_manager_audience,
        "https://management.usgovcloudapi.net"
    );
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.log_level.as_deref(), Some("debug"));
    assert_eq!(c.sync_interval, Duration::from_secs(90));
}

#[test]
fn audience_defaults_follow_the_resource_manager_host() {
    let audience = |endpoint: &str| {
        ok(&minimal(&format!(
            "resource_manager_endpoint: {endpoint}\n"
        )))
        .resource_manager_audience
    };
    assert_eq!(
        audience("https://management.chinacloudapi.cn"),
        "https://management.chinacloudapi.cn"
    );
    assert_eq!(
        audience("http://127.0.0.1:9000"),
        "https://management.azure.com"
    );
    let c = ok(&minimal(
        "resource_manager_endpoint: http://localhost:9000/arm/\nresource_manager_audience: api://x\n",
    ));
    assert_eq!(c.resource_manager_audience, "api://x");
    assert_eq!(
        c.resource_manager_endpoint.as_str(),
        "http://localhost:9000/arm"
    );
}

#[test]
fn absent_cloud_provider_is_azure_when_subscription_id_is_set() {
    assert_eq!(ok(&minimal("")).cloud_provider, CloudProvider::Azure);
}

#[test]
fn quoted_numbers_and_plain_http_without_headers_are_accepted() {
    let c = ok(
        "subscription_id: s\nresource_group_name: r\napi_endpoint: http://10.0.0.5/api\n\
                upstreams:\n- name: 'u'\n  virtual_machine_scale_set: \"v\"\n  port: \"8080\"\n  \
                kind: stream\n  fail_timeout: 600\n  slow_start: 1m30s\n",
    );
    assert_eq!(
        c.api_endpoint
            .as_ref()
            .map(url::Url::as_str)
            .unwrap_or_default(),
        "http://10.0.0.5/api"
    );
    let u = &c.upstreams[0];
    assert_eq!(u.port, Some(8080));
    assert_eq!(u.fail_timeout, Duration::from_secs(600));
    assert_eq!(u.slow_start, Duration::from_secs(90));
    assert_eq!(u.line, 5);
}

#[test]
fn headers_over_http_to_loopback_are_allowed() {
    let c = ok(&minimal("custom_headers:\n  Authorization: ApiKey abc\n"));
    assert_eq!(c.custom_headers[0].1.expose(), "ApiKey abc");
}

#[test]
fn env_substitution_fills_values_before_type_checks() {
    let env = |name: &str| match name {
        "PORT" => Some("8443".to_owned()),
        "KEY" => Some("s3cr3t".to_owned()),
        "SUB" => Some("0000-1111".to_owned()),
        _ => None,
    };
    let text = "subscription_id: ${SUB}\nresource_group_name: rg-$${literal}\n\
                api_endpoint: https://h/api\ncustom_headers:\n  Authorization: ApiKey ${KEY}\n\
                upstreams:\n  - {name: u, virtual_machine_scale_set: v, port: \"${PORT}\", kind: http}\n";
    let c = match parse(text, Path::new("t.yaml"), &env) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.subscription_id, "0000-1111");
    assert_eq!(c.upstreams[0].port, Some(8443));
    assert_eq!(c.custom_headers[0].1.expose(), "ApiKey s3cr3t");
    assert_eq!(c.resource_group_name, "rg-${literal}");
    let text = "subscription_id: s\nresource_group_name: a$${b}\napi_endpoint: https://h\n\
                upstreams: [{name: u, virtual_machine_scale_set: v, port: 1, kind: http}]\n";
    assert_eq!(
        parse(text, Path::new("t.yaml"), &env)
            .unwrap()
            .resource_group_name,
        "a${b}"
    );
}

#[test]
fn error_positions_are_one_based_lines_and_columns() {
    let e = parse(
        &minimal("sync_interval: 0s\n"),
        Path::new("t.yaml"),
        &no_env,
    )
    .unwrap_err();
    let error = &e.errors[0];
    assert_eq!((error.line, error.column), (4, 16));
    assert_eq!(error.key, "sync_interval");
    assert_eq!(error.value.as_deref(), Some("0s"));
}

#[test]
fn yaml_syntax_errors_are_reported_with_position() {
    let text = err("subscription_id: [a\n");
    assert!(text.starts_with("test.yaml:2:1: invalid YAML:"), "{text}");
}

#[test]
fn a_document_that_is_not_a_mapping_is_an_error() {
    assert_eq!(
        err("- a\n- b\n"),
        "test.yaml:1:1: the configuration must be a mapping of keys to values, not a list"
    );
}

#[test]
fn anchors_and_aliases_work() {
    let c = ok("subscription_id: s\nresource_group_name: r\napi_endpoint: https://h\n\
                upstreams:\n  - &base {name: a, virtual_machine_scale_set: v, port: 80, kind: http}\n  \
                - {name: b, virtual_machine_scale_set: v, port: 81, kind: http}\n");
    assert_eq!(c.upstreams.len(), 2);
}

#[test]
fn secret_debug_and_display_are_redacted() {
    let s = Secret::new("ApiKey hunter2");
    assert_eq!(format!("{s:?}"), "<redacted>");
    assert_eq!(format!("{s}"), "<redacted>");
    assert_eq!(s.expose(), "ApiKey hunter2");
    let c = ok(&minimal(
        "custom_headers: {Authorization: ApiKey hunter2}\n",
    ));
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn upstream_kind_names_match_the_file() {
    assert_eq!(UpstreamKind::Http.as_str(), "http");
    assert_eq!(UpstreamKind::Stream.to_string(), "stream");
}

/// A file whose upstreams are `upstreams` (indented entries), with a Data Plane API target.
fn with_upstreams(upstreams: &str) -> String {
    format!(
        "subscription_id: sub\nresource_group_name: rg\ntargets:\n  edge:\n    type: haproxy_dataplane\n    \
         url: http://127.0.0.1:5555\n    username: admin\n    password: p\nupstreams:\n{upstreams}"
    )
}

#[test]
fn services_are_read_with_every_key() {
    let c = ok(&with_upstreams(
        "  - name: azure\n    target: edge\n    resource_group_name: \"*\"\n    tags:\n      \
         allow: {environment: production}\n      deny: {\"HAProxy:Exclude\": \"true\"}\n    \
         services:\n      name_tag: \"App:Name\"\n      port_tag: \"App:Port\"\n      \
         instance_port_tag: \"App:InstancePort\"\n      separator: \"__\"\n    kind: http\n",
    ));
    let u = &c.upstreams[0];
    assert_eq!(u.port, None);
    assert_eq!(u.virtual_machine_scale_set, "");
    let svc = u.source.services.as_ref().expect("services");
    assert_eq!(
        svc,
        &ServicesConfig {
            name_tag: "App:Name".into(),
            port_tag: "App:Port".into(),
            instance_port_tag: "App:InstancePort".into(),
            separator: "__".into(),
        }
    );
    let tags = u.source.tags.as_ref().expect("tags");
    let allow: Vec<(&str, &str)> = tags
        .allow
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(allow, [("App:Name", "*"), ("environment", "production")]);
    assert_eq!(tags.deny.len(), 1);
}

#[test]
fn services_take_defaults_when_empty_or_null_and_select_by_the_name_tag() {
    for services in [
        "services: {}",
        "services:",
        "services: ~",
        "services: {separator: ~}",
    ] {
        let c = ok(&with_upstreams(&format!(
            "  - name: azure\n    target: edge\n    {services}\n    kind: http\n"
        )));
        let u = &c.upstreams[0];
        assert_eq!(
            u.source.services,
            Some(ServicesConfig::default()),
            "{services}"
        );
        assert_eq!(u.port, None);
        assert!(u.source.scale_sets.is_empty());
        let tags = u.source.tags.as_ref().expect("tags added");
        assert_eq!(
            tags.allow.get("HAProxy:Service:Name").map(String::as_str),
            Some("*")
        );
        assert!(tags.deny.is_empty());
    }
}

#[test]
fn a_name_tag_already_allowed_is_kept_and_deny_alone_gets_the_name_tag() {
    let c = ok(&with_upstreams(
        "  - name: a\n    target: edge\n    tags: {allow: {\"haproxy:service:name\": \"web*\"}}\n    \
         services: {}\n    kind: http\n\
         \x20 - name: b\n    target: edge\n    tags: {deny: {\"HAProxy:Exclude\": \"true\"}}\n    \
         services: {}\n    kind: http\n",
    ));
    let a = c.upstreams[0].source.tags.as_ref().expect("tags");
    assert_eq!(a.allow.len(), 1);
    assert_eq!(
        a.allow.get("haproxy:service:name").map(String::as_str),
        Some("web*")
    );
    let b = c.upstreams[1].source.tags.as_ref().expect("tags");
    assert_eq!(
        b.allow.get("HAProxy:Service:Name").map(String::as_str),
        Some("*")
    );
    assert_eq!(b.deny.len(), 1);
}

#[test]
fn a_template_over_named_scale_sets_selects_them_without_tags() {
    let c = ok(&with_upstreams(
        "  - name: azure\n    target: edge\n    virtual_machine_scale_set: [web, api]\n    \
         services: {separator: \".\"}\n    kind: stream\n",
    ));
    let u = &c.upstreams[0];
    assert_eq!(u.source.scale_sets, ["web", "api"]);
    assert_eq!(u.source.tags, None);
    assert_eq!(u.port, None);
    assert_eq!(
        u.source.services.as_ref().map(|s| s.separator.as_str()),
        Some(".")
    );
}

#[test]
fn names_shaped_like_a_template_backend_are_fine_on_another_target() {
    let text = with_upstreams(
        "  - name: azure\n    target: edge\n    services: {}\n    kind: http\n\
         \x20 - name: azure-web-80-eastus\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n",
    )
    .replace("targets:", "api_endpoint: http://127.0.0.1:8080/api\ntargets:");
    let c = ok(&text);
    assert_eq!(c.upstreams[1].target, None);
}

#[test]
fn services_need_a_data_plane_target_that_can_create_backends() {
    let text =
        with_upstreams("  - name: azure\n    target: local\n    services: {}\n    kind: http\n")
            .replace(
            "upstreams:",
            "  local:\n    type: haproxy_runtime\n    address: /run/haproxy/admin.sock\nupstreams:",
        );
    let e = err(&text);
    assert!(e.contains("upstreams[0].target"), "{e}");
    assert!(
        e.contains("services needs a target of type haproxy_dataplane")
            && e.contains("local is haproxy_runtime"),
        "{e}"
    );
    let text = with_upstreams("  - name: azure\n    services: {}\n    kind: http\n").replace(
        "targets:",
        "api_endpoint: http://127.0.0.1:8080/api\ntargets:",
    );
    let e = err(&text);
    assert!(e.contains("upstreams[0].services"), "{e}");
    assert!(
        e.contains("services needs a target of type haproxy_dataplane"),
        "{e}"
    );
}

const UP: &str = "  - name: web\n    target: edge\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n";

#[test]
fn dataplane_balance_takes_algorithms_without_parameters() {
    let c =
        ok(&with_upstreams(UP).replace("password: p\n", "password: p\n    balance: leastconn\n"));
    let Some(TargetSpec::HaproxyDataplane(t)) = c.targets.first().map(|t| &t.spec) else {
        panic!("a Data Plane target: {:?}", c.targets);
    };
    assert_eq!(t.balance, "leastconn");
    let c = ok(&with_upstreams(UP));
    let Some(TargetSpec::HaproxyDataplane(t)) = c.targets.first().map(|t| &t.spec) else {
        panic!("a Data Plane target");
    };
    assert_eq!(t.balance, "roundrobin", "the default");
    let e = err(&with_upstreams(UP).replace("password: p\n", "password: p\n    balance: hdr\n"));
    assert!(e.contains("targets.edge.balance"), "{e}");
    assert!(
        e.contains("hdr") && e.contains("roundrobin, static-rr, leastconn"),
        "{e}"
    );
}
