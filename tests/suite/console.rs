//! The operator console (`GET /ui`) on a running pipeline: its files carry
//! the Content-Security-Policy, `/events` streams the status document, and
//! a real browser (headless Chromium driven by selenium,
//! `tests/suite/console_test.py`) drives it by clicks only, each checked by
//! what the page then shows (bounded waits):
//!
//! - the page loads with no console errors and shows the running actors;
//!   control buttons are disabled until the token is accepted;
//! - kill: the fetcher runs again with a higher generation;
//! - pause / resume: "Pause ingest" shows every consumer and the ingest
//!   badge paused, "Resume ingest" running again; the fetcher's own Pause
//!   and Resume the same for it (the actors' observed state);
//! - drain / restart: an ingest partition group shows drained, then
//!   running with a higher generation;
//! - transform hot swap: promoted, the new version active in the spec log;
//! - source settings swap (Sources panel): promoted, and the new version
//!   shown in the panel, its spec log and the fetcher's row;
//! - replay of a partition range: the job completes with a full progress
//!   bar;
//! - dead letters: the demo serves one record in [`NOT_OBJECT_EVERY`] as a
//!   JSON string, so the transformer dead-letters it; the page lists it,
//!   Inspect shows its reason and body, a redrive of the stored body is
//!   refused (it would be rejected again), a redrive with a corrected
//!   payload marks it redriven;
//! - a wrong token is refused and control is disabled again.
//!
//! The browser comes from scripts/install-browser.sh (Debian's chromium
//! and chromium-driver, selenium into .tools/venv). scripts/test.sh runs it
//! in the background while cargo builds and names its status file in
//! `HUBFLOW_BROWSER_INSTALL_STATUS`; this test waits for that file. Without
//! a browser the test fails under CI=true and is skipped loudly otherwise.
//! `HUBFLOW_SCREENSHOT=docs/console.png` keeps a screenshot of the page.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubflow::demo::{DemoConfig, FaultConfig};
use hubflow::service::{self, Hooks, RunOptions};
use hubflow::source::SecretString;
use hubflow::telemetry::{self, LogFormat};
use reqwest::StatusCode;

const TOKEN: &str = "console-test-token-0123456789";
/// The demo serves every this many records as a JSON string (a transform
/// dead letter for the page to list, inspect and redrive).
const NOT_OBJECT_EVERY: u64 = 2_000;
/// The longest the browser script may take (its own waits are shorter).
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);
/// The longest the test waits for scripts/install-browser.sh.
const INSTALL_DEADLINE: Duration = Duration::from_secs(1200);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// When scripts/test.sh installs the browser in the background, wait for
/// it to finish (it writes its exit code to the named file).
async fn wait_for_install() {
    let Some(status) = std::env::var_os("HUBFLOW_BROWSER_INSTALL_STATUS") else {
        return;
    };
    let status = PathBuf::from(status);
    let started = Instant::now();
    while !status.exists() {
        assert!(
            started.elapsed() < INSTALL_DEADLINE,
            "scripts/install-browser.sh did not finish within {INSTALL_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let code = std::fs::read_to_string(&status).unwrap_or_default();
    if code.trim() != "0" {
        let log = std::fs::read_to_string(status.with_extension("log")).unwrap_or_default();
        panic!(
            "scripts/install-browser.sh failed ({}):\n{log}",
            code.trim()
        );
    }
}

struct Browser {
    chromium: PathBuf,
    chromedriver: PathBuf,
    python: PathBuf,
}

/// The browser, its driver and selenium, or why not.
fn browser() -> Result<Browser, String> {
    let from_env = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let chromium = from_env("CHROMIUM")
        .or_else(|| {
            [
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ]
            .into_iter()
            .find_map(common::on_path)
        })
        .ok_or("chromium is not installed")?;
    let chromedriver = from_env("CHROMEDRIVER")
        .or_else(|| common::on_path("chromedriver"))
        .or_else(|| from_env("CHROMEWEBDRIVER").map(|dir| dir.join("chromedriver")))
        .filter(|p| p.is_file())
        .ok_or("chromedriver is not installed")?;
    let python = repo_root().join(".tools/venv/bin/python");
    let selenium = std::process::Command::new(&python)
        .args(["-c", "import selenium"])
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !selenium {
        return Err(format!("selenium is not installed in {}", python.display()));
    }
    Ok(Browser {
        chromium,
        chromedriver,
        python,
    })
}

struct Node {
    addr: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
    demo: common::DemoServer,
    _dir: tempfile::TempDir,
}

/// A pipeline with a token on a loopback admin port, its demo source
/// publishing records at a steady rate (so the charts move).
async fn start() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total: 10_000_000,
        rate_per_sec: Some(400.0),
        faults: FaultConfig {
            // One record in NOT_OBJECT_EVERY is not an object: the
            // transformer dead-letters it (one about every 5 s).
            not_object_every: Some(NOT_OBJECT_EVERY),
            ..FaultConfig::default()
        },
        ..DemoConfig::default()
    })
    .await;
    let mut config = common::config(dir.path(), &demo.url);
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.token = Some(SecretString::literal(TOKEN));
    let settings = config.validate().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = Arc::new(tokio::sync::Notify::new());
    let hooks = Hooks {
        logs: Some(telemetry::init_logs(LogFormat::Text)),
        on_admin_listening: Some(tx),
        stop: Some(stop.clone()),
        ..Hooks::default()
    };
    let run = tokio::spawn(service::run_with(settings, RunOptions::default(), hooks));
    let addr = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("admin port did not come up")
        .expect("service ended before the admin port listened");
    Node {
        addr,
        stop,
        run,
        demo,
        _dir: dir,
    }
}

