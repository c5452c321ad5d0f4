//! Helpers shared by the end-to-end tests: a testbed, a configuration file, and the
//! real `vmss-sync` binary run as a child process.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use vmss_testbed::{Orchestration, Service, Testbed, TestbedOptions, UpstreamKind};

pub const SUB: &str = "00000000-0000-0000-0000-000000000001";
pub const RG: &str = "rg-web";

pub struct Env {
    pub tb: Testbed,
    pub dir: tempfile::TempDir,
}

pub async fn testbed(opts: TestbedOptions) -> Env {
    let tb = Testbed::start(opts).await.expect("testbed starts");
    Env {
        tb,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

impl Env {
    /// A Uniform set with `n` instances and one http upstream of the same name fed by it.
    pub fn uniform(&self, set: &str, n: usize) {
        self.tb
            .fleet()
            .add_scale_set(SUB, RG, set, Orchestration::Uniform, "eastus");
        self.tb.fleet().scale_to(SUB, RG, set, n);
    }

    pub fn upstream(&self, kind: UpstreamKind, name: &str) {
        self.tb.nginx().add_upstream(kind, name);
    }

    /// Servers (addresses) the fake NGINX Plus sends new traffic to (neither draining nor
    /// down), sorted.
    pub fn servers(&self, kind: UpstreamKind, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tb
            .nginx()
            .servers(kind, name)
            .iter()
            .filter(|s| s["drain"] != true && s["down"] != true)
            .filter_map(|s| s["server"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// Every server the fake NGINX Plus holds (draining ones too), sorted.
    pub fn all_servers(&self, kind: UpstreamKind, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tb
            .nginx()
            .servers(kind, name)
            .iter()
            .filter_map(|s| s["server"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// Servers that are draining (http `drain`, stream `down`), sorted.
    pub fn draining(&self, kind: UpstreamKind, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .tb
            .nginx()
            .servers(kind, name)
            .iter()
            .filter(|s| s["drain"] == true || s["down"] == true)
            .filter_map(|s| s["server"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    pub fn ips(&self, set: &str, port: u16) -> Vec<String> {
        let mut v: Vec<String> = self
            .tb
            .fleet()
            .instance_ips(SUB, RG, set)
            .iter()
            .map(|ip| format!("{ip}:{port}"))
            .collect();
        v.sort();
        v
    }

    /// NGINX write requests (POST, PATCH, DELETE) seen so far.
    pub fn nginx_writes(&self) -> Vec<String> {
        self.tb
            .requests()
            .into_iter()
            .filter(|r| r.service == Service::Nginx && r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    pub fn arm_requests(&self) -> usize {
        self.tb
            .requests()
            .iter()
            .filter(|r| r.service == Service::Arm)
            .count()
    }

    /// Writes a configuration file with the testbed's endpoints; `upstreams` is the YAML
    /// list body (already indented by two spaces).
    pub fn config(&self, extra_top: &str, upstreams: &str) -> PathBuf {
        let text = format!(
            "cloud_provider: Azure\n\
             subscription_id: {SUB}\n\
             resource_group_name: {RG}\n\
             api_endpoint: {}\n\
             resource_manager_endpoint: {}\n\
             sync_interval: 1s\n\
             admin_listen: off\n\
             {extra_top}\
             upstreams:\n{upstreams}",
            self.tb.nginx_url(),
            self.tb.arm_url(),
        );
        self.write("config.yaml", &text)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write config");
        p
    }

    /// Environment for the client-secret credential flow against the testbed.
    pub fn sp_env(&self) -> Vec<(String, String)> {
        let o = TestbedOptions::default();
        vec![
            ("AZURE_TENANT_ID".into(), o.tenant_id),
            ("AZURE_CLIENT_ID".into(), o.client_id),
            ("AZURE_CLIENT_SECRET".into(), o.client_secret),
            ("AZURE_AUTHORITY_HOST".into(), self.tb.authority_url()),
        ]
    }
}

pub fn upstream_yaml(name: &str, set: &str, port: u16, kind: &str) -> String {
    format!(
        "  - name: {name}\n    virtual_machine_scale_set: {set}\n    port: {port}\n    kind: {kind}\n"
    )
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn command(args: &[&str], env: &[(String, String)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_vmss-sync"));
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        // never let a test reach the real IMDS address
        .env(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST",
            super::ports::refused_url(),
        )
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs `vmss-sync ARGS` to completion (at most 60 s).
pub async fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let child = command(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmss-sync");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("vmss-sync finished within 60 s")
        .expect("vmss-sync output");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A daemon process; killed by pid when dropped (also when the test fails).
pub struct Daemon {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(args: &[&str], env: &[(String, String)], log: &Path) -> Daemon {
        let file = std::fs::File::create(log).expect("log file");
        let err = file.try_clone().expect("clone log file");
        let child = command(args, env)
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn vmss-sync daemon");
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("daemon pid");
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }

    pub async fn wait(&mut self, within: Duration) -> i32 {
        tokio::time::timeout(within, self.child.wait())
            .await
            .expect("daemon exited in time")
            .expect("wait")
            .code()
            .unwrap_or(-1)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Polls `f` every 50 ms until it is true or `within` passes.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
