//! The files under `deploy/`: the Prometheus alert rules load and pass their
//! promtool unit tests and only use metrics the service exports; the
//! environment configs validate and differ only in lines marked `# env`
//! (the promotion rule); the systemd unit's command line is one the binary
//! accepts and its stop timeout leaves room for the drain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is not runnable ({e}): run `bash scripts/install-promtool.sh`")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_load_pass_their_unit_tests_and_use_exported_metrics() {
    let dir = deploy().join("prometheus");
    let checked = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every hubflow_* name in the rules is one the service describes.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let telemetry =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/telemetry.rs"))
            .unwrap();
    let mut names: Vec<&str> = rules
        .match_indices("hubflow_")
        .map(|(i, _)| {
            let rest = &rules[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            telemetry.contains(&format!("\"{name}\"")),
            "alerts.yml uses {name}, which the service does not export"
        );
    }
}

/// The lines of a config that must match across environments, and the keys
/// of those that may differ.
fn split_env_lines(text: &str) -> (Vec<String>, Vec<String>) {
    let mut shared = Vec::new();
    let mut env_keys = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if line.contains("# env") {
            env_keys.push(trimmed.split('=').next().unwrap_or("").trim().to_string());
        } else {
            shared.push(line.to_string());
        }
    }
    (shared, env_keys)
}

#[test]
fn environment_configs_validate_and_differ_only_where_marked() {
    let dir = deploy().join("config");
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for env in ["dev", "staging", "production"] {
        let path = dir.join(format!("{env}.toml"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
            .args(["config", "check"])
            .arg(&path)
            .env("HUBFLOW_LOG", "warn")
            .env(
                "HUBFLOW_ADMIN_TOKEN",
                "an-admin-token-long-enough-for-checks",
            )
            .env("ORDERS_TOKEN", "orders-token")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{env}.toml does not validate: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        files.insert(env.to_string(), text);
    }
    let (dev_shared, dev_keys) = split_env_lines(&files["dev"]);
    assert!(dev_keys.len() >= 8, "{dev_keys:?}");
    for env in ["staging", "production"] {
        let (shared, keys) = split_env_lines(&files[env]);
        assert_eq!(
            keys, dev_keys,
            "{env}.toml marks other lines `# env` than dev.toml"
        );
        for (i, (a, b)) in dev_shared.iter().zip(&shared).enumerate() {
            assert_eq!(
                a, b,
                "line {i} of the shared part: dev.toml and {env}.toml differ"
            );
        }
        assert_eq!(
            shared.len(),
            dev_shared.len(),
            "{env}.toml has other shared lines"
        );
    }
}

#[test]
fn the_systemd_unit_runs_a_command_line_the_binary_accepts() {
    let unit = std::fs::read_to_string(deploy().join("systemd/hubflow.service")).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}"))
            .to_string()
    };
    for key in ["ExecStartPre", "ExecStart"] {
        let line = value(key);
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("/usr/local/bin/hubflow"), "{line}");
        // clap parses every flag before it acts on --help: a flag the binary
        // does not know fails here.
        let args: Vec<&str> = words.collect();
        let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{key} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    let config = std::fs::read_to_string(deploy().join("config/production.toml")).unwrap();
    let deadline: u64 = config
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_deadline_secs = "))
        .and_then(|v| v.trim().parse().ok())
        .expect("production.toml sets shutdown_deadline_secs");
    assert!(
        stop > deadline,
        "TimeoutStopSec={stop} must exceed the drain deadline {deadline}"
    );
}
