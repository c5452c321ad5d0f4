//! Keys that say where an upstream's servers come from and when they are registered:
//! `virtual_machine_scale_set` (a name, a list, or globs), per-upstream `subscription_id`
//! and `resource_group_name`, `tags`, `port_tag`, `register_when` and `drain_timeout`; and
//! the top-level `health_interval`, `arm_read_burst` and `arm_reads_per_second`. A child
//! module of `schema`, so it parses with the same context, slots and messages.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::{SourceConfig, TagsConfig};
use super::yaml::{Node, NodeKind, Pos};
use super::{field, parse_int, Cx, Field, Section, Slot};
use super::{parse_go_duration, GoDurationError};
use crate::model::RegisterWhen;

/// Default `drain_timeout` (see the README for why).
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `health_interval`.
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = crate::discovery::DEFAULT_HEALTH_INTERVAL;
/// ARM's own read bucket.
pub(crate) const DEFAULT_ARM_READ_BURST: u32 = 250;
/// ARM's own refill rate.
pub(crate) const DEFAULT_ARM_READS_PER_SECOND: f64 = 25.0;

const REGISTER_WHEN: &[(&str, RegisterWhen)] = &[
    ("running", RegisterWhen::Running),
    ("healthy", RegisterWhen::Healthy),
    ("always", RegisterWhen::Always),
];

/// The upstream keys of this module, as parsed.
#[derive(Default)]
pub(super) struct SourceBuilder {
    pub scale_sets: Slot<Vec<String>>,
    pub subscription_id: Slot<String>,
    pub resource_groups: Slot<Vec<String>>,
    pub tags: Slot<TagsConfig>,
    pub port_tag: Slot<String>,
    pub register_when: Slot<RegisterWhen>,
    pub drain_timeout: Slot<Duration>,
}

/// The top-level keys of this module, as parsed.
#[derive(Default)]
pub(super) struct TopSourceBuilder {
    pub health_interval: Slot<Duration>,
    pub arm_read_burst: Slot<u32>,
    pub arm_reads_per_second: Slot<f64>,
}

/// The top-level keys, validated.
pub(super) struct TopSources {
    pub health_interval: Duration,
    pub arm_read_burst: u32,
    pub arm_reads_per_second: f64,
}

#[derive(Default)]
struct TagsBuilder {
    allow: Slot<BTreeMap<String, String>>,
    deny: Slot<BTreeMap<String, String>>,
}

#[rustfmt::skip]
const TAGS_FIELDS: &[Field<TagsBuilder>] = &[
    field("allow", |cx, n, p, b| b.allow = cx.tag_map(n, p)),
    field("deny", |cx, n, p, b| b.deny = cx.tag_map(n, p)),
];

/// A scale set name or glob, a resource group or a tag name: it becomes part of an ARM
/// path or is compared with ARM's names, so it may not hold what could change a path.
fn check_name(s: &str, what: &str) -> Result<(), String> {
    if s.chars()
        .any(|c| matches!(c, '/' | '\\' | '#' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "invalid {what}: it must not contain /, \\, #, %, spaces or control characters"
        ));
    }
    if s == "." || s == ".." {
        return Err(format!("invalid {what}: . and .. are not names"));
    }
    Ok(())
}

