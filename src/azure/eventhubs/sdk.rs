//! The seam between our glue and `azure_messaging_eventhubs` 0.15.
//!
//! [`Connector`], [`Producer`], [`Batch`], [`Consumer`] and [`EventSource`]
//! are the few SDK operations the adapter uses, in a shape a test fake can
//! implement; [`SdkConnector`] implements them on the real SDK. Everything
//! with a decision in it (batching, start positions, property and event
//! mapping, receive timing, error mapping, reconnects) lives outside this
//! file and is unit-tested against a fake.
//!
//! Errors cross the seam as [`SdkError`]: a [`FailureClass`] decided here
//! from the SDK error ([`classify`]) and a message that holds no secret.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core_amqp::error::AmqpErrorKind;
use azure_messaging_eventhubs::error::ErrorKind as SdkErrorKind;
use azure_messaging_eventhubs::models::{AmqpSimpleValue, EventData as SdkEventData};
use azure_messaging_eventhubs::{
    ConsumerClient, EventDataBatch, EventDataBatchOptions, EventHubsError, EventReceiver,
    OpenReceiverOptions, ProducerClient, RetryOptions, StartPosition as SdkStartPosition,
};
use bytes::Bytes;
use futures::StreamExt;
use hubflow_actors::ports::EventData;
use tokio::sync::{mpsc, oneshot};

/// How an SDK failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailureClass {
    /// Throttling or a busy service: retry later on the same client.
    Throttled,
    /// The connection, session or link broke (or the receiver was taken
    /// over): retry on a new client.
    Connection,
    /// An operation deadline passed: retry on a new client (a stalled
    /// connection is the usual cause).
    Timeout,
    /// Authentication or authorization failed.
    Unauthorized,
    /// The hub, consumer group or partition does not exist.
    NotFound,
    /// Anything else: not worth retrying as is.
    Fatal,
}

impl FailureClass {
    /// Worth retrying ([`HubError::Transient`](hubflow_actors::ports::HubError)).
    pub(crate) fn is_transient(self) -> bool {
        matches!(
            self,
            FailureClass::Throttled | FailureClass::Connection | FailureClass::Timeout
        )
    }

    /// Whether the cached client should be dropped and reopened.
    pub(crate) fn needs_reconnect(self) -> bool {
        !matches!(self, FailureClass::Throttled | FailureClass::NotFound)
    }

    /// A label for metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            FailureClass::Throttled => "throttled",
            FailureClass::Connection => "connection",
            FailureClass::Timeout => "timeout",
            FailureClass::Unauthorized => "unauthorized",
            FailureClass::NotFound => "not_found",
            FailureClass::Fatal => "fatal",
        }
    }
}

/// An SDK failure after classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SdkError {
    pub class: FailureClass,
    pub message: String,
}

impl SdkError {
    pub(crate) fn new(class: FailureClass, message: impl Into<String>) -> Self {
        SdkError {
            class,
            message: message.into(),
        }
    }
}

impl fmt::Display for SdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.class.label())
    }
}

/// An event as the SDK delivered it, before mapping to the port's type.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawEvent {
    pub sequence_number: Option<i64>,
    pub offset: Option<String>,
    pub enqueued_time: Option<SystemTime>,
    pub body: Bytes,
    pub properties: BTreeMap<String, String>,
}

/// Partition properties as the SDK reports them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawPartitionProperties {
    pub beginning_sequence_number: i64,
    pub last_enqueued_sequence_number: i64,
    pub last_enqueued_time: Option<SystemTime>,
    pub is_empty: bool,
}

/// Where a batch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchTarget {
    Partition(String),
    PartitionKey(String),
}

/// What the receive side of the channel gets from a receiver task.
pub(crate) type Delivery = Result<RawEvent, SdkError>;

/// Opens clients. One producer per hub, one consumer per (hub, group).
#[async_trait]
pub(crate) trait Connector: Send + Sync + 'static {
    async fn open_producer(&self, hub: &str) -> Result<Arc<dyn Producer>, SdkError>;
    async fn open_consumer(
        &self,
        hub: &str,
        consumer_group: &str,
    ) -> Result<Arc<dyn Consumer>, SdkError>;
}

