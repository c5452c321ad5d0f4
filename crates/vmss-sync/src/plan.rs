//! The pure core: what to change so that a target holds the desired servers.
//!
//! `plan(desired, observed)` does no I/O and has property tests: applying its result to
//! the observed state gives exactly the desired state, and planning again then gives an
//! empty plan. `guard` decides whether a plan's removals may run given what the scale
//! sets themselves say about their size. `judge_read` decides, per scale set, whether a
//! read of its members can be used, used to add only, or not at all.

use crate::model::{DesiredServers, ObservedServer, ReadFault, ServerParams, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// A server to change in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// Target id of the server.
    pub id: u64,
    /// Its address.
    pub server: String,
    /// The parameters it must get, or `None` to leave them as they are.
    pub params: Option<ServerParams>,
    /// The state it must end in.
    pub state: ServerState,
    /// The state it was observed in.
    pub was: ServerState,
}

/// A server to remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    /// Target id of the server.
    pub id: u64,
    /// Its address.
    pub server: String,
    /// The state it was observed in (a draining server whose time is up, or an active one
    /// when there is no drain).
    pub state: ServerState,
}

/// The changes that turn an observed upstream into the desired one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Servers to create (active), sorted by address.
    pub add: Vec<(String, ServerParams)>,
    /// Servers changed in place: new parameters, a drain, or a restore from draining.
    /// Never a delete and re-add. Sorted by address.
    pub update: Vec<Update>,
    /// Servers to delete, sorted by address then id.
    pub remove: Vec<Removal>,
}

impl Plan {
    /// True when nothing needs to be written.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.update.is_empty() && self.remove.is_empty()
    }

    /// Updates that start a drain.
    pub fn drains(&self) -> impl Iterator<Item = &Update> {
        self.update
            .iter()
            .filter(|u| u.state == ServerState::Draining)
    }
}

/// How leaving servers are drained.
#[derive(Clone, Copy, Debug)]
pub struct Drain<'a> {
    /// How long a leaving server drains before it is removed; zero removes at once.
    pub timeout: Duration,
    /// For servers already draining: for how long. A draining server missing here
    /// (vmss-sync restarted during its drain) counts as just started, so it is never
    /// removed early and its drain still ends.
    pub elapsed: &'a BTreeMap<String, Duration>,
}

static NO_ELAPSED: BTreeMap<String, Duration> = BTreeMap::new();

impl Drain<'static> {
    /// Leaving servers are removed at once.
    pub const NONE: Drain<'static> = Drain {
        timeout: Duration::ZERO,
        elapsed: &NO_ELAPSED,
    };
}

/// Computes the plan. Servers are matched by their exact address string. When the target
/// holds the same address twice, the lowest id is kept and the others are removed.
///
/// - A wanted server that is missing is added; one whose parameters differ is updated;
///   one that is draining is restored (not removed and re-added).
/// - A server that is not wanted is first drained (when `drain.timeout` is not zero)
///   and removed once it has drained for `drain.timeout`.
pub fn plan(desired: &DesiredServers, observed: &[ObservedServer], drain: &Drain<'_>) -> Plan {
    // The observed servers sorted by (address, id), walked one address at a time beside
    // the desired ones (sorted too): no map or list per server.
    let mut sorted: Vec<&ObservedServer> = observed.iter().collect();
    sorted.sort_unstable_by(|a, b| a.server.cmp(&b.server).then(a.id.cmp(&b.id)));
    let mut out = Plan::default();
    let mut wanted = desired.iter().peekable();
    for entries in sorted.chunk_by(|a, b| a.server == b.server) {
        let server = entries[0].server.as_str();
        while let Some((s, p)) = wanted.next_if(|(s, _)| s.as_str() < server) {
            out.add.push((s.clone(), *p));
        }
        let Some((_, params)) = wanted.next_if(|(s, _)| s.as_str() == server) else {
            for o in entries {
                leave(o, drain, &mut out);
            }
            continue;
        };
        let (kept, extra) = (entries[0], &entries[1..]);
        for o in extra {
            out.remove.push(Removal {
                id: o.id,
                server: o.server.clone(),
                state: o.state,
            });
        }
        let params_differ = kept.params.as_ref() != Some(params);
        if params_differ || kept.state == ServerState::Draining {
            out.update.push(Update {
                id: kept.id,
                server: kept.server.clone(),
                params: params_differ.then_some(*params),
                state: ServerState::Active,
                was: kept.state,
            });
        }
    }
    out.add.extend(wanted.map(|(s, p)| (s.clone(), *p)));
    out
}