impl Cx<'_> {
    /// One value or a list of values, each checked by `check`.
    fn one_or_list(
        &mut self,
        node: &Node,
        path: &str,
        check: impl Fn(&str) -> Result<(), String>,
    ) -> Slot<Vec<String>> {
        let items: Vec<(&Node, String)> = match &node.kind {
            NodeKind::Seq(items) if items.is_empty() => return Slot::Empty(node.pos),
            NodeKind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, n)| (n, format!("{path}[{i}]")))
                .collect(),
            NodeKind::Scalar { .. } => vec![(node, path.to_string())],
            NodeKind::Map(_) => {
                self.error(
                    node.pos,
                    path,
                    None,
                    "expected a name or a list of names, not a mapping".to_owned(),
                );
                return Slot::Invalid;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (n, p) in items {
            match self.typed(n, &p, |s| {
                let s = s.trim();
                check(s).map(|()| s.to_owned())
            }) {
                Slot::Set(v, _, _) => {
                    if !out.contains(&v) {
                        out.push(v);
                    }
                }
                Slot::Empty(pos) if matches!(node.kind, NodeKind::Seq(_)) => {
                    self.error(pos, &p, None, "an empty name in the list".to_owned());
                    ok = false;
                }
                Slot::Empty(pos) => return Slot::Empty(pos),
                Slot::Invalid => ok = false,
                Slot::Absent => {}
            }
        }
        if ok {
            Slot::Set(out, node.pos, String::new())
        } else {
            Slot::Invalid
        }
    }

    /// `virtual_machine_scale_set`: a name, a list, or globs (`*`, `?`).
    pub(super) fn scale_sets(&mut self, node: &Node, path: &str) -> Slot<Vec<String>> {
        self.one_or_list(node, path, |s| check_name(s, "scale set name"))
    }

    /// `resource_group_name` of an upstream: a name, a list, or `*` (every group).
    pub(super) fn resource_groups(&mut self, node: &Node, path: &str) -> Slot<Vec<String>> {
        let slot = self.one_or_list(node, path, |s| {
            if s == "*" {
                Ok(())
            } else if s.contains(['*', '?']) {
                Err("resource group names take no wildcard other than a lone * (every resource group of the subscription)".to_owned())
            } else {
                check_name(s, "resource group name")
            }
        });
        if let Slot::Set(v, pos, _) = &slot {
            if v.len() > 1 && v.iter().any(|g| g == "*") {
                self.error(
                    *pos,
                    path,
                    None,
                    "* (every resource group) cannot be listed with other resource groups"
                        .to_owned(),
                );
                return Slot::Invalid;
            }
        }
        slot
    }

    /// `tags: {allow: {k: v}, deny: {k: v}}`.
    pub(super) fn tags(&mut self, node: &Node, path: &str) -> Slot<TagsConfig> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        if !matches!(node.kind, NodeKind::Map(_)) {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "tags must be a mapping with allow and deny (each a mapping of tag names to \
                     values), not {}",
                    node.describe()
                ),
            );
            return Slot::Invalid;
        }
        let mut b = TagsBuilder::default();
        self.mapping(node, path, TAGS_FIELDS, &mut b, Section::Tags);
        let allow = b.allow.or_default(BTreeMap::new());
        let deny = b.deny.or_default(BTreeMap::new());
        match (allow, deny) {
            (Some(allow), Some(deny)) => {
                if allow.is_empty() && deny.is_empty() {
                    return Slot::Empty(node.pos);
                }
                Slot::Set(TagsConfig { allow, deny }, node.pos, String::new())
            }
            _ => Slot::Invalid,
        }
    }

    /// A mapping of tag names to values (values may hold `*` and `?`).
    fn tag_map(&mut self, node: &Node, path: &str) -> Slot<BTreeMap<String, String>> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.pos,
                path,
                None,
                format!(
                    "expected a mapping of tag names to values, not {}",
                    node.describe()
                ),
            );
            return Slot::Invalid;
        };
        let mut out = BTreeMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let key_path = format!("{path}.{}", key.text);
            if key.text.trim().is_empty() {
                self.error(key.pos, &key_path, None, "empty tag name".to_owned());
                ok = false;
                continue;
            }
            if out
                .keys()
                .any(|k: &String| k.eq_ignore_ascii_case(&key.text))
            {
                self.error(
                    key.pos,
                    &key_path,
                    None,
                    "duplicate tag name (tag names are case-insensitive)".to_owned(),
                );
                ok = false;
                continue;
            }
            match self.scalar(value, &key_path, false) {
                Some(s) => {
                    out.insert(key.text.clone(), s.text);
                }
                None => ok = false,
            }
        }
        if ok {
            Slot::Set(out, node.pos, String::new())
        } else {
            Slot::Invalid
        }
    }

    /// `port_tag`: the name of a tag holding the port.
    pub(super) fn port_tag(&mut self, node: &Node, path: &str) -> Slot<String> {
        self.typed(node, path, |s| {
            let s = s.trim();
            if s.chars().any(char::is_control) {
                return Err("invalid tag name: control characters are not allowed".to_owned());
            }
            Ok(s.to_owned())
        })
    }

    /// `register_when`: running, healthy or always.
    pub(super) fn register_when(&mut self, node: &Node, path: &str) -> Slot<RegisterWhen> {
        self.one_of(node, path, REGISTER_WHEN)
    }

    /// A Go duration that may be zero (`drain_timeout: 0s` removes at once).
    pub(super) fn duration_or_zero(&mut self, node: &Node, path: &str) -> Slot<Duration> {
        let field = path.rsplit('.').next().unwrap_or(path).to_owned();
        self.typed(node, path, |s| match s.trim() {
            "0" => Ok(Duration::ZERO),
            t => parse_go_duration(t).map_err(|e| match e {
                GoDurationError::Negative => format!("the field {field} must not be negative"),
                GoDurationError::MissingUnit => format!(
                    "the field {field} has invalid value: a duration needs a unit, such as 30s or 2m"
                ),
                GoDurationError::Overflow => {
                    format!("the field {field} has invalid value: the duration is too long")
                }
                GoDurationError::Syntax => format!(
                    "the field {field} has invalid value: it must be a duration such as 30s, 2m \
                     or 0s (units ns, us, ms, s, m, h)"
                ),
            }),
        })
    }

    /// `arm_read_burst`: a whole number from 1.
    pub(super) fn read_burst(&mut self, node: &Node, path: &str) -> Slot<u32> {
        self.typed(node, path, |s| {
            parse_int(s)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    "the field arm_read_burst has invalid value: it must be a whole number of \
                     reads, at least 1"
                        .to_owned()
                })
        })
    }

    /// `arm_reads_per_second`: a number above 0.
    pub(super) fn reads_per_second(&mut self, node: &Node, path: &str) -> Slot<f64> {
        self.typed(node, path, |s| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0 && *v <= 100_000.0)
                .ok_or_else(|| {
                    "the field arm_reads_per_second has invalid value: it must be a number of \
                     reads per second above 0, such as 25 or 12.5"
                        .to_owned()
                })
        })
    }

    /// Checks the upstream keys together and builds the upstream's source. Returns the
    /// label kept in `virtual_machine_scale_set`, the port and the source.
    pub(super) fn finish_source(
        &mut self,
        b: SourceBuilder,
        port: Slot<u16>,
        parent: Pos,
        path: &str,
        label: &str,
    ) -> Option<(String, Option<u16>, SourceConfig)> {
        let has_tags = matches!(b.tags, Slot::Set(..) | Slot::Invalid);
        let has_port_tag = matches!(b.port_tag, Slot::Set(..) | Slot::Invalid);
        let scale_sets = match b.scale_sets {
            Slot::Set(v, _, _) => Some(v),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) if has_tags => Some(Vec::new()),
            other => {
                let pos = other.empty_pos().unwrap_or(parent);
                self.error(
                    pos,
                    &format!("{path}.virtual_machine_scale_set"),
                    None,
                    format!(
                        "the mandatory field virtual_machine_scale_set is either empty or missing \
                         for {label}"
                    ),
                );
                None
            }
        };
        let port = match port {
            Slot::Absent | Slot::Empty(_) if has_port_tag => Some(None),
            Slot::Absent | Slot::Empty(_) => {
                let pos = port.empty_pos().unwrap_or(parent);
                self.error(
                    pos,
                    &format!("{path}.port"),
                    None,
                    format!("the mandatory field port is either zero or missing for {label}"),
                );
                None
            }
            Slot::Invalid => None,
            Slot::Set(p, _, _) => Some(Some(p)),
        };
        let tags = match b.tags {
            Slot::Set(t, pos, _) => {
                if t.allow.is_empty() && matches!(&scale_sets, Some(s) if s.is_empty()) {
                    self.error(
                        pos,
                        &format!("{path}.tags.allow"),
                        None,
                        "at least one tag is needed in allow when virtual_machine_scale_set is \
                         not set: otherwise every VM in scope would be registered"
                            .to_owned(),
                    );
                    None
                } else {
                    Some(Some(t))
                }
            }
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let opt = |s: Slot<String>| match s {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let subscription_id = opt(b.subscription_id);
        let resource_groups = match b.resource_groups {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let port_tag = opt(b.port_tag);
        let register_when = match b.register_when {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let drain_timeout = b.drain_timeout.or_default(DEFAULT_DRAIN_TIMEOUT);
        let scale_sets = scale_sets?;
        let source = SourceConfig {
            scale_sets: scale_sets.clone(),
            subscription_id: subscription_id?,
            resource_groups: resource_groups?,
            tags: tags?,
            port_tag: port_tag?,
            register_when: register_when?,
            drain_timeout: drain_timeout?,
            services: None,
        };
        Some((scale_sets.join(","), port?, source))
    }

    /// Validates the top-level keys of this module.
    pub(super) fn finish_top_sources(&mut self, b: TopSourceBuilder) -> Option<TopSources> {
        let health_interval = b.health_interval.or_default(DEFAULT_HEALTH_INTERVAL);
        let arm_read_burst = b.arm_read_burst.or_default(DEFAULT_ARM_READ_BURST);
        let arm_reads_per_second = b
            .arm_reads_per_second
            .or_default(DEFAULT_ARM_READS_PER_SECOND);
        Some(TopSources {
            health_interval: health_interval?,
            arm_read_burst: arm_read_burst?,
            arm_reads_per_second: arm_reads_per_second?,
        })
    }
}
