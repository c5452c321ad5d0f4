//! The `targets:` section and `upstreams[].target`: valid mixes of targets, defaults, and
//! every problem reported at once with file, line, column, key and (when not secret) value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmss_sync::config::{
    self, Config, ConfigErrors, DataplaneApiVersion, HaproxyServerMode, RuntimeAddress, SlotGrowth,
    TargetSpec, UpstreamKind,
};

fn env(name: &str) -> Option<String> {
    (name == "DPAPI_PASSWORD").then(|| "s3cret-pw".to_string())
}

fn parse(text: &str) -> Result<Config, ConfigErrors> {
    config::parse(text, Path::new("cfg.yaml"), &env)
}

fn valid(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("unexpected errors:\n{e}"))
}

fn errors(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(c) => panic!("unexpectedly valid: {c:?}"),
        Err(e) => e.to_string().lines().map(str::to_owned).collect(),
    }
}

const HEAD: &str = "subscription_id: sub\nresource_group_name: rg\n";

/// Every kind of target at once, fed by the same scale sets, plus an upstream of the
/// top-level NGINX Plus API.
const MIXED: &str = "\
subscription_id: sub
resource_group_name: rg
api_endpoint: http://127.0.0.1:8080/api
targets:
  edge:
    type: haproxy_runtime
    address: /run/haproxy/admin.sock
  edge-tcp:
    type: haproxy_runtime
    address: 127.0.0.1:9999
    mode: slots
    server_prefix: web
    check: true
    timeout: 3s
  remote:
    type: haproxy_dataplane
    url: https://lb.example.com:5555
    username: admin
    password: ${DPAPI_PASSWORD}
    server_slots:
      base: 4
      growth_type: exponential
      growth_factor: 2
  oss:
    type: nginx_file
    path: /etc/nginx/conf.d/vmss.conf
    reload_command: [systemctl, reload, nginx]
  plus2:
    type: nginx_plus
    api_endpoint: https://n2.example.com/api
upstreams:
  - name: web
    virtual_machine_scale_set: web-vmss
    port: 80
    kind: http
  - name: web_rt
    virtual_machine_scale_set: web-vmss
    port: 80
    kind: http
    target: edge
  - name: web_dp
    virtual_machine_scale_set: web-vmss
    port: 80
    kind: stream
    target: remote
  - name: web_oss
    virtual_machine_scale_set: web-vmss
    port: 80
    kind: http
    target: oss
  - name: web_tpl
    virtual_machine_scale_set: web-vmss
    port: 80
    kind: http
    target: edge-tcp
";

#[test]
fn one_file_mixes_every_target_type_with_their_defaults() {
    let c = valid(MIXED);
    assert_eq!(c.targets.len(), 5);
    assert_eq!(
        c.upstreams
            .iter()
            .map(|u| u.target.as_deref())
            .collect::<Vec<_>>(),
        [
            None,
            Some("edge"),
            Some("remote"),
            Some("oss"),
            Some("edge-tcp")
        ]
    );
    let TargetSpec::HaproxyRuntime(rt) = &c.targets[0].spec else {
        panic!()
    };
    assert_eq!(
        rt.address,
        RuntimeAddress::Unix(PathBuf::from("/run/haproxy/admin.sock"))
    );
    assert_eq!(rt.mode, HaproxyServerMode::Auto);
    assert_eq!(rt.server_prefix, "vmss-");
    assert!(!rt.check);
    assert_eq!(rt.timeout, Duration::from_secs(10));
    let TargetSpec::HaproxyRuntime(tcp) = &c.targets[1].spec else {
        panic!()
    };
    assert_eq!(tcp.address, RuntimeAddress::Tcp("127.0.0.1:9999".into()));
    assert_eq!(
        (tcp.mode, tcp.server_prefix.as_str(), tcp.check),
        (HaproxyServerMode::Slots, "web", true)
    );
    let TargetSpec::HaproxyDataplane(dp) = &c.targets[2].spec else {
        panic!()
    };
    assert_eq!(dp.api_version, DataplaneApiVersion::V3);
    assert_eq!(dp.password.expose(), "s3cret-pw");
    assert_eq!(format!("{:?}", dp.password), "<redacted>");
    assert_eq!(
        (dp.server_slots.base, dp.server_slots.growth_type),
        (4, SlotGrowth::Exponential)
    );
    let TargetSpec::NginxFile(f) = &c.targets[3].spec else {
        panic!()
    };
    assert_eq!(f.validate_command, ["nginx", "-t"]);
    assert_eq!(f.reload_command, ["systemctl", "reload", "nginx"]);
    assert_eq!(c.targets[4].spec.type_name(), "nginx_plus");
}

