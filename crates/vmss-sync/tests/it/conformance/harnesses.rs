//! The harnesses of the conformance suite: one per target, each starting its real process
//! or testbed fake on loopback with people's entries in place.

use super::{DrainKind, Harness};
use crate::support::targets_common::*;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use url::Url;
use vmss_sync::azure::arm::{ArmClient, ArmOptions};
use vmss_sync::azure::auth::StaticToken;
use vmss_sync::config::{
    DataplaneApiVersion, HaproxyDataplaneTarget, HaproxyServerMode, LbPoolTarget,
    RouteServerTarget, RuntimeAddress, Secret, ServerSlots, SlotGrowth, UpstreamKind,
};
use vmss_sync::model::ServerParams;
use vmss_sync::plan::{Plan, Update};
use vmss_sync::target::haproxy_dataplane::HaproxyDataplane;
use vmss_sync::target::haproxy_runtime::HaproxyRuntime;
use vmss_sync::target::lb_backend_pool::LbBackendPool;
use vmss_sync::target::nginx_file::NginxFile;
use vmss_sync::target::nginx_plus::NginxPlus;
use vmss_sync::target::route_server::RouteServer;
use vmss_sync::target::{Target, UpstreamRef};
use vmss_testbed::{dataplane_server, Testbed, TestbedOptions, DATAPLANE_USER};

const WAIT: Duration = Duration::from_secs(20);
const SUB: &str = "00000000-0000-0000-0000-0000000000c1";
const RG: &str = "rg-conformance";

fn params() -> ServerParams {
    ServerParams {
        max_conns: 20,
        max_fails: 1,
        fail_timeout: Duration::from_secs(10),
        slow_start: Duration::ZERO,
    }
}

fn upstream(name: &str, kind: UpstreamKind) -> UpstreamRef {
    UpstreamRef::new(name, kind)
}

// ---------------------------------------------------------------------------------------
// HAProxy Runtime API, real HAProxy

/// A real HAProxy with backend `be` and a server of people's, backends answering on
/// 127.0.0.x.
pub struct HaproxyHarness {
    hap: Haproxy,
    _backends: Backends,
    servers: Vec<String>,
    _dir: tempfile::TempDir,
}

impl HaproxyHarness {
    async fn start(first_ip: u8, backend: &str) -> Option<Self> {
        if !have("haproxy") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = ips(first_ip, first_ip + 2);
        let (backends, port) = Backends::start_free(&pool).await;
        let hap = Haproxy::start(
            dir.path(),
            "be",
            &format!("backend be\n{backend}    server people1 127.0.0.1:9 disabled\n"),
        )
        .await;
        Some(HaproxyHarness {
            hap,
            _backends: backends,
            servers: addrs(&pool, port),
            _dir: dir,
        })
    }

    fn target(&self) -> Arc<dyn Target> {
        Arc::new(HaproxyRuntime::new(
            RuntimeAddress::Unix(self.hap.socket.clone()),
            HaproxyServerMode::Auto,
            "vmss-",
            false,
            Duration::from_secs(5),
            BTreeMap::from([("be".to_string(), params())]),
        ))
    }

    async fn foreign(&self) -> String {
        self.hap
            .servers("be")
            .await
            .iter()
            .filter(|(name, ..)| !name.starts_with("vmss-"))
            .map(|(name, addr, admin)| format!("{name} {addr} {admin}\n"))
            .collect()
    }

    /// Servers named with the prefix, leaving out free template slots (in maintenance).
    async fn held(&self) -> Vec<(String, bool)> {
        self.hap
            .servers("be")
            .await
            .into_iter()
            .filter(|(name, _, admin)| name.starts_with("vmss-") && admin & 0x01 == 0)
            .map(|(_, addr, admin)| (addr, admin & 0x08 != 0))
            .collect()
    }

    async fn serving(&self, want: &[String]) -> Vec<String> {
        until_answered(&client(), &self.hap.url(), want, WAIT).await
    }
}

