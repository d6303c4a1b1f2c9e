//! The embedded backends against the port contracts, plus what only a real
//! disk and several processes can show: conditional puts and hub sequence
//! numbers stay atomic across processes, and published events survive a
//! reopen and a crash.
//!
//! Cross-process tests re-run this test binary as child processes, selecting
//! one `child_*` test with `--exact` and passing its parameters in
//! environment variables. Run without those variables (a normal `cargo
//! test`), the `child_*` tests return at once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::common::contract::{blob_store_contract, hub_contract, unique_name};
use bytes::Bytes;
use hubflow::embedded::{FsBlobStore, SqliteHub};
use hubflow_actors::ports::{
    BlobError, BlobProperties, BlobStore, EventData, Hub, HubError, PublishTarget, PutCondition,
    ReceivedEvent, StartPosition, partition_for_key,
};

const CHILD_ROLE: &str = "HUBFLOW_TEST_CHILD_ROLE";
const CHILD_PATH: &str = "HUBFLOW_TEST_CHILD_PATH";
const CHILD_TAG: &str = "HUBFLOW_TEST_CHILD_TAG";
/// How the crashing child exits (not through the test harness).
const CRASH_EXIT_CODE: i32 = 42;
const CHILD_TIMEOUT: Duration = Duration::from_secs(180);

/// Blob counter: increments per task, and tasks per process.
const CAS_INCREMENTS: u64 = 25;
const CAS_TASKS: u64 = 2;
/// Hub publishers: batches per publisher, events per batch.
const HUB_BATCHES: usize = 40;
const HUB_BATCH_EVENTS: usize = 3;

fn hub_file(dir: &Path) -> PathBuf {
    dir.join("hub.sqlite")
}

fn open_hub(path: &Path, name: &str, partitions: u32) -> SqliteHub {
    SqliteHub::open(path, name, partitions, None)
        .unwrap_or_else(|e| panic!("cannot open hub {name} at {}: {e}", path.display()))
}

/// Receive until `count` events arrived; panics after 30 s.
async fn read_all(hub: &dyn Hub, partition: u32, count: usize) -> Vec<ReceivedEvent> {
    let mut receiver = hub
        .open_receiver("$Default", partition, StartPosition::Earliest)
        .await
        .expect("open receiver");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut events = Vec::new();
    while events.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} events arrived",
            events.len()
        );
        events.extend(
            receiver
                .receive(1000, Duration::from_millis(200))
                .await
                .expect("receive"),
        );
    }
    assert_eq!(events.len(), count, "more events than published");
    events
}

/// Run this binary's test `name` in a child process with the given role.
async fn run_child(name: &str, role: &str, path: &Path, tag: &str) -> tokio::process::Child {
    let exe = std::env::current_exe().expect("current test binary");
    // Test names in the suite binary carry their module path.
    let name = format!("contract_embedded::{name}");
    tokio::process::Command::new(exe)
        .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_PATH, path)
        .env(CHILD_TAG, tag)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn child {name}: {e}"))
}

