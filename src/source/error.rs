//! The source's errors that more than one file uses: [`ConfigError`] (an
//! invalid source configuration, from config, secrets, OAuth2, rate limits
//! and watermarks) and [`error_chain`] (an HTTP client error with its
//! causes on one line, for the fetch and token requests).

use std::error::Error as StdError;

/// An invalid source configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field's value is unusable; `field` is its path in the config.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The HTTP client could not be built from valid settings.
    #[error("http client: {0}")]
    Client(String),
}

impl ConfigError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error and its sources on one line. Callers strip URLs first.
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
