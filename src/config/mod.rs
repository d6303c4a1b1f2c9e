//! Configuration: the TOML wire format ([`Config`], every field documented,
//! unknown fields refused) and its validated form ([`Settings`]) that the
//! topology is built from.
//!
//! Sources of values, later wins: built-in defaults, the TOML file,
//! environment variables `HUBFLOW__<SECTION>__<FIELD>` (for example
//! `HUBFLOW__BATCH__MAX_RECORDS=5000`; values are parsed as TOML scalars,
//! falling back to strings). Errors name the field path
//! (`batch.max_records: invalid type ...`).
//!
//! Layout: this file holds the file's sections and [`Settings`]; the
//! sections with more to check live beside it ([`admin`], [`cluster`]) or
//! with the adapter they configure (`crate::azure::config`,
//! `crate::azure::eventhubs::config`, `crate::source::config`). Each section
//! is validated once, in [`Config::validate`]; [`Settings`] holds only
//! validated sections, never the raw file. Nothing this module imports
//! imports it back.

pub mod admin;
pub mod cluster;
pub mod sql;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hubflow_actors::consumer::BatchLimits;
use hubflow_actors::formats::curated::CurateOptions;
use serde::{Deserialize, Serialize};

use crate::azure::{AzureBlobSettings, EventHubsSettings};
use crate::demo::{DemoConfig, FaultConfig};
use crate::source::{HttpSourceConfig, HttpSourceSettings};

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "HUBFLOW__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: not valid TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error("{origin}: {path}: {message}")]
    Field {
        origin: String,
        path: String,
        message: String,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub pipeline: PipelineConfig,
    pub hub: HubConfig,
    pub storage: StorageConfig,
    pub batch: BatchConfig,
    pub fetcher: FetcherConfig,
    pub transform: TransformConfig,
    pub supervision: SupervisionConfig,
    /// The built-in demo API, started on loopback when `sources` is empty.
    pub demo: DemoSection,
    /// HTTP GET sources; each gets one fetcher.
    pub sources: Vec<HttpSourceConfig>,
    /// Azure Blob Storage as the blob store (absent: the embedded filesystem
    /// store). See `crate::azure::config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_blob: Option<crate::azure::AzureBlobConfig>,
    /// Azure Event Hubs as the "ingest" and "landed" hubs (absent: the
    /// embedded hub). See `crate::azure::eventhubs::config`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_hubs: Option<crate::azure::EventHubsConfig>,
    /// Several nodes sharing the hub and the blob store (see `crate::cluster`).
    pub cluster: cluster::ClusterConfig,
    /// The admin port (see `crate::admin`): listen address, token, deadlines.
    pub admin: admin::AdminConfig,
    /// The SQL server for data scientists (see `crate::sql`).
    pub sql: sql::SqlConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Where the embedded hub and the filesystem blob store live.
    pub data_dir: PathBuf,
    /// Checkpoint namespace (the Event Hubs namespace in production).
    pub namespace: String,
    /// Consumer group the partition consumers read "ingest" with.
    pub consumer_group: String,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            data_dir: PathBuf::from("hubflow-data"),
            namespace: "local".to_string(),
            consumer_group: "$Default".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// Partitions of hub "ingest" (and of "landed").
    pub partitions: u32,
    /// Events older than this are pruned from the embedded hub (hours).
    pub retention_hours: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            partitions: 4,
            retention_hours: 24 * 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub raw_container: String,
    pub curated_container: String,
    pub state_container: String,
    pub dead_letter_container: String,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            raw_container: "raw".to_string(),
            curated_container: "curated".to_string(),
            state_container: "state".to_string(),
            dead_letter_container: "dead-letters".to_string(),
        }
    }
}

/// When a partition-consumer cuts a raw blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub max_age_ms: u64,
    /// Cut a batch once nothing more arrived for this long (the partition
    /// caught up), so the tail of a load or a quiet source is not held for
    /// `max_age_ms`.
    pub idle_ms: u64,
    /// zstd level of raw blobs (1..=22).
    pub zstd_level: i32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 10_000,
            max_bytes: 8 * 1024 * 1024,
            max_age_ms: 2_000,
            idle_ms: 100,
            zstd_level: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetcherConfig {
    /// Wait between polls once a source is caught up.
    pub poll_interval_ms: u64,
    /// Events per hub publish call.
    pub max_publish_events: usize,
    /// Pages requested ahead of the publishes (1..=256); the pages ready
    /// when a publish starts are made durable together.
    pub read_ahead_pages: usize,
    /// First retry delay after a transient source error; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// How long the page log (which request fetched which records, for
    /// `hubflow ctl trace`) is kept, in hours (0..=8760); 0 keeps none.
    pub page_log_retention_hours: u64,
}

