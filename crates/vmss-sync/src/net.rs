//! Small helpers about URLs and HTTP errors shared by every client (ARM, tokens,
//! storage, targets) and by configuration checks.

use url::{Host, Url};

/// True for `localhost` (and `*.localhost`), 127.0.0.0/8 and ::1.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `https`, or plain `http` to a loopback host: where a secret may be sent.
pub fn check_secure(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => Err(format!(
            "refusing plain http to non-loopback host {} (https required)",
            url.host_str().unwrap_or("?")
        )),
        other => Err(format!("unsupported URL scheme {other:?}")),
    }
}

/// The innermost cause of an error, which says what really happened (reqwest's own
/// message repeats the URL).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `scheme://host:port` of a URL, without user information or path: how an error names
/// the endpoint it could not reach.
pub fn origin(url: &Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}", url.scheme()),
        (Some(h), None) => format!("{}://{h}", url.scheme()),
        _ => url.scheme().to_string(),
    }
}

/// An answer's body as text, as `reqwest::Response::text` gives it for the JSON APIs
/// (UTF-8, a leading byte order mark dropped, malformed sequences replaced), with one
/// UTF-8 check and no second copy when the body is valid (`text` decodes it through a
/// lossy decoder into a new string: a server list of 20,000 entries is read every cycle).
pub async fn body_text(resp: reqwest::Response) -> Result<String, reqwest::Error> {
    let mut bytes = resp.bytes().await?;
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        drop(bytes.split_to(3));
    }
    Ok(match String::from_utf8(Vec::from(bytes)) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// What went wrong in a failed HTTP exchange, named for a person: `timed out`,
/// `connection refused`, `DNS lookup failed: …`, `TLS failed: …` (with a hint when the
/// server's certificate authority is not trusted), `connection failed: …`, or
/// `request failed: …`. HTTP error statuses are answers, not failed exchanges: each
/// client reports those itself ("answered HTTP 503: …").
pub fn transport_detail(e: &reqwest::Error) -> String {
    let mut refused = false;
    let mut dns = false;
    let tls = tls_failure(e).map(tls_detail);
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        refused |= io_chain(err).any(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        // hyper-util's connector says "dns error" around the resolver's own message.
        dns |= err.to_string().starts_with("dns error");
        cur = err.source();
    }
    let cause = || {
        std::error::Error::source(e)
            .map(root_cause)
            .unwrap_or_default()
    };
    if let Some(t) = tls {
        format!("TLS failed: {t}")
    } else if e.is_timeout() {
        "timed out".to_string()
    } else if refused {
        "connection refused".to_string()
    } else if dns {
        format!("DNS lookup failed: {}", cause())
    } else if e.is_connect() {
        format!("connection failed: {}", cause())
    } else {
        match std::error::Error::source(e) {
            Some(_) => format!("request failed: {}", cause()),
            None => "request failed".to_string(),
        }
    }
}

/// The io::Errors an error is or wraps: an io::Error hides what it wraps from `source()`,
/// and hyper-rustls wraps rustls's error in two of them.
fn io_chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a std::io::Error> + 'a {
    std::iter::successors(err.downcast_ref::<std::io::Error>(), |io| {
        io.get_ref()
            .and_then(|i| i.downcast_ref::<std::io::Error>())
    })
}

/// The TLS error behind a failed exchange, if the handshake is what failed.
fn tls_failure(e: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        let wrapped = io_chain(err)
            .find_map(|io| io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()));
        if wrapped.is_some() {
            return wrapped;
        }
        cur = err.source();
    }
    None
}

/// True when the TLS handshake failed (an untrusted, expired or misnamed certificate, a
/// protocol mismatch): retrying at once will not help.
pub fn is_tls_failure(e: &reqwest::Error) -> bool {
    tls_failure(e).is_some()
}

fn tls_detail(e: &rustls::Error) -> String {
    use rustls::{CertificateError, Error};
    match e {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "{e} (the server's certificate is not signed by a trusted authority: add its CA to \
             the system trust store, SSL_CERT_FILE, or this endpoint's ca_file)"
        ),
        _ => e.to_string(),
    }
}

