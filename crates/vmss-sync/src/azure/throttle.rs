//! The read budget: every ARM read waits here first.
//!
//! ARM meters reads per subscription (and per service principal) with a token bucket: 250
//! reads, refilled at 25 per second (learn.microsoft.com, "Throttling Resource Manager
//! requests", regional token bucket model). Compute meters its own policies on top and
//! reports what is left in `x-ms-ratelimit-remaining-resource`
//! (`Microsoft.Compute/HighCostGet3Min;107,Microsoft.Compute/HighCostGet30Min;1115`).
//!
//! [`Throttle`] keeps one bucket per subscription, shaped like ARM's, and:
//!
//! - makes every read wait for a token (reads queue in order; none is refused);
//! - lowers its own count to what ARM says is left
//!   (`x-ms-ratelimit-remaining-subscription-reads`), so other clients of the same
//!   subscription are accounted for and the daemon slows down before ARM says 429;
//! - paces Compute reads once one of Compute's policies runs low: no faster than that
//!   policy refills (its window divided by the highest count seen for it);
//! - after a 429, holds every read of the subscription (ARM throttling) or of the
//!   provider (a resource provider's throttling) until `Retry-After` has passed.
//!
//! Nothing here fails: the budget only ever delays.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many reads a subscription may spend: a bucket of `burst`, refilled at
/// `per_second`. The defaults are ARM's own (250 and 25).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReadBudget {
    /// Bucket size.
    pub burst: u32,
    /// Refill rate, reads per second.
    pub per_second: f64,
}

impl Default for ReadBudget {
    fn default() -> Self {
        ReadBudget {
            burst: 250,
            per_second: 25.0,
        }
    }
}

impl ReadBudget {
    /// How long `reads` reads take at the refill rate, once the bucket is empty.
    pub fn time_for(&self, reads: u64) -> Duration {
        Duration::from_secs_f64(reads as f64 / self.per_second.max(0.001))
    }
}

/// Reads kept in reserve below what ARM says is left.
const ARM_SAFETY: f64 = 5.0;
/// A Compute policy counts as running low at or below this many calls left…
const COMPUTE_LOW: u64 = 5;
/// …or at or below this fraction of the highest count seen for it.
const COMPUTE_LOW_FRACTION: f64 = 0.10;
/// Under pressure (health reads are put off) at or below this fraction.
const COMPUTE_PRESSURE_FRACTION: f64 = 0.25;

/// What one Compute policy had left, as last reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Policy {
    remaining: u64,
    highest: u64,
    window: Duration,
}

impl Policy {
    fn low(&self) -> bool {
        self.remaining <= COMPUTE_LOW
            || (self.remaining as f64) <= self.highest as f64 * COMPUTE_LOW_FRACTION
    }

    fn pressed(&self) -> bool {
        self.low() || (self.remaining as f64) <= self.highest as f64 * COMPUTE_PRESSURE_FRACTION
    }

    /// The mean time between refills of this policy's bucket.
    fn refill_interval(&self) -> Duration {
        self.window / u32::try_from(self.highest.max(1)).unwrap_or(u32::MAX)
    }
}

struct Sub {
    tokens: f64,
    at: Instant,
    /// A 429 from ARM itself: nothing of this subscription before then.
    blocked_until: Option<Instant>,
    /// A 429 from one resource provider (lower-cased namespace): nothing of it before then.
    provider_blocked: HashMap<String, Instant>,
    /// Compute's policies by name.
    compute: BTreeMap<String, Policy>,
    /// Which policies each kind of request was seen to count against.
    classes: HashMap<String, Vec<String>>,
    /// Earliest start of the next read counting against a policy, while it runs low (by
    /// policy, not by kind of read: kinds sharing a policy share its pace).
    next: HashMap<String, Instant>,
}

impl Sub {
    fn new(budget: &ReadBudget, now: Instant) -> Sub {
        Sub {
            tokens: f64::from(budget.burst),
            at: now,
            blocked_until: None,
            provider_blocked: HashMap::new(),
            compute: BTreeMap::new(),
            classes: HashMap::new(),
            next: HashMap::new(),
        }
    }

    fn refill(&mut self, budget: &ReadBudget, now: Instant) {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * budget.per_second;
        self.tokens = (self.tokens + gained).min(f64::from(budget.burst));
        self.at = now;
    }

