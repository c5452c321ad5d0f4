//! Benchmark: polling every 5 s versus events (Event Grid through a Storage queue) with a
//! 60 s timer, for one scale set of 10 instances behind the fake NGINX Plus: the delay
//! from a scale event (the fleet's change; with events, the moment the testbed enqueues
//! the event Event Grid would raise) to the target holding the new servers, and the ARM
//! reads spent.
//!
//! The daemon runs in this process against the testbed, with a real Azurite queue
//! service (`azurite-queue`: `$AZURITE_QUEUE`, next to `$AZURITE_BLOB`, the repository's
//! `.tools/azurite`, or `PATH`). Each mode runs N scale events (alternately 10 → 12 → 10
//! instances) at random gaps of 2 to 6 s.
//!
//! ARM reads per hour are given two ways: as measured over the run (at the run's high
//! event rate), and for an hour with E = 0, 2 or 12 scale events, from the measured reads
//! per reconcile: polling = 720 cycles; events = 60 timer cycles + E × (1 reconcile + at
//! most 5 follow-ups, which run only while new instances are still coming up).
//!
//! Run with `cargo run --release -p vmss-sync --example bench_events [-- --events N]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use vmss_sync::azure::auth::Env;
use vmss_sync::daemon::{Control, Daemon};
use vmss_sync::events::queue::{QueueAuth, QueueClient};
use vmss_sync::leader::shared_key::SharedKey;
use vmss_testbed::{Orchestration, Service, Testbed, TestbedOptions, UpstreamKind};

const SUB: &str = "00000000-0000-0000-0000-0000000000e1";
const RG: &str = "bench-rg";
const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's documented development key (public, not a secret).
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn azurite_queue() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AZURITE_QUEUE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(b) = std::env::var_os("AZURITE_BLOB").filter(|p| !p.is_empty()) {
        let p = Path::new(&b).with_file_name("azurite-queue");
        if p.exists() {
            return Some(p);
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/azurite/node_modules/.bin/azurite-queue");
    if local.exists() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("azurite-queue"))
        .find(|p| p.exists())
}

struct Azurite(Child);

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Poll5s,
    Events60s,
}

