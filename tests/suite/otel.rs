//! OpenTelemetry over OTLP/HTTP, received by a real receiver: a Python
//! server decoding with the official protocol definitions
//! (scripts/otlp_receiver.py, opentelemetry-proto from PyPI). `hubflow run`
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` exports one span per published page
//! group, raw blob and curated blob, carrying source, partition, sequence
//! range and blob name so each curated blob leads back to the raw blob and
//! its sequence range; the metrics arrive as the same numbers `/metrics`
//! has; headers are sent and never logged; a bad OTEL_* value refuses the
//! start with an error naming the variable.

use crate::common;
use crate::common::azurite::repo_root;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TOTAL: u64 = 3_000;
const SECRET: &str = "otlp-header-secret-7f3a";

struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    async fn start(dir: &Path) -> Receiver {
        let python = repo_root().join(".tools/venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `bash scripts/install-azurite.sh` first",
            python.display()
        );
        let port_file = dir.join("otlp.port");
        let child = Command::new(python)
            .arg(repo_root().join("scripts/otlp_receiver.py"))
            .arg("--out")
            .arg(dir.join("otlp.jsonl"))
            .arg("--port-file")
            .arg(&port_file)
            .args(["--max-seconds", "300"])
            .stderr(std::fs::File::create(dir.join("otlp.log")).unwrap())
            .spawn()
            .expect("starting the OTLP receiver");
        // Owned by the receiver from here: its Drop kills and reaps it.
        let mut receiver = Receiver { child, port: 0 };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
            {
                receiver.port = port;
                return receiver;
            }
            assert!(
                Instant::now() < deadline,
                "the OTLP receiver did not start: {}",
                std::fs::read_to_string(dir.join("otlp.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_hubflow(config: &Path, log: &Path, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hubflow"));
    cmd.args(["run", "--quiet", "--exit-when-idle", "--config"])
        .arg(config)
        .env("HUBFLOW_LOG", "info")
        .env_remove("HUBFLOW_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawning hubflow")
}

async fn wait(child: &mut Child, limit: Duration, log: &Path) -> std::process::ExitStatus {
    match common::wait_exit(child, limit).await {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hubflow did not finish in {limit:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_i64().map(|n| n as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_follow_each_batch_from_fetch_to_curated_and_metrics_match() {
    let _heavy = common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(dir.path()).await;
    let demo = common::DemoServer::serving(TOTAL).await;
    let config = dir.path().join("hubflow.toml");
    std::fs::write(
        &config,
        common::config_toml(&dir.path().join("data"), &demo.url),
    )
    .unwrap();
    let log = dir.path().join("hubflow.log");
    let endpoint = format!("http://127.0.0.1:{}", receiver.port);

    case_a_bad_endpoint_is_refused_before_anything_starts(&config, &log, dir.path()).await;

    let mut node = run_hubflow(
        &config,
        &log,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_EXPORTER_OTLP_HEADERS", format!("x-test={SECRET}")),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=test".into(),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500".into()),
        ],
    );
    let status = wait(&mut node, Duration::from_secs(180), &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(!text.contains(SECRET), "a header value was logged:\n{text}");

    let received = std::fs::read_to_string(dir.path().join("otlp.jsonl")).unwrap_or_default();
    let records: Vec<Value> = received
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !records.is_empty(),
        "nothing received; hubflow log:\n{text}"
    );
    case_every_export_carries_the_resource_and_the_headers(&records);
    case_spans_hold_every_record_once_at_each_stage(&records);
    case_the_last_metrics_export_holds_the_final_numbers(&records);
    demo.stop().await;
}

/// A bad `OTEL_EXPORTER_OTLP_ENDPOINT` is refused before anything starts,
/// naming the variable.
async fn case_a_bad_endpoint_is_refused_before_anything_starts(
    config: &Path,
    log: &Path,
    dir: &Path,
) {
    let mut bad = run_hubflow(
        config,
        log,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318".into())],
    );
    let status = wait(&mut bad, Duration::from_secs(30), log).await;
    let text = std::fs::read_to_string(log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && text.contains("not an http"),
        "{text}"
    );
    assert!(!dir.join("data").join("hub.sqlite").exists());
}

fn case_every_export_carries_the_resource_and_the_headers(records: &[Value]) {
    for r in records {
        assert_eq!(r["resource"]["service.name"], "hubflow", "{r}");
        assert_eq!(r["resource"]["deployment.environment"], "test", "{r}");
        assert_eq!(r["headers"]["x-test"], SECRET, "{r}");
    }
}

/// Every record once at each stage: published by the fetcher, written raw,
/// curated from the raw blob its span names.
fn case_spans_hold_every_record_once_at_each_stage(records: &[Value]) {
    let spans = |name: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["signal"] == "span" && r["name"] == name)
            .collect()
    };

    let published: u64 = spans("fetch.publish")
        .iter()
        .map(|s| {
            assert_eq!(s["attributes"]["source"], "demo", "{s}");
            assert!(s["attributes"]["partitions"].as_str().is_some(), "{s}");
            num(&s["attributes"]["records"])
        })
        .sum();
    assert_eq!(published, TOTAL);
    let written = spans("raw.write");
    let raw_records: u64 = written
        .iter()
        .map(|s| num(&s["attributes"]["records"]))
        .sum();
    assert_eq!(raw_records, TOTAL);
    let curated = spans("curate");
    assert!(!curated.is_empty());
    let mut rows = 0;
    for c in &curated {
        let a = &c["attributes"];
        assert_eq!(a["transform_version"], "identity", "{c}");
        assert!(
            a["first_file"]
                .as_str()
                .is_some_and(|f| f.starts_with("demo/date=")),
            "{c}"
        );
        rows += num(&a["rows"]);
        // The raw blob it curated, with the same partition and sequence range.
        let key = |s: &Value| {
            let a = &s["attributes"];
            (
                a["blob"].as_str().map(str::to_string),
                num(&a["partition"]),
                num(&a["first_seq"]),
                num(&a["last_seq"]),
            )
        };
        assert!(
            written.iter().any(|w| key(w) == key(c)),
            "no raw.write span for {c}"
        );
    }
    assert_eq!(rows, TOTAL);
}

fn case_the_last_metrics_export_holds_the_final_numbers(records: &[Value]) {
    let mut last: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for m in records.iter().filter(|r| r["signal"] == "metric") {
        last.insert((m["name"].to_string(), m["attributes"].to_string()), m);
    }
    let fetched = last
        .values()
        .find(|m| {
            m["name"] == "hubflow_fetcher_records_total" && m["attributes"]["source"] == "demo"
        })
        .expect("hubflow_fetcher_records_total");
    assert_eq!(fetched["kind"], "sum");
    assert_eq!(fetched["monotonic"], true);
    assert_eq!(fetched["value"].as_f64(), Some(TOTAL as f64));
    let histogram = last
        .values()
        .find(|m| m["kind"] == "histogram" && m["count"].as_u64().is_some_and(|c| c > 0))
        .expect("a histogram with observations");
    let buckets: u64 = histogram["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(num)
        .sum();
    assert_eq!(buckets, num(&histogram["count"]), "{histogram}");
    assert_eq!(
        histogram["buckets"].as_array().unwrap().len(),
        histogram["bounds"].as_array().unwrap().len() + 1
    );
}
