//! Transform versions across a cluster of `hubflow run` processes, on the
//! shared filesystem store and on Azure Blob Storage (Azurite): the durable
//! spec log in the state container is what every node runs.
//!
//! 1. Two operators swap at the same time on two nodes: one wins by
//!    compare-and-swap, the other gets 409 naming the winner.
//! 2. A swap whose initiating node is SIGKILLed during its probation, while
//!    a fourth node starts: the survivors and the newcomer apply it, and one
//!    of them promotes it when the probation ends.
//!    Source settings swapped through one node reach the node holding the
//!    fetcher lease and every other node.
//! 3. A version that fails at run time on one node rolls back on all.
//! 4. Everything is curated exactly once; rows curated since the swap carry
//!    its column and its `_transform_version`. A node restarted alone comes
//!    back with the stored version (not its file's) and a replay of deleted
//!    files keeps the column.

use crate::common;

use std::time::{Duration, Instant};

use common::azurite::Azurite;
use common::harness::assert_swapped;
use common::nodes::Nodes;
use hubflow::backends::Backends;
use hubflow::config::Settings;
use hubflow::pipeline::Progress;
use hubflow::specs::{Outcome, SpecLog, SpecStore};
use hubflow::transform::{SPEC_RECORD, TransformSpec};
use hubflow_actors::ports::{BlobStore, StateStore};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cluster::{Store, curated_counts, curated_rows, observer_backends, write_config};

