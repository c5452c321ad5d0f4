//! The targets a configuration names, built once per configuration (and again on reload).
//!
//! Every `targets:` entry becomes one target shared by the upstreams that name it; the
//! upstreams without `target:` share the NGINX Plus API of `api_endpoint`. Targets that
//! must report settings their load balancer cannot hold (HAProxy has no `max_fails`, open
//! source NGINX no `slow_start`) get each upstream's configured parameters; the Data Plane
//! API target also gets those of service templates (`services:`) by backend name prefix.

use super::haproxy_dataplane::HaproxyDataplane;
use super::haproxy_runtime::HaproxyRuntime;
use super::lb_backend_pool::LbBackendPool;
use super::nginx_file::NginxFile;
use super::nginx_plus::NginxPlus;
use super::route_server::RouteServer;
use super::{Permanence, Target, TargetError};
use crate::azure::ArmClient;
use crate::config::{Config, TargetSpec, UpstreamConfig};
use crate::model::ServerParams;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

fn params_of(u: &UpstreamConfig) -> ServerParams {
    ServerParams {
        max_conns: u.max_conns,
        max_fails: u.max_fails,
        fail_timeout: u.fail_timeout,
        slow_start: u.slow_start,
    }
}

/// The configured parameters of the upstreams of a Data Plane API target: per backend name,
/// and per name prefix `{name}{separator}` for service templates (`services:`), whose
/// backends (`{name}{separator}{service}{separator}{port}{separator}{region}`) are only
/// known once discovery finds them.
fn dataplane_params(
    mine: &[&UpstreamConfig],
) -> (
    BTreeMap<String, ServerParams>,
    BTreeMap<String, ServerParams>,
) {
    let mut exact = BTreeMap::new();
    let mut prefixes = BTreeMap::new();
    for u in mine {
        match &u.source.services {
            Some(s) => prefixes.insert(format!("{}{}", u.name, s.separator), params_of(u)),
            None => exact.insert(u.name.clone(), params_of(u)),
        };
    }
    (exact, prefixes)
}

/// The fixed port of each upstream of an Azure target (the port is ignored by Azure, but
/// the plan's server strings carry it); an upstream with a port tag instead is refused.
fn azure_ports(
    target: &str,
    mine: &[&UpstreamConfig],
) -> Result<BTreeMap<String, u16>, TargetError> {
    if mine.len() > 1 {
        return Err(TargetError {
            message: format!(
                "target {target}: Azure targets hold one upstream each, but upstreams {} name it",
                mine.iter()
                    .map(|u| u.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            permanence: Permanence::Permanent,
        });
    }
    mine.iter()
        .map(|u| match u.port {
            Some(p) => Ok((u.name.clone(), p)),
            None => Err(TargetError {
                message: format!(
                    "upstream {}: the Azure target {target} needs a fixed port (it is ignored: \
                     peerings and pool addresses have none), not a port tag",
                    u.name
                ),
                permanence: Permanence::Permanent,
            }),
        })
        .collect()
}

/// One target per upstream of `cfg`, in configuration order. `timeout` bounds NGINX Plus
/// API requests; the other targets have their own `timeout` key. The Azure targets write
/// through `arm` (the discovery client: same credential, endpoint and statistics; its own
/// write budget).
pub fn upstream_targets(
    cfg: &Config,
    timeout: Duration,
    arm: &ArmClient,
) -> Result<Vec<Arc<dyn Target>>, TargetError> {
    let mut named: BTreeMap<&str, Arc<dyn Target>> = BTreeMap::new();
    for t in &cfg.targets {
        let mine: Vec<&UpstreamConfig> = cfg
            .upstreams
            .iter()
            .filter(|u| u.target.as_deref() == Some(t.name.as_str()))
            .collect();
        let params: BTreeMap<String, ServerParams> = mine
            .iter()
            .map(|u| (u.name.clone(), params_of(u)))
            .collect();
        let target: Arc<dyn Target> = match &t.spec {
            TargetSpec::NginxPlus(p) => Arc::new(NginxPlus::new(
                &p.api_endpoint,
                &p.custom_headers,
                timeout,
                p.ca_file.as_deref(),
            )?),
            TargetSpec::HaproxyRuntime(h) => Arc::new(HaproxyRuntime::new(
                h.address.clone(),
                h.mode,
                h.server_prefix.clone(),
                h.check,
                h.timeout,
                params,
            )),
            TargetSpec::HaproxyDataplane(d) => {
                let (params, service_params) = dataplane_params(&mine);
                Arc::new(HaproxyDataplane::new(d, params, service_params)?)
            }
            TargetSpec::NginxFile(f) => Arc::new(NginxFile::new(
                f.path.clone(),
                f.validate_command.clone(),
                f.reload_command.clone(),
                f.timeout,
                mine.iter().map(|u| (u.name.clone(), u.kind)).collect(),
                params,
            )),
            TargetSpec::AzureRouteServer(r) => Arc::new(RouteServer::new(
                arm.clone(),
                r.clone(),
                azure_ports(&t.name, &mine)?,
                params,
            )),
            TargetSpec::AzureLbPool(p) => Arc::new(LbBackendPool::new(
                arm.clone(),
                p.clone(),
                azure_ports(&t.name, &mine)?,
                params,
            )),
        };
        named.insert(&t.name, target);
    }
    let mut default: Option<Arc<dyn Target>> = None;
    let mut out = Vec::with_capacity(cfg.upstreams.len());
    for u in &cfg.upstreams {
        let target = match &u.target {
            Some(name) => named
                .get(name.as_str())
                .cloned()
                .ok_or_else(|| TargetError {
                    message: format!("upstream {}: there is no target named {name}", u.name),
                    permanence: Permanence::Permanent,
                })?,
            None => match &default {
                Some(d) => Arc::clone(d),
                None => {
                    let endpoint = cfg.api_endpoint.as_ref().ok_or_else(|| TargetError {
                        message: format!(
                            "upstream {} has no target and api_endpoint is not set",
                            u.name
                        ),
                        permanence: Permanence::Permanent,
                    })?;
                    let d: Arc<dyn Target> = Arc::new(NginxPlus::new(
                        endpoint,
                        &cfg.custom_headers,
                        timeout,
                        cfg.api_ca_file.as_deref(),
                    )?);
                    default = Some(Arc::clone(&d));
                    d
                }
            },
        };
        out.push(target);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServicesConfig;

    fn upstream(name: &str, max_conns: u32, services: Option<ServicesConfig>) -> UpstreamConfig {
        UpstreamConfig {
            name: name.into(),
            virtual_machine_scale_set: String::new(),
            port: Some(80),
            source: crate::config::SourceConfig {
                services,
                ..Default::default()
            },
            kind: crate::model::UpstreamKind::Http,
            max_conns,
            max_fails: 3,
            fail_timeout: Duration::from_secs(7),
            slow_start: Duration::ZERO,
            target: Some("remote".into()),
            line: 1,
        }
    }

    #[test]
    fn dataplane_service_templates_register_their_name_and_separator_as_a_prefix() {
        let plain = upstream("web", 10, None);
        let template = upstream(
            "svc",
            20,
            Some(ServicesConfig {
                separator: "_".into(),
                ..ServicesConfig::default()
            }),
        );
        let (exact, prefixes) = dataplane_params(&[&plain, &template]);
        assert_eq!(exact.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(prefixes.keys().collect::<Vec<_>>(), ["svc_"]);
        assert_eq!(prefixes["svc_"].max_conns, 20);
        assert_eq!(prefixes["svc_"].fail_timeout, Duration::from_secs(7));
    }
}
