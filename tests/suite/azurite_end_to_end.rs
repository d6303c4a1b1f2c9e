//! The whole dataflow with every container (raw, curated, state, dead
//! letters) in Azure Blob Storage, emulated by Azurite: the demo API (real
//! HTTP on loopback, with faults) → fetcher → embedded hub → consumers → raw
//! blobs → transformers → zstd Parquet in Azure. Every record exactly once,
//! checked twice: by our SQL engine over the curated blobs downloaded from
//! Azure, and by clients that are not ours, the official Python SDK and
//! pyarrow (`scripts/azure_crosscheck.py`).
//!
//! Needs `bash scripts/install-azurite.sh` (fails, never skips, without it).

use crate::common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::azurite::{ACCOUNT, ACCOUNT_KEY, Azurite, repo_root};
use common::harness;
use hubflow::config::{Config, Settings, StorageConfig};
use hubflow::demo::{DemoConfig, FaultConfig};
use hubflow::pipeline::Progress;
use hubflow::source::SecretString;
use hubflow_actors::formats::raw;
use hubflow_actors::ports::BlobStore;
use serde_json::Value;

const TOTAL: u64 = 20_000;

/// The test config through its TOML text (so the `[azure_blob]` section's
/// file format is what runs), with the key in a file.
fn settings(data_dir: &std::path::Path, demo_url: &str, azurite: &Azurite) -> Settings {
    let key_file = data_dir.join("azure-key");
    std::fs::create_dir_all(data_dir).unwrap();
    std::fs::write(&key_file, format!("{ACCOUNT_KEY}\n")).unwrap();
    let mut config = common::config(data_dir, demo_url);
    let mut azure = azurite.account_key_config();
    azure.auth = hubflow::azure::AzureAuthConfig::AccountKey {
        key: SecretString::file(&key_file),
    };
    config.azure_blob = Some(azure);
    let text = toml::to_string(&config).unwrap();
    assert!(text.contains("[azure_blob]"), "{text}");
    assert!(
        !text.contains(ACCOUNT_KEY),
        "the key must not be in the config text"
    );
    Config::parse(&text, "test", &BTreeMap::new())
        .unwrap()
        .validate()
        .unwrap()
}

/// Run the pipeline until everything fetched is curated (checked twice in a
/// row, like `hubflow run --exit-when-idle`), bounded.
async fn run_until_idle(settings: &Settings) -> Progress {
    assert!(settings.uses_azure());
    let backends = hubflow::backends::Backends::open(settings).await.unwrap();
    assert!(backends.blobs.describe().contains("azure blob storage"));
    let expected_sources = settings.sources.len();
    let pipeline = harness::start_pipeline(settings, backends).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut idle_checks = 0;
    let progress = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pipeline did not finish in 10 minutes: {:?}",
            pipeline.progress().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let progress = match pipeline.progress().await {
            Ok(p) => p,
            Err(error) => {
                eprintln!("progress not readable yet: {error:#}");
                continue;
            }
        };
        if progress.idle(expected_sources) {
            idle_checks += 1;
            if idle_checks >= 2 {
                break progress;
            }
        } else {
            idle_checks = 0;
        }
    };
    pipeline.shutdown().await;
    progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_records_through_azure_blob_storage() {
    let _heavy = common::exclusive().await;
    let azurite = Azurite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total: TOTAL,
        faults: FaultConfig {
            error_rate: 0.02,
            throttle_rate: 0.01,
            truncate_rate: 0.01,
            garbage_rate: 0.01,
            ..FaultConfig::default()
        },
        seed: 11,
        ..DemoConfig::default()
    })
    .await;
    let settings = settings(dir.path(), &demo.url, &azurite);
    let progress = run_until_idle(&settings).await;
    demo.stop().await;
    assert!(progress.in_hub >= TOTAL, "{progress:?}");
    assert_eq!(progress.landed, progress.in_hub, "{progress:?}");
    assert_eq!(progress.transformed, progress.in_hub, "{progress:?}");

    let store = azurite.account_key_store();
    let counts = BlobCounts {
        raw: case_raw_blobs_cover_the_hub_exactly(&store, &settings.storage, &progress).await,
        dead_letters: case_checkpoints_and_dead_letters_are_in_azure(
            &store,
            &settings.storage,
            settings.hub.partitions,
        )
        .await,
        curated: case_hubflow_query_reads_curated_from_azure(&store, &settings).await,
    };
    case_the_python_sdk_and_pyarrow_see_the_same(&azurite, &settings, &counts).await;
}

/// How many blobs the test found, for the cross-check to find again.
struct BlobCounts {
    raw: usize,
    dead_letters: usize,
    curated: usize,
}

