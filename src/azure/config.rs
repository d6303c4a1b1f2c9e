//! The `[azure_blob]` configuration section: where the Azure Blob Storage
//! account is and how to authenticate to it. Its presence selects Azure Blob
//! Storage as the blob store; the container names stay in `[storage]`.
//!
//! ```toml
//! [azure_blob]
//! account_url = "https://myaccount.blob.core.windows.net"   # no trailing slash needed
//! # account_name = "myaccount"   # default: from the URL (host, or first path segment)
//! request_timeout_secs = 60      # one attempt, connect to last body byte
//! connect_timeout_secs = 10
//! max_retries = 5                # SDK retries of 408/429/5xx and I/O errors
//! retry_initial_ms = 200
//! retry_max_ms = 10000
//! block_size_bytes = 8388608     # larger puts are staged blocks of this size
//! upload_concurrency = 4
//!
//! [azure_blob.auth]
//! kind = "entra"                 # or "account_key" or "sas"
//! credential = "managed_identity" # or "workload_identity", "developer_tools"
//! # client_id = "..."            # user-assigned managed identity / workload identity
//! # kind = "account_key"; key = { env = "AZURE_STORAGE_KEY" }
//! # kind = "sas"; sas = { file = "/run/secrets/sas" }  # a SAS URL of the account, or the bare token
//! ```
//!
//! [`AzureBlobConfig`] is the wire form (unknown fields refused, secrets as
//! [`SecretString`] that never print); [`AzureBlobConfig::validate`] resolves
//! the secrets and checks ranges into [`AzureBlobSettings`].

use std::fmt;
use std::time::Duration;

use azure_core::http::Url;
use serde::{Deserialize, Serialize};

use crate::source::{Secret, SecretString};

/// The `[azure_blob]` section as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureBlobConfig {
    /// `https://<account>.blob.core.windows.net`, or Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`.
    pub account_url: String,
    /// The account name the Shared Key signature names. Default: the first
    /// label of the host, or for an IP/localhost URL its first path segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_name: Option<String>,
    pub auth: AzureAuthConfig,
    #[serde(default = "defaults::request_timeout_secs")]
    pub request_timeout_secs: u64,
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
    #[serde(default = "defaults::retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    /// Puts larger than this are uploaded as staged blocks of this size and
    /// committed with one block list (which carries the put's condition).
    #[serde(default = "defaults::block_size_bytes")]
    pub block_size_bytes: u64,
    /// Blocks of one put uploaded at once; also ranged reads of one get.
    #[serde(default = "defaults::upload_concurrency")]
    pub upload_concurrency: usize,
}

mod defaults {
    pub fn request_timeout_secs() -> u64 {
        60
    }
    pub fn connect_timeout_secs() -> u64 {
        10
    }
    pub fn max_retries() -> u32 {
        5
    }
    pub fn retry_initial_ms() -> u64 {
        200
    }
    pub fn retry_max_ms() -> u64 {
        10_000
    }
    pub fn block_size_bytes() -> u64 {
        8 * 1024 * 1024
    }
    pub fn upload_concurrency() -> usize {
        4
    }
}

/// The SDK retry settings both Azure sections share: at most 20 retries,
/// an initial delay of at least 1 ms and no more than the maximum. Errors
/// as (field, message).
pub(crate) fn check_retries(
    max_retries: u32,
    initial_ms: u64,
    max_ms: u64,
) -> Result<(), (&'static str, &'static str)> {
    if max_retries > 20 {
        return Err(("max_retries", "must be at most 20"));
    }
    if initial_ms == 0 || max_ms < initial_ms {
        return Err((
            "retry_initial_ms",
            "must be at least 1 and at most retry_max_ms",
        ));
    }
    Ok(())
}

impl AzureBlobConfig {
    /// A section for `account_url` with `auth` and default tuning.
    pub fn new(account_url: impl Into<String>, auth: AzureAuthConfig) -> Self {
        AzureBlobConfig {
            account_url: account_url.into(),
            account_name: None,
            auth,
            request_timeout_secs: defaults::request_timeout_secs(),
            connect_timeout_secs: defaults::connect_timeout_secs(),
            max_retries: defaults::max_retries(),
            retry_initial_ms: defaults::retry_initial_ms(),
            retry_max_ms: defaults::retry_max_ms(),
            block_size_bytes: defaults::block_size_bytes(),
            upload_concurrency: defaults::upload_concurrency(),
        }
    }
}