impl Default for FetcherConfig {
    fn default() -> Self {
        FetcherConfig {
            poll_interval_ms: 2_000,
            max_publish_events: 500,
            read_ahead_pages: hubflow_actors::fetcher::READ_AHEAD_PAGES,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            page_log_retention_hours: 168,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransformConfig {
    /// (id, payload) keys remembered per partition to drop duplicates.
    pub dedupe_window: usize,
    /// How often the raw chain is walked without a notification.
    pub poll_ms: u64,
    /// Who announces landed raw blobs on hub "landed": the blob-writers
    /// (`writer`), or Azure Event Grid BlobCreated events delivered to that
    /// hub (`event_grid`; the writers then publish nothing). Either way a
    /// listener per landed partition routes them to the right transformer.
    pub notices: LandedNotices,
    /// zstd level of curated Parquet.
    pub zstd_level: i32,
    pub max_row_group_rows: usize,
    /// Version label of the transformation spec started with.
    pub version: String,
    /// `SELECT … FROM batch` applied to each curated batch (see
    /// [`crate::transform`]); absent: the identity transform.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// `version` and `sql` are only the first version: once the spec log
    /// (`specs/transform` in the state container) exists, every node runs
    /// its version. `true` forces the file's spec over it as a new version
    /// (logged; also the repair of a corrupt log).
    pub override_stored: bool,
    /// How often each node reads the spec log to follow swaps made on other
    /// nodes (ms).
    pub sync_ms: u64,
}

/// Who publishes the "landed" notifications (see `hubflow_actors::notices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandedNotices {
    /// The blob-writer, after each raw blob is durable.
    Writer,
    /// An Event Grid subscription on the raw container (BlobCreated, Event
    /// Grid or CloudEvents schema) delivering to hub "landed".
    EventGrid,
}

impl Default for TransformConfig {
    fn default() -> Self {
        TransformConfig {
            version: crate::transform::IDENTITY.to_string(),
            sql: None,
            dedupe_window: 200_000,
            poll_ms: 1_000,
            notices: LandedNotices::Writer,
            zstd_level: 3,
            max_row_group_rows: 128 * 1024,
            override_stored: false,
            sync_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A child healthy this long restarts its backoff from the beginning.
    pub backoff_reset_ms: u64,
    /// More restarts than this within `window_secs` escalate.
    pub max_restarts: u32,
    pub window_secs: u64,
    /// A busy actor without progress for this long is killed and restarted.
    pub stall_timeout_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            backoff_reset_ms: 30_000,
            max_restarts: 20,
            window_secs: 60,
            stall_timeout_ms: 60_000,
        }
    }
}

/// The built-in demo API (see [`DemoConfig`] for the fields' meaning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoSection {
    /// Start the demo API when no `[[sources]]` are configured.
    pub enabled: bool,
    /// Records the API will ever have.
    pub total: u64,
    /// Records appear at this rate from start; absent or 0: all at once.
    pub rate_per_sec: Option<f64>,
    pub default_page_size: u64,
    pub max_page_size: u64,
    pub seed: u64,
    pub faults: FaultConfig,
}

impl Default for DemoSection {
    fn default() -> Self {
        let api = DemoConfig::default();
        DemoSection {
            enabled: true,
            total: 100_000,
            rate_per_sec: Some(2_000.0),
            default_page_size: api.default_page_size,
            max_page_size: api.max_page_size,
            seed: api.seed,
            faults: api.faults,
        }
    }
}

impl DemoSection {
    pub fn api(&self) -> DemoConfig {
        DemoConfig {
            total: self.total,
            rate_per_sec: self.rate_per_sec.filter(|r| *r > 0.0),
            default_page_size: self.default_page_size,
            max_page_size: self.max_page_size,
            faults: self.faults.clone(),
            seed: self.seed,
            ..DemoConfig::default()
        }
    }
}

/// The validated configuration the service runs with: every section
/// checked once by [`Config::validate`], secrets resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline: PipelineConfig,
    pub hub: HubConfig,
    pub storage: StorageConfig,
    pub fetcher: FetcherConfig,
    /// `[transform]` beyond the spec: dedupe window, polling, notices, sync.
    pub transform_options: TransformConfig,
    pub supervision: SupervisionConfig,
    pub demo: DemoSection,
    /// `[[sources]]` as written (each validated into [`Settings::sources`]);
    /// what the spec log records as a source's configured version.
    pub source_configs: Vec<HttpSourceConfig>,
    pub sources: Vec<HttpSourceSettings>,
    pub batch: BatchLimits,
    /// `[batch] zstd_level`: how hard raw blobs are compressed.
    pub raw_zstd_level: i32,
    pub curate: CurateOptions,
    pub azure_blob: Option<AzureBlobSettings>,
    pub event_hubs: Option<EventHubsSettings>,
    pub cluster: cluster::ClusterSettings,
    pub admin: admin::AdminSettings,
    /// `[sql]`: checked in full only when `enabled` (`hubflow sql serve`
    /// validates it on its own).
    pub sql: sql::SqlSettings,
    /// The transformation in effect (hot-swappable; shared by clones).
    pub transform: crate::transform::ActiveTransform,
    /// The settings each source runs with (hot-swappable; shared by clones).
    pub live_sources: crate::source::ActiveSources,
}

