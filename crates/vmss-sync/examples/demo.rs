//! The demo: a simulated Azure fleet and NGINX Plus API come up on loopback, vmss-sync
//! runs against them as it would in production, the fleet scales out and back in, and
//! the upstream follows. Ends by itself in about 25 seconds.
//!
//! Run with `cargo run -p vmss-sync --example demo`.

use std::time::Duration;
use vmss_sync::azure::auth::Env;
use vmss_sync::daemon::{Control, Daemon};
use vmss_testbed::{Fault, Orchestration, Service, Testbed, TestbedOptions, UpstreamKind};

const SUB: &str = "00000000-0000-0000-0000-0000000000de";
const RG: &str = "demo-rg";

fn show(tb: &Testbed, what: &str) {
    let mut lines = Vec::new();
    for (kind, name) in [
        (UpstreamKind::Http, "backend-one"),
        (UpstreamKind::Stream, "backend-two"),
    ] {
        let servers: Vec<String> = tb
            .nginx()
            .servers(kind, name)
            .iter()
            .filter_map(|s| {
                let draining = s["drain"] == true || s["down"] == true;
                let server = s["server"].as_str()?;
                Some(if draining {
                    format!("{server}(draining)")
                } else {
                    server.to_string()
                })
            })
            .collect();
        lines.push(format!(
            "    {name:<12} {} servers: {}",
            servers.len(),
            servers.join(" ")
        ));
    }
    let ips = tb.fleet().instance_ips(SUB, RG, "backend-vmss").len();
    println!("\n==> {what}\n    scale set backend-vmss has {ips} instances; NGINX Plus upstreams hold:\n{}\n", lines.join("\n"));
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let opts = TestbedOptions {
        page_size: 4,
        ..TestbedOptions::default()
    };
    let tb = Testbed::start(opts.clone()).await?;
    tb.fleet()
        .add_scale_set(SUB, RG, "backend-vmss", Orchestration::Uniform, "eastus");
    tb.fleet().scale_to(SUB, RG, "backend-vmss", 3);
    tb.nginx().add_upstream(UpstreamKind::Http, "backend-one");
    tb.nginx().add_upstream(UpstreamKind::Stream, "backend-two");

    let dir = std::env::temp_dir().join(format!("vmss-sync-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "# nginx-asg-sync's Azure format, plus resource_manager_endpoint for the simulator\n\
             cloud_provider: Azure\n\
             subscription_id: {SUB}\n\
             resource_group_name: {RG}\n\
             api_endpoint: {nginx}\n\
             resource_manager_endpoint: {arm}\n\
             sync_interval: 1s\n\
             upstreams:\n\
             \x20 - name: backend-one\n    virtual_machine_scale_set: backend-vmss\n    port: 80\n    kind: http\n    drain_timeout: 3s\n\
             \x20 - name: backend-two\n    virtual_machine_scale_set: backend-vmss\n    port: 5432\n    kind: stream\n    max_conns: 100\n    drain_timeout: 3s\n",
            nginx = tb.nginx_url(),
            arm = tb.arm_url(),
        ),
    )?;
    println!(
        "vmss-sync demo: simulated ARM at {}, NGINX Plus API at {}",
        tb.arm_url(),
        tb.nginx_url()
    );
    println!("configuration: {}", config.display());
    // Service principal credentials, as a user would export them.
    let authority = tb.authority_url();
    let env = Env::from_pairs(&[
        ("AZURE_TENANT_ID", &opts.tenant_id),
        ("AZURE_CLIENT_ID", &opts.client_id),
        ("AZURE_CLIENT_SECRET", &opts.client_secret),
        ("AZURE_AUTHORITY_HOST", &authority),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9"),
    ]);
    tracing_subscriber::fmt()
        .with_target(false)
        .with_env_filter("info")
        .init();

    show(&tb, "before vmss-sync starts");
    let daemon = Daemon::start(config.clone(), env).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let running = tokio::spawn(daemon.run(rx));
    tokio::time::sleep(Duration::from_secs(3)).await;
    show(&tb, "after the first cycles");

    tb.fleet().scale_to(SUB, RG, "backend-vmss", 6);
    println!("==> scaling the set out to 6 instances");
    tokio::time::sleep(Duration::from_secs(3)).await;
    show(&tb, "after scale-out");

    tb.fleet().scale_to(SUB, RG, "backend-vmss", 2);
    println!("==> scaling the set in to 2 instances");
    tokio::time::sleep(Duration::from_secs(3)).await;
    show(
        &tb,
        "after scale-in: leaving instances drain first (drain_timeout 3s)",
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    show(&tb, "after the drain: leaving instances are removed");

    println!("==> ARM now fails every NIC list read (HTTP 500): servers must stay");
    tb.faults().inject(
        Service::Arm,
        "/networkInterfaces",
        Fault::Status {
            status: 500,
            code: "InternalServerError".into(),
            message: "simulated outage".into(),
            retry_after: None,
        },
        usize::MAX,
    );
    tb.fleet().scale_to(SUB, RG, "backend-vmss", 0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    show(
        &tb,
        "during the ARM outage (the set was also emptied, but the read failed)",
    );
    tb.faults().clear();
    tb.fleet().scale_to(SUB, RG, "backend-vmss", 4);
    println!("==> ARM recovers; the set has 4 instances");
    tokio::time::sleep(Duration::from_secs(3)).await;
    show(&tb, "after recovery");

    tx.send(Control::Shutdown).await?;
    running.await?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "demo finished: the upstreams followed the scale set, and a failed read removed nothing."
    );
    Ok(())
}
