//! What the two Azure targets (`route_server`, `lb_backend_pool`) share: the names they
//! give the entries they own, one write lock per Azure resource in the process, the
//! shortest poll of a long-running operation, and ARM errors as [`TargetError`]s.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use super::{Permanence, TargetError};
use crate::azure::arm::ArmWriteError;
use crate::azure::ArmError;

/// Shortest wait between polls of a long-running operation (ARM's `Retry-After` is used
/// when it says more).
pub(crate) const MIN_POLL: Duration = Duration::from_millis(100);

/// The name vmss-sync gives the peering or pool address of `ip`.
pub(crate) fn name_for(prefix: &str, ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{prefix}{}-{}-{}-{}", o[0], o[1], o[2], o[3])
}

/// The IPv4 address of a plan's `ip:port` server string.
pub(crate) fn ip_of(server: &str) -> Option<Ipv4Addr> {
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    host.parse().ok()
}

/// A stable id for a named child resource (FNV-1a of the name).
pub(crate) fn id_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One async lock per written resource (hub or pool) in the process, whatever target
/// instance (or configuration reload) writes it.
pub(crate) fn resource_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    let mut m = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(m.entry(key.to_ascii_lowercase()).or_default())
}

/// The first half of both Azure targets' `check`: an upstream they serve has a fixed port
/// (`ports` holds one per upstream name); the entries themselves carry none, so
/// `observe` reports each as `ip:{that port}`. `label` names the target in the error.
pub(crate) fn has_fixed_port(
    ports: &BTreeMap<String, u16>,
    upstream: &str,
    label: &str,
) -> Result<(), TargetError> {
    if ports.contains_key(upstream) {
        return Ok(());
    }
    Err(TargetError {
        message: format!(
            "upstream {upstream} has no fixed port; {label} needs one (the port itself is ignored)"
        ),
        permanence: Permanence::Permanent,
    })
}

/// A transient error with this message.
pub(crate) fn transient(message: String) -> TargetError {
    TargetError {
        message,
        permanence: Permanence::Transient,
    }
}

/// An ARM read error, permanent when ARM says so.
pub(crate) fn from_arm(what: &str, e: &ArmError) -> TargetError {
    TargetError {
        message: format!("{what}: {e}"),
        permanence: if e.is_permanent() {
            Permanence::Permanent
        } else {
            Permanence::Transient
        },
    }
}

/// An ARM write error, permanent when ARM says so.
pub(crate) fn from_write(what: &str, e: &ArmWriteError) -> TargetError {
    TargetError {
        message: format!("{what}: {e}"),
        permanence: if e.is_permanent() {
            Permanence::Permanent
        } else {
            Permanence::Transient
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ips_and_ids_are_deterministic() {
        let ip = Ipv4Addr::new(10, 0, 1, 4);
        assert_eq!(name_for("vmss-sync-", ip), "vmss-sync-10-0-1-4");
        assert_eq!(ip_of("10.0.1.4:179"), Some(ip));
        assert_eq!(ip_of("10.0.1.4"), Some(ip));
        assert_eq!(ip_of("host:80"), None);
        assert_eq!(id_of("a"), id_of("a"));
        assert_ne!(id_of("a"), id_of("b"));
    }
}