/// Where a configuration's curated data is and how to reach it: all that
/// `hubflow query` needs. Built by [`Config::curated_location`] without
/// validating the sources, the admin port or the hubs, so querying never
/// needs an ingestion secret.
#[derive(Debug, Clone)]
pub struct CuratedLocation {
    pub data_dir: PathBuf,
    pub storage: StorageConfig,
    pub azure_blob: Option<AzureBlobSettings>,
}

impl Settings {
    /// The curated data of these settings.
    pub fn curated_location(&self) -> CuratedLocation {
        CuratedLocation {
            data_dir: self.pipeline.data_dir.clone(),
            storage: self.storage.clone(),
            azure_blob: self.azure_blob.clone(),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.pipeline.data_dir
    }

    /// This node's id (`[cluster] node_id`, default `<hostname>-<pid>`),
    /// also outside a cluster: spec logs record who wrote what.
    pub fn node_id(&self) -> String {
        self.cluster.node_id.clone()
    }

    /// Whether the blob store or the hubs are on Azure (an `[azure_blob]`
    /// or an `[event_hubs]` section is present).
    pub fn uses_azure(&self) -> bool {
        self.azure_blob.is_some() || self.event_hubs.is_some()
    }
}

impl Config {
    /// Defaults, then `path` (if any), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::parse(&text, &path.display().to_string(), &env)
            }
            None => Config::parse("", "defaults", &env),
        }
    }

    /// Parse TOML `text` (named `origin` in errors) with `env` overrides.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
        for (name, value) in env {
            apply_env(&mut table, name, value)?;
        }
        let origin = if env.is_empty() {
            origin.to_string()
        } else {
            format!("{origin} (with environment overrides)")
        };
        let deserializer = toml::Value::Table(table);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Field {
                origin: origin.clone(),
                path: if path == "." {
                    "(top level)".to_string()
                } else {
                    path
                },
                message: e.into_inner().to_string(),
            }
        })
    }

    /// Check every section once and build the runtime settings.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.check_ranges()?;
        self.check_containers()?;
        if self.demo.enabled {
            self.demo
                .api()
                .validate()
                .map_err(|message| field("demo", &message))?;
        }
        let cluster = self
            .cluster
            .validate()
            .map_err(|e| field(&e.path(), &e.message))?;
        let admin = self.admin.validate().map_err(
            |admin::AdminConfigError::Invalid { field: f, message }| {
                field(&format!("admin.{f}"), &message)
            },
        )?;
        let sql = self
            .sql
            .validate(self.sql.enabled)
            .map_err(|e| sql_field(&e))?;
        let azure_field = |e: crate::azure::AzureConfigError| field(&e.path, &e.message);
        let azure_blob = self
            .azure_blob
            .as_ref()
            .map(|section| section.validate())
            .transpose()
            .map_err(azure_field)?;
        let event_hubs = self
            .event_hubs
            .as_ref()
            .map(|section| section.validate())
            .transpose()
            .map_err(azure_field)?;
        let sources = self.validate_sources()?;
        let batch = BatchLimits {
            max_records: self.batch.max_records,
            max_bytes: self.batch.max_bytes,
            max_age: Duration::from_millis(self.batch.max_age_ms),
            idle: Duration::from_millis(self.batch.idle_ms),
        };
        let curate = CurateOptions {
            zstd_level: self.transform.zstd_level,
            max_row_group_rows: self.transform.max_row_group_rows,
        };
        let transform = crate::transform::ActiveTransform::new(crate::transform::TransformSpec {
            version: self.transform.version.clone(),
            sql: self.transform.sql.clone(),
        })
        .map_err(|e| field("transform.sql", &e.to_string()))?;
        Ok(Settings {
            pipeline: self.pipeline,
            hub: self.hub,
            storage: self.storage,
            fetcher: self.fetcher,
            transform_options: self.transform,
            supervision: self.supervision,
            demo: self.demo,
            source_configs: self.sources,
            sources,
            batch,
            raw_zstd_level: self.batch.zstd_level,
            curate,
            azure_blob,
            event_hubs,
            cluster,
            admin,
            sql,
            transform,
            live_sources: Default::default(),
        })
    }

    /// `[sql]` validated for serving, with the curated data it serves:
    /// all `hubflow sql serve` reads (no source secret, no admin token).
    pub fn sql_server(&self) -> Result<(sql::SqlSettings, CuratedLocation), ConfigError> {
        let sql = self.sql.validate(true).map_err(|e| sql_field(&e))?;
        Ok((sql, self.curated_location()?))
    }

    /// Validate only the sections reading curated data needs (`[storage]`,
    /// `[azure_blob]`), for `hubflow query`: no source secret, admin token
    /// or hub setting is resolved.
    pub fn curated_location(&self) -> Result<CuratedLocation, ConfigError> {
        self.check_containers()?;
        let azure_blob = self
            .azure_blob
            .as_ref()
            .map(|section| section.validate())
            .transpose()
            .map_err(|e| field(&e.path, &e.message))?;
        Ok(CuratedLocation {
            data_dir: self.pipeline.data_dir.clone(),
            storage: self.storage.clone(),
            azure_blob,
        })
    }

    /// The numeric ranges of the plain sections.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        if self.hub.partitions == 0 || self.hub.partitions > 1024 {
            return Err(field("hub.partitions", "must be 1..=1024"));
        }
        if self.batch.max_records == 0 {
            return Err(field("batch.max_records", "must be at least 1"));
        }
        if self.batch.idle_ms == 0 || self.batch.idle_ms > self.batch.max_age_ms.max(1) {
            return Err(field("batch.idle_ms", "must be 1..=batch.max_age_ms"));
        }
        if self.batch.max_bytes < 1024 {
            return Err(field("batch.max_bytes", "must be at least 1024"));
        }
        for (path, level) in [
            ("batch.zstd_level", self.batch.zstd_level),
            ("transform.zstd_level", self.transform.zstd_level),
        ] {
            if !(1..=22).contains(&level) {
                return Err(field(path, "must be 1..=22"));
            }
        }
        if !(1..=256).contains(&self.fetcher.read_ahead_pages) {
            return Err(field("fetcher.read_ahead_pages", "must be 1..=256"));
        }
        if self.fetcher.page_log_retention_hours > 8760 {
            return Err(field(
                "fetcher.page_log_retention_hours",
                "must be 0..=8760",
            ));
        }
        if self.fetcher.max_publish_events == 0 {
            return Err(field("fetcher.max_publish_events", "must be at least 1"));
        }
        if !(100..=60_000).contains(&self.transform.sync_ms) {
            return Err(field("transform.sync_ms", "must be 100..=60000"));
        }
        if self.transform.max_row_group_rows == 0 {
            return Err(field("transform.max_row_group_rows", "must be at least 1"));
        }
        if self.supervision.stall_timeout_ms < 1_000 {
            return Err(field(
                "supervision.stall_timeout_ms",
                "must be at least 1000",
            ));
        }
        Ok(())
    }

    /// Container names follow Azure's rules, on every store.
    fn check_containers(&self) -> Result<(), ConfigError> {
        let containers = [
            ("storage.raw_container", &self.storage.raw_container),
            ("storage.curated_container", &self.storage.curated_container),
            ("storage.state_container", &self.storage.state_container),
            (
                "storage.dead_letter_container",
                &self.storage.dead_letter_container,
            ),
        ];
        for (path, name) in containers {
            let ok = (3..=63).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !name.starts_with('-');
            if !ok {
                return Err(field(
                    path,
                    "must be 3-63 characters of lowercase letters, digits and '-' (Azure container rules)",
                ));
            }
        }
        Ok(())
    }

    /// Each `[[sources]]` table, and no two sources with one name.
    fn validate_sources(&self) -> Result<Vec<HttpSourceSettings>, ConfigError> {
        let mut sources = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for (i, source) in self.sources.iter().enumerate() {
            let settings = source
                .validate()
                .map_err(|e| field(&format!("sources[{i}]"), &e.to_string()))?;
            if !names.insert(settings.name().to_string()) {
                return Err(field(
                    &format!("sources[{i}].name"),
                    "duplicate source name",
                ));
            }
            sources.push(settings);
        }
        Ok(sources)
    }
}

