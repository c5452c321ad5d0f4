//! The fake ARM is as strict as Azure: auth, api-version, routing, paging, 404 bodies.

use crate::support::common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use vmss_testbed::{Orchestration, Service, TestbedOptions};

#[tokio::test]
async fn missing_authorization_header_is_401_authentication_failed_with_www_authenticate() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    let r = read(e.http.get(&url).send().await.unwrap()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "AuthenticationFailed");
    assert_eq!(
        r.json()["error"]["message"],
        "Authentication failed. The 'Authorization' header is missing."
    );
    let www = r.header("www-authenticate").unwrap();
    assert!(www.starts_with("Bearer authorization_uri=\""), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
}

#[tokio::test]
async fn unknown_or_garbled_bearer_token_is_401_invalid_authentication_token() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    for tok in ["garbage", "eyJ0eXAiOiJKV1QifQ.e30.sig"] {
        let r = read(e.http.get(&url).bearer_auth(tok).send().await.unwrap()).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.code(), "InvalidAuthenticationToken");
        assert!(r.header("www-authenticate").is_some());
    }
    let r = read(
        e.http
            .get(&url)
            .header("authorization", format!("Basic {}", e.token))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "AuthenticationFailed");
}

#[tokio::test]
async fn expired_token_is_401_expired_authentication_token() {
    let e = env_with(TestbedOptions {
        token_lifetime: Duration::from_millis(300),
        ..TestbedOptions::default()
    })
    .await;
    e.set("web", Orchestration::Uniform, 1);
    let q = format!("{}?api-version={COMPUTE}", vmss_path("web"));
    assert_eq!(e.arm(&q).await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = e.arm(&q).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "ExpiredAuthenticationToken");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("The access token expiry UTC time '"),
        "{msg}"
    );
}

#[tokio::test]
async fn token_for_another_audience_is_rejected() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let r = e
        .http
        .post(format!(
            "{}/tenant-1/oauth2/v2.0/token",
            e.tb.authority_url()
        ))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "client-1"),
            ("client_secret", "secret-1"),
            ("scope", "https://vault.azure.net/.default"),
        ])
        .send()
        .await
        .unwrap();
    let tok: Value = r.json().await.unwrap();
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    let r = read(
        e.http
            .get(&url)
            .bearer_auth(tok["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("wrong audience"));
}

#[tokio::test]
async fn missing_api_version_is_400_missing_api_version_parameter() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let r = e.arm(&vmss_path("web")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": {"code": "MissingApiVersionParameter", "message": "The api-version query parameter (?api-version=) is required for all requests."}})
    );
}

#[tokio::test]
async fn unsupported_api_version_is_400_invalid_api_version_parameter_listing_supported() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let r = e
        .arm(&format!("{}?api-version=2099-01-01", vmss_path("web")))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidApiVersionParameter");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with(
            "The api-version '2099-01-01' is invalid. The supported versions are '2026-03-01,"
        ),
        "{msg}"
    );
    for v in [
        "2024-07-01",
        "2024-11-01",
        "2025-04-01",
        "2025-11-01",
        "2026-03-01",
    ] {
        let r = e
            .arm(&format!("{}?api-version={v}", vmss_path("web")))
            .await;
        assert_eq!(r.status, 200, "{v}");
    }
}

