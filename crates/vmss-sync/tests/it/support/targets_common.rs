//! Real load balancers for the target tests: HAProxy and nginx started on loopback from
//! generated configurations in a temporary directory, small HTTP backends on 127.0.0.x that
//! answer with their own address, and an HTTP client that counts who answered.
//!
//! Every process is stopped by its pid when its guard drops, also when a test fails.
//! The tests need `haproxy` and `nginx` (scripts/test.sh installs them from Debian); with
//! `VMSS_SYNC_SKIP_REAL_TARGETS=1` they are skipped instead.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::ChildListener;

/// True when the test should run; panics with instructions when a program is missing.
pub fn have(program: &str) -> bool {
    if std::env::var_os("VMSS_SYNC_SKIP_REAL_TARGETS").is_some() {
        eprintln!("VMSS_SYNC_SKIP_REAL_TARGETS is set: skipping a test that needs {program}");
        return false;
    }
    assert!(
        !which(program).is_empty(),
        "{program} is not installed: run ./scripts/test.sh (it installs haproxy and nginx from \
         Debian), or `apt-get install {program}`; VMSS_SYNC_SKIP_REAL_TARGETS=1 skips these tests"
    );
    true
}

/// Absolute path of a program (the tests run vmss-sync with `PATH=/usr/bin:/bin`, and nginx
/// and haproxy live in /usr/sbin on Debian).
pub fn which(program: &str) -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("sh");
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sbin = format!("/usr/sbin/{program}");
    if found.is_empty() && Path::new(&sbin).exists() {
        return sbin;
    }
    found
}

/// Version line of a program (`haproxy -v`, `nginx -v`), for the test output.
pub fn version(program: &str, flag: &str) -> String {
    let out = Command::new(which(program))
        .arg(flag)
        .output()
        .expect("version");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().next().unwrap_or_default().to_string()
}

/// A child process stopped by pid (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} ({})", self.pid(), self.name);
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..50 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ips(from: u8, to: u8) -> Vec<Ipv4Addr> {
    (from..=to).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect()
}

/// HTTP backends that answer every request with their own `ip:port` (HTTP/1.1,
/// keep-alive). Stopping one closes its listener and every open connection, as when a VM
/// goes away.
pub struct Backends {
    tasks: BTreeMap<SocketAddr, tokio::task::JoinHandle<()>>,
}

