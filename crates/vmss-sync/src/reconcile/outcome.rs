//! Outcomes: what happened to each upstream in a cycle, and how logs word it.

use super::cycle::Prepared;
use super::drain::DrainBook;
use super::specs::UpstreamSpec;
use crate::model::{ObservedServer, ServerState, UpstreamKind};
use crate::plan::{Hold, Plan};
use crate::target::{ApplyReport, Permanence, TargetError};
use std::time::Duration;

/// What happened to one upstream in one cycle.
#[derive(Debug)]
pub struct UpstreamOutcome {
    /// Upstream name (for a service of a template: its backend's name).
    pub upstream: String,
    /// The template (configured upstream with `services`) a service comes from.
    pub template: Option<String>,
    /// The target kind (`Target::kind`).
    pub target: &'static str,
    /// HTTP or stream.
    pub kind: UpstreamKind,
    /// The scale set feeding it.
    pub group: String,
    /// The plan (after the guard), when discovery and observation worked.
    pub plan: Option<Plan>,
    /// Why removals were held back, if they were.
    pub hold: Option<Hold>,
    /// What the apply did (None in a dry run or when nothing was planned).
    pub report: Option<ApplyReport>,
    /// Why the upstream failed this cycle, if it did.
    pub error: Option<String>,
    /// Conditions that held it back this cycle (`unusable`: its target failed the startup
    /// check, which is retried every cycle; and those its target reported).
    pub conditions: Vec<&'static str>,
    /// Servers observed before the cycle.
    pub observed: usize,
    /// Servers wanted.
    pub desired: usize,
    /// Active servers the upstream holds after the cycle (as planned).
    pub active: usize,
    /// Draining servers the upstream holds after the cycle (as planned).
    pub draining: usize,
    /// From the start of the cycle (discovery included) to the end of this upstream's
    /// writes.
    pub duration: Duration,
}

impl UpstreamOutcome {
    pub(super) fn new(up: &UpstreamSpec, template: Option<String>) -> Self {
        Self {
            upstream: up.upstream.name.clone(),
            template,
            target: up.target.kind(),
            kind: up.upstream.kind,
            group: up.group(),
            plan: None,
            hold: None,
            report: None,
            error: None,
            conditions: Vec::new(),
            observed: 0,
            desired: 0,
            active: 0,
            draining: 0,
            duration: Duration::ZERO,
        }
    }

    pub(super) fn failed(up: &UpstreamSpec, template: Option<String>, error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::new(up, template)
        }
    }

    /// True when the upstream ended the cycle holding exactly the wanted servers.
    pub fn in_sync(&self) -> bool {
        self.error.is_none()
            && self.hold.is_none()
            && self.report.as_ref().is_none_or(|r| r.errors.is_empty())
    }
}

/// Where an outcome goes in the report: configured upstreams in configuration order,
/// each one's own outcome (item 0) before those of its services (items 1, 2, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Order {
    /// The configured upstream's position in the configuration.
    pub(super) upstream: usize,
    /// 0 for the configured upstream itself, 1 + i for the i-th service of a template.
    pub(super) item: usize,
}

/// What one cycle did.
#[derive(Debug)]
pub struct CycleReport {
    /// One entry per configured upstream, in configuration order.
    pub outcomes: Vec<UpstreamOutcome>,
    /// Wall time of the cycle.
    pub duration: Duration,
}

impl CycleReport {
    /// True when every upstream is in sync.
    pub fn all_in_sync(&self) -> bool {
        self.outcomes.iter().all(UpstreamOutcome::in_sync)
    }
}

/// What `run` does about an upstream whose target cannot be used: said by the startup
/// check's log line (`daemon::checked`) and by every cycle's re-check (`recheck`).
pub const RECHECKED: &str = "checked again every cycle; the other upstreams are synced meanwhile";

/// A target's failed startup check, as logs and `once`/`plan` say it: a refusal by the
/// target (permanent) is a problem with its configuration; a target that could not be
/// reached says so in its own words.
pub(super) fn check_failed(kind: &str, e: &TargetError) -> String {
    if e.permanence == Permanence::Permanent {
        format!(
            "Problem with the {} configuration: {}",
            target_name(kind).trim_start_matches("the "),
            e.message
        )
    } else {
        e.message.clone()
    }
}

/// A target that still fails its check at a cycle's re-check, as that cycle's outcome
/// says it.
pub(super) fn still_unusable(kind: &str, e: &TargetError) -> String {
    format!(
        "{} cannot be used for this upstream ({RECHECKED}): {}",
        target_name(kind),
        e.message
    )
}

/// How log lines name a target: NGINX Plus keeps nginx-asg-sync's words.
pub(super) fn target_name(kind: &str) -> &str {
    match kind {
        "nginx-plus" => "NGINX",
        "haproxy-runtime" => "HAProxy (Runtime API)",
        "haproxy-dataplane" => "HAProxy (Data Plane API)",
        "nginx-file" => "the NGINX upstream file",
        other => other,
    }
}

pub(super) fn kind_word(kind: UpstreamKind) -> &'static str {
    match kind {
        UpstreamKind::Http => "HTTP",
        UpstreamKind::Stream => "Stream",
    }
}