const PARTITIONS: usize = 4;
const V3_SQL: &str = "SELECT *, amount * 100 AS amount_cents FROM batch";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_reach_every_node_survive_a_killed_initiator_and_restarts() {
    let _heavy = common::exclusive().await;
    cluster_swaps(Store::Filesystem).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azure_blob_storage_swaps_reach_every_node_and_survive_restarts() {
    let _heavy = common::exclusive().await;
    cluster_swaps(Store::Azurite(Azurite::start().await)).await;
}

async fn spec_log(backends: &Backends) -> SpecLog<TransformSpec> {
    let store = SpecStore::new(StateStore::new(backends.blobs.clone(), "state"), "observer");
    store
        .load::<TransformSpec>(SPEC_RECORD)
        .await
        .unwrap()
        .expect("no spec log")
        .log
}

/// Wait (bounded, 60 s) until `done` holds for the stored spec log, read
/// every `every_ms`.
async fn until_log(
    nodes: &Nodes,
    backends: &Backends,
    what: &str,
    every_ms: u64,
    done: impl Fn(&SpecLog<TransformSpec>) -> bool,
) {
    let (limit, every) = (Duration::from_secs(60), Duration::from_millis(every_ms));
    common::eventually(what, limit, every, async || {
        let log = spec_log(backends).await;
        match done(&log) {
            true => Ok(()),
            false => Err(format!("{log:?};{}", nodes.tails())),
        }
    })
    .await
}

/// Wait (bounded) until every node in `ids` answers `path` with `version`
/// where `pick` looks.
async fn until_all(
    nodes: &Nodes,
    ids: &[&str],
    (path, pick): (&str, fn(&Value) -> &Value),
    version: &str,
    limit: Duration,
) {
    let start = Instant::now();
    let what = format!("{ids:?} to have {path} {version}");
    common::eventually(&what, limit, Duration::from_millis(200), async || {
        let mut seen = Vec::new();
        for id in ids {
            let v = match nodes.call(id, Method::GET, path, None).await {
                Some((StatusCode::OK, v)) => pick(&v).as_str().map(str::to_string),
                _ => None,
            };
            seen.push(v);
        }
        match seen.iter().all(|v| v.as_deref() == Some(version)) {
            true => Ok(()),
            false => Err(format!("they have {seen:?};{}", nodes.tails())),
        }
    })
    .await;
    eprintln!("{ids:?} have {path} {version} after {:?}", start.elapsed());
}

/// The transform version every node in `ids` runs, once they all agree.
async fn until_all_run(nodes: &Nodes, ids: &[&str], version: &str, limit: Duration) {
    fn active(v: &Value) -> &Value {
        &v["active"]["version"]
    }
    until_all(nodes, ids, ("/transform", active), version, limit).await;
}

/// Every node in `ids` has source `demo` at settings `version` (bounded).
async fn until_all_sources(nodes: &Nodes, ids: &[&str], version: &str) {
    fn demo(v: &Value) -> &Value {
        &v["sources"][0]["version"]
    }
    let limit = Duration::from_secs(30);
    until_all(nodes, ids, ("/sources", demo), version, limit).await;
}

async fn cluster_swaps(store: Store) {
    let test_start = Instant::now();
    let total = 16_000u64;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::streaming(total, Some(400.0)).await;
    let (config_path, settings) = write_config(dir.path(), &demo.url, &store, PARTITIONS, |c| {
        c.transform.sync_ms = 250;
        c.supervision.backoff_initial_ms = 50;
    });
    let mut nodes = Nodes::new(dir.path().to_path_buf(), config_path);
    for id in ["a", "b", "c"] {
        nodes.start(id);
    }
    for id in ["a", "b", "c"] {
        nodes.until_ready(id, Duration::from_secs(60)).await;
    }
    let backends = observer_backends(&settings, &store).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Progress::read(&settings, &backends).await.unwrap().landed < 1_000 {
        assert!(
            Instant::now() < deadline,
            "nothing landed;{}",
            nodes.tails()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    case_two_swaps_at_once_one_wins_and_the_other_learns_the_winner(&nodes).await;
    case_a_swap_outlives_its_killed_initiator_and_reaches_a_newcomer(&mut nodes, &backends).await;
    case_source_settings_swapped_anywhere_reach_every_node(&nodes, &settings).await;
    case_a_version_failing_on_one_node_rolls_back_on_all(&nodes, &settings, &backends).await;
    let distinct = async || curated_counts(&settings, backends.blobs.as_ref()).await.1;
    nodes
        .finish_and_drain(&settings, &backends, total, distinct)
        .await;
    let blobs = backends.blobs.as_ref();
    case_everything_is_curated_once_with_the_columns_of_its_version(&settings, blobs, total).await;
    case_a_node_restarted_alone_runs_the_stored_version_and_replays_with_it(
        &mut nodes, &settings, blobs, total,
    )
    .await;
    demo.stop().await;
    eprintln!("cluster swap test took {:?}", test_start.elapsed());
}

/// Two swaps at once on two nodes: one wins by compare-and-swap, the other
/// gets 409 naming the winner, and every node runs the winner.
async fn case_two_swaps_at_once_one_wins_and_the_other_learns_the_winner(nodes: &Nodes) {
    let first = json!({"version": "v2", "sql": "SELECT *, amount * 2 AS amount_x2 FROM batch", "probation_secs": 2});
    let second = json!({"version": "v2b", "sql": "SELECT *, amount * 3 AS amount_x3 FROM batch", "probation_secs": 2});
    let (ra, rb) = tokio::join!(
        nodes.call("a", Method::POST, "/transform", Some(&first)),
        nodes.call("b", Method::POST, "/transform", Some(&second)),
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let (won, lost) = if ra.0 == StatusCode::OK {
        (ra, rb)
    } else {
        (rb, ra)
    };
    assert_eq!(won.0, StatusCode::OK, "{won:?} {lost:?};{}", nodes.tails());
    assert_eq!(won.1["outcome"], "promoted", "{won:?}");
    let winner = won.1["version"].as_str().unwrap().to_string();
    assert_eq!(lost.0, StatusCode::CONFLICT, "{lost:?}");
    assert!(
        lost.1.to_string().contains(&winner),
        "the loser is not told the winner {winner}: {lost:?}"
    );
    until_all_run(nodes, &["a", "b", "c"], &winner, Duration::from_secs(30)).await;
}

/// v3 proposed on a; a is SIGKILLed during the probation and d starts: the
/// survivors and the newcomer apply it, and one of them promotes it.
async fn case_a_swap_outlives_its_killed_initiator_and_reaches_a_newcomer(
    nodes: &mut Nodes,
    backends: &Backends,
) {
    let v3 = json!({"version": "v3", "sql": V3_SQL, "probation_secs": 10});
    let swap = {
        let admin = nodes.admin("a");
        tokio::spawn(async move {
            let _ = admin.try_call(Method::POST, "/transform", Some(&v3)).await;
        })
    };
    until_log(nodes, backends, "v3 in probation", 100, |log| {
        log.probation
            .is_some_and(|p| log.entry(p.seq).is_some_and(|e| e.version == "v3"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    nodes.kill("a");
    let _ = swap.await;
    nodes.start("d");
    until_log(nodes, backends, "v3 decided", 200, |log| {
        let v3 = log.by_version("v3").unwrap();
        if v3.outcome == Outcome::Promoted {
            assert_eq!(log.active, v3.seq);
            assert_eq!(log.stable, v3.seq);
            return true;
        }
        assert_eq!(v3.outcome, Outcome::Probation, "{log:?}");
        false
    })
    .await;
    nodes.until_ready("d", Duration::from_secs(60)).await;
    until_all_run(nodes, &["b", "c", "d"], "v3", Duration::from_secs(30)).await;
    // d started while v3 was in probation: it started with the stable
    // version and applied v3 through the probation like the others.
    let (_, d) = nodes.admin("d").call(Method::GET, "/transform", None).await;
    let applied = d["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["version"] == "v3" && e["outcome"] == "applied");
    assert!(applied, "{d}");
    let (_, d_status) = nodes.admin("d").call(Method::GET, "/status", None).await;
    assert_eq!(d_status["transform"]["version"], "v3", "{d_status}");
    assert_eq!(d_status["transform"]["drift"], true, "{d_status}");
}

/// Source settings swapped through any node: applied by the node holding
/// the fetcher lease, known to every node for its next start.
async fn case_source_settings_swapped_anywhere_reach_every_node(
    nodes: &Nodes,
    settings: &Settings,
) {
    let mut smaller = serde_json::to_value(&settings.source_configs[0]).unwrap();
    smaller["query"]["limit"] = json!("500");
    let swap = json!({"version": "pages-500", "source": smaller, "probation_secs": 2});
    let answer = nodes.admin("c").post("/sources/demo", swap).await;
    assert_swapped(&answer, "promoted", None, &nodes.tails());
    until_all_sources(nodes, &["b", "c", "d"], "pages-500").await;
}

/// v4 fails on records that arrive after it starts, on whichever node
/// meets one first: rolled back on every node.
async fn case_a_version_failing_on_one_node_rolls_back_on_all(
    nodes: &Nodes,
    settings: &Settings,
    backends: &Backends,
) {
    let conditions = common::records_after_now(settings.data_dir(), PARTITIONS as u32, 50).await;
    let failing = format!(
        "SELECT *, amount * 100 AS amount_cents, CAST(CASE WHEN {conditions} THEN 'boom' ELSE '1' END AS INT) AS check_value FROM batch"
    );
    let swap = json!({"version": "v4", "sql": failing, "probation_secs": 60});
    let answer = nodes.admin("b").post("/transform", swap).await;
    assert_swapped(&answer, "rolled_back", Some("v3"), &nodes.tails());
    let log = spec_log(backends).await;
    let v4 = log.by_version("v4").unwrap();
    assert_eq!(v4.outcome, Outcome::RolledBack);
    assert!(
        v4.detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("node "),
        "{v4:?}"
    );
    assert_eq!(log.active_entry().unwrap().version, "v3");
    until_all_run(nodes, &["b", "c", "d"], "v3", Duration::from_secs(30)).await;
}

/// Everything curated exactly once; rows curated by v3 carry its column.
async fn case_everything_is_curated_once_with_the_columns_of_its_version(
    settings: &Settings,
    blobs: &dyn BlobStore,
    total: u64,
) {
    let counts = curated_counts(settings, blobs).await;
    if counts != (total, total) {
        let holes = "SELECT p, s AS last_before, next_s AS first_after FROM (\
                     SELECT _hub_partition AS p, _hub_sequence AS s, lead(_hub_sequence) \
                     OVER (PARTITION BY _hub_partition ORDER BY _hub_sequence) AS next_s FROM demo) \
                     WHERE next_s > s + 1";
        let holes = curated_rows(settings, blobs, holes).await;
        let missing = missing_report(settings, blobs, total).await;
        panic!(
            "curated {counts:?}, not ({total}, {total}); holes in the sequence: {holes:?}\n{missing}"
        );
    }
    let wrong = "SELECT count(*) AS n FROM demo WHERE _transform_version = 'v3' \
                 AND amount IS NOT NULL AND (amount_cents IS NULL OR amount_cents <> amount * 100)";
    assert_eq!(curated_rows(settings, blobs, wrong).await[0]["n"], 0);
    let v3_rows = "SELECT count(*) AS n FROM demo WHERE _transform_version = 'v3'";
    assert!(
        curated_rows(settings, blobs, v3_rows).await[0]["n"]
            .as_u64()
            .unwrap()
            > 0
    );
}

/// A node restarted alone runs the stored v3, not its file's identity, and
/// a replay of deleted files of partition 0 keeps v3's column.
async fn case_a_node_restarted_alone_runs_the_stored_version_and_replays_with_it(
    nodes: &mut Nodes,
    settings: &Settings,
    blobs: &dyn BlobStore,
    total: u64,
) {
    nodes.start("a");
    nodes.until_ready("a", Duration::from_secs(60)).await;
    let (_, status) = nodes.admin("a").call(Method::GET, "/transform", None).await;
    assert_eq!(status["active"]["version"], "v3", "{status}");
    assert_eq!(status["drift"], true, "{status}");
    let container = &settings.storage.curated_container;
    let mut p0: Vec<String> = blobs
        .list(container, "")
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .filter(|n| n.contains("ingest-p0000-") && n.ends_with(".parquet"))
        .collect();
    p0.sort();
    for name in p0.iter().take(5) {
        blobs.delete(container, name, None).await.unwrap();
    }
    let a = nodes.admin("a");
    let (code, started) = a.post("/replay", json!({"partition": 0})).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["transform_version"], "v3", "{started}");
    let done = a.replay_finished(started["id"].as_u64().unwrap()).await;
    assert_eq!(done["state"], "completed", "{done}");
    let status = nodes.drain("a", Duration::from_secs(30)).await;
    assert!(status.success(), "a exited with {status}");
    assert_eq!(curated_counts(settings, blobs).await, (total, total));
    let p0_lost = "SELECT count(*) AS n FROM demo WHERE _hub_partition = 0 AND amount IS NOT NULL \
                   AND (amount_cents IS NULL OR _transform_version <> 'v3')";
    assert_eq!(curated_rows(settings, blobs, p0_lost).await[0]["n"], 0);
}

/// For a failure message: the demo ids (`evt-N`, N < `total`) missing from
/// curated, and every copy of each in the raw blobs (blob, sequence number,
/// fetch time), so a loss can be placed before or after the raw landing.
async fn missing_report(settings: &Settings, blobs: &dyn BlobStore, total: u64) -> String {
    let rows = curated_rows(settings, blobs, "SELECT DISTINCT id FROM demo").await;
    let have: std::collections::BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let missing: Vec<String> = (0..total)
        .map(|i| format!("evt-{i:08}"))
        .filter(|id| !have.contains(id))
        .collect();
    let mut copies: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let container = &settings.storage.raw_container;
    for blob in blobs.list(container, "").await.unwrap_or_default() {
        let Ok((bytes, _)) = blobs.get(container, &blob.name).await else {
            continue;
        };
        let Ok(batch) = hubflow_actors::formats::raw::decode(&bytes) else {
            copies
                .entry("(undecodable)".into())
                .or_default()
                .push(blob.name.clone());
            continue;
        };
        for r in batch.records.iter().filter(|r| missing.contains(&r.id)) {
            copies.entry(r.id.clone()).or_default().push(format!(
                "{} seq {} fetched {}",
                blob.name, r.sequence_number, r.fetched_time_ms
            ));
        }
    }
    format!("missing ids: {missing:?}\ntheir copies in raw: {copies:#?}")
}
