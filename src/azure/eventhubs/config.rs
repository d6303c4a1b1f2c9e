//! The `[event_hubs]` configuration section: which Event Hubs namespace
//! carries the pipeline's two hubs and how to authenticate to it. Its
//! presence puts the "ingest" and "landed" hubs on Azure Event Hubs instead
//! of the embedded SQLite hub.
//!
//! ```toml
//! [event_hubs]
//! fully_qualified_namespace = "myns.servicebus.windows.net"
//! ingest_hub = "ingest"          # Event Hubs entity names
//! landed_hub = "landed"
//! consumer_group = "$Default"    # group of the properties (lag) client
//! prefetch = 300                 # events the service pushes ahead per receiver
//! max_batch_bytes = 1048576      # one publish is one batch of at most this (and the link's limit)
//! operation_timeout_secs = 60    # open, send and management calls, retries included
//! max_retries = 8                # SDK retries of throttling and dropped links
//! retry_initial_ms = 200
//! retry_max_ms = 30000
//!
//! [event_hubs.auth]
//! kind = "entra"
//! credential = "managed_identity" # or "workload_identity", "developer_tools"
//! # client_id = "..."
//! ```
//!
//! Connection strings (`kind = "connection_string"`) parse but are refused
//! by [`EventHubsConfig::validate`]: `azure_messaging_eventhubs` 0.15 takes
//! only a `TokenCredential`, and its CBS authorizer puts every token with
//! the type `jwt` (`azure_core_amqp` 1.1 defaults the token type when the
//! SDK passes none), while Event Hubs accepts a shared access signature only
//! as `servicebus.windows.net:sastoken`. A SAS credential would be rejected
//! on the first link, so the section fails at startup with a message saying
//! so instead. SAS support arrives with later SDK versions.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::azure::config::{AzureConfigError, EntraCredential, check_retries};
use crate::source::SecretString;

/// The `[event_hubs]` section as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsConfig {
    /// `<namespace>.servicebus.windows.net` (an `sb://` or `amqps://`
    /// prefix and a trailing slash are accepted and removed).
    pub fully_qualified_namespace: String,
    /// The Event Hub the fetchers publish to and the partition consumers read.
    #[serde(default = "defaults::ingest_hub")]
    pub ingest_hub: String,
    /// The Event Hub that announces landed raw blobs to the transformers.
    #[serde(default = "defaults::landed_hub")]
    pub landed_hub: String,
    /// The consumer group the properties (lag) client attaches with. The
    /// partition consumers read with `[pipeline].consumer_group`.
    #[serde(default = "defaults::consumer_group")]
    pub consumer_group: String,
    pub auth: EventHubsAuthConfig,
    /// Events the service sends ahead of `receive` calls, per receiver.
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u32,
    /// The most bytes one publish (one Event Hubs batch) may hold; the
    /// link's own limit (1 MiB on Standard) applies as well.
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: u64,
    /// Deadline of one open, send or management call, SDK retries included.
    #[serde(default = "defaults::operation_timeout_secs")]
    pub operation_timeout_secs: u64,
    /// SDK retries of throttling and dropped connections, sessions, links.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    #[serde(default = "defaults::retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
}

mod defaults {
    pub fn ingest_hub() -> String {
        "ingest".to_string()
    }
    pub fn landed_hub() -> String {
        "landed".to_string()
    }
    pub fn consumer_group() -> String {
        "$Default".to_string()
    }
    pub fn prefetch() -> u32 {
        300
    }
    pub fn max_batch_bytes() -> u64 {
        1024 * 1024
    }
    pub fn operation_timeout_secs() -> u64 {
        60
    }
    pub fn max_retries() -> u32 {
        8
    }
    pub fn retry_initial_ms() -> u64 {
        200
    }
    pub fn retry_max_ms() -> u64 {
        30_000
    }
}

/// How the namespace authenticates us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventHubsAuthConfig {
    /// Microsoft Entra ID tokens (`https://eventhubs.azure.net/.default`).
    Entra {
        credential: EntraCredential,
        /// Client id of a user-assigned managed identity, or the workload
        /// identity's application (default: `AZURE_CLIENT_ID`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// `Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...`.
    /// Accepted by the parser so the refusal can say why; see the module docs.
    ConnectionString { connection_string: SecretString },
}

impl EventHubsConfig {
    /// A section for `namespace` with Entra ID auth and default tuning.
    pub fn new(namespace: impl Into<String>, auth: EventHubsAuthConfig) -> Self {
        EventHubsConfig {
            fully_qualified_namespace: namespace.into(),
            ingest_hub: defaults::ingest_hub(),
            landed_hub: defaults::landed_hub(),
            consumer_group: defaults::consumer_group(),
            auth,
            prefetch: defaults::prefetch(),
            max_batch_bytes: defaults::max_batch_bytes(),
            operation_timeout_secs: defaults::operation_timeout_secs(),
            max_retries: defaults::max_retries(),
            retry_initial_ms: defaults::retry_initial_ms(),
            retry_max_ms: defaults::retry_max_ms(),
        }
    }
}

