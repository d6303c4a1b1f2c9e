//! Shared helpers of the integration tests: a demo API on loopback, settings
//! for a temporary data directory, and SQL checks over curated; [`azurite`]
//! (the storage emulator), [`faults`] (a blob store that fails on demand),
//! [`nodes`] (`hubflow run` processes of a cluster, with admin ports),
//! [`openapi`] (answers checked against the OpenAPI document),
//! [`server`] (an axum server on loopback for handlers under test),
//! [`harness`] (the service with its admin port, the admin client, and
//! `Pipeline::start` over chosen backends: how every module runs Hubflow
//! in-process).

#![allow(dead_code)]

pub mod azurite;
pub mod contract;
pub mod faults;
pub mod harness;
pub mod nodes;
pub mod openapi;
pub mod server;

use std::collections::BTreeMap;
use std::path::Path;

use hubflow::config::{Config, Settings};
use hubflow::demo::{self, DemoConfig};
use hubflow::query::{self, OutputFormat};

use serde_json::Value;

/// Whether this is CI (`CI=true`), where every tool a test needs is
/// installed by scripts/test.sh and a missing one is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `name` on `PATH`.
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Tests that push 100k records through the pipeline or run several
/// `hubflow` processes hold this lock, so no two of them share CI's two
/// cores: their bounds (drain deadlines, lease expiries, stall detection)
/// assume the machine is not oversubscribed. Light tests still run beside
/// them. A tokio mutex works across the tests' separate runtimes and is not
/// poisoned when a test fails.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

pub struct DemoServer {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl DemoServer {
    pub async fn start(config: DemoConfig) -> DemoServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            demo::serve(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        DemoServer { url, stop, task }
    }

    /// The demo API serving `total` records, with no faults.
    pub async fn serving(total: u64) -> DemoServer {
        DemoServer::start(DemoConfig {
            total,
            ..DemoConfig::default()
        })
        .await
    }

    /// The demo API with `total` records appearing at `rate` per second
    /// (all at once with `None`), with no faults.
    pub async fn streaming(total: u64, rate: Option<f64>) -> DemoServer {
        DemoServer::start(DemoConfig {
            total,
            rate_per_sec: rate,
            ..DemoConfig::default()
        })
        .await
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The config a test run uses: short timers, the demo source at `url`
/// with big pages, data under `data_dir`.
pub fn config(data_dir: &Path, url: &str) -> Config {
    let mut source = demo::demo_source_config(url);
    source.query.insert("limit".to_string(), "1000".to_string());
    let mut config = Config {
        sources: vec![source],
        ..Config::default()
    };
    config.pipeline.data_dir = data_dir.to_path_buf();
    config.batch.max_age_ms = 300;
    config.fetcher.poll_interval_ms = 200;
    config.fetcher.retry_initial_ms = 50;
    config.fetcher.retry_max_ms = 1_000;
    config.transform.poll_ms = 200;
    config.demo.enabled = false;
    config
}

/// [`config`] as a TOML file's text (for the `hubflow` binary).
pub fn config_toml(data_dir: &Path, url: &str) -> String {
    toml::to_string(&config(data_dir, url)).unwrap()
}

pub fn settings(data_dir: &Path, url: &str) -> Settings {
    // Through the text form, so the file format is what is tested.
    Config::parse(&config_toml(data_dir, url), "test", &BTreeMap::new())
        .unwrap()
        .validate()
        .unwrap()
}

/// Rows of `sql` through `hubflow query`'s path (registry-typed tables).
pub async fn json_rows(settings: &Settings, sql: &str) -> Vec<Value> {
    let batches = hubflow::query::curated(&settings.curated_location(), sql)
        .await
        .unwrap();
    let text = query::format_batches(&batches, OutputFormat::Json).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `count(*)` and `count(DISTINCT id)` over the demo table.
pub async fn counts(settings: &Settings) -> (u64, u64) {
    let rows = json_rows(
        settings,
        "SELECT count(*) AS n, count(DISTINCT id) AS d FROM demo",
    )
    .await;
    (
        rows[0]["n"].as_u64().unwrap(),
        rows[0]["d"].as_u64().unwrap(),
    )
}

/// Selected columns of the records with these demo indexes, by id.
pub async fn rows_by_id(settings: &Settings, indexes: &[u64]) -> BTreeMap<String, Value> {
    let ids: Vec<String> = indexes.iter().map(|i| format!("'evt-{i:08}'")).collect();
    let sql = format!(
        "SELECT id, created_at, updated_at, \"type\", amount, tags, \
         get_field(\"user\", 'name') AS user_name, get_field(\"user\", 'country') AS user_country, \
         _hub_partition FROM demo WHERE id IN ({})",
        ids.join(", ")
    );
    json_rows(settings, &sql)
        .await
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect()
}

/// A SQL condition true for records enqueued after `margin` more than the
/// embedded hub at `data_dir` holds now, on any partition: a transform
/// using it passes its dry run and fails once new records arrive.
pub async fn records_after_now(data_dir: &Path, partitions: u32, margin: i64) -> String {
    use hubflow_actors::ports::Hub;
    let hub = hubflow::embedded::SqliteHub::open_async(
        data_dir.join("hub.sqlite"),
        "ingest".into(),
        partitions,
        None,
    )
    .await
    .unwrap();
    let mut conditions = Vec::new();
    for p in hub.partition_ids().await.unwrap() {
        let last = hub
            .partition_properties(p)
            .await
            .unwrap()
            .last_enqueued_sequence_number;
        conditions.push(format!(
            "(_hub_partition = {p} AND _hub_sequence > {})",
            last + margin
        ));
    }
    conditions.join(" OR ")
}

/// Run `probe` every `every` until it answers `Ok` (bounded by `limit`);
/// that answer. An `Err` says what the probe saw, for the failure message
/// if time runs out.
pub async fn eventually<T>(
    what: &str,
    limit: std::time::Duration,
    every: std::time::Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let seen = match probe().await {
            Ok(answer) => return answer,
            Err(seen) => seen,
        };
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}: {seen}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Wait (bounded) for a child process to exit; `None` if it is still
/// running after `limit`.
pub async fn wait_exit(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    None
}
