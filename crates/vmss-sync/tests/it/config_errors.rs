//! What the configuration loader says about bad files: every problem at once, each naming file,
//! line, column, key and (when not secret) value.

use std::path::Path;
use std::time::Duration;

use vmss_sync::config::{self, Config, ConfigErrors, UpstreamKind};

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigErrors> {
    config::parse(text, Path::new("cfg.yaml"), env)
}

/// The error lines for `text`; panics when it is valid.
fn errors(text: &str) -> Vec<String> {
    errors_with(text, &no_env)
}

fn errors_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    match parse_with(text, env) {
        Ok(c) => panic!("unexpectedly valid: {c:?}"),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

fn valid(text: &str) -> Config {
    match parse_with(text, &no_env) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

/// A valid file (lines 1-3 top level, line 4 `upstreams:`, the upstream at line 5) with
/// `top` inserted before `upstreams:` and `upstream` appended to the upstream's keys.
fn file(top: &str, upstream: &str) -> String {
    format!(
        "subscription_id: sub\nresource_group_name: rg\napi_endpoint: http://127.0.0.1:8080/api\n\
         {top}upstreams:\n  - name: backend-one\n    virtual_machine_scale_set: vmss-one\n    \
         {upstream}\n"
    )
}

/// An upstream at line 5 with `port` and `kind` lines given.
fn upstream_with(port_and_kind: &str) -> String {
    format!(
        "subscription_id: sub\nresource_group_name: rg\napi_endpoint: http://127.0.0.1:8080/api\n\
         upstreams:\n  - name: backend-one\n    virtual_machine_scale_set: vmss-one\n{port_and_kind}"
    )
}

#[test]
fn valid_helper_file_is_valid() {
    let c = valid(&file("", "port: 80\n    kind: http"));
    assert_eq!(c.upstreams[0].kind, UpstreamKind::Http);
    assert_eq!(c.upstreams[0].line, 5);
}

#[test]
fn empty_file_reports_every_mandatory_field_with_asg_sync_messages() {
    assert_eq!(
        errors(""),
        [
            "cfg.yaml:1:1: subscription_id: the mandatory field subscription_id is either empty or missing",
            "cfg.yaml:1:1: cloud_provider: cloud_provider is missing and so is subscription_id: nginx-asg-sync would default to AWS, but vmss-sync supports Azure only; set cloud_provider: Azure",
            "cfg.yaml:1:1: resource_group_name: the mandatory field resource_group_name is either empty or missing",
            "cfg.yaml:1:1: api_endpoint: the mandatory field api_endpoint is either empty or missing",
            "cfg.yaml:1:1: upstreams: there are no upstreams found in the config file: at least one is required",
        ]
    );
}

#[test]
fn empty_values_are_reported_where_they_are() {
    assert_eq!(
        errors("cloud_provider: Azure\nsubscription_id: \"\"\nresource_group_name:\napi_endpoint: https://h\nupstreams: []\n"),
        [
            "cfg.yaml:2:18: subscription_id: the mandatory field subscription_id is either empty or missing",
            "cfg.yaml:3:20: resource_group_name: the mandatory field resource_group_name is either empty or missing",
            "cfg.yaml:5:12: upstreams: there are no upstreams found in the config file: at least one is required",
        ]
    );
}

#[test]
fn missing_upstream_fields_are_reported_at_the_upstream() {
    assert_eq!(
        errors("subscription_id: s\nresource_group_name: r\napi_endpoint: https://h\nupstreams:\n  - max_conns: 1\n  - name: two\n"),
        [
            "cfg.yaml:5:5: upstreams[0].name: the mandatory field name is either empty or missing for an upstream",
            "cfg.yaml:5:5: upstreams[0].virtual_machine_scale_set: the mandatory field virtual_machine_scale_set is either empty or missing for an upstream",
            "cfg.yaml:5:5: upstreams[0].port: the mandatory field port is either zero or missing for an upstream",
            "cfg.yaml:5:5: upstreams[0].kind: the mandatory field kind is either not equal to http or stream or missing for an upstream",
            "cfg.yaml:6:5: upstreams[1].virtual_machine_scale_set: the mandatory field virtual_machine_scale_set is either empty or missing for the upstream two",
            "cfg.yaml:6:5: upstreams[1].port: the mandatory field port is either zero or missing for the upstream two",
            "cfg.yaml:6:5: upstreams[1].kind: the mandatory field kind is either not equal to http or stream or missing for the upstream two",
        ]
    );
}

#[test]
fn port_zero_is_rejected_with_its_value() {
    assert_eq!(
        errors(&file("", "port: 0\n    kind: http")),
        ["cfg.yaml:7:11: upstreams[0].port: the mandatory field port is either zero or missing for the upstream backend-one: it must be an integer from 1 to 65535 (value: \"0\")"]
    );
}

#[test]
fn port_out_of_range_negative_or_not_a_number_is_rejected() {
    for (value, column) in [
        ("70000", 11),
        ("-1", 11),
        ("abc", 11),
        ("\"8o\"", 11),
        ("80.5", 11),
    ] {
        let shown = value.trim_matches('"');
        assert_eq!(
            errors(&file("", &format!("port: {value}\n    kind: http"))),
            [format!("cfg.yaml:7:{column}: upstreams[0].port: the field port has invalid value for the upstream backend-one: it must be an integer from 1 to 65535 (value: \"{shown}\")")],
            "port {value}"
        );
    }
}

#[test]
fn kind_must_be_http_or_stream() {
    assert_eq!(
        errors(&upstream_with("    port: 80\n    kind: tcp\n")),
        ["cfg.yaml:8:11: upstreams[0].kind: the mandatory field kind is either not equal to http or stream or missing for the upstream backend-one (value: \"tcp\")"]
    );
}

#[test]
fn max_conns_and_max_fails_must_be_non_negative_integers() {
    assert_eq!(
        errors(&file("", "port: 80\n    kind: http\n    max_conns: -1\n    max_fails: many")),
        [
            "cfg.yaml:9:16: upstreams[0].max_conns: the field max_conns has invalid value: it must be a non-negative integer (at most 4294967295) (value: \"-1\")",
            "cfg.yaml:10:16: upstreams[0].max_fails: the field max_fails has invalid value: it must be a non-negative integer (at most 4294967295) (value: \"many\")",
        ]
    );
}

#[test]
fn fail_timeout_and_slow_start_must_be_nginx_times() {
    assert_eq!(
        errors(&file("", "port: 80\n    kind: http\n    fail_timeout: 10 seconds\n    slow_start: -5s")),
        [
            "cfg.yaml:9:19: upstreams[0].fail_timeout: the field fail_timeout has invalid value: it must be an NGINX time such as 10s, 90 or 1m30s (units s, m, h, d, w, M, y; a bare number is seconds) (value: \"10 seconds\")",
            "cfg.yaml:10:17: upstreams[0].slow_start: the field slow_start has invalid value: it must be an NGINX time such as 10s, 90 or 1m30s (units s, m, h, d, w, M, y; a bare number is seconds) (value: \"-5s\")",
        ]
    );
}

#[test]
fn nginx_times_in_the_file_are_parsed() {
    let c = valid(&file(
        "",
        "port: 80\n    kind: http\n    fail_timeout: 1m30s\n    slow_start: 2m",
    ));
    assert_eq!(c.upstreams[0].fail_timeout, Duration::from_secs(90));
    assert_eq!(c.upstreams[0].slow_start, Duration::from_secs(120));
    assert_eq!(
        config::format_nginx_time(c.upstreams[0].fail_timeout),
        "90s"
    );
    assert_eq!(config::format_nginx_time(c.upstreams[0].slow_start), "120s");
    assert_eq!(
        config::parse_nginx_time("1h 30m"),
        Some(Duration::from_secs(5400))
    );
}

#[test]
fn sub_second_server_times_are_refused_because_nginx_reads_whole_seconds() {
    assert_eq!(
        errors(&file("", "port: 80\n    kind: http\n    slow_start: 500ms")),
        ["cfg.yaml:9:17: upstreams[0].slow_start: the field slow_start has invalid value: NGINX takes whole seconds here (value: \"500ms\")"]
    );
}

#[test]
fn sync_interval_must_be_a_positive_go_duration() {
    let line = |value: &str| {
        errors(&file(
            &format!("sync_interval: {value}\n"),
            "port: 80\n    kind: http",
        ))
    };
    assert_eq!(
        line("0s"),
        ["cfg.yaml:4:16: sync_interval: the mandatory field sync_interval is either 0, negative or missing: it must be a duration greater than 0, such as 5s (value: \"0s\")"]
    );
    assert_eq!(
        line("-5s"),
        ["cfg.yaml:4:16: sync_interval: the mandatory field sync_interval is either 0, negative or missing: it must be a duration greater than 0, such as 5s (value: \"-5s\")"]
    );
    assert_eq!(
        line("5"),
        ["cfg.yaml:4:16: sync_interval: the field sync_interval has invalid value: a duration needs a unit, such as 5s, 500ms, 1m30s or 1h (value: \"5\")"]
    );
    assert_eq!(
        line("1d"),
        ["cfg.yaml:4:16: sync_interval: the field sync_interval has invalid value: it must be a duration such as 5s, 500ms, 1m30s or 1h (units ns, us, ms, s, m, h) (value: \"1d\")"]
    );
    let ok = |value: &str| {
        valid(&file(
            &format!("sync_interval: {value}\n"),
            "port: 80\n    kind: http",
        ))
        .sync_interval
    };
    assert_eq!(ok("1m30s"), Duration::from_secs(90));
    assert_eq!(ok("500ms"), Duration::from_millis(500));
    assert_eq!(ok("1h"), Duration::from_secs(3600));
}

#[test]
fn cloud_provider_aws_is_rejected_as_azure_only() {
    assert_eq!(
        errors(&file("cloud_provider: AWS\n", "port: 80\n    kind: http")),
        ["cfg.yaml:4:17: cloud_provider: vmss-sync supports Azure only: cloud_provider must be Azure (value: \"AWS\")"]
    );
    assert_eq!(
        errors(&file("cloud_provider: azure\n", "port: 80\n    kind: http")),
        ["cfg.yaml:4:17: cloud_provider: the field cloud_provider has invalid value: vmss-sync supports Azure only, so it must be Azure (the value is case-sensitive) (value: \"azure\")"]
    );
}

#[test]
fn api_endpoint_must_be_an_absolute_http_url() {
    let with = |endpoint: &str| {
        errors(&format!(
            "subscription_id: s\nresource_group_name: r\napi_endpoint: {endpoint}\nupstreams: [{{name: u, virtual_machine_scale_set: v, port: 80, kind: http}}]\n"
        ))
    };
    assert_eq!(
        with("127.0.0.1:8080/api"),
        ["cfg.yaml:3:15: api_endpoint: must be an absolute URL starting with http:// or https:// (value: \"127.0.0.1:8080/api\")"]
    );
    assert_eq!(
        with("/api"),
        ["cfg.yaml:3:15: api_endpoint: must be an absolute URL starting with http:// or https:// (value: \"/api\")"]
    );
    assert_eq!(
        with("ftp://h/api"),
        ["cfg.yaml:3:15: api_endpoint: must be an http:// or https:// URL, not ftp: (value: \"ftp://h/api\")"]
    );
    assert_eq!(
        with("https://h/api?x=1"),
        ["cfg.yaml:3:15: api_endpoint: must not have a query (?...) or fragment (#...) (value: \"https://h/api?x=1\")"]
    );
}

#[test]
fn http_endpoint_to_non_loopback_host_with_custom_headers_is_rejected() {
    let text = "subscription_id: s\nresource_group_name: r\napi_endpoint: http://nginx.internal:8080/api\n\
                custom_headers:\n  Authorization: ApiKey hunter2\n\
                upstreams: [{name: u, virtual_machine_scale_set: v, port: 80, kind: http}]\n";
    let lines = errors(text);
    assert_eq!(
        lines,
        ["cfg.yaml:3:15: api_endpoint: plain http to a host that is not a loopback address is not allowed when custom_headers are set (they may carry an API key); secrets must not be sent unencrypted: use https (value: \"http://nginx.internal:8080/api\")"]
    );
    // The same over https, or over http to a loopback host, or without headers, is fine.
    valid(&text.replace("http://nginx.internal", "https://nginx.internal"));
    valid(&text.replace("http://nginx.internal", "http://[::1]"));
    valid(&text.replace("custom_headers:\n  Authorization: ApiKey hunter2\n", ""));
}

#[test]
fn http_endpoint_with_credentials_in_the_url_is_rejected_and_redacted() {
    let lines = errors(&file("", "port: 80\n    kind: http").replace(
        "http://127.0.0.1:8080/api",
        "http://admin:hunter2@10.1.2.3/api",
    ));
    assert_eq!(
        lines,
        ["cfg.yaml:3:15: api_endpoint: plain http to a host that is not a loopback address is not allowed when the URL holds credentials; secrets must not be sent unencrypted: use https (value: \"http://<redacted>@10.1.2.3/api\")"]
    );
}

#[test]
fn resource_manager_endpoint_over_http_must_be_loopback() {
    assert_eq!(
        errors(&file("resource_manager_endpoint: http://arm.example.com\n", "port: 80\n    kind: http")),
        ["cfg.yaml:4:28: resource_manager_endpoint: must use https: plain http is allowed only to a loopback address (127.0.0.0/8, ::1, localhost) (value: \"http://arm.example.com\")"]
    );
    let c = valid(&file(
        "resource_manager_endpoint: http://127.0.0.1:9999\n",
        "port: 80\n    kind: http",
    ));
    assert_eq!(
        c.resource_manager_endpoint.as_str(),
        "http://127.0.0.1:9999/"
    );
}

#[test]
fn log_format_and_log_level_take_known_words() {
    assert_eq!(
        errors(&file("log_format: xml\nlog_level: verbose\n", "port: 80\n    kind: http")),
        [
            "cfg.yaml:4:13: log_format: the field log_format has invalid value: it must be one of text, json (value: \"xml\")",
            "cfg.yaml:5:12: log_level: the field log_level has invalid value: it must be one of error, warn, info, debug, trace (value: \"verbose\")",
        ]
    );
}

#[test]
fn unknown_keys_get_a_did_you_mean() {
    assert_eq!(
        errors(&file("sync_intervall: 5s\n", "prot: 80\n    kind: http")),
        [
            "cfg.yaml:4:1: sync_intervall: unknown key; did you mean sync_interval?",
            "cfg.yaml:6:5: upstreams[0].port: the mandatory field port is either zero or missing for the upstream backend-one",
            "cfg.yaml:8:5: upstreams[0].prot: unknown key; did you mean port?",
        ]
    );
}

#[test]
fn unknown_keys_far_from_any_known_key_list_the_known_keys() {
    assert_eq!(
        errors(&file("colour: blue\n", "port: 80\n    kind: http")),
        ["cfg.yaml:4:1: colour: unknown key; the known keys here are cloud_provider, subscription_id, resource_group_name, api_endpoint, sync_interval, custom_headers, upstreams, targets, resource_manager_endpoint, resource_manager_audience, api_ca_file, resource_manager_ca_file, log_format, log_level, admin_listen, readiness_max_age, leader_election, events, health_interval, arm_read_burst, arm_reads_per_second"]
    );
}

#[test]
fn keys_in_the_wrong_section_or_for_aws_are_explained() {
    assert_eq!(
        errors(&file("region: eu-west-1\nmax_conns: 5\n", "port: 80\n    kind: http\n    autoscaling_group: g\n    sync_interval: 5s")),
        [
            "cfg.yaml:4:1: region: unknown key: region is an nginx-asg-sync setting for AWS; vmss-sync supports Azure only",
            "cfg.yaml:5:1: max_conns: unknown key here: max_conns is an upstream setting: it belongs in an entry of upstreams",
            "cfg.yaml:11:5: upstreams[0].autoscaling_group: unknown key: autoscaling_group is an nginx-asg-sync setting for AWS; vmss-sync supports Azure only",
            "cfg.yaml:12:5: upstreams[0].sync_interval: unknown key here: sync_interval is a top-level setting, not an upstream setting",
        ]
    );
}

#[test]
fn duplicate_keys_are_errors() {
    assert_eq!(
        errors(&file("subscription_id: other\n", "port: 80\n    kind: http\n    port: 81")),
        [
            "cfg.yaml:4:1: subscription_id: duplicate key: subscription_id is already set at line 1",
            "cfg.yaml:10:5: upstreams[0].port: duplicate key: port is already set at line 8",
        ]
    );
}

#[test]
fn duplicate_upstream_names_name_both_lines() {
    let text = "subscription_id: s\nresource_group_name: r\napi_endpoint: https://h\nupstreams:\n\
                - {name: web, virtual_machine_scale_set: a, port: 80, kind: http}\n\
                - {name: other, virtual_machine_scale_set: b, port: 80, kind: http}\n\
                - {name: web, virtual_machine_scale_set: c, port: 81, kind: stream}\n";
    assert_eq!(
        errors(text),
        ["cfg.yaml:7:10: upstreams[2].name: duplicate upstream name: upstreams[0] at line 5 has the same name; upstream names must be unique (value: \"web\")"]
    );
}

#[test]
fn upstreams_must_be_a_list_of_mappings() {
    assert_eq!(
        errors("subscription_id: s\nresource_group_name: r\napi_endpoint: https://h\nupstreams:\n  name: web\n"),
        ["cfg.yaml:5:3: upstreams: upstreams must be a list of upstreams, not a mapping"]
    );
    assert_eq!(
        errors("subscription_id: s\nresource_group_name: r\napi_endpoint: https://h\nupstreams: [web]\n"),
        ["cfg.yaml:4:13: upstreams[0]: each upstream must be a mapping with name, virtual_machine_scale_set, port and kind, not a single value"]
    );
}

#[test]
fn names_that_would_change_api_paths_are_rejected() {
    assert_eq!(
        errors(&file("", "port: 80\n    kind: http").replace("name: backend-one", "name: a/b")),
        ["cfg.yaml:5:11: upstreams[0].name: invalid name: it must not contain /, \\, ?, #, %, spaces or control characters (value: \"a/b\")"]
    );
}

#[test]
fn yaml_syntax_errors_name_the_position() {
    let lines = errors("subscription_id: s\nupstreams: [\n");
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("cfg.yaml:3:1: invalid YAML: "),
        "{}",
        lines[0]
    );
}

#[test]
fn several_errors_are_reported_at_once_in_file_order() {
    let text = "cloud_provider: AWS\nsubscription_id: s\nresource_group_name: r\napi_endpoint: https://h\n\
                sync_interval: soon\nupstreams:\n  - name: a\n    virtual_machine_scale_set: v\n    \
                port: 0\n    kind: udp\n  - name: b\n    virtual_machine_scale_set: v\n    port: 99999\n    \
                kind: http\n    max_fails: -3\n";
    let lines = errors(text);
    assert_eq!(
        lines,
        [
            "cfg.yaml:1:17: cloud_provider: vmss-sync supports Azure only: cloud_provider must be Azure (value: \"AWS\")",
            "cfg.yaml:5:16: sync_interval: the field sync_interval has invalid value: it must be a duration such as 5s, 500ms, 1m30s or 1h (units ns, us, ms, s, m, h) (value: \"soon\")",
            "cfg.yaml:9:11: upstreams[0].port: the mandatory field port is either zero or missing for the upstream a: it must be an integer from 1 to 65535 (value: \"0\")",
            "cfg.yaml:10:11: upstreams[0].kind: the mandatory field kind is either not equal to http or stream or missing for the upstream a (value: \"udp\")",
            "cfg.yaml:13:11: upstreams[1].port: the field port has invalid value for the upstream b: it must be an integer from 1 to 65535 (value: \"99999\")",
            "cfg.yaml:15:16: upstreams[1].max_fails: the field max_fails has invalid value: it must be a non-negative integer (at most 4294967295) (value: \"-3\")",
        ]
    );
    let e = parse_with(text, &no_env).unwrap_err();
    assert_eq!(e.errors.len(), 6);
    assert_eq!(e.errors[4].key, "upstreams[1].port");
    assert_eq!(e.errors[4].value.as_deref(), Some("99999"));
    assert_eq!((e.errors[4].line, e.errors[4].column), (13, 11));
    assert_eq!(e.errors[4].file, Path::new("cfg.yaml"));
}

#[test]
fn env_vars_are_substituted_and_escaped() {
    let env = |name: &str| match name {
        "SUB" => Some("1234".to_owned()),
        "API_KEY" => Some("hunter2".to_owned()),
        _ => None,
    };
    let text = "subscription_id: ${SUB}\nresource_group_name: rg\napi_endpoint: https://h/nplus\n\
                custom_headers:\n  Authorization: ApiKey ${API_KEY}\n  X-Literal: \"$${NOT_A_VAR}\"\n\
                upstreams: [{name: u, virtual_machine_scale_set: v, port: 80, kind: http}]\n";
    let c = parse_with(text, &env).unwrap();
    assert_eq!(c.subscription_id, "1234");
    assert_eq!(c.custom_headers[0].1.expose(), "ApiKey hunter2");
    assert_eq!(c.custom_headers[1].1.expose(), "${NOT_A_VAR}");
}

#[test]
fn unset_env_var_names_key_and_variable_but_not_a_secret_value() {
    let text = "subscription_id: ${SUB}\nresource_group_name: rg\napi_endpoint: https://h/nplus\n\
                custom_headers:\n  Authorization: ApiKey ${API_KEY}\n\
                upstreams: [{name: u, virtual_machine_scale_set: v, port: \"${PORT}\", kind: http}]\n";
    assert_eq!(
        errors(text),
        [
            "cfg.yaml:1:18: subscription_id: environment variable SUB is not set (value: \"${SUB}\")",
            "cfg.yaml:5:18: custom_headers.Authorization: environment variable API_KEY is not set",
            "cfg.yaml:6:59: upstreams[0].port: environment variable PORT is not set (value: \"${PORT}\")",
        ]
    );
}

#[test]
fn unterminated_env_reference_is_an_error() {
    assert_eq!(
        errors(&file("", "port: 80\n    kind: http").replace("rg\n", "rg-${X\n")),
        ["cfg.yaml:2:22: resource_group_name: \"${\" without a closing \"}\" (write \"$${\" for a literal \"${\") (value: \"rg-${X\")"]
    );
}

#[test]
fn substituted_values_are_type_checked_and_shown_unsubstituted() {
    let env = |name: &str| (name == "PORT").then(|| "http".to_owned());
    assert_eq!(
        errors_with(&file("", "port: ${PORT}\n    kind: http"), &env),
        ["cfg.yaml:7:11: upstreams[0].port: the field port has invalid value for the upstream backend-one: it must be an integer from 1 to 65535 (value: \"${PORT}\")"]
    );
}

#[test]
fn custom_headers_must_be_legal_http_headers() {
    let text = file(
        "custom_headers:\n  Bad Name: x\n  X-Ok: \"line1\\nline2 hunter2\"\n  x-ok: again\n",
        "port: 80\n    kind: http",
    );
    assert_eq!(
        errors(&text),
        [
            "cfg.yaml:5:3: custom_headers.Bad Name: invalid HTTP header name: it must be one or more letters, digits and !#$%&'*+-.^_`|~",
            "cfg.yaml:6:9: custom_headers.X-Ok: invalid HTTP header value: only visible ASCII characters, spaces and tabs are allowed (the value is not shown: header values may be secret)",
            "cfg.yaml:7:3: custom_headers.x-ok: duplicate header: x-ok is already set at line 6 (header names are case-insensitive)",
        ]
    );
}

#[test]
fn secrets_never_appear_in_error_output() {
    let env = |name: &str| (name == "KEY").then(|| "hunter2\n".to_owned());
    let text = "subscription_id: s\nresource_group_name: r\napi_endpoint: http://10.9.9.9/api\n\
                custom_headers:\n  Authorization: ApiKey ${KEY}\n  X-Token: [hunter2]\n  X-Other: ${MISSING}hunter2\n\
                custom_header:\n  Authorization: hunter2\n\
                api_key: hunter2\n\
                upstreams: [{name: u, virtual_machine_scale_set: v, port: 80, kind: http}]\n";
    let e = parse_with(text, &env).unwrap_err();
    let shown = e.to_string();
    assert!(e.errors.len() >= 5, "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!format!("{e:?}").contains("hunter2"));
}

#[test]
fn load_reads_the_file_and_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, file("", "port: 80\n    kind: stream")).unwrap();
    let c = config::load(&path, &no_env).unwrap();
    assert_eq!(c.path, path);
    assert_eq!(c.upstreams[0].kind, UpstreamKind::Stream);

    std::fs::write(&path, file("", "port: 0\n    kind: stream")).unwrap();
    let e = config::load(&path, &no_env).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:7:11: upstreams[0].port:", path.display())),
        "{e}"
    );
}

