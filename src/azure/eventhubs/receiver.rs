//! [`EventHubsReceiver`]: the pull-style [`PartitionReceiver`] over the
//! SDK's push-style event stream.
//!
//! A task owns the SDK receiver (its `stream_events` borrows it) and
//! forwards events into a bounded channel sized by the prefetch; `receive`
//! waits at most `max_wait` for the first event, then drains what is already
//! there. An SDK error ends the task and surfaces from `receive` (after the
//! events that came before it) as a [`HubError`], so supervision rebuilds the
//! consumer from its checkpoint. Dropping the receiver stops the task, which
//! then detaches the link.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use hubflow_actors::ports::{HubError, PartitionReceiver, ReceivedEvent};
use tokio::sync::{mpsc, oneshot};

use super::sdk::{Delivery, EventSource, RawEvent, SdkError};
use super::{hub_error, observe_error};

/// A receiver on one partition of an Event Hub.
pub struct EventHubsReceiver {
    hub: String,
    partition: u32,
    rx: mpsc::Receiver<Delivery>,
    /// An error that arrived behind events already returned.
    pending_error: Option<SdkError>,
    /// Set once an error was returned: the stream is over.
    failed: Option<SdkError>,
    /// Dropped with the receiver: tells the task to stop.
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl EventHubsReceiver {
    pub(crate) fn start(
        hub: String,
        partition: u32,
        source: Box<dyn EventSource>,
        buffer: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = source.start(tx, stop_rx);
        EventHubsReceiver {
            hub,
            partition,
            rx,
            pending_error: None,
            failed: None,
            _stop: stop_tx,
            task,
        }
    }

    fn fail(&mut self, error: SdkError) -> HubError {
        observe_error(&self.hub, "receive", &error);
        tracing::warn!(hub = %self.hub, partition = self.partition, %error, "event hubs receiver failed");
        self.failed = Some(error.clone());
        hub_error(&self.hub, error)
    }

    fn map(&self, raw: RawEvent) -> Result<ReceivedEvent, SdkError> {
        to_received(self.partition, raw)
    }
}

impl Drop for EventHubsReceiver {
    fn drop(&mut self) {
        // `_stop` is dropped right after this and the task closes the link;
        // nothing to abort unless the runtime is going away.
        if self.task.is_finished() {
            return;
        }
        tracing::debug!(hub = %self.hub, partition = self.partition, "stopping event hubs receiver");
    }
}

#[async_trait]
impl PartitionReceiver for EventHubsReceiver {
    async fn receive(
        &mut self,
        max_events: usize,
        max_wait: Duration,
    ) -> Result<Vec<ReceivedEvent>, HubError> {
        if let Some(error) = self.failed.clone() {
            return Err(hub_error(&self.hub, error));
        }
        if let Some(error) = self.pending_error.take() {
            return Err(self.fail(error));
        }
        let max_events = max_events.max(1);
        let first = match tokio::time::timeout(max_wait, self.rx.recv()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(None) => {
                return Err(self.fail(SdkError::new(
                    super::sdk::FailureClass::Connection,
                    "the receiver task ended",
                )));
            }
            Ok(Some(Err(error))) => return Err(self.fail(error)),
            Ok(Some(Ok(raw))) => raw,
        };
        let mut events = Vec::with_capacity(max_events.min(256));
        match self.map(first) {
            Ok(event) => events.push(event),
            Err(error) => return Err(self.fail(error)),
        }
        while events.len() < max_events {
            match self.rx.try_recv() {
                Ok(Ok(raw)) => match self.map(raw) {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        // Return what came before; the error is next.
                        self.pending_error = Some(error);
                        break;
                    }
                },
                Ok(Err(error)) => {
                    self.pending_error = Some(error);
                    break;
                }
                Err(_) => break,
            }
        }
        metrics::counter!(
            "hubflow_eventhubs_received_events_total",
            "hub" => self.hub.clone(),
            "partition" => self.partition.to_string()
        )
        .increment(events.len() as u64);
        Ok(events)
    }
}

/// The port's event from the SDK's. Sequence number and offset are
/// required: without them the consumer cannot checkpoint.
pub(crate) fn to_received(partition: u32, raw: RawEvent) -> Result<ReceivedEvent, SdkError> {
    let malformed = |what: &str| {
        SdkError::new(
            super::sdk::FailureClass::Fatal,
            format!("received an event without {what} on partition {partition}"),
        )
    };
    let sequence_number = raw
        .sequence_number
        .ok_or_else(|| malformed("a sequence number"))?;
    let offset = raw
        .offset
        .filter(|o| !o.is_empty())
        .ok_or_else(|| malformed("an offset"))?;
    Ok(ReceivedEvent {
        partition,
        sequence_number,
        offset,
        enqueued_time_ms: raw.enqueued_time.map_or(0, system_time_ms),
        body: raw.body,
        properties: raw.properties,
    })
}

