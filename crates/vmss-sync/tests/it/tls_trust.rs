//! Trust: the testbed served over TLS with a certificate from a private CA generated at
//! test time (openssl CLI). Refused without the CA (and the error says TLS and the
//! unknown issuer), accepted with it: per endpoint through `api_ca_file`,
//! `resource_manager_ca_file` and a target's `ca_file`, and through the system trust
//! store when `SSL_CERT_FILE` names the CA; the lease blob (Azurite behind the same TLS
//! front) through `leader_election.ca_file`. Real binary over real sockets.

use crate::support::common;
use crate::support::ops_common;
use crate::support::pki::{pki, Pki};

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_rustls::rustls;
use vmss_testbed::{TestbedOptions, UpstreamKind, DATAPLANE_PASSWORD, DATAPLANE_USER};

/// A TLS front for a plain-http testbed service: accepts TLS on a loopback port with the
/// PKI's server certificate and relays the bytes to `upstream`.
async fn tls_front(pki: &Pki, upstream: SocketAddr) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .expect("server cert")
        .collect::<Result<_, _>>()
        .expect("server cert parses");
    let key = PrivateKeyDer::from_pem_file(&pki.key).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused our certificate
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn socket_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).expect("url");
    format!("127.0.0.1:{}", u.port().expect("port"))
        .parse()
        .expect("addr")
}

/// `https://127.0.0.1:PORT/PATH` of a TLS front for the service at `url`.
async fn https_of(pki: &Pki, url: &str) -> String {
    let front = tls_front(pki, socket_of(url)).await;
    let path = url::Url::parse(url).expect("url").path().to_string();
    format!("https://{front}{}", path.trim_end_matches('/'))
}