/// Wait for a child; panics unless it exits with `code`, showing its output.
async fn wait_child(child: tokio::process::Child, what: &str, code: i32) {
    let output = tokio::time::timeout(CHILD_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{what}: child did not finish within {CHILD_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: cannot wait for child: {e}"));
    assert_eq!(
        output.status.code(),
        Some(code),
        "{what}: child exited with {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// The child's parameters, when this process is a child in `role`.
fn child_params(role: &str) -> Option<(PathBuf, String)> {
    if std::env::var(CHILD_ROLE).ok()? != role {
        return None;
    }
    let path = PathBuf::from(std::env::var_os(CHILD_PATH)?);
    let tag = std::env::var(CHILD_TAG).ok()?;
    Some((path, tag))
}

// ---------------------------------------------------------------- contracts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_blob_store_passes_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsBlobStore::new(dir.path().join("blobs")).expect("open store");
    blob_store_contract(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hub_passes_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hub_file(dir.path());
    hub_contract(|name, partitions| Arc::new(open_hub(&path, name, partitions)) as Arc<dyn Hub>)
        .await;
}

// --------------------------------------------------------------- blob store

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_if_none_match_has_exactly_one_winner() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two handles on one root, as two processes would have.
    let a = FsBlobStore::new(dir.path()).expect("open store");
    let b = FsBlobStore::new(dir.path()).expect("open store");
    a.create_container("state").await.expect("create container");

    let tasks = (0..32).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            store
                .put(
                    "state",
                    "lease/fetcher",
                    Bytes::from(format!("owner-{i}")),
                    PutCondition::IfNoneMatch,
                )
                .await
                .map(|_| i)
        })
    });
    let mut winners = Vec::new();
    for result in futures::future::join_all(tasks).await {
        match result.expect("task") {
            Ok(i) => winners.push(i),
            Err(BlobError::AlreadyExists { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one IfNoneMatch put must win: {winners:?}"
    );
    let (bytes, _) = a.get("state", "lease/fetcher").await.expect("get");
    assert_eq!(bytes, Bytes::from(format!("owner-{}", winners[0])));
}

/// Increment the decimal counter in `name` by etag compare-and-swap.
async fn cas_increment(store: &FsBlobStore, name: &str) -> u64 {
    let mut conflicts = 0;
    loop {
        let (bytes, props) = store.get("state", name).await.expect("get counter");
        let value: u64 = std::str::from_utf8(&bytes)
            .expect("utf-8 counter")
            .parse()
            .expect("numeric counter");
        match store
            .put(
                "state",
                name,
                Bytes::from((value + 1).to_string()),
                PutCondition::IfMatch(props.etag),
            )
            .await
        {
            Ok(_) => return conflicts,
            Err(e) if e.is_conflict() => {
                conflicts += 1;
                assert!(
                    conflicts < 100_000,
                    "no progress after {conflicts} conflicts"
                );
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("counter put failed: {e}"),
        }
    }
}

async fn cas_worker(store: FsBlobStore) -> u64 {
    let tasks = (0..CAS_TASKS).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut conflicts = 0;
            for _ in 0..CAS_INCREMENTS {
                conflicts += cas_increment(&store, "counter").await;
            }
            conflicts
        })
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("cas task"))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_blob_cas_worker() {
    let Some((root, _)) = child_params("blob-cas") else {
        return;
    };
    let store = FsBlobStore::new(root).expect("open store in child");
    cas_worker(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_counter_is_exact_across_processes_and_handles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let store = FsBlobStore::new(&root).expect("open store");
    store
        .create_container("state")
        .await
        .expect("create container");
    store
        .put(
            "state",
            "counter",
            Bytes::from("0"),
            PutCondition::IfNoneMatch,
        )
        .await
        .expect("initial counter");

    let children = [
        run_child("child_blob_cas_worker", "blob-cas", &root, "c1").await,
        run_child("child_blob_cas_worker", "blob-cas", &root, "c2").await,
    ];
    // Two more handles in this process race the children.
    let local = [
        tokio::spawn(cas_worker(FsBlobStore::new(&root).expect("open store"))),
        tokio::spawn(cas_worker(FsBlobStore::new(&root).expect("open store"))),
    ];
    for child in children {
        wait_child(child, "blob cas child", 0).await;
    }
    let mut conflicts = 0;
    for task in local {
        conflicts += task.await.expect("local cas worker");
    }

    let (bytes, _) = store.get("state", "counter").await.expect("get counter");
    let expected = 4 * CAS_TASKS * CAS_INCREMENTS;
    assert_eq!(
        bytes,
        Bytes::from(expected.to_string()),
        "every increment must land exactly once ({conflicts} local conflicts retried)"
    );
    let listed = store.list("state", "").await.expect("list");
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["counter"],
        "no temp or lock files may be listed"
    );
}

#[tokio::test]
async fn fs_blob_store_layout_and_housekeeping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsBlobStore::new(dir.path()).expect("open store");
    assert_eq!(store.root(), dir.path());
    store
        .create_container("curated")
        .await
        .expect("create container");
    let name = "src/date=2024-01-01/hour=00/part.parquet";
    let on_disk = case_a_blob_is_a_plain_file_with_an_etag_every_handle_sees(&store, name).await;
    case_stray_temp_files_are_never_listed_and_old_ones_are_swept(&store, &on_disk).await;
    case_reserved_names_and_blobs_under_blobs_are_refused(&store).await;
    case_deleting_the_last_blob_under_a_prefix_frees_its_name(&store, name).await;
}