impl Node {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn stop(self) {
        self.stop.notify_one();
        let result = tokio::time::timeout(Duration::from_secs(60), self.run)
            .await
            .expect("service did not stop (an open event stream must not hold it)");
        result.unwrap().unwrap();
        self.demo.stop().await;
    }
}

/// The console's files: the strict policy, nosniff, the right types, and
/// the page loads only its own script and style sheet.
async fn check_files(node: &Node, http: &reqwest::Client) {
    for (path, media) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let resp = http.get(node.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(media), "{path}");
        assert_eq!(
            header("content-security-policy"),
            hubflow::admin::ui::CONTENT_SECURITY_POLICY,
            "{path}"
        );
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        let body = resp.text().await.unwrap();
        assert!(!body.is_empty());
        if path == "/ui" {
            assert!(body.contains(r#"<script src="/ui/app.js" defer></script>"#));
            assert!(body.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
        }
    }
    assert!(
        hubflow::admin::ui::CONTENT_SECURITY_POLICY.contains("script-src 'self';")
            && !hubflow::admin::ui::CONTENT_SECURITY_POLICY.contains("unsafe")
    );
}

/// `/events` answers a stream whose first event is the status document.
async fn check_events(node: &Node, http: &reqwest::Client) {
    let mut resp = http.get(node.url("/events")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut documents = 0;
    while documents < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .expect("no status event within 20 s")
            .unwrap()
            .expect("the event stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if !block.starts_with("event: status\n") {
                continue;
            }
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .expect("an event without data");
            let doc: serde_json::Value = serde_json::from_str(data).unwrap();
            assert_eq!(doc["tree"]["path"], "pipeline", "{doc}");
            assert!(doc["ts_ms"].as_i64().is_some_and(|t| t > 0));
            assert!(doc["progress"]["partitions"].is_array(), "{doc}");
            documents += 1;
        }
    }
}

async fn run_browser(node: &Node, browser: &Browser) {
    let script = repo_root().join("tests/suite/console_test.py");
    let mut cmd = tokio::process::Command::new(&browser.python);
    cmd.arg(&script)
        .env("HUBFLOW_ADMIN_URL", node.url(""))
        .env("HUBFLOW_TOKEN", TOKEN)
        .env("CHROMIUM", &browser.chromium)
        .env("CHROMEDRIVER", &browser.chromedriver)
        // Selenium Manager must not look for drivers online.
        .env("SE_OFFLINE", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(shot) = std::env::var_os("HUBFLOW_SCREENSHOT") {
        let shot = PathBuf::from(shot);
        let shot = if shot.is_absolute() {
            shot
        } else {
            repo_root().join(shot)
        };
        cmd.env("HUBFLOW_SCREENSHOT", shot);
    }
    let child = cmd.spawn().expect("cannot start the browser test");
    let out = tokio::time::timeout(BROWSER_DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the browser test took more than {BROWSER_DEADLINE:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("console test passed"),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_controls_the_pipeline_and_refuses_a_wrong_token() {
    wait_for_install().await;
    let browser = match browser() {
        Ok(b) => Some(b),
        Err(why) if common::in_ci() => {
            panic!("{why}: the console test needs a browser in CI (scripts/install-browser.sh)")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED the browser part of the console test: {why} (run scripts/install-browser.sh)"
            );
            None
        }
    };
    let _heavy = common::exclusive().await;
    let node = start().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    check_files(&node, &http).await;
    check_events(&node, &http).await;
    if let Some(browser) = &browser {
        run_browser(&node, browser).await;
    }
    // An event stream still open must not hold the shutdown.
    let open = http.get(node.url("/events")).send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    node.stop().await;
    drop(open);
}
