//! Benchmark: ARM requests and wall time of one reconcile for Uniform scale sets of
//! several sizes, against the testbed on loopback. Prints a table; asserts nothing.
//!
//! Run with `cargo run --release -p vmss-sync --example bench [-- SIZES... [--page-size N]]`.

use std::time::Instant;
use vmss_sync::azure::auth::Env;
use vmss_sync::config;
use vmss_sync::daemon;
use vmss_sync::reconcile::Mode;
use vmss_testbed::{Orchestration, Service, Testbed, TestbedOptions, UpstreamKind};

const SUB: &str = "00000000-0000-0000-0000-0000000000be";
const RG: &str = "bench-rg";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut page_size = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--page-size" {
            page_size = args.next().ok_or("--page-size needs a value")?.parse()?;
        } else {
            sizes.push(a.parse()?);
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 100, 1000, 10000];
    }
    println!("Uniform scale set, one http upstream, ARM list page size {page_size} (testbed on loopback)");
    println!(
        "{:>9} | {:>14} | {:>16} | {:>15} | {:>14} | {:>13}",
        "instances",
        "ARM reads 1st",
        "ARM reads steady",
        "NGINX writes 1st",
        "1st cycle ms",
        "steady ms"
    );
    for n in sizes {
        let opts = TestbedOptions {
            page_size,
            ..TestbedOptions::default()
        };
        let tb = Testbed::start(opts.clone()).await?;
        tb.fleet()
            .add_scale_set(SUB, RG, "bench", Orchestration::Uniform, "eastus");
        tb.fleet().scale_to(SUB, RG, "bench", n);
        tb.nginx().add_upstream(UpstreamKind::Http, "bench");
        let text = format!(
            "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\napi_endpoint: {}\nresource_manager_endpoint: {}\nupstreams:\n  - name: bench\n    virtual_machine_scale_set: bench\n    port: 80\n    kind: http\n",
            tb.nginx_url(),
            tb.arm_url()
        );
        let env = Env::from_pairs(&[
            ("AZURE_TENANT_ID", &opts.tenant_id),
            ("AZURE_CLIENT_ID", &opts.client_id),
            ("AZURE_CLIENT_SECRET", &opts.client_secret),
            ("AZURE_AUTHORITY_HOST", &tb.authority_url()),
        ]);
        let cfg = config::parse(&text, std::path::Path::new("bench.yaml"), &|k| {
            env.get(k).map(str::to_string)
        })?;
        let rec = daemon::build(&cfg, &env)?;
        let count = |tb: &Testbed, s: Service, writes: bool| {
            tb.requests()
                .iter()
                .filter(|r| r.service == s && (!writes || r.method != "GET"))
                .count()
        };
        let t = Instant::now();
        let first = rec.reconcile(Mode::Apply).await;
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(
            first.all_in_sync(),
            "first cycle failed: {:?}",
            first.outcomes
        );
        let arm_first = count(&tb, Service::Arm, false);
        let nginx_writes = count(&tb, Service::Nginx, true);
        tb.clear_requests();
        let rounds = 5;
        let t = Instant::now();
        for _ in 0..rounds {
            let r = rec.reconcile(Mode::Apply).await;
            assert!(r.all_in_sync());
        }
        let steady_ms = t.elapsed().as_secs_f64() * 1000.0 / rounds as f64;
        let arm_steady = count(&tb, Service::Arm, false) / rounds;
        assert_eq!(
            count(&tb, Service::Nginx, true),
            0,
            "steady state writes nothing"
        );
        println!(
            "{n:>9} | {arm_first:>14} | {arm_steady:>16} | {nginx_writes:>15} | {first_ms:>14.1} | {steady_ms:>13.1}"
        );
        tb.shutdown().await;
    }
    Ok(())
}
