//! The project's own chaos soak: the real `vmss-sync run` against the testbed while a
//! seeded random driver churns the fleet, breaks ARM reads, restarts the target with
//! state loss, kills, stops and reloads the daemon; invariants are sampled all the time.
//!
//! Seeded: `VMSS_SOAK_SEED` runs one seed (decimal or 0x-hex), else the fixed CI seeds;
//! `VMSS_SOAK_SECS` sets the seconds per seed (default 30). The decisions follow the seed;
//! the timing is real. See docs/chaos-soak.md.

use crate::support::common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmss_testbed::{ComputeLimits, Fault, Orchestration, Service, TestbedOptions, UpstreamKind};

/// Seeds run in CI (one after the other) when `VMSS_SOAK_SEED` is not set.
const CI_SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0x5eed_0003];
const DEFAULT_SECS: u64 = 30;

const SYNC: Duration = Duration::from_secs(1);
const HEALTH: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_secs(2);
const TICK: Duration = Duration::from_millis(150);

/// The Uniform set reports health (registered when healthy); the Flexible one does not
/// (registered when running).
const UNIFORM: &str = "web-u";
const FLEXIBLE: &str = "web-f";
const MIN_MEMBERS: usize = 2;
const MAX_MEMBERS: usize = 8;

/// How old the daemon's picture of an instance may be: instance views are read every
/// `health_interval`, up to 4 × as seldom while the read budget is low (after a 429), and
/// a cycle (sync_interval ± 10 %) uses them; plus a second for the writes.
fn stale() -> Duration {
    HEALTH * 4 + SYNC.mul_f64(2.2) + Duration::from_secs(1)
}

/// The bound on convergence once faults stop: two cycles, a view read, `drain_timeout`,
/// and 2.5 s for (re)start and writes.
fn converge_bound() -> Duration {
    SYNC.mul_f64(2.2) + HEALTH + DRAIN + Duration::from_millis(2500)
}

/// After a daemon start, the time the startup check and first cycle may take.
const STARTUP_ALLOWANCE: Duration = Duration::from_millis(1500);

/// splitmix64: small, seeded, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.below(v.len())])
        }
    }
}

/// One upstream the soak watches: which sets feed it and at which port.
struct Watched {
    kind: UpstreamKind,
    name: &'static str,
    sets: &'static [&'static str],
    port: u16,
}

const WATCHED: [Watched; 2] = [
    Watched {
        kind: UpstreamKind::Http,
        name: "web",
        sets: &[UNIFORM, FLEXIBLE],
        port: 80,
    },
    Watched {
        kind: UpstreamKind::Stream,
        name: "tcp",
        sets: &[FLEXIBLE],
        port: 9000,
    },
];

/// Config variants a SIGHUP may switch between: same servers, other parameters.
const MAX_FAILS: [u32; 3] = [1, 2, 3];

fn config_text(env: &Env, variant: usize) -> String {
    let max_fails = MAX_FAILS[variant % MAX_FAILS.len()];
    format!(
        "cloud_provider: Azure\n\
         subscription_id: {SUB}\n\
         resource_group_name: {RG}\n\
         api_endpoint: {}\n\
         resource_manager_endpoint: {}\n\
         sync_interval: {}s\n\
         health_interval: {}s\n\
         admin_listen: off\n\
         log_level: debug\n\
         upstreams:\n\
         \x20 - name: web\n\
         \x20   virtual_machine_scale_set: [{UNIFORM}, {FLEXIBLE}]\n\
         \x20   port: 80\n\
         \x20   kind: http\n\
         \x20   max_fails: {max_fails}\n\
         \x20   drain_timeout: {}s\n\
         \x20 - name: tcp\n\
         \x20   virtual_machine_scale_set: {FLEXIBLE}\n\
         \x20   port: 9000\n\
         \x20   kind: stream\n\
         \x20   drain_timeout: {}s\n",
        env.tb.nginx_url(),
        env.tb.arm_url(),
        SYNC.as_secs(),
        HEALTH.as_secs(),
        DRAIN.as_secs(),
        DRAIN.as_secs(),
    )
}

/// Replaces the file in one rename, so a reload never reads half of it.
fn write_config(env: &Env, path: &Path, variant: usize) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, config_text(env, variant)).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// The fleet's truth for one upstream: ready addresses (`ip:port`) and every address of
/// a current member.
struct Truth {
    ready: BTreeSet<String>,
    members: BTreeSet<String>,
}

fn truth(env: &Env, w: &Watched) -> Truth {
    let mut t = Truth {
        ready: BTreeSet::new(),
        members: BTreeSet::new(),
    };
    for set in w.sets {
        let Some(s) = env.tb.fleet().scale_set_state(SUB, RG, set) else {
            continue;
        };
        for m in &s.members {
            let addr = format!("{}:{}", m.ip, w.port);
            let running = m.power == "running"
                && !m.provisioning.eq_ignore_ascii_case("deleting")
                && !m.provisioning.eq_ignore_ascii_case("failed");
            let healthy = !s.reports_health || m.health.as_deref() == Some("healthy");
            if running && healthy {
                t.ready.insert(addr.clone());
            }
            t.members.insert(addr);
        }
    }
    t
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Active,
    Draining,
}

