//! Fuzz-style test of configuration parsing: thousands of deterministically mutated files
//! (byte flips, truncations, duplicated blocks, deep nesting, alias bombs, invalid UTF-8,
//! huge environment values, huge files, floods of mistakes) made from valid
//! configurations. They are loaded with `config::load` in a child process (this test
//! binary again) running under a 1 GiB address-space limit, and every 30th also by the real
//! binary (`vmss-sync validate`) under a 256 MiB limit. Asserted for every case: no panic,
//! no abort, exit 0 or 2 (the binary agreeing with the library), under 1 s of CPU (and 5 s
//! of wall time), the process's peak resident memory (VmHWM, reset before each case through
//! /proc/self/clear_refs) under 64 MiB, and at most 64 KiB of messages. It prints the case
//! count, the slowest case and the peak memory. `FUZZ_CASE=N` replays case N alone.
//!
//! The worker child runs this one test alone (`--exact`), so that the peak memory measured
//! is its own and not that of the other tests of the binary.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Cases generated and loaded in-process.
const CASES: usize = 3_000;
/// Every this many cases, the binary also validates the file.
const BINARY_EVERY: usize = 30;
/// The seed CI runs; `VMSS_FUZZ_SEED` (decimal or `0x` hex) runs another.
const SEED: u64 = 0x5eed_c0f1_6000;

/// The seed of this run: `VMSS_FUZZ_SEED` when set, else [`SEED`]. An unreadable value
/// fails the test rather than running the default unnoticed.
fn seed() -> u64 {
    match std::env::var("VMSS_FUZZ_SEED") {
        Err(_) => SEED,
        Ok(v) => {
            let t = v.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
                None => t.replace('_', "").parse(),
            };
            parsed.unwrap_or_else(|e| panic!("VMSS_FUZZ_SEED={v:?}: {e}"))
        }
    }
}
const MAX_PEAK_KIB: u64 = 64 << 10;
/// CPU time a case may take (measured in CPU rather than wall time: the machine running
/// the tests may be busy with other work).
const MAX_CASE_CPU: Duration = Duration::from_secs(1);
/// Wall time a case may take, however busy the machine.
const MAX_CASE_WALL: Duration = Duration::from_secs(5);
const MAX_MESSAGES: usize = 64 << 10;

const NGINX_ASG_SYNC: &str = "\
cloud_provider: Azure
subscription_id: my_subscription_id
resource_group_name: my_resource_group
api_endpoint: http://127.0.0.1:8080/api
sync_interval: 5s
upstreams:
  - name: backend-one
    virtual_machine_scale_set: backend-one-group
    port: 80
    kind: http
    max_conns: 0
    max_fails: 1
    fail_timeout: 10s
    slow_start: 0s
  - name: backend-two
    virtual_machine_scale_set: backend-two-group
    port: 80
    kind: stream
";

const NGINXAAS: &str = "\
cloud_provider: Azure
subscription_id: 11111111-2222-3333-4444-555555555555
resource_group_name: my-vmss-rg
api_endpoint: https://my-deployment.eastus2.nginxaas.net/nplus
custom_headers:
  Content-Type: application/json
  Authorization: ApiKey ${KEY}
upstreams:
  - name: backend-one
    virtual_machine_scale_set: backend-one-vmss
    port: 80
    kind: http
";

const EVERYTHING: &str = "\
subscription_id: sub
resource_group_name: rg
api_endpoint: http://127.0.0.1:8080/api
resource_manager_endpoint: http://127.0.0.1:7000
log_format: json
log_level: debug
admin_listen: 127.0.0.1:9090
readiness_max_age: 45s
health_interval: 20s
arm_read_burst: 100
arm_reads_per_second: 10
leader_election:
  account_url: http://127.0.0.1:10000/devstoreaccount1
  container: vmss-sync
  lease_duration: 15s
  auth: shared_key
  account_key: ${LEASE_KEY}