fn config_text(env: &Env, api: &str, arm: &str, extra: &str, ups: &str) -> String {
    format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
         api_endpoint: {api}\nresource_manager_endpoint: {arm}\nsync_interval: 1s\n\
         admin_listen: off\n{extra}upstreams:\n{ups}",
    )
    .replace("{tb}", &env.tb.nginx_url())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_nginx_plus_api_behind_a_private_ca_is_refused_without_it_and_synced_with_api_ca_file() {
    let env = testbed(TestbedOptions::default()).await;
    let Some(pki) = pki(env.dir.path()) else {
        return;
    };
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let api = https_of(&pki, &env.tb.nginx_url()).await;
    let ups = upstream_yaml("web", "web", 80, "http");
    let cfg = env.write(
        "without.yaml",
        &config_text(&env, &api, &env.tb.arm_url(), "", &ups),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("TLS failed"), "{all}");
    assert!(all.contains("UnknownIssuer"), "{all}");
    assert!(all.contains(api.trim_end_matches("/api")), "{all}");
    assert!(env.servers(UpstreamKind::Http, "web").is_empty());

    let extra = format!("api_ca_file: {}\n", pki.ca.display());
    let cfg = env.write(
        "with.yaml",
        &config_text(&env, &api, &env.tb.arm_url(), &extra, &ups),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_cert_file_puts_a_private_ca_in_the_system_trust_store() {
    let env = testbed(TestbedOptions::default()).await;
    let Some(pki) = pki(env.dir.path()) else {
        return;
    };
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let api = https_of(&pki, &env.tb.nginx_url()).await;
    let cfg = env.write(
        "cfg.yaml",
        &config_text(
            &env,
            &api,
            &env.tb.arm_url(),
            "",
            &upstream_yaml("web", "web", 80, "http"),
        ),
    );
    let mut e = env.sp_env();
    e.push(("SSL_CERT_FILE".into(), pki.ca.display().to_string()));
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &e).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
}

#[tokio::test(flavor = "multi_thread")]
async fn arm_behind_a_private_ca_needs_resource_manager_ca_file() {
    let env = testbed(TestbedOptions::default()).await;
    let Some(pki) = pki(env.dir.path()) else {
        return;
    };
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let arm = https_of(&pki, &env.tb.arm_url()).await;
    let ups = upstream_yaml("web", "web", 80, "http");
    let cfg = env.write(
        "without.yaml",
        &config_text(&env, &env.tb.nginx_url(), &arm, "", &ups),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("TLS failed"), "{all}");
    assert!(all.contains("UnknownIssuer"), "{all}");
    assert!(
        !all.contains("retrying"),
        "a certificate does not change in seconds: not retried within the cycle:\n{all}"
    );

    let extra = format!("resource_manager_ca_file: {}\n", pki.ca.display());
    let cfg = env.write(
        "with.yaml",
        &config_text(&env, &env.tb.nginx_url(), &arm, &extra, &ups),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &env.sp_env()).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(env.servers(UpstreamKind::Http, "web"), env.ips("web", 80));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_plane_api_behind_a_private_ca_needs_the_targets_ca_file() {
    let env = testbed(TestbedOptions::default()).await;
    let Some(pki) = pki(env.dir.path()) else {
        return;
    };
    env.uniform("web", 2);
    env.tb.dataplane().add_backend("web");
    let dp = https_of(&pki, &env.tb.dataplane_url()).await;
    let ups = "  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n    target: edge\n";
    let target = |ca: &str| {
        format!(
            "targets:\n  edge:\n    type: haproxy_dataplane\n    url: {dp}\n    username: {DATAPLANE_USER}\n    password: ${{DP_PASSWORD}}\n{ca}"
        )
    };
    let mut e = env.sp_env();
    e.push(("DP_PASSWORD".into(), DATAPLANE_PASSWORD.into()));
    let cfg = env.write(
        "without.yaml",
        &config_text(
            &env,
            &env.tb.nginx_url(),
            &env.tb.arm_url(),
            &target(""),
            ups,
        ),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &e).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("TLS failed") && all.contains("UnknownIssuer"),
        "{all}"
    );

    let ca = format!("    ca_file: {}\n", pki.ca.display());
    let cfg = env.write(
        "with.yaml",
        &config_text(
            &env,
            &env.tb.nginx_url(),
            &env.tb.arm_url(),
            &target(&ca),
            ups,
        ),
    );
    let out = run(&["once", "--config", cfg.to_str().unwrap()], &e).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_file_that_is_missing_or_not_pem_is_an_invalid_configuration() {
    let env = testbed(TestbedOptions::default()).await;
    let junk = env.write("junk.pem", "not a certificate\n");
    let ups = upstream_yaml("web", "web", 80, "http");
    for (value, says) in [
        (junk.display().to_string(), "holds no PEM certificate"),
        ("/nonexistent/ca.pem".to_string(), "cannot read ca_file"),
        ("relative/ca.pem".to_string(), "must be an absolute path"),
    ] {
        let extra = format!("api_ca_file: {value}\n");
        let cfg = env.write(
            "cfg.yaml",
            &config_text(&env, &env.tb.nginx_url(), &env.tb.arm_url(), &extra, &ups),
        );
        let out = run(&["validate", "--config", cfg.to_str().unwrap()], &[]).await;
        assert_eq!(out.code, 2, "{value}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains("cfg.yaml:8:")
                && out.stderr.contains("api_ca_file")
                && out.stderr.contains(&value)
                && out.stderr.contains(says),
            "{value}: {}",
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lease_blob_behind_a_private_ca_needs_the_leader_election_ca_file() {
    const LEADER: &str = "this replica is now the leader";
    let env = testbed(TestbedOptions::default()).await;
    let Some(pki) = pki(env.dir.path()) else {
        return;
    };
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let azurite = ops_common::Azurite::start();
    let account = https_of(&pki, &azurite.account_url()).await;
    let le = |ca: &str| {
        format!(
            "leader_election:\n  account_url: {account}\n  container: tls\n  blob: leader\n  \
             lease_duration: 15s\n  auth: shared_key\n  account_key: ${{LEASE_KEY}}\n{ca}"
        )
    };
    let cfg = env.write(
        "without.yaml",
        &ops_common::config_text(&env, &env.tb.nginx_url(), &le("")),
    );
    let log = env.dir.path().join("without.log");
    let d = Daemon::run(&env, &cfg)
        .env(&ops_common::replica_env(&env))
        .log_path(&log)
        .spawn();
    let refused = eventually(std::time::Duration::from_secs(20), || {
        let t = d.log_text();
        t.contains("TLS failed") && t.contains("UnknownIssuer")
    })
    .await;
    assert!(refused, "{}", d.log_text());
    assert!(!d.log_text().contains(LEADER), "{}", d.log_text());
    assert!(env.servers(UpstreamKind::Http, "web").is_empty());
    drop(d);

    let ca = format!("  ca_file: {}\n", pki.ca.display());
    let cfg = env.write(
        "with.yaml",
        &ops_common::config_text(&env, &env.tb.nginx_url(), &le(&ca)),
    );
    let log = env.dir.path().join("with.log");
    let d = Daemon::run(&env, &cfg)
        .env(&ops_common::replica_env(&env))
        .log_path(&log)
        .spawn();
    let synced = eventually(std::time::Duration::from_secs(30), || {
        env.servers(UpstreamKind::Http, "web") == env.ips("web", 80)
    })
    .await;
    assert!(synced, "{}", d.log_text());
    assert!(d.log_text().contains(LEADER), "{}", d.log_text());
}