struct TargetServer {
    seen: Seen,
    max_fails: Option<u64>,
}

fn observe(env: &Env, w: &Watched) -> BTreeMap<String, TargetServer> {
    env.tb
        .nginx()
        .servers(w.kind, w.name)
        .iter()
        .filter_map(|s| {
            let addr = s["server"].as_str()?.to_string();
            let draining = s["drain"] == true || s["down"] == true;
            Some((
                addr,
                TargetServer {
                    seen: if draining {
                        Seen::Draining
                    } else {
                        Seen::Active
                    },
                    max_fails: s["max_fails"].as_u64(),
                },
            ))
        })
        .collect()
}

/// Since when an address has been ready or not ready (per upstream).
#[derive(Clone, Copy)]
struct Since {
    ready: bool,
    at: Instant,
}

/// The daemon process as the driver sees it.
enum Proc {
    Running {
        d: Daemon,
        started: Instant,
        log: PathBuf,
        /// The process runs its own code: its first log line is written (the signal
        /// handlers are installed before it). Signals wait for this: before it, any
        /// process dies of them.
        up: bool,
    },
    Stopping {
        d: Daemon,
        sig: &'static str,
        sent: Instant,
        log: PathBuf,
    },
    Down {
        restart_at: Instant,
    },
}

fn kill(d: &Daemon, sig: &str) {
    if let Some(pid) = d.child.id() {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
    }
}

fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown end".into(),
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

#[derive(Default)]
struct Figures {
    /// Chaos events applied, by kind.
    events: BTreeMap<&'static str, u32>,
    /// Changes seen on the target, by kind (add, drain, remove, restore).
    target: BTreeMap<&'static str, u32>,
    wrong_removals: u32,
    unready_served: u32,
    stuck_drains: u32,
    /// Servers of leaving instances still draining long after `drain_timeout`.
    overdue_drains: u32,
    bad_exits: u32,
    panics: u32,
    convergence: Vec<Duration>,
    not_converged: u32,
    /// Longest a not-ready address stayed active (measured from the later of its change
    /// and the end of the last disturbance).
    max_unready_active: Duration,
    samples: u64,
    starts: u32,
    /// Longest from a spawn to the daemon's first log line.
    max_until_up: Duration,
    violations: Vec<String>,
    /// Every violation (for the event log).
    all: Vec<String>,
}

impl Figures {
    fn event(&mut self, kind: &'static str) {
        *self.events.entry(kind).or_default() += 1;
    }
    fn violation(&mut self, t: Duration, msg: String) {
        self.all
            .push(format!("[{:>7.2}s] VIOLATION {msg}", t.as_secs_f64()));
        if self.violations.len() < 40 {
            self.violations
                .push(format!("[{:>7.2}s] {msg}", t.as_secs_f64()));
        }
    }
    fn failed(&self) -> bool {
        self.wrong_removals
            + self.unready_served
            + self.stuck_drains
            + self.overdue_drains
            + self.bad_exits
            + self.panics
            + self.not_converged
            > 0
    }
}

/// One ARM fault window.
struct FaultWindow {
    kind: &'static str,
    /// What it hits: `path-part?query-part`, or `all ARM reads`.
    on: String,
    until: Instant,
    retry_after: Duration,
}

struct Soak {
    env: Env,
    rng: Rng,
    seed: u64,
    cfg: PathBuf,
    variant: usize,
    t0: Instant,
    proc: Option<Proc>,
    /// Signals to send at a given time to the daemon started at `.2`.
    pending: Vec<(Instant, &'static str, Instant)>,
    fault: Option<FaultWindow>,
    /// Nothing may be required of the daemon before this (faults, restarts).
    disturbed_until: Instant,
    since: Vec<BTreeMap<String, Since>>,
    prev: Vec<Option<BTreeMap<String, Seen>>>,
    /// Since when each draining server has been draining (per upstream).
    drain_since: Vec<BTreeMap<String, Instant>>,
    fig: Figures,
    /// Every event, start, exit and fault window, with its time.
    log: Vec<String>,
    starts: u32,
    /// Fault windows started so far.
    windows: u32,
    /// Implausible member-list answers still to come, as (kind, needle) indexes.
    deck: Vec<(usize, usize)>,
}

impl Soak {
    fn at(&self) -> Duration {
        self.t0.elapsed()
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self
            .env
            .dir
            .path()
            .join(format!("daemon-{}.log", self.starts));
        let d = Daemon::run(&self.env, &self.cfg).log_path(&log).spawn();
        let now = Instant::now();
        self.disturbed_until = self.disturbed_until.max(now + STARTUP_ALLOWANCE);
        // Sometimes a signal during the startup check, made slow by a slow ARM.
        if self.starts > 1 && self.rng.chance(0.3) {
            let delay = self.rng.millis(300, 900);
            self.env.tb.faults().inject(
                Service::Arm,
                "",
                Fault::Delay(self.rng.millis(400, 900)),
                3,
            );
            self.disturbed_until = self.disturbed_until.max(now + Duration::from_secs(3));
            let sig = if self.rng.chance(0.5) { "HUP" } else { "TERM" };
            self.pending.push((now + delay, sig, now));
            self.fig.event(if sig == "HUP" {
                "sighup during startup"
            } else {
                "sigterm during startup"
            });
        }
        self.note(format!("daemon start {}", self.starts));
        self.proc = Some(Proc::Running {
            d,
            started: now,
            log,
            up: false,
        });
        self.fig.starts += 1;
    }

