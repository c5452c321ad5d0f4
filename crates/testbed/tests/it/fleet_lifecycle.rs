//! The fleet as Azure shows it over time: health in instance views, instances that boot,
//! get evicted, deleted or reimaged, standalone VMs, NICs in other resource groups, and
//! Compute's throttling headers (and 429s when limits are enforced).

use crate::support::common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use vmss_testbed::{ArmLimits, ComputeLimits, Orchestration, TestbedOptions, STANDALONE_VMS};

fn flex_filter_query(set: &str, expand: bool) -> String {
    let filter = format!("'virtualMachineScaleSet/id' eq '{}'", vmss_path(set));
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("api-version", COMPUTE)
        .append_pair("$filter", &filter);
    if expand {
        q.append_pair("$expand", "instanceView");
    }
    q.finish()
}

fn codes(view: &Value) -> Vec<String> {
    view["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["code"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_set_with_the_health_extension_reports_vm_health_in_both_list_shapes() {
    let e = env().await;
    e.set("uni", Orchestration::Uniform, 2);
    e.set("flex", Orchestration::Flexible, 2);
    let f = e.tb.fleet();
    f.set_health_extension(SUB, RG, "uni", true);
    f.set_health_extension(SUB, RG, "flex", true);
    f.set_health(SUB, RG, "uni", "1", Some("unhealthy"));
    let vmss = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("uni")))
        .await
        .json();
    assert_eq!(
        vmss["properties"]["virtualMachineProfile"]["extensionProfile"]["extensions"][0]
            ["properties"]["type"],
        "ApplicationHealthLinux"
    );
    let (vms, _) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("uni")
        ))
        .await;
    let health: Vec<&str> = vms
        .iter()
        .map(|v| {
            v["properties"]["instanceView"]["vmHealth"]["status"]["code"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(health, ["HealthState/healthy", "HealthState/unhealthy"]);
    let (flex, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines?{}",
            flex_filter_query("flex", true)
        ))
        .await;
    assert!(flex.iter().all(
        |v| v["properties"]["instanceView"]["vmHealth"]["status"]["code"] == "HealthState/healthy"
    ));
    // Without the extension there is no vmHealth at all.
    f.set_health_extension(SUB, RG, "uni", false);
    let (vms, _) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("uni")
        ))
        .await;
    assert!(vms
        .iter()
        .all(|v| v["properties"]["instanceView"].get("vmHealth").is_none()));
}

#[tokio::test]
async fn instances_change_over_time_as_on_azure() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 4);
    let f = e.tb.fleet();
    f.set_health_extension(SUB, RG, "web", true);
    let booted = f.boot_instance(
        SUB,
        RG,
        "web",
        Duration::from_millis(200),
        Duration::from_millis(400),
    );
    f.delete_instance(SUB, RG, "web", "0", Duration::from_millis(300));
    f.evict_instance(SUB, RG, "web", "1");
    f.rolling_upgrade(SUB, RG, "web", "2", Duration::from_millis(400));
    let view = |id: &str| {
        let e = &e;
        let path = format!(
            "{}/virtualMachines/{id}/instanceView?api-version={COMPUTE}",
            vmss_path("web")
        );
        async move { e.arm(&path).await }
    };
    let now = view(&booted).await.json();
    assert!(codes(&now).contains(&"ProvisioningState/creating".to_string()));
    assert!(codes(&now).contains(&"PowerState/starting".to_string()));
    assert_eq!(now["vmHealth"]["status"]["code"], "HealthState/unknown");
    let deleting = view("0").await.json();
    assert!(codes(&deleting).contains(&"ProvisioningState/deleting".to_string()));
    let upgrading = view("2").await.json();
    assert!(codes(&upgrading).contains(&"ProvisioningState/updating".to_string()));
    assert!(codes(&upgrading).contains(&"PowerState/stopped".to_string()));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = view(&booted).await.json();
    assert!(codes(&later).contains(&"PowerState/running".to_string()));
    assert_eq!(later["vmHealth"]["status"]["code"], "HealthState/healthy");
    assert_eq!(view("0").await.status, 404, "deleted instances are gone");
    let evicted = view("1").await.json();
    assert!(codes(&evicted).contains(&"PowerState/deallocated".to_string()));
    let upgraded = view("2").await.json();
    assert!(codes(&upgraded).contains(&"ProvisioningState/succeeded".to_string()));
    assert_eq!(
        upgraded["vmHealth"]["status"]["code"],
        "HealthState/healthy"
    );
    assert_eq!(f.instance_ids(SUB, RG, "web"), ["1", "2", "3", &booted]);
}

