//! The adapter's glue against an in-memory fake of the SDK seam: batching,
//! targets, start positions, partition ids, receive mapping, error mapping
//! and reconnects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::sdk::{
    Batch, BatchTarget, Consumer, Delivery, EventSource, RawEvent, RawPartitionProperties, forward,
};
use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    OpenProducer,
    OpenConsumer,
    CreateBatch,
    Send,
    PartitionIds,
    PartitionProperties,
    OpenReceiver,
}

#[derive(Default)]
struct FakeState {
    partition_ids: Vec<String>,
    /// Encoded-size limit of a batch (the link's).
    link_limit: u64,
    sent: Vec<(BatchTarget, Vec<EventData>)>,
    opens: HashMap<String, usize>,
    calls: HashMap<Op, usize>,
    failures: HashMap<Op, VecDeque<SdkError>>,
    /// Operations that never answer.
    hang: Vec<Op>,
    receivers: Vec<(String, String, SdkStartPosition, u32)>,
    /// What each new receiver streams, then it waits forever.
    stream: Vec<Delivery>,
    properties: HashMap<String, RawPartitionProperties>,
}

#[derive(Clone, Default)]
struct Fake(Arc<StdMutex<FakeState>>);

impl Fake {
    fn new(partitions: u32) -> Fake {
        let fake = Fake::default();
        {
            let mut s = fake.state();
            s.partition_ids = (0..partitions).map(|p| p.to_string()).collect();
            s.link_limit = 1_000_000;
        }
        fake
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    fn fail_next(&self, op: Op, class: FailureClass, message: &str) {
        self.state()
            .failures
            .entry(op)
            .or_default()
            .push_back(SdkError::new(class, message));
    }

    /// Count the call and return the scripted failure, if any.
    fn enter(&self, op: Op) -> Result<bool, SdkError> {
        let mut s = self.state();
        *s.calls.entry(op).or_default() += 1;
        if let Some(error) = s.failures.get_mut(&op).and_then(VecDeque::pop_front) {
            return Err(error);
        }
        Ok(s.hang.contains(&op))
    }

    async fn call(&self, op: Op) -> Result<(), SdkError> {
        if self.enter(op)? {
            futures::future::pending::<()>().await;
        }
        Ok(())
    }

    fn calls(&self, op: Op) -> usize {
        self.state().calls.get(&op).copied().unwrap_or(0)
    }

    fn opens(&self, client: &str) -> usize {
        self.state().opens.get(client).copied().unwrap_or(0)
    }

    fn hub(&self) -> EventHubsHub {
        let settings = settings();
        EventHubsHub::from_parts(&settings, "ingest".into(), Arc::new(self.clone()))
    }
}

fn settings() -> EventHubsSettings {
    EventHubsConfig::new(
        "ns.servicebus.windows.net",
        EventHubsAuthConfig::Entra {
            credential: crate::azure::EntraCredential::DeveloperTools,
            client_id: None,
        },
    )
    .validate()
    .unwrap()
}

#[async_trait]
impl Connector for Fake {
    async fn open_producer(&self, hub: &str) -> Result<Arc<dyn Producer>, SdkError> {
        assert_eq!(hub, "ingest");
        self.call(Op::OpenProducer).await?;
        *self.state().opens.entry("producer".into()).or_default() += 1;
        Ok(Arc::new(self.clone()))
    }

    async fn open_consumer(
        &self,
        hub: &str,
        consumer_group: &str,
    ) -> Result<Arc<dyn Consumer>, SdkError> {
        assert_eq!(hub, "ingest");
        self.call(Op::OpenConsumer).await?;
        *self
            .state()
            .opens
            .entry(format!("consumer:{consumer_group}"))
            .or_default() += 1;
        Ok(Arc::new(FakeConsumer {
            fake: self.clone(),
            group: consumer_group.to_string(),
        }))
    }
}

#[async_trait]
impl Producer for Fake {
    async fn create_batch<'a>(
        &'a self,
        target: &BatchTarget,
    ) -> Result<Box<dyn Batch + 'a>, SdkError> {
        self.call(Op::CreateBatch).await?;
        let limit = self.state().link_limit;
        Ok(Box::new(FakeBatch {
            fake: self.clone(),
            target: target.clone(),
            events: Vec::new(),
            size: 0,
            limit,
        }))
    }
}

