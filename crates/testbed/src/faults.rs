//! Fault injection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::util::lock;
use crate::Service;

/// A misbehaviour to inject into one of the fakes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with the service's own error body: ARM `{"error":{"code","message"}}`;
    /// NGINX `{"error":{"status","text","code"},...}`; Entra ID `{"error":code,
    /// "error_description":message,...}`; IMDS/App Service `{"error":code,
    /// "error_description":message}`. Adds `Retry-After` when `retry_after` is set.
    Status {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    /// Sleep, then serve normally (use for client timeouts).
    Delay(Duration),
    /// 200 with a truncated, invalid JSON body.
    MalformedBody,
    /// For list operations: page `page` (0-based) answers `status` with an error body;
    /// other pages are normal. Only requests for that page count against `times`.
    FailPage { page: usize, status: u16 },
}

#[derive(Debug, Clone)]
struct Rule {
    service: Service,
    needle: String,
    fault: Fault,
    remaining: usize,
}

/// Cheap, cloneable handle to the fault rules of a testbed.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl Faults {
    /// Matches requests to `service` whose path contains `path_contains` (case-insensitive;
    /// "" matches everything) and fires for the next `times` matching requests
    /// (`usize::MAX` = forever). Rules are tried in the order they were injected.
    pub fn inject(&self, service: Service, path_contains: &str, fault: Fault, times: usize) {
        if times == 0 {
            return;
        }
        lock(&self.rules).push(Rule {
            service,
            needle: path_contains.to_ascii_lowercase(),
            fault,
            remaining: times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// Takes the first matching non-page fault, if any.
    pub(crate) fn take(&self, service: Service, path: &str) -> Option<Fault> {
        let path = path.to_ascii_lowercase();
        let mut rules = lock(&self.rules);
        let idx = rules.iter().position(|r| {
            r.service == service
                && !matches!(r.fault, Fault::FailPage { .. })
                && path.contains(&r.needle)
        })?;
        Some(consume(&mut rules, idx))
    }

    /// For a list operation serving page `page`: the status of a matching FailPage rule.
    pub(crate) fn take_page(&self, service: Service, path: &str, page: usize) -> Option<u16> {
        let path = path.to_ascii_lowercase();
        let mut rules = lock(&self.rules);
        let idx = rules.iter().position(|r| {
            r.service == service
                && matches!(r.fault, Fault::FailPage { page: p, .. } if p == page)
                && path.contains(&r.needle)
        })?;
        match consume(&mut rules, idx) {
            Fault::FailPage { status, .. } => Some(status),
            _ => None,
        }
    }
}

fn consume(rules: &mut Vec<Rule>, idx: usize) -> Fault {
    let rule = &mut rules[idx];
    let fault = rule.fault.clone();
    if rule.remaining != usize::MAX {
        rule.remaining -= 1;
    }
    if rule.remaining == 0 {
        rules.remove(idx);
    }
    fault
}
