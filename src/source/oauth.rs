//! OAuth 2.0 client credentials (RFC 6749 §4.4) for the HTTP source.
//!
//! ```toml
//! auth = { type = "oauth2", token_url = "https://login.example.com/oauth2/token",
//!          client_id = "hubflow", client_secret = { env = "ORDERS_CLIENT_SECRET" },
//!          scope = "orders.read" }
//! ```
//!
//! [`TokenSource`] posts `grant_type=client_credentials` (and `scope`) to the
//! token endpoint, authenticating with HTTP Basic (`client_auth = "basic"`,
//! the default) or with `client_id`/`client_secret` form fields
//! (`client_auth = "body"`). The token is cached and fetched again
//! `refresh_margin_secs` before `expires_in` runs out (at half its life when
//! it lives shorter than the margin); a 401 from the API drops it, and the
//! request is retried once with a fresh token. The secret and tokens are
//! [`Secret`]s and sensitive header values: never in logs, `Debug` or errors.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info};
use url::Url;

use super::error::{ConfigError, error_chain};
use super::extract::{parse_retry_after, redact_url};
use super::secret::{Secret, SecretString};

/// Default time before expiry at which a token is replaced.
pub const DEFAULT_REFRESH_MARGIN_SECS: u64 = 60;
/// Largest token response read.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// How the client authenticates to the token endpoint.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic base64(client_id:client_secret)`.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields.
    Body,
}

/// Validated client credentials settings.
#[derive(Clone)]
pub struct OAuth2Settings {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub client_auth: ClientAuth,
    pub refresh_margin: Duration,
}

impl fmt::Debug for OAuth2Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuth2Settings")
            .field("token_url", &redact_url(&self.token_url, None))
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("scope", &self.scope)
            .field("client_auth", &self.client_auth)
            .field("refresh_margin", &self.refresh_margin)
            .finish()
    }
}

impl OAuth2Settings {
    /// Validates the `auth = { type = "oauth2", .. }` fields.
    pub fn validate(
        token_url: &str,
        client_id: &str,
        client_secret: &SecretString,
        scope: Option<&str>,
        client_auth: ClientAuth,
        refresh_margin_secs: u64,
    ) -> Result<Self, ConfigError> {
        let url = Url::parse(token_url)
            .map_err(|e| ConfigError::invalid("auth.token_url", format!("not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid(
                "auth.token_url",
                "must be an http or https URL with a host",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::invalid(
                "auth.token_url",
                "must not contain credentials; use client_id and client_secret",
            ));
        }
        if client_id.trim().is_empty() {
            return Err(ConfigError::invalid("auth.client_id", "must not be empty"));
        }
        if client_auth == ClientAuth::Basic && client_id.contains(':') {
            // Form-encoding makes it legal, but many servers get it wrong.
            return Err(ConfigError::invalid(
                "auth.client_id",
                "must not contain `:` with client_auth = \"basic\"; use client_auth = \"body\"",
            ));
        }
        if scope.is_some_and(|s| s.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "auth.scope",
                "must not be empty (leave it out instead)",
            ));
        }
        Ok(OAuth2Settings {
            token_url: url,
            client_id: client_id.to_string(),
            client_secret: client_secret.resolve("auth.client_secret")?,
            scope: scope.map(str::to_string),
            client_auth,
            refresh_margin: Duration::from_secs(refresh_margin_secs),
        })
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// Worth retrying (5xx, 429, timeouts, a garbled answer).
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The endpoint refused the credentials or the request (4xx).
    Fatal(String),
}

struct Cached {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// Replace the token from then on; `None`: until the API refuses it.
    refresh_at: Option<Instant>,
}

/// Fetches and caches access tokens for one source.
pub struct TokenSource {
    source: String,
    settings: OAuth2Settings,
    client: reqwest::Client,
    cached: Mutex<Option<Cached>>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("source", &self.source)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(source: &str, settings: OAuth2Settings, client: reqwest::Client) -> Self {
        TokenSource {
            source: source.to_string(),
            settings,
            client,
            cached: Mutex::new(None),
        }
    }