#[tokio::test]
async fn vmss_nic_list_accepts_only_api_version_2018_10_01() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 2);
    for v in ["2024-07-01", "2023-09-01", "2017-03-30", "2025-05-01"] {
        let r = e
            .arm(&format!(
                "{}/networkInterfaces?api-version={v}",
                vmss_path("web")
            ))
            .await;
        assert_eq!(r.status, 400, "{v}");
        assert_eq!(r.code(), "InvalidApiVersionParameter");
        assert!(
            r.text.contains("The supported versions are '2018-10-01'"),
            "{}",
            r.text
        );
    }
    let r = e
        .arm(&format!(
            "{}/networkInterfaces?api-version=2018-10-01",
            vmss_path("web")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test]
async fn paths_match_case_insensitively_and_ids_keep_canonical_casing() {
    let e = env().await;
    e.set("Web-Set", Orchestration::Uniform, 1);
    let paths = [
        format!("/subscriptions/{SUB}/resourcegroups/RG-WEB/providers/microsoft.compute/virtualmachinescalesets/web-set"),
        format!("/SUBSCRIPTIONS/{SUB}/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachineScaleSets/WEB-SET"),
    ];
    for p in paths {
        let r = e.arm(&format!("{p}?api-version={COMPUTE}")).await;
        assert_eq!(r.status, 200, "{p}: {}", r.text);
        let v = r.json();
        assert_eq!(v["id"], vmss_path("Web-Set"));
        assert_eq!(v["name"], "Web-Set");
    }
    let p = format!(
        "/subscriptions/{SUB}/resourceGroups/{RG}/providers/microsoft.Compute/virtualMachineScaleSets/web-set/networkInterfaces?api-version={VMSS_NET}"
    );
    let v = e.arm(&p).await.json();
    assert!(v["value"][0]["id"]
        .as_str()
        .unwrap()
        .starts_with(&vmss_path("Web-Set")));
}

#[tokio::test]
async fn vmss_get_reports_mode_capacity_and_capacity_can_disagree_with_instances() {
    let e = env().await;
    e.set("uni", Orchestration::Uniform, 3);
    e.set("flex", Orchestration::Flexible, 2);
    let v = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("uni")))
        .await
        .json();
    assert_eq!(v["type"], "Microsoft.Compute/virtualMachineScaleSets");
    assert_eq!(v["location"], "eastus");
    assert_eq!(v["sku"]["capacity"], 3);
    assert_eq!(v["properties"]["orchestrationMode"], "Uniform");
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert!(v["properties"]["uniqueId"].as_str().unwrap().len() == 36);
    let v = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("flex")))
        .await
        .json();
    assert_eq!(v["properties"]["orchestrationMode"], "Flexible");
    assert_eq!(v["sku"]["capacity"], 2);

    e.tb.fleet().set_tag(SUB, RG, "uni", "pool", Some("web"));
    let v = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("uni")))
        .await
        .json();
    assert_eq!(v["tags"], serde_json::json!({"pool": "web"}));

    e.tb.fleet().set_capacity_only(SUB, RG, "uni", 7);
    let v = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("uni")))
        .await
        .json();
    assert_eq!(v["sku"]["capacity"], 7);
    let (vms, _) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("uni")
        ))
        .await;
    assert_eq!(vms.len(), 3);
    e.tb.fleet().remove_instance(SUB, RG, "uni", "0");
    let v = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("uni")))
        .await
        .json();
    assert_eq!(v["sku"]["capacity"], 2, "capacity follows membership again");
}

