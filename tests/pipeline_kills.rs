//! The pipeline under its supervision tree: actors of every kind (and
//! supervisors) are killed at random while 30,000 records stream through;
//! supervisors rebuild them from checkpoints and curated stays exact.

mod common;

use std::sync::Arc;
use std::time::Duration;

use hubflow::demo::DemoConfig;
use hubflow::pipeline::{Backends, Pipeline};
use hubflow::source::HttpSource;
use hubflow_actors::ports::Source;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_actors_and_supervisors_loses_and_duplicates_nothing() {
    let total = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total,
        rate_per_sec: Some(6_000.0),
        ..DemoConfig::default()
    })
    .await;
    let mut config = common::config(dir.path(), &demo.url);
    config.supervision.backoff_initial_ms = 10;
    config.supervision.backoff_max_ms = 200;
    let settings = config.validate().unwrap();
    let source: Arc<dyn Source> = Arc::new(HttpSource::new(settings.sources[0].clone()).unwrap());
    let backends = Backends::embedded(&settings).await.unwrap();
    let pipeline = Pipeline::start(settings.clone(), backends, vec![source])
        .await
        .unwrap();

    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut kills = 0;
    for _ in 0..2_000 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let progress = pipeline.progress().await.unwrap();
        if progress.idle(1) && progress.transformed >= total {
            break;
        }
        if kills >= 25 {
            continue;
        }
        let snapshot = pipeline.root.snapshot();
        let running: Vec<String> = snapshot
            .walk()
            .iter()
            .filter(|n| n.path != "pipeline" && n.state == hubflow_supervision::NodeState::Running)
            .map(|n| n.path.clone())
            .collect();
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let victim = &running[(rng % running.len() as u64) as usize];
        if pipeline.root.kill(victim).is_ok() {
            kills += 1;
        }
    }
    let snapshot = pipeline.root.snapshot();
    let restarts: u64 = snapshot.walk().iter().map(|n| n.restarts).sum();
    assert!(kills >= 20, "only {kills} kills happened");
    // Killing a supervisor rebuilds its subtree with fresh nodes, so the
    // counts of kills below it are gone: restarts can be fewer than kills.
    assert!(restarts > 0, "no restart recorded");
    assert_ne!(snapshot.state, hubflow_supervision::NodeState::Failed);
    for node in snapshot.walk() {
        assert_eq!(
            node.state,
            hubflow_supervision::NodeState::Running,
            "{}",
            node.path
        );
    }
    pipeline.shutdown().await;

    assert_eq!(common::counts(&settings).await, (total, total));
    demo.stop().await;
}