macro_rules! haproxy_harness {
    ($name:ident, $first_ip:expr, $backend:expr) => {
        pub struct $name(HaproxyHarness);

        #[async_trait]
        impl Harness for $name {
            async fn start() -> Option<Self> {
                HaproxyHarness::start($first_ip, $backend).await.map($name)
            }
            fn target_with(&self, _: &str) -> Arc<dyn Target> {
                self.0.target()
            }
            fn upstream(&self) -> UpstreamRef {
                upstream("be", UpstreamKind::Http)
            }
            fn missing(&self) -> UpstreamRef {
                upstream("nope", UpstreamKind::Http)
            }
            fn servers(&self) -> Vec<String> {
                self.0.servers.clone()
            }
            fn params(&self) -> ServerParams {
                params()
            }
            fn drain(&self) -> DrainKind {
                DrainKind::Observed
            }
            async fn foreign(&self) -> String {
                self.0.foreign().await
            }
            async fn held(&self) -> Vec<(String, bool)> {
                self.0.held().await
            }
            async fn serving(&self, want: &[String]) -> Option<Vec<String>> {
                Some(self.0.serving(want).await)
            }
        }
    };
}

haproxy_harness!(HaproxyDynamic, 20, "    balance roundrobin\n");
haproxy_harness!(
    HaproxyTemplate,
    24,
    "    balance static-rr\n    server-template vmss- 1-4 127.0.0.1:1 disabled\n"
);

// ---------------------------------------------------------------------------------------
// nginx_file, real nginx

/// A real nginx including the upstream file, with an upstream of people's in its own
/// configuration.
pub struct NginxFileHarness {
    nginx: Nginx,
    file: PathBuf,
    commands: (Vec<String>, Vec<String>),
    _backends: Backends,
    servers: Vec<String>,
    _dir: tempfile::TempDir,
}

#[async_trait]
impl Harness for NginxFileHarness {
    async fn start() -> Option<Self> {
        if !have("nginx") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let pool = ips(28, 30);
        let (backends, port) = Backends::start_free(&pool).await;
        let file = dir.path().join("upstreams.conf");
        placeholder_upstreams(&file, &["be"]);
        let nginx = Nginx::start_with(
            dir.path(),
            "be",
            &file,
            "    upstream people { server 127.0.0.1:9; }\n",
        )
        .await;
        Some(NginxFileHarness {
            commands: nginx_commands(dir.path()),
            nginx,
            file,
            _backends: backends,
            servers: addrs(&pool, port),
            _dir: dir,
        })
    }
    fn target_with(&self, _: &str) -> Arc<dyn Target> {
        let (validate, reload) = self.commands.clone();
        Arc::new(NginxFile::new(
            self.file.clone(),
            validate,
            reload,
            Duration::from_secs(30),
            vec![("be".into(), UpstreamKind::Http)],
            BTreeMap::from([("be".to_string(), params())]),
        ))
    }
    /// Reloads of nginx (the reload command logs each one) and the file's inode and
    /// modification time (a rewrite replaces the file by a rename).
    async fn writes(&self) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let reloads = std::fs::read_to_string(self.nginx.dir.join("reloads.log"))
            .unwrap_or_default()
            .lines()
            .count();
        let meta = std::fs::metadata(&self.file).expect("upstream file");
        Some(format!(
            "{reloads} reloads, file inode {} modified {:?}",
            meta.ino(),
            meta.modified().ok()
        ))
    }
    fn upstream(&self) -> UpstreamRef {
        upstream("be", UpstreamKind::Http)
    }
    fn missing(&self) -> UpstreamRef {
        upstream("nope", UpstreamKind::Http)
    }
    fn servers(&self) -> Vec<String> {
        self.servers.clone()
    }
    fn params(&self) -> ServerParams {
        params()
    }
    fn drain(&self) -> DrainKind {
        DrainKind::Observed
    }
    /// The nginx configuration around the file (people's upstream is in it).
    async fn foreign(&self) -> String {
        std::fs::read_to_string(&self.nginx.conf).expect("nginx.conf")
    }
    /// The `server` lines of the file, as nginx reads them (`down`: no new traffic).
    async fn held(&self) -> Vec<(String, bool)> {
        std::fs::read_to_string(&self.file)
            .expect("upstream file")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .filter(|l| !l.starts_with("127.0.0.1:1 "))
            .filter_map(|l| {
                let addr = l.split_whitespace().next()?;
                Some((addr.to_string(), l.contains(" down;")))
            })
            .collect()
    }
    async fn serving(&self, want: &[String]) -> Option<Vec<String>> {
        Some(until_answered(&fresh_client(), &self.nginx.url(), want, WAIT).await)
    }
    /// One file for every upstream: an address nginx refuses fails the whole write (it is
    /// rolled back), so the item that fails alone is an update of a server that is no
    /// longer in the file.
    fn failing(&self, good: Plan) -> (Vec<(UpstreamRef, Plan)>, String) {
        let mut p = good;
        p.update.push(Update {
            id: 99,
            server: "127.0.0.99:1".into(),
            params: None,
            state: vmss_sync::model::ServerState::Draining,
            was: vmss_sync::model::ServerState::Active,
        });
        (vec![(self.upstream(), p)], "127.0.0.99:1".into())
    }
}

