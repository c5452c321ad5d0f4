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

    /// A reconciler built as the daemon builds it, from the configuration file at `path`
    /// with this testbed's service principal in the environment.
    pub fn reconciler_from(&self, path: &Path) -> vmss_sync::reconcile::Reconciler {
        let text = std::fs::read_to_string(path).expect("config written");
        let pairs = self.sp_env();
        let vars: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let vars = vmss_sync::azure::auth::Env::from_pairs(&vars);
        let cfg = vmss_sync::config::parse(&text, path, &|k| vars.get(k).map(str::to_string))
            .expect("valid configuration");
        vmss_sync::daemon::build(&cfg, &vars).expect("reconciler")
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

/// How to start `vmss-sync` as a daemon. [`Daemon::run`] is `vmss-sync run --config CFG`
/// with the testbed's service principal ([`Env::sp_env`]), stdout and stderr to
/// `daemon.log` in the test's directory; the methods change one of those, [`spawn`]
/// starts it.
///
/// [`spawn`]: DaemonBuilder::spawn
pub struct DaemonBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    log: PathBuf,
}

impl DaemonBuilder {
    /// The whole command line instead of `run --config CFG`.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// The environment instead of the service principal's.
    pub fn env(mut self, vars: &[(String, String)]) -> Self {
        self.env = vars.to_vec();
        self
    }

    /// One more environment variable.
    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// The log file's name in the test's directory instead of `daemon.log`.
    pub fn log(mut self, name: &str) -> Self {
        self.log = self.dir.join(name);
        self
    }

    /// The log file's path instead of `daemon.log` in the test's directory.
    pub fn log_path(mut self, path: &Path) -> Self {
        self.log = path.to_path_buf();
        self
    }

    pub fn spawn(self) -> Daemon {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Daemon::spawn(&args, &self.env, &self.log)
    }
}

/// A daemon process; killed by pid when dropped (also when the test fails). Its stdout and
/// stderr go to one file, `log`; the wait helpers print it when they give up.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    /// `vmss-sync run --config CFG` for the testbed of `env` (see [`DaemonBuilder`]).
    pub fn run(env: &Env, cfg: &Path) -> DaemonBuilder {
        DaemonBuilder {
            args: vec![
                "run".into(),
                "--config".into(),
                cfg.to_str().expect("UTF-8 config path").into(),
            ],
            env: env.sp_env(),
            dir: env.dir.path().to_path_buf(),
            log: env.dir.path().join("daemon.log"),
        }
    }

    /// Starts `vmss-sync ARGS` (the builder's `spawn`; a test that needs nothing of the
    /// builder may call it directly).
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

    /// Everything the daemon printed so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The printed lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.log_text().lines().map(str::to_string).collect()
    }

    /// Waits until `f` holds (polled every 50 ms); panics with `what` and the daemon's
    /// log after `within`.
    pub async fn until(&self, within: Duration, what: &str, f: impl FnMut() -> bool) {
        assert!(
            eventually(within, f).await,
            "{what}: not within {within:?}; daemon log:\n{}",
            self.log_text()
        );
    }

    /// When the daemon first printed `needle`, if within `within` (the moment it was
    /// seen, polled every 20 ms).
    pub async fn logged(&self, needle: &str, within: Duration) -> Option<std::time::Instant> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.log_text().contains(needle) {
                return Some(std::time::Instant::now());
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// When the daemon first printed `needle`; panics with the log when it did not within
    /// `within`.
    pub async fn expect_logged(&self, needle: &str, within: Duration) -> std::time::Instant {
        match self.logged(needle, within).await {
            Some(at) => at,
            None => panic!(
                "never logged {needle:?} within {within:?}:\n{}",
                self.log_text()
            ),
        }
    }

    /// The admin endpoint's address (`admin_listen: 127.0.0.1:0`), read from the log line
    /// "Admin endpoint listening on http://ADDR"; panics with the log after 20 s.
    pub async fn admin_addr(&self) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(a) = admin_addr_in(&self.log_text()) {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no admin address logged:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The admin address a daemon logged ("Admin endpoint listening on http://ADDR ...").
pub fn admin_addr_in(log: &str) -> Option<String> {
    let marker = "Admin endpoint listening on http://";
    let start = log.find(marker)? + marker.len();
    let rest = &log[start..];
    let end = rest.find([' ', '\n', '\x1b'])?;
    Some(rest[..end].to_string())
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
