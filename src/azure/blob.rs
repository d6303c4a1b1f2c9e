//! [`AzureBlobStore`]: the [`BlobStore`] port on Azure Blob Storage
//! (`azure_storage_blob` 1.x), interchangeable with the filesystem store.
//!
//! - Conditional puts map to `If-None-Match: *` and `If-Match: <etag>`; the
//!   service's 409 `BlobAlreadyExists` and 412 `ConditionNotMet` become
//!   [`BlobError::AlreadyExists`] and [`BlobError::PreconditionFailed`]. An
//!   `If-Match` put of a missing blob (404) is a precondition failure too, as
//!   in the filesystem store. A conditional put whose response was lost and
//!   that the SDK retried reports a conflict although it was written: callers
//!   re-read on conflict (the state records do), which covers it.
//! - Puts above `block_size` are staged blocks uploaded in parallel and
//!   committed with one block list that carries the condition (the SDK's
//!   partitioned upload); smaller ones are a single `Put Blob`.
//! - Gets are the SDK's partitioned download (ranges pinned to the first
//!   response's etag); `get_range` clamps to the blob's size like the port
//!   says (the service answers 416 past the end).
//! - Listing pages through `List Blobs` by prefix (`NextMarker`) and sorts by
//!   name.
//! - ETags are the service's, quotes included, passed back verbatim.
//!
//! Every request goes through one pipeline configuration: our reqwest client
//! (connect/read/total timeouts, no redirects, no decompression), the SDK's
//! exponential retry of 408/429/5xx and I/O errors, then per try the auth
//! policy ([`SharedKeyPolicy`] for an account key, the SDK's bearer-token
//! policy for Entra ID; a SAS is the URL's query). URLs are built here, one
//! path segment per `/`-separated part of the blob name, so the signed path
//! is the path sent.
//!
//! Errors name the container and blob and never contain a secret: messages
//! are built from status and error code, and any `sig=` in a transport
//! error's text is redacted.

use std::num::NonZero;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core::http::policies::Policy;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::{
    ClientOptions, Etag, ExponentialRetryOptions, NoFormat, RequestContent, RetryOptions,
    StatusCode, Transport, Url,
};
use azure_storage_blob::models::{
    BlobClientDeleteOptions, BlobClientDownloadOptions, BlobClientGetPropertiesResultHeaders,
    BlobContainerClientListBlobsOptions, BlockBlobClientUploadOptions,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use bytes::Bytes;
use futures::TryStreamExt;
use hubflow_actors::ports::{
    BlobError, BlobProperties, BlobStore, ETag, PutCondition, validate_blob_name,
};
use tracing::{debug, warn};

use super::config::{AzureAuth, AzureBlobSettings, EntraCredential};
use super::shared_key::SharedKeyPolicy;
use crate::source::Secret;

/// The scope of Entra ID tokens for Azure Storage.
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Blobs per `List Blobs` page (the service's maximum).
const LIST_PAGE_SIZE: u32 = 5000;

/// A blob store on one Azure Storage account. Cheap to clone.
#[derive(Clone)]
pub struct AzureBlobStore {
    account_url: Url,
    auth_kind: &'static str,
    /// The SAS query string appended to every URL, with SAS auth.
    sas: Option<Secret>,
    client_options: ClientOptions,
    block_size: NonZero<u64>,
    concurrency: NonZero<usize>,
    list_page_size: u32,
}

impl std::fmt::Debug for AzureBlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureBlobStore")
            .field("account_url", &self.account_url.as_str())
            .field("auth", &self.auth_kind)
            .field("block_size", &self.block_size)
            .finish_non_exhaustive()
    }
}

