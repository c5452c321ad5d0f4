//! Benchmark: ARM reads per cycle, reconcile wall time, the daemon's CPU time and peak
//! memory, for Uniform and Flexible scale sets of 10, 100, 1,000 and 10,000 instances
//! (10,000 spread over 100 sets), health reads (instance views) included in every cycle.
//!
//! So that the figures are the daemon's alone, each case runs in three processes: this
//! one orchestrates, a child serves the testbed (fake ARM, token endpoint, NGINX Plus),
//! and another child runs the daemon's reconciler against it and measures itself: CPU
//! from `/proc/self/stat` (user + system), peak memory from `VmHWM` in
//! `/proc/self/status`, ARM reads from the client's own counters.
//!
//! Run with `cargo run --release -p vmss-sync --example bench [-- [--page-size N]
//! [--cycles N] [--no-health] [CASE…]]` where a case is `uniform:10`,
//! `flexible:10000x100`, …; `--no-health` runs the upstreams with `register_when: always`
//! (no instance views), to measure what health reads cost.
//!
//! `--fleet [SIZE…]` (default 1000 10000 100000) runs the large case instead: SIZE
//! instances in SIZE/100 scale sets of 100 over 10 subscriptions, Uniform and Flexible
//! mixed, two sets per resource group; a fifth of the sets (`big-*`, one resource group)
//! feed one Data Plane API backend (20,000 servers at 100,000 instances), every other set
//! its own NGINX Plus upstream. Each size runs twice: with ARM's limits lifted (reads per
//! cycle against the floor formula, CPU per steady cycle, peak memory), and with the
//! testbed enforcing ARM's and Compute's default limits and the daemon on its default
//! budget (cold start to every upstream in sync, then cycles one every `sync_interval` for
//! two `health_interval`s as the daemon runs them: their average and longest wall time,
//! and the 429s). `--only lifted|limits` runs one half, `--cycles N` sets the steady
//! cycles measured (at least), `BENCH_VERBOSE=1` prints every figure, `BENCH_SETTLE_MS=N`
//! pauses the daemon's process N ms after its cold start (to switch a profiler on for the
//! steady cycles alone; docs/benchmarks.md).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmss_sync::azure::auth::Env;
use vmss_sync::config;
use vmss_sync::daemon;
use vmss_sync::reconcile::Mode;
use vmss_testbed::{ComputeLimits, Orchestration, Testbed, TestbedOptions, UpstreamKind};

const SUB: &str = "00000000-0000-0000-0000-0000000000be";
const RG: &str = "bench-rg";

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Clone, Copy)]
struct Case {
    mode: Orchestration,
    instances: usize,
    sets: usize,
}

impl Case {
    fn parse(s: &str) -> Res<Case> {
        let (mode, rest) = s.split_once(':').ok_or("case: MODE:INSTANCES[xSETS]")?;
        let mode = match mode {
            "uniform" => Orchestration::Uniform,
            "flexible" => Orchestration::Flexible,
            _ => return Err("mode is uniform or flexible".into()),
        };
        let (n, sets) = match rest.split_once('x') {
            Some((n, s)) => (n.parse()?, s.parse()?),
            None => (rest.parse()?, 1),
        };
        Ok(Case {
            mode,
            instances: n,
            sets,
        })
    }

    fn label(&self) -> String {
        let mode = match self.mode {
            Orchestration::Uniform => "uniform",
            Orchestration::Flexible => "flexible",
        };
        if self.sets == 1 {
            format!("{mode}:{}", self.instances)
        } else {
            format!("{mode}:{}x{}", self.instances, self.sets)
        }
    }

    fn set_name(i: usize) -> String {
        format!("bench-{i:03}")
    }
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--serve-testbed") => serve_testbed(&args[1..]),
        Some("--measure-daemon") => measure_daemon(&args[1..]),
        Some("--serve-fleet") => serve_fleet(&args[1..]),
        Some("--measure-fleet") => measure_fleet(&args[1..]),
        Some("--fleet") => orchestrate_fleet(&args[1..]),
        _ => orchestrate(&args),
    }
}

// ---------------------------------------------------------------------------
// The orchestrator
// ---------------------------------------------------------------------------

