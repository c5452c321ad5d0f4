//! Services found by tags, as the HAProxy Azure discovery daemon finds them.
//!
//! An upstream with `services` is a template: what its selection finds is grouped into
//! services by (name, port, region), each the backend
//! `{prefix}{separator}{service}{separator}{port}{separator}{region}`. The service name and
//! port come from tags on the VM, else on its scale set ([`ServicesConfig::name_tag`],
//! [`ServicesConfig::port_tag`]); the region is the VM's, else its set's. The port of one
//! instance ([`ServicesConfig::instance_port_tag`]) is applied later, by
//! [`crate::model::desired_servers`] with `port: Some(service.port)` and
//! `port_tag: Some(instance_port_tag)`.
//!
//! Pure: no I/O.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::config::ServicesConfig;
use crate::model::{tag, Found, Instance, ScaleSetSnapshot, Unported};

/// One service a template's selection found.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its backend: `{prefix}{separator}{name}{separator}{port}{separator}{region}`.
    pub backend: String,
    /// The service name (from the name tag).
    pub name: String,
    /// The service port (from the port tag).
    pub port: u16,
    /// The Azure region (lower-cased).
    pub region: String,
    /// Only this service's instances: scale sets (the set's own snapshot when every
    /// instance of it belongs here, else a copy holding this service's instances and no
    /// capacity) and standalone VMs. Never `exact`.
    pub found: Found,
}

/// True when `s` is not empty and holds only characters valid in an HAProxy backend name
/// (`[A-Za-z0-9._:-]`): the parts of a service's backend name.
pub fn is_backend_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
}

/// The backend name of a service.
pub fn backend_name(prefix: &str, sep: &str, name: &str, port: u16, region: &str) -> String {
    format!("{prefix}{sep}{name}{sep}{port}{sep}{region}")
}

/// The (service, port, region) of a backend of this template, when `backend` has the
/// shape `{prefix}{sep}{service}{sep}{port}{sep}{region}`: port 1..=65535 written without
/// leading zeros, service and region not empty and made of backend-name characters. The
/// region and port are read from the right, so the service may hold the separator.
pub fn parse_service_backend<'b>(
    backend: &'b str,
    prefix: &str,
    sep: &str,
) -> Option<(&'b str, u16, &'b str)> {
    if sep.is_empty() {
        return None;
    }
    let rest = backend.strip_prefix(prefix)?.strip_prefix(sep)?;
    let (rest, region) = rest.rsplit_once(sep)?;
    let (service, port) = rest.rsplit_once(sep)?;
    let port_ok = !port.is_empty()
        && !port.starts_with('0')
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit());
    let port = port.parse::<u16>().ok().filter(|_| port_ok)?;
    (is_backend_part(service) && is_backend_part(region)).then_some((service, port, region))
}

/// True when `backend` has the shape of a backend of this template:
/// `{prefix}{sep}{service}{sep}{port}{sep}{region}` (see [`parse_service_backend`]).
pub fn is_service_backend(backend: &str, prefix: &str, sep: &str) -> bool {
    parse_service_backend(backend, prefix, sep).is_some()
}

/// The service of one instance: `Ok(None)` when it has no service name (not a member of
/// any service), `Err` with the reason when it names a service that cannot be used.
fn member<'a>(
    inst: &'a Instance,
    set_tags: Option<&'a BTreeMap<String, String>>,
    region: &'a str,
    cfg: &ServicesConfig,
) -> Result<Option<(&'a str, u16, &'a str)>, String> {
    let lookup = |name: &str| tag(&inst.tags, name).or_else(|| set_tags.and_then(|t| tag(t, name)));
    let Some(name) = lookup(&cfg.name_tag)
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Ok(None);
    };
    if !is_backend_part(name) {
        return Err(format!(
            "service name {name:?} (tag {}) may hold only letters, digits and . _ : -",
            cfg.name_tag
        ));
    }
    let port = match lookup(&cfg.port_tag) {
        None => {
            return Err(format!(
                "service {name}: no tag {} on the VM or its scale set",
                cfg.port_tag
            ))
        }
        Some(v) => v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                format!(
                    "service {name}: tag {} is {v:?}, not a port from 1 to 65535",
                    cfg.port_tag
                )
            })?,
    };
    if region.is_empty() {
        return Err(format!(
            "service {name}: ARM gave no location (region) for the VM or its scale set"
        ));
    }
    Ok(Some((name, port, region)))
}

