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

/// A short description of a failed HTTP exchange: what kind of failure, and its cause.
pub fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {}", root_cause(source)),
        None => kind.to_string(),
    }
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

    #[test]
    fn secrets_go_only_over_https_or_to_loopback() {
        let ok = |s: &str| check_secure(&Url::parse(s).expect("url")).is_ok();
        assert!(ok("https://management.azure.com/"));
        assert!(ok("http://127.0.0.1:9/"));
        assert!(!ok("http://management.azure.com/"));
    }
}