fn leave(o: &ObservedServer, drain: &Drain<'_>, out: &mut Plan) {
    let remove = Removal {
        id: o.id,
        server: o.server.clone(),
        state: o.state,
    };
    if drain.timeout.is_zero() {
        out.remove.push(remove);
        return;
    }
    match o.state {
        ServerState::Active => out.update.push(Update {
            id: o.id,
            server: o.server.clone(),
            params: None,
            state: ServerState::Draining,
            was: ServerState::Active,
        }),
        ServerState::Draining => {
            let elapsed = drain.elapsed.get(&o.server).copied().unwrap_or_default();
            if elapsed >= drain.timeout {
                out.remove.push(remove);
            }
        }
    }
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
    /// A scale set's read was judged failed: its servers were kept as they are (the
    /// first such set of the upstream; the others are logged).
    ReadFailed {
        /// The set (`resource group/name`).
        set: String,
        /// Why its read was not used.
        fault: ReadFault,
        /// True when the read was used to add (none of the set's servers left); false
        /// when it was not used at all (its servers were kept as they are).
        add_only: bool,
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
            Hold::WouldEmpty {
                observed,
                capacity: None,
            } => write!(
                f,
                "discovery found no instances and no scale set capacity confirms it (a glob \
                 or tag selection that matches nothing has none); keeping all {observed} servers"
            ),
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
            Hold::ReadFailed {
                set,
                fault,
                add_only: false,
            } => write!(
                f,
                "the read of scale set {set} was not used ({fault}); keeping its servers as \
                 they are"
            ),
            Hold::ReadFailed {
                set,
                fault,
                add_only: true,
            } => write!(
                f,
                "the read of scale set {set} was used only to add ({fault})"
            ),
        }
    }
}

/// Decides whether the plan's removals and drains may run.
///
/// Servers leave an upstream by a drain, or by a removal of an active server. A plan in
/// which servers leave so that no active server would remain, or in which more than half
/// of the active servers leave, runs only when the scale set's own capacity agrees with
/// what discovery found (`found >= capacity`; capacity 0 with nothing found means the set
/// really is empty; an unknown capacity never agrees). Adds, parameter updates and
/// restores are never held.
pub fn guard(
    plan: &Plan,
    observed: &[ObservedServer],
    found: usize,
    capacity: Option<u64>,
) -> Option<Hold> {
    let active = observed
        .iter()
        .filter(|o| o.state == ServerState::Active)
        .count();
    let leaving = plan.drains().count()
        + plan
            .remove
            .iter()
            .filter(|r| r.state == ServerState::Active)
            .count();
    if leaving == 0 {
        return None;
    }
    let restored = plan
        .update
        .iter()
        .filter(|u| u.state == ServerState::Active && u.was == ServerState::Draining)
        .count();
    let remaining = active.saturating_sub(leaving) + plan.add.len() + restored;
    let agrees = capacity.is_some_and(|c| found as u64 >= c);
    if remaining == 0 && !agrees {
        return Some(Hold::WouldEmpty {
            observed: active,
            capacity,
        });
    }
    if leaving * 2 > active && !agrees {
        return Some(Hold::MassRemoval {
            removing: leaving,
            observed: active,
            found,
            capacity,
        });
    }
    None
}

/// What one read of a scale set's members gave, for [`judge_read`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetRead {
    /// The set's `sku.capacity` (None: ARM did not say).
    pub capacity: Option<u64>,
    /// Members found with an address.
    pub found: usize,
    /// Members at the last read of the set that was used (None: none since the start).
    pub previous: Option<usize>,
    /// Members found by the reads of the set not used since the last one used (or since
    /// the start), all together (None: no such read). Only a set without capacity and
    /// without a read used is judged against it.
    pub seen: Option<usize>,
    /// Members found without an instance view while views are needed.
    pub without_view: usize,
}

/// What to do with one scale set's membership read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The read is complete as far as can be told: it is planned as it is, and becomes
    /// the reference the next reads are judged against.
    Use,
    /// The read may be missing members: its ready members are planned (added, restored,
    /// parameters updated), but none of the set's servers leaves, and the read does not
    /// become the reference.
    AddOnly(ReadFault),
    /// The read is not used at all: the set's servers are kept exactly as they are.
    Hold(ReadFault),
}

impl Judgement {
    /// The fault, when the read is not used as complete.
    pub fn fault(&self) -> Option<&ReadFault> {
        match self {
            Judgement::Use => None,
            Judgement::AddOnly(f) | Judgement::Hold(f) => Some(f),
        }
    }
}

