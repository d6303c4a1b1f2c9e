//! Contract suites for the ports: one set of assertions every backend must
//! pass (the embedded ones, the in-memory fakes, the Azure adapters against
//! Azurite), so they stay interchangeable.
//!
//! This is test-support code: the suites **panic** with a message naming the
//! broken rule on the first violation, like `assert!` does. Each call uses
//! fresh, randomly named containers and hubs, so suites may run concurrently
//! against one shared backend. Container names are valid Azure names
//! (lowercase letters, digits and `-`, 3 to 63 characters).
//!
//! - [`blob_store_contract`]: puts, gets, ranges, etags, conditional puts and
//!   deletes, listing, typed errors.
//! - [`hub_contract`]: partitions, consecutive sequence numbers, start
//!   positions, batch bounds, waiting, partition keys, properties.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use bytes::Bytes;
use hubflow_actors::ports::{
    BlobError, BlobStore, ETag, EventData, Hub, HubError, PartitionReceiver, PublishTarget,
    PutCondition, ReceivedEvent, StartPosition,
};

/// A fresh name, unique across calls and processes, valid as an Azure
/// container or hub name.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Run the blob store contract against `store`. Panics on the first violation.
pub async fn blob_store_contract(store: Arc<dyn BlobStore>) {
    let store = store.as_ref();
    let c = unique_name("contract");
    store
        .create_container(&c)
        .await
        .unwrap_or_else(|e| panic!("create_container({c}) failed: {e}"));
    store
        .create_container(&c)
        .await
        .unwrap_or_else(|e| panic!("create_container must be idempotent, second call: {e}"));

    missing_blobs(store, &c).await;
    put_get_and_etags(store, &c).await;
    conditional_puts(store, &c).await;
    ranges(store, &c).await;
    listing(store, &c).await;
    deletes(store, &c).await;
    invalid_names(store, &c).await;
    missing_container(store).await;
}

async fn missing_blobs(store: &dyn BlobStore, c: &str) {
    let name = "missing/blob";
    expect_not_found(
        store.get(c, name).await.map(|_| ()),
        "get of a missing blob",
    );
    expect_not_found(
        store.get_range(c, name, 0..10).await.map(|_| ()),
        "get_range of a missing blob",
    );
    expect_not_found(
        store.properties(c, name).await.map(|_| ()),
        "properties of a missing blob",
    );
    expect_not_found(
        store.delete(c, name, None).await,
        "delete of a missing blob",
    );
}

fn expect_not_found(result: Result<(), BlobError>, what: &str) {
    match result {
        Err(BlobError::NotFound { .. }) => {}
        other => panic!("{what}: expected BlobError::NotFound, got {other:?}"),
    }
}

async fn put(store: &dyn BlobStore, c: &str, name: &str, data: &[u8]) -> ETag {
    store
        .put(c, name, Bytes::copy_from_slice(data), PutCondition::None)
        .await
        .unwrap_or_else(|e| panic!("unconditional put of {name} failed: {e}"))
        .etag
}

async fn content(store: &dyn BlobStore, c: &str, name: &str) -> Bytes {
    store
        .get(c, name)
        .await
        .unwrap_or_else(|e| panic!("get of {name} failed: {e}"))
        .0
}