    /// The policies of a kind of request that run low, each with its refill interval.
    fn pace(&self, class: &str) -> Vec<(String, Duration)> {
        let Some(names) = self.classes.get(class) else {
            return Vec::new();
        };
        names
            .iter()
            .filter_map(|name| Some((name, self.compute.get(name)?)))
            .filter(|(_, p)| p.low())
            .map(|(name, p)| (name.clone(), p.refill_interval()))
            .collect()
    }
}

/// What a response said about the budget.
#[derive(Clone, Debug, Default)]
pub struct Observed<'a> {
    /// HTTP status.
    pub status: u16,
    /// `x-ms-ratelimit-remaining-subscription-reads`.
    pub remaining_reads: Option<u64>,
    /// `x-ms-ratelimit-remaining-resource` (raw).
    pub remaining_resource: Option<&'a str>,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
}

/// Per-subscription read budgets. Shared by the clones of one `ArmClient`.
pub struct Throttle {
    budget: ReadBudget,
    subs: Mutex<HashMap<String, Sub>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("budget", &self.budget)
            .finish()
    }
}

/// The subscription and the provider namespace (lower-cased) an ARM path addresses.
pub fn scope_of(path: &str) -> (String, String) {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let after = |name: &str| {
        segs.iter()
            .position(|s| s.eq_ignore_ascii_case(name))
            .and_then(|i| segs.get(i + 1))
            .map(|s| s.to_ascii_lowercase())
            .unwrap_or_default()
    };
    (after("subscriptions"), after("providers"))
}

/// `Microsoft.Compute/HighCostGet3Min;107,Microsoft.Compute/HighCostGet30Min;1115` →
/// `[("Microsoft.Compute/HighCostGet3Min", 107, 180 s), …]`. Malformed entries are skipped.
pub fn parse_remaining_resource(v: &str) -> Vec<(String, u64, Duration)> {
    v.split(',')
        .filter_map(|entry| {
            let (name, count) = entry.trim().rsplit_once(';')?;
            let count: u64 = count.trim().parse().ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| (name.to_string(), count, policy_window(name)))
        })
        .collect()
}

/// The window a policy name states (`…3Min`, `…30Min`, `…1Hour`); one minute otherwise.
fn policy_window(name: &str) -> Duration {
    let lower = name.to_ascii_lowercase();
    for (suffix, unit) in [("min", 60u64), ("hour", 3600), ("sec", 1)] {
        if let Some(head) = lower.strip_suffix(suffix) {
            let digits: String = head
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            if let Ok(n) = digits.parse::<u64>() {
                return Duration::from_secs(n.max(1) * unit);
            }
        }
    }
    Duration::from_secs(60)
}

impl Throttle {
    /// A throttle with one `budget` per subscription.
    pub fn new(budget: ReadBudget) -> Throttle {
        let budget = ReadBudget {
            burst: budget.burst.max(1),
            per_second: if budget.per_second.is_finite() && budget.per_second > 0.0 {
                budget.per_second
            } else {
                ReadBudget::default().per_second
            },
        };
        Throttle {
            budget,
            subs: Mutex::new(HashMap::new()),
        }
    }