/// Judges one scale set's membership read on its own, whatever the upstreams it feeds
/// look like. The reference size is the set's capacity (the truth for the set: it moves
/// first on a scale-in or out), or, when ARM did not say, its members at the last read
/// used, or else the members seen by the reads since the start. The read is:
///
/// - held (`Hold`) when it found no member while the reference is above zero (`Empty`),
///   or when a member lacks an instance view while views are needed (`NoViews`), however
///   it is missing (an empty list, a missing item, a missing field): nothing in it can
///   be trusted;
/// - add-only (`AddOnly`) when it found fewer members than the capacity and fewer than
///   the last read used (or no read was used since the start) (`Short`): the set says
///   members are there that the read did not find. Without a capacity, when it found at
///   most half the members before (`Short`), or when there is nothing to judge it against
///   (`NoReference`). What it found is there; what it did not find may be there too. A
///   scale-out in progress once a read has been used (members only grow) and a scale-in
///   (the capacity drops first) are used as they are;
/// - used otherwise. A capacity of zero with no member found is a set that really is
///   empty.
pub fn judge_read(r: &SetRead) -> Judgement {
    let reference = r
        .capacity
        .or(r.previous.map(|p| p as u64))
        .or(r.seen.map(|p| p as u64));
    if reference.is_some_and(|c| c > 0) && r.found == 0 {
        return Judgement::Hold(ReadFault::Empty {
            capacity: r.capacity,
            previous: r.previous,
        });
    }
    if r.without_view > 0 {
        return Judgement::Hold(ReadFault::NoViews {
            missing: r.without_view,
            members: r.found,
        });
    }
    let Some(reference) = reference else {
        return Judgement::AddOnly(ReadFault::NoReference { found: r.found });
    };
    let found = r.found as u64;
    let short = match r.capacity {
        Some(c) => found < c,
        None => reference > 0 && found.saturating_mul(2) <= reference,
    };
    if short && r.previous.is_none_or(|p| r.found < p) {
        return Judgement::AddOnly(ReadFault::Short {
            found: r.found,
            reference,
            capacity: r.capacity,
            previous: r.previous,
        });
    }
    Judgement::Use
}

/// Leaves the servers in `keep` out of planning: what remains of `desired` and
/// `observed` once they are taken out. Planning the rest never adds, changes, drains or
/// removes a kept server.
pub fn except(
    desired: &DesiredServers,
    observed: &[ObservedServer],
    keep: &BTreeSet<String>,
) -> (DesiredServers, Vec<ObservedServer>) {
    let desired = desired
        .iter()
        .filter(|(s, _)| !keep.contains(*s))
        .map(|(s, p)| (s.clone(), *p))
        .collect();
    let observed = observed
        .iter()
        .filter(|o| !keep.contains(&o.server))
        .cloned()
        .collect();
    (desired, observed)
}

/// Drops every way a server leaves: drains and removals, those of servers whose drain is
/// over included (when a held set's servers are not known, none may leave).
pub fn without_leaving(plan: Plan) -> Plan {
    leaving_only_where(plan, |_| false)
}

/// Drops every way the servers in `staying` leave: their drains and removals, those of
/// servers whose drain is over included. Everything else of the plan is kept (the
/// servers of an add-only read's set never leave; the rest of the upstream syncs).
pub fn without_leaving_of(plan: Plan, staying: &BTreeSet<String>) -> Plan {
    leaving_only_where(plan, |server| !staying.contains(server))
}

/// The plan without the drains and removals of the servers for which `may_leave` is false.
fn leaving_only_where(plan: Plan, may_leave: impl Fn(&str) -> bool) -> Plan {
    Plan {
        update: plan
            .update
            .into_iter()
            .filter(|u| u.state == ServerState::Active || may_leave(&u.server))
            .collect(),
        remove: plan
            .remove
            .into_iter()
            .filter(|r| may_leave(&r.server))
            .collect(),
        ..plan
    }
}