#[async_trait]
pub(crate) trait Producer: Send + Sync {
    /// An empty batch for `target`, sized by the link's limit.
    async fn create_batch<'a>(
        &'a self,
        target: &BatchTarget,
    ) -> Result<Box<dyn Batch + 'a>, SdkError>;
}

#[async_trait]
pub(crate) trait Batch: Send {
    /// Add `event` if it fits; `false` when the batch is full.
    fn try_add(&mut self, event: &EventData) -> Result<bool, SdkError>;
    /// The encoded size so far, as the SDK counts it.
    fn size_bytes(&self) -> u64;
    /// Send the batch as one message.
    async fn send(self: Box<Self>) -> Result<(), SdkError>;
}

#[async_trait]
pub(crate) trait Consumer: Send + Sync {
    async fn partition_ids(&self) -> Result<Vec<String>, SdkError>;
    async fn partition_properties(
        &self,
        partition: &str,
    ) -> Result<RawPartitionProperties, SdkError>;
    async fn open_receiver(
        &self,
        partition: &str,
        start: SdkStartPosition,
        prefetch: u32,
    ) -> Result<Box<dyn EventSource>, SdkError>;
}

/// A receiver that has not started yet.
pub(crate) trait EventSource: Send + 'static {
    /// Start a task that sends every event (then the error that ends the
    /// stream) into `tx`, until `stop` fires or `tx` closes; then it closes
    /// the link.
    fn start(
        self: Box<Self>,
        tx: mpsc::Sender<Delivery>,
        stop: oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()>;
}

/// Forward `stream` into `tx` until it ends, fails, `stop` fires or `tx`
/// closes. A stream that ends is reported as a connection failure: an
/// Event Hubs partition never ends. Returns whether it stopped on request.
pub(crate) async fn forward<S>(
    stream: S,
    tx: mpsc::Sender<Delivery>,
    mut stop: oneshot::Receiver<()>,
) -> bool
where
    S: futures::Stream<Item = Delivery>,
{
    let mut stream = std::pin::pin!(stream);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stop => return true,
            item = stream.next() => item,
        };
        let (item, last) = match item {
            Some(Ok(event)) => (Ok(event), false),
            Some(Err(error)) => (Err(error), true),
            None => (
                Err(SdkError::new(
                    FailureClass::Connection,
                    "the receive stream ended",
                )),
                true,
            ),
        };
        tokio::select! {
            biased;
            _ = &mut stop => return true,
            sent = tx.send(item) => {
                if sent.is_err() {
                    return true;
                }
            }
        }
        if last {
            return false;
        }
    }
}

// ---------------------------------------------------------------------------
// Error classification.

/// Classify an SDK error by its typed kinds: `EventHubsError` kinds,
/// `azure_core::Error` kinds and HTTP statuses, `azure_core_amqp` error kinds
/// and AMQP condition symbols.
pub(crate) fn classify(error: &EventHubsError, what: &str) -> SdkError {
    let class = match &error.kind {
        SdkErrorKind::ConsumerDisconnected(_) => FailureClass::Connection,
        SdkErrorKind::AzureCore(e) => classify_core(e),
        SdkErrorKind::AmqpError(e) => classify_amqp(e.kind()),
        SdkErrorKind::SendRejected(Some(described)) => {
            classify_condition(described.condition.as_ref())
        }
        SdkErrorKind::SendRejected(None) => FailureClass::Fatal,
        SdkErrorKind::InvalidManagementResponse => FailureClass::Fatal,
        SdkErrorKind::SimpleMessage(_) => FailureClass::Fatal,
        _ => FailureClass::Fatal,
    };
    SdkError::new(class, format!("{what}: {error}"))
}

