//! The configuration keys of discovery: selection (names, lists, globs, per-upstream
//! subscription and resource groups, tags, port tags), `register_when`, `drain_timeout`,
//! `health_interval` and the read budget, with their defaults and their errors.

use std::path::Path;
use std::time::Duration;
use vmss_sync::config::{self, Config};
use vmss_sync::discovery::Groups;
use vmss_sync::model::RegisterWhen;
use vmss_sync::reconcile::selection_of;

const HEAD: &str = "cloud_provider: Azure\nsubscription_id: sub-top\nresource_group_name: rg-top\napi_endpoint: http://127.0.0.1:8080/api\n";

fn parse(extra_top: &str, upstreams: &str) -> Result<Config, Vec<String>> {
    let text = format!("{HEAD}{extra_top}upstreams:\n{upstreams}");
    config::parse(&text, Path::new("cfg.yaml"), &|_| None)
        .map_err(|e| e.errors.iter().map(|e| e.to_string()).collect())
}

fn ok(extra_top: &str, upstreams: &str) -> Config {
    parse(extra_top, upstreams).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn errs(extra_top: &str, upstreams: &str) -> Vec<String> {
    parse(extra_top, upstreams).expect_err("invalid")
}

#[test]
fn an_nginx_asg_sync_upstream_gets_the_defaults() {
    let c = ok(
        "",
        "  - name: a\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n",
    );
    let u = &c.upstreams[0];
    assert_eq!(u.port, Some(80));
    assert_eq!(u.source.scale_sets, ["web"]);
    assert_eq!(u.source.register_when, None, "healthy or running, per set");
    assert_eq!(u.source.drain_timeout, Duration::from_secs(30));
    assert_eq!(c.health_interval, Duration::from_secs(15));
    assert_eq!((c.arm_read_burst, c.arm_reads_per_second), (250, 25.0));
    let sel = selection_of(&c, u);
    assert_eq!(sel.subscription, "sub-top");
    assert_eq!(sel.groups, Groups::Named(vec!["rg-top".into()]));
    assert!(sel.is_exact() && sel.views);
}

#[test]
fn names_lists_globs_and_per_upstream_overrides_parse() {
    let c = ok(
        "health_interval: 30s\narm_read_burst: 100\narm_reads_per_second: 12.5\n",
        "  - name: a\n    virtual_machine_scale_set: [blue, green, web-*]\n    subscription_id: sub-2\n    \
         resource_group_name: [rg-1, rg-2]\n    port: 80\n    kind: http\n    register_when: always\n    drain_timeout: 0s\n\
         \x20 - name: b\n    tags:\n      allow: {role: web, env: prod*}\n      deny: {maintenance: \"true\"}\n    \
         resource_group_name: \"*\"\n    port_tag: app-port\n    kind: stream\n    register_when: running\n",
    );
    assert_eq!(c.health_interval, Duration::from_secs(30));
    assert_eq!((c.arm_read_burst, c.arm_reads_per_second), (100, 12.5));
    let a = &c.upstreams[0];
    assert_eq!(a.source.scale_sets, ["blue", "green", "web-*"]);
    assert_eq!(a.virtual_machine_scale_set, "blue,green,web-*");
    assert_eq!(a.source.register_when, Some(RegisterWhen::Always));
    assert_eq!(a.source.drain_timeout, Duration::ZERO);
    let sel = selection_of(&c, a);
    assert_eq!(sel.subscription, "sub-2");
    assert_eq!(
        sel.groups,
        Groups::Named(vec!["rg-1".into(), "rg-2".into()])
    );
    assert!(!sel.views, "always needs no instance views");
    let b = &c.upstreams[1];
    assert_eq!(b.port, None);
    assert_eq!(b.source.port_tag.as_deref(), Some("app-port"));
    let tags = b.source.tags.as_ref().expect("tags");
    assert_eq!(tags.allow.get("env").map(String::as_str), Some("prod*"));
    assert_eq!(
        tags.deny.get("maintenance").map(String::as_str),
        Some("true")
    );
    let sel = selection_of(&c, b);
    assert_eq!(sel.groups, Groups::All);
    assert!(sel.includes_vms());
}

#[test]
fn selection_mistakes_are_reported_with_their_position() {
    let e = errs(
        "arm_read_burst: 0\narm_reads_per_second: -1\nhealth_interval: 0s\n",
        "  - name: a\n    port: 80\n    kind: http\n\
         \x20 - name: b\n    tags: {deny: {x: y}}\n    port: 80\n    kind: http\n\
         \x20 - name: c\n    virtual_machine_scale_set: web\n    resource_group_name: [\"*\", rg-1]\n    port: 80\n    kind: http\n\
         \x20 - name: d\n    virtual_machine_scale_set: web/x\n    kind: http\n    register_when: sometimes\n    drain_timeout: soon\n",
    );
    let has = |needle: &str| {
        assert!(
            e.iter().any(|m| m.contains(needle)),
            "no error with {needle:?} in {e:#?}"
        )
    };
    has("cfg.yaml:5:17: arm_read_burst: the field arm_read_burst has invalid value");
    has("arm_reads_per_second: the field arm_reads_per_second has invalid value");
    has("health_interval: the mandatory field health_interval is either 0");
    has("upstreams[0].virtual_machine_scale_set: the mandatory field virtual_machine_scale_set is either empty or missing for the upstream a");
    has("upstreams[1].tags.allow: at least one tag is needed in allow");
    has("upstreams[2].resource_group_name: * (every resource group) cannot be listed with other resource groups");
    has("upstreams[3].virtual_machine_scale_set: invalid scale set name");
    has("upstreams[3].port: the mandatory field port is either zero or missing for the upstream d");
    has("upstreams[3].register_when: the field register_when has invalid value: it must be one of running, healthy, always");
    has("upstreams[3].drain_timeout: the field drain_timeout has invalid value");
}

#[test]
fn unknown_keys_inside_tags_get_a_did_you_mean() {
    let e = errs(
        "",
        "  - name: a\n    tags: {alow: {role: web}}\n    port: 80\n    kind: http\n",
    );
    assert!(
        e.iter()
            .any(|m| m.contains("upstreams[0].tags.alow: unknown key; did you mean allow?")),
        "{e:#?}"
    );
}