/// What one service gathers while splitting.
struct Acc {
    name: String,
    port: u16,
    region: String,
    found: Found,
}

fn entry<'m>(
    services: &'m mut BTreeMap<String, Acc>,
    backend: String,
    name: &str,
    port: u16,
    region: &str,
) -> &'m mut Acc {
    services.entry(backend).or_insert_with(|| Acc {
        name: name.to_string(),
        port,
        region: region.to_string(),
        found: Found::default(),
    })
}

/// Groups what a template's selection found into services by (name, port, region), sorted
/// by backend name. Instances without a service name are left out silently; those that
/// name a service that cannot be used (no or a bad port, a name with characters a backend
/// name cannot hold, no region) are returned apart, with the reason, once per VM.
pub fn split(found: &Found, prefix: &str, cfg: &ServicesConfig) -> (Vec<Service>, Vec<Unported>) {
    let sep = cfg.separator.as_str();
    let mut services: BTreeMap<String, Acc> = BTreeMap::new();
    let mut unported: Vec<Unported> = Vec::new();
    // The backend of a (name, port, region), or why there can be none.
    let backend_of = |name: &str, port: u16, region: &str| -> Result<String, String> {
        let backend = backend_name(prefix, sep, name, port, region);
        if parse_service_backend(&backend, prefix, sep) == Some((name, port, region)) {
            Ok(backend)
        } else {
            Err(format!(
                "backend name {backend:?} cannot be read back as service {name}, port {port}, \
                 region {region} (separator {sep:?}, prefix {prefix:?})"
            ))
        }
    };

    for set in &found.sets {
        let mut groups: BTreeMap<(&str, u16, &str), Vec<usize>> = BTreeMap::new();
        for (i, inst) in set.instances.iter().enumerate() {
            let region = inst.location.as_deref().unwrap_or(&set.location);
            match member(inst, Some(&set.tags), region, cfg) {
                Ok(Some(key)) => groups.entry(key).or_default().push(i),
                Ok(None) => {}
                Err(reason) => unported.push(Unported {
                    vm_id: inst.vm_id.to_string(),
                    reason,
                }),
            }
        }
        let whole = groups.len() == 1
            && groups
                .values()
                .all(|members| members.len() == set.instances.len());
        for ((name, port, region), members) in groups {
            let backend = match backend_of(name, port, region) {
                Ok(b) => b,
                Err(reason) => {
                    unported.extend(members.iter().map(|&i| Unported {
                        vm_id: set.instances[i].vm_id.to_string(),
                        reason: reason.clone(),
                    }));
                    continue;
                }
            };
            let snapshot = if whole {
                Arc::clone(set)
            } else {
                // Part of the set: its capacity says nothing about this service, so the
                // guard must not read it as agreeing with a mass removal.
                Arc::new(ScaleSetSnapshot {
                    key: set.key.clone(),
                    capacity: None,
                    orchestration: set.orchestration,
                    reports_health: set.reports_health,
                    tags: set.tags.clone(),
                    location: set.location.clone(),
                    instances: members.iter().map(|&i| set.instances[i].clone()).collect(),
                    held: set.held.clone(),
                })
            };
            entry(&mut services, backend, name, port, region)
                .found
                .sets
                .push(snapshot);
        }
    }
    for vm in &found.vms {
        let region = vm.location.as_deref().unwrap_or_default();
        let reason = match member(vm, None, region, cfg) {
            Ok(None) => continue,
            Ok(Some((name, port, region))) => match backend_of(name, port, region) {
                Ok(backend) => {
                    entry(&mut services, backend, name, port, region)
                        .found
                        .vms
                        .push(Arc::clone(vm));
                    continue;
                }
                Err(reason) => reason,
            },
            Err(reason) => reason,
        };
        unported.push(Unported {
            vm_id: vm.vm_id.to_string(),
            reason,
        });
    }

    let mut seen = HashSet::new();
    unported.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
    unported.retain(|u| seen.insert(u.vm_id.clone()));
    let services = services
        .into_iter()
        .map(|(backend, acc)| Service {
            backend,
            name: acc.name,
            port: acc.port,
            region: acc.region,
            found: acc.found,
        })
        .collect();
    (services, unported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        desired_servers, Orchestration, RegisterWhen, Registration, ScaleSetKey, ServerParams,
    };
    use proptest::prelude::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    const NAME: &str = "HAProxy:Service:Name";
    const PORT: &str = "HAProxy:Service:Port";
    const IPORT: &str = "HAProxy:Instance:Port";

    fn tags(v: &[(&str, &str)]) -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn inst(n: u8, t: &[(&str, &str)]) -> Instance {
        Instance {
            vm_id: format!("/vm/{n:03}").into(),
            ip: Ipv4Addr::new(10, 0, 0, n),
            view: None,
            tags: tags(t),
            location: None,
        }
    }

    fn vm(n: u8, region: &str, t: &[(&str, &str)]) -> Arc<Instance> {
        let mut i = inst(n, t);
        i.location = (!region.is_empty()).then(|| Arc::from(region));
        Arc::new(i)
    }

    fn set(
        name: &str,
        region: &str,
        t: &[(&str, &str)],
        instances: Vec<Instance>,
    ) -> Arc<ScaleSetSnapshot> {
        Arc::new(ScaleSetSnapshot {
            key: ScaleSetKey::new("s", "rg", name),
            capacity: Some(instances.len() as u64),
            orchestration: Orchestration::Flexible,
            reports_health: false,
            tags: tags(t),
            location: region.to_string(),
            instances,
            held: None,
        })
    }

    fn cfg() -> ServicesConfig {
        ServicesConfig::default()
    }

    fn ids(f: &Found) -> Vec<String> {
        f.sets
            .iter()
            .flat_map(|s| s.instances.iter().map(|i| i.vm_id.to_string()))
            .chain(f.vms.iter().map(|i| i.vm_id.to_string()))
            .collect()
    }

    fn summary(services: &[Service]) -> Vec<(String, Vec<String>)> {
        services
            .iter()
            .map(|s| (s.backend.clone(), ids(&s.found)))
            .collect()
    }

    #[test]
    fn backend_shapes() {
        type Parts = Option<(&'static str, u16, &'static str)>;
        let cases: &[(&str, &str, &str, Parts)] = &[
            (
                "azure-myapp-8080-eastus",
                "azure",
                "-",
                Some(("myapp", 8080, "eastus")),
            ),
            (
                "azure-my-app-80-eastus",
                "azure",
                "-",
                Some(("my-app", 80, "eastus")),
            ),
            (
                "azure-a-1-65535-westeurope",
                "azure",
                "-",
                Some(("a-1", 65535, "westeurope")),
            ),
            (
                "azure__web__443__eu",
                "azure",
                "__",
                Some(("web", 443, "eu")),
            ),
            (
                "my-lb.web.80.eastus",
                "my-lb",
                ".",
                Some(("web", 80, "eastus")),
            ),
            ("azure-myapp-0-eastus", "azure", "-", None),
            ("azure-myapp-65536-eastus", "azure", "-", None),
            ("azure-myapp-080-eastus", "azure", "-", None),
            ("azure-myapp-+80-eastus", "azure", "-", None),
            ("azure-myapp-http-eastus", "azure", "-", None),
            ("azure--80-eastus", "azure", "-", None),
            ("azure-myapp-80-", "azure", "-", None),
            ("azure-myapp-80", "azure", "-", None),
            ("azure-80-eastus", "azure", "-", None),
            ("azure", "azure", "-", None),
            ("azurex-myapp-80-eastus", "azure", "-", None),
            ("other-myapp-80-eastus", "azure", "-", None),
            ("azure-my app-80-eastus", "azure", "-", None),
            ("azure-myapp-80-east/us", "azure", "-", None),
            ("azure-myapp-80-eastus", "azure", "", None),
            ("azuremyapp80eastus", "azure", "", None),
        ];
        for (backend, prefix, sep, want) in cases {
            assert_eq!(
                parse_service_backend(backend, prefix, sep),
                *want,
                "{backend} {prefix} {sep:?}"
            );
            assert_eq!(is_service_backend(backend, prefix, sep), want.is_some());
        }
    }

    #[test]
    fn a_set_tagged_as_a_whole_is_one_service_and_keeps_its_snapshot() {
        let web = set(
            "web",
            "eastus",
            &[(NAME, "myapp"), (PORT, "8080")],
            vec![inst(1, &[]), inst(2, &[])],
        );
        let found = Found {
            sets: vec![Arc::clone(&web)],
            ..Found::default()
        };
        let (services, unported) = split(&found, "azure", &cfg());
        assert!(unported.is_empty());
        assert_eq!(services.len(), 1);
        let s = &services[0];
        assert_eq!(s.backend, "azure-myapp-8080-eastus");
        assert_eq!(
            (s.name.as_str(), s.port, s.region.as_str()),
            ("myapp", 8080, "eastus")
        );
        assert!(Arc::ptr_eq(&s.found.sets[0], &web), "no copy");
        assert_eq!(s.found.capacity(), Some(2));
        assert!(!s.found.exact);
    }

    #[test]
    fn members_split_by_their_own_tags_and_a_part_of_a_set_has_no_capacity() {
        let flex = set(
            "flex",
            "westeurope",
            &[(NAME, "web"), (PORT, "80")],
            vec![
                inst(1, &[]),
                inst(2, &[("haproxy:service:name", "api")]),
                inst(3, &[(PORT, "81")]),
                inst(4, &[(IPORT, "9000")]),
            ],
        );
        let found = Found {
            sets: vec![flex],
            ..Found::default()
        };
        let (services, unported) = split(&found, "azure", &cfg());
        assert!(unported.is_empty(), "{unported:?}");
        assert_eq!(
            summary(&services),
            [
                ("azure-api-80-westeurope".into(), vec!["/vm/002".into()]),
                (
                    "azure-web-80-westeurope".into(),
                    vec!["/vm/001".into(), "/vm/004".into()]
                ),
                ("azure-web-81-westeurope".into(), vec!["/vm/003".into()]),
            ]
        );
        for s in &services {
            assert_eq!(s.found.capacity(), None, "{}", s.backend);
            assert_eq!(s.found.sets[0].key.name, "flex");
        }
    }

    #[test]
    fn standalone_vms_are_grouped_by_region() {
        let t = [(NAME, "myapp"), (PORT, "8080")];
        let found = Found {
            vms: vec![
                vm(1, "eastus", &t),
                vm(2, "westeurope", &t),
                vm(3, "eastus", &t),
            ],
            ..Found::default()
        };
        let (services, unported) = split(&found, "azure", &cfg());
        assert!(unported.is_empty());
        assert_eq!(
            summary(&services),
            [
                (
                    "azure-myapp-8080-eastus".into(),
                    vec!["/vm/001".into(), "/vm/003".into()]
                ),
                ("azure-myapp-8080-westeurope".into(), vec!["/vm/002".into()]),
            ]
        );
        assert_eq!(services[0].found.capacity(), Some(2));
    }

    #[test]
    fn unusable_services_are_reported_and_untagged_instances_ignored() {
        let found = Found {
            vms: vec![
                vm(1, "eastus", &[]),
                vm(2, "eastus", &[(NAME, "myapp")]),
                vm(3, "eastus", &[(NAME, "myapp"), (PORT, "http")]),
                vm(4, "eastus", &[(NAME, "myapp"), (PORT, "0")]),
                vm(5, "eastus", &[(NAME, "my app"), (PORT, "80")]),
                vm(6, "", &[(NAME, "myapp"), (PORT, "80")]),
                vm(7, "eastus", &[(NAME, " "), (PORT, "80")]),
                vm(8, "eastus", &[(NAME, "ok"), (PORT, " 80 ")]),
            ],
            ..Found::default()
        };
        let (services, unported) = split(&found, "azure", &cfg());
        assert_eq!(
            summary(&services),
            [("azure-ok-80-eastus".into(), vec!["/vm/008".into()])]
        );
        let reasons: Vec<(&str, &str)> = unported
            .iter()
            .map(|u| (u.vm_id.as_str(), u.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:#?}");
        assert!(
            reasons[0].1.contains("no tag HAProxy:Service:Port"),
            "{reasons:?}"
        );
        assert!(reasons[1].1.contains("\"http\""), "{reasons:?}");
        assert!(
            reasons[2].1.contains("not a port from 1 to 65535"),
            "{reasons:?}"
        );
        assert!(
            reasons[3].1.contains("may hold only letters"),
            "{reasons:?}"
        );
        assert!(reasons[4].1.contains("no location"), "{reasons:?}");
        assert_eq!(reasons[4].0, "/vm/006");
    }

    #[test]
    fn a_region_holding_the_separator_cannot_make_a_backend() {
        let t = [(NAME, "myapp"), (PORT, "8080")];
        let found = Found {
            vms: vec![vm(1, "eastus", &t), vm(2, "westeurope", &t)],
            ..Found::default()
        };
        let c = ServicesConfig {
            separator: "s".into(),
            ..cfg()
        };
        let (services, unported) = split(&found, "azure", &c);
        assert!(services.is_empty(), "{:?}", summary(&services));
        assert_eq!(unported.len(), 2);
        assert!(
            unported[0].reason.contains("cannot be read back"),
            "{unported:?}"
        );
    }

    #[test]
    fn the_instance_port_tag_applies_through_desired_servers() {
        let flex = set(
            "flex",
            "eastus",
            &[(NAME, "web"), (PORT, "80"), (IPORT, "8000")],
            vec![inst(1, &[(IPORT, "9000")]), inst(2, &[])],
        );
        let found = Found {
            sets: vec![flex],
            vms: vec![vm(3, "eastus", &[(NAME, "web"), (PORT, "80")])],
            ..Found::default()
        };
        let c = cfg();
        let (services, _) = split(&found, "azure", &c);
        assert_eq!(services.len(), 1);
        let reg = Registration {
            port: Some(services[0].port),
            port_tag: Some(&c.instance_port_tag),
            when: Some(RegisterWhen::Always),
            params: ServerParams {
                max_conns: 0,
                max_fails: 1,
                fail_timeout: Duration::from_secs(10),
                slow_start: Duration::ZERO,
            },
        };
        let (servers, unported) = desired_servers(&services[0].found, &reg);
        assert!(unported.is_empty());
        assert_eq!(
            servers.into_keys().collect::<Vec<_>>(),
            ["10.0.0.1:9000", "10.0.0.2:8000", "10.0.0.3:80"]
        );
    }

    fn arb_tags() -> impl Strategy<Value = BTreeMap<String, String>> {
        let name = prop::option::of(prop::sample::select(vec!["a", "b", "a-b", "bad name", ""]));
        let port = prop::option::of(prop::sample::select(vec!["80", "8080", "0", "x"]));
        (name, port).prop_map(|(n, p)| {
            let mut t = BTreeMap::new();
            if let Some(n) = n {
                t.insert(NAME.to_string(), n.to_string());
            }
            if let Some(p) = p {
                t.insert(PORT.to_string(), p.to_string());
            }
            t
        })
    }

    fn arb_found() -> impl Strategy<Value = Found> {
        let region = prop::sample::select(vec!["eastus", "westeurope", ""]);
        let a_set = (
            arb_tags(),
            prop::sample::select(vec!["eastus", "westeurope"]),
            prop::collection::vec(arb_tags(), 0..6),
        );
        let a_vm = (arb_tags(), region);
        (
            prop::collection::vec(a_set, 0..4),
            prop::collection::vec(a_vm, 0..6),
        )
            .prop_map(|(sets, vms)| {
                let mut n = 0u8;
                let mut next = |t: BTreeMap<String, String>, region: &str| {
                    n += 1;
                    Instance {
                        vm_id: format!("/vm/{n:03}").into(),
                        ip: Ipv4Addr::new(10, 0, 0, n),
                        view: None,
                        tags: t,
                        location: (!region.is_empty()).then(|| Arc::from(region)),
                    }
                };
                let mut found = Found::default();
                for (i, (t, region, members)) in sets.into_iter().enumerate() {
                    let instances: Vec<Instance> = members
                        .into_iter()
                        // Members take their set's region.
                        .map(|t| next(t, ""))
                        .collect();
                    found.sets.push(Arc::new(ScaleSetSnapshot {
                        key: ScaleSetKey::new("s", "rg", &format!("set{i}")),
                        capacity: Some(instances.len() as u64 + 1),
                        orchestration: Orchestration::Flexible,
                        reports_health: false,
                        tags: t,
                        location: region.to_string(),
                        instances,
                        held: None,
                    }));
                }
                for (t, r) in vms {
                    found.vms.push(Arc::new(next(t, r)));
                }
                found
            })
    }

    proptest! {
        #[test]
        fn split_partitions_the_tagged_instances(found in arb_found(), sep in prop::sample::select(vec!["-", "--", "_", "."])) {
            let c = ServicesConfig { separator: sep.to_string(), ..cfg() };
            let (services, unported) = split(&found, "azure", &c);
            // Sorted, distinct backends, each of this template's shape and read back.
            let backends: Vec<&str> = services.iter().map(|s| s.backend.as_str()).collect();
            let mut sorted = backends.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(&backends, &sorted);
            let mut placed = Vec::new();
            for s in &services {
                prop_assert_eq!(
                    parse_service_backend(&s.backend, "azure", sep),
                    Some((s.name.as_str(), s.port, s.region.as_str()))
                );
                prop_assert!(!s.found.exact);
                prop_assert!(s.found.found() > 0);
                for set in &s.found.sets {
                    let original = found.sets.iter().find(|o| o.key == set.key).expect("from the input");
                    // Capacity only when the whole set is this service's.
                    let whole = set.instances.len() == original.instances.len();
                    prop_assert_eq!(set.capacity, original.capacity.filter(|_| whole));
                    for i in &set.instances {
                        let svc = member(i, Some(&set.tags), &set.location, &c);
                        prop_assert_eq!(svc, Ok(Some((s.name.as_str(), s.port, s.region.as_str()))));
                    }
                }
                placed.extend(ids(&s.found));
            }
            // Every instance is in one service, or reported, or has no service name.
            let all: Vec<(String, bool)> = found
                .sets
                .iter()
                .flat_map(|set| set.instances.iter().map(move |i| (i, Some(&set.tags), set.location.as_str())))
                .chain(found.vms.iter().map(|i| (i.as_ref(), None, i.location.as_deref().unwrap_or(""))))
                .map(|(i, t, r)| (i.vm_id.to_string(), matches!(member(i, t, r, &c), Ok(None))))
                .collect();
            let reported: Vec<String> = unported.iter().map(|u| u.vm_id.clone()).collect();
            for (id, untagged) in &all {
                let n = placed.iter().filter(|p| *p == id).count() + reported.iter().filter(|r| *r == id).count();
                prop_assert_eq!(n, usize::from(!untagged), "{}", id);
            }
        }

        #[test]
        fn backend_names_read_back(
            name in "[A-Za-z0-9._:-]{1,12}",
            port in 1u16..,
            region in "[a-z0-9]{1,12}",
            sep in prop::sample::select(vec!["-", "_", ".", "--", ":"]),
        ) {
            prop_assume!(!region.contains(sep));
            let b = backend_name("azure", sep, &name, port, &region);
            prop_assert_eq!(parse_service_backend(&b, "azure", sep), Some((name.as_str(), port, region.as_str())));
        }
    }
}