#[test]
fn unreadable_file_is_one_error_naming_the_file() {
    let e = config::load(Path::new("/nonexistent/vmss-sync.yaml"), &no_env).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    let shown = e.to_string();
    assert!(
        shown.starts_with("/nonexistent/vmss-sync.yaml: couldn't read the config file: "),
        "{shown}"
    );
}

/// A file with a Data Plane API target `edge` (lines 1-8) and `upstreams:` at line 9, the
/// first upstream's `- name:` at line 10.
fn with_edge(upstreams: &str) -> String {
    format!(
        "subscription_id: sub\nresource_group_name: rg\ntargets:\n  edge:\n    type: haproxy_dataplane\n    \
         url: http://127.0.0.1:5555\n    username: admin\n    password: p\nupstreams:\n{upstreams}"
    )
}

#[test]
fn services_take_neither_port_nor_port_tag() {
    assert_eq!(
        errors(&with_edge(
            "  - name: azure\n    target: edge\n    port: 80\n    port_tag: App:Port\n    services: {}\n    kind: http\n"
        )),
        [
            "cfg.yaml:12:11: upstreams[0].port: port cannot be combined with services: the port of each service comes from its service port tag (services.port_tag) (value: \"80\")",
            "cfg.yaml:13:15: upstreams[0].port_tag: port_tag cannot be combined with services: the port comes from the service port tag (services.port_tag), and an instance's own port from services.instance_port_tag (value: \"App:Port\")",
        ]
    );
}

