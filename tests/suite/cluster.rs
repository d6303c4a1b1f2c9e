//! A cluster on one host: `hubflow run` processes sharing one embedded hub
//! and one demo source, with 3 s leases renewed every second, and a blob
//! store that is either the shared filesystem store or Azure Blob Storage
//! (Azurite): the ownership records and leases live in it, so the same
//! etag compare-and-swap coordinates the nodes on both.
//!
//! Three nodes share six partitions fairly; the node holding the fetcher
//! lease is SIGKILLed and its partitions and the lease move within the
//! expiry; a fourth node joins and the partitions rebalance; one node is
//! drained with SIGTERM and releases everything before it exits. At the end
//! every record is in curated exactly once.

use crate::common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::azurite::{ACCOUNT_KEY, Azurite};
use common::nodes::Nodes;
use hubflow::backends::{Backends, INGEST_HUB};
use hubflow::cluster::{LeaseStore, OwnershipStore};
use hubflow::config::Settings;
use hubflow::pipeline::Progress;
use hubflow::source::SecretString;
use hubflow_actors::now_ms;
use hubflow_actors::ports::{BlobStore, StateStore};
use serde_json::Value;

const PARTITIONS: [u32; 6] = [0, 1, 2, 3, 4, 5];
pub const LEASE: Duration = Duration::from_secs(3);
pub const RENEW: Duration = Duration::from_secs(1);

/// Who owns what, and who holds the fetcher lease, read from the records.
struct Observer {
    ownership: OwnershipStore,
    lease: LeaseStore,
}

#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    owners: BTreeMap<u32, Option<String>>,
    fetcher: Option<String>,
}

