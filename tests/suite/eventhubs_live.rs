//! The Event Hubs adapter against a real Azure Event Hubs namespace.
//!
//! There is no local Event Hubs emulator without Docker, so these tests run
//! only when connection settings are present, and otherwise print
//! `SKIPPED: ...` to stderr and pass. Settings (environment variables):
//!
//! - `HUBFLOW_EVENTHUBS_NAMESPACE` (required): the fully qualified
//!   namespace, e.g. `myns.servicebus.windows.net`.
//! - `HUBFLOW_EVENTHUBS_HUB` (required): an Event Hub dedicated to this
//!   suite, with at least 3 partitions and no other publisher while it runs.
//!   It may hold events: the contract works relative to the end of each
//!   partition (`common::contract::hub_contract_on_existing`).
//! - `HUBFLOW_EVENTHUBS_CONSUMER_GROUP` (default `$Default`).
//! - `HUBFLOW_EVENTHUBS_SECOND_CONSUMER_GROUP` (optional): a second,
//!   existing consumer group, to check that groups read independently.
//! - `HUBFLOW_EVENTHUBS_CREDENTIAL` (default `developer_tools`, i.e. `az
//!   login`): or `managed_identity`, `workload_identity`;
//!   `HUBFLOW_EVENTHUBS_CLIENT_ID` for a user-assigned identity. The
//!   identity needs the "Azure Event Hubs Data Owner" role (send + listen +
//!   management reads) on the hub.
//!
//! ```sh
//! HUBFLOW_EVENTHUBS_NAMESPACE=myns.servicebus.windows.net \
//! HUBFLOW_EVENTHUBS_HUB=hubflow-contract \
//!   cargo test --test suite eventhubs_live:: -- --test-threads 1
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::common::contract::{ExistingHubGroups, hub_contract_on_existing};
use hubflow::azure::eventhubs::{EventHubsAuthConfig, EventHubsConfig};
use hubflow::azure::{EntraCredential, EventHubsHub};
use hubflow_actors::ports::{EventData, Hub, HubError, PublishTarget, StartPosition};

struct Live {
    hub: Arc<EventHubsHub>,
    consumer_group: String,
    second_consumer_group: Option<String>,
}

/// Say that a test was skipped on the process's stderr itself: the test
/// harness captures `eprintln!` of passing tests, and a skip must show in
/// every run's output, CI's included.
fn skipped(message: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "\n*** {message}\n");
}