/// Drops what makes servers leave (removals of active servers and drains), keeping
/// adds, parameter updates, restores, and removals of servers whose drain is over.
pub fn without_removals(plan: Plan) -> Plan {
    Plan {
        update: plan
            .update
            .into_iter()
            .filter(|u| u.state == ServerState::Active)
            .collect(),
        remove: plan
            .remove
            .into_iter()
            .filter(|r| r.state == ServerState::Draining)
            .collect(),
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
                if let Some(p) = u.params {
                    o.params = Some(p);
                }
                o.state = u.state;
            }
            o
        })
        .collect();
    for (id, (server, params)) in (first_new..).zip(&plan.add) {
        out.push(ObservedServer {
            id,
            server: server.clone(),
            params: Some(*params),
            state: ServerState::Active,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
            state: ServerState::Active,
        }
    }

    fn draining(id: u64, server: &str) -> ObservedServer {
        ObservedServer {
            state: ServerState::Draining,
            ..obs(id, server, Some(params(0)))
        }
    }

    fn drain_of(timeout: u64, elapsed: &BTreeMap<String, Duration>) -> Drain<'_> {
        Drain {
            timeout: Duration::from_secs(timeout),
            elapsed,
        }
    }

    #[test]
    fn in_sync_upstream_gives_empty_plan() {
        let desired: DesiredServers = [("10.0.0.1:80".to_string(), params(0))].into();
        let observed = vec![obs(0, "10.0.0.1:80", Some(params(0)))];
        assert!(plan(&desired, &observed, &Drain::NONE).is_empty());
    }

    #[test]
    fn parameter_change_is_an_update_not_a_readd() {
        let desired: DesiredServers = [("10.0.0.1:80".to_string(), params(5))].into();
        let observed = vec![obs(7, "10.0.0.1:80", Some(params(0)))];
        let p = plan(&desired, &observed, &Drain::NONE);
        assert!(p.add.is_empty() && p.remove.is_empty());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].id, 7);
        assert_eq!(p.update[0].params, Some(params(5)));
    }

    #[test]
    fn duplicate_observed_server_keeps_lowest_id() {
        let desired: DesiredServers = [("10.0.0.1:80".to_string(), params(0))].into();
        let observed = vec![
            obs(4, "10.0.0.1:80", Some(params(0))),
            obs(2, "10.0.0.1:80", Some(params(0))),
        ];
        let p = plan(&desired, &observed, &Drain::NONE);
        assert_eq!(
            p.remove,
            vec![Removal {
                id: 4,
                server: "10.0.0.1:80".into(),
                state: ServerState::Active
            }]
        );
    }

    #[test]
    fn leaving_server_is_drained_first_then_removed_after_the_timeout() {
        let observed = vec![obs(3, "10.0.0.9:80", Some(params(0)))];
        let none = BTreeMap::new();
        let p = plan(&DesiredServers::new(), &observed, &drain_of(30, &none));
        assert!(p.remove.is_empty());
        assert_eq!(p.drains().count(), 1);
        let now_draining = simulate(&observed, &p);
        let early: BTreeMap<_, _> = [("10.0.0.9:80".to_string(), Duration::from_secs(29))].into();
        assert!(plan(&DesiredServers::new(), &now_draining, &drain_of(30, &early)).is_empty());
        let late: BTreeMap<_, _> = [("10.0.0.9:80".to_string(), Duration::from_secs(30))].into();
        let p = plan(&DesiredServers::new(), &now_draining, &drain_of(30, &late));
        assert_eq!(p.remove.len(), 1);
    }

    #[test]
    fn holds_say_why_with_and_without_a_capacity() {
        let none = Hold::WouldEmpty {
            observed: 3,
            capacity: None,
        };
        assert_eq!(
            none.to_string(),
            "discovery found no instances and no scale set capacity confirms it (a glob or tag \
             selection that matches nothing has none); keeping all 3 servers"
        );
        let four = Hold::WouldEmpty {
            observed: 3,
            capacity: Some(4),
        };
        assert!(four.to_string().contains("the scale set capacity is 4"));
    }

    #[test]
    fn draining_server_unknown_to_the_clock_is_not_removed_early() {
        let observed = vec![draining(1, "10.0.0.9:80")];
        let none = BTreeMap::new();
        assert!(plan(&DesiredServers::new(), &observed, &drain_of(30, &none)).is_empty());
    }

    #[test]
    fn draining_server_that_is_wanted_again_is_restored_in_place() {
        let desired: DesiredServers = [("10.0.0.9:80".to_string(), params(0))].into();
        let observed = vec![draining(1, "10.0.0.9:80")];
        let none = BTreeMap::new();
        let p = plan(&desired, &observed, &drain_of(30, &none));
        assert!(p.add.is_empty() && p.remove.is_empty());
        assert_eq!(
            p.update,
            vec![Update {
                id: 1,
                server: "10.0.0.9:80".into(),
                params: None,
                state: ServerState::Active,
                was: ServerState::Draining
            }]
        );
    }

    #[test]
    fn guard_holds_emptying_when_capacity_disagrees() {
        let observed = vec![obs(0, "a:1", None), obs(1, "b:1", None)];
        let p = plan(&DesiredServers::new(), &observed, &Drain::NONE);
        assert_eq!(
            guard(&p, &observed, 0, Some(2)),
            Some(Hold::WouldEmpty {
                observed: 2,
                capacity: Some(2)
            })
        );
        assert_eq!(
            guard(&p, &observed, 0, Some(0)),
            None,
            "capacity 0 means empty is real"
        );
    }

    #[test]
    fn guard_counts_drains_as_leaving() {
        let observed = vec![obs(0, "a:1", None), obs(1, "b:1", None)];
        let none = BTreeMap::new();
        let p = plan(&DesiredServers::new(), &observed, &drain_of(30, &none));
        assert!(guard(&p, &observed, 0, Some(2)).is_some());
        let held = without_removals(p);
        assert!(held.is_empty(), "no drain runs while held");
    }

    #[test]
    fn guard_holds_mass_removal_unless_found_matches_capacity() {
        let observed: Vec<_> = (0..10)
            .map(|i| obs(i, &format!("10.0.0.{i}:80"), Some(params(0))))
            .collect();
        let desired: DesiredServers = (0..3)
            .map(|i| (format!("10.0.0.{i}:80"), params(0)))
            .collect();
        let p = plan(&desired, &observed, &Drain::NONE);
        assert!(matches!(
            guard(&p, &observed, 3, Some(10)),
            Some(Hold::MassRemoval { removing: 7, .. })
        ));
        assert_eq!(
            guard(&p, &observed, 3, Some(3)),
            None,
            "scale-in the set agrees with"
        );
        let small: DesiredServers = (0..6)
            .map(|i| (format!("10.0.0.{i}:80"), params(0)))
            .collect();
        assert_eq!(
            guard(
                &plan(&small, &observed, &Drain::NONE),
                &observed,
                6,
                Some(10)
            ),
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
        prop::collection::vec(
            ((0u8..12), prop::option::of(arb_params()), any::<bool>()),
            0..16,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(id, (i, p, d))| ObservedServer {
                    id: id as u64,
                    server: format!("10.0.0.{i}:80"),
                    params: p,
                    state: if d {
                        ServerState::Draining
                    } else {
                        ServerState::Active
                    },
                })
                .collect()
        })
    }

    fn arb_elapsed() -> impl Strategy<Value = BTreeMap<String, Duration>> {
        prop::collection::btree_map(
            (0u8..12).prop_map(|i| format!("10.0.0.{i}:80")),
            (0u64..60).prop_map(Duration::from_secs),
            0..12,
        )
    }

    fn as_map(v: &[ObservedServer]) -> BTreeMap<String, (Option<ServerParams>, ServerState)> {
        v.iter()
            .map(|o| (o.server.clone(), (o.params, o.state)))
            .collect()
    }

    fn read(
        capacity: Option<u64>,
        found: usize,
        previous: Option<usize>,
        without_view: usize,
    ) -> SetRead {
        SetRead {
            capacity,
            found,
            previous,
            seen: None,
            without_view,
        }
    }

    #[test]
    fn an_empty_read_or_one_without_views_is_held_and_a_short_one_only_adds() {
        assert!(matches!(
            judge_read(&read(Some(10), 0, Some(10), 0)),
            Judgement::Hold(ReadFault::Empty { .. })
        ));
        assert!(matches!(
            judge_read(&read(Some(10), 4, Some(10), 0)),
            Judgement::AddOnly(ReadFault::Short { found: 4, .. })
        ));
        assert!(
            matches!(
                judge_read(&read(Some(10), 5, Some(10), 0)),
                Judgement::AddOnly(ReadFault::Short { found: 5, .. })
            ),
            "exactly half is short"
        );
        assert!(
            matches!(
                judge_read(&read(Some(6), 4, Some(6), 0)),
                Judgement::AddOnly(ReadFault::Short { found: 4, .. })
            ),
            "a list cut short at a page boundary, more than half found"
        );
        assert_eq!(
            judge_read(&read(Some(10), 10, Some(12), 0)),
            Judgement::Use,
            "the capacity dropped first: a scale-in"
        );
        assert_eq!(
            judge_read(&read(Some(10), 9, Some(9), 0)),
            Judgement::Use,
            "no member lost since the last read used"
        );
        assert!(
            matches!(
                judge_read(&read(Some(8), 4, None, 0)),
                Judgement::AddOnly(ReadFault::Short { found: 4, .. })
            ),
            "half of the capacity right after a start"
        );
        assert!(
            matches!(
                judge_read(&read(Some(2), 1, None, 0)),
                Judgement::AddOnly(ReadFault::Short { found: 1, .. })
            ),
            "one of two at start-up: added, not held"
        );
        assert_eq!(
            judge_read(&read(Some(10), 2, Some(2), 0)),
            Judgement::Use,
            "a scale-out in progress"
        );
        assert_eq!(
            judge_read(&read(Some(2), 2, Some(10), 0)),
            Judgement::Use,
            "a scale-in"
        );
        assert_eq!(
            judge_read(&read(Some(0), 0, Some(10), 0)),
            Judgement::Use,
            "scaled to 0"
        );
        assert!(matches!(
            judge_read(&read(None, 0, Some(3), 0)),
            Judgement::Hold(ReadFault::Empty { .. })
        ));
        assert!(matches!(
            judge_read(&read(None, 3, Some(6), 0)),
            Judgement::AddOnly(ReadFault::Short { .. })
        ));
        assert_eq!(judge_read(&read(None, 4, Some(6), 0)), Judgement::Use);
        assert_eq!(
            judge_read(&read(None, 0, None, 0)),
            Judgement::AddOnly(ReadFault::NoReference { found: 0 })
        );
        assert_eq!(
            judge_read(&read(None, 5, None, 0)),
            Judgement::AddOnly(ReadFault::NoReference { found: 5 }),
            "no capacity and nothing read before: nothing to judge against"
        );
        let later = SetRead {
            seen: Some(5),
            ..read(None, 5, None, 0)
        };
        assert_eq!(
            judge_read(&later),
            Judgement::Use,
            "the members seen since the start are the reference"
        );
        assert_eq!(
            judge_read(&read(Some(10), 10, Some(10), 10)),
            Judgement::Hold(ReadFault::NoViews {
                missing: 10,
                members: 10
            })
        );
        let msg = |r| {
            judge_read(&r)
                .fault()
                .map(|f| f.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            msg(read(Some(3), 0, Some(3), 0)),
            "the read found no instances, but its capacity is 3 (3 members at the last read used)"
        );
        assert_eq!(
            msg(read(Some(8), 4, None, 0)),
            "the read found 4 instances, fewer than its capacity of 8 and fewer than before \
             (no earlier read used)"
        );
        assert_eq!(
            msg(read(None, 3, Some(6), 0)),
            "the read found 3 instances, at most half of the 6 found before, and its \
             capacity is unknown (6 members at the last read used)"
        );
    }

    #[test]
    fn an_add_only_sets_servers_never_leave_while_the_rest_of_the_upstream_syncs() {
        let observed = vec![
            obs(0, "10.0.0.1:80", Some(params(0))),
            obs(1, "10.0.0.2:80", Some(params(0))),
            draining(2, "10.0.0.3:80"),
            obs(3, "10.0.0.9:80", Some(params(0))),
            draining(4, "10.0.0.8:80"),
        ];
        // The add-only set's read found .1 and .4 (new); .2 and .3 are its members from
        // earlier reads. .9 and .8 are another set's servers that really left.
        let staying: BTreeSet<String> =
            ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]
                .map(String::from)
                .into();
        let desired: DesiredServers = ["10.0.0.1:80", "10.0.0.4:80"]
            .map(|s| (s.to_string(), params(0)))
            .into();
        let late: BTreeMap<_, _> = [
            ("10.0.0.3:80".to_string(), Duration::from_secs(99)),
            ("10.0.0.8:80".to_string(), Duration::from_secs(99)),
        ]
        .into();
        let p = without_leaving_of(plan(&desired, &observed, &drain_of(30, &late)), &staying);
        assert_eq!(p.add, vec![("10.0.0.4:80".to_string(), params(0))]);
        assert_eq!(
            p.drains().map(|u| u.server.as_str()).collect::<Vec<_>>(),
            ["10.0.0.9:80"]
        );
        assert_eq!(
            p.remove
                .iter()
                .map(|r| r.server.as_str())
                .collect::<Vec<_>>(),
            ["10.0.0.8:80"]
        );
    }

    #[test]
    fn held_servers_are_neither_added_drained_restored_nor_removed() {
        let observed = vec![
            obs(0, "10.0.0.1:80", Some(params(0))),
            draining(1, "10.0.0.2:80"),
            obs(2, "10.0.0.3:80", Some(params(0))),
        ];
        let keep: BTreeSet<String> = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.4:80"]
            .map(String::from)
            .into();
        let desired: DesiredServers = [("10.0.0.2:80".to_string(), params(0))].into();
        let (d, o) = except(&desired, &observed, &keep);
        let late: BTreeMap<_, _> = [("10.0.0.2:80".to_string(), Duration::from_secs(99))].into();
        let p = plan(&d, &o, &drain_of(30, &late));
        assert!(p.add.is_empty() && p.remove.is_empty());
        assert_eq!(
            p.drains().map(|u| u.server.as_str()).collect::<Vec<_>>(),
            ["10.0.0.3:80"]
        );
        let held = without_leaving(plan(
            &DesiredServers::new(),
            &observed,
            &drain_of(30, &late),
        ));
        assert!(held.is_empty(), "{held:?}");
    }

    proptest! {
        #[test]
        fn a_read_that_agrees_with_the_capacity_or_loses_no_member_is_used(
            cap in prop::option::of(0u64..40), found in 0usize..40, prev in prop::option::of(0usize..40),
            seen in prop::option::of(0usize..40)
        ) {
            let r = SetRead { capacity: cap, found, previous: prev, seen, without_view: 0 };
            let agrees = cap.is_some_and(|c| found as u64 >= c);
            let keeps_members = found > 0 && prev.is_some_and(|p| found >= p);
            if agrees || keeps_members {
                prop_assert_eq!(judge_read(&r), Judgement::Use);
            }
        }

        /// With events, a timer cycle may judge a set's read against a capacity read
        /// earlier (discovery reuses the scale set read only when the membership read is
        /// not empty and has exactly the members of the last read used): the judgement
        /// must then be the one any fresh capacity (or none) would give.
        #[test]
        fn a_read_with_the_members_of_the_last_read_used_is_judged_alike_whatever_the_capacity(
            stale in prop::option::of(0u64..40), fresh in prop::option::of(0u64..40),
            found in 1usize..40, seen in prop::option::of(0usize..40), without in 0usize..3
        ) {
            let read = |capacity| SetRead { capacity, found, previous: Some(found), seen, without_view: without };
            prop_assert_eq!(judge_read(&read(stale)), judge_read(&read(fresh)));
        }

        #[test]
        fn an_empty_read_of_a_set_with_capacity_is_never_used(
            cap in 1u64..40, prev in prop::option::of(0usize..40), seen in prop::option::of(0usize..40),
            without in 0usize..3
        ) {
            let r = SetRead { capacity: Some(cap), found: 0, previous: prev, seen, without_view: without };
            prop_assert!(
                matches!(judge_read(&r), Judgement::Hold(ReadFault::Empty { .. })),
                "an empty read of a set with capacity was used"
            );
        }

        #[test]
        fn a_read_of_at_most_half_the_capacity_that_lost_members_never_makes_a_server_leave(
            cap in 1u64..40, found in 0usize..40, prev in prop::option::of(0usize..40),
            seen in prop::option::of(0usize..40)
        ) {
            let r = SetRead { capacity: Some(cap), found, previous: prev, seen, without_view: 0 };
            if (found as u64) * 2 <= cap && prev.is_none_or(|p| found < p) {
                prop_assert_ne!(judge_read(&r), Judgement::Use);
            }
        }

        #[test]
        fn a_read_without_capacity_is_used_only_against_an_earlier_read(
            found in 0usize..40, prev in prop::option::of(0usize..40), seen in prop::option::of(0usize..40)
        ) {
            let r = SetRead { capacity: None, found, previous: prev, seen, without_view: 0 };
            let reference = prev.or(seen);
            match reference {
                None => prop_assert!(
                    matches!(judge_read(&r), Judgement::AddOnly(ReadFault::NoReference { .. })),
                    "no reference: add only"
                ),
                Some(p) if found * 2 <= p && (found > 0 || p > 0) => prop_assert_ne!(judge_read(&r), Judgement::Use),
                Some(_) => {}
            }
        }

        #[test]
        fn a_read_below_the_capacity_that_lost_members_only_adds_and_never_holds_what_it_found(
            cap in 1u64..40, found in 1usize..40, prev in prop::option::of(0usize..40),
            seen in prop::option::of(0usize..40)
        ) {
            let r = SetRead { capacity: Some(cap), found, previous: prev, seen, without_view: 0 };
            if (found as u64) < cap && prev.is_none_or(|p| found < p) {
                prop_assert!(
                    matches!(judge_read(&r), Judgement::AddOnly(ReadFault::Short { .. })),
                    "a short read is add-only"
                );
            }
        }

        #[test]
        fn a_member_without_a_view_always_holds_the_read(
            cap in prop::option::of(0u64..40), found in 1usize..40, prev in prop::option::of(0usize..40),
            seen in prop::option::of(0usize..40), without in 1usize..40
        ) {
            let r = SetRead { capacity: cap, found, previous: prev, seen, without_view: without.min(found) };
            prop_assert!(matches!(judge_read(&r), Judgement::Hold(_)));
        }

        #[test]
        fn a_read_not_used_stays_not_used_when_fewer_members_are_found(
            cap in prop::option::of(0u64..40), found in 1usize..40, prev in prop::option::of(0usize..40),
            seen in prop::option::of(0usize..40)
        ) {
            let r = SetRead { capacity: cap, found, previous: prev, seen, without_view: 0 };
            if judge_read(&r) != Judgement::Use {
                let fewer = SetRead { found: found - 1, ..r };
                prop_assert_ne!(judge_read(&fewer), Judgement::Use);
            }
        }

        #[test]
        fn without_leaving_of_no_staying_server_leaves_and_the_rest_is_planned_as_before(
            d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 0u64..60,
            staying in prop::collection::btree_set((0u8..12).prop_map(|i| format!("10.0.0.{i}:80")), 0..12)
        ) {
            let full = plan(&d, &o, &drain_of(t, &el));
            let p = without_leaving_of(full.clone(), &staying);
            // Nothing of the staying servers leaves: each is still there after the plan,
            // and none that was active is draining.
            let after = simulate(&o, &p);
            for x in o.iter().filter(|x| staying.contains(&x.server)) {
                let kept = after.iter().find(|a| a.id == x.id);
                prop_assert!(kept.is_some(), "removed {:?}", x);
                if x.state == ServerState::Active {
                    prop_assert_eq!(kept.map(|k| k.state), Some(ServerState::Active));
                }
            }
            // Adds, restores and parameter updates are kept, and so is everything that
            // concerns other servers.
            prop_assert_eq!(&p.add, &full.add);
            let others = |v: &Plan| -> (Vec<Update>, Vec<Removal>) {
                (
                    v.update.iter().filter(|u| !staying.contains(&u.server) || u.state == ServerState::Active).cloned().collect(),
                    v.remove.iter().filter(|r| !staying.contains(&r.server)).cloned().collect(),
                )
            };
            prop_assert_eq!(others(&p), others(&full));
        }

        #[test]
        fn planning_around_kept_servers_never_names_them(
            d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 0u64..60,
            keep in prop::collection::btree_set((0u8..12).prop_map(|i| format!("10.0.0.{i}:80")), 0..12)
        ) {
            let (d2, o2) = except(&d, &o, &keep);
            let p = plan(&d2, &o2, &drain_of(t, &el));
            prop_assert!(p.add.iter().all(|(s, _)| !keep.contains(s)));
            prop_assert!(p.update.iter().all(|u| !keep.contains(&u.server)));
            prop_assert!(p.remove.iter().all(|r| !keep.contains(&r.server)));
            let after = simulate(&o, &p);
            for x in o.iter().filter(|x| keep.contains(&x.server)) {
                prop_assert!(after.contains(x), "kept server changed: {:?}", x);
            }
        }

        #[test]
        fn without_leaving_nothing_leaves(d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 0u64..60) {
            let p = without_leaving(plan(&d, &o, &drain_of(t, &el)));
            prop_assert!(p.remove.is_empty() && p.drains().next().is_none());
            let after = simulate(&o, &p);
            prop_assert_eq!(after.len(), o.len() + p.add.len());
        }

        #[test]
        fn without_drain_applying_the_plan_reaches_exactly_the_desired_state(d in arb_desired(), o in arb_observed()) {
            let after = simulate(&o, &plan(&d, &o, &Drain::NONE));
            prop_assert_eq!(after.len(), d.len(), "no duplicates remain");
            let want: BTreeMap<String, (Option<ServerParams>, ServerState)> =
                d.iter().map(|(k, v)| (k.clone(), (Some(*v), ServerState::Active))).collect();
            prop_assert_eq!(as_map(&after), want);
        }

        #[test]
        fn with_drain_wanted_servers_are_active_and_unwanted_ones_never_take_traffic(
            d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 1u64..60
        ) {
            let after = simulate(&o, &plan(&d, &o, &drain_of(t, &el)));
            for (server, p) in &d {
                let found: Vec<_> = after.iter().filter(|x| &x.server == server).collect();
                prop_assert_eq!(found.len(), 1);
                prop_assert_eq!(found[0].params, Some(*p));
                prop_assert_eq!(found[0].state, ServerState::Active);
            }
            for x in after.iter().filter(|x| !d.contains_key(&x.server)) {
                prop_assert_eq!(x.state, ServerState::Draining, "an unwanted server only drains");
            }
        }

        #[test]
        fn replanning_after_apply_is_a_noop(d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 0u64..60) {
            let p = plan(&d, &o, &drain_of(t, &el));
            let after = simulate(&o, &p);
            // The clock of a drain that just started reads zero.
            let mut el2 = el.clone();
            for u in p.drains() {
                el2.remove(&u.server);
            }
            prop_assert!(plan(&d, &after, &drain_of(t, &el2)).is_empty());
        }

        #[test]
        fn active_servers_are_never_removed_directly_when_draining_is_on(
            d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 1u64..60
        ) {
            let p = plan(&d, &o, &drain_of(t, &el));
            for r in &p.remove {
                let dup_kept = o.iter().any(|x| x.server == r.server && x.id < r.id) && d.contains_key(&r.server);
                let drained_long_enough = r.state == ServerState::Draining
                    && el.get(&r.server).is_some_and(|e| e.as_secs() >= t);
                prop_assert!(dup_kept || drained_long_enough, "removed {:?}", r);
            }
        }

        #[test]
        fn plan_never_readds_an_existing_server(d in arb_desired(), o in arb_observed(), el in arb_elapsed(), t in 0u64..60) {
            let p = plan(&d, &o, &drain_of(t, &el));
            for (s, _) in &p.add {
                prop_assert!(!o.iter().any(|x| &x.server == s));
            }
        }

        #[test]
        fn guard_never_lets_every_active_server_leave_against_capacity(
            o in arb_observed(), cap in 1u64..20, t in 0u64..60
        ) {
            let none = BTreeMap::new();
            let p = plan(&DesiredServers::new(), &o, &drain_of(t, &none));
            let active = o.iter().filter(|x| x.state == ServerState::Active).count();
            if active > 0 {
                prop_assert!(guard(&p, &o, 0, Some(cap)).is_some());
                prop_assert!(guard(&p, &o, 0, None).is_some(), "unknown capacity never agrees");
                let held = without_removals(p);
                prop_assert!(held.drains().next().is_none());
                prop_assert!(held.remove.iter().all(|r| r.state == ServerState::Draining));
            }
        }
    }
}