async fn put_get_and_etags(store: &dyn BlobStore, c: &str) {
    let name = "dir/sub/first.bin";
    let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let before = now_ms();
    let props = store
        .put(c, name, Bytes::from(data.clone()), PutCondition::None)
        .await
        .unwrap_or_else(|e| panic!("put of {name} failed: {e}"));
    assert_eq!(props.name, name, "put must report the blob's name");
    assert_eq!(props.size, 5000, "put must report the blob's size");
    assert!(!props.etag.0.is_empty(), "put must return a non-empty etag");
    let ten_minutes = 10 * 60 * 1000;
    assert!(
        (props.last_modified_ms - before).abs() < ten_minutes,
        "last_modified_ms {} is not close to now {before}",
        props.last_modified_ms
    );

    let (bytes, got) = store
        .get(c, name)
        .await
        .unwrap_or_else(|e| panic!("get of {name} failed: {e}"));
    assert_eq!(
        bytes.as_ref(),
        data.as_slice(),
        "get must return the bytes put"
    );
    assert_eq!(
        got.etag, props.etag,
        "get must return the etag put returned"
    );
    assert_eq!(got.size, 5000, "get must report the size");
    assert_eq!(got.name, name, "get must report the name");

    let seen = store
        .properties(c, name)
        .await
        .unwrap_or_else(|e| panic!("properties of {name} failed: {e}"));
    assert_eq!(
        seen.etag, props.etag,
        "properties must report the current etag"
    );
    assert_eq!(seen.size, 5000, "properties must report the size");
    assert_eq!(seen.name, name, "properties must report the name");

    let second = put(store, c, name, b"replaced").await;
    assert_ne!(
        second, props.etag,
        "a put of different bytes must change the etag"
    );
    assert_eq!(content(store, c, name).await.as_ref(), b"replaced");
    let (_, after) = store
        .get(c, name)
        .await
        .unwrap_or_else(|e| panic!("get: {e}"));
    assert_eq!(
        after.etag, second,
        "get must report the etag of the last put"
    );
    assert_eq!(after.size, 8);

    let empty = put(store, c, "empty", b"").await;
    assert!(!empty.0.is_empty(), "an empty blob still has an etag");
    let (bytes, props) = store
        .get(c, "empty")
        .await
        .unwrap_or_else(|e| panic!("get empty: {e}"));
    assert!(bytes.is_empty(), "an empty blob reads back empty");
    assert_eq!(props.size, 0);
}

/// `put` of `data` under `condition`, as the store answers it.
async fn put_if(
    store: &dyn BlobStore,
    c: &str,
    name: &str,
    data: &'static [u8],
    condition: PutCondition,
) -> Result<hubflow_actors::ports::BlobProperties, BlobError> {
    store
        .put(c, name, Bytes::from_static(data), condition)
        .await
}

async fn conditional_puts(store: &dyn BlobStore, c: &str) {
    let name = "state/record.json";
    let created = put_if(store, c, name, b"v1", PutCondition::IfNoneMatch)
        .await
        .unwrap_or_else(|e| panic!("IfNoneMatch put of a new blob must succeed: {e}"));

    match put_if(store, c, name, b"v1-again", PutCondition::IfNoneMatch).await {
        Err(e @ BlobError::AlreadyExists { .. }) => {
            assert!(e.is_conflict(), "AlreadyExists must be a conflict")
        }
        other => {
            panic!("IfNoneMatch put of an existing blob: expected AlreadyExists, got {other:?}")
        }
    }
    assert_eq!(
        content(store, c, name).await.as_ref(),
        b"v1",
        "a refused put must not write"
    );

    let updated = put_if(
        store,
        c,
        name,
        b"v2",
        PutCondition::IfMatch(created.etag.clone()),
    )
    .await
    .unwrap_or_else(|e| panic!("IfMatch put with the current etag must succeed: {e}"));
    assert_ne!(
        updated.etag, created.etag,
        "an IfMatch put of new bytes must change the etag"
    );

    match put_if(
        store,
        c,
        name,
        b"v3",
        PutCondition::IfMatch(created.etag.clone()),
    )
    .await
    {
        Err(e @ BlobError::PreconditionFailed { .. }) => {
            assert!(e.is_conflict(), "PreconditionFailed must be a conflict")
        }
        other => {
            panic!("IfMatch put with a stale etag: expected PreconditionFailed, got {other:?}")
        }
    }
    assert_eq!(
        content(store, c, name).await.as_ref(),
        b"v2",
        "a refused put must not write"
    );

    match put_if(
        store,
        c,
        "state/never-written.json",
        b"x",
        PutCondition::IfMatch(updated.etag.clone()),
    )
    .await
    {
        Err(BlobError::PreconditionFailed { .. }) => {}
        other => {
            panic!("IfMatch put of a missing blob: expected PreconditionFailed, got {other:?}")
        }
    }
    expect_not_found(
        store.get(c, "state/never-written.json").await.map(|_| ()),
        "get after a refused IfMatch put of a missing blob",
    );

    // Unconditional put over an existing blob replaces it.
    let replaced = put(store, c, name, b"v4").await;
    assert_ne!(replaced, updated.etag);
    match put_if(store, c, name, b"v5", PutCondition::IfMatch(updated.etag)).await {
        Err(BlobError::PreconditionFailed { .. }) => {}
        other => panic!(
            "IfMatch with the etag from before an unconditional put: expected PreconditionFailed, got {other:?}"
        ),
    }
}