/// The validated section. Holds no secret (only Entra ID is accepted).
#[derive(Debug, Clone, PartialEq)]
pub struct EventHubsSettings {
    /// The namespace host, e.g. `myns.servicebus.windows.net`.
    pub namespace: String,
    pub ingest_hub: String,
    pub landed_hub: String,
    pub consumer_group: String,
    pub auth: EventHubsAuth,
    pub prefetch: u32,
    pub max_batch_bytes: u64,
    pub operation_timeout: Duration,
    pub max_retries: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// Resolved authentication.
#[derive(Debug, Clone, PartialEq)]
pub enum EventHubsAuth {
    Entra {
        credential: EntraCredential,
        client_id: Option<String>,
    },
}

fn field(path: &str, message: impl Into<String>) -> AzureConfigError {
    AzureConfigError {
        path: format!("event_hubs.{path}"),
        message: message.into(),
    }
}

/// Why a connection string cannot work with this SDK version.
pub const CONNECTION_STRING_UNSUPPORTED: &str = "connection strings are not supported: \
    azure_messaging_eventhubs 0.15 accepts only a TokenCredential and authorizes every link \
    with CBS token type \"jwt\", while Event Hubs accepts a shared access signature only as \
    \"servicebus.windows.net:sastoken\", so every link would be refused; use kind = \"entra\"";

impl EventHubsConfig {
    /// Check the section. Errors name the field and never contain a secret.
    pub fn validate(&self) -> Result<EventHubsSettings, AzureConfigError> {
        let namespace = parse_namespace(&self.fully_qualified_namespace)?;
        check_hub_name("ingest_hub", &self.ingest_hub)?;
        check_hub_name("landed_hub", &self.landed_hub)?;
        if self.ingest_hub.eq_ignore_ascii_case(&self.landed_hub) {
            return Err(field(
                "landed_hub",
                "must differ from ingest_hub (the two hubs carry different events)",
            ));
        }
        check_consumer_group(&self.consumer_group)?;
        let auth = match &self.auth {
            EventHubsAuthConfig::Entra {
                credential,
                client_id,
            } => {
                if client_id.as_ref().is_some_and(|id| id.trim().is_empty()) {
                    return Err(field("auth.client_id", "must not be empty when set"));
                }
                EventHubsAuth::Entra {
                    credential: *credential,
                    client_id: client_id.clone(),
                }
            }
            EventHubsAuthConfig::ConnectionString { .. } => {
                return Err(field("auth.kind", CONNECTION_STRING_UNSUPPORTED));
            }
        };
        if !(1..=10_000).contains(&self.prefetch) {
            return Err(field("prefetch", "must be 1..=10000"));
        }
        // Event Hubs batches: 1 MiB on Basic/Standard, up to 20 MiB on
        // Premium/Dedicated; below 1 KiB nothing useful fits.
        if !(1024..=20 * 1024 * 1024).contains(&self.max_batch_bytes) {
            return Err(field("max_batch_bytes", "must be 1 KiB..=20 MiB"));
        }
        if !(1..=3600).contains(&self.operation_timeout_secs) {
            return Err(field("operation_timeout_secs", "must be 1..=3600"));
        }
        check_retries(self.max_retries, self.retry_initial_ms, self.retry_max_ms)
            .map_err(|(path, message)| field(path, message))?;
        Ok(EventHubsSettings {
            namespace,
            ingest_hub: self.ingest_hub.clone(),
            landed_hub: self.landed_hub.clone(),
            consumer_group: self.consumer_group.clone(),
            auth,
            prefetch: self.prefetch,
            max_batch_bytes: self.max_batch_bytes,
            operation_timeout: Duration::from_secs(self.operation_timeout_secs),
            max_retries: self.max_retries,
            retry_initial: Duration::from_millis(self.retry_initial_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
        })
    }
}

/// The namespace host from `myns.servicebus.windows.net`, `sb://myns...`
/// or `amqps://myns.../`.
fn parse_namespace(text: &str) -> Result<String, AzureConfigError> {
    let trimmed = text.trim();
    let host = ["sb://", "amqps://"]
        .iter()
        .find_map(|scheme| trimmed.strip_prefix(scheme))
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    if host.is_empty() {
        return Err(field("fully_qualified_namespace", "must not be empty"));
    }
    if host.contains("://") {
        return Err(field(
            "fully_qualified_namespace",
            "must be a host name (optionally with sb:// or amqps://)",
        ));
    }
    let valid_labels = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    });
    if !valid_labels || !host.contains('.') || host.len() > 253 {
        return Err(field(
            "fully_qualified_namespace",
            "must be a fully qualified host name such as myns.servicebus.windows.net",
        ));
    }
    Ok(host.to_ascii_lowercase())
}

