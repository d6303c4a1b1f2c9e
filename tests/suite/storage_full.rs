//! A full data disk: the node stays up and loses nothing, `/readyz` answers
//! 503 naming the stage that cannot write, `/status` lists the blocked
//! actors and `hubflow_storage_write_blocked{stage}` is 1 (what the
//! `HubflowStorageFull` alert reads); once the filesystem grows, the node
//! turns ready by itself and finishes with exact counts.
//!
//! The data directory is a real full filesystem: a 3 MiB tmpfs, grown with
//! `mount -o remount,size=`. Mounting needs root (CI runs as root); where
//! `mount` is refused the test says so on stderr and does not run.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::Admin;
use hubflow::config::Settings;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const TOTAL: u64 = 20_000;

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount is not runnable: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remounting {} failed", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Node {
    child: Child,
    admin: Admin,
    log: PathBuf,
}

impl Node {
    /// `GET path` without a token; `None` when the port does not answer.
    async fn get(&self, path: &str) -> Option<(StatusCode, Value)> {
        self.admin.try_call(Method::GET, path, None).await
    }

    async fn readyz(&self) -> Option<(StatusCode, Value)> {
        self.get("/readyz").await
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Wait (bounded) until `/readyz` answers `want`; the last answer.
    async fn until_readyz(&mut self, want: StatusCode, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some((code, body)) = self.readyz().await
                && code == want
            {
                return body;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "hubflow exited:\n{}",
                self.tail()
            );
            assert!(
                start.elapsed() < limit,
                "/readyz did not answer {want} within {limit:?}:\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `hubflow_storage_write_blocked` series as (stage, value).
    async fn blocked_gauges(&self) -> Vec<(String, f64)> {
        let (_, text) = self.get("/metrics").await.expect("metrics");
        text.as_str()
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.strip_prefix("hubflow_storage_write_blocked{"))
            .filter_map(|rest| {
                let stage = rest.split("stage=\"").nth(1)?.split('"').next()?;
                let value = rest.rsplit(' ').next()?.parse().ok()?;
                Some((stage.to_string(), value))
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_data_disk_makes_the_node_unready_and_it_finishes_exactly_once_space_is_back() {
    let _heavy = common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = match Tmpfs::mount(&data, "3m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("storage_full: not run, cannot mount a tmpfs here: {why}");
            return;
        }
    };
    let demo = common::DemoServer::serving(TOTAL).await;
    let mut config = common::config(&data, &demo.url);
    config.supervision.backoff_max_ms = 1_000;
    config.supervision.backoff_reset_ms = 2_000;
    // Failing writes restart the actor; the default intensity would give up.
    config.supervision.max_restarts = 10_000;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    config.admin.listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    let config_path = dir.path().join("hubflow.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let log = dir.path().join("hubflow.log");
    let child = Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args(["run", "--quiet", "--config"])
        .arg(&config_path)
        .env("HUBFLOW_LOG", "info")
        .env_remove("HUBFLOW_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawning hubflow");
    let mut node = Node {
        child,
        admin: Admin::new(
            format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(30),
        ),
        log,
    };
    case_a_full_disk_makes_the_node_unready_naming_the_stage(&mut node).await;
    disk.resize("512m");
    case_with_space_back_it_turns_ready_and_curates_every_record_once(
        &mut node,
        &common::settings(&data, &demo.url),
    )
    .await;
    demo.stop().await;
}

/// 20,000 records do not fit in 3 MiB: some stage runs out of space.
/// `/readyz` answers 503 naming it, `/status` lists the blocked actors,
/// the stage's `hubflow_storage_write_blocked` is 1, the node stays up.
async fn case_a_full_disk_makes_the_node_unready_naming_the_stage(node: &mut Node) {
    let body = node
        .until_readyz(StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(90))
        .await;
    eprintln!("storage_full: not ready: {body}");
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("storage full: "), "{body}");
    let blocked = body["cannot_write"].as_array().cloned().unwrap_or_default();
    assert!(!blocked.is_empty(), "{body}");
    for block in &blocked {
        let error = block["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("No space left on device") || error.contains("database or disk is full"),
            "{block}"
        );
        let stage = block["stage"].as_str().unwrap_or_default();
        assert!(reason.contains(stage), "{reason} does not name {stage}");
    }
    let (_, status) = node.get("/status").await.expect("status");
    assert_eq!(status["ready"], false, "{status}");
    assert!(!status["cannot_write"].as_array().unwrap().is_empty());
    let gauges = node.blocked_gauges().await;
    assert!(gauges.len() >= 5, "a series per stage: {gauges:?}");
    let stage = blocked[0]["stage"].as_str().unwrap();
    assert!(
        gauges.iter().any(|(s, v)| s == stage && *v == 1.0),
        "{stage} not 1 in {gauges:?}"
    );
    // The node is up: the rest of the admin port answers.
    assert_eq!(node.get("/healthz").await.unwrap().0, StatusCode::OK);
}

/// Once the filesystem grows the node turns ready by itself and, with no
/// manual step, curates every record once; no stage is blocked any more.
async fn case_with_space_back_it_turns_ready_and_curates_every_record_once(
    node: &mut Node,
    settings: &Settings,
) {
    let resized = Instant::now();
    node.until_readyz(StatusCode::OK, Duration::from_secs(90))
        .await;
    eprintln!(
        "storage_full: ready {:?} after the resize",
        resized.elapsed()
    );

    // Exact, with no manual step: every record once.
    let (limit, every) = (Duration::from_secs(120), Duration::from_millis(500));
    let (n, distinct) = common::eventually("every record curated", limit, every, async || {
        let (n, distinct) = common::counts(settings).await;
        match n >= TOTAL {
            true => Ok((n, distinct)),
            false => Err(format!("{n} of {TOTAL} curated:\n{}", node.tail())),
        }
    })
    .await;
    assert_eq!((n, distinct), (TOTAL, TOTAL), "{}", node.tail());
    let gauges = node.blocked_gauges().await;
    assert!(gauges.iter().all(|(_, v)| *v == 0.0), "{gauges:?}");
}
