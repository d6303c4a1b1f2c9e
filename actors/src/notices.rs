//! "Landed" notifications: what they may look like, and how they reach the
//! transformer of the right partition.
//!
//! A notice says "this blob now exists". Two producers write them to hub
//! "landed":
//! - the blob-writer, a [`LandedEvent`] per raw blob, on landed partition
//!   `ingest partition % landed partitions`;
//! - Azure Event Grid, a `Microsoft.Storage.BlobCreated` event per blob
//!   written to the account (the Azure-native trigger), in the Event Grid
//!   schema or the CloudEvents 1.0 schema, on whatever partition Event Grid
//!   picks.
//!
//! Because Event Grid picks partitions, a transformer cannot just read "its"
//! landed partition. Instead one [`NoticeListener`] per landed partition
//! (on every node) reads every notice, parses it ([`parse_notices`]), maps a
//! raw blob's name to its ingest partition and wakes that partition's
//! transformer through the node's [`WakeBoard`]. Notices for other
//! containers or other hubs (an unfiltered Event Grid subscription also
//! reports curated files) are counted and ignored; a malformed notice is
//! logged, counted and skipped.
//!
//! Notices are only hints: transformers also walk their raw chain every
//! `poll_wait`, so a lost, late or malformed notice delays a blob, never
//! loses it. The listener therefore starts at the latest event and keeps no
//! checkpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hubflow_supervision::ActorProbe;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::ports::{Hub, PartitionReceiver, StartPosition};
use crate::record::{LandedEvent, RawBlobName};

/// The Event Grid event type of a created (or replaced) blob.
pub const BLOB_CREATED: &str = "Microsoft.Storage.BlobCreated";

/// A blob a notice reports as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandedBlob {
    pub container: String,
    pub blob: String,
}

/// Which producer's shape a notice had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// A blob-writer's [`LandedEvent`].
    Writer,
    /// Event Grid schema (`eventType`, `subject`, `data.url`).
    EventGrid,
    /// CloudEvents 1.0 schema (`specversion`, `type`, `subject`).
    CloudEvent,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Writer => "writer",
            NoticeKind::EventGrid => "event_grid",
            NoticeKind::CloudEvent => "cloud_event",
        }
    }
}

/// What one hub event said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notices {
    pub kind: NoticeKind,
    /// Blobs created.
    pub blobs: Vec<LandedBlob>,
    /// Events of other types (e.g. `BlobDeleted`), skipped.
    pub other_events: usize,
}

/// Why a hub event is not a notice we understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoticeError {
    #[error("notice is not JSON: {0}")]
    NotJson(String),
    #[error("notice is neither a blob-writer notice, an Event Grid event nor a CloudEvent")]
    UnknownShape,
    #[error("{kind} BlobCreated event has no usable blob location (subject {subject:?})")]
    NoBlobLocation { kind: &'static str, subject: String },
}

/// Parse one hub event body: a [`LandedEvent`], one Event Grid or CloudEvents
/// event, or an array of them (Event Grid delivers arrays).
pub fn parse_notices(body: &[u8]) -> Result<Notices, NoticeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| NoticeError::NotJson(e.to_string()))?;
    match value {
        Value::Array(events) => {
            let mut kind = None;
            let mut blobs = Vec::new();
            let mut other_events = 0;
            for event in &events {
                let (k, blob) = parse_azure_event(event)?;
                kind.get_or_insert(k);
                match blob {
                    Some(b) => blobs.push(b),
                    None => other_events += 1,
                }
            }
            Ok(Notices {
                kind: kind.unwrap_or(NoticeKind::EventGrid),
                blobs,
                other_events,
            })
        }
        Value::Object(ref map) if map.contains_key("container") && map.contains_key("blob") => {
            let event: LandedEvent =
                serde_json::from_value(value).map_err(|_| NoticeError::UnknownShape)?;
            Ok(Notices {
                kind: NoticeKind::Writer,
                blobs: vec![LandedBlob {
                    container: event.container,
                    blob: event.blob,
                }],
                other_events: 0,
            })
        }
        Value::Object(_) => {
            let (kind, blob) = parse_azure_event(&value)?;
            Ok(Notices {
                kind,
                other_events: usize::from(blob.is_none()),
                blobs: blob.into_iter().collect(),
            })
        }
        _ => Err(NoticeError::UnknownShape),
    }
}