#[test]
fn api_endpoint_is_optional_only_when_every_upstream_has_a_target() {
    let c = valid(&format!(
        "{HEAD}targets:\n  t:\n    type: haproxy_runtime\n    address: /s\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: t}}\n"
    ));
    assert!(c.api_endpoint.is_none());
    assert_eq!(
        errors(&format!(
            "{HEAD}targets:\n  t:\n    type: haproxy_runtime\n    address: /s\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: t}}\n  - {{name: b, virtual_machine_scale_set: v, port: 80, kind: http}}\n"
        )),
        ["cfg.yaml:1:1: api_endpoint: the mandatory field api_endpoint is either empty or missing"]
    );
}

#[test]
fn unknown_target_names_get_a_did_you_mean() {
    let text = format!(
        "{HEAD}targets:\n  edge:\n    type: haproxy_runtime\n    address: /s\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: egde}}\n  - {{name: b, virtual_machine_scale_set: v, port: 80, kind: http, target: far}}\n"
    );
    assert_eq!(
        errors(&text),
        [
            "cfg.yaml:8:75: upstreams[0].target: there is no target named egde; did you mean edge? (value: \"egde\")",
            "cfg.yaml:9:75: upstreams[1].target: there is no target named far; the targets are edge (value: \"far\")",
        ]
    );
    let none = format!("{HEAD}upstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: x}}\n");
    assert_eq!(
        errors(&none),
        ["cfg.yaml:4:75: upstreams[0].target: there is no target named x: targets is not set; define it under targets, or leave target out to use the NGINX Plus API of api_endpoint (value: \"x\")"]
    );
}

#[test]
fn every_target_problem_is_reported_at_once() {
    let text = format!(
        "{HEAD}api_endpoint: http://127.0.0.1/api
targets:
  a:
    type: haproxy_runtime
    adress: /s
    mode: fast
  b:
    type: haproxy_dataplane
    url: http://10.0.0.9:5555
    password: ${{NOPE}}
    server_slots: {{base: 0, growth_type: exponential, growth_factor: 1}}
  c:
    type: nginx_file
    path: relative.conf
    validate_command: nginx -t
    url: http://x
  d:
    type: haproxy
  e: {{}}
  bad name:
    type: nginx_file
    path: /x.conf
upstreams:
  - {{name: u, virtual_machine_scale_set: v, port: 80, kind: http}}
"
    );
    assert_eq!(
        errors(&text),
        [
            "cfg.yaml:6:5: targets.a.address: the mandatory field address is either empty or missing for the target a",
            "cfg.yaml:7:5: targets.a.adress: unknown key; did you mean address?",
            "cfg.yaml:8:11: targets.a.mode: the field mode has invalid value: it must be one of auto, dynamic, slots (value: \"fast\")",
            "cfg.yaml:10:5: targets.b.username: the mandatory field username is either empty or missing for the target b",
            "cfg.yaml:11:10: targets.b.url: must use https: the Data Plane API password must not be sent unencrypted (plain http is allowed only to a loopback address) (value: \"http://10.0.0.9:5555\")",
            "cfg.yaml:12:15: targets.b.password: environment variable NOPE is not set",
            "cfg.yaml:13:26: targets.b.server_slots.base: the field base has invalid value: a backend needs at least one slot (value: \"0\")",
            "cfg.yaml:13:70: targets.b.server_slots.growth_factor: the field growth_factor has invalid value: exponential growth needs a factor greater than 1 (value: \"1\")",
            "cfg.yaml:16:11: targets.c.path: the field path has invalid value: it must be an absolute file path, such as /etc/nginx/conf.d/vmss-upstreams.conf (value: \"relative.conf\")",
            "cfg.yaml:17:23: targets.c.validate_command: the field validate_command has invalid value: it must be a list of words (the program and its arguments, no shell), such as [nginx, -s, reload]",
            "cfg.yaml:18:5: targets.c.url: unknown key here: url is a setting of another target type",
            "cfg.yaml:20:11: targets.d.type: the field type has invalid value: it must be one of haproxy_runtime, haproxy_dataplane, nginx_file, nginx_plus, azure_route_server, azure_lb_pool (value: \"haproxy\")",
            "cfg.yaml:21:6: targets.e.type: the mandatory field type is missing for the target e: it must be one of haproxy_runtime, haproxy_dataplane, nginx_file, nginx_plus, azure_route_server, azure_lb_pool",
            "cfg.yaml:22:3: targets.bad name: invalid target name: it must be 1 to 64 letters, digits, -, _ and .",
        ]
    );
}

