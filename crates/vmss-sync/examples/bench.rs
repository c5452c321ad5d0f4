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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