async fn ranges(store: &dyn BlobStore, c: &str) {
    let name = "ranges/ten";
    put(store, c, name, b"0123456789").await;
    let cases: [(std::ops::Range<u64>, &[u8]); 6] = [
        (0..3, b"012"),
        (2..5, b"234"),
        (7..100, b"789"),
        (0..10, b"0123456789"),
        (10..20, b""),
        (50..60, b""),
    ];
    for (range, want) in cases {
        let got = store
            .get_range(c, name, range.clone())
            .await
            .unwrap_or_else(|e| panic!("get_range({range:?}) failed: {e}"));
        assert_eq!(
            got.as_ref(),
            want,
            "get_range({range:?}) returned the wrong bytes"
        );
    }
}

async fn listing(store: &dyn BlobStore, c: &str) {
    // Written out of order on purpose.
    for name in ["list/p/b", "list/q/x", "list/p/a", "list/pa", "list/p/c/d"] {
        put(store, c, name, name.as_bytes()).await;
    }
    let names = |props: &[hubflow_actors::ports::BlobProperties]| {
        props.iter().map(|p| p.name.clone()).collect::<Vec<_>>()
    };
    let list = |prefix: &'static str| async move {
        store
            .list(c, prefix)
            .await
            .unwrap_or_else(|e| panic!("list({prefix:?}) failed: {e}"))
    };

    let under_p = list("list/p/").await;
    assert_eq!(
        names(&under_p),
        ["list/p/a", "list/p/b", "list/p/c/d"],
        "list must return every blob under the prefix, sorted by name"
    );
    for p in &under_p {
        assert_eq!(p.size, p.name.len() as u64, "list must report sizes");
        let props = store
            .properties(c, &p.name)
            .await
            .unwrap_or_else(|e| panic!("properties({}) failed: {e}", p.name));
        assert_eq!(
            p.etag, props.etag,
            "list must report each blob's current etag"
        );
    }
    assert_eq!(
        names(&list("list/p").await),
        ["list/p/a", "list/p/b", "list/p/c/d", "list/pa"],
        "a prefix is a string prefix, not a directory"
    );
    assert_eq!(
        names(&list("list/").await),
        ["list/p/a", "list/p/b", "list/p/c/d", "list/pa", "list/q/x"],
    );
    assert!(
        list("list/zzz").await.is_empty(),
        "a prefix matching nothing lists nothing"
    );

    let all = names(&list("").await);
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "list(\"\") must be sorted by name");
    for name in [
        "list/p/a",
        "list/q/x",
        "dir/sub/first.bin",
        "state/record.json",
    ] {
        assert!(
            all.iter().any(|n| n == name),
            "list(\"\") is missing {name}: {all:?}"
        );
    }
}

async fn deletes(store: &dyn BlobStore, c: &str) {
    let name = "delete/me";
    let stale = put(store, c, name, b"one").await;
    let current = put(store, c, name, b"two").await;
    match store.delete(c, name, Some(&stale)).await {
        Err(BlobError::PreconditionFailed { .. }) => {}
        other => panic!("delete with a stale etag: expected PreconditionFailed, got {other:?}"),
    }
    assert_eq!(
        content(store, c, name).await.as_ref(),
        b"two",
        "a refused delete must not delete"
    );
    store
        .delete(c, name, Some(&current))
        .await
        .unwrap_or_else(|e| panic!("delete with the current etag failed: {e}"));
    expect_not_found(store.get(c, name).await.map(|_| ()), "get after delete");
    expect_not_found(store.delete(c, name, None).await, "second delete");

    put(store, c, "delete/plain", b"x").await;
    store
        .delete(c, "delete/plain", None)
        .await
        .unwrap_or_else(|e| panic!("unconditional delete failed: {e}"));
    let left = store
        .list(c, "delete/")
        .await
        .unwrap_or_else(|e| panic!("list after deletes failed: {e}"));
    assert!(
        left.is_empty(),
        "deleted blobs must not be listed: {left:?}"
    );

    // The name is free again, even for IfNoneMatch.
    store
        .put(
            c,
            name,
            Bytes::from_static(b"three"),
            PutCondition::IfNoneMatch,
        )
        .await
        .unwrap_or_else(|e| panic!("IfNoneMatch put after delete must succeed: {e}"));
}