/// Milliseconds since the Unix epoch (negative before it).
pub(crate) fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use bytes::Bytes;

    use super::super::sdk::{FailureClass, forward};
    use super::*;

    fn raw(seq: i64) -> RawEvent {
        RawEvent {
            sequence_number: Some(seq),
            offset: Some(format!("{}", seq * 100)),
            enqueued_time: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + seq as u64)),
            body: Bytes::from(format!("e{seq}")),
            properties: [("index".to_string(), seq.to_string())].into(),
        }
    }

    /// An event source fed by the test through a channel.
    struct ScriptedSource {
        items: mpsc::UnboundedReceiver<Delivery>,
        stopped: Arc<AtomicBool>,
    }

    impl EventSource for ScriptedSource {
        fn start(
            self: Box<Self>,
            tx: mpsc::Sender<Delivery>,
            stop: oneshot::Receiver<()>,
        ) -> tokio::task::JoinHandle<()> {
            let stopped = self.stopped.clone();
            let stream = tokio_stream_from(self.items);
            tokio::spawn(async move {
                if forward(stream, tx, stop).await {
                    stopped.store(true, Ordering::SeqCst);
                }
            })
        }
    }

    fn tokio_stream_from(
        rx: mpsc::UnboundedReceiver<Delivery>,
    ) -> impl futures::Stream<Item = Delivery> {
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) })
    }

    fn scripted(
        buffer: usize,
    ) -> (
        EventHubsReceiver,
        mpsc::UnboundedSender<Delivery>,
        Arc<AtomicBool>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stopped = Arc::new(AtomicBool::new(false));
        let source = ScriptedSource {
            items: rx,
            stopped: stopped.clone(),
        };
        (
            EventHubsReceiver::start("hub".into(), 3, Box::new(source), buffer),
            tx,
            stopped,
        )
    }

    #[test]
    fn received_events_map_every_field() {
        let event = to_received(3, raw(7)).unwrap();
        assert_eq!(event.partition, 3);
        assert_eq!(event.sequence_number, 7);
        assert_eq!(event.offset, "700");
        assert_eq!(event.enqueued_time_ms, 1_700_000_000_007);
        assert_eq!(event.body, Bytes::from("e7"));
        assert_eq!(
            event.properties,
            BTreeMap::from([("index".to_string(), "7".to_string())])
        );
        let mut no_seq = raw(1);
        no_seq.sequence_number = None;
        assert_eq!(
            to_received(0, no_seq).unwrap_err().class,
            FailureClass::Fatal
        );
        let mut no_offset = raw(1);
        no_offset.offset = Some(String::new());
        assert!(to_received(0, no_offset).is_err());
        assert_eq!(system_time_ms(UNIX_EPOCH - Duration::from_millis(5)), -5);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_at_most_max_wait_for_the_first_event() {
        let (mut receiver, _tx, _) = scripted(16);
        let started = tokio::time::Instant::now();
        let events = receiver
            .receive(10, Duration::from_millis(400))
            .await
            .unwrap();
        assert!(events.is_empty());
        assert_eq!(started.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn returns_as_soon_as_an_event_arrives_then_drains_up_to_max() {
        let (mut receiver, tx, _) = scripted(16);
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for seq in 0..5 {
                tx.send(Ok(raw(seq))).unwrap();
            }
            tx
        });
        let started = tokio::time::Instant::now();
        let first = receiver.receive(1, Duration::from_secs(30)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].sequence_number, 0);
        let _tx = feeder.await.unwrap();
        // Let the task move the rest into the channel.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest = receiver.receive(3, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            rest.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let last = receiver.receive(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            last.iter().map(|e| e.sequence_number).collect::<Vec<_>>(),
            vec![4]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_surfaces_after_the_events_before_it_and_stays() {
        let (mut receiver, tx, _) = scripted(16);
        tx.send(Ok(raw(0))).unwrap();
        tx.send(Ok(raw(1))).unwrap();
        tx.send(Err(SdkError::new(
            FailureClass::Connection,
            "link detached",
        )))
        .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        let events = receiver.receive(10, Duration::from_secs(1)).await.unwrap();
        assert_eq!(events.len(), 2);
        let err = receiver
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("link detached"), "{err}");
        let again = receiver
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(again.to_string().contains("link detached"), "{again}");

        let (mut receiver, tx, _) = scripted(16);
        tx.send(Err(SdkError::new(
            FailureClass::Unauthorized,
            "token refused",
        )))
        .unwrap();
        let err = receiver
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, HubError::Other { .. }), "{err:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_stream_is_an_error_not_silence() {
        let (mut receiver, tx, _) = scripted(16);
        drop(tx);
        let err = receiver
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    #[tokio::test]
    async fn dropping_the_receiver_stops_the_task() {
        let (receiver, _tx, stopped) = scripted(1);
        assert!(!receiver.task.is_finished());
        drop(receiver);
        for _ in 0..200 {
            if stopped.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the receiver task did not stop after the receiver was dropped");
    }
}
