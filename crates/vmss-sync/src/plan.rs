//! The pure core: what to change so that a target holds the desired servers.
//!
//! `plan(desired, observed)` does no I/O and has property tests: applying its result to
//! the observed state gives exactly the desired state, and planning again then gives an
//! empty plan. `guard` decides whether a plan's removals may run given what the scale
//! sets themselves say about their size.

use crate::model::{DesiredServers, ObservedServer, ServerParams};
use std::collections::BTreeMap;

/// A server to change in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Target id of the server.
    pub id: u64,
    /// Its address.
    pub server: String,
    /// The parameters it must get.
    pub params: ServerParams,
}

/// A server to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Target id of the server.
    pub id: u64,
    /// Its address.
    pub server: String,
}

/// The changes that turn an observed upstream into the desired one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Servers to create, sorted by address.
    pub add: Vec<(String, ServerParams)>,
    /// Servers whose parameters change (never delete and re-add), sorted by address.
    pub update: Vec<Update>,
    /// Servers to delete, sorted by address then id.
    pub remove: Vec<Removal>,
}

impl Plan {
    /// True when nothing needs to be written.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }
}

/// Computes the plan. Servers are matched by their exact address string. When the target
/// holds the same address twice, the lowest id is kept and the others are removed.
pub fn plan(desired: &DesiredServers, observed: &[ObservedServer]) -> Plan {
    let mut by_server: BTreeMap<&str, Vec<&ObservedServer>> = BTreeMap::new();
    for o in observed {
        by_server.entry(o.server.as_str()).or_default().push(o);
    }
    let mut out = Plan::default();
    for (server, entries) in &mut by_server {
        entries.sort_by_key(|o| o.id);
        let (keep, extra) = match desired.get(*server) {
            Some(_) => (entries.first().copied(), &entries[1..]),
            None => (None, &entries[..]),
        };
        for o in extra {
            out.remove.push(Removal {
                id: o.id,
                server: o.server.clone(),
            });
        }
        if let (Some(kept), Some(params)) = (keep, desired.get(*server)) {
            if kept.params.as_ref() != Some(params) {
                out.update.push(Update {
                    id: kept.id,
                    server: kept.server.clone(),
                    params: *params,
                });
            }
        }
    }
    for (server, params) in desired {
        if !by_server.contains_key(server.as_str()) {
            out.add.push((server.clone(), *params));
        }
    }
    out
}

/// Why removals were held back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The read would empty the upstream but the scale sets say they have instances.
    WouldEmpty {
        /// Servers the target has now.
        observed: usize,
        /// The scale set's `sku.capacity` (None: ARM did not say).
        capacity: Option<u64>,
    },
    /// The read would remove more than half of the upstream and found fewer instances
    /// than the scale sets' capacity.
    MassRemoval {
        /// Servers that would be removed.
        removing: usize,
        /// Servers the target has now.
        observed: usize,
        /// Instances found by discovery.
        found: usize,
        /// The scale set's `sku.capacity` (None: ARM did not say).
        capacity: Option<u64>,
    },
}

struct Capacity(Option<u64>);

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(c) => write!(f, "{c}"),
            None => f.write_str("unknown"),
        }
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::WouldEmpty { observed, capacity } => write!(
                f,
                "discovery found no instances but the scale set capacity is {}; \
                 keeping all {observed} servers",
                Capacity(*capacity)
            ),
            Hold::MassRemoval {
                removing,
                observed,
                found,
                capacity,
            } => write!(
                f,
                "would remove {removing} of {observed} servers, but discovery found {found} \
                 instances against a capacity of {}; keeping them until the two agree",
                Capacity(*capacity)
            ),
        }
    }
}

/// Decides whether the plan's removals may run.
///
/// A plan that empties the upstream, or removes more than half of it, runs only when
/// the scale set's own capacity agrees with what discovery found (`found >= capacity`;
/// capacity 0 with nothing found means the set really is empty; an unknown capacity never
/// agrees). Adds and updates are never held.
pub fn guard(plan: &Plan, observed: usize, found: usize, capacity: Option<u64>) -> Option<Hold> {
    let removing = plan.remove.len();
    if removing == 0 {
        return None;
    }
    let remaining = observed.saturating_sub(removing) + plan.add.len();
    let agrees = capacity.is_some_and(|c| found as u64 >= c);
    if remaining == 0 && !agrees {
        return Some(Hold::WouldEmpty { observed, capacity });
    }
    if removing * 2 > observed && !agrees {
        return Some(Hold::MassRemoval {
            removing,
            observed,
            found,
            capacity,
        });
    }
    None
}

/// Drops the removals from a plan, keeping adds and updates.
pub fn without_removals(plan: Plan) -> Plan {
    Plan {
        remove: Vec::new(),
        ..plan
    }
}

