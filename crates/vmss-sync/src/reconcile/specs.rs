//! Upstream specs: one upstream as the reconciler sees it, built from the configuration.

use crate::config::{Config, ServicesConfig, UpstreamConfig};
use crate::discovery::{Groups, Selection, TagFilter};
use crate::model::{RegisterWhen, ServerParams};
use crate::target::{Target, UpstreamRef};
use std::sync::Arc;
use std::time::Duration;

/// One upstream as the reconciler sees it: where it lives and what feeds it.
#[derive(Clone)]
pub struct UpstreamSpec {
    /// The upstream in its target: name, kind, and whether the target may create it.
    pub upstream: UpstreamRef,
    /// The target that holds it.
    pub target: Arc<dyn Target>,
    /// What feeds it: scale sets by name, list or glob, or scale sets and VMs by tags.
    pub selection: Selection,
    /// Port the instances serve on (the fallback when `port_tag` is set).
    pub port: Option<u16>,
    /// A tag holding the port (on the VM, else on its scale set).
    pub port_tag: Option<String>,
    /// When an instance is registered; None: `healthy` for sets that report health,
    /// `running` otherwise.
    pub register_when: Option<RegisterWhen>,
    /// Server parameters.
    pub params: ServerParams,
    /// How long a leaving server drains before removal (zero: removed at once).
    pub drain_timeout: Duration,
    /// Set on a template: every service its selection finds by tags becomes its own
    /// upstream, named `{name}{separator}{service}{separator}{port}{separator}{region}`.
    pub services: Option<ServicesConfig>,
}

impl std::fmt::Debug for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSpec")
            .field("upstream", &self.upstream)
            .field("target", &self.target.kind())
            .field("selection", &self.selection)
            .field("port", &self.port)
            .field("port_tag", &self.port_tag)
            .field("register_when", &self.register_when)
            .field("params", &self.params)
            .field("drain_timeout", &self.drain_timeout)
            .field("services", &self.services)
            .finish()
    }
}

impl UpstreamSpec {
    /// Builds the spec of one configured upstream, held by `target`.
    pub fn from_config(cfg: &Config, u: &UpstreamConfig, target: Arc<dyn Target>) -> Self {
        Self {
            upstream: UpstreamRef::new(u.name.clone(), u.kind),
            target,
            selection: selection_of(cfg, u),
            port: u.port,
            port_tag: u.source.port_tag.clone(),
            register_when: u.source.register_when,
            params: ServerParams {
                max_conns: u.max_conns,
                max_fails: u.max_fails,
                fail_timeout: u.fail_timeout,
                slow_start: u.slow_start,
            },
            drain_timeout: u.source.drain_timeout,
            services: u.source.services.clone(),
        }
    }

    /// What the upstream is fed from, for logs (nginx-asg-sync's "group").
    pub fn group(&self) -> String {
        self.selection.label()
    }
}

/// The selection of one configured upstream: its own `subscription_id` and
/// `resource_group_name` when set, the top-level ones otherwise.
pub fn selection_of(cfg: &Config, u: &UpstreamConfig) -> Selection {
    let src = &u.source;
    let groups = match &src.resource_groups {
        Some(g) if g.iter().any(|x| x == "*") => Groups::All,
        Some(g) => Groups::Named(g.clone()),
        None => Groups::Named(vec![cfg.resource_group_name.clone()]),
    };
    Selection {
        subscription: src
            .subscription_id
            .clone()
            .unwrap_or_else(|| cfg.subscription_id.clone()),
        groups,
        sets: src.scale_sets.clone(),
        tags: src.tags.as_ref().map(|t| TagFilter {
            allow: t.allow.clone(),
            deny: t.deny.clone(),
        }),
        views: src.register_when != Some(RegisterWhen::Always),
    }
}