async fn invalid_names(store: &dyn BlobStore, c: &str) {
    for name in ["", "/abs", "a//b", "a/../b", "trailing/"] {
        match store
            .put(c, name, Bytes::from_static(b"x"), PutCondition::None)
            .await
        {
            Err(BlobError::InvalidName { .. }) => {}
            other => panic!("put of invalid name {name:?}: expected InvalidName, got {other:?}"),
        }
    }
}

async fn missing_container(store: &dyn BlobStore) {
    let missing = unique_name("absent");
    let expect = |result: Result<(), BlobError>, what: &str| match result {
        Err(BlobError::ContainerNotFound { .. }) => {}
        other => panic!("{what} in a missing container: expected ContainerNotFound, got {other:?}"),
    };
    expect(
        store
            .put(&missing, "a", Bytes::from_static(b"x"), PutCondition::None)
            .await
            .map(|_| ()),
        "put",
    );
    expect(
        store
            .put(
                &missing,
                "a",
                Bytes::from_static(b"x"),
                PutCondition::IfNoneMatch,
            )
            .await
            .map(|_| ()),
        "IfNoneMatch put",
    );
    expect(store.get(&missing, "a").await.map(|_| ()), "get");
    expect(store.list(&missing, "").await.map(|_| ()), "list");
}

/// How long the hub contract waits for events that must arrive.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(20);

/// Run the hub contract. `make(name, partitions)` must return a hub with
/// that many partitions that holds no events yet (the suite passes fresh
/// names); it is called several times. Panics on the first violation.
pub async fn hub_contract(make: impl Fn(&str, u32) -> Arc<dyn Hub>) {
    let partitions = 3;
    let hub = make(&unique_name("contract"), partitions);
    let hub = hub.as_ref();

    let ids = hub
        .partition_ids()
        .await
        .unwrap_or_else(|e| panic!("partition_ids failed: {e}"));
    assert_eq!(ids, vec![0, 1, 2], "partition_ids must be 0..n");

    fresh_partitions(hub, partitions).await;
    let ctx = Ctx {
        group: "$Default".to_string(),
        second_group: Some("contract-group".to_string()),
        base: vec![0; partitions as usize],
        fresh: true,
    };
    publish_and_read(hub, &ctx).await;
    start_positions(hub, &ctx).await;
    batch_bounds_and_waiting(hub, &ctx).await;
    partition_keys(hub, partitions).await;
    missing_partitions(hub, partitions).await;
    let fresh = make(&unique_name("contract-conc"), 1);
    concurrent_publishers(fresh.as_ref(), &ctx.with_base(vec![0])).await;
}

/// The consumer groups [`hub_contract_on_existing`] reads with.
#[derive(Debug, Clone)]
pub struct ExistingHubGroups {
    /// The group every check reads with (`$Default` always exists).
    pub consumer_group: String,
    /// A second group, to check that groups read independently; skipped
    /// when `None` (a live hub's groups must be created beforehand).
    pub second_consumer_group: Option<String>,
}

/// The hub contract for a hub that already exists and may hold events (a
/// live Azure Event Hub): every check works relative to the end of each
/// partition when it starts, and reads from sequence numbers instead of
/// `Earliest`. The hub needs at least 3 partitions and no other publisher
/// while the suite runs. Panics on the first violation.
pub async fn hub_contract_on_existing(hub: Arc<dyn Hub>, groups: ExistingHubGroups) {
    let hub = hub.as_ref();
    let ids = hub
        .partition_ids()
        .await
        .unwrap_or_else(|e| panic!("partition_ids failed: {e}"));
    let partitions = ids.len() as u32;
    assert_eq!(
        ids,
        (0..partitions).collect::<Vec<_>>(),
        "partition_ids must be 0..n"
    );
    assert!(
        partitions >= 3,
        "the contract needs a hub with at least 3 partitions, {} has {partitions}",
        hub.name()
    );
    let ctx = Ctx {
        group: groups.consumer_group,
        second_group: groups.second_consumer_group,
        base: next_sequences(hub, partitions).await,
        fresh: false,
    };
    publish_and_read(hub, &ctx).await;
    start_positions(hub, &ctx).await;
    batch_bounds_and_waiting(hub, &ctx).await;
    partition_keys(hub, partitions).await;
    missing_partitions(hub, partitions).await;
    let ctx = ctx.with_base(next_sequences(hub, partitions).await);
    concurrent_publishers(hub, &ctx).await;
}

