//! Shared Key authorisation of Blob service requests, as the Storage REST reference
//! ("Authorize with Shared Key") describes it for version 2015-02-21 and later:
//!
//! ```text
//! StringToSign = VERB \n Content-Encoding \n Content-Language \n Content-Length \n
//!                Content-MD5 \n Content-Type \n Date \n If-Modified-Since \n If-Match \n
//!                If-None-Match \n If-Unmodified-Since \n Range \n
//!                CanonicalizedHeaders CanonicalizedResource
//! Authorization = "SharedKey " account ":" base64(HMAC-SHA256(base64decode(key), StringToSign))
//! ```
//!
//! `Content-Length` is empty when it is 0; `Date` is empty because `x-ms-date` is sent.
//! CanonicalizedHeaders: every `x-ms-` header, names lower-cased and sorted, `name:value\n`
//! with the value's white space trimmed and runs of spaces folded. CanonicalizedResource:
//! `/account` + the request's encoded path, then `\nname:value` per query parameter, names
//! lower-cased and sorted, values decoded (several values comma-separated, sorted).

use base64::Engine as _;
use std::collections::BTreeMap;
use url::Url;

/// The standard headers that take a line of their own in the string to sign, in order.
const STANDARD_HEADERS: [&str; 11] = [
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
];

/// A storage account's name and decoded key. `Debug` never shows the key.
#[derive(Clone)]
pub struct SharedKey {
    account: String,
    key: ring::hmac::Key,
}

impl std::fmt::Debug for SharedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedKey")
            .field("account", &self.account)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The key was not base64.
#[derive(Debug, thiserror::Error)]
#[error("the storage account key is not valid base64")]
pub struct InvalidKey;

impl SharedKey {
    /// `key_base64` is the key as the portal shows it.
    pub fn new(account: &str, key_base64: &str) -> Result<Self, InvalidKey> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key_base64.trim())
            .map_err(|_| InvalidKey)?;
        Ok(Self {
            account: account.to_string(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
        })
    }

    /// The storage account name.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// The `Authorization` header value for a request. `headers` are every header the
    /// request will carry (names in any case), including `x-ms-date` and `x-ms-version`.
    pub fn authorization(&self, method: &str, url: &Url, headers: &[(&str, String)]) -> String {
        let to_sign = string_to_sign(&self.account, method, url, headers);
        let tag = ring::hmac::sign(&self.key, to_sign.as_bytes());
        format!(
            "SharedKey {}:{}",
            self.account,
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

/// Trims a header value and folds runs of white space into one space.
fn fold(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The string to sign (see the module documentation).
pub fn string_to_sign(
    account: &str,
    method: &str,
    url: &Url,
    headers: &[(&str, String)],
) -> String {
    let lower: Vec<(String, &str)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    let get = |name: &str| {
        lower
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    let mut s = String::new();
    s.push_str(&method.to_ascii_uppercase());
    s.push('\n');
    for name in STANDARD_HEADERS {
        let value = get(name);
        if name == "content-length" && value == "0" {
            // Version 2015-02-21 and later: a zero length is an empty line.
        } else if name == "date" && lower.iter().any(|(k, _)| k == "x-ms-date") {
            // x-ms-date wins; Date stays empty.
        } else {
            s.push_str(value);
        }
        s.push('\n');
    }
    let mut ms: Vec<(&str, String)> = lower
        .iter()
        .filter(|(k, _)| k.starts_with("x-ms-"))
        .map(|(k, v)| (k.as_str(), fold(v)))
        .collect();
    ms.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in ms {
        s.push_str(k);
        s.push(':');
        s.push_str(&v);
        s.push('\n');
    }
    s.push('/');
    s.push_str(account);
    s.push_str(url.path());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url.query_pairs() {
        params
            .entry(k.to_ascii_lowercase())
            .or_default()
            .push(v.into_owned());
    }
    for (k, mut values) in params {
        values.sort();
        s.push('\n');
        s.push_str(&k);
        s.push(':');
        s.push_str(&values.join(","));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator's well-known development key (public, documented by Microsoft).
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn lease_headers() -> Vec<(&'static str, String)> {
        vec![
            ("x-ms-version", "2021-12-02".into()),
            ("x-ms-date", "Fri, 26 Jun 2015 23:39:12 GMT".into()),
            ("x-ms-lease-action", "acquire".into()),
            ("x-ms-lease-duration", "15".into()),
            ("Content-Length", "0".into()),
            ("x-ms-proposed-lease-id", "  1f3b  ".into()),
        ]
    }

    #[test]
    fn string_to_sign_follows_the_documented_layout() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/leases/vmss-sync-leader?comp=lease",
        )
        .unwrap();
        let s = string_to_sign("devstoreaccount1", "put", &url, &lease_headers());
        let expected = "PUT\n\n\n\n\n\n\n\n\n\n\n\n\
                        x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\n\
                        x-ms-lease-action:acquire\n\
                        x-ms-lease-duration:15\n\
                        x-ms-proposed-lease-id:1f3b\n\
                        x-ms-version:2021-12-02\n\
                        /devstoreaccount1/devstoreaccount1/leases/vmss-sync-leader\ncomp:lease";
        assert_eq!(s, expected);
    }

    #[test]
    fn query_parameters_are_sorted_lower_cased_and_decoded() {
        let url = Url::parse("https://acct.blob.core.windows.net/c?restype=container&Comp=a%20b")
            .unwrap();
        let s = string_to_sign("acct", "GET", &url, &[("If-None-Match", "*".into())]);
        assert!(s.starts_with("GET\n\n\n\n\n\n\n\n\n*\n\n\n"), "{s:?}");
        assert!(s.ends_with("/acct/c\ncomp:a b\nrestype:container"), "{s:?}");
    }

    #[test]
    fn authorization_is_hmac_sha256_of_the_string_to_sign_and_never_shows_the_key() {
        let key = SharedKey::new("devstoreaccount1", DEV_KEY).unwrap();
        let url =
            Url::parse("http://127.0.0.1:10000/devstoreaccount1/leases/b?comp=lease").unwrap();
        let auth = key.authorization("PUT", &url, &lease_headers());
        let raw = base64::engine::general_purpose::STANDARD
            .decode(DEV_KEY)
            .unwrap();
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw);
        let to_sign = string_to_sign("devstoreaccount1", "PUT", &url, &lease_headers());
        let expected = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&k, to_sign.as_bytes()).as_ref());
        assert_eq!(auth, format!("SharedKey devstoreaccount1:{expected}"));
        assert!(!format!("{key:?}").contains(DEV_KEY));
        assert!(SharedKey::new("a", "not base64!").is_err());
    }
}
