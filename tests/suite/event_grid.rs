//! Event Grid as the "landed" trigger: with `[transform] notices =
//! "event_grid"` the blob-writers publish nothing and transformers poll only
//! every 10 minutes, so the only thing that moves raw data to curated is a
//! BlobCreated event. A stand-in for Event Grid watches the raw container
//! and delivers BlobCreated events (Event Grid schema, Azure URLs) to hub
//! "landed", each on a partition *other* than the blob's own, with noise: a
//! curated-file event, a deletion and a malformed body. Every record must
//! still reach curated exactly once, woken by those events alone.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common;
use crate::common::harness;

use hubflow::backends::Backends;
use hubflow::config::LandedNotices;
use hubflow::pipeline::Pipeline;
use hubflow_actors::notices::NoticeListenerStatus;
use hubflow_actors::ports::{BlobStore, EventData, Hub, PublishTarget};
use hubflow_actors::record::RawBlobName;
use hubflow_supervision::NodeKind;
use serde_json::json;

/// Deliver a BlobCreated event for every raw blob not announced yet, on a
/// landed partition other than the blob's, plus noise. Returns how many
/// blobs it announced.
async fn deliver_event_grid(
    blobs: &dyn BlobStore,
    landed: &dyn Hub,
    seen: &mut BTreeSet<String>,
    partitions: u32,
) -> usize {
    let listed = blobs.list("raw", "").await.unwrap();
    let mut announced = 0;
    for blob in listed {
        if !seen.insert(blob.name.clone()) {
            continue;
        }
        let Some(name) = RawBlobName::parse(&blob.name) else {
            continue;
        };
        let event = json!([{
            "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
            "subject": format!("/blobServices/default/containers/raw/blobs/{}", blob.name),
            "eventType": "Microsoft.Storage.BlobCreated",
            "id": format!("evt-{}", seen.len()),
            "data": {
                "api": "PutBlob",
                "url": format!("https://acct.blob.core.windows.net/raw/{}", blob.name),
                "contentLength": blob.size,
                "blobType": "BlockBlob"
            },
            "dataVersion": "",
            "metadataVersion": "1",
            "eventTime": "2026-11-28T08:00:00Z"
        }]);
        let wrong_partition = (name.partition + 1) % partitions;
        landed
            .publish(
                PublishTarget::Partition(wrong_partition),
                vec![EventData::new(serde_json::to_vec(&event).unwrap())],
            )
            .await
            .unwrap();
        announced += 1;
    }
    announced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blob_created_events_alone_drive_the_transform() {
    let total = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::serving(total).await;
    let mut config = common::config(dir.path(), &demo.url);
    config.transform.notices = LandedNotices::EventGrid;
    config.transform.poll_ms = 600_000;
    let settings = config.validate().unwrap();
    let backends = Backends::embedded(&settings).await.unwrap();
    let (blobs, landed) = (backends.blobs.clone(), backends.landed.clone());
    let partitions = landed.partition_ids().await.unwrap().len() as u32;
    assert!(partitions > 1, "the test needs several landed partitions");
    let pipeline = harness::start_pipeline(&settings, backends).await;

    // 1. Everything lands in raw; with no notices nothing is transformed.
    let p = harness::until_progress(
        &pipeline,
        "raw did not fill",
        Duration::from_secs(120),
        Duration::from_millis(100),
        |p| p.sources_caught_up && p.in_hub >= total && p.landed == p.in_hub,
    )
    .await;
    assert_eq!(p.transformed, 0, "something woke a transformer: {p:?}");

    case_noise_wakes_nothing_and_stops_no_listener(&pipeline, landed.as_ref()).await;

    // 3. Event Grid announces the raw blobs; everything is transformed.
    let mut seen = BTreeSet::new();
    let announced =
        deliver_event_grid(blobs.as_ref(), landed.as_ref(), &mut seen, partitions).await;
    assert!(announced > 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let p = pipeline.progress().await.unwrap();
        if p.transformed >= p.landed && common::counts(&settings).await.1 >= total {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "BlobCreated events did not drive the transform: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    case_the_listeners_counted_the_noise_and_kept_running(&pipeline, partitions, announced);

    pipeline.shutdown().await;
    assert_eq!(common::counts(&settings).await, (total, total));
    demo.stop().await;
}

/// Noise first: a truncated body, a CloudEvent about a curated file and a
/// deletion; none of it may wake anything or stop a listener.
async fn case_noise_wakes_nothing_and_stops_no_listener(pipeline: &Pipeline, landed: &dyn Hub) {
    for (partition, body) in [
        (0, b"{\"truncated\": ".to_vec()),
        (
            1,
            serde_json::to_vec(&json!({
                "specversion": "1.0",
                "type": "Microsoft.Storage.BlobCreated",
                "source": "/subscriptions/0000",
                "id": "c1",
                "subject": "/blobServices/default/containers/curated/blobs/demo/x.parquet"
            }))
            .unwrap(),
        ),
        (
            0,
            serde_json::to_vec(&json!([{
                "eventType": "Microsoft.Storage.BlobDeleted",
                "subject": "/blobServices/default/containers/raw/blobs/ingest/p0000/x.hfr"
            }]))
            .unwrap(),
        ),
    ] {
        landed
            .publish(
                PublishTarget::Partition(partition),
                vec![EventData::new(body)],
            )
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pipeline.progress().await.unwrap().transformed, 0);
}

/// Every partition's listener routed the announcements, counted the
/// malformed and the ignored events, and kept running.
fn case_the_listeners_counted_the_noise_and_kept_running(
    pipeline: &Pipeline,
    partitions: u32,
    announced: usize,
) {
    let listeners: Vec<NoticeListenerStatus> = pipeline
        .root
        .snapshot()
        .walk()
        .iter()
        .filter(|n| n.path.contains("/notices/"))
        .filter(|n| n.kind == NodeKind::Worker)
        .filter_map(|n| serde_json::from_value(n.observed.clone()).ok())
        .collect();
    assert_eq!(listeners.len(), partitions as usize);
    let sum = |f: fn(&NoticeListenerStatus) -> u64| listeners.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.routed), announced as u64);
    assert_eq!(sum(|s| s.malformed), 1);
    assert_eq!(sum(|s| s.ignored), 2);
}