// ---------------------------------------------------------------------------------------
// Testbed fakes

async fn testbed() -> Testbed {
    Testbed::start(TestbedOptions::default())
        .await
        .expect("testbed starts")
}

/// Requests other than GET the testbed has received, every service together.
fn writes(tb: &Testbed) -> String {
    let n = tb.requests().iter().filter(|r| r.method != "GET").count();
    format!("{n} requests other than GET")
}

fn tb_http() -> vmss_testbed::UpstreamKind {
    vmss_testbed::UpstreamKind::Http
}

/// The testbed's NGINX Plus API behind an API key (`Authorization: ApiKey …`, as
/// NGINXaaS), with upstream `be` and an upstream of people's.
pub struct NginxPlusHarness {
    tb: Testbed,
}

const HEADER_SECRET: &str = "hdr-S3cret-value-4711";

#[async_trait]
impl Harness for NginxPlusHarness {
    async fn start() -> Option<Self> {
        let tb = Testbed::start(TestbedOptions {
            nginx_api_key: Some(HEADER_SECRET.into()),
            ..TestbedOptions::default()
        })
        .await
        .expect("testbed starts");
        tb.nginx().add_upstream(tb_http(), "be");
        tb.nginx().add_upstream(tb_http(), "people");
        tb.nginx().insert_server(
            tb_http(),
            "people",
            serde_json::json!({"server": "10.9.9.9:80", "max_conns": 7}),
        );
        Some(NginxPlusHarness { tb })
    }
    fn target_with(&self, secret: &str) -> Arc<dyn Target> {
        Arc::new(
            NginxPlus::new(
                &Url::parse(&self.tb.nginx_url()).expect("url"),
                &[(
                    "Authorization".to_string(),
                    Secret::new(format!("ApiKey {secret}")),
                )],
                Duration::from_secs(5),
                None,
            )
            .expect("target builds"),
        )
    }
    fn secret(&self) -> Option<String> {
        Some(HEADER_SECRET.into())
    }
    async fn writes(&self) -> Option<String> {
        Some(writes(&self.tb))
    }
    fn upstream(&self) -> UpstreamRef {
        upstream("be", UpstreamKind::Http)
    }
    fn missing(&self) -> UpstreamRef {
        upstream("nope", UpstreamKind::Http)
    }
    fn servers(&self) -> Vec<String> {
        vec![
            "10.0.0.11:80".into(),
            "10.0.0.12:80".into(),
            "10.0.0.13:80".into(),
        ]
    }
    fn params(&self) -> ServerParams {
        params()
    }
    fn drain(&self) -> DrainKind {
        DrainKind::Observed
    }
    async fn foreign(&self) -> String {
        serde_json::to_string(&self.tb.nginx().servers(tb_http(), "people")).expect("json")
    }
    async fn held(&self) -> Vec<(String, bool)> {
        self.tb
            .nginx()
            .servers(tb_http(), "be")
            .iter()
            .filter_map(|s| {
                let addr = s["server"].as_str()?.to_string();
                Some((addr, s["drain"] == true || s["down"] == true))
            })
            .collect()
    }
}

/// The testbed's Data Plane API with backend `be` holding a server of people's.
pub struct DataplaneHarness {
    tb: Testbed,
}

const DATAPLANE_SECRET: &str = "dp-S3cret-pass-0815";

