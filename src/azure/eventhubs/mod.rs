//! Azure Event Hubs as the [`Hub`] port, on `azure_messaging_eventhubs` 0.15.
//!
//! - [`EventHubsHub`] (this file): one Event Hub. Lazily opens and reuses
//!   one producer client and one consumer client per consumer group; a
//!   failure that points at the connection (or auth, or an unknown error)
//!   drops the cached client so the next call opens a fresh one. A publish
//!   is exactly one Event Hubs batch (`create_batch`, `try_add_event_data`,
//!   `send_batch`), to a partition id or a partition key; events that do not
//!   fit one batch fail with [`HubError::BatchTooLarge`] and nothing is sent.
//! - [`receiver`]: [`EventHubsReceiver`], the pull-style receiver over the
//!   SDK's event stream (a task, a bounded channel, `receive` with a wait).
//! - [`config`]: the `[event_hubs]` section and its validation (Entra ID
//!   only; connection strings are refused with the reason).
//! - `sdk`: the seam: small traits for the SDK operations we use, their
//!   implementation on the SDK, error classification. Tests run the glue
//!   against an in-memory fake of that seam.
//!
//! Partition ids are the strings `"0".."n-1"`; they are read once from the
//! hub's properties and cached (Event Hubs partition counts are fixed).
//! `StartPosition::Latest` is resolved at `open_receiver` to "after the
//! partition's last enqueued sequence number", since the service would
//! resolve it only when the receiver's link attaches.

pub mod config;
pub mod receiver;
mod sdk;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use azure_messaging_eventhubs::{RetryOptions, StartLocation, StartPosition as SdkStartPosition};
use hubflow_actors::ports::{
    EventData, Hub, HubError, PartitionProperties, PartitionReceiver, PublishTarget, StartPosition,
    Unpublished, publish_in_order,
};
use tokio::sync::{Mutex, OnceCell};

pub use config::{EventHubsAuth, EventHubsAuthConfig, EventHubsConfig, EventHubsSettings};
pub use receiver::EventHubsReceiver;

use sdk::{BatchTarget, Connector, Consumer, FailureClass, Producer, SdkConnector, SdkError};

/// The application id the clients announce to the service.
const APPLICATION_ID: &str = "hubflow";

/// One Event Hub behind the [`Hub`] port.
pub struct EventHubsHub {
    name: String,
    /// The consumer group of the management (properties) client.
    management_group: String,
    prefetch: u32,
    max_batch_bytes: u64,
    operation_timeout: Duration,
    connector: Arc<dyn Connector>,
    producer: Mutex<Option<Arc<dyn Producer>>>,
    consumers: Mutex<HashMap<String, Arc<dyn Consumer>>>,
    partitions: OnceCell<Vec<u32>>,
}

impl std::fmt::Debug for EventHubsHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHubsHub")
            .field("name", &self.name)
            .field("management_group", &self.management_group)
            .field("prefetch", &self.prefetch)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .finish_non_exhaustive()
    }
}

impl EventHubsHub {
    /// The hub `hub` of the namespace in `settings`, with a credential of
    /// its own. Makes no request: clients open on first use.
    pub fn new(settings: &EventHubsSettings, hub: impl Into<String>) -> anyhow::Result<Self> {
        let credential = credential(settings)?;
        Ok(Self::with_credential(settings, hub, credential))
    }

    /// Like [`EventHubsHub::new`] with a credential shared with other clients.
    pub fn with_credential(
        settings: &EventHubsSettings,
        hub: impl Into<String>,
        credential: Arc<dyn azure_core::credentials::TokenCredential>,
    ) -> Self {
        let connector = SdkConnector {
            namespace: settings.namespace.clone(),
            credential,
            retry: RetryOptions {
                initial_delay: to_time(settings.retry_initial),
                max_delay: to_time(settings.retry_max),
                max_retries: settings.max_retries,
                max_total_elapsed: to_time(settings.operation_timeout),
            },
            application_id: APPLICATION_ID.to_string(),
        };
        Self::from_parts(settings, hub.into(), Arc::new(connector))
    }

    fn from_parts(
        settings: &EventHubsSettings,
        name: String,
        connector: Arc<dyn Connector>,
    ) -> Self {
        EventHubsHub {
            name,
            management_group: settings.consumer_group.clone(),
            prefetch: settings.prefetch,
            max_batch_bytes: settings.max_batch_bytes,
            operation_timeout: settings.operation_timeout,
            connector,
            producer: Mutex::new(None),
            consumers: Mutex::new(HashMap::new()),
            partitions: OnceCell::new(),
        }
    }

