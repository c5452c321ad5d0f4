//! Applying: the plans' writes grouped by target, each behind the write gate.

use super::cycle::{Prepared, Reconciler};
use crate::plan::Plan;
use crate::target::{ApplyReport, Permanence, Target, TargetError, UpstreamRef};
use std::sync::Arc;

/// Says whether this replica may write to targets right now (leader election). Checked
/// when an upstream is planned and again just before its writes (or its target's batch);
/// a closed gate means no write.
pub type WriteGate = Arc<dyn Fn() -> bool + Send + Sync>;

impl Reconciler {
    /// Applies every prepared plan that has writes; returns the reports by job index.
    /// The plans are moved out of `prepared` for their writes and put back afterwards
    /// (a cold start's plans add every server: they are not held twice).
    pub(super) async fn apply_all(
        &self,
        prepared: &mut [(usize, Prepared)],
        limit: &Arc<tokio::sync::Semaphore>,
    ) -> Vec<(usize, ApplyReport)> {
        // Group the writing jobs by target (the same `Arc`), keeping their order.
        let mut groups: Vec<(Arc<dyn Target>, Vec<Write>)> = Vec::new();
        for (index, p) in prepared.iter_mut() {
            if !p.write {
                continue;
            }
            let Some(plan) = p.outcome.plan.take() else {
                continue;
            };
            let target = Arc::clone(&p.spec.target);
            let item = (*index, p.spec.upstream.clone(), plan);
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &target)) {
                Some((_, items)) => items.push(item),
                None => groups.push((target, vec![item])),
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (target, items) in groups {
            if target.batches() {
                let limit = Arc::clone(limit);
                let gate = self.gate.clone();
                tasks.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    let (indexes, batch): (Vec<usize>, Vec<(UpstreamRef, Plan)>) =
                        items.into_iter().map(|(i, u, p)| (i, (u, p))).unzip();
                    let mut reports = if gate_open(gate.as_ref()) {
                        target.apply_batch(&batch).await
                    } else {
                        indexes.iter().map(|_| failed_report(NOT_LEADER)).collect()
                    };
                    reports.resize_with(indexes.len(), || {
                        failed_report("the target gave no report for this upstream")
                    });
                    indexes
                        .into_iter()
                        .zip(reports)
                        .zip(batch.into_iter().map(|(_, p)| p))
                        .map(|((i, r), p)| (i, r, p))
                        .collect::<Vec<_>>()
                });
            } else {
                for (index, upstream, plan) in items {
                    let target = Arc::clone(&target);
                    let limit = Arc::clone(limit);
                    let gate = self.gate.clone();
                    tasks.spawn(async move {
                        let _permit = limit.acquire_owned().await;
                        let report = if gate_open(gate.as_ref()) {
                            target.apply(&upstream, &plan).await
                        } else {
                            failed_report(NOT_LEADER)
                        };
                        vec![(index, report, plan)]
                    });
                }
            }
        }
        let mut plans: std::collections::BTreeMap<usize, Plan> = Default::default();
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(reports) => {
                    for (index, report, plan) in reports {
                        plans.insert(index, plan);
                        out.push((index, report));
                    }
                }
                Err(e) => tracing::error!(error = %e, "A target's writes ended abnormally."),
            }
        }
        // The plans go back into their outcomes (what the report and the logs say).
        for (index, p) in prepared.iter_mut() {
            if let Some(plan) = plans.remove(index) {
                p.outcome.plan = Some(plan);
            }
        }
        out
    }
}

/// Why writes were not made when the gate is closed.
pub(super) const NOT_LEADER: &str = "not written: this replica is not the leader";

/// True when there is no gate or it is open.
pub(super) fn gate_open(gate: Option<&WriteGate>) -> bool {
    gate.is_none_or(|g| g())
}

/// The report of writes that were not attempted, for a transient reason.
fn failed_report(message: &str) -> ApplyReport {
    ApplyReport {
        errors: vec![TargetError {
            message: message.to_string(),
            permanence: Permanence::Transient,
        }],
        ..ApplyReport::default()
    }
}

/// One upstream's writes: its job index, the upstream and the plan.
type Write = (usize, UpstreamRef, Plan);
