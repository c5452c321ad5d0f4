//! Azurite, the Storage emulator (npm package `azurite`: `azurite-blob` for the lease
//! tests, `azurite-queue` for the event tests), one launcher for both: in memory, on
//! loopback, plain http or HTTPS (`--cert`/`--key`), optionally with `--oauth basic`
//! (bearer tokens, HTTPS only). Azurite is started on port 0 and reports the port it
//! bound ("… successfully listens on http://127.0.0.1:PORT", read from its output), so no
//! port is found by binding and releasing one first; only a restart on the port of an
//! earlier instance (`Azurite::start_on`) names a port. Killed by pid when dropped (also
//! when the test fails).
#![allow(dead_code)]

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

/// Which of Azurite's services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Blob,
    Queue,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Blob => "blob",
            Service::Queue => "queue",
        }
    }
}

/// How to start Azurite.
#[derive(Clone, Debug)]
pub struct Options {
    pub service: Service,
    /// 0: Azurite chooses (the default); else the port of an earlier instance.
    pub port: u16,
    /// HTTPS with a certificate for 127.0.0.1 (`super::pki`).
    pub tls: Option<Tls>,
    /// `--oauth basic`: bearer tokens are checked (audience, issuer, lifetime; not the
    /// signature). Azurite accepts it only with HTTPS.
    pub oauth: bool,
}

impl Options {
    pub fn new(service: Service) -> Options {
        Options {
            service,
            port: 0,
            tls: None,
            oauth: false,
        }
    }
}

/// Azurite's HTTPS: its certificate and key (PEM), and the CA that signed it (trusted by
/// the clients of [`Azurite::client`]).
#[derive(Clone, Debug)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl From<&super::pki::Pki> for Tls {
    fn from(p: &super::pki::Pki) -> Tls {
        Tls {
            cert: p.cert.clone(),
            key: p.key.clone(),
            ca: p.ca.clone(),
        }
    }
}