/// Every hub event in exactly one valid raw blob. How many raw blobs.
async fn case_raw_blobs_cover_the_hub_exactly(
    store: &dyn BlobStore,
    s: &StorageConfig,
    progress: &Progress,
) -> usize {
    let mut raw_records = 0u64;
    let raw_blobs = store.list(&s.raw_container, "").await.unwrap();
    assert!(!raw_blobs.is_empty());
    for blob in raw_blobs
        .iter()
        .filter(|b| !b.name.starts_with(raw::QUARANTINE_PREFIX))
    {
        let (bytes, _) = store.get(&s.raw_container, &blob.name).await.unwrap();
        let header = raw::read_header(&bytes)
            .unwrap_or_else(|e| panic!("raw blob {} is not valid: {e}", blob.name));
        raw_records += u64::from(header.records);
    }
    assert_eq!(
        raw_records, progress.in_hub,
        "raw blobs cover the hub exactly"
    );
    raw_blobs.len()
}

/// The writer's checkpoints, one per partition, are in Azure; the
/// dead-letter container exists. How many dead letters it holds.
async fn case_checkpoints_and_dead_letters_are_in_azure(
    store: &dyn BlobStore,
    s: &StorageConfig,
    partitions: u32,
) -> usize {
    let state = store.list(&s.state_container, "").await.unwrap();
    let checkpoints = state
        .iter()
        .filter(|b| b.name.contains("/checkpoint/"))
        .count();
    assert_eq!(
        checkpoints,
        partitions as usize,
        "one writer checkpoint per partition: {:?}",
        state.iter().map(|b| &b.name).collect::<Vec<_>>()
    );
    // The dead-letter container exists and lists (its content depends on
    // which faults the demo drew).
    store
        .list(&s.dead_letter_container, "")
        .await
        .unwrap()
        .len()
}

/// Curated, by `hubflow query`'s path. How many curated Parquet files.
async fn case_hubflow_query_reads_curated_from_azure(
    store: &dyn BlobStore,
    settings: &Settings,
) -> usize {
    let s = &settings.storage;
    // Curated, by `hubflow query`'s path: the container mirrored locally,
    // the schema registry read from Azure; a second sync downloads nothing.
    let curated = store.list(&s.curated_container, "").await.unwrap();
    let parquet: Vec<_> = curated
        .iter()
        .filter(|b| b.name.ends_with(".parquet"))
        .collect();
    assert!(!parquet.is_empty(), "no curated parquet in azure");
    assert_eq!(
        common::counts(settings).await,
        (TOTAL, TOTAL),
        "hubflow query over curated in azure"
    );
    let mirror = settings
        .data_dir()
        .join("query-cache")
        .join(&s.curated_container);
    let again = hubflow::curated_cache::sync(store, &s.curated_container, &mirror)
        .await
        .unwrap();
    assert_eq!((again.downloaded, again.kept), (0, parquet.len()));
    parquet.len()
}

/// Curated, by clients that are not ours: the official Python SDK and
/// pyarrow list the same containers, files, rows and blobs.
async fn case_the_python_sdk_and_pyarrow_see_the_same(
    azurite: &Azurite,
    settings: &Settings,
    counts: &BlobCounts,
) {
    let s = &settings.storage;
    let python = repo_root().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/install-azurite.sh` first",
        python.display()
    );
    let output = tokio::process::Command::new(&python)
        .arg(repo_root().join("scripts/azure_crosscheck.py"))
        .args(["--account-url", &azurite.account_url])
        .args(["--account-name", ACCOUNT])
        .args(["--curated", &s.curated_container])
        .args(["--prefix", "demo/"])
        .env("AZURE_STORAGE_KEY", ACCOUNT_KEY)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), output)
        .await
        .expect("cross-check did not finish in 5 minutes")
        .expect("cannot run the cross-check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "cross-check failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("cross-check printed no JSON ({e}): {stdout}"));
    eprintln!("python cross-check: {report}");
    let mut containers: Vec<&str> = [
        &s.raw_container,
        &s.curated_container,
        &s.state_container,
        &s.dead_letter_container,
    ]
    .iter()
    .map(|c| c.as_str())
    .collect();
    containers.sort();
    let listed: Vec<&str> = report["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(listed, containers, "{report}");
    assert_eq!(
        report["files"].as_u64(),
        Some(counts.curated as u64),
        "{report}"
    );
    assert_eq!(report["rows"].as_u64(), Some(TOTAL), "{report}");
    assert_eq!(report["distinct_ids"].as_u64(), Some(TOTAL), "{report}");
    assert_eq!(
        report["blobs"][&s.raw_container].as_u64(),
        Some(counts.raw as u64),
        "{report}"
    );
    assert_eq!(
        report["blobs"][&s.dead_letter_container].as_u64(),
        Some(counts.dead_letters as u64),
        "{report}"
    );
}