fn orchestrate(args: &[String]) -> Res<()> {
    let mut page_size = 1000usize;
    let mut cycles = 5usize;
    let mut health = true;
    let mut cases = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--page-size" => page_size = it.next().ok_or("--page-size N")?.parse()?,
            "--cycles" => cycles = it.next().ok_or("--cycles N")?.parse()?,
            "--no-health" => health = false,
            other => cases.push(Case::parse(other)?),
        }
    }
    if cases.is_empty() {
        for mode in [Orchestration::Uniform, Orchestration::Flexible] {
            for (instances, sets) in [(10, 1), (100, 1), (1000, 1), (10_000, 100)] {
                cases.push(Case {
                    mode,
                    instances,
                    sets,
                });
            }
        }
    }
    let exe = std::env::current_exe()?;
    let what = if health {
        "every cycle reads instance views (health)"
    } else {
        "register_when: always (no instance views)"
    };
    println!(
        "One upstream per scale set; {what}; ARM list page size {page_size};\n\
         steady-state figures averaged over {cycles} cycles after the first. The testbed runs in its own process.\n"
    );
    println!(
        "{:<20} | {:>9} | {:>10} | {:>11} | {:>10} | {:>11} | {:>12} | {:>9} | {:>22}",
        "case",
        "ARM reads",
        "of which",
        "reconcile",
        "daemon CPU",
        "peak memory",
        "first cycle",
        "NGINX",
        "nginx-asg-sync reads"
    );
    println!(
        "{:<20} | {:>9} | {:>10} | {:>11} | {:>10} | {:>11} | {:>12} | {:>9} | {:>22}",
        "",
        "per cycle",
        "views",
        "wall",
        "per cycle",
        "(VmHWM)",
        "wall",
        "writes 1st",
        "per cycle (1+P+2N)"
    );
    for case in cases {
        let mut tb = Command::new(&exe)
            .args(["--serve-testbed", &case.label(), &page_size.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(tb.stdout.take().ok_or("testbed stdout")?).read_line(&mut line)?;
        let urls: Value = serde_json::from_str(line.trim())?;
        let out = Command::new(&exe)
            .args([
                "--measure-daemon",
                &case.label(),
                &cycles.to_string(),
                &urls.to_string(),
                if health { "health" } else { "always" },
            ])
            .stderr(Stdio::inherit())
            .output()?;
        drop(tb.stdin.take());
        let _ = tb.wait();
        let text = String::from_utf8_lossy(&out.stdout);
        let r: Value = match serde_json::from_str(text.trim()) {
            Ok(v) => v,
            Err(e) => {
                println!("{:<20} | failed: {e}: {text}", case.label());
                continue;
            }
        };
        let per_set = case.instances / case.sets;
        let pages = per_set.div_ceil(page_size).max(1);
        let asg = case.sets
            * match case.mode {
                Orchestration::Uniform => 1 + pages,
                Orchestration::Flexible => 1 + pages + 2 * per_set,
            };
        println!(
            "{:<20} | {:>9.1} | {:>10.1} | {:>8.1} ms | {:>7.1} ms | {:>8.1} MB | {:>9.0} ms | {:>9} | {:>22}",
            case.label(),
            r["reads_per_cycle"].as_f64().unwrap_or(0.0),
            r["view_reads_per_cycle"].as_f64().unwrap_or(0.0),
            r["wall_ms_per_cycle"].as_f64().unwrap_or(0.0),
            r["cpu_ms_per_cycle"].as_f64().unwrap_or(0.0),
            r["peak_kb"].as_f64().unwrap_or(0.0) / 1024.0,
            r["first_cycle_ms"].as_f64().unwrap_or(0.0),
            r["nginx_writes_first"].as_u64().unwrap_or(0),
            asg,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Child 1: the testbed
// ---------------------------------------------------------------------------

fn serve_testbed(args: &[String]) -> Res<()> {
    let case = Case::parse(args.first().ok_or("case")?)?;
    let page_size: usize = args.get(1).ok_or("page size")?.parse()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let opts = TestbedOptions {
            page_size,
            // Compute's limits are not what is measured here: keep them out of the way.
            compute_limits: ComputeLimits {
                high_cost_3min: 1_000_000,
                high_cost_30min: 1_000_000,
                low_cost_3min: 1_000_000,
                low_cost_30min: 1_000_000,
            },
            ..TestbedOptions::default()
        };
        let tb = Testbed::start(opts.clone()).await?;
        let f = tb.fleet();
        for i in 0..case.sets {
            let name = Case::set_name(i);
            f.add_scale_set(SUB, RG, &name, case.mode, "eastus");
            f.set_health_extension(SUB, RG, &name, true);
            f.scale_to(SUB, RG, &name, case.instances / case.sets);
            tb.nginx().add_upstream(UpstreamKind::Http, &name);
        }
        let line = json!({
            "arm": tb.arm_url(),
            "nginx": tb.nginx_url(),
            "authority": tb.authority_url(),
            "tenant": opts.tenant_id,
            "client": opts.client_id,
            "secret": opts.client_secret,
        });
        println!("{line}");
        std::io::stdout().flush()?;
        // Serve until the orchestrator closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
        })
        .await?;
        tb.shutdown().await;
        Res::Ok(())
    })
}