/// Where the hub contract's events start in each partition, and how it reads.
struct Ctx {
    group: String,
    second_group: Option<String>,
    /// The sequence number the contract's first event gets, per partition.
    base: Vec<i64>,
    /// The partitions were empty: `Earliest` and absolute numbers apply.
    fresh: bool,
}

impl Ctx {
    fn with_base(&self, base: Vec<i64>) -> Ctx {
        Ctx {
            group: self.group.clone(),
            second_group: self.second_group.clone(),
            base,
            fresh: self.fresh,
        }
    }

    /// The sequence number of the contract's `i`-th event in `partition`.
    fn seq(&self, partition: u32, i: i64) -> i64 {
        self.base[partition as usize] + i
    }

    /// The position of the contract's first event in `partition`.
    fn first(&self, partition: u32) -> StartPosition {
        if self.fresh {
            StartPosition::Earliest
        } else {
            StartPosition::SequenceNumber {
                value: self.seq(partition, 0),
                inclusive: true,
            }
        }
    }
}

/// The sequence number the next event of each partition will get.
async fn next_sequences(hub: &dyn Hub, partitions: u32) -> Vec<i64> {
    last_sequences(hub, partitions)
        .await
        .into_iter()
        .map(|last| last + 1)
        .collect()
}

async fn fresh_partitions(hub: &dyn Hub, partitions: u32) {
    for p in 0..partitions {
        let props = hub
            .partition_properties(p)
            .await
            .unwrap_or_else(|e| panic!("partition_properties({p}) failed: {e}"));
        assert_eq!(props.partition, p);
        assert!(
            props.is_empty,
            "a fresh partition {p} must be empty: {props:?}"
        );
        assert_eq!(
            props.last_enqueued_sequence_number, -1,
            "a fresh partition's last sequence number must be -1: {props:?}"
        );
        assert_eq!(
            props.last_enqueued_time_ms, None,
            "fresh partition: {props:?}"
        );
    }
}

fn event(i: usize) -> EventData {
    EventData::new(format!("event-{i}")).with_property("index", i.to_string())
}

async fn open(
    hub: &dyn Hub,
    group: &str,
    partition: u32,
    from: StartPosition,
) -> Box<dyn PartitionReceiver> {
    hub.open_receiver(group, partition, from)
        .await
        .unwrap_or_else(|e| panic!("open_receiver({group}, {partition}, {from:?}) failed: {e}"))
}

/// Receive until `count` events arrived (or panic at the deadline).
async fn receive_exactly(
    receiver: &mut dyn PartitionReceiver,
    count: usize,
    what: &str,
) -> Vec<ReceivedEvent> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < count {
        assert!(
            started.elapsed() < ARRIVAL_DEADLINE,
            "{what}: only {} of {count} events arrived within {ARRIVAL_DEADLINE:?}",
            got.len()
        );
        let batch = receiver
            .receive(count - got.len(), Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("{what}: receive failed: {e}"));
        assert!(
            batch.len() <= count - got.len(),
            "{what}: receive returned {} events, more than max_events {}",
            batch.len(),
            count - got.len()
        );
        got.extend(batch);
    }
    got
}

async fn expect_nothing(receiver: &mut dyn PartitionReceiver, what: &str) {
    let batch = receiver
        .receive(10, Duration::from_millis(300))
        .await
        .unwrap_or_else(|e| panic!("{what}: receive failed: {e}"));
    assert!(
        batch.is_empty(),
        "{what}: expected no events, got sequence numbers {:?}",
        batch.iter().map(|e| e.sequence_number).collect::<Vec<_>>()
    );
}