/// `put` into container "curated", unconditionally.
async fn put_curated(
    store: &FsBlobStore,
    name: &str,
    body: &'static [u8],
) -> Result<BlobProperties, BlobError> {
    store
        .put(
            "curated",
            name,
            Bytes::from_static(body),
            PutCondition::None,
        )
        .await
}

/// The blob is a plain file a query engine can read, and its etag is the
/// same through another handle (and so across processes). Its path.
async fn case_a_blob_is_a_plain_file_with_an_etag_every_handle_sees(
    store: &FsBlobStore,
    name: &str,
) -> PathBuf {
    let written = put_curated(store, name, b"PAR1").await.expect("put");
    let on_disk = store.container_path("curated").join(name);
    assert_eq!(std::fs::read(&on_disk).expect("read file"), b"PAR1");
    let other = FsBlobStore::new(store.root()).expect("second handle");
    let props = other.properties("curated", name).await.expect("properties");
    assert_eq!(props.etag, written.etag);
    on_disk
}

/// A stray temp file from a crashed writer is never listed, and is swept
/// once old enough.
async fn case_stray_temp_files_are_never_listed_and_old_ones_are_swept(
    store: &FsBlobStore,
    on_disk: &Path,
) {
    let stray = on_disk.with_file_name(".hubflow-tmp-1-dead");
    std::fs::write(&stray, b"partial").expect("write stray temp");
    let listed = store.list("curated", "").await.expect("list");
    assert_eq!(listed.len(), 1, "temp files must not be listed: {listed:?}");
    assert_eq!(
        store
            .remove_stale_temp_files("curated", Duration::from_secs(3600))
            .await
            .expect("sweep"),
        0,
        "a young temp file is left alone"
    );
    assert_eq!(
        store
            .remove_stale_temp_files("curated", Duration::ZERO)
            .await
            .expect("sweep"),
        1
    );
    assert!(!stray.exists());
}

