//! Process lifecycle of the `hubflow` binary: SIGTERM during load drains,
//! checkpoints and exits 0 within `[admin] shutdown_deadline_secs`; a second
//! signal while draining exits at once; either way a restart finishes the
//! job with exact totals.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE_SECS: u64 = 20;

/// Demo records appear at this rate (per second).
const RATE: f64 = 6_000.0;

fn write_config(dir: &Path, url: &str) -> std::path::PathBuf {
    let mut config = common::config(&dir.join("data"), url);
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.shutdown_deadline_secs = DEADLINE_SECS;
    let path = dir.join("hubflow.toml");
    std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
    path
}

fn spawn(config: &Path, log: &Path, exit_when_idle: bool) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubflow"));
    cmd.args(["run", "--quiet", "--config"]).arg(config);
    if exit_when_idle {
        cmd.arg("--exit-when-idle");
    }
    cmd.env("HUBFLOW_LOG", "info")
        .env_remove("HUBFLOW_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawning hubflow")
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Wait until the process logged that the pipeline runs and some records
/// were fetched (so the signal lands during load, not during start-up).
async fn wait_for_load(child: &mut Child, log: &Path, data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let started = text.contains("pipeline started");
        let raw = data.join("blobs").join("raw");
        let landed = walk_count(&raw) > 0;
        if started && landed {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "hubflow exited early; log:\n{}",
            log_tail(log)
        );
        assert!(
            Instant::now() < deadline,
            "no load after 120s:\n{}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn walk_count(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() { walk_count(&p) } else { 1 }
        })
        .sum()
}

/// Records the demo API serves in each test.
const TOTAL: u64 = 30_000;

/// A `hubflow run` process fetching from the demo API (records appearing at
/// `RATE` per second), past its first raw blobs.
struct Loaded {
    _dir: tempfile::TempDir,
    demo: common::DemoServer,
    /// When the demo API has produced its last record.
    complete_at: tokio::time::Instant,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Loaded {
    async fn start() -> Loaded {
        let dir = tempfile::tempdir().unwrap();
        let demo = common::DemoServer::streaming(TOTAL, Some(RATE)).await;
        let complete_at = tokio::time::Instant::now()
            + Duration::from_secs_f64(TOTAL as f64 / RATE)
            + Duration::from_secs(1);
        let config = write_config(dir.path(), &demo.url);
        let data = dir.path().join("data");
        let log = dir.path().join("hubflow.log");
        let mut child = spawn(&config, &log, false);
        wait_for_load(&mut child, &log, &data).await;
        Loaded {
            _dir: dir,
            demo,
            complete_at,
            config,
            data,
            log,
            child,
        }
    }
}

/// Restart with `--exit-when-idle` and check curated is exact. The demo
/// API's records appear at `RATE` per second: a restart before the last
/// one exists would find the source caught up and exit idle early, so wait
/// until all of them have appeared (`complete_at`).
async fn finish_and_count(
    config: &Path,
    log: &Path,
    demo: common::DemoServer,
    data: &Path,
    total: u64,
    complete_at: tokio::time::Instant,
) {
    tokio::time::sleep_until(complete_at).await;
    let mut child = spawn(config, log, true);
    let status = common::wait_exit(&mut child, Duration::from_secs(600)).await;
    if status.is_none() {
        let _ = child.kill();
    }
    let status = status.unwrap_or_else(|| panic!("restart did not finish:\n{}", log_tail(log)));
    assert!(
        status.success(),
        "restart failed: {status}\n{}",
        log_tail(log)
    );
    let settings = common::config(data, &demo.url).validate().unwrap();
    assert_eq!(common::counts(&settings).await, (total, total));
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_drains_and_exits_zero_then_restart_is_exact() {
    let _heavy = common::exclusive().await;
    let Loaded {
        _dir,
        demo,
        complete_at,
        config,
        data,
        log,
        mut child,
    } = Loaded::start().await;
    let sent = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = common::wait_exit(&mut child, Duration::from_secs(DEADLINE_SECS + 5)).await;
    let took = sent.elapsed();
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no exit within the deadline:\n{}", log_tail(&log))
    });
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        log_tail(&log)
    );
    assert!(
        took <= Duration::from_secs(DEADLINE_SECS),
        "drain took {took:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("draining") && text.contains("stopped"),
        "{}",
        log_tail(&log)
    );
    eprintln!("SIGTERM to exit 0: {took:?}");

    finish_and_count(&config, &log, demo, &data, TOTAL, complete_at).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_nothing_is_corrupted() {
    let _heavy = common::exclusive().await;
    let Loaded {
        _dir,
        demo,
        complete_at,
        config,
        data,
        log,
        mut child,
    } = Loaded::start().await;
    signal(&child, libc::SIGTERM);
    // Both signals may land before the handler reads either: then the
    // drain may even finish. What matters is a prompt exit and no damage.
    tokio::time::sleep(Duration::from_millis(5)).await;
    if child.try_wait().unwrap().is_none() {
        signal(&child, libc::SIGINT);
    }
    let status = common::wait_exit(&mut child, Duration::from_secs(5)).await;
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no prompt exit after a second signal:\n{}", log_tail(&log))
    });
    eprintln!("second signal: exit {status}");
    if !status.success() {
        assert_eq!(status.code(), Some(130), "{}", log_tail(&log));
    }

    finish_and_count(&config, &log, demo, &data, TOTAL, complete_at).await;
}
