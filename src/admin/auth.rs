//! Bearer-token checks for the admin port.
//!
//! The token is kept only as an HMAC-SHA256 under a random per-process key;
//! a presented token is MACed the same way and compared with
//! `Mac::verify_slice` (constant time), so neither the comparison's timing
//! nor the token's length leaks. The token never reaches a log line, an
//! error message or `Debug`.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::source::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token (send Authorization: Bearer <token>)")]
    Missing,
    #[error("invalid bearer token")]
    Invalid,
    #[error(
        "control calls are disabled: no admin token is configured (set admin.token or HUBFLOW_ADMIN_TOKEN)"
    )]
    NoTokenConfigured,
}

/// The configured token, in a form that can only be compared.
#[derive(Clone)]
pub struct Auth {
    key: [u8; 32],
    expected: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.expected.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Auth {
    pub fn new(token: Option<&Secret>) -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let expected = token.map(|t| mac(&key, t.expose().as_bytes()));
        Auth { key, expected }
    }

    pub fn has_token(&self) -> bool {
        self.expected.is_some()
    }

    /// Check the `Authorization` header of a request.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some(expected) = &self.expected else {
            return Err(AuthError::NoTokenConfigured);
        };
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let mut m = match HmacSha256::new_from_slice(&self.key) {
            Ok(m) => m,
            Err(_) => return Err(AuthError::Invalid),
        };
        m.update(presented.as_bytes());
        m.verify_slice(expected).map_err(|_| AuthError::Invalid)
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; the error branch cannot happen.
    match HmacSha256::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::SecretString;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let secret = SecretString::literal("correct-horse-battery")
            .resolve("t")
            .unwrap();
        let auth = Auth::new(Some(&secret));
        assert_eq!(auth.check(&headers("Bearer correct-horse-battery")), Ok(()));
        assert_eq!(
            auth.check(&headers("bearer  correct-horse-battery ")),
            Ok(())
        );
        assert_eq!(
            auth.check(&headers("Bearer correct-horse-batter")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            auth.check(&headers("Basic correct-horse-battery")),
            Err(AuthError::Missing)
        );
        assert_eq!(auth.check(&HeaderMap::new()), Err(AuthError::Missing));
        assert!(!format!("{auth:?}").contains("correct"));
    }

    #[test]
    fn without_a_token_control_is_disabled() {
        let auth = Auth::new(None);
        assert_eq!(
            auth.check(&headers("Bearer anything-at-all")),
            Err(AuthError::NoTokenConfigured)
        );
    }
}