defaults: &defaults
  port: 80
  kind: http
targets:
  edge:
    type: haproxy_runtime
    address: /run/haproxy/admin.sock
  edge-tcp:
    type: haproxy_runtime
    address: 127.0.0.1:9999
    mode: slots
    server_prefix: web
    check: true
    timeout: 3s
  remote:
    type: haproxy_dataplane
    url: https://lb.example.com:5555
    username: admin
    password: ${KEY}
    server_slots:
      base: 4
      growth_type: exponential
      growth_factor: 2
  oss:
    type: nginx_file
    path: /etc/nginx/conf.d/vmss.conf
    reload_command: [systemctl, reload, nginx]
upstreams:
  - name: web
    virtual_machine_scale_set: [web-*, blue]
    resource_group_name: [rg-1, rg-2]
    port: 80
    kind: http
    register_when: always
    drain_timeout: 0s
  - name: b
    tags:
      allow: {role: web, env: prod*}
      deny: {maintenance: \"true\"}
    resource_group_name: \"*\"
    port_tag: app-port
    kind: stream
    target: edge
  - {name: c, virtual_machine_scale_set: c, port: 8080, kind: http, target: remote}
  - name: svc
    tags: {allow: {tier: app}}
    services: {separator: \"-\"}
    port: 80
    kind: http
    target: remote
";

/// The environment the cases see: a secret, a storage key and values of 30 KB and 100 KB.
fn env(name: &str) -> Option<String> {
    match name {
        "KEY" => Some("s3cr3t".into()),
        "LEASE_KEY" => Some(
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
                .into(),
        ),
        "MED" => Some("m".repeat(30_000)),
        "HUGE" => Some("h".repeat(100_000)),
        _ => None,
    }
}

/// The valid configurations mutated: the ones above and the YAML examples of the README and
/// of every page under docs/.
fn corpus() -> Vec<String> {
    let mut v = vec![
        NGINX_ASG_SYNC.to_string(),
        NGINXAAS.to_string(),
        EVERYTHING.to_string(),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut pages = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|e| e == "md") {
                pages.push(p);
            }
        }
    }
    for page in pages {
        if let Ok(text) = std::fs::read_to_string(page) {
            for block in text.split("```yaml\n").skip(1) {
                if let Some((yaml, _)) = block.split_once("```") {
                    v.push(yaml.to_string());
                }
            }
        }
    }
    v
}

fn lines(b: &[u8]) -> Vec<&[u8]> {
    b.split_inclusive(|&c| c == b'\n').collect()
}

