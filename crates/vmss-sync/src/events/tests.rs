use super::*;
use crate::discovery::{Groups, TagFilter};
use proptest::prelude::*;
use std::time::Duration;

const SUB: &str = "5f2ae4a1-7a6c-4b43-9c0e-1f7c0d3b2e11";

fn set_id(rg: &str, name: &str) -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}")
}

/// A `Microsoft.Resources.ResourceWriteSuccess` in the Event Grid schema, shaped as in
/// Microsoft's "Azure Resource Manager as an Event Grid source" example.
fn event_grid_write(subject: &str) -> serde_json::Value {
    serde_json::json!({
        "subject": subject,
        "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-12-06T10:31:04.6117357Z",
        "id": "4db48cba-50a2-455a-93b4-de41a3b5b7f6",
        "data": {
            "authorization": {
                "scope": subject,
                "action": "Microsoft.Compute/virtualMachineScaleSets/write",
                "evidence": {"role": "Contributor"}
            },
            "claims": {"appid": "00000000-0000-0000-0000-000000000000"},
            "correlationId": "a1a1a1a1-0000-0000-0000-000000000000",
            "httpRequest": {"clientRequestId": "", "clientIpAddress": "203.0.113.7", "method": "PUT", "url": format!("https://management.azure.com{subject}?api-version=2024-07-01")},
            "resourceProvider": "Microsoft.Compute",
            "resourceUri": subject,
            "operationName": "Microsoft.Compute/virtualMachineScaleSets/write",
            "status": "Succeeded",
            "subscriptionId": SUB,
            "tenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47"
        },
        "dataVersion": "2",
        "metadataVersion": "1",
        "topic": format!("/subscriptions/{SUB}")
    })
}

/// The same in CloudEvents 1.0.
fn cloud_event(kind: &str, subject: &str) -> serde_json::Value {
    serde_json::json!({
        "source": format!("/subscriptions/{SUB}/resourceGroups/web-rg"),
        "subject": subject,
        "type": kind,
        "time": "2026-12-06T10:31:04.6117357Z",
        "id": "0f6c3b2e-1111-2222-3333-444455556666",
        "data": {"resourceInfo": {"id": subject, "name": "x", "type": "Microsoft.Compute/virtualMachines"}},
        "specversion": "1.0"
    })
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

fn sel(rg: Option<&str>, sets: &[&str], tags: bool) -> Selection {
    Selection {
        subscription: SUB.to_uppercase(),
        groups: rg.map_or(Groups::All, |g| Groups::Named(vec![g.to_string()])),
        sets: sets.iter().map(|s| s.to_string()).collect(),
        tags: tags.then(TagFilter::default),
        views: true,
    }
}

#[test]
fn event_grid_schema_base64_as_event_grid_writes_it_into_a_queue() {
    let subject = set_id("web-rg", "web");
    let events = parse_message(&b64(&event_grid_write(&subject))).expect("parses");
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.schema, Schema::EventGrid);
    assert_eq!(e.kind, EventType::ResourceWriteSuccess);
    assert_eq!(e.id, "4db48cba-50a2-455a-93b4-de41a3b5b7f6");
    assert_eq!(
        e.resource,
        Resource::ScaleSet {
            subscription: SUB.into(),
            resource_group: "web-rg".into(),
            name: "web".into(),
            member: false
        }
    );
    assert!(e.is_scale_event());
    // Unencoded JSON (the subscription's base64 option off) reads the same.
    assert_eq!(
        parse_message(&event_grid_write(&subject).to_string()).unwrap(),
        events
    );
}

#[test]
fn cloud_events_of_every_type_listed() {
    let vm = format!("/subscriptions/{SUB}/resourceGroups/web-rg/providers/Microsoft.Compute/virtualMachines/web_3f2a");
    for (name, kind) in [
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
        ("Microsoft.Storage.BlobCreated", EventType::Other),
    ] {
        let e = &parse_message(&b64(&cloud_event(name, &vm))).expect("parses")[0];
        assert_eq!(e.schema, Schema::CloudEvents);
        assert_eq!(e.kind, kind, "{name}");
        assert_eq!(e.type_name, name);
        assert!(matches!(e.resource, Resource::Vm { ref name, .. } if name == "web_3f2a"));
    }
}