// ---------------------------------------------------------------------------
// Child 2: the daemon, measuring itself
// ---------------------------------------------------------------------------

/// User + system CPU time of this process (all threads), from `/proc/self/stat`
/// (fields 14 and 15, in USER_HZ = 100 ticks per second on Linux).
fn cpu_time() -> Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Duration::ZERO;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')' the fields start at 3 (state): utime is field 14 → index 11.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Peak resident memory of this process in kB (`VmHWM`).
fn peak_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn measure_daemon(args: &[String]) -> Res<()> {
    let case = Case::parse(args.first().ok_or("case")?)?;
    let cycles: usize = args.get(1).ok_or("cycles")?.parse()?;
    let urls: Value = serde_json::from_str(args.get(2).ok_or("urls")?)?;
    let register = match args.get(3).map(String::as_str) {
        Some("always") => "    register_when: always\n",
        _ => "",
    };
    let s = |k: &str| urls[k].as_str().unwrap_or_default().to_string();
    let mut ups = String::new();
    for i in 0..case.sets {
        let name = Case::set_name(i);
        ups.push_str(&format!(
            "  - name: {name}\n    virtual_machine_scale_set: {name}\n    port: 80\n    kind: http\n{register}"
        ));
    }
    // Health is read every cycle (health_interval below any cycle), and the read budget
    // is lifted so that the figures are the daemon's own cost, not the budget's pacing.
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {SUB}\nresource_group_name: {RG}\napi_endpoint: {}\n\
         resource_manager_endpoint: {}\nadmin_listen: off\nhealth_interval: 1ms\n\
         arm_read_burst: 1000000\narm_reads_per_second: 100000\nupstreams:\n{ups}",
        s("nginx"),
        s("arm")
    );
    let env = Env::from_pairs(&[
        ("AZURE_TENANT_ID", &s("tenant")),
        ("AZURE_CLIENT_ID", &s("client")),
        ("AZURE_CLIENT_SECRET", &s("secret")),
        ("AZURE_AUTHORITY_HOST", &s("authority")),
    ]);
    let cfg = config::parse(&text, std::path::Path::new("bench.yaml"), &|k| {
        env.get(k).map(str::to_string)
    })?;
    // The daemon's own runtime (what `vmss-sync run` runs on).
    let rt = daemon::runtime()?;
    let result = rt.block_on(async move {
        let rec = daemon::build(&cfg, &env)?;
        let problems = rec.startup_check().await;
        if !problems.is_empty() {
            return Err(daemon::format_problems(&problems).into());
        }
        let hwm_start = peak_kb();
        let t = Instant::now();
        let first = rec.reconcile(Mode::Apply).await;
        let hwm_first = peak_kb();
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        if !first.all_in_sync() {
            return Err(format!("first cycle failed: {:?}", first.outcomes[0]).into());
        }
        let writes: usize = first
            .outcomes
            .iter()
            .filter_map(|o| o.report.as_ref())
            .map(|r| r.added.len() + r.removed.len() + r.updated.len())
            .sum();
        // The daemon drops each report after logging it; so does the benchmark.
        drop(first);
        // Let the instance views of the first cycle age past health_interval.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = rec.arm().stats();
        let cpu0 = cpu_time();
        let t = Instant::now();
        for _ in 0..cycles {
            let r = rec.reconcile(Mode::Apply).await;
            if !r.all_in_sync() {
                return Err("a steady cycle failed".into());
            }
            drop(r);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let wall = t
            .elapsed()
            .saturating_sub(Duration::from_millis(2 * cycles as u64));
        let cpu = cpu_time().saturating_sub(cpu0);
        let after = rec.arm().stats();
        let views: u64 = ["VirtualMachineScaleSetVMs_List", "VirtualMachines_List"]
            .iter()
            .map(|op| {
                after.by_operation.get(*op).copied().unwrap_or(0)
                    - before.by_operation.get(*op).copied().unwrap_or(0)
            })
            .sum();
        let n = cycles as f64;
        Res::Ok(json!({
            "reads_per_cycle": (after.requests - before.requests) as f64 / n,
            "view_reads_per_cycle": views as f64 / n,
            "wall_ms_per_cycle": wall.as_secs_f64() * 1000.0 / n,
            "cpu_ms_per_cycle": cpu.as_secs_f64() * 1000.0 / n,
            "first_cycle_ms": first_ms,
            "nginx_writes_first": writes,
            "peak_kb_after_startup": hwm_start,
            "peak_kb_after_first_cycle": hwm_first,
        }))
    });
    let mut r = result?;
    r["peak_kb"] = json!(peak_kb());
    println!("{r}");
    Ok(())
}