/// Applies a plan to an observed list, as a target would (used by tests and dry runs).
/// New servers get ids above every existing id.
pub fn simulate(observed: &[ObservedServer], plan: &Plan) -> Vec<ObservedServer> {
    let removed: std::collections::BTreeSet<u64> = plan.remove.iter().map(|r| r.id).collect();
    let first_new = observed.iter().map(|o| o.id + 1).max().unwrap_or(0);
    let mut out: Vec<ObservedServer> = observed
        .iter()
        .filter(|o| !removed.contains(&o.id))
        .map(|o| {
            let mut o = o.clone();
            if let Some(u) = plan.update.iter().find(|u| u.id == o.id) {
                o.params = Some(u.params);
            }
            o
        })
        .collect();
    for (id, (server, params)) in (first_new..).zip(&plan.add) {
        out.push(ObservedServer {
            id,
            server: server.clone(),
            params: Some(*params),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn params(n: u32) -> ServerParams {
        ServerParams {
            max_conns: n,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        }
    }

    fn obs(id: u64, server: &str, p: Option<ServerParams>) -> ObservedServer {
        ObservedServer {
            id,
            server: server.into(),
            params: p,
        }
    }

    #[test]
    fn in_sync_upstream_gives_empty_plan() {
        let desired: DesiredServers = [("10.0.0.1:80".to_string(), params(0))].into();
        let observed = vec![obs(0, "10.0.0.1:80", Some(params(0)))];
        assert!(plan(&desired, &observed).is_empty());
    }

    #[test]
    fn parameter_change_is_an_update_not_a_readd() {
        let desired: DesiredServers = [("10.0.0.1:80".to_string(), params(5))].into();
        let observed = vec![obs(7, "10.0.0.1:80", Some(params(0)))];
        let p = plan(&desired, &observed);
        assert!(p.add.is_empty() && p.remove.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].id, 7);
    }

    #[test]
    fn duplicate_observed_server_keeps_lowest_id() {
        let desired: DesiredServers = [("10.0.0.1:80".to_string(), params(0))].into();
        let observed = vec![
            obs(4, "10.0.0.1:80", Some(params(0))),
            obs(2, "10.0.0.1:80", Some(params(0))),
        ];
        let p = plan(&desired, &observed);
        assert_eq!(
            p.remove,
            vec![Removal {
                id: 4,
                server: "10.0.0.1:80".into()
            }]
        );
    }

    #[test]
    fn guard_holds_emptying_when_capacity_disagrees() {
        let observed = vec![obs(0, "a:1", None), obs(1, "b:1", None)];
        let p = plan(&DesiredServers::new(), &observed);
        assert_eq!(
            guard(&p, 2, 0, Some(2)),
            Some(Hold::WouldEmpty {
                observed: 2,
                capacity: Some(2)
            })
        );
        assert_eq!(
            guard(&p, 2, 0, Some(0)),
            None,
            "capacity 0 means empty is real"
        );
    }

    #[test]
    fn guard_holds_mass_removal_unless_found_matches_capacity() {
        let observed: Vec<_> = (0..10)
            .map(|i| obs(i, &format!("10.0.0.{i}:80"), Some(params(0))))
            .collect();
        let desired: DesiredServers = (0..3)
            .map(|i| (format!("10.0.0.{i}:80"), params(0)))
            .collect();
        let p = plan(&desired, &observed);
        assert!(matches!(
            guard(&p, 10, 3, Some(10)),
            Some(Hold::MassRemoval { removing: 7, .. })
        ));
        assert_eq!(
            guard(&p, 10, 3, Some(3)),
            None,
            "scale-in the set agrees with"
        );
        let small: DesiredServers = (0..6)
            .map(|i| (format!("10.0.0.{i}:80"), params(0)))
            .collect();
        assert_eq!(
            guard(&plan(&small, &observed), 10, 6, Some(10)),
            None,
            "removing 4 of 10 is not held"
        );
    }

    fn arb_params() -> impl Strategy<Value = ServerParams> {
        (0u32..3, 0u32..3, 0u64..3, 0u64..3).prop_map(|(c, f, t, s)| ServerParams {
            max_conns: c,
            max_fails: f,
            fail_timeout: Duration::from_secs(t),
            slow_start: Duration::from_secs(s),
        })
    }

    fn arb_desired() -> impl Strategy<Value = DesiredServers> {
        prop::collection::btree_map(
            (0u8..12).prop_map(|i| format!("10.0.0.{i}:80")),
            arb_params(),
            0..12,
        )
    }

    fn arb_observed() -> impl Strategy<Value = Vec<ObservedServer>> {
        prop::collection::vec(((0u8..12), prop::option::of(arb_params())), 0..16).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(id, (i, p))| obs(id as u64, &format!("10.0.0.{i}:80"), p))
                .collect()
        })
    }

    fn as_map(v: &[ObservedServer]) -> BTreeMap<String, Option<ServerParams>> {
        v.iter().map(|o| (o.server.clone(), o.params)).collect()
    }

    proptest! {
        #[test]
        fn applying_the_plan_reaches_exactly_the_desired_state(d in arb_desired(), o in arb_observed()) {
            let after = simulate(&o, &plan(&d, &o));
            prop_assert_eq!(after.len(), d.len(), "no duplicates remain");
            let want: BTreeMap<String, Option<ServerParams>> = d.iter().map(|(k, v)| (k.clone(), Some(*v))).collect();
            prop_assert_eq!(as_map(&after), want);
        }

        #[test]
        fn replanning_after_apply_is_a_noop(d in arb_desired(), o in arb_observed()) {
            let after = simulate(&o, &plan(&d, &o));
            prop_assert!(plan(&d, &after).is_empty());
        }

        #[test]
        fn plan_never_touches_a_server_it_keeps_unchanged(d in arb_desired(), o in arb_observed()) {
            let p = plan(&d, &o);
            for r in &p.remove {
                let dup_kept = o.iter().any(|x| x.server == r.server && x.id < r.id);
                prop_assert!(!d.contains_key(&r.server) || dup_kept, "only unwanted servers or duplicates are removed");
            }
            for (s, _) in &p.add {
                prop_assert!(!o.iter().any(|x| &x.server == s), "never re-adds an existing server");
            }
        }

        #[test]
        fn guard_never_allows_emptying_against_capacity(o in arb_observed(), cap in 1u64..20) {
            let p = plan(&DesiredServers::new(), &o);
            if !p.remove.is_empty() {
                prop_assert!(guard(&p, o.len(), 0, Some(cap)).is_some());
                prop_assert!(guard(&p, o.len(), 0, None).is_some(), "unknown capacity never agrees");
            }
        }
    }
}