fn list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

pub(super) fn count_states(servers: &[ObservedServer]) -> (usize, usize) {
    let draining = servers
        .iter()
        .filter(|o| o.state == ServerState::Draining)
        .count();
    (servers.len() - draining, draining)
}

/// The (active, draining) counts of `observed` once `plan` is written: what
/// `count_states(&plan::simulate(observed, plan))` gives, without copying the servers (so
/// that an upstream's observed servers need not be kept until its writes are done).
pub(super) fn states_after(observed: &[ObservedServer], plan: &Plan) -> (usize, usize) {
    let removed: std::collections::HashSet<u64> = plan.remove.iter().map(|r| r.id).collect();
    // The first update of a server is the one `simulate` applies.
    let mut updated: std::collections::HashMap<u64, ServerState> = Default::default();
    for u in plan.update.iter().rev() {
        updated.insert(u.id, u.state);
    }
    let (mut active, mut draining) = (plan.add.len(), 0);
    for o in observed.iter().filter(|o| !removed.contains(&o.id)) {
        match updated.get(&o.id).copied().unwrap_or(o.state) {
            ServerState::Active => active += 1,
            ServerState::Draining => draining += 1,
        }
    }
    (active, draining)
}

/// Completes an outcome with what the writes did (None: nothing was written), starts
/// the drain clocks of servers set draining, and logs the changes and errors.
pub(super) fn finish(
    p: Prepared,
    report: Option<ApplyReport>,
    drains: &DrainBook,
) -> UpstreamOutcome {
    let Prepared {
        spec: up,
        mut outcome,
        after,
        now,
        ..
    } = p;
    let Some(report) = report else {
        return outcome;
    };
    let Some(plan) = &outcome.plan else {
        return outcome;
    };
    let drained: Vec<String> = plan
        .drains()
        .filter(|u| report.drained.contains(&u.server))
        .map(|u| u.server.clone())
        .collect();
    drains.started(&up.upstream.name, &drained, now);
    let restored: Vec<String> = plan
        .update
        .iter()
        .filter(|u| u.was == ServerState::Draining && u.state == ServerState::Active)
        .filter(|u| report.updated.contains(&u.server))
        .map(|u| u.server.clone())
        .collect();
    drains.cancelled(&up.upstream.name, &restored);
    (outcome.active, outcome.draining) = after;
    let kind = up.target.kind();
    let changed = !(report.added.is_empty()
        && report.removed.is_empty()
        && report.updated.is_empty()
        && report.drained.is_empty());
    if changed {
        let draining = if report.drained.is_empty() {
            String::new()
        } else {
            format!(", Draining: {}", list(&report.drained))
        };
        tracing::info!(
            upstream = %up.upstream.name,
            group = %outcome.group,
            target = kind,
            added = ?report.added,
            removed = ?report.removed,
            updated = ?report.updated,
            drained = ?report.drained,
            "Updated {} servers of {} for group {} ; Added: {}, Removed: {}, Updated: {}{draining}",
            kind_word(up.upstream.kind),
            up.upstream.name,
            outcome.group,
            list(&report.added),
            list(&report.removed),
            list(&report.updated),
        );
    }
    for e in &report.errors {
        tracing::warn!(
            upstream = %up.upstream.name,
            target = kind,
            "Couldn't update {} servers in {}: {}",
            kind_word(up.upstream.kind),
            target_name(kind),
            e.message
        );
    }
    if !report.errors.is_empty() {
        outcome.error = Some(
            report
                .errors
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        );
    }
    outcome.conditions.extend(report.conditions.iter().copied());
    outcome.report = Some(report);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServerParams;
    use crate::plan::{self, Removal, Update};

    #[test]
    fn states_after_counts_what_simulate_gives() {
        let p = ServerParams {
            max_conns: 0,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            slow_start: Duration::ZERO,
        };
        let o = |id: u64, state| ObservedServer {
            id,
            server: format!("10.0.0.{id}:80"),
            params: Some(p),
            state,
        };
        let observed = vec![
            o(1, ServerState::Active),
            o(2, ServerState::Active),
            o(3, ServerState::Draining),
            o(4, ServerState::Draining),
            o(5, ServerState::Active),
        ];
        let update = |id: u64, state, was| Update {
            id,
            server: format!("10.0.0.{id}:80"),
            params: None,
            state,
            was,
        };
        let plan = Plan {
            add: vec![("10.0.0.9:80".into(), p), ("10.0.0.8:80".into(), p)],
            update: vec![
                update(2, ServerState::Draining, ServerState::Active),
                update(3, ServerState::Active, ServerState::Draining),
                update(2, ServerState::Active, ServerState::Draining),
            ],
            remove: vec![Removal {
                id: 4,
                server: "10.0.0.4:80".into(),
                state: ServerState::Draining,
            }],
        };
        let want = count_states(&plan::simulate(&observed, &plan));
        assert_eq!(states_after(&observed, &plan), want);
        assert_eq!(want, (5, 1));
        assert_eq!(
            states_after(&observed, &Plan::default()),
            count_states(&observed)
        );
    }
}