#[test]
fn subjects_name_sets_members_vms_nics_and_health_extension_resources() {
    let p = |s: &str| Resource::parse(s);
    let set = set_id("rg", "web");
    assert!(matches!(p(&set), Resource::ScaleSet { member: false, .. }));
    assert!(matches!(
        p(&format!("{set}/virtualMachines/3")),
        Resource::ScaleSet { member: true, ref name, .. } if name == "web"
    ));
    assert!(matches!(
        p(&format!(
            "{set}/virtualMachines/3/networkInterfaces/web-nic"
        )),
        Resource::ScaleSet { member: true, .. }
    ));
    // An availability status is an extension resource of its VM.
    let health = format!(
        "/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/providers/Microsoft.ResourceHealth/availabilityStatuses/current"
    );
    assert!(matches!(p(&health), Resource::Vm { ref name, .. } if name == "vm1"));
    assert!(matches!(
        p(&format!("/SUBSCRIPTIONS/{SUB}/resourcegroups/other/providers/microsoft.network/NetworkInterfaces/n1")),
        Resource::Nic { ref resource_group, .. } if resource_group == "other"
    ));
    assert!(matches!(
        p(&format!("/subscriptions/{SUB}/resourceGroups/rg")),
        Resource::ResourceGroup { .. }
    ));
    for other in [
        "",
        "/",
        "not a resource id",
        &format!("/subscriptions/{SUB}"),
        &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"),
        &format!("/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets"),
        "/subscriptions//resourceGroups/rg",
    ] {
        assert_eq!(p(other), Resource::Other, "{other:?}");
    }
}

#[test]
fn routing_goes_to_the_selections_that_can_contain_the_subject() {
    let sels = vec![
        sel(Some("web-rg"), &["web"], false),   // 0: one set
        sel(Some("web-rg"), &["api-*"], false), // 1: a glob
        sel(None, &[], true),                   // 2: tags everywhere (sets and VMs)
        sel(Some("other-rg"), &["web"], false), // 3: same name, other group
    ];
    let event = |subject: &str| {
        parse_message(&b64(&event_grid_write(subject)))
            .unwrap()
            .remove(0)
    };
    assert_eq!(route(&event(&set_id("web-rg", "web")), &sels), [0, 2]);
    assert_eq!(route(&event(&set_id("WEB-RG", "API-blue")), &sels), [1, 2]);
    assert_eq!(
        route(
            &event(&format!("{}/virtualMachines/7", set_id("other-rg", "web"))),
            &sels
        ),
        [2, 3]
    );
    let vm = format!("/subscriptions/{SUB}/resourceGroups/other-rg/providers/Microsoft.Compute/virtualMachines/lonely");
    assert_eq!(route(&event(&vm), &sels), [2, 3]);
    let nic = format!("/subscriptions/{SUB}/resourceGroups/net-rg/providers/Microsoft.Network/networkInterfaces/n");
    assert_eq!(
        route(&event(&nic), &sels),
        [0, 1, 2, 3],
        "a NIC may serve a VM anywhere"
    );
    let elsewhere = set_id("web-rg", "web").replace(SUB, "00000000-0000-0000-0000-000000000000");
    assert!(
        route(&event(&elsewhere), &sels).is_empty(),
        "another subscription"
    );
    let storage = format!(
        "/subscriptions/{SUB}/resourceGroups/web-rg/providers/Microsoft.Storage/storageAccounts/sa"
    );
    assert!(route(&event(&storage), &sels).is_empty());
    let mut unknown = event(&set_id("web-rg", "web"));
    unknown.kind = EventType::Other;
    assert!(
        route(&unknown, &sels).is_empty(),
        "unknown types are not acted on"
    );
}