#[test]
fn services_keys_are_checked_together() {
    assert_eq!(
        errors(&with_edge(
            "  - name: azure\n    target: edge\n    services:\n      name_tag: \"\"\n      port_tag: \" \"\n      \
             separator: \"/\"\n      name_tags: x\n      port: 80\n    kind: http\n  - name: b\n    target: edge\n    \
             services: {separator: \"\", instance_port_tag: \"\"}\n    kind: http\n  - name: c\n    target: edge\n    \
             services: [x]\n    kind: http\n"
        )),
        [
            "cfg.yaml:13:17: upstreams[0].services.name_tag: the field name_tag must not be empty: it names a tag (leave the key out for the default HAProxy:Service:Name) (value: \"\")",
            "cfg.yaml:14:17: upstreams[0].services.port_tag: the field port_tag must not be empty: it names a tag (leave the key out for the default HAProxy:Service:Port) (value: \" \")",
            "cfg.yaml:15:18: upstreams[0].services.separator: invalid separator: it becomes part of HAProxy backend names, so it may hold only letters, digits and . _ : - (value: \"/\")",
            "cfg.yaml:16:7: upstreams[0].services.name_tags: unknown key; did you mean name_tag?",
            "cfg.yaml:17:7: upstreams[0].services.port: unknown key here: port is an upstream setting, not a services setting (services has name_tag, port_tag, instance_port_tag and separator)",
            "cfg.yaml:21:27: upstreams[1].services.separator: the separator must not be empty: it separates the parts of backend names (leave the key out for the default -) (value: \"\")",
            "cfg.yaml:21:50: upstreams[1].services.instance_port_tag: the field instance_port_tag must not be empty: it names a tag (leave the key out for the default HAProxy:Instance:Port) (value: \"\")",
            "cfg.yaml:25:15: upstreams[2].services: services must be a mapping with name_tag, port_tag, instance_port_tag and separator (each optional; services: {} takes the defaults), not a list",
        ]
    );
}

