//! The Storage Queue client against Azurite's real queue service (`azurite-queue`, from
//! the same npm package as the lease tests' `azurite-blob`; scripts/test.sh installs it):
//! messages put, got with a visibility timeout, deleted by pop receipt, handed out again
//! when not deleted in time, and Event Grid messages read back and routed.

use base64::Engine;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use url::Url;
use vmss_sync::discovery::{Groups, Selection};
use vmss_sync::events::queue::{QueueAuth, QueueClient};
use vmss_sync::events::{parse_message, route, EventType};
use vmss_sync::leader::shared_key::SharedKey;

/// The emulator's account and its well-known development key (public, documented by
/// Microsoft; not a secret anywhere).
const DEV_ACCOUNT: &str = "devstoreaccount1";
const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where `azurite-queue` is: `$AZURITE_QUEUE`, next to `$AZURITE_BLOB` (both set by
/// scripts/test.sh), the repository's `.tools/azurite`, or `PATH`.
fn azurite_queue_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AZURITE_QUEUE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(blob) = std::env::var_os("AZURITE_BLOB").filter(|p| !p.is_empty()) {
        if let Some(dir) = Path::new(&blob).parent() {
            let p = dir.join("azurite-queue");
            if p.exists() {
                return p;
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/azurite/node_modules/.bin/azurite-queue");
    if local.exists() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("azurite-queue");
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "Azurite is not installed: run ./scripts/test.sh (it installs it), or \
         `npm install --prefix .tools/azurite azurite@3`, or set AZURITE_QUEUE"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Azurite's queue service on loopback, in memory; killed by pid when dropped.
struct AzuriteQueue {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl AzuriteQueue {
    fn start() -> AzuriteQueue {
        let port = free_port();
        let dir = tempfile::tempdir().expect("azurite dir");
        let log = std::fs::File::create(dir.path().join("azurite.out")).expect("azurite log");
        let child = Command::new(azurite_queue_bin())
            .args([
                "--queueHost",
                "127.0.0.1",
                "--queuePort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn azurite-queue");
        let mut a = AzuriteQueue { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = a.child.try_wait() {
                panic!("azurite-queue exited: {status}\n{}", a.output());
            }
            assert!(
                Instant::now() < deadline,
                "Azurite did not start:\n{}",
                a.output()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        a
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.out")).unwrap_or_default()
    }

    fn queue_url(&self, queue: &str) -> Url {
        Url::parse(&format!(
            "http://127.0.0.1:{}/{DEV_ACCOUNT}/{queue}",
            self.port
        ))
        .unwrap()
    }

    fn client(&self, queue: &str, key: &str) -> QueueClient {
        QueueClient::new(
            &self.queue_url(queue),
            QueueAuth::SharedKey(SharedKey::new(DEV_ACCOUNT, key).expect("key")),
            reqwest::Client::new(),
            Duration::from_secs(5),
        )
        .expect("queue client")
    }
}

impl Drop for AzuriteQueue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn messages_are_hidden_while_handled_deleted_by_pop_receipt_and_return_when_not_deleted() {
    let az = AzuriteQueue::start();
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
    let az = AzuriteQueue::start();
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
    let az = AzuriteQueue::start();
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