/// One mutation of `b`; its name for the report.
fn mutate(rng: &mut fastrand::Rng, b: &mut Vec<u8>) -> &'static str {
    let pos = |rng: &mut fastrand::Rng, b: &Vec<u8>| rng.usize(0..=b.len());
    match rng.u32(0..14) {
        0 => {
            for _ in 0..rng.usize(1..8) {
                if !b.is_empty() {
                    let i = rng.usize(0..b.len());
                    b[i] ^= 1 << rng.u32(0..8);
                }
            }
            "byte flips"
        }
        1 => {
            let i = pos(rng, b);
            b.truncate(i);
            "truncation"
        }
        2 => {
            let ls = lines(b);
            if ls.is_empty() {
                return "duplicated block";
            }
            let start = rng.usize(0..ls.len());
            let end = rng.usize(start..ls.len()) + 1;
            let block: Vec<u8> = ls[start..end].concat();
            let times = rng.usize(1..200).min((3 << 20) / block.len().max(1)).max(1);
            let at: usize = ls[..end].iter().map(|l| l.len()).sum();
            let ins = block.repeat(times);
            b.splice(at..at, ins);
            "duplicated block"
        }
        3 => {
            let n = rng.usize(1..5_000);
            let at = pos(rng, b);
            let mut ins = b"[".repeat(n);
            if rng.bool() {
                ins.extend(b"]".repeat(n));
            }
            b.splice(at..at, ins);
            "deep flow nesting"
        }
        4 => {
            let n = rng.usize(1..200);
            let mut ins = Vec::new();
            for i in 0..n {
                ins.extend(format!("{}k{i}:\n", "  ".repeat(i)).bytes());
            }
            b.extend(ins);
            "deep block nesting"
        }
        5 => {
            for _ in 0..rng.usize(1..5) {
                let at = pos(rng, b);
                let byte = rng.u8(0x80..=0xff);
                b.insert(at, byte);
            }
            "invalid UTF-8"
        }
        6 => {
            let len = rng.usize(1_000..200_000);
            let n = rng.usize(10..5_000);
            b.extend(
                format!(
                    "\nbomb: &s {}\nboom: [{}]\n",
                    "s".repeat(len),
                    vec!["*s"; n].join(", ")
                )
                .bytes(),
            );
            "long anchored string aliased"
        }
        7 => {
            let mut t = String::from("\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
            for i in 1..rng.usize(2..12) {
                let p = format!("*l{}", i - 1);
                t.push_str(&format!("l{i}: &l{i} [{}]\n", [p.as_str(); 9].join(", ")));
            }
            b.extend(t.bytes());
            "billion laughs"
        }
        8 => {
            let var = if rng.bool() { "HUGE" } else { "MED" };
            let n = rng.usize(1..3_000);
            b.extend(
                format!(
                    "\nx: &v \"${{{var}}}\"\nupstreams:\n  - name: e\n    virtual_machine_scale_set: [{}]\n    port: 80\n    kind: http\n",
                    vec!["*v"; n].join(", ")
                )
                .bytes(),
            );
            "huge environment value aliased"
        }
        9 => {
            // ${HUGE} or ${MED} in place of a value.
            let text = String::from_utf8_lossy(b).into_owned();
            let var = if rng.bool() {
                "${HUGE}"
            } else {
                "${MED}${MED}${MED}"
            };
            let ls: Vec<&str> = text.split_inclusive('\n').collect();
            let mut out = String::new();
            for l in ls {
                match l.split_once(": ") {
                    Some((k, _)) if rng.u32(0..3) == 0 => {
                        out.push_str(&format!("{k}: \"{var}\"\n"));
                    }
                    _ => out.push_str(l),
                }
            }
            *b = out.into_bytes();
            "huge environment values"
        }
        10 => {
            let target = rng.usize(900_000..1_200_000);
            let line = format!("# {}\n", "p".repeat(rng.usize(10..2_000)));
            while b.len() < target {
                b.extend(line.bytes());
            }
            "huge file"
        }
        11 => {
            let n = rng.usize(100..8_000);
            let mut t = String::new();
            for i in 0..n {
                t.push_str("unknwn_");
                t.push_str(&i.to_string());
                t.push_str(": ");
                t.push_str(&"u".repeat(i % 100));
                t.push('\n');
            }
            b.extend(t.bytes());
            "flood of unknown keys"
        }
        12 => {
            let n = rng.usize(100..100_000);
            b.extend(format!("\nseq: [{}]\n", "1,".repeat(n)).bytes());
            "many nodes"
        }
        _ => {
            let at = pos(rng, b);
            let len = rng.usize(1_000..100_000);
            let ins = if rng.bool() {
                format!("\nlong_{}: x\n", "k".repeat(len))
            } else {
                format!("\nlong: '{}'\n", "v".repeat(len))
            };
            b.splice(at..at, ins.into_bytes());
            "long key or value"
        }
    }
}

/// CPU time (user + system) this process has used, from /proc/self/stat (in clock ticks
/// of 10 ms on Linux: USER_HZ is 100).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    Duration::from_millis(ticks * 10)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resets the peak resident size to the current one (Linux: "5" to clear_refs).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn prlimit() -> Option<&'static str> {
    if Path::new("/usr/bin/prlimit").exists() {
        return Some("/usr/bin/prlimit");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "prlimit (util-linux) is required in CI"
    );
    eprintln!("prlimit (util-linux) is not installed: the binary part is SKIPPED");
    None
}