/// Reserved names are refused; a blob cannot also be a "directory" on
/// disk: a typed error, no panic.
async fn case_reserved_names_and_blobs_under_blobs_are_refused(store: &FsBlobStore) {
    match store
        .put(
            "curated",
            "x/.hubflow-lock",
            Bytes::new(),
            PutCondition::None,
        )
        .await
    {
        Err(BlobError::InvalidName { .. }) => {}
        other => panic!("expected InvalidName, got {other:?}"),
    }
    put_curated(store, "file", b"1").await.expect("put file");
    match put_curated(store, "file/child", b"2").await {
        Err(BlobError::Other { .. }) => {}
        other => panic!("expected Other for a blob under a blob, got {other:?}"),
    }
    match store.get("curated", "file/child").await {
        Err(BlobError::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// Deleting the last blob under a prefix frees that name for a blob.
async fn case_deleting_the_last_blob_under_a_prefix_frees_its_name(
    store: &FsBlobStore,
    name: &str,
) {
    store.delete("curated", name, None).await.expect("delete");
    put_curated(store, "src", b"now a blob")
        .await
        .expect("put where a directory used to be");
    let names: Vec<String> = store
        .list("curated", "")
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["file", "src"]);
}

// ---------------------------------------------------------------------- hub

async fn publish_batches(hub: &SqliteHub, tag: &str) {
    for i in 0..HUB_BATCHES {
        let batch = (0..HUB_BATCH_EVENTS)
            .map(|j| EventData::new(format!("{tag}/{i}/{j}")))
            .collect();
        hub.publish(PublishTarget::Partition(0), batch)
            .await
            .unwrap_or_else(|e| panic!("{tag}: publish {i} failed: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_hub_publisher() {
    let Some((path, tag)) = child_params("hub-publish") else {
        return;
    };
    let hub = open_hub(&path, "shared", 2);
    publish_batches(&hub, &tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hub_sequence_numbers_are_gap_free_across_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hub_file(dir.path());
    // Two handles in this process, with separate connection pools.
    let a = open_hub(&path, "shared", 2);
    let b = open_hub(&path, "shared", 2);

    let children = [
        run_child("child_hub_publisher", "hub-publish", &path, "child1").await,
        run_child("child_hub_publisher", "hub-publish", &path, "child2").await,
    ];
    let (a2, b2) = (a.clone(), b.clone());
    let local = [
        tokio::spawn(async move { publish_batches(&a2, "handle-a").await }),
        tokio::spawn(async move { publish_batches(&b2, "handle-b").await }),
    ];
    for child in children {
        wait_child(child, "hub publisher child", 0).await;
    }
    for task in local {
        task.await.expect("local publisher");
    }

    let total = 4 * HUB_BATCHES * HUB_BATCH_EVENTS;
    let events = read_all(&b, 0, total).await;
    let seqs: Vec<i64> = events.iter().map(|e| e.sequence_number).collect();
    assert_eq!(
        seqs,
        (0..total as i64).collect::<Vec<_>>(),
        "sequence numbers must be gap-free"
    );
    let bodies: BTreeSet<String> = events
        .iter()
        .map(|e| String::from_utf8(e.body.to_vec()).expect("utf-8 body"))
        .collect();
    assert_eq!(bodies.len(), total, "every event exactly once");
    for tag in ["child1", "child2", "handle-a", "handle-b"] {
        let n = bodies
            .iter()
            .filter(|b| b.starts_with(&format!("{tag}/")))
            .count();
        assert_eq!(n, HUB_BATCHES * HUB_BATCH_EVENTS, "all of {tag}'s events");
    }
    // Batches are contiguous.
    for batch in events.chunks(HUB_BATCH_EVENTS) {
        let first = String::from_utf8_lossy(&batch[0].body).into_owned();
        let prefix = first
            .rsplit_once('/')
            .map(|(p, _)| p.to_string())
            .expect("body shape");
        for (j, e) in batch.iter().enumerate() {
            assert_eq!(
                e.body,
                Bytes::from(format!("{prefix}/{j}")),
                "batch split up"
            );
        }
    }
    let offsets: BTreeSet<i64> = events
        .iter()
        .map(|e| e.offset.parse::<i64>().expect("numeric offset"))
        .collect();
    assert_eq!(offsets.len(), total, "offsets must be unique");
    let parsed: Vec<i64> = events
        .iter()
        .map(|e| e.offset.parse().expect("offset"))
        .collect();
    assert!(
        parsed.windows(2).all(|w| w[0] < w[1]),
        "offsets must increase"
    );
    let props = a.partition_properties(0).await.expect("properties");
    assert_eq!(props.last_enqueued_sequence_number, total as i64 - 1);
    assert!(
        a.partition_properties(1)
            .await
            .expect("properties")
            .is_empty
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_hub_crasher() {
    let Some((path, tag)) = child_params("hub-crash") else {
        return;
    };
    let hub = open_hub(&path, "durable", 1);
    publish_batches(&hub, &tag).await;
    // Die without closing anything: no WAL checkpoint, no destructors.
    std::process::exit(CRASH_EXIT_CODE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_survive_reopen_and_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hub_file(dir.path());
    {
        let hub = open_hub(&path, "durable", 1);
        publish_batches(&hub, "before-drop").await;
    }
    // The child publishes, then exits without any cleanup.
    wait_child(
        run_child("child_hub_crasher", "hub-crash", &path, "crashed").await,
        "crashing publisher",
        CRASH_EXIT_CODE,
    )
    .await;

    let hub = open_hub(&path, "durable", 1);
    let total = 2 * HUB_BATCHES * HUB_BATCH_EVENTS;
    let events = read_all(&hub, 0, total).await;
    assert_eq!(
        events.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
        (0..total as i64).collect::<Vec<_>>()
    );
    assert_eq!(events[0].body, Bytes::from("before-drop/0/0"));
    assert_eq!(
        events[total - 1].body,
        Bytes::from(format!(
            "crashed/{}/{}",
            HUB_BATCHES - 1,
            HUB_BATCH_EVENTS - 1
        ))
    );
    // Numbering continues after the reopen.
    hub.publish(PublishTarget::Partition(0), vec![EventData::new("after")])
        .await
        .expect("publish after reopen");
    let props = hub.partition_properties(0).await.expect("properties");
    assert_eq!(props.last_enqueued_sequence_number, total as i64);

    // The partition count is fixed once the hub exists.
    match SqliteHub::open(&path, "durable", 4, None) {
        Err(HubError::Other { message, .. }) => {
            assert!(
                message.contains("1 partitions"),
                "message names the count: {message}"
            )
        }
        Ok(_) => panic!("reopening with another partition count must fail"),
        Err(e) => panic!("expected HubError::Other, got {e}"),
    }
    // Another hub in the same file is independent.
    let other = open_hub(&path, "other", 4);
    assert!(
        other
            .partition_properties(0)
            .await
            .expect("properties")
            .is_empty
    );
}

#[tokio::test]
async fn hub_retention_prunes_old_events_and_keeps_numbering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hour = Duration::from_secs(3600);
    let hub = SqliteHub::open(&hub_file(dir.path()), "ret", 1, Some(hour)).expect("open");
    let batch = |n: usize| (0..n).map(|i| EventData::new(format!("e{i}"))).collect();
    hub.publish(PublishTarget::Partition(0), batch(10))
        .await
        .expect("publish");
    let now = chrono::Utc::now().timestamp_millis();

    assert_eq!(hub.prune(now).await.expect("prune"), 0, "young events stay");
    let two_hours_later = now + 2 * 3600 * 1000;
    assert_eq!(hub.prune(two_hours_later).await.expect("prune"), 10);
    let props = hub.partition_properties(0).await.expect("properties");
    assert!(props.is_empty, "{props:?}");
    assert_eq!(
        props.last_enqueued_sequence_number, 9,
        "numbering survives retention"
    );
    assert_eq!(props.beginning_sequence_number, 10);

    hub.publish(PublishTarget::Partition(0), batch(2))
        .await
        .expect("publish");
    let mut receiver = hub
        .open_receiver("$Default", 0, StartPosition::after(3))
        .await
        .expect("receiver");
    let events = receiver
        .receive(10, Duration::from_secs(5))
        .await
        .expect("receive");
    assert_eq!(
        events.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
        [10, 11],
        "a reader behind retention resumes at the first retained event"
    );
    let props = hub.partition_properties(0).await.expect("properties");
    assert_eq!(props.beginning_sequence_number, 10);

    let keepall = SqliteHub::open(&hub_file(dir.path()), "keep", 1, None).expect("open");
    keepall
        .publish(PublishTarget::Partition(0), batch(1))
        .await
        .expect("publish");
    assert_eq!(
        keepall.prune(two_hours_later).await.expect("prune"),
        0,
        "no retention, no pruning"
    );
}

#[tokio::test]
async fn hub_keys_batch_limit_and_atomicity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = SqliteHub::open(&hub_file(dir.path()), "limits", 4, None)
        .expect("open")
        .with_max_batch_bytes(1000);

    let key = unique_name("record");
    hub.publish(
        PublishTarget::PartitionKey(key.clone()),
        vec![EventData::new("k")],
    )
    .await
    .expect("keyed publish");
    let p = partition_for_key(&key, 4);
    let props = hub.partition_properties(p).await.expect("properties");
    assert_eq!(
        props.last_enqueued_sequence_number, 0,
        "key {key} must land in partition {p}"
    );

    // A partition the key did not touch.
    let unkeyed = (p + 1) % 4;
    let big = vec![
        EventData::new(vec![0u8; 600]),
        EventData::new(vec![1u8; 600]),
    ];
    match hub.publish(PublishTarget::Partition(unkeyed), big).await {
        Err(HubError::BatchTooLarge { size, limit, .. }) => {
            assert!(size >= 1200);
            assert_eq!(limit, 1000);
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    let props = hub.partition_properties(unkeyed).await.expect("properties");
    assert!(props.is_empty, "a refused batch appends nothing: {props:?}");

    hub.publish(PublishTarget::Partition(unkeyed), Vec::new())
        .await
        .expect("an empty publish is a no-op");
    assert!(
        hub.partition_properties(unkeyed)
            .await
            .expect("properties")
            .is_empty
    );

    let mut receiver = hub
        .open_receiver("$Default", unkeyed, StartPosition::Earliest)
        .await
        .expect("receiver");
    assert!(
        receiver
            .receive(0, Duration::from_secs(5))
            .await
            .expect("receive")
            .is_empty()
    );
}