/// How the service authenticates us.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AzureAuthConfig {
    /// Microsoft Entra ID tokens (`https://storage.azure.com/.default`).
    Entra {
        credential: EntraCredential,
        /// Client id of a user-assigned managed identity, or the workload
        /// identity's application (default: `AZURE_CLIENT_ID`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// The storage account key (base64), signed per request (Shared Key).
    AccountKey { key: SecretString },
    /// A shared access signature: a SAS URL of the account, or the bare token.
    Sas { sas: SecretString },
}

/// Which `azure_identity` credential obtains Entra tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntraCredential {
    /// `ManagedIdentityCredential` (App Service, VMs, Container Apps).
    ManagedIdentity,
    /// `WorkloadIdentityCredential` (AKS workload identity, from the
    /// `AZURE_TENANT_ID` / `AZURE_FEDERATED_TOKEN_FILE` environment).
    WorkloadIdentity,
    /// `DeveloperToolsCredential` (Azure CLI, then Azure Developer CLI).
    DeveloperTools,
}

/// The validated section: secrets resolved, URL parsed, ranges checked.
#[derive(Clone)]
pub struct AzureBlobSettings {
    /// The account URL without query and without a trailing slash.
    pub account_url: Url,
    pub account_name: String,
    pub auth: AzureAuth,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub block_size: u64,
    pub upload_concurrency: usize,
}

impl fmt::Debug for AzureBlobSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureBlobSettings")
            .field("account_url", &self.account_url.as_str())
            .field("account_name", &self.account_name)
            .field("auth", &self.auth)
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

/// Resolved authentication. `Debug` never shows a secret.
#[derive(Clone)]
pub enum AzureAuth {
    Entra {
        credential: EntraCredential,
        client_id: Option<String>,
    },
    AccountKey(Secret),
    /// The SAS query string (without `?`).
    Sas(Secret),
}

impl fmt::Debug for AzureAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AzureAuth::Entra {
                credential,
                client_id,
            } => f
                .debug_struct("Entra")
                .field("credential", credential)
                .field("client_id", client_id)
                .finish(),
            AzureAuth::AccountKey(_) => f.write_str("AccountKey(***)"),
            AzureAuth::Sas(_) => f.write_str("Sas(***)"),
        }
    }
}

impl AzureAuth {
    /// The kind, for logs and `describe()`.
    pub fn kind(&self) -> &'static str {
        match self {
            AzureAuth::Entra { .. } => "entra",
            AzureAuth::AccountKey(_) => "account_key",
            AzureAuth::Sas(_) => "sas",
        }
    }
}

/// A field of `[azure_blob]` or `[event_hubs]` that does not validate:
/// its path in the file and why (never a secret). `crate::config` turns it
/// into a `ConfigError::Field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct AzureConfigError {
    pub path: String,
    pub message: String,
}

fn field(path: &str, message: impl Into<String>) -> AzureConfigError {
    AzureConfigError {
        path: format!("azure_blob.{path}"),
        message: message.into(),
    }
}

