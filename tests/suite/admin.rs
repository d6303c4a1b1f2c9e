//! The admin port on a running pipeline (port 0, loopback): every endpoint,
//! auth (missing/wrong/absent token), bad input (invalid JSON, unknown
//! fields, unknown paths, invalid log directives) leaving the running state
//! unchanged, replay after curated files are deleted (totals exact again,
//! twice), dead-letter redrive, `hubflow ctl` against it, and
//! `promtool check metrics` on a real scrape.
//!
//! promtool: installed by scripts/install-promtool.sh. When it is missing
//! the check fails under CI=true and is skipped loudly otherwise.

use crate::common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::harness::{Admin, Service};
use hubflow::config::{Config, Settings};
use hubflow::source::SecretString;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "test-admin-token-0123456789";

/// The service with its admin port, on the demo API; derefs to its admin
/// client (`node.get`, `node.post`, `node.status`, ...).
struct Node {
    svc: Service,
    demo: common::DemoServer,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Node {
    type Target = Admin;
    fn deref(&self) -> &Admin {
        &self.svc.admin
    }
}

fn config(dir: &std::path::Path, url: &str, token: Option<&str>) -> Config {
    let mut config = common::config(dir, url);
    config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.admin.token = token.map(SecretString::literal);
    config
}

async fn start(total: u64, token: Option<&str>) -> Node {
    start_on(total, token, "127.0.0.1:0").await
}

async fn start_on(total: u64, token: Option<&str>, listen: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::serving(total).await;
    let mut config = config(dir.path(), &demo.url, token);
    config.admin.listen = Some(listen.parse().unwrap());
    let svc = Service::start_with_logs(config, token).await;
    Node {
        svc,
        demo,
        _dir: dir,
    }
}

impl Node {
    fn settings(&self) -> &Settings {
        &self.svc.settings
    }

    async fn stop(self) {
        self.svc.stop().await;
        self.demo.stop().await;
    }

    fn ctl(&self, args: &[&str], token: Option<&str>) -> (bool, String, String) {
        let (code, stdout, stderr) = self.ctl_code(args, token);
        (code == Some(0), stdout, stderr)
    }

