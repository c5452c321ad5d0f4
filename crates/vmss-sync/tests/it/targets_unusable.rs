//! A target that cannot be used at startup no longer stops the process: with an NGINX
//! Plus upstream and an nginx file target whose file holds something else, `run` keeps
//! syncing NGINX Plus, reports the file's upstream (log, `target_condition` metric,
//! `/readyz`) and checks it again every cycle; once the file is fixed, the upstream is
//! synced within a cycle.

use crate::support::common;
use crate::support::ops_common;

use common::*;
use ops_common::{get, sample};
use std::time::Duration;
use vmss_testbed::{TestbedOptions, UpstreamKind};

const UNUSABLE: &str =
    "upstream=\"app\",kind=\"http\",target=\"nginx-file\",condition=\"unusable\"";

#[tokio::test(flavor = "multi_thread")]
async fn run_keeps_syncing_other_targets_while_one_is_unusable_and_syncs_it_once_fixed() {
    let env = testbed(TestbedOptions::default()).await;
    env.uniform("web", 2);
    env.upstream(UpstreamKind::Http, "web");
    let dir = env.dir.path();
    let file = dir.join("upstreams.conf");
    // Not a placeholder: vmss-sync must not overwrite it.
    std::fs::write(
        &file,
        "user www-data;\nupstream app { server 127.0.0.1:1 down; }\n",
    )
    .unwrap();
    let targets = format!(
        "targets:\n  oss:\n    type: nginx_file\n    path: {}\n    validate_command: [\"/bin/true\"]\n    reload_command: [\"/bin/true\"]\n",
        file.display()
    );
    let upstreams = format!(
        "{}  - name: app\n    virtual_machine_scale_set: web\n    port: 8080\n    kind: http\n    target: oss\n",
        upstream_yaml("web", "web", 80, "http")
    );
    let cfg = env.config(&targets, &upstreams);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("admin_listen: off", "admin_listen: 127.0.0.1:0");
    let cfg = env.write("config.yaml", &text);
    let mut d = Daemon::run(&env, &cfg)
        .log_path(&dir.join("daemon.log"))
        .spawn();
    let admin = d.admin_addr().await;
    // NGINX Plus is synced all the same.
    d.until(
        Duration::from_secs(15),
        "env.servers(UpstreamKind::Http, \"web\") == env.ips(\"web\", 80)",
        || env.servers(UpstreamKind::Http, "web") == env.ips("web", 80),
    )
    .await;
    let log = d.log_text();
    assert!(log.contains("refusing to overwrite it"), "{log}");
    assert!(
        log.contains("cannot be used for this upstream (checked again every cycle"),
        "{log}"
    );
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .starts_with("user www-data;"),
        "the file is left as it is"
    );
    let page = get(&admin, "/metrics").await.body;
    assert_eq!(
        sample(&page, "vmss_sync_target_condition", UNUSABLE),
        Some(1.0),
        "{page}"
    );
    let ready = get(&admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("upstream app"), "{}", ready.body);

    // The user fixes the file: the next cycle adopts it and syncs the upstream.
    std::fs::write(&file, "upstream app {\n    server 127.0.0.1:1 down;\n}\n").unwrap();
    let want: Vec<String> = env.ips("web", 8080);
    assert!(
        eventually(Duration::from_secs(10), || {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            text.starts_with(vmss_sync::target::nginx_file::HEADER)
                && want.iter().all(|s| text.contains(&format!("server {s} ")))
        })
        .await,
        "{}\n{}",
        std::fs::read_to_string(&file).unwrap_or_default(),
        d.log_text()
    );
    let mut cleared = false;
    for _ in 0..50 {
        let page = get(&admin, "/metrics").await.body;
        let ready = get(&admin, "/readyz").await;
        if sample(&page, "vmss_sync_target_condition", UNUSABLE) == Some(0.0) && ready.status == 200
        {
            cleared = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cleared, "condition cleared and ready\n{}", d.log_text());
    assert!(d.log_text().contains("can be used now for upstream app"));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
}
