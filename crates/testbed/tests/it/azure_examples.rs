//! The fake ARM answers with the same shape as Microsoft's official examples
//! (`shared/azure-examples`, verbatim x-ms-examples from azure-rest-api-specs).
//! When the shared directory is absent these tests print that they skipped and pass.

use crate::support::common;

use common::*;
use serde_json::Value;
use vmss_testbed::{
    azure_examples, shared_dir, Orchestration, COMPUTE_API_VERSIONS, NETWORK_API_VERSIONS,
};

/// Every key of `example` (recursively; arrays compared on their first element) must be in
/// `actual` with the same JSON type. `null` in the example accepts anything. Paths listed in
/// `ignore` (e.g. "properties.hostGroup", "value[].properties.x") are example-specific.
fn shape_diff(example: &Value, actual: &Value, path: &str, ignore: &[&str], out: &mut Vec<String>) {
    if ignore.contains(&path) {
        return;
    }
    match (example, actual) {
        (Value::Null, _) => {}
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if ignore.contains(&p.as_str()) {
                    continue;
                }
                match a.get(k) {
                    Some(av) => shape_diff(ev, av, &p, ignore, out),
                    None => out.push(format!("missing key {p}")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if let (Some(ef), Some(af)) = (e.first(), a.first()) {
                shape_diff(ef, af, &format!("{path}[]"), ignore, out);
            }
        }
        (Value::String(_), Value::String(_))
        | (Value::Number(_), Value::Number(_))
        | (Value::Bool(_), Value::Bool(_)) => {}
        (e, a) => out.push(format!("{path}: example {e} but fake {a}")),
    }
}

fn example(name: &str) -> Option<(Value, Value)> {
    let (_, v) = azure_examples().into_iter().find(|(n, _)| n == name)?;
    let body = v["responses"]["200"]["body"].clone();
    Some((v["parameters"].clone(), body))
}

fn skip_note() -> bool {
    if shared_dir().is_none() {
        eprintln!("skipped: ../shared (azure-examples) is absent");
        return true;
    }
    false
}

fn assert_same_shape(name: &str, example: &Value, actual: &Value, ignore: &[&str]) {
    let mut out = Vec::new();
    shape_diff(example, actual, "", ignore, &mut out);
    assert!(
        out.is_empty(),
        "{name}: fake differs from the official example:\n{}",
        out.join("\n")
    );
}

async fn fleet() -> Env {
    let e = env().await;
    e.set("uni", Orchestration::Uniform, 3);
    e.set("flex", Orchestration::Flexible, 3);
    e
}

#[tokio::test]
async fn every_shared_example_file_parses_with_a_200_response() {
    let Some(dir) = shared_dir() else {
        eprintln!("skipped: ../shared is absent");
        return;
    };
    let dir = dir.join("azure-examples");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(v["parameters"].is_object(), "{}", f.display());
        let responses = v["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|k| k.starts_with('2')),
            "{} has no 2xx response",
            f.display()
        );
    }
    assert_eq!(azure_examples().len(), files.len());
}

#[tokio::test]
async fn example_api_versions_are_accepted_by_the_fake() {
    if skip_note() {
        return;
    }
    for (name, v) in azure_examples() {
        let ver = v["parameters"]["api-version"].as_str().unwrap_or_default();
        if name.starts_with("VirtualMachine") {
            assert!(COMPUTE_API_VERSIONS.contains(&ver), "{name}: {ver}");
        }
        if name == "NetworkInterfaces_Get.json" {
            assert!(NETWORK_API_VERSIONS.contains(&ver), "{name}: {ver}");
        }
    }
}

#[tokio::test]
async fn vmss_get_matches_the_official_example_shape() {
    let Some((params, body)) = example("VirtualMachineScaleSets_Get.json") else {
        return eprintln!("skipped: example absent");
    };
    let e = fleet().await;
    let ver = params["api-version"].as_str().unwrap();
    for set in ["uni", "flex"] {
        let r = e
            .arm(&format!("{}?api-version={ver}", vmss_path(set)))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // tag keys are data, not shape; hostGroup only exists on dedicated hosts
        assert_same_shape(
            "VirtualMachineScaleSets_Get",
            &body,
            &r.json(),
            &["properties.hostGroup", "tags.myTag1"],
        );
    }
}

