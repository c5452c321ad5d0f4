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
//! The first part measures the delays, and which reads each kind of reconcile makes
//! (timer, event, follow-up: the reads between two counts of
//! `vmss_sync_cycles_by_trigger_total` belong to the cycle counted second). The second part
//! measures ARM reads per hour over one hour compressed `--compress` times (10: 360 s;
//! `sync_interval`, `health_interval` and the 15 minutes after which a reused read is
//! read again divided by it, so polling reads every 500 ms with views every 1.5 s, events
//! every 6 s, reused reads again every 90 s), polling and events side by side, with 0, 2
//! and 12 scale events at random moments of the hour. What is not compressed (the time a
//! cycle takes, the queue's 200 ms poll and 100 ms coalescing, the follow-ups' fixed
//! delays) can only lower the polling count (its cycles stretch by their own duration)
//! and add to the events' delay; instances here are ready at once, so no follow-up runs.
//!
//! Run with `cargo run -p vmss-sync --example bench_events [-- --events N] [--compress N]
//! [--page-size N] [--no-hour]`.

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
    cycles: f64,
    /// Reads by kind of request.
    kinds: std::collections::BTreeMap<&'static str, usize>,
    /// Per trigger: (cycles, reads they made).
    by_trigger: std::collections::BTreeMap<String, (f64, usize)>,
}

/// What an ARM request read.
fn kind_of(path: &str, query: &str) -> &'static str {
    let p = path.to_ascii_lowercase();
    let q = query.to_ascii_lowercase();
    if p.contains("/networkinterfaces") {
        "nic list"
    } else if p.ends_with("/virtualmachines") && q.contains("instanceview") {
        "vm list + views"
    } else if p.ends_with("/virtualmachines") && q.contains("statusonly") {
        "vm status list"
    } else if p.ends_with("/virtualmachines") {
        "vm list"
    } else if p.contains("/virtualmachinescalesets/") {
        "scale set get"
    } else if p.ends_with("/virtualmachinescalesets") {
        "scale set list"
    } else {
        "other"
    }
}

const TRIGGERS: [&str; 5] = ["timer", "event", "follow_up", "reload", "leadership"];

fn trigger_counts(page: &str) -> [f64; 5] {
    let mut out = [0.0; 5];
    for (i, t) in TRIGGERS.iter().enumerate() {
        out[i] = metric_sum_labelled(
            page,
            "vmss_sync_cycles_by_trigger_total",
            &format!("trigger=\"{t}\""),
        );
    }
    out
}

