//! Helpers of the operations tests (`ops_*.rs`): the admin endpoint of a daemon,
//! leader-election configuration files (Azurite: `super::azurite`) and /proc measurements.
//! Used with `common`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use super::azurite::{Azurite, DEV_ACCOUNT, DEV_KEY};

/// The `leader_election` section for Azurite with Shared Key (the key from `${LEASE_KEY}`).
pub fn leader_yaml(azurite: &Azurite, container: &str, lease_seconds: u64) -> String {
    format!(
        "leader_election:\n  account_url: {}\n  container: {container}\n  blob: leader\n  \
         lease_duration: {lease_seconds}s\n  auth: shared_key\n  account_key: ${{LEASE_KEY}}\n",
        azurite.account_url()
    )
}

/// A full configuration for the testbed: `api_endpoint` as given (replicas use `/api` and
/// `/nplus` so that the testbed's request log tells their writes apart), one http upstream
/// `web` fed by the scale set `web`, the admin endpoint on a free port, and `extra`.
pub fn config_text(env: &super::common::Env, api_endpoint: &str, extra: &str) -> String {
    format!(
        "cloud_provider: Azure\n\
         subscription_id: {}\n\
         resource_group_name: {}\n\
         api_endpoint: {api_endpoint}\n\
         resource_manager_endpoint: {}\n\
         sync_interval: 1s\n\
         admin_listen: 127.0.0.1:0\n\
         {extra}\
         upstreams:\n{}",
        super::common::SUB,
        super::common::RG,
        env.tb.arm_url(),
        super::common::upstream_yaml("web", "web", 80, "http"),
    )
}

/// The environment of a replica: the testbed's service principal and the storage key.
pub fn replica_env(env: &super::common::Env) -> Vec<(String, String)> {
    let mut e = env.sp_env();
    e.push(("LEASE_KEY".into(), DEV_KEY.into()));
    e
}

/// An answer of the admin endpoint.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("JSON body ({e}): {}", self.body))
    }
}

/// `GET http://ADDR/PATH`, as curl would.
pub async fn get(addr: &str, path: &str) -> Answer {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Answer {
        status,
        content_type,
        body: r.text().await.unwrap_or_default(),
    }
}

/// The value of the sample `name{labels}` (labels as written, or "" for none) in a
/// Prometheus text page, if present.
pub fn sample(page: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    page.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample of `name` whatever its labels.
pub fn sample_sum(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// Sum of the samples of `name` whose labels contain `label` (e.g. `code="429"`).
pub fn sample_sum_with(page: &str, name: &str, label: &str) -> f64 {
    page.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

/// Polls `f` every 50 ms (async) until it is true or `within` passes.
pub async fn eventually_async<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// NGINX writes (POST, PATCH, DELETE) in arrival order, each as the API prefix it came
/// through (`api` or `nplus`) and `METHOD path`.
pub fn writes(env: &super::common::Env) -> Vec<(String, String)> {
    env.tb
        .requests()
        .into_iter()
        .filter(|r| r.service == vmss_testbed::Service::Nginx && r.method != "GET")
        .map(|r| {
            let prefix = r
                .path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            (prefix, format!("{} {}", r.method, r.path))
        })
        .collect()
}

/// CPU time (user + system) of a process, from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12th and 13th after ')'.
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A `kB` field of /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `Accept` header Prometheus 2.42 sends when it scrapes.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// `GET http://ADDR/PATH` with an `Accept` header.
pub async fn get_accepting(addr: &str, path: &str, accept: &str) -> Answer {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .header("accept", accept)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Answer {
        status,
        content_type,
        body: r.text().await.unwrap_or_default(),
    }
}

/// A tool of Debian's `prometheus` package (`promtool`, `prometheus`), or `None` with a
/// printed message when it is missing on a developer machine. Under CI (`CI` set) a
/// missing tool fails the test: scripts/test.sh installs the package.
pub fn prometheus_tool(name: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/local/bin", "/usr/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing under CI: scripts/test.sh installs Debian's prometheus package"
        );
        eprintln!("SKIPPED: {name} is not installed (Debian package prometheus)");
    }
    found
}

/// Runs `promtool ARGS` with `stdin`; returns (exit code, stdout + stderr).
pub fn promtool(tool: &Path, args: &[&str], stdin: &str, dir: &Path) -> (i32, String) {
    use std::io::Write as _;
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}