async fn publish_and_read(hub: &dyn Hub, ctx: &Ctx) {
    let before = now_ms();
    hub.publish(PublishTarget::Partition(0), (0..3).map(event).collect())
        .await
        .unwrap_or_else(|e| panic!("publish of 3 events to partition 0 failed: {e}"));
    hub.publish(PublishTarget::Partition(0), (3..5).map(event).collect())
        .await
        .unwrap_or_else(|e| panic!("publish of 2 events to partition 0 failed: {e}"));
    hub.publish(PublishTarget::Partition(1), vec![event(100)])
        .await
        .unwrap_or_else(|e| panic!("publish to partition 1 failed: {e}"));

    let mut receiver = open(hub, &ctx.group, 0, ctx.first(0)).await;
    let events = receive_exactly(receiver.as_mut(), 5, "partition 0 from earliest").await;
    partition_0_events_round_trip(&events, ctx, before);
    expect_nothing(receiver.as_mut(), "partition 0 after reading everything").await;

    let mut other_partition = open(hub, &ctx.group, 1, ctx.first(1)).await;
    let events = receive_exactly(other_partition.as_mut(), 1, "partition 1").await;
    assert_eq!(
        events[0].sequence_number,
        ctx.seq(1, 0),
        "each partition numbers from 0"
    );
    assert_eq!(events[0].partition, 1);
    assert_eq!(events[0].body, Bytes::from("event-100"));

    // A second consumer group reads the same events independently.
    let last_time = match &ctx.second_group {
        Some(group) => {
            let mut second_group = open(hub, group, 0, ctx.first(0)).await;
            let again = receive_exactly(second_group.as_mut(), 5, "second consumer group").await;
            assert_eq!(
                again.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
                (0..5).map(|i| ctx.seq(0, i)).collect::<Vec<_>>()
            );
            events_last_time(&again)
        }
        None => events_last_time(&events),
    };

    partition_properties_match(hub, ctx, last_time).await;
}

/// Partition 0's five events: consecutive sequence numbers, bodies and
/// properties as published, distinct offsets, enqueued times near `before`
/// and never going backwards.
fn partition_0_events_round_trip(events: &[ReceivedEvent], ctx: &Ctx, before: i64) {
    let mut offsets = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.partition, 0, "event {i} reports the wrong partition");
        assert_eq!(
            e.sequence_number,
            ctx.seq(0, i as i64),
            "sequence numbers must be consecutive from 0 in publish order"
        );
        assert_eq!(e.body, Bytes::from(format!("event-{i}")), "event {i} body");
        let want: BTreeMap<String, String> = [("index".to_string(), i.to_string())].into();
        assert_eq!(e.properties, want, "event {i} properties must round-trip");
        assert!(!e.offset.is_empty(), "event {i} has an empty offset");
        assert!(
            offsets.insert(e.offset.clone()),
            "offset {} repeats",
            e.offset
        );
        assert!(
            (e.enqueued_time_ms - before).abs() < 10 * 60 * 1000,
            "event {i} enqueued_time_ms {} is not close to now {before}",
            e.enqueued_time_ms
        );
        if i > 0 {
            assert!(
                e.enqueued_time_ms >= events[i - 1].enqueued_time_ms,
                "enqueued times must not go backwards within a partition"
            );
        }
    }
}

/// Partition 0's properties describe its five events (the last one enqueued
/// at `last_time`); partition 2 got nothing.
async fn partition_properties_match(hub: &dyn Hub, ctx: &Ctx, last_time: i64) {
    let props = hub
        .partition_properties(0)
        .await
        .unwrap_or_else(|e| panic!("partition_properties(0) failed: {e}"));
    assert!(!props.is_empty, "partition 0 holds events: {props:?}");
    if ctx.fresh {
        assert_eq!(props.beginning_sequence_number, 0, "{props:?}");
    } else {
        assert!(
            props.beginning_sequence_number <= ctx.seq(0, 0),
            "{props:?}"
        );
    }
    assert_eq!(
        props.last_enqueued_sequence_number,
        ctx.seq(0, 4),
        "{props:?}"
    );
    assert_eq!(
        props.last_enqueued_time_ms,
        Some(last_time),
        "last_enqueued_time_ms must be the last event's enqueued time"
    );
    let props2 = hub
        .partition_properties(2)
        .await
        .unwrap_or_else(|e| panic!("partition_properties(2) failed: {e}"));
    if ctx.fresh {
        assert!(props2.is_empty, "partition 2 got nothing: {props2:?}");
    }
    assert_eq!(
        props2.last_enqueued_sequence_number,
        ctx.seq(2, -1),
        "partition 2 got nothing: {props2:?}"
    );
}

