//! Keys that say where an upstream's servers come from and when they are registered:
//! `virtual_machine_scale_set` (a name, a list, or globs), per-upstream `subscription_id`
//! and `resource_group_name`, `tags`, `port_tag`, `register_when`, `drain_timeout` and
//! `services` (the upstream as a template of services found by tags); and the top-level `health_interval`, `arm_read_burst` and `arm_reads_per_second`. A child
//! module of `schema`, so it parses with the same context, slots and messages.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::{ServicesConfig, SourceConfig, TagsConfig, UpstreamConfig};
use super::yaml::{Node, NodeKind, Pos};
use super::{field, last_segment, parse_int, Cx, Field, Section, Slot};
use super::{parse_go_duration, GoDurationError};
use crate::model::RegisterWhen;

/// Default `drain_timeout` (docs/scale-sets-health-draining.md says why).
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `health_interval`.
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = crate::model::DEFAULT_HEALTH_INTERVAL;
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
    pub services: Slot<ServicesConfig>,
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

#[derive(Default)]
struct ServicesBuilder {
    name_tag: Slot<String>,
    port_tag: Slot<String>,
    instance_port_tag: Slot<String>,
    separator: Slot<String>,
}

#[rustfmt::skip]
const SERVICES_FIELDS: &[Field<ServicesBuilder>] = &[
    field("name_tag", |cx, n, p, b| b.name_tag = cx.service_tag(n, p)),
    field("port_tag", |cx, n, p, b| b.port_tag = cx.service_tag(n, p)),
    field("instance_port_tag", |cx, n, p, b| b.instance_port_tag = cx.service_tag(n, p)),
    field("separator", |cx, n, p, b| b.separator = cx.separator(n, p)),
];

#[rustfmt::skip]
const TAGS_FIELDS: &[Field<TagsBuilder>] = &[
    field("allow", |cx, n, p, b| b.allow = cx.tag_map(n, p)),
    field("deny", |cx, n, p, b| b.deny = cx.tag_map(n, p)),
];