#[tokio::test]
async fn vmss_list_matches_the_official_example_shape() {
    let Some((params, body)) = example("VirtualMachineScaleSets_List_MinimumSet.json") else {
        return eprintln!("skipped: example absent");
    };
    let e = fleet().await;
    let ver = params["api-version"].as_str().unwrap();
    let r = e
        .arm(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets?api-version={ver}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_same_shape("VirtualMachineScaleSets_List", &body, &r.json(), &[]);
}

#[tokio::test]
async fn vmss_nic_list_matches_the_official_example_shape() {
    let Some((_params, body)) =
        example("NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces.json")
    else {
        return eprintln!("skipped: example absent");
    };
    let e = fleet().await;
    // The example carries its package version (2024-07-01); the operation itself only
    // accepts ApiVersionVmssParameter = 2018-10-01, as in Azure.
    let r = e
        .arm(&format!(
            "{}/networkInterfaces?api-version={VMSS_NET}",
            vmss_path("uni")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let actual = r.json();
    assert_same_shape(
        "NetworkInterfaces_ListVirtualMachineScaleSetNetworkInterfaces",
        &body,
        &actual,
        &["value[].properties.ipConfigurations[].properties.publicIPAddress"],
    );
    // ids follow the example's pattern: .../virtualMachines/{i}/networkInterfaces/{nicCfg}
    let id = actual["value"][0]["id"].as_str().unwrap();
    let vm = actual["value"][0]["properties"]["virtualMachine"]["id"]
        .as_str()
        .unwrap();
    assert!(
        id.starts_with(&format!("{vm}/networkInterfaces/")),
        "{id} vs {vm}"
    );
    assert!(vm.ends_with("/virtualMachines/0"));
}

#[tokio::test]
async fn vmss_vm_instance_view_matches_the_official_example_shape() {
    let Some((params, body)) = example("VirtualMachineScaleSetVMs_GetInstanceView.json") else {
        return eprintln!("skipped: example absent");
    };
    let e = fleet().await;
    let ver = params["api-version"].as_str().unwrap();
    let r = e
        .arm(&format!(
            "{}/virtualMachines/0/instanceView?api-version={ver}",
            vmss_path("uni")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // assignedHost only exists for VMs on dedicated hosts
    assert_same_shape(
        "VirtualMachineScaleSetVMs_GetInstanceView",
        &body,
        &r.json(),
        &["assignedHost"],
    );

    // the instance view embedded by VirtualMachineScaleSetVMs_List?$expand=instanceView too
    let r = e
        .arm(&format!(
            "{}/virtualMachines?api-version={ver}&$expand=instanceView",
            vmss_path("uni")
        ))
        .await;
    let v = r.json();
    assert_same_shape(
        "VirtualMachineScaleSetVMs_List instanceView",
        &body,
        &v["value"][0]["properties"]["instanceView"],
        &["assignedHost"],
    );
    assert_eq!(v["value"][0]["instanceId"], "0");
}

#[tokio::test]
async fn flex_vmss_vm_list_matches_the_official_example_shape() {
    let Some((params, body)) = example("VirtualMachineScaleSetVMs_List_Flex.json") else {
        return eprintln!("skipped: example absent");
    };
    let e = fleet().await;
    let ver = params["api-version"].as_str().unwrap();
    let r = e
        .arm(&format!(
            "{}/virtualMachines?api-version={ver}",
            vmss_path("flex")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_same_shape(
        "VirtualMachineScaleSetVMs_List (Flex)",
        &body,
        &r.json(),
        &[],
    );
}

#[tokio::test]
async fn nic_get_matches_the_official_example_shape() {
    let Some((params, body)) = example("NetworkInterfaces_Get.json") else {
        return eprintln!("skipped: example absent");
    };
    let e = fleet().await;
    let ver = params["api-version"].as_str().unwrap();
    let r = e
        .arm(&format!(
            "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network/networkInterfaces/flex_0-nic?api-version={ver}"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_same_shape(
        "NetworkInterfaces_Get",
        &body,
        &r.json(),
        &[
            "properties.ipConfigurations[].properties.publicIPAddress",
            "properties.dscpConfiguration",
        ],
    );
}

#[tokio::test]
async fn vm_instance_view_and_list_all_match_the_official_example_shapes() {
    let e = fleet().await;
    if let Some((params, body)) = example("VirtualMachines_InstanceView.json") {
        let ver = params["api-version"].as_str().unwrap();
        let r = e
            .arm(&format!(
                "/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/flex_1/instanceView?api-version={ver}"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        // patch status and boot diagnostics depend on VM features the fleet does not model
        assert_same_shape(
            "VirtualMachines_InstanceView",
            &body,
            &r.json(),
            &["patchStatus", "bootDiagnostics"],
        );
    } else {
        eprintln!("skipped: VirtualMachines_InstanceView example absent");
    }
    if let Some((params, body)) = example("VirtualMachines_ListAll_MinimumSet.json") {
        let ver = params["api-version"].as_str().unwrap();
        let r = e
            .arm(&format!(
                "/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version={ver}"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_same_shape("VirtualMachines_ListAll", &body, &r.json(), &[]);
    } else {
        eprintln!("skipped: VirtualMachines_ListAll example absent");
    }
}

#[test]
fn shape_diff_reports_missing_keys_and_type_changes() {
    let ex = serde_json::json!({"a": 1, "b": {"c": "x"}, "d": [{"e": true}], "n": null});
    let ok = serde_json::json!({"a": 2, "b": {"c": "y", "z": 0}, "d": [{"e": false}], "n": 5});
    let mut out = Vec::new();
    shape_diff(&ex, &ok, "", &[], &mut out);
    assert!(out.is_empty(), "{out:?}");
    let bad = serde_json::json!({"a": "2", "b": {}, "d": [{"e": 1}]});
    shape_diff(&ex, &bad, "", &[], &mut out);
    assert_eq!(out.len(), 4, "{out:?}");
}