/// An AMQP stack error: links, sessions and connections the peer closed or
/// that broke are worth a fresh connection; described errors go by their
/// condition; management calls by their status.
pub(crate) fn classify_amqp(kind: &AmqpErrorKind) -> FailureClass {
    match kind {
        AmqpErrorKind::AzureCore(e) => classify_core(e),
        AmqpErrorKind::AmqpDescribedError(described) => {
            classify_condition(described.condition.as_ref())
        }
        AmqpErrorKind::ManagementStatusCode(status, _) => classify_status(u16::from(*status)),
        AmqpErrorKind::LinkClosedByRemote(_)
        | AmqpErrorKind::SessionClosedByRemote(_)
        | AmqpErrorKind::ConnectionClosedByRemote(_)
        | AmqpErrorKind::LinkDetachedByRemote(_)
        | AmqpErrorKind::SessionDetachedByRemote(_)
        | AmqpErrorKind::ConnectionDetachedByRemote(_)
        | AmqpErrorKind::ConnectionDropped(_)
        | AmqpErrorKind::LinkStateError(_)
        | AmqpErrorKind::FramingError(_)
        | AmqpErrorKind::IdleTimeoutElapsed(_)
        | AmqpErrorKind::DetachError(_)
        | AmqpErrorKind::TransportImplementationError(_) => FailureClass::Connection,
        _ => FailureClass::Fatal,
    }
}

fn classify_core(error: &azure_core::Error) -> FailureClass {
    use azure_core::error::ErrorKind;
    match error.kind() {
        ErrorKind::Connection | ErrorKind::Io => FailureClass::Connection,
        ErrorKind::Credential => FailureClass::Unauthorized,
        ErrorKind::HttpResponse { status, .. } => classify_status(u16::from(*status)),
        _ => FailureClass::Fatal,
    }
}

fn classify_status(status: u16) -> FailureClass {
    match status {
        401 | 403 => FailureClass::Unauthorized,
        404 => FailureClass::NotFound,
        408 => FailureClass::Timeout,
        429 | 500 | 502 | 503 | 504 => FailureClass::Throttled,
        _ => FailureClass::Fatal,
    }
}

/// AMQP error conditions, by their wire symbol (`amqp:...`,
/// `com.microsoft:...`).
fn classify_condition(symbol: &str) -> FailureClass {
    match symbol {
        "com.microsoft:server-busy"
        | "amqp:resource-limit-exceeded"
        | "com.microsoft:entity-updated"
        | "amqp:internal-error" => FailureClass::Throttled,
        "com.microsoft:timeout" | "com.microsoft:operation-cancelled" => FailureClass::Timeout,
        "amqp:link:stolen"
        | "amqp:link:detach-forced"
        | "amqp:connection:forced"
        | "amqp:connection:framing-error"
        | "amqp:link:redirect"
        | "amqp:connection:redirect"
        | "com.microsoft:partition-not-owned"
        | "com.microsoft:store-lock-lost" => FailureClass::Connection,
        "amqp:unauthorized-access" | "com.microsoft:publisher-revoked" => {
            FailureClass::Unauthorized
        }
        "amqp:not-found" | "com.microsoft:message-not-found" => FailureClass::NotFound,
        _ => FailureClass::Fatal,
    }
}

// ---------------------------------------------------------------------------
// Mapping helpers shared by the real implementation and tests.

/// A port event as the SDK's event: body and application properties.
pub(crate) fn to_sdk_event(event: &EventData) -> SdkEventData {
    let mut builder = SdkEventData::builder().with_body(event.body.to_vec());
    for (key, value) in &event.properties {
        builder = builder.add_property(key.clone(), AmqpSimpleValue::String(value.clone()));
    }
    builder.build()
}