struct FakeBatch {
    fake: Fake,
    target: BatchTarget,
    events: Vec<EventData>,
    size: u64,
    limit: u64,
}

fn fake_size(event: &EventData) -> u64 {
    let props: usize = event
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    (event.body.len() + props + 10) as u64
}

#[async_trait]
impl Batch for FakeBatch {
    fn try_add(&mut self, event: &EventData) -> Result<bool, SdkError> {
        let size = fake_size(event);
        if self.size + size > self.limit {
            return Ok(false);
        }
        self.size += size;
        self.events.push(event.clone());
        Ok(true)
    }

    fn size_bytes(&self) -> u64 {
        self.size
    }

    async fn send(self: Box<Self>) -> Result<(), SdkError> {
        self.fake.call(Op::Send).await?;
        self.fake.state().sent.push((self.target, self.events));
        Ok(())
    }
}

struct FakeConsumer {
    fake: Fake,
    group: String,
}

#[async_trait]
impl Consumer for FakeConsumer {
    async fn partition_ids(&self) -> Result<Vec<String>, SdkError> {
        self.fake.call(Op::PartitionIds).await?;
        Ok(self.fake.state().partition_ids.clone())
    }

    async fn partition_properties(
        &self,
        partition: &str,
    ) -> Result<RawPartitionProperties, SdkError> {
        self.fake.call(Op::PartitionProperties).await?;
        self.fake
            .state()
            .properties
            .get(partition)
            .cloned()
            .ok_or_else(|| SdkError::new(FailureClass::NotFound, "no properties scripted"))
    }

    async fn open_receiver(
        &self,
        partition: &str,
        start: SdkStartPosition,
        prefetch: u32,
    ) -> Result<Box<dyn EventSource>, SdkError> {
        self.fake.call(Op::OpenReceiver).await?;
        let mut s = self.fake.state();
        s.receivers
            .push((self.group.clone(), partition.to_string(), start, prefetch));
        Ok(Box::new(FakeSource {
            items: s.stream.clone(),
        }))
    }
}

struct FakeSource {
    items: Vec<Delivery>,
}

impl EventSource for FakeSource {
    fn start(
        self: Box<Self>,
        tx: mpsc::Sender<Delivery>,
        stop: oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let stream = futures::StreamExt::chain(
            futures::stream::iter(self.items),
            futures::stream::pending(),
        );
        tokio::spawn(async move {
            forward(stream, tx, stop).await;
        })
    }
}

fn event(i: usize) -> EventData {
    EventData::new(format!("event-{i}")).with_property("index", i.to_string())
}