#[tokio::test]
async fn a_scale_in_keeps_leaving_instances_deleting_for_the_terminate_notification_delay() {
    let e = env().await;
    e.set("win", Orchestration::Uniform, 4);
    e.set("flexwin", Orchestration::Flexible, 3);
    e.set("nowin", Orchestration::Uniform, 4);
    let f = e.tb.fleet();
    let delay = Duration::from_millis(1500);
    f.set_terminate_notification(SUB, RG, "win", Some(Duration::from_secs(4)));
    f.set_terminate_notification(SUB, RG, "flexwin", Some(Duration::from_secs(600)));
    let model = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("win")))
        .await
        .json();
    assert_eq!(
        model["properties"]["virtualMachineProfile"]["scheduledEventsProfile"],
        serde_json::json!({"terminateNotificationProfile": {"notBeforeTimeout": "PT4S", "enable": true}})
    );
    let plain = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("nowin")))
        .await
        .json();
    assert!(plain["properties"]["virtualMachineProfile"]
        .get("scheduledEventsProfile")
        .is_none());
    f.set_terminate_notification(SUB, RG, "win", Some(delay));

    f.scale_to(SUB, RG, "win", 2);
    f.scale_to(SUB, RG, "flexwin", 2);
    f.scale_to(SUB, RG, "nowin", 2);
    // Without a terminate notification the leaving instances vanish at once.
    assert_eq!(f.instance_ids(SUB, RG, "nowin"), ["0", "1"]);
    // With one they stay, listed as `Deleting` and still running, capacity already new.
    assert_eq!(f.instance_ids(SUB, RG, "win"), ["0", "1", "2", "3"]);
    assert_eq!(f.leaving_instance_ids(SUB, RG, "win"), ["2", "3"]);
    let (vms, _) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("win")
        ))
        .await;
    assert_eq!(vms.len(), 4);
    for v in &vms[2..] {
        assert_eq!(v["properties"]["provisioningState"], "Deleting");
        let c = codes(&v["properties"]["instanceView"]);
        assert!(
            c.contains(&"ProvisioningState/deleting".to_string()),
            "{c:?}"
        );
        assert!(c.contains(&"PowerState/running".to_string()), "{c:?}");
    }
    let set = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("win")))
        .await
        .json();
    assert_eq!(set["sku"]["capacity"], 2);
    let (flex, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines?{}",
            flex_filter_query("flexwin", true)
        ))
        .await;
    let states: Vec<&str> = flex
        .iter()
        .map(|v| v["properties"]["provisioningState"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Succeeded", "Succeeded", "Deleting"]);
    // A second scale-in counts only the instances that are not leaving yet.
    f.scale_to(SUB, RG, "win", 1);
    assert_eq!(f.leaving_instance_ids(SUB, RG, "win"), ["1", "2", "3"]);

    tokio::time::sleep(delay + Duration::from_millis(200)).await;
    assert_eq!(
        f.instance_ids(SUB, RG, "win"),
        ["0"],
        "gone after the delay"
    );
    let view = e
        .arm(&format!(
            "{}/virtualMachines/3/instanceView?api-version={COMPUTE}",
            vmss_path("win")
        ))
        .await;
    assert_eq!(view.status, 404);
    // The window can be cut short (the Terminate event approved).
    assert_eq!(f.instance_ids(SUB, RG, "flexwin"), ["0", "1", "2"]);
    f.shorten_terminate_window(SUB, RG, "flexwin", Duration::ZERO);
    assert_eq!(f.instance_ids(SUB, RG, "flexwin"), ["0", "1"]);
}

#[tokio::test]
async fn standalone_vms_and_nics_in_other_groups_are_ordinary_resources() {
    let e = env().await;
    e.set("flex", Orchestration::Flexible, 2);
    let f = e.tb.fleet();
    f.move_nics(SUB, RG, "flex", "flex_1", "rg-net");
    f.add_vm(SUB, RG, "solo", Some("10.77.0.1".parse().unwrap()));
    f.set_vm_tag(SUB, RG, "solo", "role", Some("web"));
    f.set_power_state(SUB, RG, STANDALONE_VMS, "solo", "stopped");
    let (vms, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE}"
        ))
        .await;
    let solo = vms.iter().find(|v| v["name"] == "solo").expect("listed");
    assert!(solo["properties"].get("virtualMachineScaleSet").is_none());
    assert_eq!(solo["tags"]["role"], "web");
    let moved = vms.iter().find(|v| v["name"] == "flex_1").unwrap();
    let nic_id = moved["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
        .as_str()
        .unwrap();
    assert!(nic_id.contains("/resourceGroups/rg-net/"), "{nic_id}");
    let (net_nics, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/rg-net/providers/Microsoft.Network/networkInterfaces?api-version={NETWORK}"
        ))
        .await;
    assert_eq!(net_nics.len(), 1);
    assert_eq!(
        net_nics[0]["properties"]["virtualMachine"]["id"],
        moved["id"]
    );
    // Standalone VMs are not scale sets.
    let (sets, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version={COMPUTE}"
        ))
        .await;
    assert_eq!(sets.len(), 1);
    // statusOnly=true gives every VM's instance view.
    let (statuses, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE}&statusOnly=true"
        ))
        .await;
    let solo = statuses.iter().find(|v| v["name"] == "solo").unwrap();
    assert!(codes(&solo["properties"]["instanceView"]).contains(&"PowerState/stopped".to_string()));
}