/// An application property value as text: strings as they are, other AMQP
/// types in their usual rendering (events from other producers may carry them).
pub(crate) fn property_text(value: &AmqpSimpleValue) -> String {
    use base64::Engine as _;
    match value {
        AmqpSimpleValue::Null => String::new(),
        AmqpSimpleValue::Boolean(v) => v.to_string(),
        AmqpSimpleValue::UByte(v) => v.to_string(),
        AmqpSimpleValue::Byte(v) => v.to_string(),
        AmqpSimpleValue::Char(v) => v.to_string(),
        AmqpSimpleValue::UShort(v) => v.to_string(),
        AmqpSimpleValue::Short(v) => v.to_string(),
        AmqpSimpleValue::UInt(v) => v.to_string(),
        AmqpSimpleValue::Int(v) => v.to_string(),
        AmqpSimpleValue::ULong(v) => v.to_string(),
        AmqpSimpleValue::Long(v) => v.to_string(),
        AmqpSimpleValue::Float(v) => v.to_string(),
        AmqpSimpleValue::Double(v) => v.to_string(),
        AmqpSimpleValue::Decimal128(v) => hex::encode(v),
        AmqpSimpleValue::Decimal64(v) => hex::encode(v),
        AmqpSimpleValue::Decimal32(v) => hex::encode(v),
        AmqpSimpleValue::TimeStamp(ts) => {
            ts.0.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or_else(String::new, |d| d.as_millis().to_string())
        }
        AmqpSimpleValue::Uuid(v) => v.to_string(),
        AmqpSimpleValue::String(v) => v.clone(),
        AmqpSimpleValue::Symbol(v) => v.0.clone(),
        AmqpSimpleValue::Binary(v) => base64::engine::general_purpose::STANDARD.encode(v),
        AmqpSimpleValue::Described(_) => "<described>".to_string(),
    }
}

fn raw_event(event: &azure_messaging_eventhubs::models::ReceivedEventData) -> RawEvent {
    let data = event.event_data();
    RawEvent {
        sequence_number: event.sequence_number(),
        offset: event.offset().clone(),
        enqueued_time: event.enqueued_time(),
        body: data.body().map_or_else(Bytes::new, Bytes::copy_from_slice),
        properties: data
            .properties()
            .map(|props| {
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), property_text(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// The real SDK.

/// Opens `azure_messaging_eventhubs` clients on one namespace.
pub(crate) struct SdkConnector {
    pub namespace: String,
    pub credential: Arc<dyn TokenCredential>,
    pub retry: RetryOptions,
    pub application_id: String,
}

#[async_trait]
impl Connector for SdkConnector {
    async fn open_producer(&self, hub: &str) -> Result<Arc<dyn Producer>, SdkError> {
        let client = ProducerClient::builder()
            .with_application_id(self.application_id.clone())
            .with_retry_options(self.retry.clone())
            .open(&self.namespace, hub, self.credential.clone())
            .await
            .map_err(|e| classify(&e, "opening the producer"))?;
        Ok(Arc::new(SdkProducer { client }))
    }

    async fn open_consumer(
        &self,
        hub: &str,
        consumer_group: &str,
    ) -> Result<Arc<dyn Consumer>, SdkError> {
        let client = ConsumerClient::builder()
            .with_application_id(self.application_id.clone())
            .with_retry_options(self.retry.clone())
            .with_consumer_group(consumer_group.to_string())
            .open(&self.namespace, hub.to_string(), self.credential.clone())
            .await
            .map_err(|e| classify(&e, "opening the consumer"))?;
        Ok(Arc::new(SdkConsumer { client }))
    }
}

struct SdkProducer {
    client: ProducerClient,
}

#[async_trait]
impl Producer for SdkProducer {
    async fn create_batch<'a>(
        &'a self,
        target: &BatchTarget,
    ) -> Result<Box<dyn Batch + 'a>, SdkError> {
        let options = match target {
            BatchTarget::Partition(id) => EventDataBatchOptions {
                partition_id: Some(id.clone()),
                ..Default::default()
            },
            BatchTarget::PartitionKey(key) => EventDataBatchOptions {
                partition_key: Some(key.clone()),
                ..Default::default()
            },
        };
        let batch = self
            .client
            .create_batch(Some(options))
            .await
            .map_err(|e| classify(&e, "creating a batch"))?;
        Ok(Box::new(SdkBatch {
            client: &self.client,
            batch,
        }))
    }
}

struct SdkBatch<'a> {
    client: &'a ProducerClient,
    batch: EventDataBatch<'a>,
}

#[async_trait]
impl Batch for SdkBatch<'_> {
    fn try_add(&mut self, event: &EventData) -> Result<bool, SdkError> {
        self.batch
            .try_add_event_data(to_sdk_event(event), None)
            .map_err(|e| classify(&e, "adding an event to the batch"))
    }

    fn size_bytes(&self) -> u64 {
        self.batch.size()
    }

    async fn send(self: Box<Self>) -> Result<(), SdkError> {
        let SdkBatch { client, batch } = *self;
        client
            .send_batch(batch, None)
            .await
            .map_err(|e| classify(&e, "sending the batch"))
    }
}

