//! Helpers of the event tests: Event Grid messages (Azurite's queue service is started by
//! `super::azurite`: `Azurite::queue()`).
#![allow(dead_code)]

use base64::Engine;

pub use super::azurite::{Azurite, DEV_KEY};

/// A resource event as Event Grid writes it into a queue (base64 JSON), in the Event Grid
/// schema or (with `cloud`) CloudEvents 1.0.
pub fn event_message(kind: &str, subject: &str, cloud: bool) -> String {
    let sub = subject.split('/').nth(2).unwrap_or_default();
    let v = if cloud {
        serde_json::json!({
            "source": format!("/subscriptions/{sub}"), "subject": subject, "type": kind,
            "time": "2026-12-06T10:31:04Z", "id": format!("{:x}", fastrand::u64(..)),
            "data": {"resourceUri": subject, "status": "Succeeded"}, "specversion": "1.0"
        })
    } else {
        serde_json::json!({
            "subject": subject, "eventType": kind, "eventTime": "2026-12-06T10:31:04Z",
            "id": format!("{:x}", fastrand::u64(..)),
            "data": {"resourceUri": subject, "status": "Succeeded", "operationName": "Microsoft.Compute/virtualMachineScaleSets/write"},
            "dataVersion": "2", "metadataVersion": "1", "topic": format!("/subscriptions/{sub}")
        })
    };
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

/// The fleet's events ([`vmss_testbed::FleetEvent`]) of the types in `only` (all when
/// empty) put into a queue as Event Grid would (base64 JSON; CloudEvents with `cloud`),
/// each with when it was raised.
pub struct Forwarder {
    pub sent: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, vmss_testbed::FleetEvent)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    pub fn start(
        fleet: &vmss_testbed::Fleet,
        queue: vmss_sync::events::queue::QueueClient,
        cloud: bool,
        only: &[&'static str],
    ) -> Forwarder {
        let only: Vec<&'static str> = only.to_vec();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        fleet.set_event_sink(Some(std::sync::Arc::new(
            move |ev: vmss_testbed::FleetEvent| {
                if only.is_empty() || only.contains(&ev.event_type) {
                    let _ = tx.send((std::time::Instant::now(), ev));
                }
            },
        )));
        let sent: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let log = std::sync::Arc::clone(&sent);
        let task = tokio::spawn(async move {
            while let Some((at, ev)) = rx.recv().await {
                let text =
                    base64::engine::general_purpose::STANDARD.encode(ev.json(cloud).to_string());
                queue
                    .put_message(&text)
                    .await
                    .expect("enqueue a fleet event");
                log.lock().unwrap().push((at, ev));
            }
        });
        Forwarder { sent, task }
    }

    /// When the first event forwarded after `since` was raised, and its type and subject.
    pub fn first_after(
        &self,
        since: std::time::Instant,
    ) -> Option<(std::time::Instant, &'static str, String)> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .find(|(at, _)| *at >= since)
            .map(|(at, ev)| (*at, ev.event_type, ev.subject.clone()))
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