/// One Event Grid or CloudEvents event: its schema and, for BlobCreated, the blob.
fn parse_azure_event(event: &Value) -> Result<(NoticeKind, Option<LandedBlob>), NoticeError> {
    let (kind, event_type) = if let Some(t) = event.get("eventType").and_then(Value::as_str) {
        (NoticeKind::EventGrid, t)
    } else if event.get("specversion").is_some() {
        let t = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or(NoticeError::UnknownShape)?;
        (NoticeKind::CloudEvent, t)
    } else {
        return Err(NoticeError::UnknownShape);
    };
    if event_type != BLOB_CREATED {
        return Ok((kind, None));
    }
    let subject = event.get("subject").and_then(Value::as_str).unwrap_or("");
    let blob = blob_from_subject(subject)
        .or_else(|| {
            let url = event.pointer("/data/url").and_then(Value::as_str)?;
            blob_from_url(url)
        })
        .ok_or_else(|| NoticeError::NoBlobLocation {
            kind: kind.as_str(),
            subject: subject.chars().take(200).collect(),
        })?;
    Ok((kind, Some(blob)))
}

/// `/blobServices/default/containers/<container>/blobs/<name>`.
fn blob_from_subject(subject: &str) -> Option<LandedBlob> {
    let rest = subject.strip_prefix("/blobServices/default/containers/")?;
    let (container, blob) = rest.split_once("/blobs/")?;
    if container.is_empty() || blob.is_empty() {
        return None;
    }
    Some(LandedBlob {
        container: container.to_string(),
        blob: percent_decode(blob)?,
    })
}

/// `https://<account>.blob.core.windows.net/<container>/<name>`, or the
/// path-style `http://127.0.0.1:10000/<account>/<container>/<name>` of
/// Azurite and private endpoints addressed by IP.
fn blob_from_url(url: &str) -> Option<LandedBlob> {
    let after_scheme = url.split_once("://")?.1;
    let (host, path) = after_scheme.split_once('/')?;
    let path = path.split(['?', '#']).next()?;
    let host_name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let path_style = host_name.parse::<std::net::IpAddr>().is_ok() || host_name == "localhost";
    let path = if path_style {
        path.split_once('/')?.1
    } else {
        path
    };
    let (container, blob) = path.split_once('/')?;
    if container.is_empty() || blob.is_empty() {
        return None;
    }
    Some(LandedBlob {
        container: container.to_string(),
        blob: percent_decode(blob)?,
    })
}

/// `%XX` escapes to bytes; `None` for a broken escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The node's wake-up lines, one per ingest partition. A wake before the
/// transformer waits is kept (one pending wake-up per partition), so none is
/// lost between a transformer's chain walk and its next wait.
#[derive(Clone, Default)]
pub struct WakeBoard {
    lines: Arc<Mutex<HashMap<u32, Arc<tokio::sync::Notify>>>>,
}

impl WakeBoard {
    /// The line a partition's transformer waits on.
    pub fn line(&self, partition: u32) -> Arc<tokio::sync::Notify> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.entry(partition).or_default().clone()
    }

    /// Wake the partition's transformer (now, or at its next wait).
    pub fn wake(&self, partition: u32) {
        self.line(partition).notify_one();
    }
}

impl std::fmt::Debug for WakeBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines = self.lines.lock().map(|l| l.len()).unwrap_or(0);
        f.debug_struct("WakeBoard").field("lines", &lines).finish()
    }
}

#[derive(Debug)]
pub enum NoticeListenerMsg {
    /// Read the next notices (waiting up to `max_wait`) and route them.
    Poll,
}