/// The prefix of a template's backends (`{name}{separator}`) and its separator.
fn template_prefix(u: &UpstreamConfig) -> Option<(String, &str)> {
    u.source
        .services
        .as_ref()
        .map(|s| (format!("{}{}", u.name, s.separator), s.separator.as_str()))
}

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
        let Some(b) = self.section(
            node,
            path,
            "allow and deny (each a mapping of tag names to values)",
            TAGS_FIELDS,
            Section::Tags,
        ) else {
            return Slot::Invalid;
        };
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

    /// `services: {name_tag, port_tag, instance_port_tag, separator}`, every key optional;
    /// `services:` alone (null) or `services: {}` takes every default.
    pub(super) fn services(&mut self, node: &Node, path: &str) -> Slot<ServicesConfig> {
        if node.is_null() {
            return Slot::Set(ServicesConfig::default(), node.pos, String::new());
        }
        let Some(b) = self.section(
            node,
            path,
            "name_tag, port_tag, instance_port_tag and separator (each optional; \
             services: {} takes the defaults)",
            SERVICES_FIELDS,
            Section::Services,
        ) else {
            return Slot::Invalid;
        };
        let d = ServicesConfig::default();
        let name_tag = b.name_tag.or_default(d.name_tag);
        let port_tag = b.port_tag.or_default(d.port_tag);
        let instance_port_tag = b.instance_port_tag.or_default(d.instance_port_tag);
        let separator = b.separator.or_default(d.separator);
        match (name_tag, port_tag, instance_port_tag, separator) {
            (Some(name_tag), Some(port_tag), Some(instance_port_tag), Some(separator)) => {
                Slot::Set(
                    ServicesConfig {
                        name_tag,
                        port_tag,
                        instance_port_tag,
                        separator,
                    },
                    node.pos,
                    String::new(),
                )
            }
            _ => Slot::Invalid,
        }
    }

    /// A tag name of `services`: not empty (null means the default), no control characters.
    fn service_tag(&mut self, node: &Node, path: &str) -> Slot<String> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let Some(s) = self.scalar(node, path, false) else {
            return Slot::Invalid;
        };
        let field = last_segment(path);
        let text = s.text.trim();
        let problem = if text.is_empty() {
            let d = ServicesConfig::default();
            let default = match field {
                "name_tag" => d.name_tag,
                "port_tag" => d.port_tag,
                _ => d.instance_port_tag,
            };
            Some(format!(
                "the field {field} must not be empty: it names a tag (leave the key out for the \
                 default {default})"
            ))
        } else if text.chars().any(char::is_control) {
            Some("invalid tag name: control characters are not allowed".to_owned())
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(s.pos, path, Some(&s.raw), message);
                Slot::Invalid
            }
            None => Slot::Set(text.to_owned(), s.pos, s.raw),
        }
    }

    /// `services.separator`: not empty, only characters valid in an HAProxy backend name.
    fn separator(&mut self, node: &Node, path: &str) -> Slot<String> {
        if node.is_null() {
            return Slot::Empty(node.pos);
        }
        let Some(s) = self.scalar(node, path, false) else {
            return Slot::Invalid;
        };
        let problem = if s.text.is_empty() {
            Some(
                "the separator must not be empty: it separates the parts of backend names \
                 (leave the key out for the default -)"
                    .to_owned(),
            )
        } else if !crate::model::is_backend_part(&s.text) {
            Some(
                "invalid separator: it becomes part of HAProxy backend names, so it may hold \
                 only letters, digits and . _ : -"
                    .to_owned(),
            )
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.error(s.pos, path, Some(&s.raw), message);
                Slot::Invalid
            }
            None => Slot::Set(s.text, s.pos, s.raw),
        }
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
    ///
    /// `name` is the upstream's name, its position and its text as written, when it is
    /// good: a template (`services`) checks it as a backend-name prefix.
    pub(super) fn finish_source(
        &mut self,
        b: SourceBuilder,
        port: Slot<u16>,
        name: Option<(&str, Pos, &str)>,
        parent: Pos,
        path: &str,
        label: &str,
    ) -> Option<(String, Option<u16>, SourceConfig)> {
        let has_tags = matches!(b.tags, Slot::Set(..) | Slot::Invalid);
        let has_port_tag = matches!(b.port_tag, Slot::Set(..) | Slot::Invalid);
        let template = matches!(b.services, Slot::Set(..) | Slot::Invalid);
        let services = match b.services {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let name_ok = match name {
            Some((name, pos, raw)) if template && !crate::model::is_backend_part(name) => {
                self.error(
                    pos,
                    &format!("{path}.name"),
                    Some(raw),
                    "with services, the name is the prefix of every backend name \
                     ({name}{separator}{service}{separator}{port}{separator}{region}), so it may \
                     hold only letters, digits and . _ : -"
                        .to_owned(),
                );
                false
            }
            _ => true,
        };
        let scale_sets = match b.scale_sets {
            Slot::Set(v, _, _) => Some(v),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) if has_tags || template => Some(Vec::new()),
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
            Slot::Set(_, pos, raw) if template => {
                self.error(
                    pos,
                    &format!("{path}.port"),
                    Some(&raw),
                    "port cannot be combined with services: the port of each service comes \
                     from its service port tag (services.port_tag)"
                        .to_owned(),
                );
                None
            }
            Slot::Absent | Slot::Empty(_) if has_port_tag || template => Some(None),
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
                if t.allow.is_empty() && !template && matches!(&scale_sets, Some(s) if s.is_empty())
                {
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
        let port_tag = match b.port_tag {
            Slot::Set(_, pos, raw) if template => {
                self.error(
                    pos,
                    &format!("{path}.port_tag"),
                    Some(&raw),
                    "port_tag cannot be combined with services: the port comes from the service \
                     port tag (services.port_tag), and an instance's own port from \
                     services.instance_port_tag"
                        .to_owned(),
                );
                None
            }
            other => opt(other),
        };
        let register_when = match b.register_when {
            Slot::Set(v, _, _) => Some(Some(v)),
            Slot::Invalid => None,
            Slot::Absent | Slot::Empty(_) => Some(None),
        };
        let drain_timeout = b.drain_timeout.or_default(DEFAULT_DRAIN_TIMEOUT);
        let scale_sets = scale_sets?;
        let services = services?;
        let mut tags = tags?;
        if let (Some(svc), true) = (&services, scale_sets.is_empty()) {
            // A template found by tags reads only what carries a service name.
            let t = tags.get_or_insert_with(TagsConfig::default);
            if !t
                .allow
                .keys()
                .any(|k| k.eq_ignore_ascii_case(&svc.name_tag))
            {
                t.allow.insert(svc.name_tag.clone(), "*".to_owned());
            }
        }
        if !name_ok {
            return None;
        }
        let source = SourceConfig {
            scale_sets: scale_sets.clone(),
            subscription_id: subscription_id?,
            resource_groups: resource_groups?,
            tags,
            port_tag: port_tag?,
            register_when: register_when?,
            drain_timeout: drain_timeout?,
            services,
        };
        Some((scale_sets.join(","), port?, source))
    }

    /// A template (`services`) lists the backends whose names start with its prefix on its
    /// target and empties those of services that are gone: on one target, no other upstream
    /// may be named like one of its backends, and no other template may have a prefix that
    /// starts with its own (or the reverse). Reported at the later upstream's name.
    pub(super) fn check_template_overlap(
        &mut self,
        list: &[Option<UpstreamConfig>],
        name_positions: &[Option<Pos>],
        path: &str,
    ) {
        for (i, t) in list.iter().enumerate() {
            let Some(t) = t else { continue };
            let Some((t_prefix, sep)) = template_prefix(t) else {
                continue;
            };
            for (j, u) in list.iter().enumerate() {
                let Some(u) = u.as_ref().filter(|u| j != i && u.target == t.target) else {
                    continue;
                };
                let message = match template_prefix(u) {
                    Some((u_prefix, _)) if j > i => {
                        if !(u_prefix.starts_with(&t_prefix) || t_prefix.starts_with(&u_prefix)) {
                            continue;
                        }
                        format!(
                            "the backends of this template ({u_prefix}…) and those of the template \
                             {} ({path}[{i}] at line {}: {t_prefix}…) are on the same target and \
                             their names overlap, so each would empty the other's; use prefixes \
                             that do not start with one another",
                            t.name, t.line
                        )
                    }
                    Some(_) => continue,
                    None => {
                        if !crate::model::is_service_backend(&u.name, &t.name, sep) {
                            continue;
                        }
                        format!(
                            "this name has the shape of a backend of the template {} ({path}[{i}] \
                             at line {}: {t_prefix}{{service}}{sep}{{port}}{sep}{{region}}) on the \
                             same target, which would take it for a service that is gone and \
                             empty it; rename one of them",
                            t.name, t.line
                        )
                    }
                };
                if let Some(pos) = name_positions.get(j).copied().flatten() {
                    self.error(pos, &format!("{path}[{j}].name"), Some(&u.name), message);
                }
            }
        }
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

/// The keys of `upstreams[].tags` and `upstreams[].services`, as `(section, key)` (for
/// [`super::all_keys`]).
pub(super) fn doc_keys() -> Vec<(String, &'static str)> {
    let tags = TAGS_FIELDS
        .iter()
        .map(|f| ("upstreams.tags".to_owned(), f.key));
    let services = SERVICES_FIELDS
        .iter()
        .map(|f| ("upstreams.services".to_owned(), f.key));
    tags.chain(services).collect()
}