#[async_trait]
impl Harness for DataplaneHarness {
    async fn start() -> Option<Self> {
        let tb = testbed().await;
        tb.dataplane()
            .set_credentials(DATAPLANE_USER, DATAPLANE_SECRET);
        tb.dataplane().add_backend("be");
        tb.dataplane()
            .insert_server("be", dataplane_server("static1", "192.0.2.10", 80));
        Some(DataplaneHarness { tb })
    }
    fn target_with(&self, secret: &str) -> Arc<dyn Target> {
        let cfg = HaproxyDataplaneTarget {
            url: Url::parse(&self.tb.dataplane_url()).expect("url"),
            api_version: DataplaneApiVersion::V3,
            username: DATAPLANE_USER.into(),
            password: Secret::new(secret),
            server_prefix: "vmss-".into(),
            server_slots: ServerSlots {
                base: 2,
                growth_factor: 1.0,
                growth_type: SlotGrowth::Linear,
            },
            check: false,
            create_backends: false,
            balance: "roundrobin".into(),
            timeout: Duration::from_secs(5),
            ca_file: None,
        };
        Arc::new(
            HaproxyDataplane::new(
                &cfg,
                BTreeMap::from([("be".to_string(), params())]),
                BTreeMap::new(),
            )
            .expect("target builds"),
        )
    }
    fn secret(&self) -> Option<String> {
        Some(DATAPLANE_SECRET.into())
    }
    async fn writes(&self) -> Option<String> {
        Some(writes(&self.tb))
    }
    fn upstream(&self) -> UpstreamRef {
        upstream("be", UpstreamKind::Http)
    }
    fn missing(&self) -> UpstreamRef {
        upstream("nope", UpstreamKind::Http)
    }
    fn servers(&self) -> Vec<String> {
        vec![
            "10.0.0.21:80".into(),
            "10.0.0.22:80".into(),
            "10.0.0.23:80".into(),
        ]
    }
    fn params(&self) -> ServerParams {
        params()
    }
    fn drain(&self) -> DrainKind {
        DrainKind::Observed
    }
    async fn foreign(&self) -> String {
        self.tb
            .dataplane()
            .servers("be")
            .iter()
            .filter(|s| !s["name"].as_str().is_some_and(|n| n.starts_with("vmss-")))
            .map(|s| format!("{s}\n"))
            .collect()
    }
    /// Used slots (a free slot is in maintenance); weight 0 takes no new connections.
    async fn held(&self) -> Vec<(String, bool)> {
        self.tb
            .dataplane()
            .servers("be")
            .iter()
            .filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("vmss-")))
            .filter(|s| s["maintenance"] != "enabled")
            .map(|s| {
                (
                    format!("{}:{}", s["address"].as_str().unwrap_or(""), s["port"]),
                    s["weight"] == 0,
                )
            })
            .collect()
    }
    /// One transaction per cycle for every backend: the item that fails alone is a
    /// backend (here one that does not exist); the others are committed.
    fn failing(&self, good: Plan) -> (Vec<(UpstreamRef, Plan)>, String) {
        let bad = Plan {
            add: vec![("10.0.0.29:80".into(), params())],
            ..Plan::default()
        };
        (
            vec![(self.upstream(), good), (self.missing(), bad)],
            "nope".into(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// Azure targets behind the fake ARM

fn arm(tb: &Testbed, token: &str) -> ArmClient {
    ArmClient::new(
        ArmOptions {
            endpoint: Url::parse(&tb.arm_url()).expect("arm url"),
            audience: "https://management.azure.com".into(),
            request_timeout: Duration::from_secs(5),
            max_retries: 1,
            ..ArmOptions::default()
        },
        Arc::new(StaticToken(token.to_string())),
        reqwest::Client::new(),
    )
}

/// The fake Route Server `rs-1` with a peering of people's.
pub struct RouteServerHarness {
    tb: Testbed,
    token: String,
}

const HUB: &str = "rs-1";

#[async_trait]
impl Harness for RouteServerHarness {
    async fn start() -> Option<Self> {
        let tb = testbed().await;
        tb.network().set_operation_delay(Duration::from_millis(20));
        tb.network().add_route_server(SUB, RG, HUB);
        tb.network()
            .add_peering(SUB, RG, HUB, "onprem-firewall", "10.99.0.1", 64999);
        let token = tb.issue_token();
        Some(RouteServerHarness { tb, token })
    }
    fn target_with(&self, secret: &str) -> Arc<dyn Target> {
        Arc::new(RouteServer::new(
            arm(&self.tb, secret),
            RouteServerTarget {
                subscription: SUB.into(),
                resource_group: RG.into(),
                virtual_hub: HUB.into(),
                peer_asn: 65010,
                name_prefix: "vmss-sync-".into(),
                max_peerings: 8,
                operation_timeout: Duration::from_secs(30),
            },
            BTreeMap::from([("nva".to_string(), 179)]),
            BTreeMap::from([("nva".to_string(), params())]),
        ))
    }
    fn secret(&self) -> Option<String> {
        Some(self.token.clone())
    }
    async fn writes(&self) -> Option<String> {
        Some(writes(&self.tb))
    }
    fn upstream(&self) -> UpstreamRef {
        upstream("nva", UpstreamKind::Stream)
    }
    fn missing(&self) -> UpstreamRef {
        upstream("nope", UpstreamKind::Stream)
    }
    fn servers(&self) -> Vec<String> {
        vec![
            "10.0.1.4:179".into(),
            "10.0.1.5:179".into(),
            "10.0.1.6:179".into(),
        ]
    }
    fn params(&self) -> ServerParams {
        params()
    }
    fn drain(&self) -> DrainKind {
        DrainKind::Deletes
    }
    fn holds_params(&self) -> bool {
        false
    }
    async fn foreign(&self) -> String {
        self.tb
            .network()
            .peerings(SUB, RG, HUB)
            .into_iter()
            .filter(|(name, ..)| !name.starts_with("vmss-sync-"))
            .map(|p| format!("{p:?}\n"))
            .collect()
    }
    async fn held(&self) -> Vec<(String, bool)> {
        self.tb
            .network()
            .peerings(SUB, RG, HUB)
            .into_iter()
            .filter(|(name, ..)| name.starts_with("vmss-sync-"))
            .map(|(_, ip, ..)| (format!("{ip}:179"), false))
            .collect()
    }
    fn failing(&self, good: Plan) -> (Vec<(UpstreamRef, Plan)>, String) {
        let mut p = good;
        p.add.push(("not-an-ip:179".to_string(), params()));
        (vec![(self.upstream(), p)], "not-an-ip".to_string())
    }
}

/// The fake IP-based backend pool `web-pool` with an address of people's.
pub struct LbPoolHarness {
    tb: Testbed,
    token: String,
}

const LB: &str = "lb-1";
const POOL: &str = "web-pool";
const PEOPLE_VNET: &str =
    "/subscriptions/other/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/legacy";

fn vnet() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/virtualNetworks/vnet-1")
}

#[async_trait]
impl Harness for LbPoolHarness {
    async fn start() -> Option<Self> {
        let tb = testbed().await;
        tb.network().set_operation_delay(Duration::from_millis(20));
        tb.network().add_backend_pool(
            SUB,
            RG,
            LB,
            POOL,
            &[("legacy-vm", "10.50.0.7", PEOPLE_VNET)],
        );
        let token = tb.issue_token();
        Some(LbPoolHarness { tb, token })
    }
    fn target_with(&self, secret: &str) -> Arc<dyn Target> {
        Arc::new(LbBackendPool::new(
            arm(&self.tb, secret),
            LbPoolTarget {
                subscription: SUB.into(),
                resource_group: RG.into(),
                load_balancer: LB.into(),
                backend_pool: POOL.into(),
                virtual_network: vnet(),
                name_prefix: "vmss-sync-".into(),
                operation_timeout: Duration::from_secs(30),
            },
            BTreeMap::from([("web".to_string(), 80)]),
            BTreeMap::from([("web".to_string(), params())]),
        ))
    }
    fn secret(&self) -> Option<String> {
        Some(self.token.clone())
    }
    async fn writes(&self) -> Option<String> {
        Some(writes(&self.tb))
    }
    fn upstream(&self) -> UpstreamRef {
        upstream("web", UpstreamKind::Http)
    }
    fn missing(&self) -> UpstreamRef {
        upstream("nope", UpstreamKind::Http)
    }
    fn servers(&self) -> Vec<String> {
        vec![
            "10.0.2.4:80".into(),
            "10.0.2.5:80".into(),
            "10.0.2.6:80".into(),
        ]
    }
    fn params(&self) -> ServerParams {
        params()
    }
    fn drain(&self) -> DrainKind {
        DrainKind::Deletes
    }
    fn holds_params(&self) -> bool {
        false
    }
    async fn foreign(&self) -> String {
        self.tb
            .network()
            .pool_addresses(SUB, RG, LB, POOL)
            .into_iter()
            .filter(|(name, ..)| !name.starts_with("vmss-sync-"))
            .map(|a| format!("{a:?}\n"))
            .collect()
    }
    async fn held(&self) -> Vec<(String, bool)> {
        self.tb
            .network()
            .pool_addresses(SUB, RG, LB, POOL)
            .into_iter()
            .filter(|(name, ..)| name.starts_with("vmss-sync-"))
            .map(|(_, ip, _)| (format!("{ip}:80"), false))
            .collect()
    }
}
