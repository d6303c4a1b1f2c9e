//! Crash safety: the `hubflow` process is killed with SIGKILL at random
//! points (not a polite stop) and restarted until it finishes; the curated
//! totals are still exact.
//!
//! `HUBFLOW_CRASH_SEEDS` (comma-separated, default `1,2,3`) picks the kill
//! schedules; each seed is one full run of `HUBFLOW_CRASH_RECORDS` records
//! (default 100,000) with `HUBFLOW_CRASH_KILLS` kills (default 5). Even
//! seeds page the source by keyset, odd ones by cursor.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hubflow::demo::{DemoConfig, FaultConfig};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator, so a failing seed can be replayed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args(["run", "--quiet", "--exit-when-idle", "--config"])
        .arg(config)
        .env("HUBFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawning hubflow")
}

async fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn one_round(seed: u64, total: u64, kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total,
        faults: FaultConfig {
            error_rate: 0.01,
            throttle_rate: 0.01,
            ..FaultConfig::default()
        },
        seed,
        ..DemoConfig::default()
    })
    .await;
    let data = dir.path().join("data");
    let config = dir.path().join("hubflow.toml");
    // Even seeds walk the source by keyset (the cursor is the last durable
    // record's id), odd ones by the demo's cursor.
    let mut cfg = common::config(&data, &demo.url);
    if seed.is_multiple_of(2) {
        cfg.sources[0].pagination = hubflow::source::PaginationConfig::Keyset {
            param: "starting_after".into(),
            from_record: "id".into(),
            has_more: Some("has_more".into()),
            page_size: None,
        };
    }
    std::fs::write(&config, toml::to_string(&cfg).unwrap()).unwrap();
    let log = dir.path().join("hubflow.log");
    let mut rng = SplitMix(seed);
    let mut killed = 0;
    let mut finished = false;
    while killed < kills {
        let mut child = spawn(&config, &log);
        // Early kills hit start-up and recovery; later ones the steady state.
        let after = Duration::from_millis(300 + rng.next() % 2_500);
        if let Some(status) = wait(&mut child, after).await {
            assert!(
                status.success(),
                "hubflow exited with {status}; log: {}",
                log.display()
            );
            finished = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        killed += 1;
    }
    if !finished {
        let mut child = spawn(&config, &log);
        let status = wait(&mut child, Duration::from_secs(600)).await;
        if status.is_none() {
            let _ = child.kill();
        }
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: String = tail.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        let status =
            status.unwrap_or_else(|| panic!("final run did not finish; log tail:\n{tail}"));
        assert!(
            status.success(),
            "final run failed: {status}; log tail:\n{tail}"
        );
    }
    let settings = common::settings(&data, &demo.url);
    let counts = common::counts(&settings).await;
    assert_eq!(counts, (total, total), "seed {seed}: {killed} kills");
    eprintln!("seed {seed}: {killed} kills, {total} records exact");
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_and_restarted_the_totals_are_exact() {
    let _heavy = common::exclusive().await;
    let seeds: Vec<u64> = std::env::var("HUBFLOW_CRASH_SEEDS")
        .unwrap_or_else(|_| "1,2,3".to_string())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let total = env_or("HUBFLOW_CRASH_RECORDS", 100_000u64);
    let kills = env_or("HUBFLOW_CRASH_KILLS", 5usize);
    for seed in seeds {
        one_round(seed, total, kills).await;
    }
}