// ---------------------------------------------------------------------------
// The large case: 1k, 10k, 100k instances over many subscriptions
// ---------------------------------------------------------------------------

const SUBS: usize = 10;
const PER_SET: usize = 100;
const FLEET_PAGE: usize = 1000;

/// One scale set of the large case.
struct FleetSet {
    sub: String,
    rg: String,
    name: String,
    mode: Orchestration,
    big: bool,
}

fn fleet_sub(i: usize) -> String {
    format!("00000000-0000-0000-0000-0000000001{i:02}")
}

/// The scale sets of a fleet of `size` instances.
fn fleet_sets(size: usize) -> Vec<FleetSet> {
    let sets = (size / PER_SET).max(5);
    let big = sets / 5;
    let mut out = Vec::with_capacity(sets);
    for i in 0..big {
        out.push(FleetSet {
            sub: fleet_sub(0),
            rg: "big-rg".into(),
            name: format!("big-{i:03}"),
            mode: if i % 2 == 0 {
                Orchestration::Uniform
            } else {
                Orchestration::Flexible
            },
            big: true,
        });
    }
    for j in 0..sets - big {
        // Round-robin over the subscriptions; within one, sets pair up in a resource
        // group, one Uniform and one Flexible.
        let k = j / SUBS;
        out.push(FleetSet {
            sub: fleet_sub(j % SUBS),
            rg: format!("rg-{:03}", k / 2),
            name: format!("set-{j:04}"),
            mode: if k.is_multiple_of(2) {
                Orchestration::Uniform
            } else {
                Orchestration::Flexible
            },
            big: false,
        });
    }
    out
}

/// The read floor of one steady cycle (docs/benchmarks.md), with lists of at most
/// `FLEET_PAGE` items (a list costs one read per page): one scale set read per resource
/// group named by the selections, one list per Uniform set (its NIC list, or with
/// instance views due its VM list with views: the members unchanged and settled, the NIC
/// list is not read again), one filtered VM list per Flexible set, the NIC list of each
/// resource group holding Flexible members. Every set here has fewer than `FLEET_PAGE`
/// instances.
fn fleet_floor(sets: &[FleetSet]) -> usize {
    let mut groups: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    let mut flex_nics: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
    for s in sets {
        *groups.entry((s.sub.as_str(), s.rg.as_str())).or_default() += 1;
        if s.mode == Orchestration::Flexible {
            *flex_nics
                .entry((s.sub.as_str(), s.rg.as_str()))
                .or_default() += PER_SET;
        }
    }
    let pages = |n: usize| n.div_ceil(FLEET_PAGE).max(1);
    let uniform = sets
        .iter()
        .filter(|s| s.mode == Orchestration::Uniform)
        .count();
    let flexible = sets.len() - uniform;
    groups.values().map(|n| pages(*n)).sum::<usize>()
        + uniform
        + flexible
        + flex_nics.values().map(|n| pages(*n)).sum::<usize>()
}

