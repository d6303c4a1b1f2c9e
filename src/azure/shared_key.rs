//! Shared Key authorization for Azure Storage, as a pipeline policy.
//!
//! `azure_storage_blob` 1.x authenticates with Entra ID tokens or SAS URLs
//! only; an account key (and the Azurite emulator, whose well-known key is
//! public) needs the `SharedKey` scheme: an HMAC-SHA256 over a canonical form
//! of the request, keyed with the base64-decoded account key
//! (<https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>).
//!
//! [`SharedKeyPolicy`] is installed in the client's **per-try** policies, so it
//! runs after the retry policy: every attempt gets a fresh `x-ms-date` and a
//! fresh signature (a retried request with a stale date would be refused once
//! it is 15 minutes old). It runs before the transport, after the client has
//! set every `x-ms-*` header, which is what the signature covers.
//!
//! The key never leaves this module: `Debug` shows the account name only, and
//! errors never contain the key or the signature.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request, Url};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::source::Secret;

/// The account key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SharedKeyError {
    #[error("the storage account key is not valid base64")]
    KeyNotBase64,
    #[error("the storage account key is empty")]
    EmptyKey,
    #[error("the storage account name is empty")]
    EmptyAccount,
}

/// The standard headers the string-to-sign lists by position, in order.
const SIGNED_STANDARD_HEADERS: [&str; 11] = [
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

/// Signs every attempt of a request with the storage account key.
#[derive(Clone)]
pub struct SharedKeyPolicy {
    account: String,
    key: Arc<[u8]>,
}

impl fmt::Debug for SharedKeyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyPolicy")
            .field("account", &self.account)
            .field("key", &"***")
            .finish()
    }
}

impl SharedKeyPolicy {
    /// A policy for `account` with its base64 account key.
    pub fn new(account: impl Into<String>, key: &Secret) -> Result<Self, SharedKeyError> {
        let account = account.into();
        if account.is_empty() {
            return Err(SharedKeyError::EmptyAccount);
        }
        let key = BASE64
            .decode(key.expose().trim())
            .map_err(|_| SharedKeyError::KeyNotBase64)?;
        if key.is_empty() {
            return Err(SharedKeyError::EmptyKey);
        }
        Ok(SharedKeyPolicy {
            account,
            key: key.into(),
        })
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// Set `x-ms-date` to `date` (RFC 1123) and `Authorization` to the
    /// signature of the request as it is now.
    pub fn sign(&self, request: &mut Request, date: &str) {
        request.insert_header("x-ms-date", date.to_string());
        request.headers_mut().remove("authorization");
        let content_length = request.body().len();
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), value.as_str().to_string()))
            .collect();
        let to_sign = string_to_sign(
            &self.account,
            request.method().as_str(),
            request.url(),
            &headers,
            content_length,
        );
        let signature = hmac_sha256_base64(&self.key, &to_sign);
        request.insert_header(
            "authorization",
            format!("SharedKey {}:{signature}", self.account),
        );
    }
}

