//! The whole dataflow on the embedded backends: the demo API (real HTTP on
//! loopback, with faults) → fetcher → hub → consumers → raw blobs →
//! transformers → zstd Parquet → SQL. Every record exactly once, and a
//! sample matches the source field by field.

use crate::common;

use hubflow::demo::{DemoConfig, FaultConfig, demo_record};
use hubflow::service::{self, RunOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_hundred_thousand_records_end_to_end() {
    let _heavy = common::exclusive().await;
    let total = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total,
        faults: FaultConfig {
            error_rate: 0.02,
            throttle_rate: 0.01,
            truncate_rate: 0.01,
            ..FaultConfig::default()
        },
        seed: 7,
        ..DemoConfig::default()
    })
    .await;
    let settings = common::settings(dir.path(), &demo.url);
    let run = service::run(
        settings.clone(),
        RunOptions {
            exit_when_idle: true,
            status_every: None,
        },
    );
    tokio::time::timeout(std::time::Duration::from_secs(600), run)
        .await
        .expect("pipeline did not finish in 10 minutes")
        .expect("pipeline failed");

    let (rows, distinct) = common::counts(&settings).await;
    assert_eq!((rows, distinct), (total, total));

    // A sample, field by field against the source's own record function.
    let sample: Vec<u64> = (0..total).step_by(9973).collect();
    let rows = common::rows_by_id(&settings, &sample).await;
    assert_eq!(rows.len(), sample.len());
    for i in sample {
        let expected = demo_record(i);
        let id = expected["id"].as_str().unwrap();
        let got = &rows[id];
        for field in ["id", "created_at", "updated_at", "type"] {
            assert_eq!(got[field], expected[field], "{id}.{field}");
        }
        assert_eq!(got["user_name"], expected["user"]["name"], "{id}.user.name");
        assert_eq!(
            got["user_country"], expected["user"]["country"],
            "{id}.user.country"
        );
        match (got["amount"].as_f64(), expected["amount"].as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{id}.amount {a} != {b}"),
            (a, b) => assert_eq!(a, b, "{id}.amount"),
        }
        assert_eq!(got["tags"], expected["tags"], "{id}.tags");
        assert!(got["_hub_partition"].is_number(), "{id}._hub_partition");
    }
    demo.stop().await;
}
