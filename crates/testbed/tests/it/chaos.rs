//! The chaos soak's hooks: the fleet's truth per scale set, and a restart of the fake
//! NGINX Plus that loses the servers added through its API but keeps its upstreams.

use crate::support::common;

use std::time::Duration;

use common::*;
use serde_json::json;
use vmss_testbed::{Orchestration, UpstreamKind};

#[tokio::test]
async fn scale_set_state_shows_every_member_after_scheduled_changes() {
    let env = env().await;
    env.set("web", Orchestration::Uniform, 2);
    let f = env.tb.fleet();
    f.set_health_extension(SUB, RG, "web", true);
    let id = f.boot_instance(
        SUB,
        RG,
        "web",
        Duration::from_millis(100),
        Duration::from_millis(150),
    );
    let s = f.scale_set_state(SUB, RG, "web").expect("the set exists");
    assert_eq!(s.capacity, 3);
    assert!(s.reports_health);
    assert_eq!(s.orchestration, Orchestration::Uniform);
    let booting = s.members.iter().find(|m| m.id == id).expect("new member");
    assert_eq!(booting.power, "starting");
    assert_eq!(booting.provisioning, "Creating");
    assert_eq!(booting.health.as_deref(), Some("unknown"));
    assert_eq!(booting.ip, f.instance_ip(SUB, RG, "web", &id));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // Due changes are applied by the read itself, with no ARM request in between.
    let s = f.scale_set_state(SUB, RG, "web").expect("the set exists");
    let booted = s.members.iter().find(|m| m.id == id).expect("new member");
    assert_eq!(booted.power, "running");
    assert_eq!(booted.provisioning, "Succeeded");
    assert_eq!(booted.health.as_deref(), Some("healthy"));
    assert!(f.scale_set_state(SUB, RG, "nope").is_none());
}

#[tokio::test]
async fn nginx_restart_loses_the_servers_but_keeps_the_upstreams() {
    let env = env().await;
    let n = env.tb.nginx();
    n.add_upstream(UpstreamKind::Http, "web");
    n.add_upstream(UpstreamKind::Stream, "tcp");
    n.insert_server(UpstreamKind::Http, "web", json!({"server": "10.0.0.4:80"}));
    n.insert_server(
        UpstreamKind::Stream,
        "tcp",
        json!({"server": "10.0.0.4:9000"}),
    );
    n.restart();
    assert!(n.servers(UpstreamKind::Http, "web").is_empty());
    assert!(n.servers(UpstreamKind::Stream, "tcp").is_empty());
    // The upstream is still there and dynamic: the API answers 200 [] and takes a POST,
    // whose id starts again from 0.
    let http = client();
    let r = http
        .get(env.nginx("/9/http/upstreams/web/servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!([]));
    let id = n.insert_server(UpstreamKind::Http, "web", json!({"server": "10.0.0.5:80"}));
    assert_eq!(id, 0);
}