async fn serve_connection(mut s: tokio::net::TcpStream, me: std::sync::Arc<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + body_len {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + body_len);
        let close = head.contains("connection: close") || head.contains(" http/1.0\r\n");
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{}",
            me.len(),
            if close { "connection: close\r\n" } else { "" },
            me
        );
        if s.write_all(reply.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

impl Backends {
    /// Backends on every address of `ips`, on a port free on all of them. The OS picks
    /// the port on the first address (port 0) and that listener is kept, never released;
    /// the same port is then bound on the other addresses (if one of them is taken there,
    /// everything is dropped and another port is tried).
    pub async fn start_free(ips: &[Ipv4Addr]) -> (Backends, u16) {
        let Some((first, rest)) = ips.split_first() else {
            panic!("Backends::start_free needs at least one address");
        };
        for _ in 0..20 {
            let l = tokio::net::TcpListener::bind(SocketAddr::from((*first, 0)))
                .await
                .expect("backend bind");
            let port = l.local_addr().expect("listener address").port();
            let mut listeners = vec![l];
            for ip in rest {
                match tokio::net::TcpListener::bind(SocketAddr::from((*ip, port))).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => break,
                }
            }
            if listeners.len() == ips.len() {
                return (Backends::serve(listeners), port);
            }
        }
        panic!("no port could be bound on every address of {ips:?}");
    }

    pub async fn start(ips: &[Ipv4Addr], port: u16) -> Backends {
        let mut listeners = Vec::new();
        for ip in ips {
            let addr = SocketAddr::from((*ip, port));
            listeners.push(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .expect("backend bind"),
            );
        }
        Backends::serve(listeners)
    }

    fn serve(listeners: Vec<tokio::net::TcpListener>) -> Backends {
        let mut tasks = BTreeMap::new();
        for listener in listeners {
            let addr = listener.local_addr().expect("listener address");
            let me = std::sync::Arc::new(addr.to_string());
            tasks.insert(
                addr,
                tokio::spawn(async move {
                    // Owned here, so aborting this task drops every connection too.
                    let mut conns = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((s, _)) => { conns.spawn(serve_connection(s, me.clone())); }
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            },
                            Some(_) = conns.join_next(), if !conns.is_empty() => {}
                        }
                    }
                }),
            );
        }
        Backends { tasks }
    }

    /// Stops one backend: listener and connections close.
    pub fn stop(&mut self, addr: &str) {
        let addr: SocketAddr = addr.parse().expect("addr");
        if let Some(t) = self.tasks.remove(&addr) {
            t.abort();
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        for t in self.tasks.values() {
            t.abort();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("client")
}

/// A client that opens a new connection per request: after an nginx reload, old workers
/// still answer on connections they already hold, so traffic checks use fresh connections.
pub fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .expect("client")
}

/// Sends `n` GETs and counts the answers by body; failures count under `"<error>"` and
/// non-200 answers under `"<status N>"`.
pub async fn spread(client: &reqwest::Client, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let key = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_else(|_| "<error>".into()),
            Ok(r) => format!("<status {}>", r.status().as_u16()),
            Err(_) => "<error>".into(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The set of answers of `n` requests.
pub async fn answered(client: &reqwest::Client, url: &str, n: usize) -> Vec<String> {
    spread(client, url, n).await.into_keys().collect()
}

/// Polls until two rounds of requests in a row are answered by exactly `want`, or `within`
/// passes; returns the last set seen.
pub async fn until_answered(
    client: &reqwest::Client,
    url: &str,
    want: &[String],
    within: Duration,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let n = (want.len() * 6).max(12);
    let mut good_rounds = 0;
    loop {
        let got = answered(client, url, n).await;
        good_rounds = if got == want { good_rounds + 1 } else { 0 };
        if good_rounds == 2 || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the process behind `proc` answers an HTTP request on `addr` (any status:
/// an upstream without servers answers 502 or 503). Connecting proves nothing here: the
/// test holds the listening socket too, so the kernel accepts connections before the
/// process runs. Panics with `log()` when the process exits or nothing answers in 10 s.
async fn wait_answering(addr: SocketAddr, proc: &mut Proc, log: impl Fn() -> String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(proc.alive(), "{} exited at start:\n{}", proc.name, log());
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.ok()?;
            let mut head = [0u8; 5];
            s.read_exact(&mut head).await.ok()?;
            (&head == b"HTTP/").then_some(())
        };
        if let Ok(Some(())) = tokio::time::timeout(Duration::from_secs(2), attempt).await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} does not answer on {addr}:\n{}",
            proc.name,
            log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A real HAProxy in master-worker mode, in the foreground (`-W -db`), with an admin stats
/// socket in `dir`. Its frontend listens on a socket the test bound (port 0) and handed to
/// it as its standard input (`bind fd@0`): the master keeps the descriptor and hands it to
/// every new worker, also after a reload.
pub struct Haproxy {
    pub proc: Proc,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub cfg: PathBuf,
    pub port: u16,
    listener: ChildListener,
}

impl Haproxy {
    /// Starts HAProxy with a frontend on 127.0.0.1 (a port the OS chose, see [`Haproxy::url`])
    /// whose default backend is `default_backend`, and the given backend sections.
    pub async fn start(dir: &Path, default_backend: &str, backends: &str) -> Haproxy {
        let listener = ChildListener::bind();
        let port = listener.port;
        let socket = dir.join("admin.sock");
        let cfg = dir.join("haproxy.cfg");
        let text = format!(
            "global\n    stats socket {sock} mode 600 level admin\n    stats timeout 30s\n\n\
             defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n    \
             retries 3\n    option redispatch 1\n\n\
             frontend fe\n    bind fd@{fd}\n    default_backend {default_backend}\n\n{backends}",
            sock = socket.display(),
            fd = ChildListener::FD
        );
        std::fs::write(&cfg, text).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("log");
        let mut cmd = Command::new(which("haproxy"));
        cmd.args(["-W", "-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        listener.hand_to(&mut cmd);
        let child = cmd.spawn().expect("start haproxy");
        let mut h = Haproxy {
            proc: Proc {
                child,
                name: "haproxy",
            },
            dir: dir.to_path_buf(),
            socket,
            cfg,
            port,
            listener,
        };
        let addr = h.listener.addr();
        let log_path = h.dir.join("haproxy.log");
        wait_answering(addr, &mut h.proc, || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        })
        .await;
        for _ in 0..200 {
            if h.socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        h
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Sends one command over the stats socket and returns the reply.
    pub async fn cli(&self, cmd: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&self.socket)
            .await
            .expect("stats socket");
        s.write_all(format!("{cmd}\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    /// Names of the servers of a backend (from `show servers state`), with their admin state.
    pub async fn servers(&self, backend: &str) -> Vec<(String, String, u32)> {
        self.cli(&format!("show servers state {backend}"))
            .await
            .lines()
            .skip(2)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(3)?.to_string(),
                    format!("{}:{}", f.get(4)?, f.get(18)?),
                    f.get(6)?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// A graceful reload of the master-worker (SIGUSR2): runtime changes are forgotten.
    pub fn reload(&self) {
        self.proc.signal("USR2");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

/// A real nginx started from `dir` with `-p dir -e dir/error.log -c dir/nginx.conf`, in the
/// foreground (`daemon off;` in the file), including the upstream file vmss-sync writes.
/// Its server listens on a socket the test bound (port 0) and handed to it as nginx hands
/// sockets to a new binary (`NGINX="fd;"`): the `listen` line names the same address, so
/// nginx uses the inherited socket, and keeps it through `nginx -s reload`.
pub struct Nginx {
    pub proc: Proc,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub upstreams: PathBuf,
    pub port: u16,
    listener: ChildListener,
}

impl Nginx {
    /// The flags every nginx command against this instance needs.
    pub fn flags(dir: &Path) -> Vec<String> {
        vec![
            "-p".into(),
            format!("{}/", dir.display()),
            "-e".into(),
            dir.join("error.log").display().to_string(),
            "-c".into(),
            dir.join("nginx.conf").display().to_string(),
        ]
    }

    /// Starts nginx with a server on 127.0.0.1 (a port the OS chose, see [`Nginx::url`])
    /// proxying to upstream `upstream`. The upstream file must exist (vmss-sync writes it;
    /// nginx refuses to start without it).
    pub async fn start(dir: &Path, upstream: &str, upstreams: &Path) -> Nginx {
        Self::start_with(dir, upstream, upstreams, "").await
    }

    /// [`Nginx::start`] with more directives in the `http` block.
    pub async fn start_with(
        dir: &Path,
        upstream: &str,
        upstreams: &Path,
        extra_http: &str,
    ) -> Nginx {
        let listener = ChildListener::bind();
        let port = listener.port;
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        let text = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n    access_log off;\n    client_body_temp_path {d}/client_body;\n    proxy_temp_path {d}/proxy;\n    \
             fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n    \
             include {up};\n{extra_http}\n    server {{\n        listen 127.0.0.1:{port};\n        \
             location / {{ proxy_pass http://{upstream}; proxy_next_upstream error timeout; }}\n    }}\n}}\n",
            up = upstreams.display()
        );
        std::fs::write(&conf, text).expect("write nginx.conf");
        let mut cmd = Command::new(which("nginx"));
        cmd.args(Self::flags(dir))
            .env("NGINX", format!("{};", ChildListener::FD))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        listener.hand_to(&mut cmd);
        let child = cmd.spawn().expect("start nginx");
        let mut n = Nginx {
            proc: Proc {
                child,
                name: "nginx",
            },
            dir: dir.to_path_buf(),
            conf,
            upstreams: upstreams.to_path_buf(),
            port,
            listener,
        };
        let addr = n.listener.addr();
        let log_path = n.dir.join("error.log");
        wait_answering(addr, &mut n.proc, || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        })
        .await;
        n
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// `ip:port` strings, sorted.
pub fn addrs(ips: &[Ipv4Addr], port: u16) -> Vec<String> {
    let mut v: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    v.sort();
    v
}

/// An upstream file as vmss-sync writes it, every upstream holding only the placeholder
/// (nginx needs the file to start; a hand-written placeholder without the header is
/// adopted too: see `targets_nginx.rs`).
pub fn placeholder_upstreams(path: &Path, names: &[&str]) {
    let mut text = format!("{}\n", vmss_sync::target::nginx_file::HEADER);
    for n in names {
        text.push_str(&format!(
            "upstream {n} {{\n    server 127.0.0.1:1 down; # vmss-sync: no instances\n}}\n"
        ));
    }
    std::fs::write(path, text).expect("write upstream file");
}

/// `nginx … -t` for the nginx started in `dir`, and a reload that also appends a line to
/// `dir/reloads.log`: the validate and reload commands of an `nginx_file` target.
pub fn nginx_commands(dir: &Path) -> (Vec<String>, Vec<String>) {
    let flags = Nginx::flags(dir);
    let nginx = which("nginx");
    let mut validate = vec![nginx.clone()];
    validate.extend(flags.iter().cloned());
    validate.push("-t".into());
    let reload = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!(
            "echo reload >> {}/reloads.log && exec {nginx} {} -s reload",
            dir.display(),
            flags.join(" ")
        ),
    ];
    (validate, reload)
}
