//! The configuration keys of issue 6: `admin_listen`, `readiness_max_age` and
//! `leader_election`, their defaults and their positioned errors.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use vmss_sync::config::{self, Config, ConfigErrors, StorageAuth};

const BASE: &str = "cloud_provider: Azure\nsubscription_id: s\nresource_group_name: r\n\
                    api_endpoint: http://127.0.0.1:8080/api\n";
const UPSTREAMS: &str =
    "upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    kind: http\n";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn env(name: &str) -> Option<String> {
    (name == "LEASE_KEY").then(|| KEY.to_string())
}

fn parse(extra: &str) -> Result<Config, ConfigErrors> {
    config::parse(
        &format!("{BASE}{extra}{UPSTREAMS}"),
        Path::new("cfg.yaml"),
        &env,
    )
}

fn ok(extra: &str) -> Config {
    parse(extra).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(extra: &str) -> Vec<String> {
    match parse(extra) {
        Ok(_) => panic!("accepted:\n{extra}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn defaults_listen_on_loopback_8371_with_a_30_s_readiness_age_and_no_election() {
    let c = ok("");
    assert_eq!(
        c.admin_listen,
        Some("127.0.0.1:8371".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(c.readiness_max_age, Duration::from_secs(30));
    assert_eq!(c.leader_election, None);
    let c = ok("sync_interval: 1m\n");
    assert_eq!(
        c.readiness_max_age,
        Duration::from_secs(180),
        "3 × sync_interval"
    );
}

#[test]
fn admin_listen_takes_an_address_or_off_and_readiness_age_a_duration() {
    assert_eq!(ok("admin_listen: off\n").admin_listen, None);
    assert_eq!(
        ok("admin_listen: \"[::1]:9100\"\n").admin_listen,
        Some("[::1]:9100".parse().unwrap())
    );
    assert_eq!(
        ok("admin_listen: 0.0.0.0:8371\n").admin_listen,
        Some("0.0.0.0:8371".parse().unwrap())
    );
    assert_eq!(
        ok("readiness_max_age: 45s\n").readiness_max_age,
        Duration::from_secs(45)
    );
    assert_eq!(
        errors("admin_listen: localhost\n"),
        ["cfg.yaml:5:15: admin_listen: the field admin_listen has invalid value: it must be an IP \
          address and port such as 127.0.0.1:8371 or [::1]:8371, or off (value: \"localhost\")"]
    );
}

#[test]
fn leader_election_with_shared_key_reads_the_account_from_the_emulator_url_and_the_key_from_env() {
    let c = ok(
        "leader_election:\n  account_url: http://127.0.0.1:10000/devstoreaccount1/\n  \
                container: vmss-sync\n  account_key: ${LEASE_KEY}\n",
    );
    let le = c.leader_election.expect("leader_election");
    assert_eq!(
        le.account_url.as_str(),
        "http://127.0.0.1:10000/devstoreaccount1"
    );
    assert_eq!(le.container, "vmss-sync");
    assert_eq!(le.blob, "vmss-sync-leader");
    assert_eq!(le.lease_duration, Duration::from_secs(15));
    match &le.auth {
        StorageAuth::SharedKey {
            account_name,
            account_key,
        } => {
            assert_eq!(account_name, "devstoreaccount1");
            assert_eq!(account_key.expose(), KEY);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{le:?}").contains(KEY),
        "the key is redacted in Debug"
    );
}

#[test]
fn leader_election_defaults_to_token_auth_and_takes_the_account_from_the_host() {
    let c = ok(
        "leader_election:\n  account_url: https://acct1.blob.core.windows.net\n  \
                container: leases\n  blob: prod/vmss-sync.lock\n  lease_duration: 1m\n",
    );
    let le = c.leader_election.unwrap();
    assert_eq!(le.auth, StorageAuth::Token);
    assert_eq!(le.blob, "prod/vmss-sync.lock");
    assert_eq!(le.lease_duration, Duration::from_secs(60));
    let c = ok(
        "leader_election:\n  account_url: https://acct1.blob.core.windows.net\n  \
                container: leases\n  auth: shared_key\n  account_key: ${LEASE_KEY}\n",
    );
    match c.leader_election.unwrap().auth {
        StorageAuth::SharedKey { account_name, .. } => assert_eq!(account_name, "acct1"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn leader_election_problems_are_all_reported_with_positions_and_never_show_the_key() {
    let e = errors(
        "leader_election:\n  account_url: http://10.0.0.5:10000/acct\n  container: Bad_Name\n  \
         blob: a//b\n  lease_duration: 10s\n  auth: shared_key\n  account_key: not-base64!\n  \
         lease_duraton: 15s\n",
    );
    let expected = [
        "cfg.yaml:6:16: leader_election.account_url: must use https: plain http is allowed only to a loopback address (127.0.0.0/8, ::1, localhost) (value: \"http://10.0.0.5:10000/acct\")",
        "cfg.yaml:7:14: leader_election.container: the field container has invalid value: a container name is 3 to 63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit (value: \"Bad_Name\")",
        "cfg.yaml:8:9: leader_election.blob: the field blob has invalid value: use letters, digits, -, _ and ., with / between non-empty parts (at most 1024 characters) (value: \"a//b\")",
        "cfg.yaml:9:19: leader_election.lease_duration: the field lease_duration has invalid value: a blob lease lasts 15 to 60 whole seconds, such as 15s or 1m (value: \"10s\")",
        "cfg.yaml:11:16: leader_election.account_key: the field account_key has invalid value: it must be the storage account key in base64, as the Azure portal shows it (the value is not shown: it is secret)",
        "cfg.yaml:12:3: leader_election.lease_duraton: unknown key; did you mean lease_duration?",
    ];
    assert_eq!(e, expected);
}

#[test]
fn shared_key_needs_a_key_and_token_auth_refuses_one() {
    let e = errors("leader_election:\n  account_url: https://acct1.blob.core.windows.net\n  container: leases\n  auth: shared_key\n");
    assert_eq!(
        e,
        ["cfg.yaml:6:3: leader_election.account_key: the mandatory field account_key is either empty or missing for leader_election"]
    );
    let e = errors("leader_election:\n  account_url: https://acct1.blob.core.windows.net\n  container: leases\n  auth: token\n  account_key: ${LEASE_KEY}\n");
    assert_eq!(
        e,
        ["cfg.yaml:8:9: leader_election.auth: auth is token but account_key is set: use auth: shared_key, or remove account_key (value: \"token\")"]
    );
    let e = errors("leader_election:\n  container: leases\n  sync_interval: 5s\n");
    assert_eq!(
        e,
        [
            "cfg.yaml:6:3: leader_election.account_url: the mandatory field account_url is either empty or missing for leader_election",
            "cfg.yaml:7:3: leader_election.sync_interval: unknown key here: sync_interval is a top-level setting, not a leader_election setting",
        ]
    );
}