    /// Run `op` with the operation deadline; a timeout is a [`SdkError`].
    async fn timed<T>(
        &self,
        what: &str,
        op: impl Future<Output = Result<T, SdkError>>,
    ) -> Result<T, SdkError> {
        match tokio::time::timeout(self.operation_timeout, op).await {
            Ok(result) => result,
            Err(_) => Err(SdkError::new(
                FailureClass::Timeout,
                format!("{what}: no answer within {:?}", self.operation_timeout),
            )),
        }
    }

    async fn producer(&self) -> Result<Arc<dyn Producer>, SdkError> {
        let mut slot = self.producer.lock().await;
        if let Some(producer) = slot.as_ref() {
            return Ok(producer.clone());
        }
        let producer = self
            .timed(
                "opening the producer",
                self.connector.open_producer(&self.name),
            )
            .await?;
        metrics::counter!("hubflow_eventhubs_client_opens_total", "hub" => self.name.clone(), "client" => "producer")
            .increment(1);
        tracing::info!(hub = %self.name, "event hubs producer opened");
        *slot = Some(producer.clone());
        Ok(producer)
    }

    async fn consumer(&self, group: &str) -> Result<Arc<dyn Consumer>, SdkError> {
        let mut clients = self.consumers.lock().await;
        if let Some(consumer) = clients.get(group) {
            return Ok(consumer.clone());
        }
        let consumer = self
            .timed(
                "opening the consumer",
                self.connector.open_consumer(&self.name, group),
            )
            .await?;
        metrics::counter!("hubflow_eventhubs_client_opens_total", "hub" => self.name.clone(), "client" => "consumer")
            .increment(1);
        tracing::info!(hub = %self.name, consumer_group = group, "event hubs consumer opened");
        clients.insert(group.to_string(), consumer.clone());
        Ok(consumer)
    }

    /// Drop the cached producer if `error` calls for it and it is still `used`
    /// (another call may have replaced it already).
    async fn after_producer_error(&self, used: Option<&Arc<dyn Producer>>, error: &SdkError) {
        if !error.class.needs_reconnect() {
            return;
        }
        let mut slot = self.producer.lock().await;
        let same = match (slot.as_ref(), used) {
            (Some(cached), Some(used)) => Arc::ptr_eq(cached, used),
            _ => false,
        };
        if same {
            *slot = None;
            tracing::info!(hub = %self.name, %error, "dropping the event hubs producer; the next call reconnects");
        }
    }

    async fn after_consumer_error(
        &self,
        group: &str,
        used: Option<&Arc<dyn Consumer>>,
        error: &SdkError,
    ) {
        if !error.class.needs_reconnect() {
            return;
        }
        let mut clients = self.consumers.lock().await;
        let same = match (clients.get(group), used) {
            (Some(cached), Some(used)) => Arc::ptr_eq(cached, used),
            _ => false,
        };
        if same {
            clients.remove(group);
            tracing::info!(hub = %self.name, consumer_group = group, %error, "dropping the event hubs consumer; the next call reconnects");
        }
    }

    /// Run a management call on the management consumer, with the
    /// reconnect bookkeeping.
    async fn manage<T, F>(&self, op: &'static str, call: F) -> Result<T, HubError>
    where
        F: for<'c> FnOnce(&'c dyn Consumer) -> futures::future::BoxFuture<'c, Result<T, SdkError>>,
    {
        let group = self.management_group.clone();
        let consumer = match self.consumer(&group).await {
            Ok(consumer) => consumer,
            Err(error) => return Err(self.fail(op, error)),
        };
        let result = self.timed(op, call(consumer.as_ref())).await;
        match result {
            Ok(value) => Ok(value),
            Err(error) => {
                self.after_consumer_error(&group, Some(&consumer), &error)
                    .await;
                Err(self.fail(op, error))
            }
        }
    }

    /// Count, log and convert a failure.
    fn fail(&self, op: &'static str, error: SdkError) -> HubError {
        observe_error(&self.name, op, &error);
        tracing::warn!(hub = %self.name, op, %error, "event hubs call failed");
        hub_error(&self.name, error)
    }

    async fn check_partition(&self, partition: u32) -> Result<(), HubError> {
        if self.partition_ids().await?.contains(&partition) {
            Ok(())
        } else {
            Err(HubError::NoSuchPartition {
                hub: self.name.clone(),
                partition,
            })
        }
    }