struct SdkConsumer {
    client: ConsumerClient,
}

#[async_trait]
impl Consumer for SdkConsumer {
    async fn partition_ids(&self) -> Result<Vec<String>, SdkError> {
        self.client
            .get_eventhub_properties()
            .await
            .map(|p| p.partition_ids)
            .map_err(|e| classify(&e, "reading the event hub properties"))
    }

    async fn partition_properties(
        &self,
        partition: &str,
    ) -> Result<RawPartitionProperties, SdkError> {
        let p = self
            .client
            .get_partition_properties(partition)
            .await
            .map_err(|e| classify(&e, "reading the partition properties"))?;
        Ok(RawPartitionProperties {
            beginning_sequence_number: p.beginning_sequence_number,
            last_enqueued_sequence_number: p.last_enqueued_sequence_number,
            last_enqueued_time: p.last_enqueued_time_utc,
            is_empty: p.is_empty,
        })
    }

    async fn open_receiver(
        &self,
        partition: &str,
        start: SdkStartPosition,
        prefetch: u32,
    ) -> Result<Box<dyn EventSource>, SdkError> {
        let receiver = self
            .client
            .open_receiver_on_partition(
                partition.to_string(),
                Some(OpenReceiverOptions {
                    prefetch: Some(prefetch),
                    start_position: Some(start),
                    ..Default::default()
                }),
            )
            .await
            .map_err(|e| classify(&e, "opening the receiver"))?;
        Ok(Box::new(SdkEventSource { receiver }))
    }
}

/// How long a stopping receiver task may take to detach its link.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

struct SdkEventSource {
    receiver: EventReceiver,
}