#[test]
fn malformed_messages_are_refused() {
    assert_eq!(
        parse_message("%%% not base64"),
        Err(MalformedEvent::NotJson)
    );
    assert_eq!(
        parse_message(&base64::engine::general_purpose::STANDARD.encode("not json")),
        Err(MalformedEvent::NotJson)
    );
    assert!(matches!(
        parse_message("[]"),
        Err(MalformedEvent::NoEvent(_))
    ));
    assert!(matches!(
        parse_message("42"),
        Err(MalformedEvent::NoEvent(_))
    ));
    assert!(matches!(
        parse_message(r#"{"subject": "/subscriptions/x"}"#),
        Err(MalformedEvent::NoEvent(_))
    ));
    assert!(matches!(
        parse_message(
            r#"{"specversion": "1.0", "eventType": "Microsoft.Resources.ResourceWriteSuccess"}"#
        ),
        Err(MalformedEvent::NoEvent(_))
    ));
}

proptest! {
    #[test]
    fn any_text_parses_or_is_refused_without_panicking(text in ".{0,200}") {
        let _ = parse_message(&text);
        let _ = Resource::parse(&text);
    }

    #[test]
    fn a_set_event_reaches_exactly_the_selections_naming_its_group_and_name(
        rg in "[a-z]{1,6}", name in "[a-z]{1,6}", other in "[a-z]{1,6}",
        upper in any::<bool>(),
    ) {
        let subject = set_id(&rg, &name);
        let subject = if upper { subject.to_uppercase() } else { subject };
        let e = parse_message(&b64(&event_grid_write(&subject))).unwrap().remove(0);
        let sels = [
            sel(Some(&rg), &[&name], false),
            sel(Some(&rg), &[&other], false),
            sel(Some(&other), &[&name], false),
        ];
        let got = route(&e, &sels);
        prop_assert!(got.contains(&0));
        prop_assert_eq!(got.contains(&1), other.eq_ignore_ascii_case(&name));
        prop_assert_eq!(got.contains(&2), other.eq_ignore_ascii_case(&rg));
    }
}

#[test]
fn follow_ups_are_a_bounded_series_restarted_by_a_new_event_and_merged() {
    let t0 = tokio::time::Instant::now();
    let a: std::collections::BTreeSet<Selection> = [sel(Some("a"), &["x"], false)].into();
    let b: std::collections::BTreeSet<Selection> = [sel(Some("b"), &["y"], false)].into();
    let mut f = FollowUps::default();
    assert_eq!(f.next(), None);
    f.schedule(t0, &a);
    assert_eq!(f.next(), Some(t0 + FOLLOW_UP_AFTER[0]));
    assert_eq!(f.take_due(t0), None, "nothing due yet");
    assert_eq!(f.take_due(t0 + FOLLOW_UP_AFTER[0]), Some(a.clone()));
    // A second event restarts the series with both selections.
    let t1 = t0 + Duration::from_secs(7);
    f.schedule(t1, &b);
    let both: std::collections::BTreeSet<Selection> = a.union(&b).cloned().collect();
    let mut fired = 0;
    for d in FOLLOW_UP_AFTER {
        assert_eq!(f.take_due(t1 + d), Some(both.clone()));
        fired += 1;
    }
    assert_eq!(fired, FOLLOW_UP_AFTER.len());
    assert_eq!(f.next(), None, "bounded");
    f.schedule(t1, &a);
    f.clear();
    assert_eq!(f.next(), None);
}

#[test]
fn a_reconcile_covers_all_only_when_it_holds_every_selection() {
    let a = sel(Some("rg"), &["a"], false);
    let b = sel(Some("rg"), &["b"], false);
    let all = [a.clone(), b.clone()];
    let both: std::collections::BTreeSet<Selection> = all.iter().cloned().collect();
    let one: std::collections::BTreeSet<Selection> = [a.clone()].into_iter().collect();
    assert!(covers(&both, &all));
    assert!(!covers(&one, &all));
    assert!(covers(&one, &[a]));
    assert!(!covers(&both, &[]), "no upstream: nothing to cover");
}