    /// One publish: one SDK batch holding every event, or nothing sent.
    async fn publish_one(
        &self,
        target: &PublishTarget,
        events: &[EventData],
    ) -> Result<(), HubError> {
        let batch_target = match target {
            PublishTarget::Partition(p) => {
                self.check_partition(*p).await?;
                BatchTarget::Partition(p.to_string())
            }
            PublishTarget::PartitionKey(key) => BatchTarget::PartitionKey(key.clone()),
        };
        if events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        match self.publish_inner(&batch_target, events).await {
            Ok(bytes) => {
                let hub = self.name.clone();
                metrics::counter!("hubflow_eventhubs_send_batches_total", "hub" => hub.clone())
                    .increment(1);
                metrics::counter!("hubflow_eventhubs_sent_events_total", "hub" => hub.clone())
                    .increment(events.len() as u64);
                metrics::counter!("hubflow_eventhubs_sent_bytes_total", "hub" => hub.clone())
                    .increment(bytes);
                metrics::histogram!("hubflow_eventhubs_send_duration_seconds", "hub" => hub)
                    .record(started.elapsed().as_secs_f64());
                Ok(())
            }
            Err(PublishFailure::TooLarge { size, limit }) => {
                metrics::counter!("hubflow_eventhubs_batches_too_large_total", "hub" => self.name.clone())
                    .increment(1);
                Err(HubError::BatchTooLarge {
                    hub: self.name.clone(),
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                    limit: usize::try_from(limit).unwrap_or(usize::MAX),
                })
            }
            Err(PublishFailure::Sdk(error)) => Err(self.fail("publish", error)),
        }
    }

    async fn publish_inner(
        &self,
        target: &BatchTarget,
        events: &[EventData],
    ) -> Result<u64, PublishFailure> {
        let producer = self.producer().await.map_err(PublishFailure::Sdk)?;
        let result = build_and_send(
            producer.as_ref(),
            target,
            events,
            self.max_batch_bytes,
            self.operation_timeout,
        )
        .await;
        if let Err(PublishFailure::Sdk(error)) = &result {
            self.after_producer_error(Some(&producer), error).await;
        }
        result
    }
}

/// Why a publish failed.
#[derive(Debug)]
enum PublishFailure {
    TooLarge { size: u64, limit: u64 },
    Sdk(SdkError),
}

/// Build one batch holding every event and send it. Nothing is sent unless
/// all events fit: within the SDK's (link) limit and within `max_bytes`.
async fn build_and_send(
    producer: &dyn Producer,
    target: &BatchTarget,
    events: &[EventData],
    max_bytes: u64,
    timeout: Duration,
) -> Result<u64, PublishFailure> {
    let deadline = |what: &str| {
        PublishFailure::Sdk(SdkError::new(
            FailureClass::Timeout,
            format!("{what}: no answer within {timeout:?}"),
        ))
    };
    let mut batch = tokio::time::timeout(timeout, producer.create_batch(target))
        .await
        .map_err(|_| deadline("creating a batch"))?
        .map_err(PublishFailure::Sdk)?;
    for (i, event) in events.iter().enumerate() {
        let added = batch.try_add(event).map_err(PublishFailure::Sdk)?;
        let size = batch.size_bytes();
        if !added {
            // The link's limit: the batch held `size` bytes and no more.
            let rest: u64 = events[i..].iter().map(estimated_size).sum();
            return Err(PublishFailure::TooLarge {
                size: size + rest,
                limit: size.min(max_bytes),
            });
        }
        if size > max_bytes {
            let rest: u64 = events[i + 1..].iter().map(estimated_size).sum();
            return Err(PublishFailure::TooLarge {
                size: size + rest,
                limit: max_bytes,
            });
        }
    }
    let size = batch.size_bytes();
    tokio::time::timeout(timeout, batch.send())
        .await
        .map_err(|_| deadline("sending the batch"))?
        .map_err(PublishFailure::Sdk)?;
    Ok(size)
}

/// About what one event adds to a batch (AMQP framing included), for the
/// size reported by [`HubError::BatchTooLarge`] on events never encoded.
fn estimated_size(event: &EventData) -> u64 {
    let properties: usize = event
        .properties
        .iter()
        .map(|(k, v)| k.len() + v.len() + 8)
        .sum();
    (event.body.len() + properties + 64) as u64
}

/// The SDK's start position for the port's.
pub(crate) fn start_position(from: StartPosition) -> SdkStartPosition {
    match from {
        StartPosition::Earliest => SdkStartPosition {
            location: StartLocation::Earliest,
            inclusive: false,
        },
        StartPosition::Latest => SdkStartPosition {
            location: StartLocation::Latest,
            inclusive: false,
        },
        // Before the first sequence number: everything retained.
        StartPosition::SequenceNumber { value, .. } if value < 0 => SdkStartPosition {
            location: StartLocation::Earliest,
            inclusive: false,
        },
        StartPosition::SequenceNumber { value, inclusive } => SdkStartPosition {
            location: StartLocation::SequenceNumber(value),
            inclusive,
        },
    }
}

/// The port's error for a classified SDK failure.
pub(crate) fn hub_error(hub: &str, error: SdkError) -> HubError {
    if error.class.is_transient() {
        HubError::Transient {
            hub: hub.to_string(),
            message: error.to_string(),
        }
    } else {
        HubError::Other {
            hub: hub.to_string(),
            message: error.to_string(),
        }
    }
}