    /// The `Authorization` value to send: the cached token while it is
    /// fresh, a new one otherwise.
    pub async fn authorization(&self) -> Result<HeaderValue, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(c.header.clone());
        }
        let fresh = self.request_token().await?;
        let header = fresh.header.clone();
        *cached = Some(fresh);
        Ok(header)
    }

    /// The API refused `used`: forget it (unless it was already replaced),
    /// so the next [`TokenSource::authorization`] fetches a new one.
    pub async fn reject(&self, used: &HeaderValue) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.header == *used) {
            *cached = None;
        }
    }

    fn shown_url(&self) -> String {
        redact_url(&self.settings.token_url, None)
    }

    async fn request_token(&self) -> Result<Cached, TokenError> {
        let result = self.request_token_inner().await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(TokenError::Transient { .. }) => "transient",
            Err(TokenError::Fatal(_)) => "fatal",
        };
        metrics::counter!("hubflow_source_token_requests_total", "source" => self.source.clone(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn request_token_inner(&self) -> Result<Cached, TokenError> {
        let shown = self.shown_url();
        let (status, retry_after, body) = self.post_token_request(&shown).await?;
        if !status.is_success() {
            return Err(refused(&shown, status, retry_after, &body));
        }
        self.cached_token(&shown, &body)
    }

    /// POST the client-credentials grant (RFC 6749 §4.4) and read the
    /// answer: its status, `Retry-After` and (bounded) body.
    async fn post_token_request(
        &self,
        shown: &str,
    ) -> Result<(StatusCode, Option<Duration>, Vec<u8>), TokenError> {
        let s = &self.settings;
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            if let Some(scope) = &s.scope {
                form.append_pair("scope", scope);
            }
            if s.client_auth == ClientAuth::Body {
                form.append_pair("client_id", &s.client_id);
                form.append_pair("client_secret", s.client_secret.expose());
            }
            form.finish()
        };
        let mut request = self
            .client
            .post(s.token_url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if s.client_auth == ClientAuth::Basic {
            // RFC 6749 §2.3.1: form-encode both parts before base64.
            let encode =
                |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            let pair = format!(
                "{}:{}",
                encode(&s.client_id),
                encode(s.client_secret.expose())
            );
            let mut value = HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
            .map_err(|_| {
                TokenError::Fatal("oauth2 client credentials are not valid in a header".into())
            })?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| TokenError::Transient {
                message: format!(
                    "oauth2 token request to {shown}: {}",
                    error_chain(&e.without_url())
                ),
                retry_after: None,
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let body = read_limited(response)
            .await
            .map_err(|e| TokenError::Transient {
                message: format!("oauth2 token request to {shown}: reading the answer: {e}"),
                retry_after: None,
            })?;
        Ok((status, retry_after, body))
    }

    /// The bearer header of a token response and when to refresh it.
    fn cached_token(&self, shown: &str, body: &[u8]) -> Result<Cached, TokenError> {
        let s = &self.settings;
        let garbled = |why: &str| TokenError::Transient {
            message: format!("oauth2 token response from {shown} is unusable: {why}"),
            retry_after: None,
        };
        let document: Value =
            serde_json::from_slice(body).map_err(|_| garbled("not a JSON object"))?;
        let token = document
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| garbled("no access_token"))?;
        if let Some(kind) = document.get("token_type").and_then(Value::as_str)
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenError::Fatal(format!(
                "oauth2 token from {shown} has token_type {:?}; only bearer tokens are supported",
                short(kind)
            )));
        }
        let expires_in = match document.get("expires_in") {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64);
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| garbled("access_token is not valid in a header"))?;
        header.set_sensitive(true);
        let now = Instant::now();
        let refresh_at = expires_in.map(|life| {
            if life > s.refresh_margin {
                now + (life - s.refresh_margin)
            } else {
                now + life / 2
            }
        });
        info!(source = %self.source, expires_in_secs = expires_in.map(|d| d.as_secs()), "oauth2 token fetched");
        debug!(source = %self.source, token_url = %shown, "oauth2 token cached");
        Ok(Cached { header, refresh_at })
    }
}

/// The error of a token endpoint's refusal: worth retrying for a server
/// error, 429 or 408, fatal otherwise (bad client credentials stay bad).
fn refused(
    shown: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> TokenError {
    let message = format!(
        "oauth2 token request to {shown} failed: http {status}{}",
        error_code(body).map_or(String::new(), |c| format!(" ({c})"))
    );
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        TokenError::Transient {
            message,
            retry_after,
        }
    } else {
        TokenError::Fatal(message)
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| error_chain(&e.without_url()))?
    {
        if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
            return Err(format!("larger than {MAX_TOKEN_RESPONSE_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The RFC 6749 `error` code of an error answer, when it looks like one (a
/// short token: nothing else of the body is shown).
fn error_code(body: &[u8]) -> Option<String> {
    let document: Value = serde_json::from_slice(body).ok()?;
    let code = document.get("error")?.as_str()?;
    (!code.is_empty()
        && code.len() <= 64
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    .then(|| code.to_string())
}

fn short(text: &str) -> String {
    text.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields_and_hides_the_secret() {
        let secret = SecretString::literal("s3cret-value");
        let ok = OAuth2Settings::validate(
            "https://login.example.com/token",
            "client",
            &secret,
            Some("read"),
            ClientAuth::Basic,
            60,
        )
        .unwrap();
        let shown = format!("{ok:?}");
        assert!(
            !shown.contains("s3cret-value") && shown.contains("client"),
            "{shown}"
        );
        for (url, id, scope, auth, field) in [
            (
                "ftp://x/token",
                "c",
                None,
                ClientAuth::Basic,
                "auth.token_url:",
            ),
            (
                "https://u:p@x/token",
                "c",
                None,
                ClientAuth::Basic,
                "auth.token_url:",
            ),
            (
                "https://x/token",
                " ",
                None,
                ClientAuth::Basic,
                "auth.client_id:",
            ),
            (
                "https://x/token",
                "a:b",
                None,
                ClientAuth::Basic,
                "auth.client_id:",
            ),
            (
                "https://x/token",
                "c",
                Some(""),
                ClientAuth::Body,
                "auth.scope:",
            ),
        ] {
            let err = OAuth2Settings::validate(url, id, &secret, scope, auth, 60)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(field), "{url} {id}: {err}");
            assert!(!err.contains("p@"), "{err}");
        }
        let err = OAuth2Settings::validate(
            "https://x/token",
            "c",
            &SecretString::env("HUBFLOW_TEST_UNSET_OAUTH_SECRET"),
            None,
            ClientAuth::Basic,
            60,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("auth.client_secret:"), "{err}");
    }

    #[test]
    fn only_short_error_codes_are_shown() {
        assert_eq!(
            error_code(br#"{"error":"invalid_client","error_description":"secret abc wrong"}"#),
            Some("invalid_client".into())
        );
        assert_eq!(error_code(br#"{"error":"has spaces and s3cret"}"#), None);
        assert_eq!(error_code(b"<html>"), None);
    }
}