fn metric_sum_labelled(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

/// Timing of one daemon: `sync_interval` and `health_interval` (the hour compressed by
/// `compress` divides both).
fn timing(mode: Mode, compress: u32) -> (Duration, Duration) {
    let sync = match mode {
        Mode::Poll5s => Duration::from_secs(5),
        Mode::Events60s => Duration::from_secs(60),
    };
    (sync / compress, Duration::from_secs(15) / compress)
}

/// A testbed with the set `web` (10 instances) behind the fake NGINX Plus and a daemon
/// in this process syncing it; with events, the fleet's events go to a fresh queue.
async fn setup(
    mode: Mode,
    queue_port: u16,
    compress: u32,
    page_size: usize,
) -> Res<(
    std::sync::Arc<Testbed>,
    std::sync::Arc<vmss_sync::metrics::Metrics>,
    tokio::sync::mpsc::Sender<Control>,
    tokio::task::JoinHandle<()>,
)> {
    let opts = TestbedOptions {
        page_size,
        ..TestbedOptions::default()
    };
    let tb = std::sync::Arc::new(Testbed::start(opts.clone()).await?);
    tb.fleet()
        .add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    tb.fleet().scale_to(SUB, RG, "web", 10);
    tb.nginx().add_upstream(UpstreamKind::Http, "web");
    let dir = tempfile::tempdir()?;
    let queue = format!("bench{}", fastrand::u32(..));
    let queue_url = format!("http://127.0.0.1:{queue_port}/{DEV_ACCOUNT}/{queue}");
    let (sync, health) = timing(mode, compress);
    let mut extra = format!(
        "sync_interval: {}ms\nhealth_interval: {}ms\narm_read_burst: 10000\n\
         arm_reads_per_second: 10000\n",
        sync.as_millis(),
        health.as_millis()
    );
    if mode == Mode::Events60s {
        extra.push_str(&format!(
            "events:\n  queue_url: {queue_url}\n  auth: shared_key\n  \
             account_key: ${{QUEUE_KEY}}\n  poll_interval: 200ms\n"
        ));
    }
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
    let mut daemon = Daemon::start(config.clone(), env).await?;
    // Reused reads (a Uniform set's NIC list; with events, the scale set read) are read
    // again at least every 15 minutes: compressed like the intervals.
    daemon.set_max_reuse_age(vmss_sync::discovery::MAX_REUSE_AGE / compress);
    let metrics = daemon.metrics();
    let (ctl, rx) = tokio::sync::mpsc::channel(4);
    let running = tokio::spawn(async move {
        let _dir = dir;
        daemon.run(rx).await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while active(&tb) != wanted(&tb) {
        if Instant::now() > deadline {
            return Err("the first cycle did not sync".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((tb, metrics, ctl, running))
}

/// ARM reads of one hour, compressed `compress` times (both intervals divided), with
/// `events` scale events at random moments of it.
async fn hour(
    mode: Mode,
    events: usize,
    queue_port: u16,
    compress: u32,
    page_size: usize,
) -> Res<usize> {
    let (tb, _metrics, ctl, running) = setup(mode, queue_port, compress, page_size).await?;
    let length = Duration::from_secs(3600) / compress;
    let mut at: Vec<Duration> = (0..events)
        .map(|_| length.mul_f64(fastrand::f64()))
        .collect();
    at.sort();
    tb.clear_requests();
    let started = tokio::time::Instant::now();
    for (i, t) in at.iter().enumerate() {
        tokio::time::sleep_until(started + *t).await;
        tb.fleet()
            .scale_to(SUB, RG, "web", if i % 2 == 0 { 12 } else { 10 });
    }
    tokio::time::sleep_until(started + length).await;
    let reads = tb.requests_to(Service::Arm).len();
    ctl.send(Control::Shutdown).await?;
    let _ = running.await;
    Ok(reads)
}

async fn run(mode: Mode, events: usize, queue_port: u16, page_size: usize) -> Res<Run> {
    let (tb, metrics, ctl, running) = setup(mode, queue_port, 1, page_size).await?;
    let cycles_before = metric_sum(&metrics.encode(), "vmss_sync_cycles_by_trigger_total");
    tb.clear_requests();
    // Which cycle made which reads: cycles run one at a time and are counted when they
    // end, so the reads between two counts belong to the cycle counted second.
    let attributed: std::sync::Arc<
        std::sync::Mutex<std::collections::BTreeMap<String, (f64, usize)>>,
    > = Default::default();
    let sampler = {
        let (tb, metrics, attributed) = (tb.clone(), metrics.clone(), attributed.clone());
        tokio::spawn(async move {
            let mut last = trigger_counts(&metrics.encode());
            let mut last_reads = 0usize;
            loop {
                tokio::time::sleep(Duration::from_millis(2)).await;
                let now = trigger_counts(&metrics.encode());
                let reads = tb.requests_to(Service::Arm).len();
                let grew: Vec<usize> = (0..TRIGGERS.len()).filter(|i| now[*i] > last[*i]).collect();
                if !grew.is_empty() {
                    let mut a = attributed.lock().unwrap();
                    let share = (reads - last_reads) / grew.len();
                    for i in grew {
                        let e = a.entry(TRIGGERS[i].to_string()).or_default();
                        e.0 += now[i] - last[i];
                        e.1 += share;
                    }
                    last_reads = reads;
                }
                last = now;
            }
        })
    };
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
    sampler.abort();
    let log = tb.requests_to(Service::Arm);
    let reads = log.len();
    let mut kinds = std::collections::BTreeMap::new();
    for r in &log {
        *kinds.entry(kind_of(&r.path, &r.query)).or_default() += 1;
    }
    let by_trigger = attributed.lock().unwrap().clone();
    let cycles = metric_sum(&metrics.encode(), "vmss_sync_cycles_by_trigger_total") - cycles_before;
    ctl.send(Control::Shutdown).await?;
    let _ = running.await;
    delays.sort();
    Ok(Run {
        delays,
        reads,
        cycles,
        kinds,
        by_trigger,
    })
}

#[tokio::main]
async fn main() -> Res<()> {
    let mut events = 15usize;
    let mut compress = 10u32;
    let mut hours = true;
    let mut page_size = TestbedOptions::default().page_size;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            "--compress" => compress = args.next().ok_or("--compress N")?.parse()?,
            "--no-hour" => hours = false,
            "--page-size" => page_size = args.next().ok_or("--page-size N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let bin = azurite_queue()
        .ok_or("azurite-queue not found: run ./scripts/test.sh, or set AZURITE_QUEUE")?;
    // Azurite binds port 0 and says which port it got.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("azurite.out");
    let _azurite = Azurite(
        Command::new(bin)
            .args([
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                "0",
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&out)?))
            .stderr(Stdio::null())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if let Some(p) = text
            .lines()
            .filter(|l| l.contains("successfully listens on"))
            .find_map(|l| l.rsplit(':').next()?.trim().parse::<u16>().ok())
        {
            break p;
        }
        if Instant::now() > deadline {
            return Err(format!("Azurite did not start:\n{text}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "one Uniform scale set of 10 instances (testbed pages of {page_size}), {events} scale \
         events (10 <-> 12) at 2-6 s gaps, health_interval 15 s (default)"
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>6} {:>7} {:>11}",
        "mode", "median", "p99", "max", "reads", "cycles", "reads/cycle"
    );
    for (mode, label) in [
        (Mode::Poll5s, "poll every 5 s"),
        (Mode::Events60s, "events + 60 s timer"),
    ] {
        let r = run(mode, events, port, page_size).await?;
        println!(
            "{:<22} {:>7.2}s {:>7.2}s {:>7.2}s {:>6} {:>7} {:>11.1}",
            label,
            quantile(&r.delays, 0.5).as_secs_f64(),
            quantile(&r.delays, 0.99).as_secs_f64(),
            r.delays.last().copied().unwrap_or_default().as_secs_f64(),
            r.reads,
            r.cycles,
            r.reads as f64 / r.cycles.max(1.0),
        );
        println!("  reads by kind: {:?}", r.kinds);
        for (t, (c, n)) in &r.by_trigger {
            println!(
                "  {t:<10} cycles {c:>4} reads {n:>5} = {:.1} per cycle",
                *n as f64 / c.max(1.0)
            );
        }
    }
    println!("(p99 of {events} samples is their maximum but one at most)");
    if !hours {
        return Ok(());
    }
    // ARM reads per hour, measured: one hour compressed `compress` times (sync_interval
    // and health_interval divided by it), with 0, 2 and 12 scale events at random moments;
    // the four runs go side by side.
    let length = 3600 / compress;
    println!(
        "\nARM reads in one hour, measured over a timeline compressed {compress}x ({length} s; \
         intervals divided by {compress}: polling {} ms / views {} ms, events timer {} ms, \
         reused reads again after {} s):",
        timing(Mode::Poll5s, compress).0.as_millis(),
        timing(Mode::Poll5s, compress).1.as_millis(),
        timing(Mode::Events60s, compress).0.as_millis(),
        (vmss_sync::discovery::MAX_REUSE_AGE / compress).as_secs()
    );
    let (p0, p2, p12, e0, e2, e12) = tokio::join!(
        hour(Mode::Poll5s, 0, port, compress, page_size),
        hour(Mode::Poll5s, 2, port, compress, page_size),
        hour(Mode::Poll5s, 12, port, compress, page_size),
        hour(Mode::Events60s, 0, port, compress, page_size),
        hour(Mode::Events60s, 2, port, compress, page_size),
        hour(Mode::Events60s, 12, port, compress, page_size),
    );
    println!(
        "  {:>14} {:>14} {:>20} {:>8}",
        "scale events/h", "polling 5 s", "events + 60 s timer", "fewer"
    );
    for (e, p, n) in [(0, p0?, e0?), (2, p2?, e2?), (12, p12?, e12?)] {
        println!(
            "  {e:>14} {p:>14} {n:>20} {:>7.1}x",
            p as f64 / (n as f64).max(1.0)
        );
    }
    Ok(())
}
