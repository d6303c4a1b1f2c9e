//! Hot swap of the transformation spec under load, through the admin port
//! of a running service: while records stream in, three specs are refused
//! before anything stops (invalid SQL, a dry-run failure, a spec dropping
//! the metadata columns), a good one is promoted, and one that fails at run
//! time is rolled back automatically. Afterwards every record is in curated
//! exactly once, files written after the swap carry the new shape, a replay
//! rewrites older files in it, and the history shows each step.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use hubflow::config::{Config, Settings};
use hubflow::demo::DemoConfig;
use hubflow::embedded::SqliteHub;
use hubflow::service::{self, Hooks, RunOptions};
use hubflow::source::SecretString;
use hubflow_actors::ports::Hub;
use reqwest::StatusCode;
use serde_json::{Value, json};

const TOKEN: &str = "hot-swap-token-0123456789";

struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let code = resp.status();
        let text = resp.text().await.unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn swap(&self, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, "/transform", Some(body))
            .await
    }

    async fn transform(&self) -> Value {
        let (code, v) = self.call(reqwest::Method::GET, "/transform", None).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v
    }

    async fn progress(&self) -> Value {
        let (code, v) = self.call(reqwest::Method::GET, "/status", None).await;
        assert_eq!(code, StatusCode::OK, "{v}");
        v["progress"].clone()
    }
}