impl AzureBlobConfig {
    /// Check the section and resolve its secrets. Errors name the field and
    /// never contain a secret.
    pub fn validate(&self) -> Result<AzureBlobSettings, AzureConfigError> {
        let account_url = parse_account_url(&self.account_url)?;
        let account_name = match &self.account_name {
            Some(name) if !name.is_empty() => name.clone(),
            Some(_) => return Err(field("account_name", "must not be empty")),
            None => account_name_from_url(&account_url).ok_or_else(|| {
                field(
                    "account_name",
                    "cannot be derived from account_url; set it explicitly",
                )
            })?,
        };
        let resolve = |secret: &SecretString, path: &str| {
            secret
                .resolve(&format!("azure_blob.auth.{path}"))
                .map_err(|e| AzureConfigError {
                    path: format!("azure_blob.auth.{path}"),
                    message: e.to_string(),
                })
        };
        let auth = match &self.auth {
            AzureAuthConfig::Entra {
                credential,
                client_id,
            } => {
                if account_url.scheme() != "https" {
                    return Err(field(
                        "account_url",
                        "Entra ID authentication needs an https URL",
                    ));
                }
                AzureAuth::Entra {
                    credential: *credential,
                    client_id: client_id.clone(),
                }
            }
            AzureAuthConfig::AccountKey { key } => {
                let key = resolve(key, "key")?;
                super::shared_key::SharedKeyPolicy::new(account_name.clone(), &key)
                    .map_err(|e| field("auth.key", e.to_string()))?;
                AzureAuth::AccountKey(key)
            }
            AzureAuthConfig::Sas { sas } => {
                let sas = resolve(sas, "sas")?;
                AzureAuth::Sas(sas_query(&sas, &account_url)?)
            }
        };
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err(field("request_timeout_secs", "must be 1..=3600"));
        }
        if !(1..=600).contains(&self.connect_timeout_secs) {
            return Err(field("connect_timeout_secs", "must be 1..=600"));
        }
        check_retries(self.max_retries, self.retry_initial_ms, self.retry_max_ms)
            .map_err(|(path, message)| field(path, message))?;
        // Azure's limits: blocks of up to 4000 MiB; 64 KiB keeps block lists short.
        if !(64 * 1024..=4000 * 1024 * 1024).contains(&self.block_size_bytes) {
            return Err(field("block_size_bytes", "must be 64 KiB..=4000 MiB"));
        }
        if !(1..=64).contains(&self.upload_concurrency) {
            return Err(field("upload_concurrency", "must be 1..=64"));
        }
        Ok(AzureBlobSettings {
            account_url,
            account_name,
            auth,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
            max_retries: self.max_retries,
            retry_initial: Duration::from_millis(self.retry_initial_ms),
            retry_max: Duration::from_millis(self.retry_max_ms),
            block_size: self.block_size_bytes,
            upload_concurrency: self.upload_concurrency,
        })
    }
}