#[tokio::test]
async fn compute_reports_its_throttling_policies_and_enforces_them_when_asked() {
    let e = env_with(TestbedOptions {
        enforce_limits: true,
        compute_limits: ComputeLimits {
            high_cost_3min: 3,
            ..ComputeLimits::default()
        },
        ..TestbedOptions::default()
    })
    .await;
    e.set("web", Orchestration::Uniform, 1);
    let views = format!(
        "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
        vmss_path("web")
    );
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = e.arm(&views).await;
        assert_eq!(r.status, 200);
        remaining.push(r.header("x-ms-ratelimit-remaining-resource").unwrap());
    }
    assert!(
        remaining[0].starts_with("Microsoft.Compute/HighCostGet3Min;2,"),
        "{remaining:?}"
    );
    assert!(
        remaining[2].starts_with("Microsoft.Compute/HighCostGet3Min;0,"),
        "{remaining:?}"
    );
    let r = e.arm(&views).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "OperationNotAllowed");
    assert!(r.header("retry-after").is_some());
    // Other Compute reads count against another policy and still pass.
    let r = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("web")))
        .await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("x-ms-ratelimit-remaining-resource")
        .unwrap()
        .starts_with("Microsoft.Compute/LowCostGet3Min;"));
    // Network reads carry no Compute header.
    let r = e
        .arm(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces?api-version={NETWORK}"
        ))
        .await;
    assert!(r.header("x-ms-ratelimit-remaining-resource").is_none());
}