/// Why an HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A `ca_file` could not be read.
    #[error("cannot read ca_file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A `ca_file` holds no usable PEM certificate.
    #[error("ca_file {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----){detail}")]
    NoCertificate {
        /// The file.
        path: String,
        /// The parser's message, if any.
        detail: String,
    },
}

/// The system's trust store (rustls-native-certs: `SSL_CERT_FILE` and `SSL_CERT_DIR` when
/// set, else the distribution's bundle), read once per process. Empty when the system
/// has none; then the built-in Mozilla roots are used instead.
fn system_roots() -> &'static [reqwest::Certificate] {
    static ROOTS: std::sync::OnceLock<Vec<reqwest::Certificate>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "A certificate of the system trust store could not be read.");
        }
        let roots: Vec<reqwest::Certificate> = found
            .certs
            .iter()
            .filter_map(|c| reqwest::Certificate::from_der(c).ok())
            .collect();
        if roots.is_empty() {
            tracing::warn!(
                "The system trust store holds no certificate (no CA bundle found, or \
                 SSL_CERT_FILE / SSL_CERT_DIR name none): using the built-in Mozilla roots."
            );
        }
        roots
    })
}

/// Reads the PEM certificates of a `ca_file`.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: shown.clone(),
        source,
    })?;
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsError::NoCertificate {
            path: shown,
            detail: String::new(),
        }),
        Err(e) => Err(TlsError::NoCertificate {
            path: shown,
            detail: format!(": {}", root_cause(&e)),
        }),
    }
}

/// An HTTP client builder that trusts the system trust store (or, when the system has
/// none, the built-in Mozilla roots) plus the certificates of `ca_file`. Every client
/// of vmss-sync starts here; TLS is always verified.
pub fn client_builder(
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, TlsError> {
    let mut b = reqwest::Client::builder();
    let roots = system_roots();
    if !roots.is_empty() {
        b = b.tls_built_in_root_certs(false);
        for c in roots {
            b = b.add_root_certificate(c.clone());
        }
    }
    if let Some(path) = ca_file {
        for c in read_ca_file(path)? {
            b = b.add_root_certificate(c);
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        for (u, want) in [
            ("http://127.0.0.1:1/", true),
            ("http://127.9.9.9/", true),
            ("http://[::1]:8080/", true),
            ("http://LOCALHOST/", true),
            ("http://10.0.0.1/", false),
            ("http://example.com/", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(u).expect("url")), want, "{u}");
        }
    }

    /// A resolver that knows no name, as a DNS server answering NXDOMAIN.
    struct NoSuchHost;

    impl reqwest::dns::Resolve for NoSuchHost {
        fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            let name = name.as_str().to_string();
            Box::pin(async move {
                Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "failed to lookup address information: {name}: Name or service not known"
                    ),
                ))
                    as Box<dyn std::error::Error + Send + Sync>)
            })
        }
    }

    #[tokio::test]
    async fn a_failed_dns_lookup_is_named_as_such() {
        let http = reqwest::Client::builder()
            .dns_resolver(std::sync::Arc::new(NoSuchHost))
            .build()
            .expect("client");
        let e = http
            .get("http://nginx-plus.example.invalid:8080/api")
            .send()
            .await
            .expect_err("no such host");
        let d = transport_detail(&e);
        assert!(d.starts_with("DNS lookup failed: "), "{d}");
        assert!(d.contains("Name or service not known"), "{d}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_named_as_such() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let e = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("refused");
        assert_eq!(transport_detail(&e), "connection refused");
    }

    #[test]
    fn origin_names_scheme_host_and_port_without_credentials() {
        let u = Url::parse("https://user:pw@example.com/api/9?x=1").expect("url");
        assert_eq!(origin(&u), "https://example.com:443");
        let u = Url::parse("http://127.0.0.1:8080/api").expect("url");
        assert_eq!(origin(&u), "http://127.0.0.1:8080");
    }

    #[test]
    fn secrets_go_only_over_https_or_to_loopback() {
        let ok = |s: &str| check_secure(&Url::parse(s).expect("url")).is_ok();
        assert!(ok("https://management.azure.com/"));
        assert!(ok("http://127.0.0.1:9/"));
        assert!(!ok("http://management.azure.com/"));
    }
}
