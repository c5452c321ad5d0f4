//! Fault injection.
//!
//! Two kinds of faults: those that replace the answer (`Status`, `Delay` then normal,
//! `MalformedBody`, `EmptyList`), and those that serve normally and then damage a
//! successful JSON answer (`DropItems`, `DropField`: a well-formed, plausible but partial
//! read, the kind a client cannot tell from a status code). `FailPage` fails one page of a
//! list. A rule matches a service and a substring of the request path and, with
//! [`Faults::inject_where`], of its decoded query (a Flexible set's member list shares
//! its path with the resource group's VM list and differs only in `$filter`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

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
    /// 200 `{"value": []}` (no `nextLink`) instead of the list: a complete, well-formed and
    /// empty answer. Meant for list operations (ARM lists, whatever they hold).
    EmptyList,
    /// Serve normally, then drop from a 200 list answer's `value` every item whose `id`
    /// (or, without one, `name`) contains `id_contains`, case-insensitively (`""` drops
    /// every item, but keeps `nextLink`). Other answers are left alone.
    DropItems { id_contains: String },
    /// Serve normally, then remove `field` from the `properties` of every item of a 200
    /// list answer's `value` (and of a 200 single resource), e.g. `"instanceView"` from a
    /// VM list read with `$expand=instanceView`. Other answers are left alone.
    DropField { field: String },
}

impl Fault {
    /// True for faults that serve normally and then change the answer ([`Fault::damage`]).
    pub fn damages_answer(&self) -> bool {
        matches!(self, Fault::DropItems { .. } | Fault::DropField { .. })
    }

    /// Applies a damaging fault to a served answer: `status` and JSON `body` as served.
    /// Returns the new body, or None to leave the answer as it is (not a 200 with a JSON
    /// object, or a fault that does not damage answers).
    pub fn damage(&self, status: u16, body: &[u8]) -> Option<Vec<u8>> {
        if status != 200 || !self.damages_answer() {
            return None;
        }
        let mut v: Value = serde_json::from_slice(body).ok()?;
        let obj = v.as_object_mut()?;
        match self {
            Fault::DropItems { id_contains } => {
                let needle = id_contains.to_ascii_lowercase();
                let items = obj.get_mut("value")?.as_array_mut()?;
                items.retain(|item| {
                    let key = item
                        .get("id")
                        .or_else(|| item.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    !key.contains(&needle)
                });
            }
            Fault::DropField { field } => {
                let strip = |item: &mut Value| {
                    if let Some(p) = item.get_mut("properties").and_then(Value::as_object_mut) {
                        p.remove(field.as_str());
                    }
                };
                match obj.get_mut("value").and_then(Value::as_array_mut) {
                    Some(items) => items.iter_mut().for_each(strip),
                    None => strip(&mut v),
                }
            }
            _ => return None,
        }
        serde_json::to_vec(&v).ok()
    }
}

#[derive(Debug, Clone)]
struct Rule {
    service: Service,
    needle: String,
    query: String,
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
        self.inject_where(service, path_contains, "", fault, times);
    }

    /// As [`Faults::inject`], for requests whose path contains `path_contains` and whose
    /// query, percent-decoded (`+` as a space) and lower-cased, contains `query_contains`
    /// (`""` matches every query). For example a Flexible set's member list:
    /// path `/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines`, query
    /// `virtualmachinescaleset/id' eq '/subscriptions/…/virtualmachinescalesets/web'`.
    pub fn inject_where(
        &self,
        service: Service,
        path_contains: &str,
        query_contains: &str,
        fault: Fault,
        times: usize,
    ) {
        if times == 0 {
            return;
        }
        lock(&self.rules).push(Rule {
            service,
            needle: path_contains.to_ascii_lowercase(),
            query: query_contains.to_ascii_lowercase(),
            fault,
            remaining: times,
        });
    }

    /// Removes every rule.
    pub fn clear(&self) {
        lock(&self.rules).clear();
    }

    /// Takes the first matching non-page fault, if any.
    pub(crate) fn take(&self, service: Service, path: &str, query: &str) -> Option<Fault> {
        let path = path.to_ascii_lowercase();
        let query = decoded(query);
        let mut rules = lock(&self.rules);
        let idx = rules.iter().position(|r| {
            r.service == service
                && !matches!(r.fault, Fault::FailPage { .. })
                && r.matches(&path, &query)
        })?;
        Some(consume(&mut rules, idx))
    }

    /// For a list operation serving page `page`: the status of a matching FailPage rule.
    pub(crate) fn take_page(
        &self,
        service: Service,
        path: &str,
        query: &str,
        page: usize,
    ) -> Option<u16> {
        let path = path.to_ascii_lowercase();
        let query = decoded(query);
        let mut rules = lock(&self.rules);
        let idx = rules.iter().position(|r| {
            r.service == service
                && matches!(r.fault, Fault::FailPage { page: p, .. } if p == page)
                && r.matches(&path, &query)
        })?;
        match consume(&mut rules, idx) {
            Fault::FailPage { status, .. } => Some(status),
            _ => None,
        }
    }
}

impl Rule {
    fn matches(&self, path: &str, query: &str) -> bool {
        path.contains(&self.needle) && query.contains(&self.query)
    }
}

/// A raw query string percent-decoded and lower-cased, its pairs joined by `&`.
fn decoded(query: &str) -> String {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
        .to_ascii_lowercase()
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