fn raw(seq: i64) -> RawEvent {
    RawEvent {
        sequence_number: Some(seq),
        offset: Some((seq * 64).to_string()),
        enqueued_time: Some(UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
        body: Bytes::from(format!("b{seq}")),
        properties: BTreeMap::from([("id".to_string(), format!("r{seq}"))]),
    }
}

#[tokio::test]
async fn a_publish_is_one_batch_to_the_partition_or_key() {
    let fake = Fake::new(3);
    let hub = fake.hub();
    hub.publish(PublishTarget::Partition(2), (0..3).map(event).collect())
        .await
        .unwrap();
    hub.publish(PublishTarget::PartitionKey("k".into()), vec![event(9)])
        .await
        .unwrap();
    let sent = fake.state().sent.clone();
    assert_eq!(sent.len(), 2, "one send per publish");
    assert_eq!(sent[0].0, BatchTarget::Partition("2".into()));
    assert_eq!(
        sent[0].1,
        (0..3).map(event).collect::<Vec<_>>(),
        "order and properties kept"
    );
    assert_eq!(sent[1].0, BatchTarget::PartitionKey("k".into()));
    assert_eq!(
        fake.opens("producer"),
        1,
        "the producer is opened once and reused"
    );
    assert_eq!(fake.calls(Op::PartitionIds), 1, "partition ids are cached");
}

#[tokio::test]
async fn empty_publishes_send_nothing() {
    let fake = Fake::new(1);
    let hub = fake.hub();
    hub.publish(PublishTarget::Partition(0), Vec::new())
        .await
        .unwrap();
    assert_eq!(fake.calls(Op::CreateBatch), 0);
    assert!(fake.state().sent.is_empty());
}

#[tokio::test]
async fn events_that_do_not_fit_one_batch_are_refused_whole() {
    let fake = Fake::new(1);
    fake.state().link_limit = 100;
    let hub = fake.hub();
    // 3 events of 32 bytes fit in 100; 5 do not.
    let small = |i| EventData::new(vec![b'x'; 20]).with_property("i", format!("{i}"));
    hub.publish(PublishTarget::Partition(0), (0..3).map(small).collect())
        .await
        .unwrap();
    let err = hub
        .publish(PublishTarget::Partition(0), (0..5).map(small).collect())
        .await
        .unwrap_err();
    match err {
        HubError::BatchTooLarge { hub, size, limit } => {
            assert_eq!(hub, "ingest");
            assert_eq!(limit, 96, "what the batch could hold");
            assert!(size > 100, "size covers every event: {size}");
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    assert_eq!(
        fake.state().sent.len(),
        1,
        "nothing of the refused publish was sent"
    );
    assert_eq!(
        fake.opens("producer"),
        1,
        "a too-large batch is no reason to reconnect"
    );

    // One event larger than the link allows.
    let err = hub
        .publish(
            PublishTarget::Partition(0),
            vec![EventData::new(vec![0u8; 500])],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::BatchTooLarge { limit: 0, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_configured_batch_limit_applies_below_the_links() {
    let fake = Fake::new(1);
    let mut hub = fake.hub();
    hub.max_batch_bytes = 2048;
    let big = |_| EventData::new(vec![b'y'; 1000]);
    hub.publish(PublishTarget::Partition(0), (0..2).map(big).collect())
        .await
        .unwrap();
    let err = hub
        .publish(PublishTarget::Partition(0), (0..3).map(big).collect())
        .await
        .unwrap_err();
    match err {
        HubError::BatchTooLarge { size, limit, .. } => {
            assert_eq!(limit, 2048);
            assert!(size > 3000, "{size}");
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    assert_eq!(fake.state().sent.len(), 1);
}

#[tokio::test]
async fn unknown_partitions_are_refused_before_any_call() {
    let fake = Fake::new(2);
    let hub = fake.hub();
    let expect = |r: Result<(), HubError>| match r {
        Err(HubError::NoSuchPartition { partition: 2, .. }) => {}
        other => panic!("expected NoSuchPartition(2), got {other:?}"),
    };
    expect(
        hub.publish(PublishTarget::Partition(2), vec![event(0)])
            .await,
    );
    expect(
        hub.open_receiver("$Default", 2, StartPosition::Earliest)
            .await
            .map(|_| ()),
    );
    expect(hub.partition_properties(2).await.map(|_| ()));
    assert_eq!(fake.calls(Op::CreateBatch), 0);
    assert_eq!(fake.calls(Op::OpenReceiver), 0);
    assert_eq!(fake.calls(Op::PartitionProperties), 0);
}

#[tokio::test]
async fn partition_ids_are_parsed_and_checked() {
    let fake = Fake::new(0);
    fake.state().partition_ids = vec!["2".into(), "0".into(), "1".into()];
    assert_eq!(fake.hub().partition_ids().await.unwrap(), vec![0, 1, 2]);

    for ids in [vec!["0", "x"], vec!["1", "2"], vec![]] {
        let fake = Fake::new(0);
        fake.state().partition_ids = ids.iter().map(|s| s.to_string()).collect();
        let err = fake.hub().partition_ids().await.unwrap_err();
        assert!(matches!(err, HubError::Other { .. }), "{ids:?}: {err:?}");
    }
}

#[test]
fn start_positions_map_to_the_sdks() {
    let cases = [
        (StartPosition::Earliest, StartLocation::Earliest, false),
        (StartPosition::Latest, StartLocation::Latest, false),
        (
            StartPosition::SequenceNumber {
                value: 5,
                inclusive: true,
            },
            StartLocation::SequenceNumber(5),
            true,
        ),
        (
            StartPosition::after(5),
            StartLocation::SequenceNumber(5),
            false,
        ),
        (StartPosition::after(-1), StartLocation::Earliest, false),
    ];
    for (from, location, inclusive) in cases {
        assert_eq!(
            start_position(from),
            SdkStartPosition {
                location,
                inclusive
            },
            "{from:?}"
        );
    }
}

#[tokio::test]
async fn receivers_use_the_group_start_and_prefetch_and_map_events() {
    let fake = Fake::new(4);
    fake.state().stream = vec![Ok(raw(7)), Ok(raw(8))];
    let hub = fake.hub();
    let mut receiver = hub
        .open_receiver("readers", 3, StartPosition::after(6))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(
            receiver
                .receive(10, Duration::from_millis(100))
                .await
                .unwrap(),
        );
        if got.len() >= 2 {
            break;
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].partition, 3);
    assert_eq!(got[0].sequence_number, 7);
    assert_eq!(got[0].offset, "448");
    assert_eq!(got[0].enqueued_time_ms, 1_800_000_000_000);
    assert_eq!(got[0].body, Bytes::from("b7"));
    assert_eq!(got[0].properties["id"], "r7");
    assert_eq!(
        fake.state().receivers,
        vec![(
            "readers".to_string(),
            "3".to_string(),
            start_position(StartPosition::after(6)),
            300
        )]
    );

    fake.state().properties.insert(
        "0".into(),
        RawPartitionProperties {
            beginning_sequence_number: 3,
            last_enqueued_sequence_number: 12,
            last_enqueued_time: None,
            is_empty: false,
        },
    );
    hub.open_receiver("readers", 0, StartPosition::Latest)
        .await
        .unwrap();
    hub.open_receiver("other", 0, StartPosition::after(1))
        .await
        .unwrap();
    assert_eq!(
        fake.state().receivers[1].2,
        start_position(StartPosition::after(12)),
        "Latest is pinned to the end of the partition at open"
    );
    assert_eq!(
        fake.opens("consumer:readers"),
        1,
        "one client per consumer group"
    );
    assert_eq!(fake.opens("consumer:other"), 1);
}

#[tokio::test]
async fn a_receive_error_surfaces_typed() {
    let fake = Fake::new(1);
    fake.state().stream = vec![
        Ok(raw(0)),
        Err(SdkError::new(
            FailureClass::Connection,
            "link detached by remote",
        )),
    ];
    let hub = fake.hub();
    let mut receiver = hub
        .open_receiver("$Default", 0, StartPosition::Earliest)
        .await
        .unwrap();
    let mut events = 0;
    let err = loop {
        match receiver.receive(10, Duration::from_millis(100)).await {
            Ok(batch) => events += batch.len(),
            Err(e) => break e,
        }
    };
    assert_eq!(events, 1, "the event before the error is delivered");
    assert!(err.is_transient(), "{err:?}");
}

#[tokio::test]
async fn connection_failures_drop_the_client_and_throttling_keeps_it() {
    let fake = Fake::new(1);
    let hub = fake.hub();
    hub.partition_ids().await.unwrap();

    fake.fail_next(Op::Send, FailureClass::Throttled, "server busy");
    let err = hub
        .publish(PublishTarget::Partition(0), vec![event(0)])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    hub.publish(PublishTarget::Partition(0), vec![event(1)])
        .await
        .unwrap();
    assert_eq!(fake.opens("producer"), 1, "throttling keeps the client");

    fake.fail_next(Op::Send, FailureClass::Connection, "connection dropped");
    let err = hub
        .publish(PublishTarget::Partition(0), vec![event(2)])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    hub.publish(PublishTarget::Partition(0), vec![event(3)])
        .await
        .unwrap();
    assert_eq!(fake.opens("producer"), 2, "a broken connection is reopened");

    fake.fail_next(
        Op::OpenProducer,
        FailureClass::Unauthorized,
        "token refused",
    );
    fake.fail_next(Op::Send, FailureClass::Fatal, "decode error");
    let err = hub
        .publish(PublishTarget::Partition(0), vec![event(4)])
        .await
        .unwrap_err();
    assert!(matches!(err, HubError::Other { .. }), "{err:?}");
    assert_eq!(fake.opens("producer"), 2, "a fatal error drops the client");
    let err = hub
        .publish(PublishTarget::Partition(0), vec![event(5)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, HubError::Other { .. }),
        "failed open: {err:?}"
    );
    assert!(err.to_string().contains("token refused"), "{err}");
    hub.publish(PublishTarget::Partition(0), vec![event(6)])
        .await
        .unwrap();
    assert_eq!(fake.opens("producer"), 3);
    assert_eq!(fake.state().sent.len(), 3);
}

#[tokio::test]
async fn management_failures_reopen_the_consumer() {
    let fake = Fake::new(2);
    fake.state().properties.insert(
        "1".into(),
        RawPartitionProperties {
            beginning_sequence_number: 10,
            last_enqueued_sequence_number: 41,
            last_enqueued_time: Some(UNIX_EPOCH + Duration::from_millis(1234)),
            is_empty: false,
        },
    );
    fake.state().properties.insert(
        "0".into(),
        RawPartitionProperties {
            beginning_sequence_number: 0,
            last_enqueued_sequence_number: -1,
            last_enqueued_time: Some(SystemTime::UNIX_EPOCH),
            is_empty: true,
        },
    );
    let hub = fake.hub();
    let props = hub.partition_properties(1).await.unwrap();
    assert_eq!(
        props,
        PartitionProperties {
            partition: 1,
            beginning_sequence_number: 10,
            last_enqueued_sequence_number: 41,
            last_enqueued_time_ms: Some(1234),
            is_empty: false,
        }
    );
    let empty = hub.partition_properties(0).await.unwrap();
    assert!(empty.is_empty);
    assert_eq!(empty.last_enqueued_sequence_number, -1);
    assert_eq!(
        empty.last_enqueued_time_ms, None,
        "an empty partition has no time"
    );

    fake.fail_next(
        Op::PartitionProperties,
        FailureClass::Connection,
        "session closed",
    );
    assert!(
        hub.partition_properties(1)
            .await
            .unwrap_err()
            .is_transient()
    );
    hub.partition_properties(1).await.unwrap();
    assert_eq!(
        fake.opens("consumer:$Default"),
        2,
        "reopened after the failure"
    );
}

#[tokio::test(start_paused = true)]
async fn calls_that_hang_time_out_and_reconnect() {
    let fake = Fake::new(1);
    let hub = fake.hub();
    hub.partition_ids().await.unwrap();
    fake.state().hang.push(Op::Send);
    let err = hub
        .publish(PublishTarget::Partition(0), vec![event(0)])
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains("no answer"), "{err}");
    fake.state().hang.clear();
    hub.publish(PublishTarget::Partition(0), vec![event(1)])
        .await
        .unwrap();
    assert_eq!(fake.opens("producer"), 2);

    fake.state().hang.push(Op::OpenReceiver);
    let err = hub
        .open_receiver("$Default", 0, StartPosition::Earliest)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(err.is_transient(), "{err:?}");
}

#[test]
fn amqp_errors_are_classified_by_kind_and_condition() {
    use super::sdk::classify_amqp;
    use azure_core_amqp::error::{AmqpDescribedError, AmqpErrorCondition, AmqpErrorKind};
    let io =
        || Box::new(std::io::Error::other("reset")) as Box<dyn std::error::Error + Send + Sync>;
    for kind in [
        AmqpErrorKind::ConnectionDropped(io()),
        AmqpErrorKind::LinkDetachedByRemote(io()),
        AmqpErrorKind::IdleTimeoutElapsed(io()),
    ] {
        assert_eq!(classify_amqp(&kind), FailureClass::Connection);
    }
    let described = |condition| {
        AmqpErrorKind::AmqpDescribedError(AmqpDescribedError::new(
            condition,
            None,
            Default::default(),
        ))
    };
    assert_eq!(
        classify_amqp(&described(AmqpErrorCondition::ServerBusyError)),
        FailureClass::Throttled
    );
    assert_eq!(
        classify_amqp(&described(AmqpErrorCondition::UnauthorizedAccess)),
        FailureClass::Unauthorized
    );
    assert_eq!(
        classify_amqp(&described(AmqpErrorCondition::DecodeError)),
        FailureClass::Fatal
    );
    assert_eq!(
        classify_amqp(&AmqpErrorKind::ManagementStatusCode(
            azure_core::http::StatusCode::ServiceUnavailable,
            None
        )),
        FailureClass::Throttled
    );
}