pub(crate) fn observe_error(hub: &str, op: &'static str, error: &SdkError) {
    metrics::counter!(
        "hubflow_eventhubs_errors_total",
        "hub" => hub.to_string(),
        "op" => op,
        "kind" => error.class.label()
    )
    .increment(1);
}

#[async_trait]
impl Hub for EventHubsHub {
    fn name(&self) -> &str {
        &self.name
    }

    async fn partition_ids(&self) -> Result<Vec<u32>, HubError> {
        self.partitions
            .get_or_try_init(|| async {
                let ids = self
                    .manage("partition_ids", |c| Box::pin(c.partition_ids()))
                    .await?;
                parse_partition_ids(&self.name, &ids)
            })
            .await
            .cloned()
    }

    async fn publish(&self, target: PublishTarget, events: Vec<EventData>) -> Result<(), HubError> {
        self.publish_one(&target, &events).await
    }

    async fn publish_many(
        &self,
        batches: Vec<(PublishTarget, Vec<EventData>)>,
    ) -> Result<(), Unpublished> {
        // One send per batch (an Event Hubs batch targets one partition);
        // the events stay ours until sent, so a refused batch comes back
        // without a copy.
        publish_in_order(batches, |target, events| async move {
            let result = self.publish_one(&target, &events).await;
            (result, target, events)
        })
        .await
    }

    async fn open_receiver(
        &self,
        consumer_group: &str,
        partition: u32,
        from: StartPosition,
    ) -> Result<Box<dyn PartitionReceiver>, HubError> {
        self.check_partition(partition).await?;
        // The service resolves `@latest` when the link attaches, which is
        // later (the receiver task attaches it): pin it to the end of the
        // partition now, as the port means "after what exists at open".
        let from = match from {
            StartPosition::Latest => StartPosition::after(
                self.partition_properties(partition)
                    .await?
                    .last_enqueued_sequence_number,
            ),
            other => other,
        };
        let consumer = match self.consumer(consumer_group).await {
            Ok(consumer) => consumer,
            Err(error) => return Err(self.fail("open_receiver", error)),
        };
        let opened = self
            .timed(
                "opening the receiver",
                consumer.open_receiver(&partition.to_string(), start_position(from), self.prefetch),
            )
            .await;
        match opened {
            Ok(source) => {
                tracing::debug!(hub = %self.name, consumer_group, partition, ?from, "event hubs receiver opened");
                Ok(Box::new(EventHubsReceiver::start(
                    self.name.clone(),
                    partition,
                    source,
                    self.prefetch as usize,
                )))
            }
            Err(error) => {
                self.after_consumer_error(consumer_group, Some(&consumer), &error)
                    .await;
                Err(self.fail("open_receiver", error))
            }
        }
    }

    async fn partition_properties(&self, partition: u32) -> Result<PartitionProperties, HubError> {
        self.check_partition(partition).await?;
        let id = partition.to_string();
        let raw = self
            .manage("partition_properties", move |c| {
                Box::pin(async move { c.partition_properties(&id).await })
            })
            .await?;
        Ok(PartitionProperties {
            partition,
            beginning_sequence_number: raw.beginning_sequence_number,
            last_enqueued_sequence_number: raw.last_enqueued_sequence_number,
            last_enqueued_time_ms: if raw.is_empty {
                None
            } else {
                raw.last_enqueued_time.map(receiver::system_time_ms)
            },
            is_empty: raw.is_empty,
        })
    }
}

/// `"0".."n-1"` as numbers, sorted; anything else is an error.
fn parse_partition_ids(hub: &str, ids: &[String]) -> Result<Vec<u32>, HubError> {
    let mut parsed = ids
        .iter()
        .map(|id| {
            id.parse::<u32>().map_err(|_| HubError::Other {
                hub: hub.to_string(),
                message: format!("partition id {id:?} is not a number"),
            })
        })
        .collect::<Result<Vec<u32>, HubError>>()?;
    parsed.sort_unstable();
    if parsed.is_empty() || parsed.iter().enumerate().any(|(i, &p)| p as usize != i) {
        return Err(HubError::Other {
            hub: hub.to_string(),
            message: format!("partition ids {ids:?} are not 0..n"),
        });
    }
    Ok(parsed)
}

/// The Entra ID credential of the settings.
pub fn credential(
    settings: &EventHubsSettings,
) -> anyhow::Result<Arc<dyn azure_core::credentials::TokenCredential>> {
    match &settings.auth {
        EventHubsAuth::Entra {
            credential,
            client_id,
        } => crate::azure::blob::entra_credential(*credential, client_id.clone())
            .context("creating the entra id credential for event hubs"),
    }
}

fn to_time(d: Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::MAX)
}

#[cfg(test)]
mod tests;