#[tokio::test]
async fn every_fleet_change_event_grid_reports_raises_its_event_with_the_right_subject() {
    use std::sync::{Arc, Mutex};
    use vmss_testbed::{AVAILABILITY_CHANGED, RESOURCE_ACTION, RESOURCE_DELETE, RESOURCE_WRITE};
    let e = env().await;
    e.set("uni", Orchestration::Uniform, 2);
    e.set("flex", Orchestration::Flexible, 1);
    let f = e.tb.fleet();
    f.add_vm(SUB, RG, "solo", None);
    let seen: Arc<Mutex<Vec<vmss_testbed::FleetEvent>>> = Arc::default();
    let sink = Arc::clone(&seen);
    f.set_event_sink(Some(Arc::new(move |ev| sink.lock().unwrap().push(ev))));
    let take = || -> Vec<(&'static str, String, String)> {
        std::mem::take(&mut *seen.lock().unwrap())
            .into_iter()
            .map(|ev| {
                let tail: Vec<&str> = ev.subject.split('/').skip(8).collect();
                (ev.event_type, tail.join("/"), ev.operation.clone())
            })
            .collect()
    };
    let compute = "Microsoft.Compute";
    // A power action on a Uniform instance: the action, and Resource Health's change.
    f.set_power_state(SUB, RG, "uni", "1", "deallocated");
    assert_eq!(
        take(),
        [
            (
                RESOURCE_ACTION,
                "uni/virtualMachines/1".to_string(),
                format!("{compute}/virtualMachineScaleSets/virtualMachines/deallocate/action")
            ),
            (
                AVAILABILITY_CHANGED,
                "uni/virtualMachines/1/providers/Microsoft.ResourceHealth/availabilityStatuses/current"
                    .to_string(),
                String::new()
            ),
        ]
    );
    f.set_power_state(SUB, RG, "uni", "1", "starting");
    assert!(take().is_empty(), "not a success yet");
    f.set_power_state(SUB, RG, "uni", "1", "running");
    let started = take();
    assert_eq!(started.len(), 2, "{started:?}");
    assert!(started[0].2.ends_with("/start/action"), "{started:?}");
    // A Flexible member and a standalone VM are ordinary VMs.
    f.set_power_state(SUB, RG, "flex", "0", "stopped");
    let stopped = take();
    assert_eq!(stopped[0].1, "flex_0");
    assert_eq!(
        stopped[0].2,
        format!("{compute}/virtualMachines/powerOff/action")
    );
    // VMs created and deleted; tags written.
    let id = f.add_instance(SUB, RG, "flex", "10.8.0.9".parse().unwrap());
    assert_eq!(
        take(),
        [(
            RESOURCE_WRITE,
            format!("flex_{id}"),
            format!("{compute}/virtualMachines/write")
        )]
    );
    f.remove_instance(SUB, RG, STANDALONE_VMS, "solo");
    assert_eq!(
        take(),
        [(
            RESOURCE_DELETE,
            "solo".to_string(),
            format!("{compute}/virtualMachines/delete")
        )]
    );
    f.set_tag(SUB, RG, "uni", "pool", Some("web"));
    assert_eq!(
        take(),
        [(
            RESOURCE_WRITE,
            "uni".to_string(),
            format!("{compute}/virtualMachineScaleSets/write")
        )]
    );
    f.set_instance_tag(SUB, RG, "uni", "0", "port", Some("8080"));
    assert_eq!(take()[0].1, "uni/virtualMachines/0");
    // A Spot eviction is the platform's: only Resource Health reports it, when the VM is
    // deallocated, without anyone reading the fleet.
    f.evict_instance(SUB, RG, "uni", "0");
    assert!(take().is_empty());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let evicted = take();
    assert_eq!(evicted.len(), 1, "{evicted:?}");
    assert_eq!(evicted[0].0, AVAILABILITY_CHANGED);
    // An application health change raises nothing (Resource Health does not report it).
    f.set_health(SUB, RG, "uni", "1", Some("unhealthy"));
    assert!(take().is_empty());
    // Both schemas of a health event.
    f.set_power_state(SUB, RG, "uni", "1", "stopped");
    let ev = std::mem::take(&mut *seen.lock().unwrap()).pop().unwrap();
    assert_eq!(ev.event_type, AVAILABILITY_CHANGED);
    let eg = ev.json(false);
    assert_eq!(eg["eventType"], AVAILABILITY_CHANGED);
    assert_eq!(
        eg["data"]["resourceInfo"]["properties"]["availabilityState"],
        "Unavailable"
    );
    let ce = ev.json(true);
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], AVAILABILITY_CHANGED);
    assert_eq!(ce["subject"], ev.subject);
    f.set_event_sink(None);
}

#[tokio::test]
async fn the_fleet_raises_the_resource_events_event_grid_would_when_operations_succeed() {
    use std::sync::{Arc, Mutex};
    let e = env().await;
    e.set("web", Orchestration::Uniform, 2);
    e.set("win", Orchestration::Uniform, 2);
    let f = e.tb.fleet();
    f.set_terminate_notification(SUB, RG, "win", Some(Duration::from_millis(400)));
    let seen: Arc<Mutex<Vec<vmss_testbed::FleetEvent>>> = Arc::default();
    let sink = Arc::clone(&seen);
    f.set_event_sink(Some(Arc::new(move |ev| sink.lock().unwrap().push(ev))));
    let take = || std::mem::take(&mut *seen.lock().unwrap());
    let short = |evs: &[vmss_testbed::FleetEvent]| -> Vec<(String, String)> {
        evs.iter()
            .map(|ev| {
                let kind = ev.event_type.rsplit('.').next().unwrap().to_string();
                let tail: Vec<&str> = ev.subject.rsplit('/').take(3).collect();
                (kind, tail.into_iter().rev().collect::<Vec<_>>().join("/"))
            })
            .collect()
    };

    f.scale_to(SUB, RG, "web", 3);
    let out = take();
    assert_eq!(
        short(&out),
        [(
            "ResourceWriteSuccess".into(),
            "Microsoft.Compute/virtualMachineScaleSets/web".into()
        )]
    );
    assert_eq!(out[0].subject, vmss_path("web").split('?').next().unwrap());
    let eg = out[0].json(false);
    assert_eq!(eg["eventType"], "Microsoft.Resources.ResourceWriteSuccess");
    assert_eq!(eg["data"]["status"], "Succeeded");
    let ce = out[0].json(true);
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["type"], "Microsoft.Resources.ResourceWriteSuccess");

    f.scale_to(SUB, RG, "web", 2);
    assert_eq!(
        short(&take()),
        [
            (
                "ResourceDeleteSuccess".into(),
                "web/virtualMachines/2".into()
            ),
            (
                "ResourceWriteSuccess".into(),
                "Microsoft.Compute/virtualMachineScaleSets/web".into()
            ),
        ]
    );
    // Inside a terminate window nothing is raised until the instances are gone.
    f.scale_to(SUB, RG, "win", 1);
    assert!(take().is_empty(), "the scale-in has not succeeded yet");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(f.instance_ids(SUB, RG, "win"), ["0"]);
    assert_eq!(
        short(&take()),
        [
            (
                "ResourceDeleteSuccess".into(),
                "win/virtualMachines/1".into()
            ),
            (
                "ResourceWriteSuccess".into(),
                "Microsoft.Compute/virtualMachineScaleSets/win".into()
            ),
        ]
    );
    f.set_event_sink(None);
    f.scale_to(SUB, RG, "web", 4);
    assert!(take().is_empty());
}

