//! The `hubflow` binary's non-running commands: `config check` explains
//! errors with the field path, `query` refuses clearly when there is no data,
//! `demo-source --ndjson` prints the demo records, `completions` gives
//! scripts bash can load.

use std::process::Command;

fn hubflow(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args(args)
        .env("HUBFLOW_LOG", "warn")
        .output()
        .expect("running hubflow");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_accepts_a_good_file_and_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[hub]\npartitions = 8\n\n[[sources]]\nname = \"orders\"\nurl = \"https://api.example.com/v1/orders\"\nrecords = \"data\"\npagination = { type = \"link_header\" }\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = hubflow(&["config", "check", good.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("1 source(s), 8 partitions"), "{stdout}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[batch]\nmax_records = \"lots\"\n").unwrap();
    let (ok, _, stderr) = hubflow(&["config", "check", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("batch.max_records"), "{stderr}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[transform]\nzstd = 3\n").unwrap();
    let (ok, _, stderr) = hubflow(&["config", "check", unknown.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("zstd") && stderr.contains("transform"),
        "{stderr}"
    );

    let (ok, _, stderr) = hubflow(&["config", "check", "/nonexistent/hubflow.toml"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot read /nonexistent/hubflow.toml"),
        "{stderr}"
    );
}

#[test]
fn query_without_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let (ok, _, stderr) = hubflow(&["query", "--config", config.to_str().unwrap(), "SELECT 1"]);
    assert!(!ok);
    assert!(stderr.contains("error: no curated data in"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn query_needs_no_ingestion_secret() {
    // A source whose token and an admin token whose variable are unset:
    // `run` would refuse them, `query` must not resolve them at all.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ndata_dir = {:?}\n[admin]\ntoken = {{ env = \"HUBFLOW_TEST_UNSET_ADMIN\" }}\n\
             [[sources]]\nname = \"flights\"\nurl = \"http://127.0.0.1:9/v1\"\n\
             auth = {{ type = \"bearer\", token = {{ env = \"HUBFLOW_TEST_UNSET_TOKEN\" }} }}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let (ok, _, stderr) = hubflow(&["config", "check", path]);
    assert!(!ok, "the unset token must fail a full check: {stderr}");
    assert!(stderr.contains("HUBFLOW_TEST_UNSET"), "{stderr}");
    let (ok, _, stderr) = hubflow(&["query", "--config", path, "SELECT 1"]);
    assert!(!ok);
    assert!(stderr.contains("error: no curated data in"), "{stderr}");
    assert!(!stderr.contains("HUBFLOW_TEST_UNSET"), "{stderr}");
}

#[test]
fn demo_source_prints_its_records_as_ndjson() {
    let (ok, stdout, stderr) = hubflow(&["demo-source", "--ndjson", "3"]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2], hubflow::demo::demo_record(2));
}

/// The TOML block following `marker` in the README.
fn readme_toml(marker: &str) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let from = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README has no {marker}"));
    let rest = &readme[from..];
    let start = rest.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = rest[start..].find("```").expect("end of the toml block");
    rest[start..start + end].to_string()
}

#[test]
fn the_readme_config_profiles_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    for (profile, marker) in [("local", "**`local`**"), ("azure", "**`azure`**")] {
        let text = readme_toml(marker);
        let path = dir.path().join(format!("{profile}.toml"));
        std::fs::write(&path, &text).unwrap();
        // The azure profile reads the admin token from the environment.
        let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
            .args(["config", "check"])
            .arg(&path)
            .env("HUBFLOW_LOG", "warn")
            .env(
                "HUBFLOW_ADMIN_TOKEN",
                "a-long-enough-admin-token-for-the-check",
            )
            .output()
            .expect("running hubflow");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "profile {profile}:\n{text}\n{stderr}");
    }
}

/// A node that cannot read the transform spec log must not curate with a
/// version it is unsure of: it refuses to start, naming the record and the
/// repair; the override rewrites the record from the config file (logged),
/// and later starts read it again.
#[test]
fn a_corrupt_spec_log_refuses_the_start_until_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ndata_dir = {:?}\n\n[admin]\nenabled = false\n\n[demo]\ntotal = 50\n\n[transform]\nversion = \"v1\"\n",
            data.display()
        ),
    )
    .unwrap();
    let run = |extra: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_hubflow"))
            .args(["run", "--quiet", "--exit-when-idle", "--config"])
            .arg(&config)
            .env("HUBFLOW_LOG", "info")
            .envs(extra.iter().copied())
            .output()
            .expect("running hubflow");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    let record = data.join("blobs/state/specs/transform");
    assert!(std::fs::read_to_string(&record).unwrap().contains("\"v1\""));

    std::fs::write(&record, b"{\"schema\":1,\"active\":").unwrap();
    let (ok, stderr) = run(&[]);
    assert!(!ok, "started on a corrupt spec log: {stderr}");
    assert!(
        stderr.contains("specs/transform") && stderr.contains("override"),
        "{stderr}"
    );

    let (ok, stderr) = run(&[("HUBFLOW__TRANSFORM__OVERRIDE_STORED", "true")]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("transform override"), "{stderr}");
    let (ok, stderr) = run(&[]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("differs from the config file"), "{stderr}");
}

/// `hubflow completions`: bash loads the script and completes a `ctl` verb
/// from its prefix; zsh and fish get theirs; an unknown shell is refused.
#[test]
fn completions_load_in_bash_and_complete_ctl_verbs() {
    let script = format!(
        "source <({} completions bash) && COMP_WORDS=(hubflow ctl tr) && COMP_CWORD=2 \
         && _hubflow hubflow tr ctl && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        env!("CARGO_BIN_EXE_hubflow")
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let words: Vec<&str> = stdout.lines().collect();
    assert_eq!(words, ["trace", "transform"], "{stdout}");

    let (ok, zsh, _) = hubflow(&["completions", "zsh"]);
    assert!(ok && zsh.starts_with("#compdef hubflow"), "{zsh}");
    let (ok, fish, _) = hubflow(&["completions", "fish"]);
    assert!(ok && fish.contains("complete -c hubflow"), "{fish}");
    let (ok, _, stderr) = hubflow(&["completions", "tcsh"]);
    assert!(!ok && stderr.contains("invalid value 'tcsh'"), "{stderr}");
}
