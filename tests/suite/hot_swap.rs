//! Hot swap of the transformation spec under load, through the admin port
//! of a running service: while records stream in, three specs are refused
//! before anything stops (invalid SQL, a dry-run failure, a spec dropping
//! the metadata columns), a good one is promoted, and one that fails at run
//! time is rolled back automatically. Afterwards every record is in curated
//! exactly once, files written after the swap carry the new shape, a replay
//! rewrites older files in it, and the history shows each step.

use crate::common;

use std::time::Duration;

use common::harness::{Admin, Service, assert_swapped};
use hubflow::config::{Config, Settings};
use hubflow::source::HttpSourceConfig;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const TOKEN: &str = "hot-swap-token-0123456789";

/// The service running `config` with the admin token, its swaps recorded
/// as made by operator "hot-swap-test".
async fn start(config: Config) -> Service {
    let mut svc = Service::start(config, Some(TOKEN)).await;
    svc.admin = svc.admin.operator("hot-swap-test");
    svc
}

async fn swap(admin: &Admin, body: Value) -> (StatusCode, Value) {
    admin.call(Method::POST, "/transform", Some(&body)).await
}

async fn transform(admin: &Admin) -> Value {
    let (code, v) = admin.call(Method::GET, "/transform", None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    v
}

async fn progress(admin: &Admin) -> Value {
    let (code, v) = admin.call(Method::GET, "/status", None).await;
    assert_eq!(code, StatusCode::OK, "{v}");
    v["progress"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaps_under_load_refuse_promote_and_roll_back_with_nothing_lost() {
    let _heavy = common::exclusive().await;
    let total = 40_000u64;
    let dir = tempfile::tempdir().unwrap();
    // Records appear over ~20 s, so every swap happens under load.
    let demo = common::DemoServer::streaming(total, Some(2_000.0)).await;
    let mut config = common::config(dir.path(), &demo.url);
    config.supervision.backoff_initial_ms = 50;
    config.supervision.backoff_max_ms = 500;
    let svc = start(config).await;
    let (admin, settings) = (&svc.admin, svc.settings.clone());
    // Some raw data first, for the dry runs.
    for _ in 0..600 {
        if progress(admin).await["landed"].as_u64().unwrap_or(0) >= 2_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    case_bad_specs_are_refused_before_anything_stops(admin).await;
    case_a_good_version_is_promoted(admin).await;
    case_a_version_failing_on_new_records_rolls_back(admin, &settings).await;
    case_everything_lands_and_a_replay_rewrites_old_files_in_the_new_shape(admin, &settings, total)
        .await;
    svc.stop().await;
    assert_eq!(common::counts(&settings).await, (total, total));
    let rows = common::json_rows(
        &settings,
        "SELECT count(amount_cents) AS n, count(*) FILTER (WHERE amount_cents <> amount * 100) AS wrong FROM demo",
    )
    .await;
    assert!(rows[0]["n"].as_u64().unwrap() > 0, "{rows:?}");
    assert_eq!(rows[0]["wrong"], 0, "{rows:?}");
    demo.stop().await;

    restart_replay_rollback_and_backfill(dir.path(), &settings, total).await;
}

/// Invalid SQL, a dry-run failure and a spec dropping the metadata
/// columns: refused, identity still runs.
async fn case_bad_specs_are_refused_before_anything_stops(admin: &Admin) {
    let (code, body) = swap(
        admin,
        json!({"version": "bad-sql", "sql": "SELEC nonsense"}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (code, body) = swap(
        admin,
        json!({"version": "bad-column", "sql": "SELECT *, no_such_column * 2 AS x FROM batch"}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("dry run"), "{body}");
    let (code, body) = swap(
        admin,
        json!({"version": "no-lineage", "sql": "SELECT id, amount FROM batch"}),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(transform(admin).await["active"]["version"], "identity");
}

async fn case_a_good_version_is_promoted(admin: &Admin) {
    let (code, body) = swap(
        admin,
        json!({
            "version": "v2",
            "sql": "SELECT *, amount * 100 AS amount_cents FROM batch",
            "probation_secs": 2
        }),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["outcome"], "promoted", "{body}");
    assert_eq!(transform(admin).await["active"]["version"], "v2");
}

/// A version that passes its dry run (on data already landed) but fails
/// on records that arrive after it started: rolled back to v2; the durable
/// spec log and the status history hold every step.
async fn case_a_version_failing_on_new_records_rolls_back(admin: &Admin, settings: &Settings) {
    let conditions =
        common::records_after_now(settings.data_dir(), settings.hub.partitions, 200).await;
    let failing = format!(
        "SELECT *, CAST(CASE WHEN {conditions} THEN 'boom' ELSE '1' END AS INT) AS check_value FROM batch"
    );
    let (code, body) = swap(
        admin,
        json!({"version": "v3", "sql": failing, "probation_secs": 60}),
    )
    .await;
    assert_swapped(&(code, body), "rolled_back", Some("v2"), "");
    let status = transform(admin).await;
    assert_eq!(status["active"]["version"], "v2");
    // The durable spec log holds every attempt: who, outcome, dry run.
    let expect = |v: &str, o: &str| (v.to_string(), o.to_string());
    assert_eq!(
        log_outcomes(&status),
        vec![
            expect("identity", "promoted"),
            expect("bad-sql", "refused"),
            expect("bad-column", "refused"),
            expect("no-lineage", "refused"),
            expect("v2", "promoted"),
            expect("v3", "rolled_back"),
        ]
    );
    let v2 = &status["log"]["entries"][4];
    assert_eq!(v2["by"], "hot-swap-test", "{v2}");
    assert!(v2["dry_run"]["rows_in"].as_u64().unwrap() > 0, "{v2}");
    let v3 = &status["log"]["entries"][5];
    assert!(v3["detail"].as_str().unwrap().contains("node "), "{v3}");
    assert_history(
        admin,
        &[
            "replacing identity with v2",
            "promoted v2",
            "replacing v2 with v3",
            "rolled back v3 to v2",
        ],
    )
    .await;
}

/// `/status`'s history names every step.
async fn assert_history(admin: &Admin, steps: &[&str]) {
    let (_, tree) = admin.call(Method::GET, "/status", None).await;
    let text = tree.to_string();
    for step in steps {
        assert!(text.contains(step), "status history lacks {step:?}");
    }
}

/// Poll (bounded, ~2 min) until the progress says `done`.
async fn until_progress(admin: &Admin, done: impl Fn(&Value) -> bool) {
    for _ in 0..1_200 {
        if done(&progress(admin).await) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything lands, exactly once. Replay uses the active transform:
/// partition 0's files written before the swap lack v2's column; replayed,
/// every one of its rows has it.
async fn case_everything_lands_and_a_replay_rewrites_old_files_in_the_new_shape(
    admin: &Admin,
    settings: &Settings,
    total: u64,
) {
    until_progress(admin, |p| {
        p["sources_caught_up"] == true
            && p["fetched"] == total
            && p["transformed"] == total
            && p["landed"] == total
    })
    .await;
    let old_shape = "SELECT count(*) AS n FROM demo \
                     WHERE _hub_partition = 0 AND amount IS NOT NULL AND amount_cents IS NULL";
    let before = common::json_rows(settings, old_shape).await;
    assert!(before[0]["n"].as_u64().unwrap() > 0, "{before:?}");
    admin.replay(json!({"partition": 0})).await;
    let after = common::json_rows(settings, old_shape).await;
    assert_eq!(after[0]["n"], 0, "{after:?}");
}

/// The operator's sequence from the durable-swap issue, after the swaps
/// above: the node restarts with the config file's (identity) spec, yet
/// runs v2 and says it drifts; damaged files of partition 0 are deleted and
/// replayed, with v2 by default; then a rollback to identity, and a
/// backfill of everything since v2 with identity.
async fn restart_replay_rollback_and_backfill(
    dir: &std::path::Path,
    settings: &Settings,
    total: u64,
) {
    let demo = common::DemoServer::streaming(total, Some(50_000.0)).await;
    let mut config = common::config(dir, &demo.url);
    config.supervision.backoff_initial_ms = 50;
    let svc = start(config).await;
    let admin = &svc.admin;
    case_a_restart_runs_the_stored_version_and_says_it_drifts(admin).await;
    case_a_replay_of_deleted_files_uses_the_active_version(admin, settings, total).await;
    case_a_replay_takes_an_explicit_known_version(admin).await;
    case_rollback_then_backfill_since_v2_with_identity(admin).await;
    svc.stop().await;
    let left = "SELECT count(amount_cents) AS n, count(*) FILTER (WHERE _transform_version <> 'identity') AS other FROM demo";
    let rows = common::json_rows(settings, left).await;
    assert_eq!(
        (rows[0]["n"].as_u64(), rows[0]["other"].as_u64()),
        (Some(0), Some(0)),
        "{rows:?}"
    );
    assert_eq!(common::counts(settings).await, (total, total));
    demo.stop().await;
}

/// The config file says identity, the spec log v2: v2 runs, drift is
/// reported (status and metric), and both versions have curated ranges.
async fn case_a_restart_runs_the_stored_version_and_says_it_drifts(admin: &Admin) {
    let status = transform(admin).await;
    assert_eq!(status["active"]["version"], "v2", "{status}");
    assert_eq!(status["config"]["version"], "identity", "{status}");
    assert_eq!(status["drift"], true, "{status}");
    // Which version curated what: both versions have ranges.
    for version in ["identity", "v2"] {
        let curated = status["ranges"][version]["curated"].as_array();
        assert!(
            curated.is_some_and(|c| !c.is_empty()),
            "{version}: {status}"
        );
    }
    let (_, metrics) = admin.call(Method::GET, "/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("hubflow_transform_config_drift 1"),
        "drift metric missing"
    );
}

/// Five damaged curated files of partition 0, deleted; the replay uses the
/// active version (v2) and says so.
async fn case_a_replay_of_deleted_files_uses_the_active_version(
    admin: &Admin,
    settings: &Settings,
    total: u64,
) {
    let curated_dir = settings.data_dir().join("blobs").join("curated");
    let mut p0: Vec<std::path::PathBuf> = walk(&curated_dir)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("ingest-p0000-"))
        .collect();
    p0.sort();
    assert!(p0.len() >= 5, "{p0:?}");
    for f in p0.iter().take(5) {
        std::fs::remove_file(f).unwrap();
    }
    let done = admin.replay(json!({"partition": 0})).await;
    assert_eq!(done["transform_version"], "v2", "{done}");
    let lost = "SELECT count(*) AS n FROM demo WHERE _hub_partition = 0 AND amount IS NOT NULL \
                AND (amount_cents IS NULL OR _transform_version <> 'v2')";
    assert_eq!(common::json_rows(settings, lost).await[0]["n"], 0);
    assert_eq!(common::counts(settings).await, (total, total));
}

/// An explicit other version for a replay, and an unknown one refused.
async fn case_a_replay_takes_an_explicit_known_version(admin: &Admin) {
    let done = admin
        .replay(json!({"partition": 1, "version": "identity"}))
        .await;
    assert_eq!(done["transform_version"], "identity", "{done}");
    let (code, body) = admin
        .post("/replay", json!({"partition": 1, "version": "v9"}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
}

/// Roll back v2: the newest promoted version before it is identity. Then
/// everything curated since v2 first ran, rewritten with identity, through
/// `hubflow ctl transform backfill`, which follows every job to its end
/// (plain progress lines when not on a terminal).
async fn case_rollback_then_backfill_since_v2_with_identity(admin: &Admin) {
    let (code, body) = admin
        .post("/transform/rollback", json!({"probation_secs": 1}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (body["outcome"].as_str(), body["version"].as_str()),
        (Some("promoted"), Some("identity")),
        "{body}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args(["ctl", "--addr", &admin.base, "transform", "backfill"])
        .args(["--since", "v2", "--with", "identity", "--wait-secs", "300"])
        .env("HUBFLOW_ADMIN_TOKEN", TOKEN)
        .env("HUBFLOW_LOG", "warn")
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    let jobs: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.split("(replay ").nth(1)?.strip_suffix(')')?.parse().ok())
        .collect();
    assert!(!jobs.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "backfill done: {} replay(s) completed",
            jobs.len()
        )) && !stderr.contains("eta "),
        "{stderr}"
    );
    for id in jobs {
        let done = admin.replay_finished(id).await;
        assert_eq!(
            (done["state"].as_str(), done["transform_version"].as_str()),
            (Some("completed"), Some("identity")),
            "{done}"
        );
    }
    let status = transform(admin).await;
    assert_eq!(status["drift"], false, "{status}");
    assert!(
        status["ranges"]["identity"]["replayed"]
            .as_array()
            .unwrap()
            .len()
            >= 2,
        "{status}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "parquet") {
            out.push(path);
        }
    }
    out
}

/// (version, outcome) of every entry of a durable spec log (`status["log"]`).
fn log_outcomes(status: &Value) -> Vec<(String, String)> {
    status["log"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["version"].as_str().unwrap().to_string(),
                e["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_settings_swap_under_load_and_roll_back_when_the_new_ones_fail() {
    let _heavy = common::exclusive().await;
    let total = 20_000u64;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::streaming(total, Some(1_000.0)).await;
    let svc = start(common::config(dir.path(), &demo.url)).await;
    let (admin, settings) = (&svc.admin, svc.settings.clone());
    let source = settings.source_configs[0].clone();
    case_invalid_or_misnamed_source_settings_are_refused(admin, &source).await;
    let smaller = case_smaller_pages_through_ctl_are_promoted(admin, dir.path(), &source).await;
    case_an_unreachable_endpoint_rolls_back_to_the_previous_settings(admin, &smaller).await;
    until_progress(admin, |p| {
        p["fetched"] == total && p["transformed"] == total && p["landed"] == total
    })
    .await;
    case_inline_secrets_are_refused(admin, &source).await;
    case_the_durable_log_holds_every_source_version(admin).await;
    svc.stop().await;
    assert_eq!(common::counts(&settings).await, (total, total));

    // A restart with the same file runs the swapped settings.
    let svc = start(common::config(dir.path(), &demo.url)).await;
    let admin = &svc.admin;
    let (_, sources) = admin.call(Method::GET, "/sources", None).await;
    assert_eq!(sources["sources"][0]["version"], "pages-250", "{sources}");
    assert_history(admin, &["pages-250"]).await;
    svc.stop().await;
    assert_eq!(common::counts(&settings).await, (total, total));
    demo.stop().await;
}

async fn post_source(admin: &Admin, body: Value) -> (StatusCode, Value) {
    admin.post("/sources/demo", body).await
}

/// Invalid settings, and a name that does not match: refused.
async fn case_invalid_or_misnamed_source_settings_are_refused(
    admin: &Admin,
    source: &HttpSourceConfig,
) {
    let mut invalid = serde_json::to_value(source).unwrap();
    invalid["url"] = json!("not a url");
    let (code, body) = post_source(admin, json!({"version": "bad", "source": invalid})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let mut other = serde_json::to_value(source).unwrap();
    other["name"] = json!("other");
    let (code, body) = post_source(admin, json!({"version": "x", "source": other})).await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
}

/// Smaller pages, through `hubflow ctl source --file`: promoted, and the
/// cursor carries over. The settings swapped in.
async fn case_smaller_pages_through_ctl_are_promoted(
    admin: &Admin,
    dir: &std::path::Path,
    source: &HttpSourceConfig,
) -> HttpSourceConfig {
    let mut smaller = source.clone();
    smaller.query.insert("limit".into(), "250".into());
    let file = dir.join("demo-250.toml");
    std::fs::write(&file, toml::to_string(&smaller).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args([
            "ctl",
            "--addr",
            &admin.base,
            "source",
            "demo",
            "--version",
            "pages-250",
        ])
        .args(["--probation-secs", "2", "--file"])
        .arg(&file)
        .env("HUBFLOW_ADMIN_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("pages-250 (seq 2) is active"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    smaller
}

/// An endpoint that refuses connections: the new fetcher spends its retry
/// budget and fails during probation, so the previous settings return.
async fn case_an_unreachable_endpoint_rolls_back_to_the_previous_settings(
    admin: &Admin,
    smaller: &HttpSourceConfig,
) {
    let mut dead = serde_json::to_value(smaller).unwrap();
    dead["url"] = json!("http://127.0.0.1:9/v1/events");
    let (code, body) = post_source(
        admin,
        json!({"version": "dead-endpoint", "source": dead, "probation_secs": 60}),
    )
    .await;
    assert_swapped(&(code, body), "rolled_back", Some("pages-250"), "");
    assert_history(
        admin,
        &[
            "replacing config with pages-250",
            "promoted pages-250",
            "replacing pages-250 with dead-endpoint",
            "rolled back dead-endpoint to pages-250",
        ],
    )
    .await;
}

/// Inline secrets cannot be kept in the state container: refused, and the
/// answer does not repeat the secret.
async fn case_inline_secrets_are_refused(admin: &Admin, source: &HttpSourceConfig) {
    let mut inline = serde_json::to_value(source).unwrap();
    inline["auth"] = json!({"type": "bearer", "token": "inline-s3cret"});
    let (code, body) = post_source(admin, json!({"version": "inline", "source": inline})).await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("inline secrets"), "{body}");
    assert!(!body.to_string().contains("inline-s3cret"), "{body}");
}

async fn case_the_durable_log_holds_every_source_version(admin: &Admin) {
    let (_, sources) = admin.call(Method::GET, "/sources", None).await;
    let demo_log = &sources["sources"][0];
    assert_eq!(demo_log["version"], "pages-250", "{sources}");
    assert_eq!(
        log_outcomes(demo_log),
        vec![
            ("config".to_string(), "promoted".to_string()),
            ("pages-250".to_string(), "promoted".to_string()),
            ("dead-endpoint".to_string(), "rolled_back".to_string()),
        ]
    );
}