fn events_last_time(events: &[ReceivedEvent]) -> i64 {
    events.last().map_or(0, |e| e.enqueued_time_ms)
}

async fn start_positions(hub: &dyn Hub, ctx: &Ctx) {
    // Partition 0 holds the contract's events 0..=4.
    let at = |i: i64, inclusive: bool| StartPosition::SequenceNumber {
        value: ctx.seq(0, i),
        inclusive,
    };
    let cases = [
        (at(2, true), 2),
        (at(2, false), 3),
        (StartPosition::after(ctx.seq(0, 0)), 1),
        (at(0, true), 0),
        (at(4, true), 4),
    ];
    for (from, first) in cases {
        let mut receiver = open(hub, &ctx.group, 0, from).await;
        let events = receive_exactly(
            receiver.as_mut(),
            (5 - first) as usize,
            &format!("{from:?}"),
        )
        .await;
        let seqs: Vec<i64> = events.iter().map(|e| e.sequence_number).collect();
        assert_eq!(
            seqs,
            (first..5).map(|i| ctx.seq(0, i)).collect::<Vec<_>>(),
            "reading from {from:?}"
        );
    }
    let mut after_last = open(hub, &ctx.group, 0, StartPosition::after(ctx.seq(0, 4))).await;
    expect_nothing(after_last.as_mut(), "after the last event").await;

    let mut latest = open(hub, &ctx.group, 0, StartPosition::Latest).await;
    expect_nothing(latest.as_mut(), "Latest before a new publish").await;
    hub.publish(PublishTarget::Partition(0), vec![event(5)])
        .await
        .unwrap_or_else(|e| panic!("publish of event 5 failed: {e}"));
    let events = receive_exactly(latest.as_mut(), 1, "Latest after a new publish").await;
    assert_eq!(
        events[0].sequence_number,
        ctx.seq(0, 5),
        "Latest must start after the last event"
    );
    assert_eq!(events[0].body, Bytes::from("event-5"));

    // The exclusive receiver opened before the publish sees it too.
    let events = receive_exactly(after_last.as_mut(), 1, "after(4) once 5 exists").await;
    assert_eq!(events[0].sequence_number, ctx.seq(0, 5));
}

async fn batch_bounds_and_waiting(hub: &dyn Hub, ctx: &Ctx) {
    // Partition 0 holds the contract's 0..=5.
    let mut receiver = open(hub, &ctx.group, 0, ctx.first(0)).await;
    let mut seqs = Vec::new();
    let started = Instant::now();
    while seqs.len() < 6 {
        assert!(
            started.elapsed() < ARRIVAL_DEADLINE,
            "max_events=2: events missing"
        );
        let batch = receiver
            .receive(2, Duration::from_millis(500))
            .await
            .unwrap_or_else(|e| panic!("receive(2) failed: {e}"));
        assert!(
            batch.len() <= 2,
            "receive(2) returned {} events",
            batch.len()
        );
        seqs.extend(batch.iter().map(|e| e.sequence_number));
    }
    assert_eq!(
        seqs,
        (0..6).map(|i| ctx.seq(0, i)).collect::<Vec<_>>(),
        "small batches must continue where the last ended"
    );

    let max_wait = Duration::from_millis(400);
    let started = Instant::now();
    let batch = receiver
        .receive(10, max_wait)
        .await
        .unwrap_or_else(|e| panic!("empty receive failed: {e}"));
    let waited = started.elapsed();
    assert!(batch.is_empty(), "nothing new was published");
    assert!(
        waited >= max_wait / 2,
        "an empty receive must wait for events (about max_wait {max_wait:?}), returned after {waited:?}"
    );
    assert!(
        waited < max_wait + Duration::from_secs(5),
        "an empty receive must return soon after max_wait {max_wait:?}, took {waited:?}"
    );

    // A receive that is waiting returns an event published meanwhile.
    let mut waiting = open(hub, &ctx.group, 2, ctx.first(2)).await;
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hub.publish(PublishTarget::Partition(2), vec![event(200)])
            .await
            .unwrap_or_else(|e| panic!("publish to partition 2 failed: {e}"));
    };
    let started = Instant::now();
    let (batch, ()) = tokio::join!(waiting.receive(10, Duration::from_secs(10)), publisher);
    let batch = batch.unwrap_or_else(|e| panic!("waiting receive failed: {e}"));
    assert_eq!(
        batch.len(),
        1,
        "the waiting receive must return the new event"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the waiting receive must return when the event arrives, not at max_wait"
    );
}