/// Where an Azurite binary is: `$AZURITE_BLOB` / `$AZURITE_QUEUE` (set by
/// scripts/test.sh; the queue binary is also looked for next to `$AZURITE_BLOB`), the
/// repository's `.tools/azurite`, or `PATH`.
pub fn bin(service: Service) -> PathBuf {
    let file = format!("azurite-{}", service.name());
    let var = format!("AZURITE_{}", service.name().to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    for other in ["AZURITE_BLOB", "AZURITE_QUEUE"] {
        if let Some(b) = std::env::var_os(other).filter(|p| !p.is_empty()) {
            if let Some(dir) = Path::new(&b).parent() {
                let p = dir.join(&file);
                if p.exists() {
                    return p;
                }
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/azurite/node_modules/.bin")
        .join(&file);
    if local.exists() {
        return local;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(&file);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "Azurite is not installed: run ./scripts/test.sh (it installs it), or \
         `npm install --prefix .tools/azurite azurite@3`, or set {var}"
    );
}

/// The port in Azurite's "… service successfully listens on http(s)://HOST:PORT" line.
fn listening_port(output: &str) -> Option<u16> {
    output
        .lines()
        .filter(|l| l.contains("successfully listens on"))
        .find_map(|l| {
            l.rsplit(':')
                .next()?
                .trim()
                .trim_end_matches('/')
                .parse()
                .ok()
        })
}

/// A running Azurite service.
pub struct Azurite {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    service: Service,
    tls: Option<Tls>,
    dir: tempfile::TempDir,
}

impl Azurite {
    /// The blob service (plain http) on a port Azurite chooses.
    pub fn start() -> Azurite {
        Self::with(Options::new(Service::Blob))
    }

    /// The blob service again on `port` (an earlier instance's, stopped).
    pub fn start_on(port: u16) -> Azurite {
        Self::with(Options {
            port,
            ..Options::new(Service::Blob)
        })
    }

    /// The queue service (plain http) on a port Azurite chooses.
    pub fn queue() -> Azurite {
        Self::with(Options::new(Service::Queue))
    }

    /// Starts Azurite as `opts` says and waits until it listens.
    pub fn with(opts: Options) -> Azurite {
        let dir = tempfile::tempdir().expect("azurite dir");
        let log = std::fs::File::create(dir.path().join("azurite.out")).expect("azurite log");
        let name = opts.service.name();
        let mut args: Vec<String> = [
            format!("--{name}Host"),
            "127.0.0.1".into(),
            format!("--{name}Port"),
            opts.port.to_string(),
            "--inMemoryPersistence".into(),
            "--skipApiVersionCheck".into(),
            "--loose".into(),
            "--disableTelemetry".into(),
        ]
        .into();
        if let Some(tls) = &opts.tls {
            args.extend([
                "--cert".into(),
                tls.cert.display().to_string(),
                "--key".into(),
                tls.key.display().to_string(),
            ]);
        }
        if opts.oauth {
            args.extend(["--oauth".into(), "basic".into()]);
        }
        let child = Command::new(bin(opts.service))
            .args(&args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn azurite-{name}: {e}"));
        let mut a = Azurite {
            child: Some(child),
            port: 0,
            service: opts.service,
            tls: opts.tls.clone(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = listening_port(&a.output()) {
                a.port = port;
                break;
            }
            if let Some(c) = a.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("azurite-{name} exited: {status}\n{}", a.output());
                }
            }
            assert!(
                Instant::now() < deadline,
                "azurite-{name} did not start:\n{}",
                a.output()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            opts.port == 0 || a.port == opts.port,
            "azurite-{name} listens on {} instead of {}",
            a.port,
            opts.port
        );
        a
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// `http(s)://127.0.0.1:PORT/devstoreaccount1`.
    pub fn account_url(&self) -> String {
        format!("{}://127.0.0.1:{}/{DEV_ACCOUNT}", self.scheme(), self.port)
    }

    /// The URL of `queue` in the development account.
    pub fn queue_url(&self, queue: &str) -> Url {
        Url::parse(&format!("{}/{queue}", self.account_url())).expect("queue url")
    }

    /// An HTTP client that trusts this Azurite's certificate (when it has one).
    pub fn http(&self) -> reqwest::Client {
        let ca = self.tls.as_ref().map(|t| t.ca.as_path());
        vmss_sync::net::client_builder(ca)
            .expect("trust the CA")
            .build()
            .expect("http client")
    }

    /// A queue client for `queue`, with Shared Key `key`.
    pub fn client(&self, queue: &str, key: &str) -> QueueClient {
        assert_eq!(self.service, Service::Queue, "not the queue service");
        QueueClient::new(
            &self.queue_url(queue),
            QueueAuth::SharedKey(SharedKey::new(DEV_ACCOUNT, key).expect("key")),
            self.http(),
            Duration::from_secs(5),
        )
        .expect("queue client")
    }

    /// What Azurite printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.out")).unwrap_or_default()
    }

    /// Kills Azurite (by pid) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A lease client for `container/blob` with the development key (for the tests'
    /// outside view: lease state, breaking a lease).
    pub fn lease_client(
        &self,
        container: &str,
        blob: &str,
    ) -> vmss_sync::leader::blob::BlobLeaseClient {
        use vmss_sync::leader::blob::{BlobAuth, BlobLeaseClient};
        assert_eq!(self.service, Service::Blob, "not the blob service");
        BlobLeaseClient::new(
            &Url::parse(&self.account_url()).expect("account url"),
            container,
            blob,
            BlobAuth::SharedKey(SharedKey::new(DEV_ACCOUNT, DEV_KEY).expect("dev key")),
            reqwest::Client::new(),
            Duration::from_secs(5),
        )
        .expect("lease client")
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn azurite_reports_the_port_it_listens_on() {
    let out = "Azurite Queue service is starting on 127.0.0.1:0\n\
               Azurite Queue service successfully listens on http://127.0.0.1:45687\n";
    assert_eq!(listening_port(out), Some(45687));
    assert_eq!(
        listening_port("Azurite Blob service successfully listens on https://127.0.0.1:39619"),
        Some(39619)
    );
    assert_eq!(
        listening_port("Azurite Queue service is starting on 127.0.0.1:0"),
        None
    );
}
