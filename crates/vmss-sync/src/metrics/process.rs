//! The standard `process_*` metrics of the Prometheus client guidelines, read from `/proc`
//! at each scrape (Linux only; elsewhere the collector writes nothing).
//!
//! - `process_cpu_seconds_total`: user + system time (`/proc/self/stat` utime + stime);
//! - `process_resident_memory_bytes`, `process_virtual_memory_bytes`: `VmRSS` and `VmSize`
//!   of `/proc/self/status` (kB there, so no page size is needed);
//! - `process_open_fds`: entries of `/proc/self/fd`;
//! - `process_max_fds`: the soft "Max open files" limit of `/proc/self/limits`;
//! - `process_start_time_seconds`: `/proc/stat` `btime` + `/proc/self/stat` starttime.
//!
//! `/proc` gives times in clock ticks of `USER_HZ`, which the kernel fixes at 100 for
//! user space on every architecture Linux builds `USER_HZ` into its ABI for (x86, arm64;
//! see `include/asm-generic/param.h`: `USER_HZ 100`), whatever the kernel's own `HZ`.
//! Reading `sysconf(_SC_CLK_TCK)` would need `libc` and `unsafe`, which the workspace
//! forbids; [`USER_HZ`] is that constant.
//!
//! A metric whose file cannot be read or parsed is left out of that scrape rather than
//! reported as 0.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use std::path::Path;

/// Clock ticks per second of the times in `/proc` (see the module documentation).
pub const USER_HZ: f64 = 100.0;

/// What one scrape read from `/proc`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<f64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// Soft limit of open file descriptors.
    pub max_fds: Option<f64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time: Option<f64>,
}

/// Fields of `/proc/<pid>/stat` after the command name: (utime, stime, starttime) in
/// ticks. The command name is in parentheses and may itself hold spaces and parentheses,
/// so the fields start after the last `)`.
pub fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((field(14)?, field(15)?, field(22)?))
}

/// A `kB` value of `/proc/<pid>/status` (`VmRSS: 1234 kB`), in bytes.
pub fn parse_status_kb(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.split(':').next() == Some(key))?;
    let mut words = line.split(':').nth(1)?.split_whitespace();
    let n: f64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(n * 1024.0),
        _ => None,
    }
}

/// The soft limit of "Max open files" in `/proc/<pid>/limits` ("unlimited" is left out).
pub fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse::<f64>().ok()
}

/// `btime` (boot time, seconds since the epoch) of `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// Reads this process's figures from `proc` (normally `/proc`).
pub fn read(proc: &Path) -> ProcessStats {
    let me = proc.join("self");
    let read = |p: &Path| std::fs::read_to_string(p).ok();
    let stat = read(&me.join("stat")).as_deref().and_then(parse_stat);
    let status = read(&me.join("status"));
    let btime = read(&proc.join("stat")).as_deref().and_then(parse_btime);
    ProcessStats {
        cpu_seconds: stat.map(|(u, s, _)| (u + s) as f64 / USER_HZ),
        resident_bytes: status.as_deref().and_then(|s| parse_status_kb(s, "VmRSS")),
        virtual_bytes: status.as_deref().and_then(|s| parse_status_kb(s, "VmSize")),
        open_fds: std::fs::read_dir(me.join("fd"))
            .ok()
            .map(|d| d.filter(|e| e.is_ok()).count() as f64),
        max_fds: read(&me.join("limits")).as_deref().and_then(parse_max_fds),
        start_time: match (stat, btime) {
            (Some((_, _, start)), Some(boot)) => Some(boot as f64 + start as f64 / USER_HZ),
            _ => None,
        },
    }
}

/// The collector registered at the root of the registry (no `vmss_sync_` prefix).
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !cfg!(target_os = "linux") {
            return Ok(());
        }
        let s = read(Path::new("/proc"));
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds.",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes.",
                Some(Unit::Bytes),
                s.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes.",
                Some(Unit::Bytes),
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors.",
                None,
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors.",
                None,
                s.max_fds,
            ),
            (
                "process_start_time",
                "Start time of the process since unix epoch in seconds.",
                Some(Unit::Seconds),
                s.start_time,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_a_command_name_with_spaces_and_parentheses() {
        // Fields 3.. of a real /proc/self/stat, behind a hostile command name.
        let stat = "4242 (vmss (sync) x) S 1 4242 4242 0 -1 4194560 1402 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 1312768000 4321 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17991 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat(stat), Some((250, 75, 123456)));
        assert_eq!(parse_stat("4242 (trunc"), None);
    }

    #[test]
    fn status_limits_and_btime_are_parsed_in_bytes_and_seconds() {
        let status = "Name:\tvmss-sync\nVmSize:\t  1282048 kB\nVmRSS:\t    17280 kB\n";
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(17280.0 * 1024.0));
        assert_eq!(parse_status_kb(status, "VmSize"), Some(1282048.0 * 1024.0));
        assert_eq!(parse_status_kb(status, "VmHWM"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1764993600\nprocesses 9\n"),
            Some(1_764_993_600)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausible_figures_from_proc() {
        let s = read(Path::new("/proc"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = s.start_time.unwrap();
        // Started before now, and not before this test binary could have been built.
        assert!(
            start <= now + 1.0 && start > now - 24.0 * 3600.0,
            "{start} vs {now}"
        );
        assert!(s.resident_bytes.unwrap() > 1024.0 * 1024.0);
        assert!(s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        // stdin, stdout, stderr and the directory being listed, at least.
        let open = s.open_fds.unwrap();
        assert!(open >= 3.0, "{open}");
        assert!(s.max_fds.unwrap() >= open);
        assert!(s.cpu_seconds.unwrap() >= 0.0);
    }
}