#[tokio::test]
async fn unknown_resources_answer_404_with_arm_error_bodies() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let r = e
        .arm(&format!("{}?api-version={COMPUTE}", vmss_path("nope")))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["message"],
        format!("The Resource 'Microsoft.Compute/virtualMachineScaleSets/nope' under resource group '{RG}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix")
    );
    assert_eq!(r.code(), "ResourceNotFound");

    let r = e
        .arm(&format!(
            "/subscriptions/{SUB}/resourceGroups/other/providers/Microsoft.Compute/virtualMachineScaleSets/web?api-version={COMPUTE}"
        ))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "ResourceGroupNotFound");

    let r = e
        .arm(&format!(
            "/subscriptions/other-sub/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/web?api-version={COMPUTE}"
        ))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "SubscriptionNotFound");

    for p in [
        format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("nope")
        ),
        format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("nope")
        ),
    ] {
        let r = e.arm(&p).await;
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.code(), "ParentResourceNotFound");
    }
    let r = e
        .arm(&format!(
            "{}/virtualMachines/42?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "ResourceNotFound");
}

#[tokio::test]
async fn paging_follows_next_link_across_pages_keeping_the_query() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 5);
    let first = e
        .arm(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("web")
        ))
        .await
        .json();
    assert_eq!(first["value"].as_array().unwrap().len(), 2);
    let next = first["nextLink"].as_str().unwrap();
    assert!(next.starts_with(&e.tb.arm_url()), "{next}");
    assert!(next.contains("api-version=2024-07-01"), "{next}");
    assert!(next.contains("$expand=instanceView"), "{next}");
    assert!(next.contains("$skiptoken="), "{next}");

    let (vms, pages) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("web")
        ))
        .await;
    assert_eq!(pages, 3);
    let ids: Vec<&str> = vms
        .iter()
        .map(|v| v["instanceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["0", "1", "2", "3", "4"]);
    assert!(vms
        .iter()
        .all(|v| v["properties"]["instanceView"].is_object()));

    let (nics, pages) = e
        .arm_all(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(pages, 3);
    let mut ips: Vec<Ipv4Addr> = nics
        .iter()
        .map(|n| {
            n["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    ips.sort();
    assert_eq!(ips, e.tb.fleet().instance_ips(SUB, RG, "web"));

    // exactly a multiple of the page size: the last page has no nextLink and no empty page follows
    e.tb.fleet().scale_to(SUB, RG, "web", 4);
    let (vms, pages) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert_eq!((vms.len(), pages), (4, 2));
}

#[tokio::test]
async fn paging_survives_instances_removed_between_pages() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 6);
    let first = e
        .arm(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await
        .json();
    e.tb.fleet().remove_instance(SUB, RG, "web", "2");
    let mut url = first["nextLink"].as_str().unwrap().to_string();
    let mut seen: Vec<String> = first["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["instanceId"].as_str().unwrap().to_string())
        .collect();
    loop {
        let v = e.arm_url(&url).await.json();
        seen.extend(
            v["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["instanceId"].as_str().unwrap().to_string()),
        );
        match v["nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["0", "1", "3", "4", "5"]);
}

#[tokio::test]
async fn vm_list_instance_view_reports_power_and_provisioning_state() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 2);
    e.tb.fleet()
        .set_power_state(SUB, RG, "web", "1", "deallocated");
    e.tb.fleet()
        .set_provisioning_state(SUB, RG, "web", "0", "Creating");
    let (vms, _) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("web")
        ))
        .await;
    let codes = |v: &Value| -> Vec<String> {
        v["properties"]["instanceView"]["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["code"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        codes(&vms[0]),
        ["ProvisioningState/creating", "PowerState/running"]
    );
    assert_eq!(vms[0]["properties"]["provisioningState"], "Creating");
    assert_eq!(
        codes(&vms[1]),
        ["ProvisioningState/succeeded", "PowerState/deallocated"]
    );

    // without $expand there is no instance view
    let (vms, _) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert!(vms[0]["properties"].get("instanceView").is_none());

    let r = e
        .arm(&format!(
            "{}/virtualMachines/1/instanceView?api-version={COMPUTE}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["statuses"][1]["code"], "PowerState/deallocated");
}

#[tokio::test]
async fn vm_list_accepts_documented_filter_select_expand_and_refuses_others() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 3);
    let base = format!("{}/virtualMachines?api-version={COMPUTE}", vmss_path("web"));
    let ok = [
        "&$filter=startswith(instanceView/statuses/code,%20'PowerState')%20eq%20true",
        "&$filter=properties/latestModelApplied+eq+true",
        "&$select=instanceView/statuses",
        "&$expand=instanceView&$select=instanceView",
    ];
    for q in ok {
        let r = e.arm(&format!("{base}{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
    }
    let r = e.arm(&format!("{base}&$filter=name%20eq%20'x'")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidParameter");
    let r = e.arm(&format!("{base}&$expand=everything")).await;
    assert_eq!(r.status, 400);
    let (vms, _) = e
        .arm_all(&format!(
            "{base}&$filter=properties/latestModelApplied%20eq%20false"
        ))
        .await;
    assert!(vms.is_empty());
}

#[tokio::test]
async fn flexible_set_members_are_ordinary_vms_and_nics() {
    let e = env().await;
    e.set("flex", Orchestration::Flexible, 3);
    let set_id = vmss_path("flex");

    // The VMSS NIC list has nothing for a Flexible set, as in Azure.
    let (nics, _) = e
        .arm_all(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            set_id
        ))
        .await;
    assert!(nics.is_empty());

    // VirtualMachineScaleSetVMs_List gives the Flex shape with virtualMachineResourceId.
    let (members, _) = e
        .arm_all(&format!("{set_id}/virtualMachines?api-version={COMPUTE}"))
        .await;
    assert_eq!(members.len(), 3);
    assert_eq!(
        members[0]["type"],
        "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
    );
    let vm_id = members[0]["properties"]["virtualMachineResourceId"]
        .as_str()
        .unwrap();
    assert_eq!(
        vm_id,
        format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/flex_0")
    );

    // VirtualMachines_List with the documented $filter and $expand.
    let filter = format!("'virtualMachineScaleSet/id' eq '{}'", set_id.to_lowercase());
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("api-version", COMPUTE)
        .append_pair("$filter", &filter)
        .append_pair("$expand", "instanceView")
        .finish();
    let (vms, pages) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines?{q}"
        ))
        .await;
    assert_eq!((vms.len(), pages), (3, 2));
    assert_eq!(vms[0]["properties"]["virtualMachineScaleSet"]["id"], set_id);
    assert_eq!(
        vms[0]["properties"]["instanceView"]["statuses"][1]["code"],
        "PowerState/running"
    );
    let nic_id = vms[0]["properties"]["networkProfile"]["networkInterfaces"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // $expand without $filter is refused.
    let r = e
        .arm(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE}&$expand=instanceView"
        ))
        .await;
    assert_eq!(r.status, 400);

    // NetworkInterfaces_Get and _List join on properties.virtualMachine.id.
    let r = e.arm(&format!("{nic_id}?api-version={NETWORK}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let nic = r.json();
    assert_eq!(nic["properties"]["virtualMachine"]["id"], vms[0]["id"]);
    assert_eq!(nic["properties"]["primary"], true);
    let (all, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces?api-version={NETWORK}"
        ))
        .await;
    let mut ips: Vec<Ipv4Addr> = all
        .iter()
        .map(|n| {
            n["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    ips.sort();
    assert_eq!(ips, e.tb.fleet().instance_ips(SUB, RG, "flex"));

    // Network api-versions apply to NIC Get.
    let r = e.arm(&format!("{nic_id}?api-version=2099-01-01")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn secondary_nic_is_listed_as_non_primary() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 2);
    e.tb.fleet()
        .add_secondary_nic(SUB, RG, "web", "1", Ipv4Addr::new(192, 168, 7, 7));
    let (nics, _) = e
        .arm_all(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("web")
        ))
        .await;
    assert_eq!(nics.len(), 3);
    let second: Vec<&Value> = nics
        .iter()
        .filter(|n| {
            n["properties"]["virtualMachine"]["id"]
                .as_str()
                .unwrap()
                .ends_with("/virtualMachines/1")
        })
        .collect();
    assert_eq!(second.len(), 2);
    let primary: Vec<bool> = second
        .iter()
        .map(|n| n["properties"]["primary"].as_bool().unwrap())
        .collect();
    assert_eq!(primary, [true, false]);
    assert_eq!(
        second[1]["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"],
        "192.168.7.7"
    );
    assert_eq!(e.tb.fleet().instance_ips(SUB, RG, "web").len(), 2);
}

#[tokio::test]
async fn scale_to_hands_out_sequential_ips_and_removes_highest_ids() {
    let e = env().await;
    let f = e.tb.fleet();
    f.add_scale_set(SUB, RG, "web", Orchestration::Uniform, "eastus");
    f.set_ip_allocator_base(Ipv4Addr::new(127, 0, 0, 2));
    f.scale_to(SUB, RG, "web", 3);
    assert_eq!(
        f.instance_ips(SUB, RG, "web"),
        [
            Ipv4Addr::new(127, 0, 0, 2),
            Ipv4Addr::new(127, 0, 0, 3),
            Ipv4Addr::new(127, 0, 0, 4)
        ]
    );
    f.scale_to(SUB, RG, "web", 1);
    assert_eq!(f.instance_ids(SUB, RG, "web"), ["0"]);
    f.scale_to(SUB, RG, "web", 2);
    assert_eq!(f.instance_ids(SUB, RG, "web"), ["0", "3"]);
    assert_eq!(
        f.instance_ips(SUB, RG, "web"),
        [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 5)],
        "IPs are never reused"
    );
    let id = f.add_instance(SUB, RG, "web", Ipv4Addr::new(10, 9, 9, 9));
    assert_eq!(id, "4");
}

#[tokio::test]
async fn arm_answers_carry_request_id_and_decreasing_read_budget() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let q = format!("{}?api-version={COMPUTE}", vmss_path("web"));
    let a = e.arm(&q).await;
    let b = e.arm(&q).await;
    assert_eq!(a.header("x-ms-request-id").unwrap().len(), 36);
    let ra: u64 = a
        .header("x-ms-ratelimit-remaining-subscription-reads")
        .unwrap()
        .parse()
        .unwrap();
    let rb: u64 = b
        .header("x-ms-ratelimit-remaining-subscription-reads")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rb <= ra && ra < 250, "{ra} {rb}");
}

#[tokio::test]
async fn vmss_list_in_group_and_subscription_pages_through_every_set() {
    let e = env().await;
    for n in ["a", "b", "c"] {
        e.set(n, Orchestration::Uniform, 0);
    }
    e.tb.fleet()
        .add_scale_set(SUB, "rg-other", "d", Orchestration::Flexible, "westus");
    let (sets, pages) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version={COMPUTE}"
        ))
        .await;
    assert_eq!((sets.len(), pages), (3, 2));
    let (sets, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version={COMPUTE}"
        ))
        .await;
    let mut names: Vec<&str> = sets.iter().map(|s| s["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c", "d"]);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_refused() {
    let e = env().await;
    e.set("web", Orchestration::Uniform, 1);
    let r = e
        .arm(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks?api-version={COMPUTE}"
        ))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "InvalidResourceType");
    let url = format!(
        "{}{}?api-version={COMPUTE}",
        e.tb.arm_url(),
        vmss_path("web")
    );
    let r = read(
        e.http
            .delete(&url)
            .bearer_auth(&e.token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 405);
}

#[tokio::test]
async fn large_fleet_of_10000_instances_is_served_quickly() {
    let e = env_with(TestbedOptions {
        page_size: 1000,
        ..TestbedOptions::default()
    })
    .await;
    let t0 = Instant::now();
    e.set("big", Orchestration::Uniform, 10_000);
    let build = t0.elapsed();
    let t1 = Instant::now();
    let (vms, pages) = e
        .arm_all(&format!(
            "{}/virtualMachines?api-version={COMPUTE}&$expand=instanceView",
            vmss_path("big")
        ))
        .await;
    let (nics, _) = e
        .arm_all(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("big")
        ))
        .await;
    let serve = t1.elapsed();
    assert_eq!((vms.len(), pages, nics.len()), (10_000, 10, 10_000));
    assert!(build < Duration::from_secs(5), "building took {build:?}");
    assert!(serve < Duration::from_secs(30), "serving took {serve:?}");

    // With tiny pages, a page deep into the list costs the same as the first one.
    let small = env().await;
    small.set("big", Orchestration::Uniform, 10_000);
    let t2 = Instant::now();
    let mut url = format!(
        "{}{}/networkInterfaces?api-version={VMSS_NET}",
        small.tb.arm_url(),
        vmss_path("big")
    );
    for _ in 0..200 {
        let v = small.arm_url(&url).await.json();
        url = v["nextLink"].as_str().unwrap().to_string();
    }
    assert!(
        t2.elapsed() < Duration::from_secs(10),
        "200 pages took {:?}",
        t2.elapsed()
    );
    assert_eq!(small.tb.requests_to(Service::Arm).len(), 200);
}