impl Snapshot {
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for owner in self.owners.values().flatten() {
            *counts.entry(owner.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Every partition owned by one of `nodes`, each owning 6/n (±1), and
    /// the fetcher lease held by one of them.
    fn balanced_over(&self, nodes: &[String]) -> bool {
        let counts = self.counts();
        let all_owned = self
            .owners
            .values()
            .all(|o| o.as_ref().is_some_and(|o| nodes.contains(o)));
        let (min, max) = (
            nodes
                .iter()
                .map(|n| counts.get(n).copied().unwrap_or(0))
                .min(),
            nodes
                .iter()
                .map(|n| counts.get(n).copied().unwrap_or(0))
                .max(),
        );
        all_owned
            && min.zip(max).is_some_and(|(lo, hi)| hi - lo <= 1)
            && self.fetcher.as_ref().is_some_and(|f| nodes.contains(f))
    }
}

impl Observer {
    fn new(backends: &Backends) -> Observer {
        let state = StateStore::new(backends.blobs.clone(), "state");
        Observer {
            ownership: OwnershipStore::new(
                state.clone(),
                "local",
                INGEST_HUB,
                "$Default",
                "observer",
                LEASE,
            ),
            lease: LeaseStore::new(state, "local", "observer", LEASE),
        }
    }

    async fn snapshot(&self) -> Snapshot {
        let now = now_ms();
        let view = self.ownership.load(&PARTITIONS, now).await.unwrap();
        let fetcher = self
            .lease
            .load("fetcher/demo")
            .await
            .unwrap()
            .and_then(|r| r.value.live_holder(now).map(str::to_string));
        Snapshot {
            owners: PARTITIONS
                .iter()
                .map(|p| (*p, view.owner_of(*p).map(str::to_string)))
                .collect(),
            fetcher,
        }
    }

    /// Poll until `done`; returns how long it took.
    async fn until(
        &self,
        nodes: &Nodes,
        what: &str,
        limit: Duration,
        done: impl Fn(&Snapshot) -> bool,
    ) -> Duration {
        let start = Instant::now();
        loop {
            // Before the first claim the container may not exist yet.
            let snap = match tokio::time::timeout(Duration::from_secs(5), self.snapshot()).await {
                Ok(s) => s,
                Err(_) => panic!("reading ownership timed out"),
            };
            if done(&snap) {
                eprintln!("{what}: {:?} after {:?}", snap, start.elapsed());
                return start.elapsed();
            }
            if start.elapsed() > limit {
                panic!(
                    "{what}: not reached in {limit:?}; last {snap:?}{}",
                    nodes.tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn progress(settings: &Settings, backends: &Backends) -> Progress {
    Progress::read(settings, backends).await.unwrap()
}

/// Where the nodes keep their blobs.
pub enum Store {
    Filesystem,
    Azurite(Azurite),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_partitions_survive_a_kill_rebalance_and_drain_exactly_once() {
    let _heavy = common::exclusive().await;
    cluster_run(Store::Filesystem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_blob_storage_nodes_share_survive_a_kill_rebalance_and_drain_exactly_once() {
    let _heavy = common::exclusive().await;
    cluster_run(Store::Azurite(Azurite::start().await)).await;
}

async fn cluster_run(store: Store) {
    let test_start = Instant::now();
    let total = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::streaming(total, Some(600.0)).await;
    let (config_path, settings) =
        write_config(dir.path(), &demo.url, &store, PARTITIONS.len(), |_| {});
    let mut nodes = Nodes::new(dir.path().to_path_buf(), config_path);
    let backends = start_three(&mut nodes, &settings, &store).await;
    let observer = Observer::new(&backends);
    observer
        .until(&nodes, "three nodes share", Duration::from_secs(40), |s| {
            s.balanced_over(&nodes.ids())
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress(&settings, &backends).await.transformed == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing curated;{}",
            nodes.tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SIGKILL the fetcher lease holder: its partitions and the lease move
    // once its claims expire (lease) plus a renew round or two.
    let victim = observer.snapshot().await.fetcher.unwrap();
    nodes.kill(&victim);
    let moved = observer
        .until(&nodes, "after the kill", Duration::from_secs(20), |s| {
            s.balanced_over(&nodes.ids())
        })
        .await;
    assert!(
        moved <= LEASE + 3 * RENEW + Duration::from_secs(2),
        "took {moved:?} to move a dead node's work"
    );

    // A fourth node joins: the six spread over three nodes again.
    nodes.start("d");
    observer
        .until(&nodes, "after d joined", Duration::from_secs(30), |s| {
            s.counts().get("d").copied().unwrap_or(0) >= 1 && s.balanced_over(&nodes.ids())
        })
        .await;

    // Drain one of the original nodes: it releases before it exits, and the
    // others take its partitions without waiting for an expiry.
    let drained = nodes.ids().into_iter().find(|id| id != "d").unwrap();
    let status = nodes.drain(&drained, Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "{drained} exited with {status};{}",
        nodes.tails()
    );
    let after = observer.snapshot().await;
    assert!(
        after
            .owners
            .values()
            .all(|o| o.as_deref() != Some(drained.as_str()))
            && after.fetcher.as_deref() != Some(drained.as_str()),
        "{drained} still holds work after its drain: {after:?}"
    );
    let log = std::fs::read_to_string(nodes.log(&drained)).unwrap_or_default();
    assert!(log.contains("partition released"), "{log}");
    let handover = observer
        .until(&nodes, "after the drain", Duration::from_secs(20), |s| {
            s.balanced_over(&nodes.ids())
        })
        .await;
    assert!(
        handover < LEASE,
        "a drained node's partitions waited for expiry ({handover:?})"
    );

    // Everything fetched and curated, then the rest drain too.
    let distinct = async || curated_counts(&settings, backends.blobs.as_ref()).await.1;
    nodes
        .finish_and_drain(&settings, &backends, total, distinct)
        .await;
    let counts = curated_counts(&settings, backends.blobs.as_ref()).await;
    assert_eq!(counts, (total, total), "{}", nodes.tails());
    demo.stop().await;
    eprintln!("cluster test took {:?}", test_start.elapsed());
}

/// The config file the nodes of a cluster test share: `partitions`
/// partitions, 3 s leases renewed every second, blobs in `store`, then
/// `adjust`; returns its path and its settings.
pub fn write_config(
    dir: &std::path::Path,
    demo_url: &str,
    store: &Store,
    partitions: usize,
    adjust: impl FnOnce(&mut hubflow::config::Config),
) -> (std::path::PathBuf, Settings) {
    let data = dir.join("data");
    let mut config = common::config(&data, demo_url);
    config.hub.partitions = partitions as u32;
    config.cluster.enabled = true;
    config.cluster.lease_secs = LEASE.as_secs();
    config.cluster.renew_secs = RENEW.as_secs();
    if let Store::Azurite(azurite) = store {
        // The key by file, so the config text the nodes read holds no secret.
        let key_file = dir.join("azure-key");
        std::fs::write(&key_file, ACCOUNT_KEY).unwrap();
        let mut azure = azurite.account_key_config();
        azure.auth = hubflow::azure::AzureAuthConfig::AccountKey {
            key: SecretString::file(&key_file),
        };
        config.azure_blob = Some(azure);
    }
    adjust(&mut config);
    let config_path = dir.join("hubflow.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let settings = config.validate().unwrap();
    (config_path, settings)
}

/// Start nodes a, b and c; the backends to watch them through, once the
/// first of them has created the containers.
pub async fn start_three(nodes: &mut Nodes, settings: &Settings, store: &Store) -> Backends {
    for id in ["a", "b", "c"] {
        nodes.start(id);
    }
    let backends = observer_backends(settings, store).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while backends.blobs.list("state", "").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "no state container;{}",
            nodes.tails()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    backends
}

/// The backends a test reads the cluster's state through.
pub async fn observer_backends(settings: &Settings, store: &Store) -> Backends {
    match store {
        Store::Filesystem => Backends::embedded(settings).await.unwrap(),
        Store::Azurite(_) => hubflow::backends::Backends::open(settings).await.unwrap(),
    }
}

/// `count(*)` and `count(DISTINCT id)` over curated, by our SQL engine over
/// the curated files as the store holds them (downloaded from Azure).
pub async fn curated_counts(settings: &Settings, blobs: &dyn BlobStore) -> (u64, u64) {
    let rows = curated_rows(
        settings,
        blobs,
        "SELECT count(*) AS n, count(DISTINCT id) AS d FROM demo",
    )
    .await;
    (
        rows[0]["n"].as_u64().unwrap(),
        rows[0]["d"].as_u64().unwrap(),
    )
}

/// Rows of `sql` over curated as the store holds it (downloaded first).
pub async fn curated_rows(settings: &Settings, blobs: &dyn BlobStore, sql: &str) -> Vec<Value> {
    let container = &settings.storage.curated_container;
    let local = tempfile::tempdir().unwrap();
    for blob in blobs.list(container, "").await.unwrap() {
        if !blob.name.ends_with(".parquet") {
            continue;
        }
        let (bytes, _) = blobs.get(container, &blob.name).await.unwrap();
        let path = local.path().join(&blob.name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &bytes).unwrap();
    }
    let batches = hubflow::query::query_dir(local.path(), sql).await.unwrap();
    let text =
        hubflow::query::format_batches(&batches, hubflow::query::OutputFormat::Json).unwrap();
    serde_json::from_str(&text).unwrap()
}