struct Case {
    name: String,
    bytes: Vec<u8>,
}

/// The cases, made one at a time (deterministic: seeded).
struct Cases {
    corpus: Vec<String>,
    rng: fastrand::Rng,
    next: usize,
}

impl Iterator for Cases {
    type Item = Case;

    fn next(&mut self) -> Option<Case> {
        if self.next == CASES {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let n = self.corpus.len();
        let mut bytes = self.corpus[i % n].clone().into_bytes();
        let mut names = Vec::new();
        for _ in 0..self.rng.usize(1..=3) {
            names.push(mutate(&mut self.rng, &mut bytes));
            // Past the 1 MiB limit every file is refused alike; keep the test's own memory low.
            bytes.truncate(3 << 20);
        }
        Some(Case {
            name: format!("case {i} (corpus {}: {})", i % n, names.join(" + ")),
            bytes,
        })
    }
}

fn cases() -> Cases {
    Cases {
        corpus: corpus(),
        rng: fastrand::Rng::with_seed(seed()),
        next: 0,
    }
}

const TEST_NAME: &str =
    "thousands_of_mutated_configs_never_panic_or_abort_exit_0_or_2_under_1_s_and_64_mib";

/// This test's full name in the test binary (`config_fuzz::thousands_…`: the module path
/// without the crate's name), for `--exact`.
fn test_path() -> String {
    let module = module_path!();
    let module = module.split_once("::").map_or(module, |(_, m)| m);
    format!("{module}::{TEST_NAME}")
}

/// Runs the cases in a child process (this test binary again, with `VMSS_FUZZ_WORKER`)
/// under a 1 GiB address-space limit, so that an abort is seen as such, and with glibc's
/// malloc returning freed memory at once (fixed mmap threshold, no trim threshold), so
/// that each case's peak resident size is its own and not memory the test freed before.
#[test]
fn thousands_of_mutated_configs_never_panic_or_abort_exit_0_or_2_under_1_s_and_64_mib() {
    if std::env::var_os("VMSS_FUZZ_WORKER").is_some() {
        return worker();
    }
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = match prlimit() {
        Some(p) => {
            let mut c = Command::new(p);
            c.arg(format!("--as={}", 1u64 << 30)).arg("--").arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let status = cmd
        .args(["--exact", &test_path(), "--nocapture", "--test-threads=1"])
        .env("VMSS_FUZZ_WORKER", "1")
        .env("MALLOC_MMAP_THRESHOLD_", "65536")
        .env("MALLOC_TRIM_THRESHOLD_", "0")
        .env("MALLOC_ARENA_MAX", "1")
        .status()
        .expect("run the fuzz worker");
    assert!(
        status.success(),
        "the fuzz worker failed ({status}): see its output above"
    );
}

fn worker() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prlimit = prlimit();
    let resettable = reset_peak();
    assert!(
        resettable || std::env::var("CI").as_deref() != Ok("true"),
        "/proc/self/clear_refs must be writable in CI to measure each case's peak"
    );
    let baseline = vm_hwm_kib();
    let (mut valid, mut invalid, mut binary_runs) = (0, 0, 0);
    let mut slowest = (Duration::ZERO, String::new());
    let mut slowest_cpu = (Duration::ZERO, String::new());
    let mut peak = (0u64, String::new());
    let mut most_messages = (0usize, String::new());
    let mut largest = 0usize;
    let started = Instant::now();
    let (mut in_load, mut in_binary) = (Duration::ZERO, Duration::ZERO);
    let cpu_start = cpu_time();
    // FUZZ_CASE=N replays case N alone (to study a failure).
    let only: Option<usize> = std::env::var("FUZZ_CASE").ok().and_then(|v| v.parse().ok());
    for (i, case) in cases().enumerate() {
        if only.is_some_and(|n| n != i) {
            continue;
        }
        let path = dir.path().join(format!("case-{i}.yaml"));
        std::fs::write(&path, &case.bytes).expect("write case");
        let size = case.bytes.len();
        largest = largest.max(size);
        drop(case.bytes);
        reset_peak();
        let (t, cpu0) = (Instant::now(), cpu_time());
        let result = std::panic::catch_unwind(|| vmss_sync::config::load(&path, &env));
        let took = t.elapsed();
        let cpu = cpu_time().saturating_sub(cpu0);
        in_load += took;
        let hwm = vm_hwm_kib();
        if only.is_some() {
            eprintln!(
                "{}: {size} bytes, {took:?}, peak {hwm} KiB (at start {baseline} KiB)",
                case.name
            );
        }
        let Ok(result) = result else {
            panic!("{}: the parser panicked", case.name);
        };
        let messages = match &result {
            Ok(_) => {
                valid += 1;
                0
            }
            Err(e) => {
                invalid += 1;
                e.to_string().len()
            }
        };
        assert!(
            cpu < MAX_CASE_CPU && took < MAX_CASE_WALL,
            "{}: took {took:?}, {cpu:?} of CPU ({size} bytes)",
            case.name
        );
        assert!(
            hwm < MAX_PEAK_KIB,
            "{}: peak resident memory {hwm} KiB",
            case.name
        );
        assert!(
            messages < MAX_MESSAGES,
            "{}: {messages} bytes of messages",
            case.name
        );
        if took > slowest.0 {
            slowest = (took, case.name.clone());
        }
        if cpu > slowest_cpu.0 {
            slowest_cpu = (cpu, case.name.clone());
        }
        if hwm > peak.0 {
            peak = (hwm, case.name.clone());
        }
        if messages > most_messages.0 {
            most_messages = (messages, case.name.clone());
        }
        if i % BINARY_EVERY == 0 {
            if let Some(prlimit) = prlimit {
                let t = Instant::now();
                let out = Command::new(prlimit)
                    .arg(format!("--as={}", 256u64 << 20))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_vmss-sync"))
                    .args(["validate", "--config"])
                    .arg(&path)
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .env("KEY", "s3cr3t")
                    .env("MED", "m".repeat(30_000))
                    .env("HUGE", "h".repeat(100_000))
                    .output()
                    .expect("run vmss-sync validate");
                binary_runs += 1;
                in_binary += t.elapsed();
                let expected = if result.is_ok() { 0 } else { 2 };
                assert_eq!(
                    out.status.code(),
                    Some(expected),
                    "{}: vmss-sync validate ended with {:?}\n{}",
                    case.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!(
        "config fuzz: seed {:#x}, {CASES} cases ({valid} valid, {invalid} refused; largest file {largest} bytes) \
         in {:.1?} ({:.1?} loading in-process; {:?} of CPU in all), {binary_runs} also through `vmss-sync validate` \
         under a 256 MiB address-space limit ({:.1?})",
        seed(),
        started.elapsed(),
        in_load,
        cpu_time().saturating_sub(cpu_start),
        in_binary
    );
    eprintln!(
        "config fuzz: slowest case {:?} of wall time: {}",
        slowest.0, slowest.1
    );
    eprintln!(
        "config fuzz: most CPU time {:?} (10 ms ticks): {}",
        slowest_cpu.0, slowest_cpu.1
    );
    eprintln!(
        "config fuzz: peak resident memory {} KiB ({:.1} MiB; test process at start {} KiB; peak reset per case: {resettable}): {}",
        peak.0,
        peak.0 as f64 / 1024.0,
        baseline,
        peak.1
    );
    eprintln!(
        "config fuzz: most message bytes {}: {}",
        most_messages.0, most_messages.1
    );
    if only.is_none() {
        assert!(valid > 0, "some mutated files are still valid");
        assert!(invalid > CASES / 2, "most mutated files are refused");
    }
}