async fn partition_keys(hub: &dyn Hub, partitions: u32) {
    let before: Vec<i64> = last_sequences(hub, partitions).await;
    let key = unique_name("key");
    for round in 0..3 {
        hub.publish(
            PublishTarget::PartitionKey(key.clone()),
            vec![event(1000 + round), event(2000 + round)],
        )
        .await
        .unwrap_or_else(|e| panic!("publish by partition key failed: {e}"));
    }
    let after = last_sequences(hub, partitions).await;
    let grown: Vec<u32> = (0..partitions)
        .filter(|&p| after[p as usize] != before[p as usize])
        .collect();
    assert_eq!(
        grown.len(),
        1,
        "one key must map to one partition; grew: {grown:?}"
    );
    let p = grown[0];
    assert_eq!(
        after[p as usize] - before[p as usize],
        6,
        "all 6 keyed events must land in partition {p}"
    );
}

async fn last_sequences(hub: &dyn Hub, partitions: u32) -> Vec<i64> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let props = hub
            .partition_properties(p)
            .await
            .unwrap_or_else(|e| panic!("partition_properties({p}) failed: {e}"));
        out.push(props.last_enqueued_sequence_number);
    }
    out
}

async fn missing_partitions(hub: &dyn Hub, partitions: u32) {
    let expect = |result: Result<(), HubError>, what: &str| match result {
        Err(HubError::NoSuchPartition { partition, .. }) => {
            assert_eq!(
                partition, partitions,
                "{what}: NoSuchPartition names the partition"
            )
        }
        other => {
            panic!("{what} on partition {partitions}: expected NoSuchPartition, got {other:?}")
        }
    };
    expect(
        hub.publish(PublishTarget::Partition(partitions), vec![event(0)])
            .await,
        "publish",
    );
    expect(
        hub.open_receiver("$Default", partitions, StartPosition::Earliest)
            .await
            .map(|_| ()),
        "open_receiver",
    );
    expect(
        hub.partition_properties(partitions).await.map(|_| ()),
        "partition_properties",
    );
}

/// Partition 0 of `hub` holds nothing after `ctx.seq(0, -1)`.
async fn concurrent_publishers(hub: &dyn Hub, ctx: &Ctx) {
    let tasks = 8;
    let per_task = 10;
    let publishes = (0..tasks).map(|t| async move {
        for i in 0..per_task {
            let batch = vec![
                EventData::new(format!("{t}-{i}-a")),
                EventData::new(format!("{t}-{i}-b")),
            ];
            hub.publish(PublishTarget::Partition(0), batch)
                .await
                .unwrap_or_else(|e| panic!("concurrent publish failed: {e}"));
        }
    });
    futures::future::join_all(publishes).await;

    let total = tasks * per_task * 2;
    let mut receiver = open(hub, &ctx.group, 0, ctx.first(0)).await;
    let events = receive_exactly(receiver.as_mut(), total, "concurrent publishes").await;
    let seqs: Vec<i64> = events.iter().map(|e| e.sequence_number).collect();
    assert_eq!(
        seqs,
        (0..total as i64).map(|i| ctx.seq(0, i)).collect::<Vec<_>>(),
        "concurrent publishes must get gap-free, unique sequence numbers"
    );
    let bodies: BTreeSet<Bytes> = events.iter().map(|e| e.body.clone()).collect();
    assert_eq!(
        bodies.len(),
        total,
        "every published event must be read exactly once"
    );
    for pair in events.chunks(2) {
        let a = String::from_utf8_lossy(&pair[0].body).into_owned();
        let b = String::from_utf8_lossy(&pair[1].body).into_owned();
        assert_eq!(
            a.strip_suffix("-a"),
            b.strip_suffix("-b"),
            "a batch must be appended contiguously: {a} then {b}"
        );
    }
}