struct Run {
    delays: Vec<Duration>,
    reads: usize,
    seconds: f64,
    cycles: f64,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn active(tb: &Testbed) -> Vec<String> {
    let mut v: Vec<String> = tb
        .nginx()
        .servers(UpstreamKind::Http, "web")
        .iter()
        .filter(|s| s["drain"] != true && s["down"] != true)
        .filter_map(|s| s["server"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn wanted(tb: &Testbed) -> Vec<String> {
    let mut v: Vec<String> = tb
        .fleet()
        .instance_ips(SUB, RG, "web")
        .iter()
        .map(|ip| format!("{ip}:80"))
        .collect();
    v.sort();
    v
}

/// Sum of the samples of a metric in a Prometheus page.
fn metric_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn run(mode: Mode, events: usize, queue_port: u16) -> Res<Run> {
    let opts = TestbedOptions::default();
    let tb = Testbed::start(opts.clone()).await?;
    tb.fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    tb.fleet().scale_to(SUB, RG, "web", 10);
    tb.nginx().add_upstream(UpstreamKind::Http, "web");
    let dir = tempfile::tempdir()?;
    let queue = match mode {
        Mode::Poll5s => "unused".to_string(),
        Mode::Events60s => format!("bench{}", fastrand::u32(..)),
    };
    let queue_url = format!("http://127.0.0.1:{queue_port}/{DEV_ACCOUNT}/{queue}");
    let extra = match mode {
        Mode::Poll5s => "sync_interval: 5s\n".to_string(),
        Mode::Events60s => format!(
            "sync_interval: 60s\nevents:\n  queue_url: {queue_url}\n  auth: shared_key\n  \
             account_key: ${{QUEUE_KEY}}\n  poll_interval: 200ms\n"
        ),
    };
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\n\
             api_endpoint: {}\nresource_manager_endpoint: {}\nadmin_listen: off\nlog_level: warn\n{extra}\
             upstreams:\n  - name: web\n    virtual_machine_scale_set: web\n    port: 80\n    \
             kind: http\n    drain_timeout: 0s\n",
            tb.nginx_url(),
            tb.arm_url()
        ),
    )?;
    if mode == Mode::Events60s {
        let client = QueueClient::new(
            &url::Url::parse(&queue_url)?,
            QueueAuth::SharedKey(SharedKey::new(DEV_ACCOUNT, DEV_KEY)?),
            reqwest::Client::new(),
            Duration::from_secs(5),
        )?;
        client.create().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<vmss_testbed::FleetEvent>();
        tb.fleet()
            .set_event_sink(Some(std::sync::Arc::new(move |ev| {
                let _ = tx.send(ev);
            })));
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                let text =
                    base64::engine::general_purpose::STANDARD.encode(ev.json(false).to_string());
                if let Err(e) = client.put_message(&text).await {
                    eprintln!("enqueue: {e}");
                }
            }
        });
    }
    let authority = tb.authority_url();
    let env = Env::from_pairs(&[
        ("AZURE_TENANT_ID", &opts.tenant_id),
        ("AZURE_CLIENT_ID", &opts.client_id),
        ("AZURE_CLIENT_SECRET", &opts.client_secret),
        ("AZURE_AUTHORITY_HOST", &authority),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:9"),
        ("QUEUE_KEY", DEV_KEY),
    ]);
    let daemon = Daemon::start(config, env).await?;
    let metrics = daemon.metrics();
    let (ctl, rx) = tokio::sync::mpsc::channel(4);
    let running = tokio::spawn(daemon.run(rx));
    let deadline = Instant::now() + Duration::from_secs(30);
    while active(&tb) != wanted(&tb) {
        if Instant::now() > deadline {
            return Err("the first cycle did not sync".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cycles_before = metric_sum(&metrics.encode(), "vmss_sync_cycles_by_trigger_total");
    tb.clear_requests();
    let started = Instant::now();
    let mut delays = Vec::new();
    for i in 0..events {
        tokio::time::sleep(Duration::from_millis(2000 + fastrand::u64(..4000))).await;
        tb.fleet()
            .scale_to(SUB, RG, "web", if i % 2 == 0 { 12 } else { 10 });
        let t0 = Instant::now();
        let want = wanted(&tb);
        while active(&tb) != want {
            if t0.elapsed() > Duration::from_secs(90) {
                return Err("a scale event was not followed within 90 s".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        delays.push(t0.elapsed());
    }
    let seconds = started.elapsed().as_secs_f64();
    let reads = tb.requests_to(Service::Arm).len();
    let cycles = metric_sum(&metrics.encode(), "vmss_sync_cycles_by_trigger_total") - cycles_before;
    ctl.send(Control::Shutdown).await?;
    let _ = running.await;
    delays.sort();
    Ok(Run {
        delays,
        reads,
        seconds,
        cycles,
    })
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut events = 15usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let bin = azurite_queue()
        .ok_or("azurite-queue not found: run ./scripts/test.sh, or set AZURITE_QUEUE")?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let dir = tempfile::tempdir()?;
    let _azurite = Azurite(
        Command::new(bin)
            .args([
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("Azurite did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "one Uniform scale set of 10 instances, {events} scale events (10 <-> 12) at 2-6 s gaps, \
         health_interval 15 s (default)"
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>6} {:>7} {:>11} {:>12} {:>8} {:>8} {:>8}",
        "mode",
        "median",
        "p99",
        "max",
        "reads",
        "cycles",
        "reads/cycle",
        "reads/h run",
        "h@0ev",
        "h@2ev",
        "h@12ev"
    );
    let mut per_hour = Vec::new();
    for (mode, label) in [
        (Mode::Poll5s, "poll every 5 s"),
        (Mode::Events60s, "events + 60 s timer"),
    ] {
        let r = run(mode, events, port).await?;
        let per_cycle = r.reads as f64 / r.cycles.max(1.0);
        // Reads in an hour with `e` scale events, each worth at most 1 reconcile and 5
        // follow-ups (while new instances boot).
        let hour = |e: f64| match mode {
            Mode::Poll5s => 720.0 * per_cycle,
            Mode::Events60s => (60.0 + e * 6.0) * per_cycle,
        };
        per_hour.push([hour(0.0), hour(2.0), hour(12.0)]);
        println!(
            "{:<22} {:>7.2}s {:>7.2}s {:>7.2}s {:>6} {:>7} {:>11.1} {:>12.0} {:>8.0} {:>8.0} {:>8.0}",
            label,
            quantile(&r.delays, 0.5).as_secs_f64(),
            quantile(&r.delays, 0.99).as_secs_f64(),
            r.delays.last().copied().unwrap_or_default().as_secs_f64(),
            r.reads,
            r.cycles,
            per_cycle,
            r.reads as f64 / r.seconds * 3600.0,
            hour(0.0),
            hour(2.0),
            hour(12.0)
        );
    }
    if let [poll, ev] = per_hour[..] {
        println!(
            "ARM reads per hour, polling / events: {:.1}x with no scale event, {:.1}x with 2, \
             {:.1}x with 12 (each event counted with 5 follow-ups)",
            poll[0] / ev[0].max(1.0),
            poll[1] / ev[1].max(1.0),
            poll[2] / ev[2].max(1.0)
        );
    }
    println!(
        "(p99 of {events} samples is their maximum but one at most; reads/h (run) is at the \
         run's event rate, far above a real one)"
    );
    Ok(())
}