#[test]
fn a_template_name_must_be_a_backend_name_prefix() {
    assert_eq!(
        errors(&with_edge(
            "  - name: web+blue\n    target: edge\n    services: {}\n    kind: http\n"
        )),
        ["cfg.yaml:10:11: upstreams[0].name: with services, the name is the prefix of every backend name ({name}{separator}{service}{separator}{port}{separator}{region}), so it may hold only letters, digits and . _ : - (value: \"web+blue\")"]
    );
    // Without services the same name is fine (NGINX Plus takes it).
    valid(&file("", "port: 80\n    kind: http").replace("backend-one", "web+blue"));
}

#[test]
fn templates_may_not_overlap_other_upstreams_on_their_target() {
    assert_eq!(
        errors(&with_edge(
            "  - name: azure\n    target: edge\n    services: {}\n    kind: http\n\
             \x20 - name: azure-web-80-eastus\n    target: edge\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n\
             \x20 - name: azure-eu\n    target: edge\n    services: {}\n    kind: http\n\
             \x20 - name: azure-web-x\n    target: edge\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n\
             \x20 - name: azure\n    target: edge\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n"
        )),
        [
            "cfg.yaml:14:11: upstreams[1].name: this name has the shape of a backend of the template azure (upstreams[0] at line 10: azure-{service}-{port}-{region}) on the same target, which would take it for a service that is gone and empty it; rename one of them (value: \"azure-web-80-eastus\")",
            "cfg.yaml:19:11: upstreams[2].name: the backends of this template (azure-eu-…) and those of the template azure (upstreams[0] at line 10: azure-…) are on the same target and their names overlap, so each would empty the other's; use prefixes that do not start with one another (value: \"azure-eu\")",
            "cfg.yaml:28:11: upstreams[4].name: duplicate upstream name: upstreams[0] at line 10 has the same name; upstream names must be unique (value: \"azure\")",
        ]
    );
}

#[test]
fn a_template_needs_no_scale_set_port_or_tags() {
    let c = valid(&with_edge(
        "  - name: azure\n    target: edge\n    resource_group_name: \"*\"\n    services: {}\n    kind: http\n",
    ));
    let u = &c.upstreams[0];
    assert_eq!(u.port, None);
    assert!(u.source.services.is_some());
    assert!(u
        .source
        .tags
        .as_ref()
        .is_some_and(|t| t.allow.contains_key("HAProxy:Service:Name")));
}

#[test]
fn unknown_upstream_keys_far_from_any_list_every_upstream_key() {
    assert_eq!(
        errors(&file("", "port: 80\n    kind: http\n    colour: blue")),
        ["cfg.yaml:9:5: upstreams[0].colour: unknown key; the known keys here are name, virtual_machine_scale_set, port, kind, max_conns, max_fails, fail_timeout, slow_start, target, subscription_id, resource_group_name, tags, port_tag, register_when, drain_timeout, services"]
    );
}