impl EventSource for SdkEventSource {
    fn start(
        self: Box<Self>,
        tx: mpsc::Sender<Delivery>,
        stop: oneshot::Receiver<()>,
    ) -> tokio::task::JoinHandle<()> {
        let receiver = self.receiver;
        tokio::spawn(async move {
            {
                let stream = receiver.stream_events().map(|item| {
                    item.as_ref()
                        .map(raw_event)
                        .map_err(|e| classify(e, "receiving"))
                });
                forward(stream, tx, stop).await;
            }
            let partition = receiver.partition_id().to_string();
            // Detach the link so the service frees the receiver slot (5 per
            // partition and consumer group).
            match tokio::time::timeout(CLOSE_TIMEOUT, receiver.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(partition, %error, "closing the event hubs receiver failed")
                }
                Err(_) => tracing::debug!(partition, "closing the event hubs receiver timed out"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_error_kinds_are_classified() {
        let disconnected = EventHubsError::from(SdkErrorKind::ConsumerDisconnected(None));
        assert_eq!(classify(&disconnected, "x").class, FailureClass::Connection);
        let io = EventHubsError::from(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Io,
            "reset",
        ));
        assert_eq!(classify(&io, "x").class, FailureClass::Connection);
        let credential = EventHubsError::from(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            "no token",
        ));
        let err = classify(&credential, "opening");
        assert_eq!(err.class, FailureClass::Unauthorized);
        assert!(err.message.starts_with("opening: "), "{}", err.message);
        assert_eq!(
            classify(&EventHubsError::from(SdkErrorKind::SendRejected(None)), "x").class,
            FailureClass::Fatal
        );
        assert_eq!(
            classify(
                &EventHubsError::from(SdkErrorKind::InvalidManagementResponse),
                "x"
            )
            .class,
            FailureClass::Fatal
        );
    }

    #[test]
    fn amqp_conditions_are_classified_by_symbol() {
        assert_eq!(
            classify_condition("com.microsoft:server-busy"),
            FailureClass::Throttled
        );
        assert_eq!(
            classify_condition("amqp:unauthorized-access"),
            FailureClass::Unauthorized
        );
        assert_eq!(classify_condition("amqp:decode-error"), FailureClass::Fatal);
    }

    #[test]
    fn classes_decide_retry_and_reconnect() {
        assert!(FailureClass::Throttled.is_transient());
        assert!(!FailureClass::Throttled.needs_reconnect());
        assert!(FailureClass::Connection.is_transient());
        assert!(FailureClass::Connection.needs_reconnect());
        assert!(FailureClass::Timeout.needs_reconnect());
        assert!(!FailureClass::Unauthorized.is_transient());
        assert!(FailureClass::Unauthorized.needs_reconnect());
        assert!(!FailureClass::NotFound.needs_reconnect());
        assert!(!FailureClass::Fatal.is_transient());
        assert!(FailureClass::Fatal.needs_reconnect());
    }

    #[test]
    fn properties_become_string_application_properties() {
        let event = EventData::new("body")
            .with_property("id", "r1")
            .with_property("source", "demo");
        let sdk = to_sdk_event(&event);
        assert_eq!(sdk.body(), Some(&b"body"[..]));
        let props = sdk.properties().unwrap();
        assert_eq!(props.len(), 2);
        assert_eq!(props["id"], AmqpSimpleValue::String("r1".into()));
        assert_eq!(props["source"], AmqpSimpleValue::String("demo".into()));
        assert!(to_sdk_event(&EventData::new("x")).properties().is_none());
    }

    #[test]
    fn foreign_property_types_render_as_text() {
        assert_eq!(property_text(&AmqpSimpleValue::String("s".into())), "s");
        assert_eq!(property_text(&AmqpSimpleValue::Long(-7)), "-7");
        assert_eq!(property_text(&AmqpSimpleValue::Boolean(true)), "true");
        assert_eq!(property_text(&AmqpSimpleValue::Binary(vec![1, 2])), "AQI=");
        assert_eq!(property_text(&AmqpSimpleValue::Null), "");
    }

    #[tokio::test]
    async fn forward_sends_events_then_the_error_that_ends_the_stream() {
        let (tx, mut rx) = mpsc::channel(8);
        let (_stop_tx, stop) = oneshot::channel();
        let event = RawEvent {
            sequence_number: Some(1),
            offset: Some("10".into()),
            enqueued_time: None,
            body: Bytes::from_static(b"a"),
            properties: BTreeMap::new(),
        };
        let items = vec![
            Ok(event.clone()),
            Err(SdkError::new(FailureClass::Throttled, "busy")),
            Ok(event.clone()),
        ];
        let stopped = forward(futures::stream::iter(items), tx, stop).await;
        assert!(!stopped);
        assert_eq!(rx.recv().await, Some(Ok(event)));
        assert_eq!(
            rx.recv().await.unwrap().unwrap_err().class,
            FailureClass::Throttled
        );
        assert_eq!(rx.recv().await, None, "nothing after the error");

        let (tx, mut rx) = mpsc::channel(8);
        let (_stop_tx, stop) = oneshot::channel();
        assert!(!forward(futures::stream::empty(), tx, stop).await);
        let ended = rx.recv().await.unwrap().unwrap_err();
        assert_eq!(ended.class, FailureClass::Connection, "{ended}");
    }

    #[tokio::test]
    async fn forward_stops_on_request_and_when_the_reader_is_gone() {
        let (tx, _rx) = mpsc::channel(8);
        let (stop_tx, stop) = oneshot::channel::<()>();
        drop(stop_tx);
        assert!(forward(futures::stream::pending(), tx, stop).await);

        let (tx, rx) = mpsc::channel(1);
        let (_stop_tx, stop) = oneshot::channel();
        drop(rx);
        let one = RawEvent {
            sequence_number: Some(0),
            offset: Some("0".into()),
            enqueued_time: None,
            body: Bytes::new(),
            properties: BTreeMap::new(),
        };
        let endless = futures::stream::repeat(Ok(one));
        let stopped = tokio::time::timeout(Duration::from_secs(5), forward(endless, tx, stop))
            .await
            .expect("forward must stop when the receiver is dropped");
        assert!(stopped);
    }
}
