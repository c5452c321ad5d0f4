//! Events from Azure Event Grid, delivered through a Storage Queue: what a queue message
//! says and which upstreams it concerns. Pure: no I/O (the queue client is
//! [`queue`]).
//!
//! vmss-sync stays a level-triggered reconciler: an event is a reason to look now, never
//! a substitute for looking. Only an event's type and subject (a resource id) are read,
//! and only to decide which upstreams to reconcile; nothing else in it is trusted.
//!
//! Event Grid writes one event per queue message, as JSON, base64-encoded unless the
//! subscription turned that off; both the Event Grid schema (`eventType`, `subject`,
//! `eventTime`) and CloudEvents 1.0 (`specversion`, `type`, `subject`, `time`) are read.

pub mod consumer;
pub mod queue;

use crate::discovery::Selection;
use base64::Engine;
use std::fmt;

/// The event types vmss-sync reacts to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    /// `Microsoft.Resources.ResourceWriteSuccess`.
    ResourceWriteSuccess,
    /// `Microsoft.Resources.ResourceDeleteSuccess`.
    ResourceDeleteSuccess,
    /// `Microsoft.Resources.ResourceActionSuccess`.
    ResourceActionSuccess,
    /// `Microsoft.ResourceNotifications.Resources.CreatedOrUpdated`.
    CreatedOrUpdated,
    /// `Microsoft.ResourceNotifications.Resources.Deleted`.
    Deleted,
    /// `Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged`.
    AvailabilityStatusChanged,
    /// Any other type (counted and deleted, never acted on).
    Other,
}

impl EventType {
    /// The type as Event Grid names it (case-insensitive).
    pub fn parse(s: &str) -> EventType {
        const KNOWN: [(&str, EventType); 6] = [
            (
                "Microsoft.Resources.ResourceWriteSuccess",
                EventType::ResourceWriteSuccess,
            ),
            (
                "Microsoft.Resources.ResourceDeleteSuccess",
                EventType::ResourceDeleteSuccess,
            ),
            (
                "Microsoft.Resources.ResourceActionSuccess",
                EventType::ResourceActionSuccess,
            ),
            (
                "Microsoft.ResourceNotifications.Resources.CreatedOrUpdated",
                EventType::CreatedOrUpdated,
            ),
            (
                "Microsoft.ResourceNotifications.Resources.Deleted",
                EventType::Deleted,
            ),
            (
                "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged",
                EventType::AvailabilityStatusChanged,
            ),
        ];
        KNOWN
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
            .map_or(EventType::Other, |(_, t)| t.clone())
    }

    /// A short label for metrics and logs (a fixed set of values).
    pub fn label(&self) -> &'static str {
        match self {
            EventType::ResourceWriteSuccess => "resource_write",
            EventType::ResourceDeleteSuccess => "resource_delete",
            EventType::ResourceActionSuccess => "resource_action",
            EventType::CreatedOrUpdated => "created_or_updated",
            EventType::Deleted => "deleted",
            EventType::AvailabilityStatusChanged => "availability_status_changed",
            EventType::Other => "other",
        }
    }
}

/// Which schema the event was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schema {
    /// The Event Grid event schema.
    EventGrid,
    /// CloudEvents 1.0 (JSON).
    CloudEvents,
}

/// The resource an event's subject names, reduced to what routing needs. Names are kept
/// as given; comparisons are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// A scale set, or something under it (a Uniform instance, its NIC, an extension).
    ScaleSet {
        subscription: String,
        resource_group: String,
        name: String,
        /// True when the subject is below the set (an instance, a NIC...), not the set.
        member: bool,
    },
    /// An ordinary VM (a Flexible member or a standalone VM).
    Vm {
        subscription: String,
        resource_group: String,
        name: String,
    },
    /// A network interface (its VM may be in another resource group).
    Nic {
        subscription: String,
        resource_group: String,
        name: String,
    },
    /// A resource group itself.
    ResourceGroup {
        subscription: String,
        resource_group: String,
    },
    /// Anything else (another resource type, or not a resource id).
    Other,
}