    /// Advances the daemon's state machine: exits, restarts, pending signals.
    fn tend_process(&mut self) {
        let now = Instant::now();
        let t = self.at();
        let proc = self.proc.take();
        self.proc = match proc {
            Some(Proc::Running {
                mut d,
                started,
                log,
                mut up,
            }) => {
                if !up && std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
                    up = true;
                    self.fig.max_until_up = self.fig.max_until_up.max(started.elapsed());
                }
                // Pending startup signals for this process.
                let mut fire = Vec::new();
                self.pending.retain(|(at, sig, of)| {
                    if *of == started && *at <= now && up {
                        fire.push(*sig);
                        false
                    } else {
                        *of == started
                    }
                });
                let mut next = None;
                for sig in fire {
                    kill(&d, sig);
                    if sig == "TERM" {
                        next = Some(sig);
                    }
                }
                // A TERM just sent: its exit is judged as a stop.
                let ended = if next.is_some() {
                    Ok(None)
                } else {
                    d.child.try_wait()
                };
                match ended {
                    Ok(Some(status)) => {
                        self.fig.bad_exits += 1;
                        self.fig.violation(
                            t,
                            format!(
                                "daemon ended on its own ({}) {:.2}s after start; log tail:\n{}",
                                describe(status),
                                started.elapsed().as_secs_f64(),
                                tail(&log, 15)
                            ),
                        );
                        Some(Proc::Down {
                            restart_at: now + Duration::from_millis(300),
                        })
                    }
                    _ => match next {
                        Some(sig) => Some(Proc::Stopping {
                            d,
                            sig,
                            sent: now,
                            log,
                        }),
                        None => Some(Proc::Running {
                            d,
                            started,
                            log,
                            up,
                        }),
                    },
                }
            }
            Some(Proc::Stopping {
                mut d,
                sig,
                sent,
                log,
            }) => match d.child.try_wait() {
                Ok(Some(status)) => {
                    if sig == "TERM" && status.code() != Some(0) {
                        self.fig.bad_exits += 1;
                        self.fig.violation(
                            t,
                            format!(
                                "SIGTERM: {} instead of exit 0; log tail:\n{}",
                                describe(status),
                                tail(&log, 15)
                            ),
                        );
                    }
                    let pause = self.rng.millis(0, 1200);
                    Some(Proc::Down {
                        restart_at: now + pause,
                    })
                }
                _ if sig == "TERM" && sent.elapsed() > Duration::from_secs(10) => {
                    self.fig.bad_exits += 1;
                    self.fig.violation(
                        t,
                        format!(
                            "still running 10 s after SIGTERM; log tail:\n{}",
                            tail(&log, 15)
                        ),
                    );
                    let _ = d.child.start_kill();
                    Some(Proc::Stopping {
                        d,
                        sig: "KILL",
                        sent: now,
                        log,
                    })
                }
                _ => Some(Proc::Stopping { d, sig, sent, log }),
            },
            Some(Proc::Down { restart_at }) if restart_at <= now => None,
            other => other,
        };
        if self.proc.is_none() {
            self.spawn();
        }
        if !matches!(self.proc, Some(Proc::Running { .. })) {
            self.disturbed_until = self.disturbed_until.max(now + STARTUP_ALLOWANCE);
        }
    }

    fn running(&self) -> bool {
        matches!(self.proc, Some(Proc::Running { .. }))
    }

    /// Running its own code (see `Proc::Running::up`).
    fn up(&self) -> bool {
        matches!(self.proc, Some(Proc::Running { up: true, .. }))
    }

    /// Ends the current fault window when due.
    fn tend_fault(&mut self) {
        let now = Instant::now();
        if let Some(f) = &self.fault {
            if f.until <= now {
                self.env.tb.faults().clear();
                self.log.push(format!(
                    "[{:>7.2}s] fault window ends",
                    self.t0.elapsed().as_secs_f64()
                ));
                self.disturbed_until = self.disturbed_until.max(now + f.retry_after);
                self.fault = None;
            } else {
                self.disturbed_until = self.disturbed_until.max(now + f.retry_after);
            }
        }
    }

    fn members(&self, set: &str) -> Vec<vmss_testbed::MemberState> {
        self.env
            .tb
            .fleet()
            .scale_set_state(SUB, RG, set)
            .map(|s| s.members)
            .unwrap_or_default()
    }