fn orchestrate_fleet(args: &[String]) -> Res<()> {
    let mut sizes: Vec<usize> = Vec::new();
    let mut cycles = 3usize;
    let mut only: Option<&str> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cycles" => cycles = it.next().ok_or("--cycles N")?.parse()?,
            "--only" => only = Some(it.next().ok_or("--only lifted|limits")?.as_str()),
            n => sizes.push(n.parse()?),
        }
    }
    if sizes.is_empty() {
        sizes = vec![1000, 10_000, 100_000];
    }
    let exe = std::env::current_exe()?;
    println!(
        "Large case: instances in sets of {PER_SET} over {SUBS} subscriptions, Uniform and Flexible \
         mixed, two sets per resource group;\na fifth of the sets feed one Data Plane API backend, \
         every other set its own NGINX Plus upstream. ARM list page size 1000.\n\
         Lifted: ARM limits off, instance views read every cycle, {cycles} steady cycles averaged.\n\
         Limits: the testbed enforces ARM's buckets (250 reads, +25/s per subscription and principal) \
         and Compute's policies,\nthe daemon runs on its default budget and health_interval (15 s).\n"
    );
    println!(
        "{:>8} | {:>5} | {:>7} | {:>9} | {:>7} | {:>10} | {:>10} | {:>8} | {:>10} | {:>14} | {:>11} | {:>6}",
        "size", "sets", "backend", "ARM reads", "floor", "CPU/cycle", "µs/inst.", "peak MB",
        "cold start", "steady avg/max", "steady 429", "429 all"
    );
    for size in sizes {
        let sets = fleet_sets(size);
        let big = sets.iter().filter(|s| s.big).count() * PER_SET;
        let mut row = json!({});
        for limits in ["lifted", "limits"] {
            if only.is_some_and(|o| o != limits) {
                continue;
            }
            let mut tb = Command::new(&exe)
                .args(["--serve-fleet", &size.to_string(), limits])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let mut out = BufReader::new(tb.stdout.take().ok_or("testbed stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            let urls: Value = serde_json::from_str(line.trim())?;
            let run = Command::new(&exe)
                .args([
                    "--measure-fleet",
                    &size.to_string(),
                    limits,
                    &cycles.to_string(),
                    &urls.to_string(),
                ])
                .stderr(Stdio::inherit())
                .output()?;
            drop(tb.stdin.take());
            let mut tail = String::new();
            out.read_line(&mut tail)?;
            let _ = tb.wait();
            let text = String::from_utf8_lossy(&run.stdout);
            let r: Value = match serde_json::from_str(text.trim()) {
                Ok(v) => v,
                Err(e) => {
                    println!("{size:>8} | {limits}: failed: {e}: {text}");
                    continue;
                }
            };
            let served: Value = serde_json::from_str(tail.trim()).unwrap_or(json!({}));
            row[limits] = r;
            row[format!("{limits}_testbed")] = served;
        }
        let l = &row["lifted"];
        let m = &row["limits"];
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:>8} | {:>5} | {:>7} | {:>9.1} | {:>7} | {:>7.1} ms | {:>10.2} | {:>8.1} | {:>8.1} s | {:>5.2}/{:>5.1} s | {:>11} | {:>6}",
            size,
            sets.len(),
            big,
            f(l, "reads_per_cycle"),
            fleet_floor(&sets),
            f(l, "cpu_ms_per_cycle"),
            f(l, "cpu_ms_per_cycle") * 1000.0 / size as f64,
            f(l, "peak_kb") / 1024.0,
            f(m, "cold_start_s"),
            f(m, "steady_cycle_s"),
            f(m, "steady_cycle_longest_s"),
            m["steady_429"].as_u64().map_or("-".to_string(), |n| n.to_string()),
            row["limits_testbed"]["throttled"]
                .as_u64()
                .map_or("-".to_string(), |n| n.to_string()),
        );
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            println!("{row:#}");
        }
    }
    Ok(())
}

