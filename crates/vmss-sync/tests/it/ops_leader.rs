//! Two replicas, one writer: the real binary twice against the testbed and Azurite (the
//! Azure Storage emulator), plus the lease client against Azurite and the token path
//! against a fake Blob service.
//!
//! Replica A talks to the fake NGINX Plus API through `/api`, replica B through `/nplus`
//! (the testbed serves the same API on both), so the testbed's request log says which
//! replica made each write.

use crate::support::common;
use crate::support::ops_common;

use common::*;
use ops_common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmss_sync::leader::blob::{Acquire, BlobAuth, BlobLeaseClient};
use vmss_sync::leader::shared_key::SharedKey;
use vmss_testbed::{TestbedOptions, UpstreamKind};

const LEASE: Duration = Duration::from_secs(15);
/// How often a standby tries to acquire (a fifteenth of the lease, at least 1 s).
const RETRY: Duration = Duration::from_secs(1);

struct Pair {
    env: Env,
    azurite: Azurite,
}

impl Pair {
    async fn new(container: &str) -> (Pair, std::path::PathBuf, std::path::PathBuf) {
        let env = testbed(TestbedOptions::default()).await;
        env.uniform("web", 2);
        env.upstream(UpstreamKind::Http, "web");
        let azurite = Azurite::start();
        let extra = format!(
            "readiness_max_age: 5s\n{}",
            leader_yaml(&azurite, container, LEASE.as_secs())
        );
        let a = env.write("a.yaml", &config_text(&env, &env.tb.nginx_url(), &extra));
        let b = env.write(
            "b.yaml",
            &config_text(&env, &env.tb.nginx_nplus_url(), &extra),
        );
        (Pair { env, azurite }, a, b)
    }

    fn spawn(&self, cfg: &std::path::Path, name: &str) -> Daemon {
        Daemon::run(&self.env, cfg)
            .env(&replica_env(&self.env))
            .log(&format!("{name}.log"))
            .spawn()
    }

    fn synced(&self, n: usize) -> bool {
        let ips = self.env.ips("web", 80);
        ips.len() == n && self.env.servers(UpstreamKind::Http, "web") == ips
    }

    /// Writes so far by replica: (through /api = A, through /nplus = B).
    fn counts(&self) -> (usize, usize) {
        let w = writes(&self.env);
        (
            w.iter().filter(|(p, _)| p == "api").count(),
            w.iter().filter(|(p, _)| p == "nplus").count(),
        )
    }

    /// The writes in arrival order are all A's, then all B's: never interleaved.
    fn assert_one_writer_at_a_time(&self) {
        let w = writes(&self.env);
        let first_b = w.iter().position(|(p, _)| p == "nplus").unwrap_or(w.len());
        let late_a: Vec<_> = w[first_b..].iter().filter(|(p, _)| p == "api").collect();
        assert!(
            late_a.is_empty(),
            "A wrote after B started writing: {late_a:?}\nall: {w:?}"
        );
    }
}

