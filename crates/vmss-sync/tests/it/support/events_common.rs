//! Helpers of the event tests: Azurite's queue service (`azurite-queue`, from the same npm
//! package as the lease tests' `azurite-blob`) and Event Grid messages.
#![allow(dead_code)]

use base64::Engine;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use url::Url;
use vmss_sync::events::queue::{QueueAuth, QueueClient};
use vmss_sync::leader::shared_key::SharedKey;

/// The emulator's account and its well-known development key (public, documented by
/// Microsoft; not a secret anywhere).
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where `azurite-queue` is: `$AZURITE_QUEUE`, next to `$AZURITE_BLOB` (both set by
/// scripts/test.sh), the repository's `.tools/azurite`, or `PATH`.
pub fn azurite_queue_bin() -> PathBuf {
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

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Azurite's queue service on loopback, in memory; killed by pid when dropped.
pub struct AzuriteQueue {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl AzuriteQueue {
    pub fn start() -> AzuriteQueue {
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

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.out")).unwrap_or_default()
    }

    pub fn queue_url(&self, queue: &str) -> Url {
        Url::parse(&format!(
            "http://127.0.0.1:{}/{DEV_ACCOUNT}/{queue}",
            self.port
        ))
        .unwrap()
    }

    pub fn client(&self, queue: &str, key: &str) -> QueueClient {
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