    /// The budget in force.
    pub fn budget(&self) -> ReadBudget {
        self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Sub>> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a read from the subscription's bucket and returns how long the caller must
    /// wait before sending it (zero when a token was there). `class` names the kind of
    /// request (operation, and whether it reads instance views): kinds are paced by the
    /// provider policies they were seen to count against.
    pub fn reserve(&self, sub: &str, provider: &str, class: &str, now: Instant) -> Duration {
        let budget = self.budget;
        let mut subs = self.lock();
        let s = subs
            .entry(sub.to_string())
            .or_insert_with(|| Sub::new(&budget, now));
        s.refill(&budget, now);
        s.tokens -= 1.0;
        let mut ready = now;
        if s.tokens < 0.0 {
            ready += Duration::from_secs_f64(-s.tokens / budget.per_second);
        }
        if let Some(b) = s.blocked_until {
            if b > now {
                ready = ready.max(b);
            } else {
                s.blocked_until = None;
            }
        }
        if let Some(b) = s.provider_blocked.get(provider).copied() {
            if b > now {
                ready = ready.max(b);
            } else {
                s.provider_blocked.remove(provider);
            }
        }
        // Every read counting against a low policy takes the next slot of that policy,
        // whatever its kind: Compute counts them together.
        let low = s.pace(class);
        if !low.is_empty() {
            let slot = low
                .iter()
                .filter_map(|(name, _)| s.next.get(name).copied())
                .fold(ready, Instant::max);
            for (name, pace) in low {
                s.next.insert(name, slot + pace);
            }
            ready = slot;
        }
        ready.saturating_duration_since(now)
    }

    /// Waits for a read of `sub` at `provider`; returns how long it waited.
    pub async fn acquire(&self, sub: &str, provider: &str, class: &str) -> Duration {
        let wait = self.reserve(sub, provider, class, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Learns from a response to a request of kind `class`.
    pub fn observe(
        &self,
        sub: &str,
        provider: &str,
        class: &str,
        seen: &Observed<'_>,
        now: Instant,
    ) {
        let budget = self.budget;
        let mut subs = self.lock();
        let s = subs
            .entry(sub.to_string())
            .or_insert_with(|| Sub::new(&budget, now));
        s.refill(&budget, now);
        if let Some(r) = seen.remaining_reads {
            s.tokens = s.tokens.min(r as f64 - ARM_SAFETY);
        }
        if let Some(v) = seen.remaining_resource {
            let mut names = Vec::new();
            for (name, remaining, window) in parse_remaining_resource(v) {
                let p = s.compute.entry(name.clone()).or_insert(Policy {
                    remaining,
                    highest: remaining,
                    window,
                });
                p.remaining = remaining;
                p.highest = p.highest.max(remaining);
                names.push(name);
            }
            if !names.is_empty() {
                s.classes.insert(class.to_string(), names);
            }
        }
        if seen.status == 429 {
            let until = now + seen.retry_after.unwrap_or(Duration::from_secs(1));
            // ARM's own throttling leaves the subscription's count at (or near) zero;
            // otherwise the provider is throttling and only its reads wait.
            let arm_level = seen
                .remaining_reads
                .is_none_or(|r| (r as f64) <= ARM_SAFETY);
            if arm_level || provider.is_empty() {
                s.blocked_until = Some(s.blocked_until.map_or(until, |b| b.max(until)));
                s.tokens = s.tokens.min(0.0);
            } else {
                let b = s
                    .provider_blocked
                    .entry(provider.to_string())
                    .or_insert(until);
                *b = (*b).max(until);
            }
        }
    }

    /// True while the subscription's Compute policies or its read bucket run low: reads
    /// that can wait (instance views) should.
    pub fn under_pressure(&self, sub: &str) -> bool {
        let budget = self.budget;
        let now = Instant::now();
        let mut subs = self.lock();
        let Some(s) = subs.get_mut(sub) else {
            return false;
        };
        s.refill(&budget, now);
        s.blocked_until.is_some_and(|b| b > now)
            || s.provider_blocked.values().any(|b| *b > now)
            || s.compute.values().any(Policy::pressed)
            || s.tokens < f64::from(budget.burst) * 0.2
    }

    /// The lowest count left among the subscription's Compute policies, with its name.
    pub fn lowest_compute_policy(&self, sub: &str) -> Option<(String, u64)> {
        let subs = self.lock();
        subs.get(sub)?
            .compute
            .iter()
            .min_by_key(|(_, p)| p.remaining)
            .map(|(n, p)| (n.clone(), p.remaining))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(burst: u32, per_second: f64) -> ReadBudget {
        ReadBudget { burst, per_second }
    }

    #[test]
    fn a_full_bucket_lets_a_burst_through_then_paces_at_the_refill_rate() {
        let t = Throttle::new(budget(3, 10.0));
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(
                t.reserve("s", "microsoft.network", "net", now),
                Duration::ZERO
            );
        }
        assert_eq!(
            t.reserve("s", "microsoft.network", "net", now),
            Duration::from_millis(100)
        );
        assert_eq!(
            t.reserve("s", "microsoft.network", "net", now),
            Duration::from_millis(200)
        );
        // Subscriptions have their own buckets.
        assert_eq!(
            t.reserve("other", "microsoft.network", "net", now),
            Duration::ZERO
        );
    }

    #[test]
    fn what_arm_says_is_left_lowers_the_count() {
        let t = Throttle::new(budget(250, 25.0));
        let now = Instant::now();
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::ZERO
        );
        t.observe(
            "s",
            "microsoft.compute",
            "views",
            &Observed {
                status: 200,
                remaining_reads: Some(5),
                ..Observed::default()
            },
            now,
        );
        // Zero left after the safety margin: the next read waits for one refill.
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::from_millis(40)
        );
    }

    #[test]
    fn arm_429_holds_the_whole_subscription_for_retry_after() {
        let t = Throttle::new(budget(250, 25.0));
        let now = Instant::now();
        t.observe(
            "s",
            "microsoft.network",
            "net",
            &Observed {
                status: 429,
                remaining_reads: Some(0),
                retry_after: Some(Duration::from_secs(7)),
                ..Observed::default()
            },
            now,
        );
        assert!(t.reserve("s", "microsoft.compute", "views", now) >= Duration::from_secs(7));
        assert!(t.under_pressure("s"));
    }

    #[test]
    fn provider_429_holds_only_that_provider() {
        let t = Throttle::new(budget(250, 25.0));
        let now = Instant::now();
        t.observe(
            "s",
            "microsoft.compute",
            "views",
            &Observed {
                status: 429,
                remaining_reads: Some(200),
                retry_after: Some(Duration::from_secs(30)),
                ..Observed::default()
            },
            now,
        );
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::from_secs(30)
        );
        assert_eq!(
            t.reserve("s", "microsoft.network", "net", now),
            Duration::ZERO
        );
    }

