//! The admin port's answers checked against its own OpenAPI document by
//! the reference validators from PyPI (`openapi-spec-validator` for the
//! document, `jsonschema` (draft 2020-12) for each answer), run by
//! `tests/suite/openapi_check.py` with `.tools/venv`'s Python (installed by
//! scripts/install-azurite.sh). Every answer must match the schema its
//! route documents for that status, so the document cannot drift from what
//! the handlers serialize.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};

use super::harness::Answer;

fn python() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python")
}

/// Check `answers` (as recorded by [`super::harness::Admin`]) against
/// `document` (`GET /openapi.json`); panics with every mismatch. At least
/// `at_least` distinct operations must have been answered, so a test that
/// stopped calling the port cannot pass silently.
pub fn check_answers(document: &Value, answers: &[Answer], at_least: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("answers.json");
    let payload = json!({ "document": document, "answers": answers, "at_least": at_least });
    std::fs::write(&input, payload.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/suite/openapi_check.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&input)
        .output()
        .expect("running tests/suite/openapi_check.py (is .tools/venv installed? scripts/install-azurite.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "answers do not match the OpenAPI document:\n{stdout}\n{stderr}"
    );
}