impl Resource {
    /// Parses an ARM resource id (a subject). Extension resources after a nested
    /// `/providers/` (`.../virtualMachines/vm1/providers/Microsoft.ResourceHealth/...`)
    /// name their parent.
    pub fn parse(id: &str) -> Resource {
        let parts: Vec<&str> = id.trim().trim_matches('/').split('/').collect();
        let eq = |i: usize, s: &str| parts.get(i).is_some_and(|p| p.eq_ignore_ascii_case(s));
        let at = |i: usize| parts.get(i).copied().filter(|p| !p.is_empty());
        if !eq(0, "subscriptions") || !eq(2, "resourceGroups") {
            return Resource::Other;
        }
        let (Some(sub), Some(rg)) = (at(1), at(3)) else {
            return Resource::Other;
        };
        let (subscription, resource_group) = (sub.to_string(), rg.to_string());
        if parts.len() == 4 {
            return Resource::ResourceGroup {
                subscription,
                resource_group,
            };
        }
        if !eq(4, "providers") {
            return Resource::Other;
        }
        let Some(name) = at(7) else {
            return Resource::Other;
        };
        let name = name.to_string();
        if eq(5, "Microsoft.Compute") && eq(6, "virtualMachineScaleSets") {
            Resource::ScaleSet {
                subscription,
                resource_group,
                name,
                member: parts.len() > 8 && !eq(8, "providers"),
            }
        } else if eq(5, "Microsoft.Compute") && eq(6, "virtualMachines") {
            Resource::Vm {
                subscription,
                resource_group,
                name,
            }
        } else if eq(5, "Microsoft.Network") && eq(6, "networkInterfaces") {
            Resource::Nic {
                subscription,
                resource_group,
                name,
            }
        } else {
            Resource::Other
        }
    }

    fn subscription(&self) -> Option<&str> {
        match self {
            Resource::ScaleSet { subscription, .. }
            | Resource::Vm { subscription, .. }
            | Resource::Nic { subscription, .. }
            | Resource::ResourceGroup { subscription, .. } => Some(subscription),
            Resource::Other => None,
        }
    }

    /// True when `sel` can contain this resource, whatever tags the resources carry (an
    /// event does not say; the reconcile reads them).
    pub fn may_concern(&self, sel: &Selection) -> bool {
        if !self
            .subscription()
            .is_some_and(|s| s.eq_ignore_ascii_case(&sel.subscription))
        {
            return false;
        }
        match self {
            Resource::ScaleSet {
                resource_group,
                name,
                ..
            } => {
                sel.in_groups(resource_group)
                    && (sel.sets.is_empty()
                        || sel
                            .sets
                            .iter()
                            .any(|p| crate::discovery::glob(p, name, true)))
            }
            // A Flexible member (named freely, in its set's group) or a standalone VM.
            Resource::Vm { resource_group, .. }
            | Resource::ResourceGroup { resource_group, .. } => sel.in_groups(resource_group),
            // A NIC may live in another group than its VM: any selection of the
            // subscription may hold it.
            Resource::Nic { .. } => true,
            Resource::Other => false,
        }
    }
}

/// One event, reduced to what vmss-sync reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The event's id (for logs).
    pub id: String,
    /// Its type.
    pub kind: EventType,
    /// The type as written (for logs; `kind` is `Other` for unknown ones).
    pub type_name: String,
    /// The schema it came in.
    pub schema: Schema,
    /// The subject (a resource id), as written.
    pub subject: String,
    /// The resource the subject names.
    pub resource: Resource,
}

impl Event {
    /// True for a change of a scale set's membership or model (a scale-out or scale-in,
    /// an instance created or deleted): new instances take minutes to boot and turn
    /// healthy, so a few follow-up reads are worth it.
    pub fn is_scale_event(&self) -> bool {
        matches!(
            self.resource,
            Resource::ScaleSet { .. } | Resource::Vm { .. }
        ) && matches!(
            self.kind,
            EventType::ResourceWriteSuccess
                | EventType::ResourceDeleteSuccess
                | EventType::ResourceActionSuccess
                | EventType::CreatedOrUpdated
                | EventType::Deleted
        )
    }
}

/// Why a message could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedEvent {
    /// Neither JSON nor base64 of JSON.
    #[error("the message is neither JSON nor base64-encoded JSON")]
    NotJson,
    /// JSON, but no event in it (no type, or not an object).
    #[error("the message holds no event ({0})")]
    NoEvent(&'static str),
}

/// Decodes a queue message's text into its events (one, as Event Grid writes them; an
/// array is accepted too).
pub fn parse_message(text: &str) -> Result<Vec<Event>, MalformedEvent> {
    let text = text.trim();
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(_) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| MalformedEvent::NotJson)?;
            serde_json::from_slice(&bytes).map_err(|_| MalformedEvent::NotJson)?
        }
    };
    match value {
        serde_json::Value::Array(items) if !items.is_empty() => {
            items.iter().map(parse_event).collect()
        }
        serde_json::Value::Array(_) => Err(MalformedEvent::NoEvent("empty array")),
        v => Ok(vec![parse_event(&v)?]),
    }
}

