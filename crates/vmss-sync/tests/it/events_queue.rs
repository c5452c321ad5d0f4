//! The Storage Queue client against Azurite's real queue service (`azurite-queue`, from
//! the same npm package as the lease tests' `azurite-blob`; scripts/test.sh installs it):
//! messages put, got with a visibility timeout, deleted by pop receipt, handed out again
//! when not deleted in time, and Event Grid messages read back and routed.

use crate::support::events_common;

use base64::Engine;
use events_common::*;
use std::time::Duration;
use vmss_sync::discovery::{Groups, Selection};
use vmss_sync::events::{parse_message, route, EventType};

#[tokio::test]
async fn messages_are_hidden_while_handled_deleted_by_pop_receipt_and_return_when_not_deleted() {
    let az = Azurite::queue();
    let q = az.client("events", DEV_KEY);
    q.create().await.expect("create");
    q.create().await.expect("creating again is fine");
    for text in ["one", "two & <three>"] {
        q.put_message(text).await.expect("put");
    }
    let got = q
        .get_messages(32, Duration::from_secs(1))
        .await
        .expect("get");
    let mut texts: Vec<&str> = got.iter().map(|m| m.text.as_str()).collect();
    texts.sort();
    assert_eq!(texts, ["one", "two & <three>"]);
    assert!(got
        .iter()
        .all(|m| m.dequeue_count == 1 && m.inserted.is_some()));
    assert!(
        q.get_messages(32, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty(),
        "hidden for the visibility timeout"
    );
    q.delete_message(&got[0]).await.expect("delete");
    let err = q.delete_message(&got[0]).await.expect_err("gone");
    assert_eq!(err.status(), Some(404), "{err}");

    // Not deleted in time (a crash between receiving and deleting): it comes back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = q
        .get_messages(32, Duration::from_secs(30))
        .await
        .expect("get");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, got[1].id);
    assert_eq!(again[0].dequeue_count, 2);
    let stale = q.delete_message(&got[1]).await.expect_err("old receipt");
    assert_eq!(stale.status(), Some(400), "{stale}");
    assert!(stale.to_string().contains("PopReceiptMismatch"), "{stale}");
    q.delete_message(&again[0])
        .await
        .expect("delete with the new receipt");
    assert!(q
        .get_messages(32, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_error_shows_no_key() {
    let az = Azurite::queue();
    az.client("events", DEV_KEY).create().await.expect("create");
    let wrong = base64::engine::general_purpose::STANDARD.encode([7u8; 64]);
    let err = az
        .client("events", &wrong)
        .get_messages(1, Duration::from_secs(1))
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(403), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("get messages") && text.contains("/devstoreaccount1/events"),
        "{text}"
    );
    assert!(!text.contains(&wrong) && !text.contains(DEV_KEY), "{text}");
    let missing = az
        .client("nosuchqueue", DEV_KEY)
        .get_messages(1, Duration::from_secs(1))
        .await
        .expect_err("no queue");
    assert_eq!(missing.status(), Some(404), "{missing}");
    assert!(missing.to_string().contains("QueueNotFound"), "{missing}");
}

#[tokio::test]
async fn event_grid_messages_read_back_from_the_queue_are_parsed_and_routed() {
    let az = Azurite::queue();
    let q = az.client("events", DEV_KEY);
    q.create().await.expect("create");
    let sub = "5f2ae4a1-7a6c-4b43-9c0e-1f7c0d3b2e11";
    let subject =
        format!("/subscriptions/{sub}/resourceGroups/web-rg/providers/Microsoft.Compute/virtualMachineScaleSets/web");
    let event = serde_json::json!({
        "subject": subject, "eventType": "Microsoft.Resources.ResourceWriteSuccess",
        "eventTime": "2026-12-06T10:31:04Z", "id": "e1", "data": {"resourceUri": subject},
        "dataVersion": "2", "metadataVersion": "1", "topic": format!("/subscriptions/{sub}")
    });
    q.put_message(&base64::engine::general_purpose::STANDARD.encode(event.to_string()))
        .await
        .expect("put");
    q.put_message("garbage").await.expect("put");
    let got = q
        .get_messages(32, Duration::from_secs(30))
        .await
        .expect("get");
    assert_eq!(got.len(), 2);
    let selections = [
        Selection::one(sub, "web-rg", "web"),
        Selection::one(sub, "web-rg", "api"),
        Selection {
            groups: Groups::All,
            ..Selection::one(sub, "x", "w*")
        },
    ];
    let mut parsed = 0;
    for m in &got {
        match parse_message(&m.text) {
            Ok(events) => {
                parsed += 1;
                assert_eq!(events[0].kind, EventType::ResourceWriteSuccess);
                assert_eq!(route(&events[0], &selections), [0, 2]);
            }
            Err(e) => assert_eq!(m.text, "garbage", "{e}"),
        }
        q.delete_message(m).await.expect("delete");
    }
    assert_eq!(parsed, 1);
}