#[tokio::test]
async fn arm_buckets_are_per_subscription_and_principal_with_writes_and_deletes_apart() {
    const SUB2: &str = "00000000-1111-2222-3333-555555555555";
    let e = env_with(TestbedOptions {
        enforce_limits: true,
        arm_limits: ArmLimits {
            read_bucket: 3,
            reads_per_second: 0.01,
            write_bucket: 2,
            writes_per_second: 0.01,
            delete_bucket: 1,
            deletes_per_second: 0.01,
        },
        ..TestbedOptions::default()
    })
    .await;
    e.set("web", Orchestration::Uniform, 1);
    e.tb.fleet()
        .add_scale_set(SUB2, RG, "web", Orchestration::Uniform, "eastus");
    let get = |sub: &str| {
        format!(
            "{}/subscriptions/{sub}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/web?api-version={COMPUTE}",
            e.tb.arm_url()
        )
    };
    let send = |method: reqwest::Method, url: String, token: String| {
        let http = e.http.clone();
        async move {
            read(
                http.request(method, url)
                    .bearer_auth(token)
                    .json(&serde_json::json!({"properties": {}}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let reads = "x-ms-ratelimit-remaining-subscription-reads";
    let mut left = Vec::new();
    for _ in 0..3 {
        let r = send(reqwest::Method::GET, get(SUB), e.token.clone()).await;
        assert_eq!(r.status, 200, "{}", r.text);
        left.push(r.header(reads).unwrap());
    }
    assert_eq!(left, ["2", "1", "0"]);
    let r = send(reqwest::Method::GET, get(SUB), e.token.clone()).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "SubscriptionRequestsThrottled");
    assert!(r.text.contains("'read'"), "{}", r.text);
    assert_eq!(r.header(reads).as_deref(), Some("0"));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(wait >= 1, "Retry-After in whole seconds: {wait}");

    // Another subscription, and another principal in the same one, have their own bucket.
    let r = send(reqwest::Method::GET, get(SUB2), e.token.clone()).await;
    assert_eq!((r.status, r.header(reads).as_deref()), (200, Some("2")));
    let other = e.tb.issue_token_as("another-principal");
    let r = send(reqwest::Method::GET, get(SUB), other.clone()).await;
    assert_eq!((r.status, r.header(reads).as_deref()), (200, Some("2")));

    // Writes and deletes draw from their own buckets, not from the reads'.
    let pool = format!(
        "{}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/loadBalancers/lb/backendAddressPools/pool?api-version={NETWORK}",
        e.tb.arm_url()
    );
    let writes = "x-ms-ratelimit-remaining-subscription-writes";
    for want in ["1", "0"] {
        let r = send(reqwest::Method::PUT, pool.clone(), other.clone()).await;
        assert_ne!(r.status, 429, "{}", r.text);
        assert_eq!(r.header(writes).as_deref(), Some(want));
        assert!(r.header(reads).is_none());
    }
    let r = send(reqwest::Method::PUT, pool.clone(), other.clone()).await;
    assert_eq!(r.status, 429);
    assert!(r.text.contains("'write'"), "{}", r.text);
    assert!(r.header("retry-after").is_some());
    let deletes = "x-ms-ratelimit-remaining-subscription-deletes";
    let r = send(reqwest::Method::DELETE, pool.clone(), other.clone()).await;
    assert_ne!(r.status, 429, "{}", r.text);
    assert_eq!(r.header(deletes).as_deref(), Some("0"));
    let r = send(reqwest::Method::GET, get(SUB), other).await;
    assert_eq!((r.status, r.header(reads).as_deref()), (200, Some("1")));
}