impl AzureBlobStore {
    /// A store for the validated `[azure_blob]` settings. Makes no request.
    pub fn new(settings: &AzureBlobSettings) -> anyhow::Result<AzureBlobStore> {
        use anyhow::Context;
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.request_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Ranged (partitioned) downloads need the stored bytes as they are.
            .no_gzip()
            .no_deflate()
            .build()
            .context("building the http client for azure blob storage")?;
        let mut client_options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            retry: RetryOptions::exponential(ExponentialRetryOptions {
                initial_delay: to_time(settings.retry_initial),
                max_retries: settings.max_retries,
                max_total_elapsed: to_time(
                    settings.request_timeout * (settings.max_retries + 1)
                        + settings.retry_max * settings.max_retries,
                ),
                max_delay: to_time(settings.retry_max),
            }),
            ..ClientOptions::default()
        };
        let mut sas = None;
        match &settings.auth {
            AzureAuth::AccountKey(key) => {
                let policy = SharedKeyPolicy::new(settings.account_name.clone(), key)
                    .context("the storage account key")?;
                client_options
                    .per_try_policies
                    .push(Arc::new(policy) as Arc<dyn Policy>);
            }
            AzureAuth::Entra {
                credential,
                client_id,
            } => {
                let credential = entra_credential(*credential, client_id.clone())
                    .context("creating the entra id credential")?;
                // One policy, shared by every client: one token cache.
                client_options
                    .per_try_policies
                    .push(Arc::new(BearerTokenAuthorizationPolicy::new(
                        credential,
                        [STORAGE_SCOPE],
                    )) as Arc<dyn Policy>);
            }
            AzureAuth::Sas(query) => sas = Some(query.clone()),
        }
        let block_size =
            NonZero::new(settings.block_size).context("block size must be positive")?;
        let concurrency = NonZero::new(settings.upload_concurrency)
            .context("upload concurrency must be positive")?;
        Ok(AzureBlobStore {
            account_url: settings.account_url.clone(),
            auth_kind: settings.auth.kind(),
            sas,
            client_options,
            block_size,
            concurrency,
            list_page_size: LIST_PAGE_SIZE,
        })
    }

    /// Use `size` blobs per listing page (tests use a tiny one to exercise
    /// paging).
    pub fn with_list_page_size(mut self, size: u32) -> Self {
        self.list_page_size = size.clamp(1, LIST_PAGE_SIZE);
        self
    }

    /// The account URL (never carries a secret).
    pub fn account_url(&self) -> &Url {
        &self.account_url
    }

    /// Whether `container` exists.
    pub async fn container_exists(&self, container: &str) -> Result<bool, BlobError> {
        validate_container(container)?;
        let started = Instant::now();
        let result = self.container_client(container)?.exists().await;
        observe("container_exists", started, result.is_ok());
        result.map_err(|e| map_error(e, container, ""))
    }

    fn url(&self, container: &str, name: Option<&str>) -> Result<Url, BlobError> {
        let mut url = self.account_url.clone();
        {
            let mut segments = url.path_segments_mut().map_err(|()| BlobError::Other {
                container: container.to_string(),
                name: name.unwrap_or_default().to_string(),
                message: "the account url cannot take a path".to_string(),
            })?;
            segments.pop_if_empty().push(container);
            if let Some(name) = name {
                segments.extend(name.split('/'));
            }
        }
        if let Some(sas) = &self.sas {
            url.set_query(Some(sas.expose()));
        }
        Ok(url)
    }

    fn container_client(&self, container: &str) -> Result<BlobContainerClient, BlobError> {
        let url = self.url(container, None)?;
        let options = BlobContainerClientOptions {
            client_options: self.client_options.clone(),
            ..Default::default()
        };
        BlobContainerClient::new(url, None, Some(options)).map_err(|e| map_error(e, container, ""))
    }

    fn blob_client(&self, container: &str, name: &str) -> Result<BlobClient, BlobError> {
        let url = self.url(container, Some(name))?;
        let options = BlobClientOptions {
            client_options: self.client_options.clone(),
            ..Default::default()
        };
        BlobClient::new(url, None, Some(options)).map_err(|e| map_error(e, container, name))
    }

    fn download_options(&self) -> BlobClientDownloadOptions<'static> {
        BlobClientDownloadOptions {
            parallel: Some(self.concurrency),
            partition_size: NonZero::new(
                usize::try_from(self.block_size.get()).unwrap_or(usize::MAX),
            ),
            ..Default::default()
        }
    }

    async fn put_inner(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        condition: &PutCondition,
    ) -> Result<BlobProperties, BlobError> {
        let size = data.len() as u64;
        let client = self.blob_client(container, name)?;
        let mut options = BlockBlobClientUploadOptions {
            partition_size: Some(self.block_size),
            parallel: Some(self.concurrency),
            ..Default::default()
        };
        match condition {
            PutCondition::None => {}
            PutCondition::IfNoneMatch => options.if_none_match = Some(Etag::from("*")),
            PutCondition::IfMatch(etag) => options.if_match = Some(Etag::from(etag.0.clone())),
        }
        let content: RequestContent<Bytes, NoFormat> = data.into();
        let result = client
            .block_blob_client()
            .upload(content, Some(options))
            .await
            .map_err(|e| map_put_error(e, container, name, condition))?;
        let etag = result.etag.ok_or_else(|| BlobError::Other {
            container: container.to_string(),
            name: name.to_string(),
            message: "the service returned no etag for a put".to_string(),
        })?;
        metrics::counter!("hubflow_azblob_put_bytes_total").increment(size);
        Ok(BlobProperties {
            name: name.to_string(),
            etag: port_etag(&etag),
            size,
            last_modified_ms: result.last_modified.map_or_else(now_ms, to_ms),
        })
    }

    async fn get_inner(
        &self,
        container: &str,
        name: &str,
    ) -> Result<(Bytes, BlobProperties), BlobError> {
        let client = self.blob_client(container, name)?;
        let result = client
            .download(Some(self.download_options()))
            .await
            .map_err(|e| map_error(e, container, name))?;
        let etag = result.properties.etag.clone();
        let last_modified = result.properties.last_modified;
        let bytes = result
            .body
            .collect()
            .await
            .map_err(|e| map_error(e, container, name))?;
        let etag = etag.ok_or_else(|| BlobError::Other {
            container: container.to_string(),
            name: name.to_string(),
            message: "the service returned no etag for a get".to_string(),
        })?;
        metrics::counter!("hubflow_azblob_get_bytes_total").increment(bytes.len() as u64);
        let props = BlobProperties {
            name: name.to_string(),
            etag: port_etag(&etag),
            size: bytes.len() as u64,
            last_modified_ms: last_modified.map_or(0, to_ms),
        };
        Ok((bytes, props))
    }

    async fn get_range_inner(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        if range.start >= range.end {
            // Nothing to read; the blob must still exist.
            self.properties_inner(container, name).await?;
            return Ok(Bytes::new());
        }
        let client = self.blob_client(container, name)?;
        let mut options = self.download_options();
        options.range = Some(range.into());
        let result = match client.download(Some(options)).await {
            Ok(result) => result,
            Err(e) if e.http_status() == Some(StatusCode::RequestedRangeNotSatisfiable) => {
                // Past the end: clamped to nothing, if the blob exists.
                self.properties_inner(container, name).await?;
                return Ok(Bytes::new());
            }
            Err(e) => return Err(map_error(e, container, name)),
        };
        let bytes = result
            .body
            .collect()
            .await
            .map_err(|e| map_error(e, container, name))?;
        metrics::counter!("hubflow_azblob_get_bytes_total").increment(bytes.len() as u64);
        Ok(bytes)
    }

    async fn properties_inner(
        &self,
        container: &str,
        name: &str,
    ) -> Result<BlobProperties, BlobError> {
        let client = self.blob_client(container, name)?;
        let response = client
            .get_properties(None)
            .await
            .map_err(|e| map_error(e, container, name))?;
        let header_error = |what: &str, e: azure_core::Error| BlobError::Other {
            container: container.to_string(),
            name: name.to_string(),
            message: format!("cannot read the {what} header: {}", describe(&e)),
        };
        let etag = response
            .etag()
            .map_err(|e| header_error("etag", e))?
            .ok_or_else(|| BlobError::Other {
                container: container.to_string(),
                name: name.to_string(),
                message: "the service returned no etag".to_string(),
            })?;
        let size = response
            .content_length()
            .map_err(|e| header_error("content-length", e))?
            .unwrap_or(0);
        let last_modified = response
            .last_modified()
            .map_err(|e| header_error("last-modified", e))?;
        Ok(BlobProperties {
            name: name.to_string(),
            etag: port_etag(&etag),
            size,
            last_modified_ms: last_modified.map_or(0, to_ms),
        })
    }

    async fn list_inner(
        &self,
        container: &str,
        prefix: &str,
    ) -> Result<Vec<BlobProperties>, BlobError> {
        let client = self.container_client(container)?;
        let options = BlobContainerClientListBlobsOptions {
            prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
            maxresults: Some(i32::try_from(self.list_page_size).unwrap_or(i32::MAX)),
            ..Default::default()
        };
        let mut pager = client
            .list_blobs(Some(options))
            .map_err(|e| map_error(e, container, prefix))?;
        let mut out = Vec::new();
        while let Some(item) = pager
            .try_next()
            .await
            .map_err(|e| map_error(e, container, prefix))?
        {
            let Some(name) = item.name else {
                warn!(container, prefix, "listing returned a blob without a name");
                continue;
            };
            let Some(props) = item.properties else {
                warn!(container, blob = %name, "listing returned a blob without properties");
                continue;
            };
            let Some(etag) = props.etag else {
                warn!(container, blob = %name, "listing returned a blob without an etag");
                continue;
            };
            out.push(BlobProperties {
                etag: port_etag(&etag),
                size: props.content_length.unwrap_or(0),
                last_modified_ms: props.last_modified.map_or(0, to_ms),
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_inner(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError> {
        let client = self.blob_client(container, name)?;
        let options = BlobClientDeleteOptions {
            if_match: if_match.map(|e| Etag::from(e.0.clone())),
            ..Default::default()
        };
        client
            .delete(Some(options))
            .await
            .map_err(|e| map_error(e, container, name))?;
        Ok(())
    }

    async fn create_container_inner(&self, container: &str) -> Result<(), BlobError> {
        match self.container_client(container)?.create(None).await {
            Ok(_) => {
                debug!(container, "created container");
                Ok(())
            }
            Err(e) if error_code(&e) == Some("ContainerAlreadyExists") => Ok(()),
            Err(e) => Err(map_error(e, container, "")),
        }
    }
}

#[async_trait]
impl BlobStore for AzureBlobStore {
    fn describe(&self) -> String {
        format!(
            "azure blob storage at {} (auth {})",
            self.account_url, self.auth_kind
        )
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        validate_container(container)?;
        let started = Instant::now();
        let result = self.create_container_inner(container).await;
        observe("create_container", started, result.is_ok());
        result
    }

    async fn put(
        &self,
        container: &str,
        name: &str,
        data: Bytes,
        condition: PutCondition,
    ) -> Result<BlobProperties, BlobError> {
        validate_container(container)?;
        validate_blob_name(name)?;
        let started = Instant::now();
        let result = self.put_inner(container, name, data, &condition).await;
        observe("put", started, outcome(&result));
        log_failure("put", container, name, &result);
        result
    }

    async fn get(&self, container: &str, name: &str) -> Result<(Bytes, BlobProperties), BlobError> {
        validate_container(container)?;
        validate_blob_name(name)?;
        let started = Instant::now();
        let result = self.get_inner(container, name).await;
        observe("get", started, outcome(&result));
        log_failure("get", container, name, &result);
        result
    }

    async fn get_range(
        &self,
        container: &str,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, BlobError> {
        validate_container(container)?;
        validate_blob_name(name)?;
        let started = Instant::now();
        let result = self.get_range_inner(container, name, range).await;
        observe("get_range", started, outcome(&result));
        log_failure("get_range", container, name, &result);
        result
    }

    async fn properties(&self, container: &str, name: &str) -> Result<BlobProperties, BlobError> {
        validate_container(container)?;
        validate_blob_name(name)?;
        let started = Instant::now();
        let result = self.properties_inner(container, name).await;
        observe("properties", started, outcome(&result));
        log_failure("properties", container, name, &result);
        result
    }

    async fn list(&self, container: &str, prefix: &str) -> Result<Vec<BlobProperties>, BlobError> {
        validate_container(container)?;
        let started = Instant::now();
        let result = self.list_inner(container, prefix).await;
        observe("list", started, outcome(&result));
        log_failure("list", container, prefix, &result);
        result
    }

    async fn delete(
        &self,
        container: &str,
        name: &str,
        if_match: Option<&ETag>,
    ) -> Result<(), BlobError> {
        validate_container(container)?;
        validate_blob_name(name)?;
        let started = Instant::now();
        let result = self.delete_inner(container, name, if_match).await;
        observe("delete", started, outcome(&result));
        log_failure("delete", container, name, &result);
        result
    }
}

/// The `azure_identity` credential for `credential` (shared with the Event
/// Hubs adapter).
pub(crate) fn entra_credential(
    credential: EntraCredential,
    client_id: Option<String>,
) -> azure_core::Result<Arc<dyn azure_core::credentials::TokenCredential>> {
    use azure_identity::{
        DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
        UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
    };
    Ok(match credential {
        EntraCredential::ManagedIdentity => {
            ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.map(UserAssignedId::ClientId),
                ..Default::default()
            }))?
        }
        EntraCredential::WorkloadIdentity => {
            WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                client_id,
                ..Default::default()
            }))?
        }
        EntraCredential::DeveloperTools => DeveloperToolsCredential::new(None)?,
    })
}