#[tokio::test]
async fn subscription_wide_lists_page_across_resource_groups() {
    let e = env().await;
    let f = e.tb.fleet();
    for (rg, set, n) in [("rg-a", "x", 3), ("rg-b", "y", 0), ("rg-c", "z", 2)] {
        f.add_scale_set(SUB, rg, set, Orchestration::Flexible, "eastus");
        f.scale_to(SUB, rg, set, n);
    }
    f.add_secondary_nic(SUB, "rg-c", "z", "z_1", Ipv4Addr::new(172, 16, 0, 9));
    let (vms, pages) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version={COMPUTE}"
        ))
        .await;
    let names: Vec<&str> = vms.iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["x_0", "x_1", "x_2", "z_0", "z_1"]);
    assert_eq!(pages, 3);
    let (nics, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Network/networkInterfaces?api-version={NETWORK}"
        ))
        .await;
    assert_eq!(nics.len(), 6);
    let (sets, _) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version={COMPUTE}"
        ))
        .await;
    assert_eq!(sets.len(), 3);
}

#[tokio::test]
async fn large_flexible_fleet_pages_in_constant_time_per_page() {
    let e = env().await;
    e.set("flex", Orchestration::Flexible, 10_000);
    e.set("other", Orchestration::Flexible, 3);
    let filter = format!("'virtualMachineScaleSet/id' eq '{}'", vmss_path("other"));
    let q: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("api-version", COMPUTE)
        .append_pair("$filter", &filter)
        .append_pair("$expand", "instanceView")
        .finish();
    let (vms, pages) = e
        .arm_all(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines?{q}"
        ))
        .await;
    assert_eq!((vms.len(), pages), (3, 2));

    let t = Instant::now();
    let mut url = format!(
        "{}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces?api-version={NETWORK}",
        e.tb.arm_url()
    );
    for _ in 0..200 {
        let v = e.arm_url(&url).await.json();
        assert_eq!(v["value"].as_array().unwrap().len(), 2);
        url = v["nextLink"].as_str().unwrap().to_string();
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "200 pages took {:?}",
        t.elapsed()
    );
}