fn serve_fleet(args: &[String]) -> Res<()> {
    let size: usize = args.first().ok_or("size")?.parse()?;
    let limits = args.get(1).map(String::as_str) == Some("limits");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut opts = TestbedOptions {
            page_size: FLEET_PAGE,
            enforce_limits: limits,
            ..TestbedOptions::default()
        };
        if !limits {
            opts.compute_limits = ComputeLimits {
                high_cost_3min: 1_000_000,
                high_cost_30min: 1_000_000,
                low_cost_3min: 1_000_000,
                low_cost_30min: 1_000_000,
            };
        }
        let tb = Testbed::start(opts.clone()).await?;
        let f = tb.fleet();
        for s in fleet_sets(size) {
            f.add_scale_set(&s.sub, &s.rg, &s.name, s.mode, "eastus");
            f.set_health_extension(&s.sub, &s.rg, &s.name, true);
            f.scale_to(&s.sub, &s.rg, &s.name, PER_SET);
            if !s.big {
                tb.nginx().add_upstream(UpstreamKind::Http, &s.name);
            }
        }
        tb.dataplane().add_backend("big");
        let line = json!({
            "arm": tb.arm_url(),
            "nginx": tb.nginx_url(),
            "dataplane": tb.dataplane_url(),
            "authority": tb.authority_url(),
            "tenant": opts.tenant_id,
            "client": opts.client_id,
            "secret": opts.client_secret,
        });
        println!("{line}");
        std::io::stdout().flush()?;
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
        })
        .await?;
        let reqs = tb.requests_to(vmss_testbed::Service::Arm);
        let throttled = reqs.iter().filter(|r| r.status == 429).count();
        println!(
            "{}",
            json!({"arm_requests": reqs.len(), "throttled": throttled})
        );
        std::io::stdout().flush()?;
        tb.shutdown().await;
        Res::Ok(())
    })
}