    #[test]
    fn a_low_compute_policy_paces_compute_reads_at_its_refill_rate() {
        let t = Throttle::new(budget(250, 25.0));
        let now = Instant::now();
        let seen = |v: &'static str| Observed {
            status: 200,
            remaining_reads: Some(240),
            remaining_resource: Some(v),
            retry_after: None,
        };
        t.observe(
            "s",
            "microsoft.compute",
            "views",
            &seen("Microsoft.Compute/HighCostGet3Min;180,Microsoft.Compute/HighCostGet30Min;1800"),
            now,
        );
        assert!(!t.under_pressure("s"));
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::ZERO
        );
        t.observe(
            "s",
            "microsoft.compute",
            "views",
            &seen("Microsoft.Compute/HighCostGet3Min;4,Microsoft.Compute/HighCostGet30Min;1700"),
            now,
        );
        assert!(t.under_pressure("s"));
        // 180 per 3 minutes: one per second.
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::ZERO
        );
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::from_secs(1)
        );
        assert_eq!(
            t.reserve("s", "microsoft.network", "net", now),
            Duration::ZERO
        );
        // Compute reads of another kind (not seen to count against that policy) go on.
        assert_eq!(
            t.reserve("s", "microsoft.compute", "gets", now),
            Duration::ZERO
        );
        // Another kind seen to count against the same policy shares its pace: Compute
        // counts both kinds against one bucket.
        t.observe(
            "s",
            "microsoft.compute",
            "flex views",
            &seen("Microsoft.Compute/HighCostGet3Min;3,Microsoft.Compute/HighCostGet30Min;1699"),
            now,
        );
        assert_eq!(
            t.reserve("s", "microsoft.compute", "flex views", now),
            Duration::from_secs(2)
        );
        assert_eq!(
            t.reserve("s", "microsoft.compute", "views", now),
            Duration::from_secs(3)
        );
        assert_eq!(
            t.lowest_compute_policy("s"),
            Some(("Microsoft.Compute/HighCostGet3Min".to_string(), 3))
        );
    }

    #[test]
    fn remaining_resource_headers_parse_with_their_windows() {
        assert_eq!(
            parse_remaining_resource(
                "Microsoft.Compute/HighCostGet3Min;107, Microsoft.Compute/HighCostGet30Min;1115,bad,x;y"
            ),
            vec![
                (
                    "Microsoft.Compute/HighCostGet3Min".to_string(),
                    107,
                    Duration::from_secs(180)
                ),
                (
                    "Microsoft.Compute/HighCostGet30Min".to_string(),
                    1115,
                    Duration::from_secs(1800)
                ),
            ]
        );
        assert_eq!(
            policy_window("Microsoft.Compute/VmssQueuedVMOperations"),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn paths_name_their_subscription_and_provider() {
        assert_eq!(
            scope_of("/prefix/subscriptions/SUB/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines"),
            ("sub".to_string(), "microsoft.compute".to_string())
        );
        assert_eq!(scope_of("/x"), (String::new(), String::new()));
    }
}
