//! What an upstream selects: scale sets by name, list or glob, in one or more resource
//! groups of a subscription, or scale sets and standalone VMs by tags.

use std::collections::BTreeMap;
use std::fmt;

/// The resource groups a selection looks in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Groups {
    /// These resource groups (as configured; compared case-insensitively).
    Named(Vec<String>),
    /// Every resource group of the subscription.
    All,
}

/// Tag filters, as the HAProxy discovery daemon has them: a resource is selected when
/// its tags match every entry of `allow` and none of `deny`. Tag names compare
/// case-insensitively (as Azure does); values exactly, with `*` and `?` wildcards.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TagFilter {
    /// Every entry must match.
    pub allow: BTreeMap<String, String>,
    /// No entry may match.
    pub deny: BTreeMap<String, String>,
}

impl TagFilter {
    /// True when `tags` pass the filter.
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        let has = |k: &str, v: &str| {
            crate::model::tag(tags, k).is_some_and(|actual| glob(v, actual, false))
        };
        self.allow.iter().all(|(k, v)| has(k, v)) && !self.deny.iter().any(|(k, v)| has(k, v))
    }
}

impl fmt::Display for TagFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.allow {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        for (k, v) in &self.deny {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "!{k}={v}")?;
        }
        Ok(())
    }
}

/// What one upstream reads. Two upstreams with equal selections share one result.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selection {
    /// Subscription.
    pub subscription: String,
    /// Where to look.
    pub groups: Groups,
    /// Scale set names or globs (`*`, `?`). Empty: every scale set (filtered by `tags`)
    /// and, with tags, standalone VMs too.
    pub sets: Vec<String>,
    /// Tag filters on scale sets and standalone VMs.
    pub tags: Option<TagFilter>,
    /// True when the instances' run-time state (power, health) is needed.
    pub views: bool,
}

impl Selection {
    /// One scale set in one resource group (nginx-asg-sync's selection).
    pub fn one(subscription: &str, resource_group: &str, name: &str) -> Selection {
        Selection {
            subscription: subscription.to_string(),
            groups: Groups::Named(vec![resource_group.to_string()]),
            sets: vec![name.to_string()],
            tags: None,
            views: true,
        }
    }

    /// True when the selection names its scale sets exactly: plain names (no wildcard)
    /// in a single resource group, without tags. Each must then exist.
    pub fn is_exact(&self) -> bool {
        matches!(&self.groups, Groups::Named(g) if g.len() == 1)
            && !self.sets.is_empty()
            && self.sets.iter().all(|s| !is_glob(s))
            && self.tags.is_none()
    }

    /// True when standalone VMs are selected too (tags without scale set names).
    pub fn includes_vms(&self) -> bool {
        self.tags.is_some() && self.sets.is_empty()
    }

    /// True when a scale set with this name and these tags, in this resource group, is
    /// selected.
    pub fn selects_set(&self, rg: &str, name: &str, tags: &BTreeMap<String, String>) -> bool {
        self.in_groups(rg)
            && (self.sets.is_empty() || self.sets.iter().any(|p| glob(p, name, true)))
            && self.tags.as_ref().is_none_or(|t| t.matches(tags))
    }

    /// True when a VM in `rg` with these tags is selected alone: a standalone VM, or a
    /// member of a Flexible set the selection does not select.
    pub fn selects_vm(&self, rg: &str, tags: &BTreeMap<String, String>) -> bool {
        self.includes_vms()
            && self.in_groups(rg)
            && self.tags.as_ref().is_some_and(|t| t.matches(tags))
    }

    /// True when `rg` is one of the selection's resource groups.
    pub fn in_groups(&self, rg: &str) -> bool {
        match &self.groups {
            Groups::All => true,
            Groups::Named(g) => g.iter().any(|x| x.eq_ignore_ascii_case(rg)),
        }
    }

    /// A short description for logs: the set names, or the tag filter.
    pub fn label(&self) -> String {
        let mut out = self.sets.join(",");
        if let Some(t) = &self.tags {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("tags[{t}]"));
        }
        out
    }
}

/// True when `s` holds a wildcard.
pub fn is_glob(s: &str) -> bool {
    s.contains(['*', '?'])
}

/// Shell-style matching of `text` against `pattern` (`*`: any run, `?`: one character).
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if ignore_case {
            s.chars().flat_map(char::to_lowercase).collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("web-*", "web-blue", true));
        assert!(glob("WEB-*", "web-blue", true));
        assert!(!glob("WEB-*", "web-blue", false));
        assert!(glob("web-?", "web-1", true));
        assert!(!glob("web-?", "web-12", true));
        assert!(glob("*", "", true));
        assert!(glob("a*b*c", "axxbyyc", true));
        assert!(!glob("a*b*c", "axxbyy", true));
        assert!(glob("exact", "exact", true));
        assert!(!glob("exact", "exactly", true));
    }

    #[test]
    fn tag_filter_needs_every_allow_and_no_deny() {
        let f = TagFilter {
            allow: tags(&[("role", "web"), ("env", "prod*")]),
            deny: tags(&[("maintenance", "true")]),
        };
        assert!(f.matches(&tags(&[("Role", "web"), ("env", "prod-eu")])));
        assert!(!f.matches(&tags(&[("role", "web")])), "env missing");
        assert!(
            !f.matches(&tags(&[("role", "Web"), ("env", "prod")])),
            "values are exact"
        );
        assert!(!f.matches(&tags(&[
            ("role", "web"),
            ("env", "prod"),
            ("Maintenance", "true")
        ])));
    }

    #[test]
    fn exact_selections_are_plain_names_in_one_group() {
        assert!(Selection::one("s", "rg", "web").is_exact());
        let mut glob_sel = Selection::one("s", "rg", "web-*");
        assert!(!glob_sel.is_exact());
        glob_sel.sets = vec!["a".into(), "b".into()];
        assert!(glob_sel.is_exact());
        glob_sel.groups = Groups::Named(vec!["rg1".into(), "rg2".into()]);
        assert!(!glob_sel.is_exact());
    }

    #[test]
    fn tag_selection_takes_sets_and_standalone_vms() {
        let sel = Selection {
            subscription: "s".into(),
            groups: Groups::All,
            sets: vec![],
            tags: Some(TagFilter {
                allow: tags(&[("role", "web")]),
                deny: BTreeMap::new(),
            }),
            views: true,
        };
        assert!(sel.includes_vms());
        assert!(sel.selects_set("any", "x", &tags(&[("role", "web")])));
        assert!(!sel.selects_set("any", "x", &tags(&[("role", "db")])));
        assert!(sel.selects_vm("rg", &tags(&[("role", "web")])));
        assert_eq!(sel.label(), "tags[role=web]");
    }
}