/// An error at `path` of the configuration.
fn sql_field(error: &sql::SqlConfigError) -> ConfigError {
    let sql::SqlConfigError::Invalid { field: f, message } = error;
    field(&format!("sql.{f}"), message)
}

fn field(path: &str, message: &str) -> ConfigError {
    ConfigError::Field {
        origin: "config".to_string(),
        path: path.to_string(),
        message: message.to_string(),
    }
}

/// Set `HUBFLOW__A__B=value` at `a.b` in `table`.
fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(ConfigError::Env {
            name: name.to_string(),
            message: "expected HUBFLOW__<SECTION>__<FIELD>".to_string(),
        });
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path.split_last().ok_or_else(|| ConfigError::Env {
        name: name.to_string(),
        message: "empty path".to_string(),
    })?;
    let mut cursor = table;
    for key in parents {
        let entry = cursor
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry.as_table_mut().ok_or_else(|| ConfigError::Env {
            name: name.to_string(),
            message: format!("{key} is not a section"),
        })?;
    }
    cursor.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.toml", &BTreeMap::new())
    }

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        let settings = config.validate().unwrap();
        assert!(settings.sources.is_empty());
        assert_eq!(settings.batch.max_records, 10_000);
    }

    #[test]
    fn unknown_fields_are_errors_with_their_path() {
        let err = parse("[batch]\nmax_recordz = 5\n").unwrap_err().to_string();
        assert!(err.contains("batch"), "{err}");
        assert!(err.contains("max_recordz"), "{err}");
        let err = parse("[batch]\nmax_records = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch.max_records"), "{err}");
        let err = parse("[[sources]]\nname = \"x\"\nurl = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sources[0].url"), "{err}");
        assert!(matches!(parse("[batch"), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn the_demo_section_is_flat_and_strict() {
        let config =
            parse("[demo]\nenabled = false\ntotal = 5\n[demo.faults]\nerror_rate = 0.5\n").unwrap();
        assert!(!config.demo.enabled);
        assert_eq!(config.demo.total, 5);
        assert_eq!(config.demo.faults.error_rate, 0.5);
        let err = parse("[demo]\ntotall = 5\n").unwrap_err().to_string();
        assert!(err.contains("totall"), "{err}");
    }

    #[test]
    fn ranges_are_checked() {
        let err = parse("[hub]\npartitions = 0\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("hub.partitions"), "{err}");
        let err = parse("[storage]\nraw_container = \"Raw_Data\"\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.raw_container"), "{err}");
        for idle in ["idle_ms = 0", "idle_ms = 5000\nmax_age_ms = 2000"] {
            let err = parse(&format!("[batch]\n{idle}\n"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains("batch.idle_ms"), "{err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = BTreeMap::from([
            ("HUBFLOW__BATCH__MAX_RECORDS".to_string(), "77".to_string()),
            (
                "HUBFLOW__PIPELINE__NAMESPACE".to_string(),
                "prod-ns".to_string(),
            ),
        ]);
        let config = Config::parse("[batch]\nmax_records = 5\n", "f", &env).unwrap();
        assert_eq!(config.batch.max_records, 77);
        assert_eq!(config.pipeline.namespace, "prod-ns");
        let bad = BTreeMap::from([(
            "HUBFLOW__BATCH__MAX_RECORDS".to_string(),
            "lots".to_string(),
        )]);
        let err = Config::parse("", "f", &bad).unwrap_err().to_string();
        assert!(
            err.contains("batch.max_records") && err.contains("environment"),
            "{err}"
        );
    }
}