fn measure_fleet(args: &[String]) -> Res<()> {
    let size: usize = args.first().ok_or("size")?.parse()?;
    let limits = args.get(1).map(String::as_str) == Some("limits");
    let cycles: usize = args.get(2).ok_or("cycles")?.parse()?;
    let urls: Value = serde_json::from_str(args.get(3).ok_or("urls")?)?;
    let s = |k: &str| urls[k].as_str().unwrap_or_default().to_string();
    let sets = fleet_sets(size);
    let mut ups = format!(
        "  - name: big\n    subscription_id: {}\n    resource_group_name: big-rg\n    virtual_machine_scale_set: \"big-*\"\n    port: 80\n    kind: http\n    target: dp\n",
        fleet_sub(0)
    );
    for set in sets.iter().filter(|s| !s.big) {
        ups.push_str(&format!(
            "  - name: {n}\n    subscription_id: {sub}\n    resource_group_name: {rg}\n    virtual_machine_scale_set: {n}\n    port: 80\n    kind: http\n",
            n = set.name,
            sub = set.sub,
            rg = set.rg
        ));
    }
    // Lifted: views every cycle and the daemon's own budget out of the way, so that the
    // figures are its own cost. Limits: the defaults.
    let top = if limits {
        String::new()
    } else {
        "health_interval: 1ms\narm_read_burst: 1000000\narm_reads_per_second: 100000\n".into()
    };
    let text = format!(
        "cloud_provider: Azure\nsubscription_id: {}\nresource_group_name: big-rg\napi_endpoint: {}\n\
         resource_manager_endpoint: {}\nadmin_listen: off\n{top}\
         targets:\n  dp:\n    type: haproxy_dataplane\n    url: {}\n    username: {}\n    password: ${{DPAPI_PASSWORD}}\n\
         upstreams:\n{ups}",
        fleet_sub(0),
        s("nginx"),
        s("arm"),
        s("dataplane"),
        vmss_testbed::DATAPLANE_USER,
    );
    let env = Env::from_pairs(&[
        ("AZURE_TENANT_ID", &s("tenant")),
        ("AZURE_CLIENT_ID", &s("client")),
        ("AZURE_CLIENT_SECRET", &s("secret")),
        ("AZURE_AUTHORITY_HOST", &s("authority")),
        ("DPAPI_PASSWORD", vmss_testbed::DATAPLANE_PASSWORD),
    ]);
    let cfg = config::parse(&text, std::path::Path::new("bench-fleet.yaml"), &|k| {
        env.get(k).map(str::to_string)
    })?;
    // The daemon's own runtime (what `vmss-sync run` runs on).
    let rt = daemon::runtime()?;
    let result = rt.block_on(async move {
        let started = Instant::now();
        let rec = daemon::build(&cfg, &env)?;
        let problems = rec.startup_check().await;
        if !problems.is_empty() {
            return Err(daemon::format_problems(&problems).into());
        }
        // Cold start: cycles until every upstream is in sync.
        let mut first_cycles = 0;
        loop {
            first_cycles += 1;
            let r = rec.reconcile(Mode::Apply).await;
            if r.all_in_sync() {
                break;
            }
            if first_cycles >= 10 {
                let bad: Vec<String> = r
                    .outcomes
                    .iter()
                    .filter(|o| !o.in_sync())
                    .take(3)
                    .map(|o| format!("{o:?}"))
                    .collect();
                return Err(format!("not in sync after 10 cycles: {bad:?}").into());
            }
        }
        let cold = started.elapsed();
        let cold_stats = rec.arm().stats();
        let hwm_cold = peak_kb();
        eprintln!(
            "bench: {size} instances ({}): in sync {:.1} s after a cold start",
            if limits { "ARM limits" } else { "lifted" },
            cold.as_secs_f64()
        );
        // BENCH_SETTLE_MS: a pause after the cold start, so that a profiler can be switched
        // on for the steady cycles alone (`callgrind_control -i on`, docs/benchmarks.md).
        let settle = std::env::var("BENCH_SETTLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        tokio::time::sleep(Duration::from_millis(settle)).await;
        let before = rec.arm().stats();
        let cpu0 = cpu_time();
        // Lifted: cycles back to back. Limits: as the daemon runs them, one every
        // sync_interval, for at least two health intervals (so that views come due).
        let (pause, least) = if limits {
            (cfg.sync_interval, cfg.health_interval * 2)
        } else {
            (Duration::from_millis(2), Duration::ZERO)
        };
        let t = Instant::now();
        let mut ran = 0usize;
        let mut busy = Duration::ZERO;
        let mut longest = Duration::ZERO;
        while ran < cycles || t.elapsed() < least {
            let c = Instant::now();
            let r = rec.reconcile(Mode::Apply).await;
            if !r.all_in_sync() {
                return Err("a steady cycle failed".into());
            }
            drop(r);
            let took = c.elapsed();
            busy += took;
            longest = longest.max(took);
            ran += 1;
            tokio::time::sleep(pause.saturating_sub(took).max(Duration::from_millis(2))).await;
        }
        let wall = busy;
        let cpu = cpu_time().saturating_sub(cpu0);
        let after = rec.arm().stats();
        let n = ran as f64;
        let s429 = |st: &vmss_sync::azure::ArmStats| st.by_status.get(&429).copied().unwrap_or(0);
        Res::Ok(json!({
            "reads_per_cycle": (after.requests - before.requests) as f64 / n,
            "cpu_ms_per_cycle": cpu.as_secs_f64() * 1000.0 / n,
            "steady_cycle_s": wall.as_secs_f64() / n,
            "cold_start_s": cold.as_secs_f64(),
            "cold_start_cycles": first_cycles,
            "cold_start_reads": cold_stats.requests,
            "cold_start_429": s429(&cold_stats),
            "steady_429": s429(&after) - s429(&before),
            "budget_wait_s": after.budget_wait.as_secs_f64(),
            "peak_kb_after_cold_start": hwm_cold,
            "steady_cycles": ran,
            "steady_cycle_longest_s": longest.as_secs_f64(),
        }))
    });
    let mut r = result?;
    r["peak_kb"] = json!(peak_kb());
    println!("{r}");
    Ok(())
}
