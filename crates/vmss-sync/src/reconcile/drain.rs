//! The drain clock: when each draining server started draining.

use crate::model::{ObservedServer, ServerState};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When each draining server started draining, per upstream. In memory only: after a
/// restart, servers found draining start a fresh clock (never removed early, and their
/// drain still ends).
#[derive(Default)]
pub(super) struct DrainBook(Mutex<BTreeMap<String, BTreeMap<String, Instant>>>);

impl DrainBook {
    /// Syncs the clock of one upstream with what the target shows, and returns for how
    /// long each draining server has drained.
    pub(super) fn elapsed(
        &self,
        upstream: &str,
        observed: &[ObservedServer],
        now: Instant,
    ) -> BTreeMap<String, Duration> {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = book.entry(upstream.to_string()).or_default();
        clocks.retain(|server, _| {
            observed
                .iter()
                .any(|o| &o.server == server && o.state == ServerState::Draining)
        });
        for o in observed.iter().filter(|o| o.state == ServerState::Draining) {
            clocks.entry(o.server.clone()).or_insert(now);
        }
        clocks
            .iter()
            .map(|(s, t)| (s.clone(), now.saturating_duration_since(*t)))
            .collect()
    }

    /// Records drains that were just started.
    pub(super) fn started(&self, upstream: &str, servers: &[String], now: Instant) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let clocks = book.entry(upstream.to_string()).or_default();
        for s in servers {
            clocks.entry(s.clone()).or_insert(now);
        }
    }

    /// Forgets the clocks of drains that were cancelled (servers restored): a later
    /// drain of the same server starts a whole `drain_timeout` again.
    pub(super) fn cancelled(&self, upstream: &str, servers: &[String]) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(clocks) = book.get_mut(upstream) {
            for s in servers {
                clocks.remove(s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(state: ServerState) -> ObservedServer {
        ObservedServer {
            id: 1,
            server: "10.0.0.1:80".into(),
            params: None,
            state,
        }
    }

    #[test]
    fn a_cancelled_drain_forgets_its_clock() {
        let book = DrainBook::default();
        let t0 = Instant::now();
        let s = vec!["10.0.0.1:80".to_string()];
        book.started("web", &s, t0);
        let later = t0 + Duration::from_secs(20);
        let draining = [server(ServerState::Draining)];
        assert_eq!(
            book.elapsed("web", &draining, later)["10.0.0.1:80"],
            Duration::from_secs(20)
        );
        book.cancelled("web", &s);
        // Drained again later (by a real leave): a whole drain_timeout from then.
        book.started("web", &s, later);
        assert_eq!(
            book.elapsed("web", &draining, later + Duration::from_secs(1))["10.0.0.1:80"],
            Duration::from_secs(1)
        );
    }
}