#[derive(Clone)]
pub struct NoticeListenerParams {
    pub landed: Arc<dyn Hub>,
    /// The landed partition this listener reads.
    pub landed_partition: u32,
    pub consumer_group: String,
    /// Raw blobs of this hub in this container wake their partition.
    pub ingest_hub: String,
    pub raw_container: String,
    pub board: WakeBoard,
    pub max_wait: Duration,
    pub probe: ActorProbe,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeListenerStatus {
    pub landed_partition: u32,
    /// Hub events read.
    pub events: u64,
    /// Raw blobs routed to a transformer.
    pub routed: u64,
    /// Blobs of other containers or hubs, and non-BlobCreated events.
    pub ignored: u64,
    /// Events that are not notices.
    pub malformed: u64,
    pub last_malformed: Option<String>,
}

pub struct NoticeListenerState {
    params: NoticeListenerParams,
    receiver: Box<dyn PartitionReceiver>,
    status: NoticeListenerStatus,
}

/// Reads one landed partition and wakes transformers (see the module doc).
pub struct NoticeListener;

impl Actor for NoticeListener {
    type Msg = NoticeListenerMsg;
    type State = NoticeListenerState;
    type Arguments = NoticeListenerParams;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        params: NoticeListenerParams,
    ) -> Result<Self::State, ActorProcessingErr> {
        let receiver = params
            .landed
            .open_receiver(
                &params.consumer_group,
                params.landed_partition,
                StartPosition::Latest,
            )
            .await?;
        info!(
            landed_partition = params.landed_partition,
            "notice listener started"
        );
        params.probe.set_busy(true);
        let _ = myself.cast(NoticeListenerMsg::Poll);
        Ok(NoticeListenerState {
            status: NoticeListenerStatus {
                landed_partition: params.landed_partition,
                ..Default::default()
            },
            params,
            receiver,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NoticeListenerMsg::Poll => {
                let events = state.receiver.receive(256, state.params.max_wait).await?;
                state.params.probe.tick();
                for event in &events {
                    route(state, &event.body);
                }
                state.params.probe.publish(&state.status);
                let _ = myself.cast(NoticeListenerMsg::Poll);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.params.probe.set_busy(false);
        Ok(())
    }
}

/// Wake the transformers of the raw blobs one hub event reports.
fn route(state: &mut NoticeListenerState, body: &[u8]) {
    let params = &state.params;
    let status = &mut state.status;
    status.events += 1;
    let notices = match parse_notices(body) {
        Ok(n) => n,
        Err(error) => {
            status.malformed += 1;
            status.last_malformed = Some(error.to_string());
            metrics::counter!("hubflow_notices_events_total", "kind" => "malformed").increment(1);
            warn!(
                landed_partition = params.landed_partition,
                %error,
                bytes = body.len(),
                "malformed landed notice skipped"
            );
            return;
        }
    };
    metrics::counter!("hubflow_notices_events_total", "kind" => notices.kind.as_str()).increment(1);
    status.ignored += notices.other_events as u64;
    for blob in notices.blobs {
        let partition = (blob.container == params.raw_container)
            .then(|| RawBlobName::parse(&blob.blob))
            .flatten()
            .filter(|name| name.hub == params.ingest_hub)
            .map(|name| name.partition);
        match partition {
            Some(partition) => {
                status.routed += 1;
                metrics::counter!("hubflow_notices_routed_total").increment(1);
                params.board.wake(partition);
            }
            None => {
                status.ignored += 1;
                metrics::counter!("hubflow_notices_ignored_total").increment(1);
                debug!(container = %blob.container, blob = %blob.blob, "notice for another blob ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::MemoryHub;
    use crate::ports::{EventData, PublishTarget};
    use serde_json::json;

    fn raw_name(partition: u32) -> String {
        RawBlobName {
            hub: "ingest".into(),
            partition,
            first_seq: 10,
            last_seq: 19,
        }
        .to_name()
    }

    fn event_grid(container: &str, blob: &str) -> Value {
        json!({
            "topic": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct",
            "subject": format!("/blobServices/default/containers/{container}/blobs/{blob}"),
            "eventType": BLOB_CREATED,
            "id": "831e1650-001e-001b-66ab-eeb76e069631",
            "data": {
                "api": "PutBlockList",
                "url": format!("https://acct.blob.core.windows.net/{container}/{blob}"),
                "contentLength": 524288,
                "blobType": "BlockBlob"
            },
            "dataVersion": "",
            "metadataVersion": "1",
            "eventTime": "2026-11-28T08:00:00.000Z"
        })
    }

    #[test]
    fn writer_notices_parse() {
        let body = serde_json::to_vec(&LandedEvent {
            container: "raw".into(),
            blob: raw_name(3),
            records: 10,
            bytes: 100,
        })
        .unwrap();
        let n = parse_notices(&body).unwrap();
        assert_eq!(n.kind, NoticeKind::Writer);
        assert_eq!(
            n.blobs,
            vec![LandedBlob {
                container: "raw".into(),
                blob: raw_name(3)
            }]
        );
    }

    #[test]
    fn event_grid_arrays_and_single_events_parse() {
        let body = serde_json::to_vec(&json!([
            event_grid("raw", &raw_name(1)),
            {"eventType": "Microsoft.Storage.BlobDeleted", "subject": "/blobServices/default/containers/raw/blobs/x"},
            event_grid("curated", "demo/part.parquet"),
        ]))
        .unwrap();
        let n = parse_notices(&body).unwrap();
        assert_eq!(n.kind, NoticeKind::EventGrid);
        assert_eq!(n.other_events, 1);
        assert_eq!(n.blobs.len(), 2);
        assert_eq!(n.blobs[0].blob, raw_name(1));
        assert_eq!(n.blobs[1].container, "curated");

        let single = serde_json::to_vec(&event_grid("raw", &raw_name(2))).unwrap();
        assert_eq!(parse_notices(&single).unwrap().blobs[0].blob, raw_name(2));
    }

    #[test]
    fn cloud_events_parse_and_urls_are_a_fallback() {
        let body = serde_json::to_vec(&json!({
            "specversion": "1.0",
            "type": BLOB_CREATED,
            "source": "/subscriptions/s/resourceGroups/g/providers/Microsoft.Storage/storageAccounts/acct",
            "id": "1",
            "data": {"url": format!("http://127.0.0.1:10000/devstoreaccount1/raw/{}", raw_name(5))}
        }))
        .unwrap();
        let n = parse_notices(&body).unwrap();
        assert_eq!(n.kind, NoticeKind::CloudEvent);
        assert_eq!(
            n.blobs,
            vec![LandedBlob {
                container: "raw".into(),
                blob: raw_name(5)
            }]
        );
        // Account-style host, escaped name.
        assert_eq!(
            blob_from_url("https://acct.blob.core.windows.net/raw/a%20b.hfr?sv=1"),
            Some(LandedBlob {
                container: "raw".into(),
                blob: "a b.hfr".into()
            })
        );
    }

    #[test]
    fn malformed_notices_are_typed_errors() {
        assert!(matches!(
            parse_notices(b"{not json"),
            Err(NoticeError::NotJson(_))
        ));
        assert_eq!(parse_notices(b"42"), Err(NoticeError::UnknownShape));
        assert_eq!(
            parse_notices(br#"{"hello": "world"}"#),
            Err(NoticeError::UnknownShape)
        );
        let no_location = json!({"eventType": BLOB_CREATED, "subject": "/elsewhere"});
        assert!(matches!(
            parse_notices(&serde_json::to_vec(&no_location).unwrap()),
            Err(NoticeError::NoBlobLocation { .. })
        ));
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("a%2"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn wakes_are_kept_until_waited_for() {
        let board = WakeBoard::default();
        board.wake(7);
        let line = board.line(7);
        tokio::time::timeout(Duration::from_secs(1), line.notified())
            .await
            .expect("a wake before the wait is kept");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), line.notified())
                .await
                .is_err(),
            "one wake, one wake-up"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_listener_routes_raw_blobs_from_any_partition_and_survives_garbage() {
        let landed = Arc::new(MemoryHub::new("landed", 2));
        let board = WakeBoard::default();
        let probe = ActorProbe::new();
        let params = NoticeListenerParams {
            landed: landed.clone(),
            landed_partition: 1,
            consumer_group: "notices".into(),
            ingest_hub: "ingest".into(),
            raw_container: "raw".into(),
            board: board.clone(),
            max_wait: Duration::from_millis(20),
            probe: probe.clone(),
        };
        let (actor, handle) = Actor::spawn(None, NoticeListener, params).await.unwrap();
        let line = board.line(4);
        let publish = |body: Vec<u8>| {
            let landed = landed.clone();
            async move {
                landed
                    .publish(PublishTarget::Partition(1), vec![EventData::new(body)])
                    .await
                    .unwrap()
            }
        };
        publish(b"\x00garbage".to_vec()).await;
        publish(serde_json::to_vec(&event_grid("curated", "demo/x.parquet")).unwrap()).await;
        publish(serde_json::to_vec(&json!([event_grid("raw", &raw_name(4))])).unwrap()).await;
        tokio::time::timeout(Duration::from_secs(5), line.notified())
            .await
            .expect("partition 4 woken by an Event Grid notice on landed partition 1");
        let status = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let s: NoticeListenerStatus =
                    serde_json::from_value(probe.state()).unwrap_or_default();
                if s.events == 3 {
                    break s;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("three events read");
        assert_eq!((status.routed, status.ignored, status.malformed), (1, 1, 1));
        assert!(status.last_malformed.unwrap().contains("not JSON"));
        actor.stop(None);
        handle.await.unwrap();
    }
}