const LEADER: &str = "this replica is now the leader";
const STANDBY: &str = "another replica holds the lease";

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_have_one_writer_and_the_standby_takes_over_within_one_lease_after_kill_9() {
    let (p, a_cfg, b_cfg) = Pair::new("kill9").await;
    let mut a = p.spawn(&a_cfg, "a");
    assert!(
        a.logged(LEADER, Duration::from_secs(15)).await.is_some(),
        "{}",
        a.log_text()
    );
    a.until(Duration::from_secs(15), "p.synced(2)", || p.synced(2))
        .await;
    let b = p.spawn(&b_cfg, "b");
    assert!(
        b.logged(STANDBY, Duration::from_secs(15)).await.is_some(),
        "{}",
        b.log_text()
    );

    // The leader and the standby say what they are.
    let a_addr = a.admin_addr().await;
    let b_addr = b.admin_addr().await;
    let ok = eventually_async(Duration::from_secs(10), || {
        let (a_addr, b_addr) = (a_addr.clone(), b_addr.clone());
        async move {
            get(&a_addr, "/readyz").await.status == 200
                && get(&b_addr, "/readyz").await.status == 200
        }
    })
    .await;
    assert!(
        ok,
        "{}\n{}",
        get(&a_addr, "/readyz").await.body,
        get(&b_addr, "/readyz").await.body
    );
    assert_eq!(get(&a_addr, "/readyz").await.json()["role"], "leader");
    assert_eq!(get(&b_addr, "/readyz").await.json()["role"], "standby");
    assert_eq!(
        sample(&get(&a_addr, "/metrics").await.body, "vmss_sync_leader", ""),
        Some(1.0)
    );
    let b_page = get(&b_addr, "/metrics").await.body;
    assert_eq!(sample(&b_page, "vmss_sync_leader", ""), Some(0.0));

    // Only A writes while it leads; B keeps discovering (dry-run cycles).
    p.env.tb.fleet().scale_to(SUB, RG, "web", 4);
    assert!(eventually(Duration::from_secs(15), || p.synced(4)).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (a_writes, b_writes) = p.counts();
    assert!(a_writes >= 4, "A made the writes: {a_writes}");
    assert_eq!(b_writes, 0, "the standby never writes");
    let b_page = get(&b_addr, "/metrics").await.body;
    let dry = sample(
        &b_page,
        "vmss_sync_upstream_reconciles_total",
        "upstream=\"web\",kind=\"http\",mode=\"dry_run\",result=\"ok\"",
    )
    .unwrap_or(0.0);
    assert!(dry >= 2.0, "the standby keeps discovering: {b_page}");

    // kill -9 the leader, and give the new leader work to do.
    a.signal("KILL");
    let killed = Instant::now();
    let _ = a.wait(Duration::from_secs(5)).await;
    p.env.tb.fleet().scale_to(SUB, RG, "web", 6);
    let took_over = b
        .logged(LEADER, LEASE + RETRY + Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("B never took over:\n{}", b.log_text()));
    let failover = took_over - killed;
    b.until(Duration::from_secs(10), "p.synced(6)", || p.synced(6))
        .await;
    let in_sync = killed.elapsed();
    println!(
        "failover after kill -9 of the leader: the standby became leader {:.2} s later (lease {} s), \
         servers in sync {:.2} s after the kill",
        failover.as_secs_f64(),
        LEASE.as_secs(),
        in_sync.as_secs_f64()
    );
    // The lease expires at most one lease period after A's last renewal (which came before
    // the kill); B tries every RETRY; up to 1 s more for the requests and the log on a busy
    // machine.
    assert!(
        failover <= LEASE + RETRY + Duration::from_secs(1),
        "failover took {failover:?}"
    );
    assert!(p.counts().1 >= 2, "B made the new writes");
    p.assert_one_writer_at_a_time();
    let b_page = get(&b_addr, "/metrics").await.body;
    assert_eq!(sample(&b_page, "vmss_sync_leader", ""), Some(1.0));
    assert_eq!(
        sample(
            &b_page,
            "vmss_sync_leadership_changes_total",
            "role=\"leader\""
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_lease_is_broken_stops_writing_before_the_standby_writes() {
    let (p, a_cfg, b_cfg) = Pair::new("broken").await;
    let a = p.spawn(&a_cfg, "a");
    assert!(
        a.logged(LEADER, Duration::from_secs(15)).await.is_some(),
        "{}",
        a.log_text()
    );
    assert!(eventually(Duration::from_secs(15), || p.synced(2)).await);
    let b = p.spawn(&b_cfg, "b");
    assert!(
        b.logged(STANDBY, Duration::from_secs(15)).await.is_some(),
        "{}",
        b.log_text()
    );

    // Keep the fleet moving so that whoever leads has writes to make.
    let stop = Arc::new(Mutex::new(false));
    let churn = {
        let fleet = p.env.tb.fleet();
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 3;
            while !*stop.lock().unwrap() {
                fleet.scale_to(SUB, RG, "web", n);
                n = if n == 3 { 5 } else { 3 };
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    // An operator breaks the lease (default break period: what is left of the lease).
    let outside = p.azurite.lease_client("broken", "leader");
    outside.break_lease(None).await.expect("break the lease");
    let broken = Instant::now();
    let lost = a
        .logged("lost the lease", LEASE)
        .await
        .unwrap_or_else(|| panic!("A did not notice:\n{}", a.log_text()));
    // A write A had already sent when its gate closed may still land: give it 500 ms (the
    // gate closes a third of the lease before the lease could expire, for that).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a_writes_when_stopped = p.counts().0;
    let b_leads = b
        .logged(LEADER, LEASE + RETRY + Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("B never took over:\n{}\nA:\n{}", b.log_text(), a.log_text()));
    assert!(
        eventually(Duration::from_secs(10), || p.counts().1 > 0).await,
        "B writes once it leads"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    *stop.lock().unwrap() = true;
    let _ = churn.await;
    println!(
        "lease broken: A stopped writing {:.2} s later; B became leader {:.2} s after the break",
        (lost - broken).as_secs_f64(),
        (b_leads - broken).as_secs_f64()
    );
    assert!(lost < b_leads, "A stopped before B started");
    let (a_final, b_final) = p.counts();
    assert_eq!(
        a_final, a_writes_when_stopped,
        "no write from A after it lost the lease"
    );
    assert!(b_final > 0);
    p.assert_one_writer_at_a_time();
    // A is a standby now and says so.
    let a_addr = a.admin_addr().await;
    let page = get(&a_addr, "/metrics").await.body;
    assert_eq!(sample(&page, "vmss_sync_leader", ""), Some(0.0), "{page}");
    assert_eq!(
        sample(
            &page,
            "vmss_sync_leadership_changes_total",
            "role=\"standby\""
        ),
        Some(1.0),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_cannot_reach_storage_stops_writing_before_its_lease_could_expire() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let mut azurite = Azurite::start();
    let port = azurite.port;
    let extra = format!(
        "readiness_max_age: 3s\n{}",
        leader_yaml(&azurite, "unreachable", LEASE.as_secs())
    );
    let cfg = env.write("a.yaml", &config_text(&env, &env.tb.nginx_url(), &extra));
    let a = Daemon::run(&env, &cfg)
        .env(&replica_env(&env))
        .log("a.log")
        .spawn();
    assert!(
        a.logged(LEADER, Duration::from_secs(15)).await.is_some(),
        "{}",
        a.log_text()
    );
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 2)
        .await
    );

    // Storage goes away: renewals fail. The gate must close before the lease could
    // expire: at most lease − margin (10 s) after the last successful renewal.
    azurite.stop();
    let down = Instant::now();
    let stopped = a
        .logged("stopped writing before it can expire", LEASE)
        .await
        .unwrap_or_else(|| panic!("A kept its gate open:\n{}", a.log_text()));
    let after = stopped - down;
    println!(
        "storage unreachable: the leader stopped writing {:.2} s later (lease {} s)",
        after.as_secs_f64(),
        LEASE.as_secs()
    );
    assert!(
        after <= LEASE * 2 / 3 + Duration::from_secs(1),
        "gate closed after {after:?}"
    );
    let writes_before = env.nginx_writes().len();
    env.tb.fleet().scale_to(SUB, RG, "web", 4);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.nginx_writes().len(),
        writes_before,
        "no write without the lease"
    );
    let addr = a.admin_addr().await;
    let ready = get(&addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("cannot reach the lease blob"),
        "{}",
        ready.body
    );
    assert_eq!(get(&addr, "/healthz").await.status, 200);

    // Storage comes back (empty: the emulator kept nothing): the lease blob is created
    // again, the replica leads and catches up.
    let _azurite = Azurite::start_on(port);
    a.until(
        Duration::from_secs(20),
        "env.servers(UpstreamKind::Http, \"web\").len() == 4",
        || env.servers(UpstreamKind::Http, "web").len() == 4,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_shutdown_releases_the_lease_and_the_standby_takes_over_at_once() {
    let (p, a_cfg, b_cfg) = Pair::new("release").await;
    let mut a = p.spawn(&a_cfg, "a");
    assert!(
        a.logged(LEADER, Duration::from_secs(15)).await.is_some(),
        "{}",
        a.log_text()
    );
    assert!(eventually(Duration::from_secs(15), || p.synced(2)).await);
    let b = p.spawn(&b_cfg, "b");
    assert!(
        b.logged(STANDBY, Duration::from_secs(15)).await.is_some(),
        "{}",
        b.log_text()
    );
    a.signal("TERM");
    let stopping = Instant::now();
    assert_eq!(a.wait(Duration::from_secs(15)).await, 0);
    assert!(
        a.log_text().contains("released the lease"),
        "{}",
        a.log_text()
    );
    let led = b
        .logged(LEADER, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("B did not take over:\n{}", b.log_text()));
    println!(
        "clean shutdown: the standby led {:.2} s after SIGTERM to the leader",
        (led - stopping).as_secs_f64()
    );
    assert!(led - stopping <= RETRY + Duration::from_secs(2));
    p.env.tb.fleet().scale_to(SUB, RG, "web", 3);
    assert!(eventually(Duration::from_secs(10), || p.synced(3)).await);
    p.assert_one_writer_at_a_time();
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_client_acquires_renews_releases_and_breaks_against_azurite() {
    let azurite = Azurite::start();
    let one = azurite.lease_client("leases", "dir/leader.lock");
    let two = azurite.lease_client("leases", "dir/leader.lock");
    let (id1, id2) = (
        vmss_sync::leader::new_lease_id(),
        vmss_sync::leader::new_lease_id(),
    );

    // The container and the blob do not exist: the first acquire creates them.
    assert_eq!(one.acquire(&id1, LEASE).await.unwrap(), Acquire::Acquired);
    assert_eq!(one.lease_state().await.unwrap(), "leased");
    match two.acquire(&id2, LEASE).await.unwrap() {
        Acquire::Held(code) => assert_eq!(code, "LeaseAlreadyPresent"),
        other => panic!("{other:?}"),
    }
    one.renew(&id1).await.unwrap();
    // Acquiring again with the active lease's ID succeeds (a replica that lost track).
    assert_eq!(one.acquire(&id1, LEASE).await.unwrap(), Acquire::Acquired);
    let e = two.renew(&id2).await.unwrap_err();
    assert!(e.is_lease_lost(), "{e}");
    assert!(
        !e.to_string().contains(&id2),
        "no lease ID in messages: {e}"
    );

    // A release lets the other one in at once.
    one.release(&id1).await.unwrap();
    assert_eq!(one.lease_state().await.unwrap(), "available");
    assert_eq!(two.acquire(&id2, LEASE).await.unwrap(), Acquire::Acquired);

    // Broken at once: the holder's renewal proves the lease is lost.
    two.break_lease(Some(Duration::ZERO)).await.unwrap();
    assert_eq!(two.lease_state().await.unwrap(), "broken");
    let e = two.renew(&id2).await.unwrap_err();
    assert!(e.is_lease_lost(), "{e}");

    // A wrong key is refused; the message shows neither key nor signature.
    let wrong = BlobLeaseClient::new(
        &url::Url::parse(&azurite.account_url()).unwrap(),
        "leases",
        "dir/leader.lock",
        BlobAuth::SharedKey(
            SharedKey::new(DEV_ACCOUNT, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap(),
        ),
        reqwest::Client::new(),
        Duration::from_secs(5),
    )
    .unwrap();
    let e = wrong.acquire(&id1, LEASE).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(!e.is_lease_lost());
    let text = e.to_string();
    assert!(
        !text.contains("SharedKey") && !text.contains("AAAA"),
        "{text}"
    );
}

/// A fake Blob service for the token path: accepts any bearer token, records the
/// requests, and keeps one lease.
mod fake_blob {
    use axum::extract::{Request, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    pub struct Seen {
        pub requests: Vec<(String, String, HeaderMap)>,
        pub lease: Option<String>,
    }

    pub type Shared = Arc<Mutex<Seen>>;

    pub async fn start() -> (String, Shared) {
        let seen: Shared = Arc::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("http://{addr}/acct"), seen)
    }

    async fn handle(State(seen): State<Shared>, req: Request) -> Response {
        let mut s = seen.lock().unwrap();
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let headers = req.headers().clone();
        s.requests.push((method, uri, headers.clone()));
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        if !header("authorization").starts_with("Bearer ") {
            return (
                StatusCode::UNAUTHORIZED,
                [("x-ms-error-code", "NoAuthenticationInformation")],
            )
                .into_response();
        }
        match header("x-ms-lease-action").as_str() {
            "acquire" => {
                let id = header("x-ms-proposed-lease-id");
                if s.lease.as_ref().is_some_and(|l| *l != id) {
                    return (
                        StatusCode::CONFLICT,
                        [("x-ms-error-code", "LeaseAlreadyPresent")],
                    )
                        .into_response();
                }
                s.lease = Some(id.clone());
                (StatusCode::CREATED, [("x-ms-lease-id", id)]).into_response()
            }
            "renew" if s.lease.as_deref() == Some(header("x-ms-lease-id").as_str()) => {
                StatusCode::OK.into_response()
            }
            "release" => {
                s.lease = None;
                StatusCode::OK.into_response()
            }
            _ => (
                StatusCode::CONFLICT,
                [("x-ms-error-code", "LeaseIdMismatchWithLeaseOperation")],
            )
                .into_response(),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_sends_a_storage_token_from_the_credential_chain() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let (account_url, seen) = fake_blob::start().await;
    let extra = format!(
        "leader_election:\n  account_url: {account_url}\n  container: leases\n  lease_duration: 15s\n  auth: token\n"
    );
    let cfg = env.write("a.yaml", &config_text(&env, &env.tb.nginx_url(), &extra));
    let mut a = Daemon::run(&env, &cfg).log("a.log").spawn();
    assert!(
        a.logged(LEADER, Duration::from_secs(15)).await.is_some(),
        "{}",
        a.log_text()
    );
    assert!(
        eventually(Duration::from_secs(15), || env
            .servers(UpstreamKind::Http, "web")
            .len()
            == 2)
        .await
    );
    a.signal("TERM");
    assert_eq!(a.wait(Duration::from_secs(15)).await, 0);
    let s = seen.lock().unwrap();
    let (method, uri, headers) = &s.requests[0];
    assert_eq!(method, "PUT");
    assert_eq!(uri, "/acct/leases/vmss-sync-leader?comp=lease");
    assert_eq!(headers["x-ms-version"], "2021-12-02");
    assert_eq!(headers["x-ms-lease-duration"], "15");
    let token = headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_string();
    // The testbed's Entra ID issued it for Azure Storage.
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], "https://storage.azure.com/");
    let actions: Vec<String> = s
        .requests
        .iter()
        .map(|(_, _, h)| {
            h.get("x-ms-lease-action")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        actions.last().map(String::as_str),
        Some("release"),
        "{actions:?}"
    );
    assert!(!a.log_text().contains(&token), "the token is never logged");
}
