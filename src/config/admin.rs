//! The `[admin]` section: where the admin port listens, its bearer token
//! (literal, env or file; `HUBFLOW_ADMIN_TOKEN` when unset), deadlines;
//! validated once into [`AdminSettings`] by `Config::validate`. The server
//! itself is `crate::admin`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::source::{Secret, SecretString};

pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);
/// Environment variable holding the token when `[admin] token` is not set
/// (the same variable `hubflow ctl` reads).
pub const TOKEN_ENV: &str = "HUBFLOW_ADMIN_TOKEN";
/// Shortest token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The `[admin]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Start the admin server with `hubflow run`.
    pub enabled: bool,
    /// Address to listen on (default 127.0.0.1:9464; port 0 picks a free
    /// port). When unset and the default port is taken, a free loopback
    /// port is used instead (logged); an explicit address that cannot be
    /// bound is an error.
    pub listen: Option<SocketAddr>,
    /// Bearer token for control calls (literal, `{ env = "VAR" }` or
    /// `{ file = "path" }`); when unset, `HUBFLOW_ADMIN_TOKEN` is used if set.
    pub token: Option<SecretString>,
    /// SIGTERM/Ctrl-C: drain, checkpoint and exit within this many seconds.
    pub shutdown_deadline_secs: u64,
    /// Default deadline of `POST /drain` for a group.
    pub drain_deadline_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: None,
            token: None,
            shutdown_deadline_secs: 30,
            drain_deadline_secs: 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminConfigError {
    #[error("admin.{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> AdminConfigError {
    AdminConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The validated `[admin]` section.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// False when `listen` is the default (then a busy port falls back).
    pub listen_explicit: bool,
    pub token: Option<Secret>,
    pub shutdown_deadline: Duration,
    pub drain_deadline: Duration,
}

impl AdminConfig {
    /// Resolve the token and check the section. A non-loopback address
    /// without a token is refused.
    pub fn validate(&self) -> Result<AdminSettings, AdminConfigError> {
        let token = match &self.token {
            Some(secret) => Some(
                secret
                    .resolve("admin.token")
                    .map_err(|e| invalid("token", e.to_string()))?,
            ),
            None => match std::env::var(TOKEN_ENV) {
                Ok(v) if !v.is_empty() => Some(
                    SecretString::env(TOKEN_ENV)
                        .resolve("admin.token")
                        .map_err(|e| invalid("token", e.to_string()))?,
                ),
                _ => None,
            },
        };
        if let Some(t) = &token
            && t.expose().chars().count() < MIN_TOKEN_LEN
        {
            return Err(invalid(
                "token",
                format!("must be at least {MIN_TOKEN_LEN} characters"),
            ));
        }
        let listen = self.listen.unwrap_or(DEFAULT_LISTEN);
        if self.enabled && !listen.ip().is_loopback() && token.is_none() {
            return Err(invalid(
                "listen",
                format!(
                    "{listen} is not a loopback address: set admin.token (or {TOKEN_ENV}) so the admin port is not open to the network"
                ),
            ));
        }
        if self.shutdown_deadline_secs == 0 {
            return Err(invalid("shutdown_deadline_secs", "must be at least 1"));
        }
        if self.drain_deadline_secs == 0 {
            return Err(invalid("drain_deadline_secs", "must be at least 1"));
        }
        Ok(AdminSettings {
            enabled: self.enabled,
            listen,
            listen_explicit: self.listen.is_some(),
            token,
            shutdown_deadline: Duration::from_secs(self.shutdown_deadline_secs),
            drain_deadline: Duration::from_secs(self.drain_deadline_secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_needs_a_token_and_short_tokens_are_refused() {
        let open = AdminConfig {
            listen: Some("0.0.0.0:9464".parse().unwrap()),
            ..AdminConfig::default()
        };
        // Only meaningful when the environment does not supply a token.
        if std::env::var(TOKEN_ENV).is_err() {
            let err = open.validate().unwrap_err().to_string();
            assert!(err.starts_with("admin.listen:"), "{err}");
        }
        let short = AdminConfig {
            token: Some(SecretString::literal("short")),
            ..AdminConfig::default()
        };
        assert!(short.validate().unwrap_err().to_string().contains("16"));
        let ok = AdminConfig {
            token: Some(SecretString::literal("a-long-enough-token-1234")),
            ..open
        };
        let settings = ok.validate().unwrap();
        assert!(!format!("{settings:?}").contains("a-long-enough-token-1234"));
        assert!(settings.listen_explicit);
    }

    #[test]
    fn defaults_are_loopback_and_valid() {
        let settings = AdminConfig::default().validate().unwrap();
        assert!(settings.listen.ip().is_loopback());
        assert!(!settings.listen_explicit);
        assert_eq!(settings.shutdown_deadline, Duration::from_secs(30));
        let toml = toml::to_string(&AdminConfig::default()).unwrap();
        let back: AdminConfig = toml::from_str(&toml).unwrap();
        assert_eq!(back, AdminConfig::default());
        assert!(toml::from_str::<AdminConfig>("nope = 1").is_err());
    }
}