    /// One random chaos event.
    fn chaos(&mut self) {
        let f = self.env.tb.fleet();
        let set = if self.rng.chance(0.5) {
            UNIFORM
        } else {
            FLEXIBLE
        };
        let members = self.members(set);
        let live: Vec<String> = members
            .iter()
            .filter(|m| !m.provisioning.eq_ignore_ascii_case("deleting"))
            .map(|m| m.id.clone())
            .collect();
        let ready: Vec<String> = members
            .iter()
            .filter(|m| {
                m.power == "running"
                    && m.provisioning == "Succeeded"
                    && m.health.as_deref() != Some("unhealthy")
            })
            .map(|m| m.id.clone())
            .collect();
        let down: Vec<String> = members
            .iter()
            .filter(|m| {
                !m.provisioning.eq_ignore_ascii_case("deleting")
                    && m.provisioning == "Succeeded"
                    && (m.power == "stopped"
                        || m.power == "deallocated"
                        || m.health.as_deref() == Some("unhealthy"))
            })
            .map(|m| m.id.clone())
            .collect();
        let can_shrink = live.len() > MIN_MEMBERS && ready.len() > MIN_MEMBERS;
        let weights: [(&'static str, u32); 14] = [
            ("scale out", 10),
            ("scale in", if can_shrink { 8 } else { 0 }),
            ("instance vanishes", if can_shrink { 3 } else { 0 }),
            ("instance stops", if can_shrink { 5 } else { 0 }),
            (
                "instance unhealthy",
                if can_shrink && set == UNIFORM { 5 } else { 0 },
            ),
            ("spot eviction", if can_shrink { 3 } else { 0 }),
            ("rolling upgrade", if can_shrink { 3 } else { 0 }),
            ("instance recovers", if down.is_empty() { 0 } else { 10 }),
            ("arm fault", if self.fault.is_none() { 16 } else { 0 }),
            ("target restart (state lost)", 2),
            ("kill -9", if self.running() { 3 } else { 0 }),
            ("sigterm", if self.up() { 3 } else { 0 }),
            ("sighup", if self.up() { 3 } else { 0 }),
            ("sighup with new config", if self.up() { 3 } else { 0 }),
        ];
        let total: u32 = weights.iter().map(|w| w.1).sum();
        let mut roll = self.rng.below(total as usize) as u32;
        let mut kind = weights[0].0;
        for (k, w) in weights {
            if roll < w {
                kind = k;
                break;
            }
            roll -= w;
        }
        match kind {
            "scale out" => {
                if live.len() >= MAX_MEMBERS {
                    return;
                }
                let boot = self.rng.millis(200, 1500);
                let healthy = self.rng.millis(300, 2000);
                f.boot_instance(SUB, RG, set, boot, healthy);
            }
            "scale in" => {
                let Some(id) = self.rng.pick(&ready).cloned() else {
                    return;
                };
                let gone = self.rng.millis(300, 2000);
                f.delete_instance(SUB, RG, set, &id, gone);
            }
            "instance vanishes" => {
                let Some(id) = self.rng.pick(&ready).cloned() else {
                    return;
                };
                f.remove_instance(SUB, RG, set, &id);
            }
            "instance stops" => {
                let Some(id) = self.rng.pick(&ready).cloned() else {
                    return;
                };
                let state = if self.rng.chance(0.5) {
                    "stopped"
                } else {
                    "deallocated"
                };
                f.set_power_state(SUB, RG, set, &id, state);
            }
            "instance unhealthy" => {
                let Some(id) = self.rng.pick(&ready).cloned() else {
                    return;
                };
                f.set_health(SUB, RG, set, &id, Some("unhealthy"));
            }
            "spot eviction" => {
                let Some(id) = self.rng.pick(&ready).cloned() else {
                    return;
                };
                f.evict_instance(SUB, RG, set, &id);
            }
            "rolling upgrade" => {
                let Some(id) = self.rng.pick(&ready).cloned() else {
                    return;
                };
                let takes = self.rng.millis(1000, 3000);
                f.rolling_upgrade(SUB, RG, set, &id, takes);
            }
            "instance recovers" => {
                let Some(id) = self.rng.pick(&down).cloned() else {
                    return;
                };
                f.set_power_state(SUB, RG, set, &id, "running");
                if set == UNIFORM {
                    f.set_health(SUB, RG, set, &id, Some("healthy"));
                }
            }
            "arm fault" => {
                let k = self.arm_fault();
                self.fig.event(k);
            }
            "target restart (state lost)" => {
                self.env.tb.nginx().restart();
                for p in &mut self.prev {
                    *p = None;
                }
            }
            "kill -9" => {
                if let Some(Proc::Running { d, log, .. }) = self.proc.take() {
                    kill(&d, "KILL");
                    self.proc = Some(Proc::Stopping {
                        d,
                        sig: "KILL",
                        sent: Instant::now(),
                        log,
                    });
                }
            }
            "sigterm" => {
                if let Some(Proc::Running { d, log, .. }) = self.proc.take() {
                    kill(&d, "TERM");
                    self.proc = Some(Proc::Stopping {
                        d,
                        sig: "TERM",
                        sent: Instant::now(),
                        log,
                    });
                }
            }
            "sighup" | "sighup with new config" => {
                if kind == "sighup with new config" {
                    self.variant = (self.variant + 1 + self.rng.below(2)) % MAX_FAILS.len();
                    write_config(&self.env, &self.cfg, self.variant);
                }
                if let Some(Proc::Running { d, .. }) = &self.proc {
                    kill(d, "HUP");
                }
            }
            _ => {}
        }
        if kind != "arm fault" {
            self.fig.event(kind);
        }
        let text = match kind {
            "arm fault" => self
                .fault
                .as_ref()
                .map_or_else(String::new, |f| format!("{} on {}", f.kind, f.on)),
            k if k.starts_with("instance")
                || k.starts_with("scale")
                || k.ends_with("upgrade")
                || k.ends_with("eviction") =>
            {
                format!("{kind} in {set}; now {}", self.summary(set))
            }
            k => k.to_string(),
        };
        self.note(text);
    }

    /// One line per member of a set: `id ip power/provisioning/health`.
    fn summary(&self, set: &str) -> String {
        self.members(set)
            .iter()
            .map(|m| {
                format!(
                    "{} {} {}/{}/{}",
                    m.id,
                    m.ip,
                    m.power,
                    m.provisioning,
                    m.health.as_deref().unwrap_or("-")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Appends a line to the run's event log (written to `events.log` at the end).
    fn note(&mut self, text: String) {
        let line = format!("[{:>7.2}s] {text}", self.at().as_secs_f64());
        self.log.push(line);
    }

    /// Starts a fault window of 0.5–4 s on some ARM reads; returns its kind. Every other
    /// window is an implausible answer to a member list (empty, every item dropped,
    /// instance views missing), drawn from a seeded shuffled deck of all of them so that
    /// each appears early; the others are error statuses, bad bodies and slowness on any
    /// read.
    fn arm_fault(&mut self) -> &'static str {
        // (path contains, decoded query contains): everything, the Uniform set's NIC list
        // and VM list (with instance views), the Flexible set's filtered VM list, the
        // group's NIC list (Flexible members' NICs).
        const NEEDLES: [(&str, &str); 5] = [
            ("", ""),
            ("virtualmachinescalesets/web-u/networkinterfaces", ""),
            ("virtualmachinescalesets/web-u/virtualmachines", ""),
            (
                "microsoft.compute/virtualmachines",
                "virtualmachinescalesets/web-f",
            ),
            ("microsoft.network/networkinterfaces", ""),
        ];
        self.windows += 1;
        let mut retry_after = Duration::ZERO;
        let (kind, fault, (path, query)) = if self.windows % 2 == 1 {
            if self.deck.is_empty() {
                // Empty answers only on member lists: an empty list of scale sets is a
                // set that does not exist, which the startup check rightly refuses.
                let mut deck: Vec<(usize, usize)> = (1..=4)
                    .flat_map(|n| [(0, n), (1, n)])
                    .chain([(2, 2), (2, 3)])
                    .collect();
                for i in (1..deck.len()).rev() {
                    deck.swap(i, self.rng.below(i + 1));
                }
                self.deck = deck;
            }
            let (k, n) = self.deck.pop().unwrap_or((0, 1));
            let (kind, fault) = match k {
                0 => ("arm empty list", Fault::EmptyList),
                1 => (
                    "arm list items dropped",
                    Fault::DropItems {
                        id_contains: String::new(),
                    },
                ),
                _ => (
                    "arm instance views missing",
                    Fault::DropField {
                        field: "instanceView".into(),
                    },
                ),
            };
            (kind, fault, NEEDLES[n])
        } else {
            let needle = *self.rng.pick(&NEEDLES).unwrap_or(&("", ""));
            let (kind, fault) = match self.rng.below(6) {
                0 => {
                    let s = 1 + self.rng.below(2) as u64;
                    retry_after = Duration::from_secs(s);
                    (
                        "arm 429 with Retry-After",
                        Fault::Status {
                            status: 429,
                            code: "TooManyRequests".into(),
                            message: "The request is being throttled.".into(),
                            retry_after: Some(s),
                        },
                    )
                }
                1 => (
                    "arm 500",
                    Fault::Status {
                        status: 500,
                        code: "InternalServerError".into(),
                        message: "Internal error.".into(),
                        retry_after: None,
                    },
                ),
                2 => (
                    "arm 503",
                    Fault::Status {
                        status: 503,
                        code: "ServiceUnavailable".into(),
                        message: "Service unavailable.".into(),
                        retry_after: None,
                    },
                ),
                3 => ("arm malformed body", Fault::MalformedBody),
                4 => (
                    "arm failed second page",
                    Fault::FailPage {
                        page: 1,
                        status: 500,
                    },
                ),
                _ => (
                    "arm slow (1.5 s)",
                    Fault::Delay(Duration::from_millis(1500)),
                ),
            };
            (kind, fault, needle)
        };
        self.env
            .tb
            .faults()
            .inject_where(Service::Arm, path, query, fault, usize::MAX);
        let until = Instant::now() + self.rng.millis(500, 4000);
        self.fault = Some(FaultWindow {
            kind,
            on: if path.is_empty() && query.is_empty() {
                "all ARM reads".into()
            } else {
                format!("{path}?{query}")
            },
            until,
            retry_after,
        });
        self.disturbed_until = self.disturbed_until.max(until + retry_after);
        kind
    }

    /// Samples the target and the truth; counts violations.
    fn check(&mut self) {
        let now = Instant::now();
        let t = self.at();
        self.fig.samples += 1;
        let stale = stale();
        for (i, w) in WATCHED.iter().enumerate() {
            let truth = truth(&self.env, w);
            let seen = observe(&self.env, w);
            // Update since-when for every address ever known.
            let since = &mut self.since[i];
            for a in &truth.members {
                let r = truth.ready.contains(a);
                match since.get(a) {
                    Some(s) if s.ready == r => {}
                    _ => {
                        since.insert(a.clone(), Since { ready: r, at: now });
                    }
                }
            }
            for (a, s) in since.iter_mut() {
                if !truth.members.contains(a) && s.ready {
                    *s = Since {
                        ready: false,
                        at: now,
                    };
                }
            }
            let since = self.since[i].clone();
            let fault = self
                .fault
                .as_ref()
                .map_or_else(|| "none".to_string(), |f| format!("{} on {}", f.kind, f.on));
            // Transitions since the previous sample.
            if let Some(prev) = &self.prev[i] {
                for (a, before) in prev {
                    let after = seen.get(a).map(|s| s.seen);
                    let change = match (before, after) {
                        (Seen::Active, Some(Seen::Draining)) => Some("drain"),
                        (Seen::Active, None) => Some("remove (active)"),
                        (Seen::Draining, None) => Some("remove"),
                        (Seen::Draining, Some(Seen::Active)) => Some("restore"),
                        _ => None,
                    };
                    let Some(change) = change else { continue };
                    *self.fig.target.entry(change).or_default() += 1;
                    if *before == Seen::Active {
                        if let Some(s) = since.get(a).filter(|s| s.ready) {
                            if now - s.at >= stale {
                                self.fig.wrong_removals += 1;
                                self.fig.violation(
                                    t,
                                    format!(
                                        "wrong removal: {} {a} ({change}) while its instance has been ready for {:.1}s (ARM fault: {fault})",
                                        w.name,
                                        (now - s.at).as_secs_f64()
                                    ),
                                );
                            }
                        }
                    }
                }
                for a in seen.keys() {
                    if !prev.contains_key(a) {
                        *self.fig.target.entry("add").or_default() += 1;
                    }
                }
            }
            // Active servers must be ready instances (allowing for the daemon's delays). A
            // violation that persists is reported once per `stale`: its clock restarts.
            let mut restart_clock = Vec::new();
            for (a, s) in &seen {
                let Some(st) = since.get(a) else {
                    self.fig.unready_served += 1;
                    self.fig.violation(
                        t,
                        format!("{} serves {a}, never an instance of its sets", w.name),
                    );
                    continue;
                };
                let from = st.at.max(self.disturbed_until.min(now));
                let lag = now.saturating_duration_since(from);
                match (s.seen, st.ready) {
                    (Seen::Active, false) => {
                        self.fig.max_unready_active = self.fig.max_unready_active.max(lag);
                        if lag > stale {
                            restart_clock.push(a.clone());
                            self.fig.unready_served += 1;
                            self.fig.violation(
                                t,
                                format!(
                                    "{} sends traffic to {a}, not ready for {:.1}s (ARM fault: {fault})",
                                    w.name,
                                    (now - st.at).as_secs_f64()
                                ),
                            );
                        }
                    }
                    (Seen::Draining, true) if lag > stale => {
                        restart_clock.push(a.clone());
                        self.fig.stuck_drains += 1;
                        self.fig.violation(
                            t,
                            format!(
                                "{} keeps {a} draining while its instance has been ready for {:.1}s",
                                w.name,
                                (now - st.at).as_secs_f64()
                            ),
                        );
                    }
                    _ => {}
                }
            }
            for a in restart_clock {
                if let Some(st) = self.since[i].get_mut(&a) {
                    st.at = now;
                }
            }
            // A leaving instance's server is removed `drain_timeout` after its drain began
            // (the clock of a restarted daemon starts when it first sees the drain).
            let ds = &mut self.drain_since[i];
            ds.retain(|a, _| seen.get(a).is_some_and(|s| s.seen == Seen::Draining));
            for (a, s) in &seen {
                if s.seen != Seen::Draining {
                    continue;
                }
                let began = *ds.entry(a.clone()).or_insert(now);
                let from = began.max(self.disturbed_until.min(now));
                if now.saturating_duration_since(from) > DRAIN + stale {
                    ds.insert(a.clone(), now);
                    self.fig.overdue_drains += 1;
                    self.fig.violation(
                        t,
                        format!(
                            "{} still drains {a} {:.1}s after the drain began (drain_timeout {}s)",
                            w.name,
                            (now - began).as_secs_f64(),
                            DRAIN.as_secs()
                        ),
                    );
                }
            }
            self.prev[i] = Some(seen.iter().map(|(a, s)| (a.clone(), s.seen)).collect());
        }
    }

    /// True when every upstream holds exactly the ready instances, none draining, with
    /// the configured parameters.
    fn converged(&self) -> bool {
        let max_fails = u64::from(MAX_FAILS[self.variant % MAX_FAILS.len()]);
        WATCHED.iter().all(|w| {
            let t = truth(&self.env, w);
            let seen = observe(&self.env, w);
            seen.len() == t.ready.len()
                && seen.iter().all(|(a, s)| {
                    t.ready.contains(a)
                        && s.seen == Seen::Active
                        && (w.name != "web" || s.max_fails == Some(max_fails))
                })
        })
    }

    fn ready_sets(&self) -> Vec<BTreeSet<String>> {
        WATCHED.iter().map(|w| truth(&self.env, w).ready).collect()
    }

    async fn tick(&mut self) {
        tokio::time::sleep(TICK).await;
        self.tend_process();
        self.tend_fault();
        self.check();
    }

    /// Quiet phase: no new events; waits for the daemon to converge and records how long
    /// it took from the later of the phase start, the last change of the truth and the end
    /// of the last disturbance.
    async fn quiet(&mut self, bound: Duration) {
        if let Some(f) = self.fault.take() {
            self.env.tb.faults().clear();
            self.disturbed_until = self.disturbed_until.max(Instant::now() + f.retry_after);
        }
        let mut from = Instant::now();
        let mut ready = self.ready_sets();
        let give_up = Instant::now() + bound * 3 + Duration::from_secs(8);
        loop {
            self.tick().await;
            let now_ready = self.ready_sets();
            if now_ready != ready {
                ready = now_ready;
                from = Instant::now();
            }
            if self.running() && self.pending.is_empty() && self.converged() {
                let took = Instant::now().saturating_duration_since(from);
                self.fig.convergence.push(took);
                // What was still disturbed (a Retry-After, a restart) when the clock
                // started is added to the bound.
                let bound = bound + self.disturbed_until.saturating_duration_since(from);
                if took > bound {
                    self.fig.not_converged += 1;
                    let t = self.at();
                    self.fig.violation(
                        t,
                        format!(
                            "converged only after {:.2}s (bound {:.2}s)",
                            took.as_secs_f64(),
                            bound.as_secs_f64()
                        ),
                    );
                }
                return;
            }
            if Instant::now() > give_up {
                self.fig.not_converged += 1;
                let t = self.at();
                let detail: Vec<String> = WATCHED
                    .iter()
                    .map(|w| {
                        let seen: Vec<String> = observe(&self.env, w)
                            .iter()
                            .map(|(a, s)| {
                                format!(
                                    "{a}{}",
                                    if s.seen == Seen::Draining {
                                        "(draining)"
                                    } else {
                                        ""
                                    }
                                )
                            })
                            .collect();
                        format!(
                            "{}: target {:?} vs ready {:?}",
                            w.name,
                            seen,
                            truth(&self.env, w).ready
                        )
                    })
                    .collect();
                self.fig.violation(
                    t,
                    format!("not converged after faults stopped: {}", detail.join("; ")),
                );
                return;
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

async fn soak(seed: u64, secs: u64) -> Figures {
    // The soak reads ARM a hundred times as often as a production daemon (1 s intervals,
    // pages of two), and restarts it often: Compute's instance-view policies are scaled to
    // match, or the daemon (rightly) paces its reads for tens of seconds and no bound
    // below holds. Throttling itself is exercised by the 429 faults here and by
    // tests/it/discovery_throttle.rs.
    let opts = TestbedOptions {
        compute_limits: ComputeLimits {
            high_cost_3min: 180 * 100,
            high_cost_30min: 1500 * 100,
            low_cost_3min: 2000 * 100,
            low_cost_30min: 15000 * 100,
        },
        ..TestbedOptions::default()
    };
    let env = testbed(opts).await;
    let f = env.tb.fleet();
    f.add_scale_set(SUB, RG, UNIFORM, Orchestration::Uniform, "eastus");
    f.set_health_extension(SUB, RG, UNIFORM, true);
    f.scale_to(SUB, RG, UNIFORM, 4);
    f.add_scale_set(SUB, RG, FLEXIBLE, Orchestration::Flexible, "eastus");
    f.scale_to(SUB, RG, FLEXIBLE, 3);
    for w in &WATCHED {
        env.upstream(w.kind, w.name);
    }
    let cfg = env.dir.path().join("config.yaml");
    write_config(&env, &cfg, 0);
    let now = Instant::now();
    let mut s = Soak {
        env,
        rng: Rng(seed),
        seed,
        cfg,
        variant: 0,
        t0: now,
        proc: None,
        pending: Vec::new(),
        fault: None,
        disturbed_until: now,
        since: vec![BTreeMap::new(); WATCHED.len()],
        prev: vec![None; WATCHED.len()],
        drain_since: vec![BTreeMap::new(); WATCHED.len()],
        fig: Figures::default(),
        log: Vec::new(),
        starts: 0,
        windows: 0,
        deck: Vec::new(),
    };
    s.spawn();
    // First sync: not counted as a convergence after faults.
    let first = Instant::now() + Duration::from_secs(20);
    while !s.converged() && Instant::now() < first {
        s.tick().await;
    }
    if !s.converged() {
        s.fig.not_converged += 1;
        let t = s.at();
        s.fig
            .violation(t, "the first sync did not complete within 20 s".into());
    }
    let end = Instant::now() + Duration::from_secs(secs);
    let bound = converge_bound();
    while Instant::now() < end {
        // A chaos phase of 4–9 s, then a quiet phase.
        let phase_end = Instant::now() + s.rng.millis(4000, 9000);
        while Instant::now() < phase_end.min(end) {
            if s.rng.chance(0.25) {
                s.chaos();
            }
            s.tick().await;
        }
        s.quiet(bound).await;
    }
    // Finally SIGTERM must end the daemon with 0.
    let up_by = Instant::now() + Duration::from_secs(10);
    while !s.up() && Instant::now() < up_by {
        s.tick().await;
    }
    if let Some(Proc::Running { mut d, log, .. }) = s.proc.take() {
        d.signal("TERM");
        match tokio::time::timeout(Duration::from_secs(10), d.child.wait()).await {
            Ok(Ok(st)) if st.code() == Some(0) => {}
            Ok(Ok(st)) => {
                s.fig.bad_exits += 1;
                let t = s.at();
                s.fig.violation(
                    t,
                    format!("final SIGTERM: {}; {}", describe(st), tail(&log, 15)),
                );
            }
            _ => {
                s.fig.bad_exits += 1;
                let t = s.at();
                s.fig
                    .violation(t, "final SIGTERM: not ended within 10 s".into());
            }
        }
    }
    // Panics anywhere in any run's log.
    for n in 1..=s.starts {
        let log = s.env.dir.path().join(format!("daemon-{n}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("panicked")) {
            s.fig.panics += 1;
            let t = s.at();
            s.fig.violation(t, format!("run {n} panicked: {line}"));
        }
    }
    report(s.seed, secs, &s.fig);
    let Soak {
        env, fig, mut log, ..
    } = s;
    log.extend(fig.all.iter().cloned());
    log.sort();
    let Env { tb, dir } = env;
    drop(tb);
    if fig.failed() {
        // Kept for the post-mortem: every run's log and the event log.
        let kept = dir.keep();
        let _ = std::fs::write(kept.join("events.log"), log.join("\n") + "\n");
        println!(
            "daemon logs (daemon-N.log) and the event log (events.log) kept in {}",
            kept.display()
        );
    }
    fig
}

fn report(seed: u64, secs: u64, fig: &Figures) {
    let mut conv = fig.convergence.clone();
    conv.sort();
    let median = conv.get(conv.len() / 2).copied().unwrap_or_default();
    let max = conv.last().copied().unwrap_or_default();
    println!("== chaos soak seed {seed:#x}, {secs} s ==");
    println!(
        "samples: {} (every {} ms); daemon starts: {} (longest until the first log line: {} ms)",
        fig.samples,
        TICK.as_millis(),
        fig.starts,
        fig.max_until_up.as_millis()
    );
    println!("events applied:");
    for (k, n) in &fig.events {
        println!("  {k:<32} {n}");
    }
    println!("changes seen on the target:");
    for (k, n) in &fig.target {
        println!("  {k:<32} {n}");
    }
    println!(
        "wrong removals: {}; not-ready servers kept active too long: {}; drains of ready instances kept too long: {}; drains overdue: {}",
        fig.wrong_removals, fig.unready_served, fig.stuck_drains, fig.overdue_drains
    );
    println!(
        "bad exits: {}; panics: {}; convergences: {} (median {:.2}s, max {:.2}s, bound {:.2}s), not converged in bound: {}",
        fig.bad_exits,
        fig.panics,
        conv.len(),
        median.as_secs_f64(),
        max.as_secs_f64(),
        converge_bound().as_secs_f64(),
        fig.not_converged
    );
    println!(
        "longest a not-ready address stayed active after the last disturbance: {:.2}s (allowed {:.2}s)",
        fig.max_unready_active.as_secs_f64(),
        stale().as_secs_f64()
    );
    for v in &fig.violations {
        println!("VIOLATION {v}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chaos_soak_never_removes_ready_servers_never_serves_unready_ones_and_converges() {
    let secs = env_u64("VMSS_SOAK_SECS").unwrap_or(DEFAULT_SECS);
    let seeds: Vec<u64> = match env_u64("VMSS_SOAK_SEED") {
        Some(s) => vec![s],
        None => CI_SEEDS.to_vec(),
    };
    let mut failed = Vec::new();
    for seed in seeds {
        let fig = soak(seed, secs).await;
        if fig.failed() {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "chaos soak failed for seed(s) {}; see the VIOLATION lines above. Replay with:\n{}",
        failed
            .iter()
            .map(|s| format!("{s:#x}"))
            .collect::<Vec<_>>()
            .join(", "),
        failed
            .iter()
            .map(|s| format!(
                "  VMSS_SOAK_SEED={s:#x} VMSS_SOAK_SECS={secs} cargo test -p vmss-sync --test it chaos_soak:: -- --nocapture"
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