fn parse_event(v: &serde_json::Value) -> Result<Event, MalformedEvent> {
    let obj = v
        .as_object()
        .ok_or(MalformedEvent::NoEvent("not an object"))?;
    let s = |k: &str| obj.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let (schema, type_name) = if obj.contains_key("specversion") {
        (Schema::CloudEvents, s("type"))
    } else {
        (Schema::EventGrid, s("eventType"))
    };
    let type_name = type_name.ok_or(MalformedEvent::NoEvent("no event type"))?;
    let subject = s("subject").unwrap_or_default();
    Ok(Event {
        id: s("id").unwrap_or_default(),
        kind: EventType::parse(&type_name),
        type_name,
        schema,
        resource: Resource::parse(&subject),
        subject,
    })
}

/// The indices of the selections an event may concern (sorted, each once).
pub fn route(event: &Event, selections: &[Selection]) -> Vec<usize> {
    if event.kind == EventType::Other {
        return Vec::new();
    }
    selections
        .iter()
        .enumerate()
        .filter(|(_, s)| event.resource.may_concern(s))
        .map(|(i, _)| i)
        .collect()
}

/// Where a burst of events goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// The selections to reconcile.
    pub selections: std::collections::BTreeSet<Selection>,
    /// True when one of the events changed a scale set's membership (follow-ups due).
    pub scale: bool,
    /// Events that concern nothing selected (or of an unknown type).
    pub ignored: usize,
}

/// Routes every event of a burst.
pub fn route_all(events: &[Event], selections: &[Selection]) -> Routed {
    let mut out = Routed::default();
    for e in events {
        let to = route(e, selections);
        if to.is_empty() {
            out.ignored += 1;
            continue;
        }
        out.scale |= e.is_scale_event();
        out.selections
            .extend(to.into_iter().map(|i| selections[i].clone()));
    }
    out
}

/// True when `selections` hold every one of `all` (not empty): a reconcile of them is a
/// full cycle.
pub fn covers(selections: &std::collections::BTreeSet<Selection>, all: &[Selection]) -> bool {
    !all.is_empty() && all.iter().all(|s| selections.contains(s))
}

/// After a scale event, new instances take minutes to boot and turn healthy: reads at
/// these delays after the event follow them without waiting for the timer.
pub const FOLLOW_UP_AFTER: [std::time::Duration; 5] = [
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(15),
    std::time::Duration::from_secs(30),
    std::time::Duration::from_secs(60),
    std::time::Duration::from_secs(120),
];

/// True when what a read found is still coming up: a set whose capacity is not its
/// instance count yet, or an instance being created or updated, starting, with health
/// still unknown, or without an instance view. Follow-ups go on only while it is.
pub fn still_changing(found: &crate::discovery::Discovered) -> bool {
    use crate::model::{Health, Instance, Power, Provisioning};
    let booting = |i: &Instance| match i.view {
        None => true,
        Some(v) => {
            matches!(
                v.provisioning,
                Some(Provisioning::Creating | Provisioning::Updating)
            ) || v.power == Some(Power::Starting)
                || v.health == Some(Health::Unknown)
        }
    };
    found
        .results
        .values()
        .filter_map(|r| r.as_ref().ok())
        .any(|f| {
            f.sets.iter().any(|s| {
                s.capacity.is_some_and(|c| c != s.instances.len() as u64)
                    || s.instances.iter().any(booting)
            }) || f.vms.iter().any(|v| booting(v))
        })
}

/// Pending follow-up reads: at most one per delay after the latest scale event (a new
/// event replaces the older schedule, merging the selections), so the series is bounded.
#[derive(Debug, Default)]
pub struct FollowUps {
    due: Vec<(tokio::time::Instant, std::collections::BTreeSet<Selection>)>,
}

impl FollowUps {
    /// Schedules the series for `selections` from `now`.
    pub fn schedule(
        &mut self,
        now: tokio::time::Instant,
        selections: &std::collections::BTreeSet<Selection>,
    ) {
        let mut all = selections.clone();
        for (_, s) in self.due.drain(..) {
            all.extend(s);
        }
        self.due = FOLLOW_UP_AFTER
            .iter()
            .map(|d| (now + *d, all.clone()))
            .collect();
    }

    /// Drops every pending follow-up (what they waited for has come up).
    pub fn clear(&mut self) {
        self.due.clear();
    }

    /// When the next one is due.
    pub fn next(&self) -> Option<tokio::time::Instant> {
        self.due.iter().map(|(t, _)| *t).min()
    }

    /// The selections of every follow-up due at `now` (merged), removed from the list.
    pub fn take_due(
        &mut self,
        now: tokio::time::Instant,
    ) -> Option<std::collections::BTreeSet<Selection>> {
        let mut out: Option<std::collections::BTreeSet<Selection>> = None;
        self.due.retain(|(t, s)| {
            if *t <= now {
                out.get_or_insert_with(Default::default)
                    .extend(s.iter().cloned());
                false
            } else {
                true
            }
        });
        out
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ({})", self.type_name, self.subject, self.id)
    }
}

#[cfg(test)]
mod tests;