#[test]
fn the_dataplane_password_never_appears_in_messages() {
    let text = format!(
        "{HEAD}targets:\n  b:\n    type: haproxy_dataplane\n    url: ftp://h\n    username: admin\n    password: hunter2-secret\n    bogus: 1\nupstreams:\n  - {{name: u, virtual_machine_scale_set: v, port: 80, kind: http, target: b}}\n"
    );
    let all = errors(&text).join("\n");
    assert!(all.contains("targets.b.url"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn one_file_belongs_to_one_nginx_file_target() {
    let text = format!(
        "{HEAD}targets:\n  f:\n    type: nginx_file\n    path: /a.conf\n  g:\n    type: nginx_file\n    path: /a.conf\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: f}}\n"
    );
    assert_eq!(
        errors(&text),
        ["cfg.yaml:8:5: targets.g.path: targets.f already writes this file; upstreams that share a file belong to one nginx_file target (value: \"/a.conf\")"]
    );
}

#[test]
fn the_upstreams_of_one_nginx_file_share_a_kind() {
    let text = format!(
        "{HEAD}targets:\n  f:\n    type: nginx_file\n    path: /a.conf\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: f}}\n  - {{name: b, virtual_machine_scale_set: v, port: 80, kind: stream, target: f}}\n"
    );
    assert_eq!(
        errors(&text),
        ["cfg.yaml:9:77: upstreams[1].target: the nginx_file target f already holds http upstreams (upstreams[0]) and one file is included in one context: use another nginx_file target for stream upstreams (value: \"f\")"]
    );
}

#[test]
fn runtime_addresses_take_haproxy_and_url_forms() {
    for (written, expected) in [
        (
            "unix:/run/h.sock",
            RuntimeAddress::Unix("/run/h.sock".into()),
        ),
        (
            "unix@/run/h.sock",
            RuntimeAddress::Unix("/run/h.sock".into()),
        ),
        (
            "ipv4@127.0.0.1:9999",
            RuntimeAddress::Tcp("127.0.0.1:9999".into()),
        ),
        (
            "tcp:lb.internal:9999",
            RuntimeAddress::Tcp("lb.internal:9999".into()),
        ),
    ] {
        let c = valid(&format!(
            "{HEAD}targets:\n  t:\n    type: haproxy_runtime\n    address: {written}\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: t}}\n"
        ));
        let TargetSpec::HaproxyRuntime(rt) = &c.targets[0].spec else {
            panic!()
        };
        assert_eq!(rt.address, expected, "{written}");
    }
    let e = errors(&format!(
        "{HEAD}targets:\n  t:\n    type: haproxy_runtime\n    address: nowhere\n    server_prefix: web1\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: t}}\n"
    ));
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains("address: the field address has invalid value"),
        "{e:?}"
    );
    assert!(e[1].contains("not ending in a digit"), "{e:?}");
}

#[test]
fn nginx_asg_sync_files_are_unchanged() {
    let c = valid(&format!(
        "cloud_provider: Azure\n{HEAD}api_endpoint: http://127.0.0.1:8080/api\nupstreams:\n  - name: backend-one\n    virtual_machine_scale_set: backend-one-group\n    port: 80\n    kind: http\n"
    ));
    assert!(c.targets.is_empty());
    assert_eq!(c.upstreams[0].target, None);
    assert_eq!(c.upstreams[0].kind, UpstreamKind::Http);
    assert_eq!(
        c.api_endpoint.map(|u| u.to_string()).as_deref(),
        Some("http://127.0.0.1:8080/api")
    );
}

const AZURE_TARGETS: &str = "\
subscription_id: sub
resource_group_name: rg
targets:
  rs:
    type: azure_route_server
    subscription: sub-net
    resource_group: rg-net
    virtual_hub: rs-1
    peer_asn: 65010
  lb:
    type: azure_lb_pool
    subscription: sub-net
    resource_group: rg-net
    load_balancer: lb-1
    backend_pool: web
    virtual_network: /subscriptions/sub-net/resourceGroups/rg-net/providers/Microsoft.Network/virtualNetworks/vnet-1
    name_prefix: web-
    operation_timeout: 2m
upstreams:
  - {name: nva, virtual_machine_scale_set: nva, port: 179, kind: stream, target: rs, drain_timeout: 0s}
  - {name: web, virtual_machine_scale_set: web, port: 80, kind: http, target: lb, drain_timeout: 0s}
";

#[test]
fn azure_targets_parse_with_their_defaults() {
    let c = valid(AZURE_TARGETS);
    let TargetSpec::AzureRouteServer(rs) = &c.targets[0].spec else {
        panic!("{:?}", c.targets[0]);
    };
    assert_eq!(rs.subscription, "sub-net");
    assert_eq!(rs.virtual_hub, "rs-1");
    assert_eq!(rs.peer_asn, 65010);
    assert_eq!(rs.name_prefix, "vmss-sync-");
    assert_eq!(rs.max_peerings, 8);
    assert_eq!(rs.operation_timeout, Duration::from_secs(600));
    let TargetSpec::AzureLbPool(lb) = &c.targets[1].spec else {
        panic!("{:?}", c.targets[1]);
    };
    assert_eq!(lb.load_balancer, "lb-1");
    assert_eq!(lb.backend_pool, "web");
    assert!(lb.virtual_network.ends_with("/virtualNetworks/vnet-1"));
    assert_eq!(lb.name_prefix, "web-");
    assert_eq!(lb.operation_timeout, Duration::from_secs(120));
    assert_eq!(c.targets[0].spec.type_name(), "azure_route_server");
    assert_eq!(c.targets[1].spec.type_name(), "azure_lb_pool");
}

#[test]
fn azure_target_problems_are_all_reported_with_their_keys() {
    let text = format!(
        "{HEAD}targets:\n  rs:\n    type: azure_route_server\n    resource_group: rg\n    virtual_hub: rs-1\n    peer_asn: 65515\n    max_peerings: 0\n    name_prefix: -bad\n    backend_pool: p\n  lb:\n    type: azure_lb_pool\n    subscription: s\n    resource_group: rg\n    load_balancer: lb\n    backend_pool: p\n    virtual_network: vnet-1\n    operation_timeout: 0s\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: rs}}\n"
    );
    let e = errors(&text);
    let all = e.join("\n");
    assert!(
        all.contains("targets.rs.peer_asn: the field peer_asn has invalid value: Azure reserves AS number 65515"),
        "{all}"
    );
    assert!(
        all.contains("targets.rs.max_peerings: the field max_peerings has invalid value: it must be at least 1"),
        "{all}"
    );
    assert!(
        all.contains("targets.rs.name_prefix: the field name_prefix has invalid value"),
        "{all}"
    );
    assert!(
        all.contains("targets.rs.backend_pool"),
        "a key of another type: {all}"
    );
    assert!(
        all.contains("targets.rs.subscription: the mandatory field subscription is either empty or missing for the target rs"),
        "{all}"
    );
    assert!(
        all.contains("targets.lb.virtual_network: the field virtual_network has invalid value: it must be a virtual network resource id"),
        "{all}"
    );
    assert!(
        all.contains("targets.lb.operation_timeout: the mandatory field operation_timeout is either 0, negative or missing"),
        "{all}"
    );
    let asn = errors(&format!(
        "{HEAD}targets:\n  rs:\n    type: azure_route_server\n    subscription: s\n    resource_group: rg\n    virtual_hub: h\n    peer_asn: 4294967295\nupstreams:\n  - {{name: a, virtual_machine_scale_set: v, port: 80, kind: http, target: rs}}\n"
    ));
    assert_eq!(asn.len(), 1, "{asn:?}");
    assert!(asn[0].contains("from 1 to 4294967294"), "{asn:?}");
}

#[test]
fn azure_targets_hold_one_upstream_with_a_fixed_port() {
    let text = AZURE_TARGETS.replace(
        "  - {name: web, virtual_machine_scale_set: web, port: 80, kind: http, target: lb, drain_timeout: 0s}\n",
        "  - {name: web, virtual_machine_scale_set: web, port_tag: p, kind: http, target: lb}\n  - {name: web2, virtual_machine_scale_set: web, port: 80, kind: http, target: rs}\n",
    );
    let e = errors(&text);
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].contains(
            "upstreams[1].target: the Azure target lb needs the upstream's port to be set"
        ),
        "{e:?}"
    );
    assert!(
        e[1].contains("upstreams[2].target: the Azure target rs already holds upstreams[0]"),
        "{e:?}"
    );
}