#[async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        self.sign(request, &rfc1123_now());
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// The current time as HTTP wants it: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn rfc1123_now() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// HMAC-SHA256 of `data` under `key`, base64-encoded.
pub fn hmac_sha256_base64(key: &[u8], data: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    };
    mac.update(data.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// The Shared Key string-to-sign of a Blob service request (version
/// 2009-09-19 and later): the verb, eleven standard headers by position, the
/// canonicalized `x-ms-*` headers and the canonicalized resource.
///
/// `headers` are (name, value) pairs; names are matched case-insensitively.
/// `content_length` is the body's length: a zero length signs as an empty
/// string, as the service does since version 2015-02-21.
pub fn string_to_sign(
    account: &str,
    method: &str,
    url: &Url,
    headers: &[(String, String)],
    content_length: Option<u64>,
) -> String {
    let header = |wanted: &str| -> String {
        headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.trim().to_string())
            .unwrap_or_default()
    };
    let mut out = String::with_capacity(256);
    out.push_str(&method.to_ascii_uppercase());
    out.push('\n');
    for name in SIGNED_STANDARD_HEADERS {
        let value = match name {
            "content-length" => match content_length {
                Some(0) => String::new(),
                Some(len) => len.to_string(),
                None => match header(name).as_str() {
                    "0" => String::new(),
                    other => other.to_string(),
                },
            },
            _ => header(name),
        };
        out.push_str(&value);
        out.push('\n');
    }

    // Canonicalized headers: every x-ms-* header, lowercase, sorted by name,
    // `name:value\n` with the value's surrounding whitespace removed and
    // runs of whitespace inside folded to one space.
    let mut ms_headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if name.starts_with("x-ms-") {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            ms_headers.insert(name, value);
        }
    }
    for (name, value) in &ms_headers {
        out.push_str(name);
        out.push(':');
        out.push_str(value);
        out.push('\n');
    }

    // Canonicalized resource: /account + the encoded path, then each query
    // parameter (name lowercase, sorted; values decoded, sorted, joined by
    // commas) on its own line.
    out.push('/');
    out.push_str(account);
    let path = url.path();
    out.push_str(if path.is_empty() { "/" } else { path });
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url.query_pairs() {
        params
            .entry(name.to_ascii_lowercase())
            .or_default()
            .push(value.into_owned());
    }
    for (name, mut values) in params {
        values.sort();
        out.push('\n');
        out.push_str(&name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SecretString;
    use azure_core::http::Method;

    /// Azurite's well-known development key (public, documented by Microsoft).
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn string_to_sign_follows_the_documented_layout() {
        let url = Url::parse(
            "https://myaccount.blob.core.windows.net/mycontainer/dir/blob.bin?timeout=30&COMP=block&blockid=AAA%3D",
        )
        .unwrap();
        let got = string_to_sign(
            "myaccount",
            "put",
            &url,
            &headers(&[
                ("Content-Type", "application/octet-stream"),
                ("If-None-Match", "*"),
                ("x-ms-version", "2026-04-06"),
                ("X-MS-Date", "Fri, 26 Jun 2015 23:39:12 GMT"),
                ("x-ms-meta-a", "  spaced   value "),
                ("user-agent", "ignored"),
            ]),
            Some(11),
        );
        let want = "PUT\n\n\n11\n\napplication/octet-stream\n\n\n\n*\n\n\n\
                    x-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\n\
                    x-ms-meta-a:spaced value\n\
                    x-ms-version:2026-04-06\n\
                    /myaccount/mycontainer/dir/blob.bin\n\
                    blockid:AAA=\ncomp:block\ntimeout:30";
        assert_eq!(got, want);
    }

    #[test]
    fn zero_length_signs_as_empty() {
        let url =
            Url::parse("http://127.0.0.1:10000/devstoreaccount1/c?restype=container").unwrap();
        let got = string_to_sign("devstoreaccount1", "PUT", &url, &[], Some(0));
        assert_eq!(
            got,
            "PUT\n\n\n\n\n\n\n\n\n\n\n\n/devstoreaccount1/devstoreaccount1/c\nrestype:container"
        );
    }

    /// The HMAC itself against RFC 4231 test case 2 (key "Jefe").
    #[test]
    fn hmac_matches_rfc_4231() {
        let mac = hmac_sha256_base64(b"Jefe", "what do ya want for nothing?");
        let hex = hex::encode(BASE64.decode(mac).unwrap());
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// A whole request signed here and by the official Python SDK's
    /// `SharedKeyCredentialPolicy` (azure-storage-blob 12.31.1), computed
    /// independently with the same inputs.
    #[test]
    fn signature_matches_the_python_sdk() {
        let url = Url::parse(
            "http://127.0.0.1:10000/devstoreaccount1/contract/dir/first.bin?comp=block&blockid=YmxvY2sx",
        )
        .unwrap();
        let mut request = Request::new(url, Method::Put);
        request.insert_header("x-ms-version", "2026-04-06");
        request.insert_header("if-match", "\"0x8DC0000000000\"");
        request.insert_header("content-type", "application/octet-stream");
        request.set_body(b"hello world".to_vec());
        let key = SecretString::literal(DEV_KEY).resolve("key").unwrap();
        let policy = SharedKeyPolicy::new("devstoreaccount1", &key).unwrap();
        policy.sign(&mut request, "Sat, 28 Nov 2026 05:00:00 GMT");
        let auth = request
            .headers()
            .get_optional_str(&"authorization".into())
            .unwrap()
            .to_string();
        assert_eq!(
            auth,
            format!("SharedKey devstoreaccount1:{PYTHON_SIGNATURE}")
        );
    }

    const PYTHON_SIGNATURE: &str = "FK5tcRoqm+q5Z/Mqx6oZmIwoFcbi9b1i0MIjxPnmR98=";

    #[test]
    fn debug_and_errors_hide_the_key() {
        let key = SecretString::literal(DEV_KEY).resolve("key").unwrap();
        let policy = SharedKeyPolicy::new("acct", &key).unwrap();
        let shown = format!("{policy:?}");
        assert!(!shown.contains("Eby8"), "{shown}");
        assert!(shown.contains("acct"));
        let bad = SecretString::literal("not base64!!")
            .resolve("key")
            .unwrap();
        let err = SharedKeyPolicy::new("acct", &bad).unwrap_err().to_string();
        assert!(!err.contains("not base64!!"), "{err}");
    }
}