/// Azure container names: 3-63 of lowercase letters, digits and single
/// dashes, starting and ending with a letter or digit.
fn validate_container(container: &str) -> Result<(), BlobError> {
    let ok = (3..=63).contains(&container.len())
        && container
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !container.starts_with('-')
        && !container.ends_with('-')
        && !container.contains("--");
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidName {
            name: container.to_string(),
            reason: "container names are 3-63 lowercase letters, digits and single '-'".to_string(),
        })
    }
}

fn error_code(error: &azure_core::Error) -> Option<&str> {
    match error.kind() {
        ErrorKind::HttpResponse { error_code, .. } => error_code.as_deref(),
        _ => None,
    }
}

/// A message for an SDK error: status and service error code for HTTP
/// errors, the cause chain otherwise; `sig=` values redacted.
fn describe(error: &azure_core::Error) -> String {
    let text = match error.kind() {
        ErrorKind::HttpResponse {
            status, error_code, ..
        } => format!(
            "http {} {}",
            u16::from(*status),
            error_code.as_deref().unwrap_or("(no error code)")
        ),
        kind => {
            let mut text = format!("{kind}: {error}");
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    };
    redact_sas(&text)
}

/// Replace the value of every `sig=` parameter in `text` with `***`.
pub fn redact_sas(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        out.push_str("***");
        let after = &rest[at + 4..];
        let end = after
            .find(['&', ' ', ')', '"', '\'', '\n', '>', ','])
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn map_error(error: azure_core::Error, container: &str, name: &str) -> BlobError {
    let container = container.to_string();
    let name = name.to_string();
    let status = error.http_status();
    let code = error_code(&error);
    match (status, code) {
        (Some(StatusCode::NotFound), Some("ContainerNotFound")) => {
            BlobError::ContainerNotFound { container }
        }
        (Some(StatusCode::NotFound), _) => BlobError::NotFound { container, name },
        (Some(StatusCode::PreconditionFailed), _) => {
            conflict_metric("precondition_failed");
            BlobError::PreconditionFailed { container, name }
        }
        (Some(StatusCode::Conflict), Some("BlobAlreadyExists")) => {
            conflict_metric("already_exists");
            BlobError::AlreadyExists { container, name }
        }
        _ if is_transient(&error) => BlobError::Transient {
            container,
            name,
            message: describe(&error),
        },
        _ => BlobError::Other {
            container,
            name,
            message: describe(&error),
        },
    }
}

/// Put errors, read in the light of the put's condition.
fn map_put_error(
    error: azure_core::Error,
    container: &str,
    name: &str,
    condition: &PutCondition,
) -> BlobError {
    let status = error.http_status();
    let code = error_code(&error);
    match (condition, status, code) {
        (_, Some(StatusCode::NotFound), Some("ContainerNotFound")) => {
            map_error(error, container, name)
        }
        (
            PutCondition::IfNoneMatch,
            Some(StatusCode::Conflict | StatusCode::PreconditionFailed),
            _,
        ) => {
            conflict_metric("already_exists");
            BlobError::AlreadyExists {
                container: container.to_string(),
                name: name.to_string(),
            }
        }
        (
            PutCondition::IfMatch(_),
            Some(StatusCode::NotFound | StatusCode::PreconditionFailed),
            _,
        ) => {
            conflict_metric("precondition_failed");
            BlobError::PreconditionFailed {
                container: container.to_string(),
                name: name.to_string(),
            }
        }
        _ => map_error(error, container, name),
    }
}

fn is_transient(error: &azure_core::Error) -> bool {
    match error.kind() {
        ErrorKind::HttpResponse { status, .. } => {
            matches!(u16::from(*status), 408 | 429 | 500 | 502 | 503 | 504)
        }
        ErrorKind::Connection | ErrorKind::Io => true,
        _ => false,
    }
}

fn conflict_metric(kind: &'static str) {
    metrics::counter!("hubflow_azblob_conflicts_total", "kind" => kind).increment(1);
}

fn outcome<T>(result: &Result<T, BlobError>) -> bool {
    match result {
        Ok(_) => true,
        // Expected answers, not failures of the request.
        Err(e) => e.is_not_found() || e.is_conflict(),
    }
}

fn observe(op: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("hubflow_azblob_requests_total", "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("hubflow_azblob_request_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
}

fn log_failure<T>(op: &'static str, container: &str, name: &str, result: &Result<T, BlobError>) {
    if let Err(error) = result
        && matches!(error, BlobError::Transient { .. } | BlobError::Other { .. })
    {
        warn!(op, container, blob = name, %error, "azure blob request failed");
    }
}

/// The etag as response headers carry it, quoted. Listings return it
/// unquoted; the port needs one form so etags compare equal.
fn port_etag(etag: &Etag) -> ETag {
    let text = etag.to_string();
    if text.starts_with('"') || text.starts_with("W/") {
        ETag(text)
    } else {
        ETag(format!("\"{text}\""))
    }
}

fn to_time(d: std::time::Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

fn to_ms(t: azure_core::time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_sas_signatures() {
        let text = "error sending request for url (http://h/c/b?sv=2024&sig=abc%2Bdef&se=x)";
        let got = redact_sas(text);
        assert!(!got.contains("abc%2Bdef"), "{got}");
        assert!(got.contains("sig=***&se=x"), "{got}");
        assert_eq!(redact_sas("sig=zzz"), "sig=***");
        assert_eq!(redact_sas("nothing here"), "nothing here");
    }

    /// A transport that answers 503 to the first request and 201 after,
    /// recording every request it sees.
    #[derive(Debug, Default)]
    struct FlakyTransport {
        seen: std::sync::Mutex<Vec<azure_core::http::Request>>,
    }

    #[async_trait]
    impl azure_core::http::HttpClient for FlakyTransport {
        async fn execute_request(
            &self,
            request: &azure_core::http::Request,
        ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
            let mut seen = self.seen.lock().unwrap();
            seen.push(request.clone());
            let status = if seen.len() == 1 {
                StatusCode::ServiceUnavailable
            } else {
                StatusCode::Created
            };
            Ok(azure_core::http::AsyncRawResponse::from_bytes(
                status,
                azure_core::http::headers::Headers::new(),
                Bytes::new(),
            ))
        }
    }

    #[tokio::test]
    async fn every_retry_is_signed_afresh() {
        use crate::source::SecretString;
        let key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
        let config = super::super::config::AzureBlobConfig {
            retry_initial_ms: 1,
            retry_max_ms: 2,
            ..super::super::config::AzureBlobConfig::new(
                "http://127.0.0.1:1/devstoreaccount1",
                super::super::config::AzureAuthConfig::AccountKey {
                    key: SecretString::literal(key),
                },
            )
        };
        let mut store = AzureBlobStore::new(&config.validate().unwrap()).unwrap();
        let transport = Arc::new(FlakyTransport::default());
        store.client_options.transport = Some(Transport::new(transport.clone()));
        store.create_container("retried").await.unwrap();

        let seen = transport.seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one 503, then a retry");
        let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key).unwrap();
        for request in seen.iter() {
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), v.as_str().to_string()))
                .collect();
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("no {name} header"))
            };
            assert!(!header("x-ms-date").is_empty());
            // The signature covers this attempt's own headers (date included).
            let to_sign = super::super::shared_key::string_to_sign(
                "devstoreaccount1",
                request.method().as_str(),
                request.url(),
                &headers,
                request.body().len(),
            );
            let want = format!(
                "SharedKey devstoreaccount1:{}",
                super::super::shared_key::hmac_sha256_base64(&key, &to_sign)
            );
            assert_eq!(header("authorization"), want);
        }
    }

    #[test]
    fn etags_are_quoted_like_headers() {
        assert_eq!(port_etag(&Etag::from("0x8D1")).0, "\"0x8D1\"");
        assert_eq!(port_etag(&Etag::from("\"0x8D1\"")).0, "\"0x8D1\"");
    }

    #[test]
    fn container_names_follow_azure_rules() {
        assert!(validate_container("raw").is_ok());
        assert!(validate_container("dead-letters").is_ok());
        assert!(validate_container("ab").is_err());
        assert!(validate_container("Raw").is_err());
        assert!(validate_container("a--b").is_err());
        assert!(validate_container("-ab").is_err());
    }
}