/// Event Hubs entity names: 1-256 of letters, digits, `.`, `-`, `_`,
/// starting and ending with a letter or digit.
fn check_hub_name(path: &str, name: &str) -> Result<(), AzureConfigError> {
    let ok = (1..=256).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(field(
            path,
            "must be 1-256 letters, digits, '.', '-' or '_', starting and ending with a letter or digit",
        ))
    }
}

/// Consumer groups: `$Default`, or 1-50 of letters, digits, `.`, `-`, `_`.
fn check_consumer_group(name: &str) -> Result<(), AzureConfigError> {
    let ok = name == "$Default"
        || ((1..=50).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(field(
            "consumer_group",
            "must be $Default or 1-50 letters, digits, '.', '-' or '_' starting with a letter or digit",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EventHubsConfig, toml::de::Error> {
        toml::from_str(text)
    }

    const ENTRA: &str = "[auth]\nkind = \"entra\"\ncredential = \"workload_identity\"\n";

    #[test]
    fn parses_defaults_and_normalises_the_namespace() {
        let config = parse(&format!(
            "fully_qualified_namespace = \"sb://MyNs.servicebus.windows.net/\"\n{ENTRA}"
        ))
        .unwrap();
        let s = config.validate().unwrap();
        assert_eq!(s.namespace, "myns.servicebus.windows.net");
        assert_eq!(s.ingest_hub, "ingest");
        assert_eq!(s.landed_hub, "landed");
        assert_eq!(s.consumer_group, "$Default");
        assert_eq!(s.prefetch, 300);
        assert_eq!(s.max_batch_bytes, 1024 * 1024);
        assert_eq!(s.operation_timeout, Duration::from_secs(60));
        assert_eq!(
            s.auth,
            EventHubsAuth::Entra {
                credential: EntraCredential::WorkloadIdentity,
                client_id: None
            }
        );
        assert_eq!(
            config,
            EventHubsConfig::new("sb://MyNs.servicebus.windows.net/", config.auth.clone())
        );
    }

    #[test]
    fn refuses_unknown_fields_and_kinds() {
        assert!(
            parse(&format!(
                "fully_qualified_namespace = \"a.b\"\nextra = 1\n{ENTRA}"
            ))
            .is_err()
        );
        assert!(parse("fully_qualified_namespace = \"a.b\"\n[auth]\nkind = \"sas\"\n").is_err());
        assert!(
            parse("fully_qualified_namespace = \"a.b\"\n[auth]\nkind = \"entra\"\ncredential = \"x\"\n")
                .is_err()
        );
    }

    #[test]
    fn validation_names_the_field() {
        let base = "fully_qualified_namespace = \"ns.servicebus.windows.net\"\n".to_string();
        let cases = [
            (
                "fully_qualified_namespace = \"https://ns\"\n".to_string(),
                "event_hubs.fully_qualified_namespace",
            ),
            (
                "fully_qualified_namespace = \"localhost\"\n".to_string(),
                "event_hubs.fully_qualified_namespace",
            ),
            (
                format!("{base}ingest_hub = \"-bad\"\n"),
                "event_hubs.ingest_hub",
            ),
            (
                format!("{base}landed_hub = \"INGEST\"\n"),
                "event_hubs.landed_hub",
            ),
            (
                format!("{base}consumer_group = \"$Other\"\n"),
                "event_hubs.consumer_group",
            ),
            (format!("{base}prefetch = 0\n"), "event_hubs.prefetch"),
            (
                format!("{base}max_batch_bytes = 10\n"),
                "event_hubs.max_batch_bytes",
            ),
            (
                format!("{base}operation_timeout_secs = 0\n"),
                "event_hubs.operation_timeout_secs",
            ),
            (
                format!("{base}retry_initial_ms = 500\nretry_max_ms = 100\n"),
                "event_hubs.retry_initial_ms",
            ),
        ];
        for (text, path) in cases {
            let err = parse(&format!("{text}{ENTRA}"))
                .unwrap()
                .validate()
                .expect_err(&text)
                .to_string();
            assert!(err.contains(path), "{text}: {err}");
        }
    }

    #[test]
    fn connection_strings_are_refused_with_the_reason_and_never_echoed() {
        let text = "fully_qualified_namespace = \"ns.servicebus.windows.net\"\n[auth]\n\
                    kind = \"connection_string\"\nconnection_string = \"Endpoint=sb://ns.servicebus.windows.net/;\
                    SharedAccessKeyName=send;SharedAccessKey=S3CRETKEY=\"\n";
        let config = parse(text).unwrap();
        assert!(!format!("{config:?}").contains("S3CRETKEY"));
        assert!(!toml::to_string(&config).unwrap().contains("S3CRETKEY"));
        let err = config.validate().unwrap_err();
        assert_eq!(err.path, "event_hubs.auth.kind");
        assert!(
            err.message.contains("servicebus.windows.net:sastoken"),
            "{}",
            err.message
        );
        assert!(!err.to_string().contains("S3CRETKEY"));
    }
}