/// Parse the account URL: http(s), no query or fragment, trailing slash
/// removed (container paths are appended segment by segment).
fn parse_account_url(text: &str) -> Result<Url, AzureConfigError> {
    let mut url =
        Url::parse(text.trim()).map_err(|e| field("account_url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(field("account_url", "must be http or https"));
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err(field("account_url", "must be an absolute URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(field(
            "account_url",
            "must not have a query (put a SAS in auth.sas)",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(field("account_url", "must not contain credentials"));
    }
    let trimmed = url.path().trim_end_matches('/').to_string();
    url.set_path(&trimmed);
    Ok(url)
}

/// `myaccount` from `https://myaccount.blob.core.windows.net`, or
/// `devstoreaccount1` from `http://127.0.0.1:10000/devstoreaccount1`.
pub fn account_name_from_url(url: &Url) -> Option<String> {
    let host = url.host_str()?;
    let ip_style = url
        .host()
        .is_some_and(|h| !matches!(h, url::Host::Domain(_)))
        || host.eq_ignore_ascii_case("localhost")
        || !host.contains('.');
    let name = if ip_style {
        url.path_segments()?.find(|s| !s.is_empty())?.to_string()
    } else {
        host.split('.').next()?.to_string()
    };
    (!name.is_empty()).then_some(name)
}

/// The SAS query string from a SAS URL of this account or a bare token.
fn sas_query(sas: &Secret, account_url: &Url) -> Result<Secret, AzureConfigError> {
    let text = sas.expose().trim();
    let query = if text.starts_with("http://") || text.starts_with("https://") {
        // Never echo the URL: its query is the secret.
        let url = Url::parse(text).map_err(|_| field("auth.sas", "is not a valid SAS URL"))?;
        let same_account = url.scheme() == account_url.scheme()
            && url.host_str() == account_url.host_str()
            && url.port_or_known_default() == account_url.port_or_known_default()
            && url.path().trim_end_matches('/') == account_url.path().trim_end_matches('/');
        if !same_account {
            return Err(field(
                "auth.sas",
                format!(
                    "the SAS URL is not for account_url {} (scheme, host and path must match)",
                    account_url
                ),
            ));
        }
        url.query().unwrap_or_default().to_string()
    } else {
        text.trim_start_matches('?').to_string()
    };
    if !query.split('&').any(|pair| pair.starts_with("sig=")) {
        return Err(field("auth.sas", "has no signature (sig=...)"));
    }
    SecretString::literal(query)
        .resolve("azure_blob.auth.sas")
        .map_err(|e| field("auth.sas", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    fn parse(text: &str) -> Result<AzureBlobConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn parses_each_auth_kind() {
        let c = parse(
            "account_url = \"https://acct.blob.core.windows.net/\"\n\
             [auth]\nkind = \"entra\"\ncredential = \"managed_identity\"\nclient_id = \"abc\"\n",
        )
        .unwrap();
        let s = c.validate().unwrap();
        // A URL with no path always shows "/"; container paths replace it.
        assert_eq!(
            s.account_url.as_str(),
            "https://acct.blob.core.windows.net/"
        );
        assert_eq!(s.account_name, "acct");
        assert_eq!(s.auth.kind(), "entra");
        assert_eq!(s.max_retries, 5);

        let c = parse(&format!(
            "account_url = \"http://127.0.0.1:10000/devstoreaccount1\"\n\
             [auth]\nkind = \"account_key\"\nkey = \"{DEV_KEY}\"\n"
        ))
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(s.account_name, "devstoreaccount1");
        assert_eq!(s.account_url.path(), "/devstoreaccount1");
        assert!(matches!(s.auth, AzureAuth::AccountKey(_)));

        let c = parse(
            "account_url = \"https://acct.blob.core.windows.net\"\n\
             [auth]\nkind = \"sas\"\nsas = \"https://acct.blob.core.windows.net/?sv=2024-01-01&sig=abc%2B\"\n",
        )
        .unwrap();
        match c.validate().unwrap().auth {
            AzureAuth::Sas(q) => assert_eq!(q.expose(), "sv=2024-01-01&sig=abc%2B"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_bad_sections_by_field() {
        assert!(parse("account_url = \"x\"\n[auth]\nkind = \"password\"\n").is_err());
        assert!(
            parse("account_url = \"x\"\nextra = 1\n[auth]\nkind = \"sas\"\nsas = \"s\"\n").is_err()
        );
        let err = parse(
            "account_url = \"http://acct.example\"\n[auth]\nkind = \"entra\"\ncredential = \"developer_tools\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("azure_blob.account_url"), "{err}");
        let err = parse(
            "account_url = \"https://acct.blob.core.windows.net\"\n[auth]\nkind = \"account_key\"\nkey = \"%%%\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("azure_blob.auth.key"), "{err}");
        assert!(!err.contains("%%%"), "{err}");
        let err = parse(
            "account_url = \"https://acct.blob.core.windows.net\"\n[auth]\nkind = \"sas\"\nsas = \"https://other.blob.core.windows.net/?sig=SECRETSIG\"\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("azure_blob.auth.sas"), "{err}");
        assert!(!err.contains("SECRETSIG"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let config = AzureBlobConfig::new(
            "http://127.0.0.1:10000/devstoreaccount1",
            AzureAuthConfig::AccountKey {
                key: SecretString::literal(DEV_KEY),
            },
        );
        assert!(!format!("{config:?}").contains("Eby8"));
        assert!(!toml::to_string(&config).unwrap().contains("Eby8"));
        let settings = config.validate().unwrap();
        assert!(!format!("{settings:?}").contains("Eby8"));
        let sas = AzureBlobConfig::new(
            "http://127.0.0.1:10000/devstoreaccount1",
            AzureAuthConfig::Sas {
                sas: SecretString::literal("sv=1&sig=SECRETSIG"),
            },
        )
        .validate()
        .unwrap();
        assert!(!format!("{sas:?}").contains("SECRETSIG"));
    }
}
