//! The terminate window: whether a scale-in can be lossless.
//!
//! With the scale set's terminate notification, Azure delays the deletion of a leaving
//! instance by `notBeforeTimeout` (5 to 15 minutes) and, as we infer, shows it in
//! provisioning state `Deleting` meanwhile; vmss-sync drains it as soon as an instance
//! view shows that state. The drain must end before the VM goes away: it starts at most
//! `health_interval + sync_interval` after the instance turned `Deleting` (the next
//! instance-view read, at the next cycle) and lasts `drain_timeout`. Without a terminate
//! notification there is no window: the instance is gone before any cycle sees it leave.
//!
//! `needs` and `check` are pure; [`Warnings`] says each problem once per scale set.

use crate::model::{ScaleSetKey, ScaleSetSnapshot};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// What one upstream's drain of a leaving instance needs from the terminate window.
pub fn needs(
    drain_timeout: Duration,
    health_interval: Duration,
    sync_interval: Duration,
) -> Duration {
    drain_timeout + health_interval + sync_interval
}

/// Why a scale-in of a set may lose requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The set has no terminate notification: leaving instances vanish at once.
    NoNotification,
    /// The notification's delay is shorter than the drain needs.
    TooShort {
        /// The set's `notBeforeTimeout`.
        delay: Duration,
        /// `drain_timeout + health_interval + sync_interval`.
        needs: Duration,
    },
}

/// The problem of one set whose upstreams drain for up to `needs` (None: fine).
pub fn check(set: &ScaleSetSnapshot, needs: Duration) -> Option<Problem> {
    match set.terminate_delay {
        None => Some(Problem::NoNotification),
        Some(delay) if delay < needs => Some(Problem::TooShort { delay, needs }),
        Some(_) => None,
    }
}

/// What to say about a problem of the set `key`.
pub fn message(key: &ScaleSetKey, problem: &Problem) -> String {
    match problem {
        Problem::NoNotification => format!(
            "Scale set {key} has no terminate notification: an instance leaving in a \
             scale-in is deleted before vmss-sync can drain it, and requests in flight to it \
             fail. Enable it (az vmss update --resource-group {} --name {} \
             --enable-terminate-notification true --terminate-notification-time 5) so \
             leaving instances are drained while they still serve.",
            key.resource_group, key.name
        ),
        Problem::TooShort { delay, needs } => format!(
            "Scale set {key}: the terminate notification delays a leaving instance's \
             deletion by {} s, shorter than the {} s its drain needs (drain_timeout + \
             health_interval + sync_interval): requests may fail in a scale-in. Lengthen \
             the delay (az vmss update ... --terminate-notification-time <minutes>, at most \
             15) or shorten drain_timeout, health_interval or sync_interval.",
            delay.as_secs(),
            needs.as_secs()
        ),
    }
}

/// Says each set's terminate-window problem once (again when it changes, and after it
/// was fixed and came back).
#[derive(Default)]
pub struct Warnings(Mutex<BTreeMap<ScaleSetKey, Problem>>);

impl Warnings {
    /// Checks every set against the largest need of the upstreams that select it, logs
    /// new problems, forgets fixed ones, and returns the messages logged.
    pub fn check<'a>(
        &self,
        sets: impl IntoIterator<Item = (&'a ScaleSetSnapshot, Duration)>,
    ) -> Vec<String> {
        let mut worst: BTreeMap<&ScaleSetKey, (&ScaleSetSnapshot, Duration)> = BTreeMap::new();
        for (set, need) in sets {
            let e = worst.entry(&set.key).or_insert((set, need));
            e.1 = e.1.max(need);
        }
        let mut said = Vec::new();
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (key, (set, need)) in worst {
            match check(set, need) {
                Some(p) => {
                    if known.get(key) != Some(&p) {
                        let msg = message(key, &p);
                        tracing::warn!(scale_set = %key, "{msg}");
                        said.push(msg);
                        known.insert(key.clone(), p);
                    }
                }
                None => {
                    known.remove(key);
                }
            }
        }
        said
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Orchestration;
    use proptest::prelude::*;

    fn set(name: &str, delay: Option<u64>) -> ScaleSetSnapshot {
        ScaleSetSnapshot {
            key: ScaleSetKey::new("sub", "rg", name),
            capacity: Some(1),
            orchestration: Orchestration::Uniform,
            reports_health: false,
            tags: BTreeMap::new(),
            location: "eastus".into(),
            terminate_delay: delay.map(Duration::from_secs),
            instances: Vec::new(),
            held: None,
        }
    }

    #[test]
    fn no_notification_and_a_short_delay_are_problems_a_long_one_is_not() {
        let need = needs(
            Duration::from_secs(30),
            Duration::from_secs(15),
            Duration::from_secs(5),
        );
        assert_eq!(need, Duration::from_secs(50));
        assert_eq!(check(&set("a", None), need), Some(Problem::NoNotification));
        assert_eq!(
            check(&set("a", Some(40)), need),
            Some(Problem::TooShort {
                delay: Duration::from_secs(40),
                needs: need
            })
        );
        assert_eq!(check(&set("a", Some(50)), need), None);
        assert_eq!(check(&set("a", Some(300)), need), None);
    }

    #[test]
    fn messages_name_the_set_the_figures_and_the_fix() {
        let key = ScaleSetKey::new("sub", "rg", "web");
        let none = message(&key, &Problem::NoNotification);
        assert!(none.contains("rg/web"), "{none}");
        assert!(
            none.contains("az vmss update --resource-group rg --name web --enable-terminate-notification true"),
            "{none}"
        );
        let short = message(
            &key,
            &Problem::TooShort {
                delay: Duration::from_secs(300),
                needs: Duration::from_secs(330),
            },
        );
        assert!(
            short.contains("300 s") && short.contains("330 s"),
            "{short}"
        );
    }

    #[test]
    fn warnings_are_said_once_per_set_again_when_they_change_or_come_back() {
        let w = Warnings::default();
        let (a, b) = (set("a", None), set("b", Some(300)));
        let need = Duration::from_secs(60);
        assert_eq!(w.check([(&a, need), (&b, need)]).len(), 1);
        assert!(w.check([(&a, need), (&b, need)]).is_empty(), "said once");
        // b's need grows past its delay with a second upstream: a new problem.
        let said = w.check([(&a, need), (&b, need), (&b, Duration::from_secs(400))]);
        assert_eq!(said.len(), 1);
        assert!(said[0].contains("rg/b"), "{said:?}");
        // a fixed, then broken again: said again.
        let fixed = set("a", Some(600));
        assert!(w.check([(&fixed, need)]).is_empty());
        assert_eq!(w.check([(&a, need)]).len(), 1);
    }

    proptest! {
        #[test]
        fn a_problem_exactly_when_the_delay_is_missing_or_shorter_than_the_need(
            delay in proptest::option::of(0u64..2000),
            drain in 0u64..1000,
            health in 0u64..600,
            sync in 0u64..600,
        ) {
            let need = needs(
                Duration::from_secs(drain),
                Duration::from_secs(health),
                Duration::from_secs(sync),
            );
            let p = check(&set("x", delay), need);
            match delay {
                None => prop_assert_eq!(p, Some(Problem::NoNotification)),
                Some(d) if d < drain + health + sync => {
                    let short = matches!(p, Some(Problem::TooShort { .. }));
                    prop_assert!(short, "{:?}", p);
                }
                Some(_) => prop_assert_eq!(p, None),
            }
        }
    }
}