    /// [`Self::ctl`] with the exit code.
    fn ctl_code(&self, args: &[&str], token: Option<&str>) -> (Option<i32>, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubflow"));
        cmd.arg("ctl")
            .args(["--addr", &self.svc.addr.to_string()])
            .args(args)
            .env_remove("HUBFLOW_ADMIN_TOKEN")
            .env("HUBFLOW_LOG", "warn");
        if let Some(t) = token {
            cmd.env("HUBFLOW_ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn tree_node<'a>(status: &'a Value, path: &str) -> &'a Value {
    fn find<'a>(n: &'a Value, path: &str) -> Option<&'a Value> {
        if n["path"] == path {
            return Some(n);
        }
        n["children"].as_array()?.iter().find_map(|c| find(c, path))
    }
    find(&status["tree"], path).unwrap_or_else(|| panic!("no node {path}"))
}

fn caught_up(total: u64) -> impl Fn(&Value) -> bool {
    move |s| s["progress"]["fetched"] == total && s["progress"]["transformed"] == total
}

/// `promtool check metrics` on `text`: fails under CI=true without promtool.
fn promtool_check(text: &str) {
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("promtool is not installed in CI: run scripts/install-promtool.sh");
        }
        eprintln!(
            "\n!!!!!!!! SKIPPED: promtool is not installed, /metrics was NOT checked \
             (run scripts/install-promtool.sh) !!!!!!!!\n"
        );
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One running pipeline, walked through every admin endpoint in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_serves_and_controls_a_running_pipeline() {
    let total = 3_000;
    let node = start(total, Some(TOKEN)).await;
    case_health_and_readiness_need_no_token_and_everything_is_curated(&node, total).await;
    case_every_documented_route_is_served(&node).await;
    case_control_calls_need_the_right_token(&node).await;
    case_bad_input_is_refused_and_changes_nothing(&node).await;
    case_an_invalid_log_filter_is_refused_and_a_valid_one_applied(&node).await;
    case_pauses_resume_and_outlive_restarts(&node).await;
    case_kill_panic_drain_and_restart_by_path(&node).await;
    case_replay_restores_deleted_curated_files(&node, total).await;
    case_metrics_show_computed_gauges(&node).await;
    let dead_letter = case_dead_letters_are_listed_inspected_and_redriven(&node, total).await;
    case_a_dry_run_shows_rows_before_and_after_and_changes_nothing(&node).await;
    case_every_answer_matches_the_openapi_document(&node, 20).await;
    case_ctl_reports_status_and_exits_with_the_documented_codes(&node, total, &dead_letter).await;
    case_drain_through_the_api_stops_the_service(node).await;
}

const FETCHER: &str = "pipeline/sources/fetcher-demo";
const CONSUMER0: &str = "pipeline/ingest/p0000/consumer";

/// `POST /transform/dry-run`: the SQL runs on the newest raw blob and the
/// first rows before and after come back; bad SQL, output without the
/// metadata columns and a bad row count are refused; nothing changes (the
/// running version and the spec log stay as they were).
async fn case_a_dry_run_shows_rows_before_and_after_and_changes_nothing(node: &Node) {
    let (_, before) = node.get("/transform").await;
    let sql = "SELECT *, upper(type) AS kind FROM batch";
    let (code, dry) = node
        .post("/transform/dry-run", json!({ "sql": sql, "rows": 3 }))
        .await;
    assert_eq!(code, StatusCode::OK, "{dry}");
    assert!(
        dry["raw_blob"].as_str().unwrap().contains("ingest/p"),
        "{dry}"
    );
    assert!(dry["rows_in"].as_u64().unwrap() >= 1, "{dry}");
    assert_eq!(dry["rows_in"], dry["rows_out"], "{dry}");
    let (rows_before, rows_after) = (
        dry["before"].as_array().unwrap(),
        dry["after"].as_array().unwrap(),
    );
    let shown = dry["rows_in"].as_u64().unwrap().min(3) as usize;
    assert_eq!(
        (rows_before.len(), rows_after.len()),
        (shown, shown),
        "{dry}"
    );
    for (b, a) in rows_before.iter().zip(rows_after) {
        assert!(b.get("kind").is_none(), "{b}");
        assert_eq!(a["id"], b["id"], "the same rows in the same order: {dry}");
        let upper = b["type"].as_str().unwrap().to_uppercase();
        assert_eq!(a["kind"].as_str(), Some(upper.as_str()), "{a}");
        assert_eq!(a["_transform_version"], "dry-run", "{a}");
    }
    let columns = dry["columns"].to_string();
    assert!(
        columns.contains("kind") && columns.contains("_hub_sequence"),
        "{columns}"
    );
    let refused = [
        (
            json!({ "sql": "SELEKT nonsense" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "sql": "SELECT id FROM batch" }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({ "sql": "SELECT * FROM batch", "rows": 0 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "sql": "SELECT * FROM batch", "rows": 101 }),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({ "sql": "SELECT * FROM batch", "limit": 3 }),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, want) in refused {
        let (code, answer) = node.post("/transform/dry-run", body.clone()).await;
        assert_eq!(code, want, "{body} -> {answer}");
        assert!(answer["error"]["message"].as_str().is_some(), "{answer}");
    }
    let (code, _) = node
        .raw(
            reqwest::Method::POST,
            "/transform/dry-run",
            None,
            Some(r#"{"sql": "SELECT * FROM batch"}"#),
        )
        .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (_, after) = node.get("/transform").await;
    assert_eq!(after["active"], before["active"]);
    assert_eq!(after["log"], before["log"], "a dry run is not recorded");
}

/// Every answer the port gave this test (hundreds, over every case) is
/// documented for its route and status in `/openapi.json` and matches that
/// response's schema (see `common::openapi`).
async fn case_every_answer_matches_the_openapi_document(node: &Node, at_least: usize) {
    let (code, document) = node.get("/openapi.json").await;
    assert_eq!(code, StatusCode::OK);
    common::openapi::check_answers(&document, &node.answers(), at_least);
}

/// `GET /metrics`: 200, Prometheus text.
async fn scrape(node: &Node) -> String {
    let resp = node.get_response("/metrics").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    resp.text().await.unwrap()
}

/// Health and readiness answer without a token on loopback; everything is
/// curated; `/status` names the version and a running pipeline.
async fn case_health_and_readiness_need_no_token_and_everything_is_curated(
    node: &Node,
    total: u64,
) {
    // Health and readiness need no token on loopback.
    assert_eq!(
        node.get("/healthz").await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let (code, ready) = node.get("/readyz").await;
    assert_eq!(
        (code, &ready["ready"]),
        (StatusCode::OK, &json!(true)),
        "{ready}"
    );
    node.wait_until(
        "everything curated",
        Duration::from_secs(180),
        caught_up(total),
    )
    .await;
    assert_eq!(common::counts(node.settings()).await, (total, total));
    let status = node.status().await;
    assert_eq!(status["versions"]["hubflow"], env!("CARGO_PKG_VERSION"));
    assert_eq!(tree_node(&status, "pipeline")["state"], "running");
}

/// Every route in the OpenAPI document is routed; an unknown path answers
/// 404 pointing at the document.
async fn case_every_documented_route_is_served(node: &Node) {
    // Every documented route is served (none answers the 404 fallback).
    let (code, doc) = node.get("/openapi.json").await;
    assert_eq!(code, StatusCode::OK);
    for route in hubflow::admin::routes() {
        let path = hubflow::admin::openapi::openapi_path(route.path);
        let method = route.method.as_str().to_lowercase();
        assert!(
            doc["paths"][&path][&method].is_object(),
            "{method} {path} undocumented"
        );
        let concrete = path.replace("{id}", "1");
        if route.media == "text/event-stream" {
            // A stream never ends: its headers are the answer.
            let resp = node.get_response(&concrete).await;
            assert_eq!(resp.status(), StatusCode::OK, "{concrete}");
            continue;
        }
        // Without a token: control routes answer 401 (never run), read
        // routes answer; neither may fall through to the 404 fallback.
        let (code, body) = node
            .raw(route.method.clone(), &concrete, None, Some("{}"))
            .await;
        let fallback = body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no endpoint"));
        assert!(
            !fallback,
            "{method} {concrete} is documented but not routed ({code})"
        );
    }
    let (code, body) = node.get("/no/such/endpoint").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/openapi.json")
    );
}

/// Control calls without a token or with a wrong one answer 401 and change
/// nothing.
async fn case_control_calls_need_the_right_token(node: &Node) {
    // Auth: control calls need the right token; read calls do not on loopback.
    let pause = r#"{"source": "demo"}"#;
    for token in [None, Some("wrong-token-wrong-token")] {
        let (code, body) = node
            .raw(reqwest::Method::POST, "/pause", token, Some(pause))
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["error"]["message"].is_string());
    }
    assert_eq!(
        tree_node(&node.status().await, FETCHER)["observed"]["paused"],
        false
    );
}

/// Malformed, unknown and unroutable control requests: a clear 4xx each,
/// and the pipeline runs on unpaused and unrestarted.
async fn case_bad_input_is_refused_and_changes_nothing(node: &Node) {
    // Bad input: clear 4xx, nothing changes.
    let bad: [(&str, &str, StatusCode); 7] = [
        ("/pause", "{", StatusCode::BAD_REQUEST),
        ("/pause", "{}", StatusCode::BAD_REQUEST),
        (
            "/pause",
            r#"{"source": "demo", "ingest": true}"#,
            StatusCode::BAD_REQUEST,
        ),
        ("/pause", r#"{"source": "nope"}"#, StatusCode::NOT_FOUND),
        (
            "/pause",
            r#"{"sauce": "demo"}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/actors/kill",
            r#"{"path": "pipeline/no/such"}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/actors/restart",
            r#"{"path": "pipeline/no/such"}"#,
            StatusCode::NOT_FOUND,
        ),
    ];
    for (path, body, want) in bad {
        let (code, answer) = node
            .raw(reqwest::Method::POST, path, Some(TOKEN), Some(body))
            .await;
        assert_eq!(code, want, "{path} {body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (code, _) = node
        .post("/actors/panic", json!({"path": "pipeline/no/such"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let status = node.status().await;
    assert_eq!(tree_node(&status, FETCHER)["observed"]["paused"], false);
    assert_eq!(tree_node(&status, "pipeline")["restarts"], 0);
}

/// `/log-level`: an invalid directive leaves the filter as it was.
async fn case_an_invalid_log_filter_is_refused_and_a_valid_one_applied(node: &Node) {
    // Log level: invalid directive refused, filter unchanged; valid applied.
    let (_, before) = node.get("/log-level").await;
    let (code, body) = node
        .post("/log-level", json!({"filter": "hubflow=loud"}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(node.get("/log-level").await.1, before);
    let (code, body) = node
        .post("/log-level", json!({"filter": "warn,hubflow=debug"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        node.get("/log-level").await.1["filter"]
            .as_str()
            .unwrap()
            .contains("hubflow=debug")
    );
    node.post("/log-level", json!({"filter": "info"})).await;
}

/// Wait (bounded) until the actor at `path` says it is `paused` (or not).
async fn until_paused(node: &Node, path: &str, paused: bool) {
    node.wait_until(
        &format!("{path} paused: {paused}"),
        Duration::from_secs(10),
        |s| tree_node(s, path)["observed"]["paused"] == paused,
    )
    .await;
}

/// Kill the paused actor at `path`: it is restarted, running and still
/// paused (bounded).
async fn killed_comes_back_paused(node: &Node, path: &str) {
    let (code, body) = node.post("/actors/kill", json!({"path": path})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    node.wait_until(
        &format!("paused {path} restarted, still paused"),
        Duration::from_secs(30),
        |s| {
            let a = tree_node(s, path);
            a["restarts"].as_u64() >= Some(1)
                && a["state"] == "running"
                && a["observed"]["paused"] == true
        },
    )
    .await;
}

/// Pause and resume one source and all ingest; a paused actor killed
/// comes back paused.
async fn case_pauses_resume_and_outlive_restarts(node: &Node) {
    // Pause / resume a source and all ingest.
    let (code, body) = node.post("/pause", json!({"source": "demo"})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    until_paused(node, FETCHER, true).await;
    killed_comes_back_paused(node, FETCHER).await;
    node.post("/resume", json!({"source": "demo"})).await;
    until_paused(node, FETCHER, false).await;
    let (code, body) = node.post("/pause", json!({"ingest": true})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let partitions = node.settings().hub.partitions as usize;
    assert_eq!(body["paused"].as_array().unwrap().len(), partitions);
    until_paused(node, CONSUMER0, true).await;
    // A pause outlives a restart: the killed consumer comes back paused.
    killed_comes_back_paused(node, CONSUMER0).await;
    let (code, _) = node.post("/resume", json!({"ingest": true})).await;
    assert_eq!(code, StatusCode::OK);
    until_paused(node, CONSUMER0, false).await;
}

/// `POST action {"path": path}`: answered 200, and the actor is running
/// again with at least `restarts` restarts (bounded).
async fn restarted_after(node: &Node, action: &str, path: &str, restarts: u64) {
    let (code, body) = node.post(action, json!({"path": path})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let what = format!("{path} restarted after {action}");
    node.wait_until(&what, Duration::from_secs(30), |s| {
        tree_node(s, path)["restarts"].as_u64() >= Some(restarts)
            && tree_node(s, path)["state"] == "running"
    })
    .await;
}

/// Kill, panic, drain and restart actors by their path.
async fn case_kill_panic_drain_and_restart_by_path(node: &Node) {
    // Kill, panic, drain and restart by path.
    // One restart of the consumer was the paused kill above.
    restarted_after(node, "/actors/kill", CONSUMER0, 2).await;
    restarted_after(node, "/actors/panic", "pipeline/transform/p0001", 1).await;
    let group = "pipeline/ingest/p0001";
    let (code, body) = node
        .post("/drain", json!({"path": group, "deadline_secs": 10}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status = node.status().await;
    assert_ne!(
        tree_node(&status, group)["state"],
        "running",
        "{}",
        tree_node(&status, group)
    );
    let (code, body) = node.post("/actors/restart", json!({"path": group})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    node.wait_until("drained group restarted", Duration::from_secs(30), |s| {
        tree_node(s, group)["state"] == "running"
    })
    .await;
    let (code, _) = node
        .post("/drain", json!({"path": group, "deadline_secs": 0}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
}

/// Curated files of partition 0 deleted, then replayed (through the API
/// and `hubflow ctl`, and by time range): the totals are exact again.
async fn case_replay_restores_deleted_curated_files(node: &Node, total: u64) {
    // Replay: delete partition 0's curated files, replay, totals exact again.
    let curated = node
        .settings()
        .data_dir()
        .join("blobs")
        .join(&node.settings().storage.curated_container);
    let mut deleted = 0;
    for entry in walk(&curated) {
        let name = entry.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".parquet") && name.contains("-p0000-") {
            std::fs::remove_file(&entry).unwrap();
            deleted += 1;
        }
    }
    assert!(deleted > 0, "no curated files of partition 0");
    let (rows, _) = common::counts(node.settings()).await;
    assert!(rows < total, "deleting files removed no rows");
    for (body, want) in [
        (json!({"partition": 99}), StatusCode::BAD_REQUEST),
        (
            json!({"partition": 0, "from_sequence": 9, "to_sequence": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"partition": 0, "bogus": 1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        assert_eq!(node.post("/replay", body.clone()).await.0, want, "{body}");
    }
    assert_eq!(node.get("/replay/999").await.0, StatusCode::NOT_FOUND);
    let done = node.replay(json!({"partition": 0})).await;
    assert!(done["blobs_done"].as_u64().unwrap() > 0);
    assert_eq!(common::counts(node.settings()).await, (total, total));
    // Again through `hubflow ctl` (plain progress lines: stderr is a pipe).
    let (ok, stdout, stderr) = node.ctl(&["replay", "--partition", "0"], Some(TOKEN));
    assert!(ok, "ctl replay failed: {stdout}{stderr}");
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(stderr.lines().any(|l| l.starts_with("replay ")), "{stderr}");
    // It says which version rewrites the files before following the job,
    // and every progress line names it.
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("curates with transform version identity (the active version"),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .filter(|l| l.starts_with("replay ") && l.contains(" blobs,"))
            .all(|l| l.contains("(identity)")),
        "{stderr}"
    );
    assert_eq!(common::counts(node.settings()).await, (total, total));
    // Time ranges: one that covers everything replays every blob of the
    // partition (totals unchanged); one in the future selects none.
    let mut finished = Vec::new();
    for range in [
        json!({"partition": 1, "from_time": "2000-01-01T00:00:00Z", "to_time": "2100-01-01T00:00:00Z"}),
        json!({"partition": 1, "from_time": "2100-01-01T00:00:00Z"}),
    ] {
        finished.push(node.replay(range).await);
    }
    assert!(
        finished[0]["blobs_done"].as_u64().unwrap() > 0,
        "{}",
        finished[0]
    );
    assert_eq!(finished[1]["blobs_done"], 0, "{}", finished[1]);
    assert_eq!(common::counts(node.settings()).await, (total, total));
    let status = node.status().await;
    assert_eq!(status["replays"].as_array().unwrap().len(), 4);
}

/// `/metrics`: computed gauges present, lag zero once caught up.
async fn case_metrics_show_computed_gauges(node: &Node) {
    // Metrics: computed gauges present, lag zero once caught up; promtool.
    let text = scrape(node).await;
    for needle in [
        "hubflow_transformer_lag_events{partition=\"0\"} 0",
        "hubflow_writer_lag_events{partition=\"0\"} 0",
        "hubflow_actor_queue_depth{path=\"pipeline/ingest/p0000/consumer\"}",
        "hubflow_actor_restarts_total{path=\"pipeline/ingest/p0000/consumer\"}",
        "hubflow_pipeline_ready 1",
        "# HELP hubflow_transformer_lag_events",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
}

/// Dead letters: listed, inspected, a bad redrive refused, a fixed one
/// redriven and curated (once); the scrape then passes promtool. The dead
/// letter's id.
async fn case_dead_letters_are_listed_inspected_and_redriven(node: &Node, total: u64) -> String {
    // Dead letters: list, inspect, refuse a bad redrive, redrive a fixed one.
    let store =
        hubflow::embedded::FsBlobStore::new(node.settings().data_dir().join("blobs")).unwrap();
    let dlq = &node.settings().storage.dead_letter_container;
    hubflow_actors::dead_letter::write_dead_letter_at(
        &store,
        dlq,
        "transform",
        "ingest-p0000-00000000000000000000-00000000000000000001-000000",
        "payload is not a JSON object",
        &json!({"raw_blob": "raw/x", "record_id": "evt-redriven-1", "source": "demo"}),
        Bytes::from_static(b"[\"not an object\"]"),
    )
    .await
    .unwrap();
    let (code, list) = node.get("/dlq?stage=transform").await;
    assert_eq!(code, StatusCode::OK, "{list}");
    let letters = list["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{list}");
    let id = letters[0]["id"].as_str().unwrap().to_string();
    let (code, detail) = node.get(&format!("/dlq/{id}")).await;
    assert_eq!(code, StatusCode::OK, "{detail}");
    assert_eq!(detail["body_preview"], "[\"not an object\"]");
    assert_eq!(
        node.get("/dlq/transform/nope").await.0,
        StatusCode::NOT_FOUND
    );
    let (code, body) = node.post("/dlq/redrive", json!({"id": id})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    scrape(node).await; // the latency sampler's baseline
    let fixed = json!({"id": "evt-redriven-1", "type": "redriven"});
    let (code, body) = node
        .post("/dlq/redrive", json!({"id": id, "payload": fixed}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        node.post("/dlq/redrive", json!({"id": id, "payload": fixed}))
            .await
            .0,
        StatusCode::CONFLICT
    );
    node.wait_until("redriven record curated", Duration::from_secs(60), |s| {
        s["progress"]["transformed"] == total + 1
    })
    .await;
    assert_eq!(
        common::counts(node.settings()).await,
        (total + 1, total + 1)
    );
    let text = scrape(node).await;
    assert!(
        text.contains("hubflow_end_to_end_latency_seconds_count"),
        "{text}"
    );
    assert!(text.contains("hubflow_dlq_redriven_total"), "{text}");
    promtool_check(&text);
    id
}

/// `hubflow ctl`: status as JSON and text, auth errors and exit codes.
async fn case_ctl_reports_status_and_exits_with_the_documented_codes(
    node: &Node,
    total: u64,
    dead_letter: &str,
) {
    // ctl: status as JSON and text, auth errors surface.
    let (ok, stdout, stderr) = node.ctl(&["status", "--json"], None);
    assert!(ok, "{stderr}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["progress"]["transformed"], total + 1);
    let (ok, stdout, _) = node.ctl(&["status"], None);
    assert!(
        ok && stdout.contains("curated") && stdout.contains("consumer"),
        "{stdout}"
    );
    // Exit codes: 4 refused (4xx), 3 unreachable.
    let (code, _, stderr) = node.ctl_code(&["pause", "--source", "demo"], None);
    assert!(
        code == Some(4) && stderr.contains("401"),
        "{code:?} {stderr}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args(["ctl", "--addr", &closed_addr, "status"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.matches("error:").count(), 1, "{stderr}");
    let (ok, stdout, stderr) = node.ctl(&["log-level"], None);
    assert!(
        ok && stdout.contains("log filter: info"),
        "{stdout}{stderr}"
    );
    let (ok, stdout, _) = node.ctl(&["dlq", "list", "--json"], None);
    assert!(ok && stdout.contains(dead_letter), "{stdout}");
    let (code, _, stderr) = node.ctl_code(&["kill", "pipeline/no/such"], Some(TOKEN));
    assert!(
        code == Some(4) && stderr.contains("404") && stderr.contains("pipeline/no/such"),
        "{code:?} {stderr}"
    );
}

/// `POST /drain` on the node: the service drains and returns Ok.
async fn case_drain_through_the_api_stops_the_service(node: Node) {
    let (code, _) = node.post("/drain", json!({})).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    node.svc.stopped().await;
    node.demo.stop().await;
}

/// Lineage: a curated record traced back to the request that fetched it
/// (through the raw blob and the page log), from its id and from its
/// curated file and row, with the dead letters and replays that touched it;
/// bad questions get 4xx answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_follows_a_record_from_its_request_to_its_curated_row() {
    let total = 2_000;
    let node = start(total, Some(TOKEN)).await;
    node.wait_until(
        "everything curated",
        Duration::from_secs(180),
        caught_up(total),
    )
    .await;
    let id = "evt-00000042";
    let rows = common::json_rows(
        node.settings(),
        &format!(
            "SELECT _hub_partition AS p, _hub_sequence AS s, _raw_blob AS b, date, hour \
             FROM demo WHERE id = '{id}'"
        ),
    )
    .await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let (trace, file) =
        case_trace_by_id_reaches_the_request_raw_blob_and_curated_file(&node, id, row).await;
    let position =
        case_trace_by_curated_file_and_row_finds_the_same_record(&node, id, &file, &trace).await;
    case_ctl_trace_by_id_and_by_row(&node, id, &file, position).await;
    case_replays_and_dead_letters_of_the_record_show_up(&node, id, row).await;
    case_bad_trace_questions_get_4xx(&node, &file).await;
    case_every_answer_matches_the_openapi_document(&node, 3).await;
    node.stop().await;
}

/// The record's trace by source and id: its curated row (partition,
/// sequence, raw blob, file under its date and hour), raw blob and the
/// request that fetched it; no dead letters or replays yet. The trace and
/// the curated file.
async fn case_trace_by_id_reaches_the_request_raw_blob_and_curated_file(
    node: &Node,
    id: &str,
    row: &Value,
) -> (Value, String) {
    // The page log is written within its flush interval (10 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let trace = loop {
        let (code, trace) = node.get(&format!("/trace?source=demo&id={id}")).await;
        assert_eq!(code, StatusCode::OK, "{trace}");
        if trace["fetch"].is_object() {
            break trace;
        }
        assert!(
            Instant::now() < deadline,
            "the page was never logged: {trace}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let curated = &trace["curated"];
    assert_eq!(curated.as_array().map(Vec::len), Some(1), "{trace}");
    assert_eq!(curated[0]["partition"], row["p"]);
    assert_eq!(curated[0]["sequence"], row["s"]);
    assert_eq!(curated[0]["raw_blob"], row["b"]);
    assert_eq!(curated[0]["transform_version"], "identity");
    let file = curated[0]["file"].as_str().unwrap().to_string();
    assert!(
        file.starts_with(&format!(
            "demo/date={}/hour={}/",
            row["date"].as_str().unwrap(),
            row["hour"].as_str().unwrap()
        )),
        "{file}"
    );
    let raw = &trace["raw"];
    assert_eq!(raw["sequence"], row["s"]);
    assert!(
        raw["payload_preview"].as_str().unwrap().contains(id),
        "{raw}"
    );
    let fetch = &trace["fetch"];
    assert_eq!(fetch["fetched_ms"], raw["fetched_ms"]);
    let request = fetch["request"].as_str().unwrap();
    assert!(
        request.starts_with(&format!("GET {}", node.demo.url)),
        "{request}"
    );
    let (first, last) = (
        fetch["first_id"].as_str().unwrap(),
        fetch["last_id"].as_str().unwrap(),
    );
    assert!(first <= id && id <= last, "{fetch}");
    assert!(fetch["page_records"].as_u64().unwrap() >= 1, "{fetch}");
    assert_eq!(trace["dead_letters"], json!([]));
    assert_eq!(trace["replays"], json!([]));
    (trace, file)
}

/// The same record from its curated file and row; the file holds it at
/// the position of its id among the file's rows. That position.
async fn case_trace_by_curated_file_and_row_finds_the_same_record(
    node: &Node,
    id: &str,
    file: &str,
    trace: &Value,
) -> usize {
    // The same record from its curated file and row; the file holds it at
    // the position of its id among the file's rows.
    let store =
        hubflow::embedded::FsBlobStore::new(node.settings().data_dir().join("blobs")).unwrap();
    let curated_container = &node.settings().storage.curated_container;
    let (bytes, _) = hubflow_actors::ports::BlobStore::get(&store, curated_container, file)
        .await
        .unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut position = None;
    let mut seen = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let ids =
            arrow::array::AsArray::as_string::<i32>(batch.column_by_name("_record_id").unwrap());
        if let Some(i) = (0..batch.num_rows()).find(|&i| ids.value(i) == id) {
            position = Some(seen + i);
        }
        seen += batch.num_rows();
    }
    let position = position.expect("the file holds the record");
    let (code, by_row) = node
        .get(&format!("/trace?file={file}&row={position}"))
        .await;
    assert_eq!(code, StatusCode::OK, "{by_row}");
    assert_eq!(by_row["id"], id);
    assert_eq!(by_row["curated"], trace["curated"]);
    position
}

async fn case_ctl_trace_by_id_and_by_row(node: &Node, id: &str, file: &str, position: usize) {
    // `hubflow ctl trace`, by id and by row.
    let (ok, stdout, stderr) = node.ctl(&["trace", "demo", id], None);
    assert!(ok, "{stdout}{stderr}");
    for want in [
        format!("record {id} of source demo"),
        format!("fetched    GET {}", node.demo.url),
        format!("curated    {file} (transform identity"),
    ] {
        assert!(stdout.contains(&want), "{want} not in\n{stdout}");
    }
    let (ok, stdout, stderr) = node.ctl(
        &["trace", "--file", file, "--row", &position.to_string()],
        None,
    );
    assert!(
        ok && stdout.contains(&format!("record {id}")),
        "{stdout}{stderr}"
    );
}

async fn case_replays_and_dead_letters_of_the_record_show_up(node: &Node, id: &str, row: &Value) {
    // A replay of its partition and a dead letter naming it show up. The
    // replay runs through `ctl` on a terminal (util-linux `script` gives it
    // one): it draws a bar with rate and ETA, which piped output never has.
    let store =
        hubflow::embedded::FsBlobStore::new(node.settings().data_dir().join("blobs")).unwrap();
    let partition = row["p"].as_u64().unwrap();
    let command = format!(
        "{} ctl --addr {} replay --partition {partition}",
        env!("CARGO_BIN_EXE_hubflow"),
        node.svc.addr
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("HUBFLOW_ADMIN_TOKEN", TOKEN)
        .env("HUBFLOW_LOG", "warn")
        .env("TERM", "xterm")
        .output()
        .expect("util-linux script runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("blobs · ") && screen.contains("eta ") && screen.contains("[="),
        "no progress bar on a terminal:\n{screen}"
    );
    let job: u64 = screen
        .split(['\n', '\r'])
        .find_map(|l| {
            let rest = l.trim().strip_prefix("replay ")?;
            let (id, tail) = rest.split_once(' ')?;
            tail.starts_with("completed:").then(|| id.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no completed replay in:\n{screen:?}"));
    let (ok, _, stderr) = node.ctl(
        &["replay", "--partition", &partition.to_string()],
        Some(TOKEN),
    );
    assert!(ok && !stderr.contains("eta "), "{stderr}");
    hubflow_actors::dead_letter::write_dead_letter_at(
        &store,
        &node.settings().storage.dead_letter_container,
        "transform",
        "ingest-p0000-00000000000000000000-00000000000000000001-000000",
        "payload is not a JSON object",
        &json!({"raw_blob": "raw/x", "record_id": id, "source": "demo"}),
        Bytes::from_static(b"[]"),
    )
    .await
    .unwrap();
    let (code, trace) = node.get(&format!("/trace?source=demo&id={id}")).await;
    assert_eq!(code, StatusCode::OK, "{trace}");
    let replays = trace["replays"].as_array().unwrap();
    assert_eq!(replays.len(), 2, "{trace}");
    assert_eq!(replays[0]["id"], job);
    assert_eq!(
        trace["dead_letters"][0]["reason"],
        "payload is not a JSON object"
    );
    assert_eq!(
        trace["curated"].as_array().map(Vec::len),
        Some(1),
        "{trace}"
    );
}

async fn case_bad_trace_questions_get_4xx(node: &Node, file: &str) {
    // Bad questions: 4xx, and `ctl` says which.
    for (path, want) in [
        ("/trace?source=demo&id=evt-99999999", StatusCode::NOT_FOUND),
        ("/trace?source=nope&id=evt-1", StatusCode::NOT_FOUND),
        ("/trace?source=demo", StatusCode::BAD_REQUEST),
        ("/trace?source=demo&id=x&row=1", StatusCode::BAD_REQUEST),
        ("/trace?file=demo/x.parquet&row=0", StatusCode::NOT_FOUND),
        ("/trace?file=../etc/passwd&row=0", StatusCode::BAD_REQUEST),
        ("/trace?row=nan&file=x", StatusCode::BAD_REQUEST),
    ] {
        let (code, body) = node.get(path).await;
        assert_eq!(code, want, "{path}: {body}");
    }
    let (code, body) = node.get(&format!("/trace?file={file}&row=1000000")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("past the last row")
    );
    let (code, _, stderr) = node.ctl_code(&["trace", "demo", "evt-99999999"], None);
    assert!(
        code == Some(4) && stderr.contains("evt-99999999"),
        "{code:?} {stderr}"
    );
}

/// The admin token is set in the environment (the tests without a token
/// say they are skipped).
fn token_in_environment() -> bool {
    let set = std::env::var(hubflow::config::admin::TOKEN_ENV).is_ok();
    if set {
        eprintln!(
            "skipped: {} is set in the environment",
            hubflow::config::admin::TOKEN_ENV
        );
    }
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_reads_work_and_control_is_refused() {
    if token_in_environment() {
        return;
    }
    let node = start(100, None).await;
    assert_eq!(node.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(node.get("/status").await.0, StatusCode::OK);
    let (code, body) = node
        .raw(
            reqwest::Method::POST,
            "/pause",
            Some(TOKEN),
            Some(r#"{"ingest": true}"#),
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("token"));
    let (code, _) = node
        .raw(reqwest::Method::POST, "/drain", None, Some("{}"))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    node.stop().await;
}

/// With no `[[sources]]` the built-in demo API feeds the pipeline: `GET
/// /sources` lists its source like a configured one (what the console's
/// Sources panel reads), not kept in a spec log, and a swap of it is
/// refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_demo_source_is_listed_and_its_swap_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "http://127.0.0.1:9", Some(TOKEN));
    config.sources.clear();
    config.demo.enabled = true;
    config.demo.total = 200;
    config.demo.rate_per_sec = None;
    let svc = Service::start(config, Some(TOKEN)).await;
    let (code, body) = svc.admin.get("/sources").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let sources = body["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{body}");
    assert_eq!(sources[0]["name"], "demo", "{body}");
    assert_eq!(sources[0]["version"], "built-in", "{body}");
    assert_eq!(sources[0]["durable"], false, "{body}");
    assert_eq!(sources[0]["builtin"], true, "{body}");
    assert!(sources[0]["log"].is_null(), "{body}");
    let source = hubflow::demo::demo_source_config("http://127.0.0.1:9");
    let (code, body) = svc
        .admin
        .post(
            "/sources/demo",
            json!({"version": "v2", "source": serde_json::to_value(&source).unwrap()}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("built-in demo source"), "{body}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_non_loopback_address_probes_are_open_and_everything_else_needs_the_token() {
    let mut node = start_on(100, Some(TOKEN), "0.0.0.0:0").await;
    // The listener answers on loopback too; what counts is where it listens.
    node.svc.addr = SocketAddr::from(([127, 0, 0, 1], node.svc.addr.port()));
    node.svc.admin.base = format!("http://{}", node.svc.addr);
    let (code, body) = node.get("/healthz").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..300 {
        ready = node.get("/readyz").await.0;
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, StatusCode::OK);
    // The console's files hold no data: a browser loads them without the
    // token, and the page then needs it for everything else.
    for path in ["/ui", "/ui/app.js", "/ui/app.css"] {
        let resp = node.get_response(path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    for path in ["/status", "/events", "/metrics", "/openapi.json", "/dlq"] {
        if path == "/events" {
            let resp = node.get_response(path).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path}");
            continue;
        }
        assert_eq!(node.get(path).await.0, StatusCode::UNAUTHORIZED, "{path}");
        let (code, _) = node
            .raw(reqwest::Method::GET, path, Some(TOKEN), None)
            .await;
        assert_eq!(code, StatusCode::OK, "{path} with the token");
    }
    // The container healthcheck and a readiness gate, without the token.
    let (ok, stdout, stderr) = node.ctl(&["health"], None);
    assert!(ok && stdout.contains("ok"), "{stdout} {stderr}");
    let (ok, stdout, stderr) = node.ctl(&["ready"], None);
    assert!(ok && stdout.contains("ready"), "{stdout} {stderr}");
    node.stop().await;
}

#[tokio::test]
async fn ctl_health_fails_when_nothing_listens() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args([
            "ctl",
            "--timeout-secs",
            "2",
            "--addr",
            &addr.to_string(),
            "health",
        ])
        .env_remove("HUBFLOW_ADMIN_TOKEN")
        .env("HUBFLOW_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("healthz"), "{stderr}");
}

#[tokio::test]
async fn non_loopback_without_a_token_is_refused_before_listening() {
    if token_in_environment() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), "http://127.0.0.1:9", None);
    config.admin.listen = Some("0.0.0.0:0".parse().unwrap());
    // Refused when the configuration is validated, before `run` could
    // open anything.
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("admin.listen") && err.contains("loopback"),
        "{err}"
    );
    // Nothing was started: no data directory was created.
    assert!(!dir.path().join("hub.sqlite").exists());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The console's live feed at scale: with 64 partitions and three sources,
/// `GET /events` sends a status document at least every couple of seconds
/// (the producer promises one a second; the bound leaves room for a loaded
/// CI machine), each naming all 64 partitions with their lag and all
/// three fetchers, and `/sources` lists the three sources the console's
/// source picker offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_feed_keeps_up_with_64_partitions_and_three_sources() {
    let _heavy = common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::serving(3_000).await;
    let mut config = config(dir.path(), &demo.url, Some(TOKEN));
    config.hub.partitions = 64;
    let first = config.sources[0].clone();
    for name in ["orders", "refunds"] {
        let mut source = first.clone();
        source.name = name.to_string();
        config.sources.push(source);
    }
    let svc = Service::start(config, Some(TOKEN)).await;
    let mut resp = reqwest::Client::new()
        .get(format!("{}/events", svc.admin.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (mut text, mut full, mut last) = (String::new(), 0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    while full < 3 {
        assert!(
            Instant::now() < deadline,
            "three full documents did not come within 120 s"
        );
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("no event within 10 s")
            .unwrap()
            .expect("the event stream ended");
        text.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let gap = last.elapsed();
            last = Instant::now();
            let doc: Value = serde_json::from_str(data).unwrap();
            let partitions = doc["progress"]["partitions"].as_array().map_or(0, Vec::len);
            let fetchers: Vec<String> = doc["tree"]
                .to_string()
                .matches("\"name\":\"fetcher-")
                .map(str::to_string)
                .collect();
            if partitions == 0 || fetchers.len() < 3 {
                continue; // starting up: progress not read yet, sources not started
            }
            assert_eq!(partitions, 64, "{}", doc["progress"]);
            assert_eq!(fetchers.len(), 3, "{}", doc["tree"]);
            let consumers = doc["tree"]
                .to_string()
                .matches("\"name\":\"consumer\"")
                .count();
            assert_eq!(consumers, 64);
            assert!(
                gap < Duration::from_secs(3),
                "{gap:?} between two documents"
            );
            full += 1;
        }
    }
    drop(resp);
    let (code, sources) = svc.admin.get("/sources").await;
    assert_eq!(code, StatusCode::OK);
    let names: Vec<&str> = sources["sources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["demo", "orders", "refunds"], "{sources}");
    svc.stop().await;
    demo.stop().await;
}