/// The service running a config, with its admin port on loopback.
struct Running {
    settings: Settings,
    admin: Admin,
    stop: Arc<tokio::sync::Notify>,
    run: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(mut config: Config) -> Running {
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        config.admin.token = Some(SecretString::literal(TOKEN));
        let settings = config.validate().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(tokio::sync::Notify::new());
        let run = tokio::spawn(service::run_with(
            settings.clone(),
            RunOptions::default(),
            Hooks {
                logs: None,
                on_admin_listening: Some(tx),
                stop: Some(stop.clone()),
            },
        ));
        let addr = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let admin = Admin {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        Running {
            settings,
            admin,
            stop,
            run,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_refuse_promote_and_roll_back_with_nothing_lost() {
    let _heavy = common::exclusive().await;
    let total = 40_000u64;
    let dir = tempfile::tempdir().unwrap();
    // Records appear over ~20 s, so every swap happens under load.
    let demo = common::DemoServer::start(DemoConfig {
        total,
        rate_per_sec: Some(2_000.0),
        ..DemoConfig::default()
    })
    .await;
    let mut config = common::config(dir.path(), &demo.url);
    config.supervision.backoff_initial_ms = 50;
    config.supervision.backoff_max_ms = 500;
    let Running {
        settings,
        admin,
        stop,
        run,
    } = Running::start(config).await;
    // Some raw data first, for the dry runs.
    for _ in 0..600 {
        if admin.progress().await["landed"].as_u64().unwrap_or(0) >= 2_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Refused before anything stops.
    let (code, body) = admin
        .swap(json!({"version": "bad-sql", "sql": "SELEC nonsense"}))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (code, body) = admin
        .swap(
            json!({"version": "bad-column", "sql": "SELECT *, no_such_column * 2 AS x FROM batch"}),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("dry run"), "{body}");
    let (code, body) = admin
        .swap(json!({"version": "no-lineage", "sql": "SELECT id, amount FROM batch"}))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(admin.transform().await["active"]["version"], "identity");

    // A good version: promoted.
    let (code, body) = admin
        .swap(json!({
            "version": "v2",
            "sql": "SELECT *, amount * 100 AS amount_cents FROM batch",
            "probation_secs": 2
        }))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "promoted", "{body}");
    assert_eq!(admin.transform().await["active"]["version"], "v2");

    // A version that passes its dry run (on data already landed) but fails
    // on records that arrive after it started: rolled back to v2.
    let hub = SqliteHub::open_async(
        dir.path().join("hub.sqlite"),
        "ingest".into(),
        settings.config.hub.partitions,
        None,
    )
    .await
    .unwrap();
    let mut conditions = Vec::new();
    for p in hub.partition_ids().await.unwrap() {
        let last = hub
            .partition_properties(p)
            .await
            .unwrap()
            .last_enqueued_sequence_number;
        conditions.push(format!(
            "(_hub_partition = {p} AND _hub_sequence > {})",
            last + 200
        ));
    }
    let failing = format!(
        "SELECT *, CAST(CASE WHEN {} THEN 'boom' ELSE '1' END AS INT) AS check_value FROM batch",
        conditions.join(" OR ")
    );
    let (code, body) = admin
        .swap(json!({"version": "v3", "sql": failing, "probation_secs": 60}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "rolled_back", "{body}");
    assert_eq!(body["restored"], "v2", "{body}");
    let status = admin.transform().await;
    assert_eq!(status["active"]["version"], "v2");
    let outcomes: Vec<(String, String)> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |v: &str, o: &str| (v.to_string(), o.to_string());
    assert_eq!(
        outcomes,
        vec![
            expect("bad-sql", "refused"),
            expect("bad-column", "refused"),
            expect("no-lineage", "refused"),
            expect("v2", "promoted"),
            expect("v3", "rolled_back"),
        ]
    );
    let (_, tree) = admin.call(reqwest::Method::GET, "/status", None).await;
    let text = tree.to_string();
    for step in [
        "replacing identity with v2",
        "promoted v2",
        "replacing v2 with v3",
        "rolled back v3 to v2",
    ] {
        assert!(text.contains(step), "status history lacks {step:?}");
    }

    // Everything lands, exactly once; v2's shape is in the files written
    // after its swap.
    for _ in 0..1_200 {
        let p = admin.progress().await;
        if p["sources_caught_up"] == true
            && p["fetched"] == total
            && p["transformed"] == total
            && p["landed"] == total
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Replay uses the active transform: partition 0's files written before
    // the swap lack v2's column; replayed, every one of its rows has it.
    let old_shape = "SELECT count(*) AS n FROM demo \
                     WHERE _hub_partition = 0 AND amount IS NOT NULL AND amount_cents IS NULL";
    let before = common::json_rows(&settings, old_shape).await;
    assert!(before[0]["n"].as_u64().unwrap() > 0, "{before:?}");
    let (code, started) = admin
        .call(
            reqwest::Method::POST,
            "/replay",
            Some(json!({"partition": 0})),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_u64().unwrap();
    let mut done = Value::Null;
    for _ in 0..1_200 {
        let (_, progress) = admin
            .call(reqwest::Method::GET, &format!("/replay/{id}"), None)
            .await;
        if progress["state"] != "running" {
            done = progress;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["state"], "completed", "{done}");
    let after = common::json_rows(&settings, old_shape).await;
    assert_eq!(after[0]["n"], 0, "{after:?}");

    stop.notify_one();
    run.await.unwrap().unwrap();
    assert_eq!(common::counts(&settings).await, (total, total));
    let rows = common::json_rows(
        &settings,
        "SELECT count(amount_cents) AS n, count(*) FILTER (WHERE amount_cents <> amount * 100) AS wrong FROM demo",
    )
    .await;
    assert!(rows[0]["n"].as_u64().unwrap() > 0, "{rows:?}");
    assert_eq!(rows[0]["wrong"], 0, "{rows:?}");
    demo.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_settings_swap_under_load_and_roll_back_when_the_new_ones_fail() {
    let _heavy = common::exclusive().await;
    let total = 20_000u64;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total,
        rate_per_sec: Some(1_000.0),
        ..DemoConfig::default()
    })
    .await;
    let config = common::config(dir.path(), &demo.url);
    let Running {
        settings,
        admin,
        stop,
        run,
    } = Running::start(config).await;
    let source = settings.config.sources[0].clone();
    let post = |body: Value| {
        let admin = &admin;
        async move {
            admin
                .call(reqwest::Method::POST, "/sources/demo", Some(body))
                .await
        }
    };

    // Refused, nothing changes: invalid settings, a name that does not match.
    let mut invalid = serde_json::to_value(&source).unwrap();
    invalid["url"] = json!("not a url");
    let (code, body) = post(json!({"version": "bad", "source": invalid})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let mut other = serde_json::to_value(&source).unwrap();
    other["name"] = json!("other");
    let (code, body) = post(json!({"version": "x", "source": other})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");

    // Smaller pages: promoted, and the cursor carries over.
    let mut smaller = serde_json::to_value(&source).unwrap();
    smaller["query"]["limit"] = json!("250");
    let (code, body) =
        post(json!({"version": "pages-250", "source": smaller, "probation_secs": 2})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "promoted", "{body}");

    // An endpoint that refuses connections: the new fetcher spends its retry
    // budget and fails during probation, so the previous settings return.
    let mut dead = smaller.clone();
    dead["url"] = json!("http://127.0.0.1:9/v1/events");
    let (code, body) =
        post(json!({"version": "dead-endpoint", "source": dead, "probation_secs": 60})).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "rolled_back", "{body}");
    assert_eq!(body["restored"], "pages-250", "{body}");

    let (_, tree) = admin.call(reqwest::Method::GET, "/status", None).await;
    let text = tree.to_string();
    for step in [
        "replacing unversioned with pages-250",
        "promoted pages-250",
        "replacing pages-250 with dead-endpoint",
        "rolled back dead-endpoint to pages-250",
    ] {
        assert!(text.contains(step), "status history lacks {step:?}");
    }

    for _ in 0..1_200 {
        let p = admin.progress().await;
        if p["fetched"] == total && p["transformed"] == total && p["landed"] == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.notify_one();
    run.await.unwrap().unwrap();
    assert_eq!(common::counts(&settings).await, (total, total));
    demo.stop().await;
}