/// The live hub, or `None` after saying loudly why the test is skipped.
fn live(test: &str) -> Option<Live> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let Some(namespace) = var("HUBFLOW_EVENTHUBS_NAMESPACE") else {
        skipped(&format!(
            "SKIPPED: live Event Hubs suite ({test}): HUBFLOW_EVENTHUBS_NAMESPACE not set \
             (see the top of tests/suite/eventhubs_live.rs)"
        ));
        return None;
    };
    let Some(hub_name) = var("HUBFLOW_EVENTHUBS_HUB") else {
        skipped(&format!(
            "SKIPPED: live Event Hubs suite ({test}): HUBFLOW_EVENTHUBS_HUB not set \
             (an Event Hub with at least 3 partitions dedicated to this suite)"
        ));
        return None;
    };
    let credential = match var("HUBFLOW_EVENTHUBS_CREDENTIAL").as_deref() {
        None | Some("developer_tools") => EntraCredential::DeveloperTools,
        Some("managed_identity") => EntraCredential::ManagedIdentity,
        Some("workload_identity") => EntraCredential::WorkloadIdentity,
        Some(other) => panic!(
            "HUBFLOW_EVENTHUBS_CREDENTIAL={other}: expected developer_tools, managed_identity \
             or workload_identity"
        ),
    };
    let consumer_group = var("HUBFLOW_EVENTHUBS_CONSUMER_GROUP").unwrap_or("$Default".into());
    let mut config = EventHubsConfig::new(
        namespace,
        EventHubsAuthConfig::Entra {
            credential,
            client_id: var("HUBFLOW_EVENTHUBS_CLIENT_ID"),
        },
    );
    config.consumer_group = consumer_group.clone();
    let settings = config
        .validate()
        .unwrap_or_else(|e| panic!("the live settings are invalid: {e}"));
    let hub = EventHubsHub::new(&settings, hub_name)
        .unwrap_or_else(|e| panic!("cannot create the event hubs client: {e:#}"));
    Some(Live {
        hub: Arc::new(hub),
        consumer_group,
        second_consumer_group: var("HUBFLOW_EVENTHUBS_SECOND_CONSUMER_GROUP"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_hub_passes_the_contract_relative_to_the_end_of_each_partition() {
    let Some(live) = live("contract") else {
        return;
    };
    let groups = ExistingHubGroups {
        consumer_group: live.consumer_group.clone(),
        second_consumer_group: live.second_consumer_group.clone(),
    };
    tokio::time::timeout(
        Duration::from_secs(600),
        hub_contract_on_existing(live.hub, groups),
    )
    .await
    .expect("the live hub contract did not finish within 10 minutes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_hub_refuses_a_publish_larger_than_one_batch_and_appends_nothing() {
    let Some(live) = live("batch too large") else {
        return;
    };
    let hub = live.hub.as_ref();
    let before = hub
        .partition_properties(0)
        .await
        .expect("partition_properties(0)")
        .last_enqueued_sequence_number;
    // 2 MiB in 64 events: above the default max_batch_bytes (1 MiB) and
    // the Standard tier's link limit.
    let events: Vec<EventData> = (0..64)
        .map(|i| EventData::new(vec![b'x'; 32 * 1024]).with_property("i", i.to_string()))
        .collect();
    match hub.publish(PublishTarget::Partition(0), events).await {
        Err(HubError::BatchTooLarge { size, limit, .. }) => {
            assert!(size > limit, "size {size} must exceed limit {limit}");
        }
        other => panic!("expected BatchTooLarge, got {other:?}"),
    }
    let after = hub
        .partition_properties(0)
        .await
        .expect("partition_properties(0)")
        .last_enqueued_sequence_number;
    assert_eq!(before, after, "a refused publish must append nothing");

    // Half of it fits and arrives in one piece.
    let events: Vec<EventData> = (0..8)
        .map(|i| EventData::new(vec![b'y'; 32 * 1024]).with_property("i", i.to_string()))
        .collect();
    hub.publish(PublishTarget::Partition(0), events)
        .await
        .expect("a 256 KiB publish fits one batch");
    let mut receiver = hub
        .open_receiver(&live.consumer_group, 0, StartPosition::after(before))
        .await
        .expect("open_receiver");
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 8 && tokio::time::Instant::now() < deadline {
        got.extend(
            receiver
                .receive(8 - got.len(), Duration::from_secs(2))
                .await
                .expect("receive"),
        );
    }
    let seqs: Vec<i64> = got.iter().map(|e| e.sequence_number).collect();
    assert_eq!(seqs, (before + 1..before + 9).collect::<Vec<_>>());
    assert_eq!(got[7].properties["i"], "7");
}

/// The relative contract the live suite runs, on a hub that already holds
/// events (the embedded one), so its logic is checked on every run even
/// when the live suite is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relative_contract_holds_on_a_hub_that_already_has_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub =
        hubflow::embedded::SqliteHub::open(&dir.path().join("hub.sqlite"), "prefilled", 4, None)
            .expect("open the embedded hub");
    for (partition, count) in [(0, 7), (1, 3), (2, 1), (3, 5)] {
        let events = (0..count)
            .map(|i| EventData::new(format!("old-{i}")))
            .collect();
        hub.publish(PublishTarget::Partition(partition), events)
            .await
            .expect("prefill");
    }
    let groups = ExistingHubGroups {
        consumer_group: "$Default".into(),
        second_consumer_group: Some("second".into()),
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        hub_contract_on_existing(Arc::new(hub), groups),
    )
    .await
    .expect("the relative contract did not finish within 2 minutes");
}
