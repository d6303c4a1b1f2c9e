//! The SQL server through the clients data scientists use: Debian's `psql`
//! and psycopg from PyPI (both installed by scripts/test.sh) against
//! `hubflow::sql::SqlServer` over the curated data of a real run. They see
//! the same rows as `hubflow query`; writes are refused; a runaway statement
//! is killed by its time limit (and by a cancel request) while another
//! session keeps answering; wrong passwords, unknown users and databases,
//! too many connections and garbage bytes each get a clear error and the
//! server stays up. With a certificate, psql verifies the server over TLS.
//! `hubflow sql serve` is tested as a process (no ingestion secret needed,
//! bad settings refused, SIGTERM), and the server inside `hubflow run`.
//! Arrow Flight SQL is driven by the ADBC Flight SQL driver from PyPI (and
//! pandas through it): the same rows, parameters, the catalog, refusals,
//! limits, wrong passwords, garbage on its port and TLS.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hubflow::config::Settings;
use hubflow::config::sql::{SqlConfig, SqlUserConfig};
use hubflow::demo::DemoConfig;
use hubflow::service::{self, RunOptions};
use hubflow::source::SecretString;
use hubflow::sql::SqlServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common;

const USER: &str = "analyst";
const PASSWORD: &str = "correct-horse-battery";
const RECORDS: u64 = 2_000;

/// psql and the venv's python with psycopg, or why not (a failure in CI,
/// where scripts/test.sh installs both).
fn clients() -> Option<(PathBuf, PathBuf)> {
    let python = common::azurite::repo_root().join(".tools/venv/bin/python");
    let psycopg = std::process::Command::new(&python)
        .args(["-c", "import psycopg"])
        .output()
        .is_ok_and(|out| out.status.success());
    match (common::on_path("psql"), psycopg) {
        (Some(psql), true) => Some((psql, python)),
        (psql, _) => {
            let why = format!(
                "psql {} / psycopg {} (scripts/test.sh installs them)",
                if psql.is_some() { "found" } else { "missing" },
                if psycopg { "found" } else { "missing" }
            );
            assert!(!common::in_ci(), "sql client tests cannot run: {why}");
            eprintln!("SKIPPED: sql client tests: {why}");
            None
        }
    }
}

/// The venv's python with the ADBC Flight SQL driver, or why not (a failure
/// in CI, where scripts/test.sh installs it).
fn adbc() -> Option<PathBuf> {
    let python = common::azurite::repo_root().join(".tools/venv/bin/python");
    let probe = std::process::Command::new(&python)
        .args(["-c", "import adbc_driver_flightsql.dbapi, pyarrow, pandas"])
        .output();
    let why = match probe {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    let why = format!(
        "the ADBC Flight SQL driver, pyarrow or pandas is missing (scripts/test.sh installs them): {why}"
    );
    assert!(
        !common::in_ci(),
        "flight sql client tests cannot run: {why}"
    );
    eprintln!("SKIPPED: flight sql client tests: {why}");
    None
}

/// One statement through ADBC Flight SQL: (success, first value or the
/// error message).
async fn adbc_value(
    python: &Path,
    uri: &str,
    password: &str,
    root_cert: Option<&Path>,
    sql: &str,
) -> (bool, String) {
    const PROBE: &str = r#"
import sys, adbc_driver_flightsql, adbc_driver_flightsql.dbapi as flight
uri, user, pw, cert, sql = sys.argv[1:6]
kwargs = {"username": user, "password": pw}
if cert:
    kwargs[adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value] = open(cert).read()
try:
    with flight.connect(uri, db_kwargs=kwargs) as conn, conn.cursor() as cur:
        cur.execute(sql)
        print("ok", cur.fetchone()[0])
except Exception as e:
    print("error", str(e).replace("\n", " "))
"#;
    let cert = root_cert
        .map(|c| c.display().to_string())
        .unwrap_or_default();
    let out = tokio::process::Command::new(python)
        .args(["-c", PROBE, uri, USER, password, &cert, sql])
        .kill_on_drop(true)
        .output()
        .await
        .expect("running python");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    match stdout.split_once(' ') {
        Some(("ok", value)) => (true, value.to_string()),
        _ => (false, stdout),
    }
}

/// Runs `tests/suite/<script>` with `args` and reads the JSON it prints.
async fn client_script(python: &Path, script: &str, args: &[&str]) -> Value {
    let script = common::azurite::repo_root()
        .join("tests/suite")
        .join(script);
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A finished run of the demo source: `RECORDS` records curated.
async fn curated_run(dir: &Path) -> Settings {
    let demo = common::DemoServer::start(DemoConfig {
        total: RECORDS,
        ..DemoConfig::default()
    })
    .await;
    let settings = common::settings(dir, &demo.url);
    tokio::time::timeout(
        Duration::from_secs(300),
        service::run(
            settings.clone(),
            RunOptions {
                exit_when_idle: true,
                status_every: None,
            },
        ),
    )
    .await
    .expect("the run did not finish in 5 minutes")
    .expect("the run failed");
    demo.stop().await;
    settings
}

fn sql_config(timeout_ms: u64, max_connections: usize) -> SqlConfig {
    SqlConfig {
        enabled: true,
        pg_listen: "127.0.0.1:0".parse().unwrap(),
        flight_listen: "127.0.0.1:0".parse().unwrap(),
        users: vec![SqlUserConfig {
            name: USER.into(),
            password: SecretString::literal(PASSWORD),
        }],
        query_timeout_ms: timeout_ms,
        max_connections,
        refresh_ms: 200,
        ..SqlConfig::default()
    }
}

/// `psql -c sql` as `USER`: (success, stdout, stderr).
async fn psql(psql: &Path, addr: SocketAddr, password: &str, sql: &str) -> (bool, String, String) {
    let conninfo = format!(
        "host={} port={} dbname=hubflow user={USER}",
        addr.ip(),
        addr.port()
    );
    psql_conninfo(psql, &conninfo, password, sql).await
}

/// `psql -c sql` with a connection string: (success, stdout, stderr).
async fn psql_conninfo(
    psql: &Path,
    conninfo: &str,
    password: &str,
    sql: &str,
) -> (bool, String, String) {
    let out = tokio::process::Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            conninfo,
        ])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Where a pipeline with data in `dir` keeps curated data; nothing yet.
fn empty_location(dir: &Path) -> hubflow::config::CuratedLocation {
    let mut config = common::config(dir, "http://127.0.0.1:9/unused");
    config.sources.clear();
    config.curated_location().unwrap()
}

/// Waits until the server holds `n` connections.
async fn connections_reach(server: &SqlServer, n: usize) {
    common::eventually(
        &format!("the server holds {n} connections"),
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || match server.connections() {
            held if held == n => Ok(()),
            held => Err(format!("{held} connections")),
        },
    )
    .await;
}

/// One value of `hubflow query`'s path as text.
async fn hubflow_value(settings: &Settings, sql: &str) -> Value {
    let rows = common::json_rows(settings, sql).await;
    let row = rows[0].as_object().unwrap();
    row.values().next().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn psql_and_psycopg_query_the_curated_tables_read_only_and_within_limits() {
    let Some((psql_bin, python)) = clients() else {
        return;
    };
    let _heavy = common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = curated_run(dir.path()).await;
    let sql = sql_config(8_000, 16).validate(true).unwrap();
    let server = SqlServer::start(&sql, settings.curated_location())
        .await
        .unwrap();
    let addr = server.pg_addr();

    // psql: \dt lists the table, \d describes it, an aggregate agrees with
    // `hubflow query`.
    let (ok, out, err) = psql(&psql_bin, addr, PASSWORD, "\\dt").await;
    assert!(ok, "\\dt failed: {err}");
    assert!(out.contains("demo"), "\\dt: {out}");
    let (ok, out, err) = psql(&psql_bin, addr, PASSWORD, "\\d demo").await;
    assert!(ok, "\\d demo failed: {err}");
    for column in ["id", "amount", "created_at", "_hub_partition", "date"] {
        assert!(out.contains(column), "\\d demo lacks {column}: {out}");
    }
    let (ok, out, err) = psql(
        &psql_bin,
        addr,
        PASSWORD,
        "SELECT count(*), count(DISTINCT id), round(sum(amount)::numeric, 2) FROM demo",
    )
    .await;
    assert!(ok, "aggregate failed: {err}");
    let expected_sum = hubflow_value(&settings, "SELECT round(sum(amount), 2) AS s FROM demo")
        .await
        .as_f64()
        .unwrap();
    let fields: Vec<&str> = out.split('|').collect();
    assert_eq!(fields[0], RECORDS.to_string(), "{out}");
    assert_eq!(fields[1], RECORDS.to_string(), "{out}");
    let sum: f64 = fields[2].parse().unwrap();
    assert!((sum - expected_sum).abs() < 0.01, "{sum} vs {expected_sum}");

    // A parameterised query the psql 15 way (Debian's; `\bind` came in
    // 16): a variable from the command line, quoted by psql as a literal,
    // so a hostile value stays a value. Server-side parameters are
    // psycopg's and ADBC's below.
    let purchases = hubflow_value(
        &settings,
        "SELECT count(*) AS n FROM demo WHERE type = 'purchase'",
    )
    .await;
    for (kind, want) in [
        ("purchase", purchases.to_string()),
        ("x' OR 'a' = 'a", "0".into()),
    ] {
        let mut child = tokio::process::Command::new(&psql_bin)
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-v"])
            .arg(format!("kind={kind}"))
            .arg(format!(
                "host={} port={} dbname=hubflow user={USER}",
                addr.ip(),
                addr.port()
            ))
            .env("PGPASSWORD", PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"SELECT count(*) FROM demo WHERE type = :'kind';\n")
            .await
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want, "{kind}");
    }

    // A write through psql: refused with the read-only SQLSTATE's message.
    let (ok, _, err) = psql(
        &psql_bin,
        addr,
        PASSWORD,
        "CREATE TABLE t AS SELECT * FROM demo",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("read-only"), "{err}");

    // A wrong password.
    let (ok, _, err) = psql(&psql_bin, addr, "wrong-password-here", "SELECT 1").await;
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "Password authentication failed for user \"{USER}\""
        )),
        "{err}"
    );

    // A runaway statement is killed by the time limit while another session
    // answers.
    let started = Instant::now();
    let runaway = tokio::spawn({
        let psql_bin = psql_bin.clone();
        async move {
            psql(
                &psql_bin,
                addr,
                PASSWORD,
                "SELECT count(*) FROM demo a, demo b, demo c WHERE a.amount + b.amount > c.amount",
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, out, err) = psql(&psql_bin, addr, PASSWORD, "SELECT count(*) FROM demo").await;
    assert!(ok, "{err}");
    assert_eq!(out, RECORDS.to_string());
    assert!(
        !runaway.is_finished(),
        "the runaway statement ended before the other session's answer"
    );
    let (ok, _, err) = runaway.await.unwrap();
    assert!(!ok);
    assert!(err.contains("ran longer than"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the limit did not stop it: {:?}",
        started.elapsed()
    );

    // psycopg: parameters, prepared statements, the catalog, refusals, a
    // cancel request, bad logins.
    let seen = client_script(
        &python,
        "sql_clients.py",
        &[
            &addr.ip().to_string(),
            &addr.port().to_string(),
            USER,
            PASSWORD,
        ],
    )
    .await;
    let purchases = hubflow_value(
        &settings,
        "SELECT count(*) AS n FROM demo WHERE type = 'purchase'",
    )
    .await;
    assert_eq!(seen["purchases"], purchases);
    assert!(purchases.as_u64().unwrap() > 0);
    let first = common::json_rows(
        &settings,
        "SELECT id, amount FROM demo WHERE amount > 100.0 ORDER BY id LIMIT 3",
    )
    .await;
    for (got, want) in seen["first_three"].as_array().unwrap().iter().zip(&first) {
        assert_eq!(got[0], want["id"]);
        assert!((got[1].as_f64().unwrap() - want["amount"].as_f64().unwrap()).abs() < 1e-9);
    }
    assert_eq!(seen["totals"][0], RECORDS);
    assert_eq!(seen["totals"][1], RECORDS);
    assert!((seen["totals"][2].as_f64().unwrap() - expected_sum).abs() < 0.01);
    let by_partition: u64 = seen["by_partition"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(by_partition > 0 && by_partition <= RECORDS, "{seen}");
    assert_eq!(seen["tables"], serde_json::json!(["demo"]));
    let nested = &common::json_rows(
        &settings,
        "SELECT id, \"user\", attributes, tags FROM demo ORDER BY id LIMIT 1",
    )
    .await[0];
    assert_eq!(seen["nested"]["id"], nested["id"]);
    for column in ["user", "attributes", "tags"] {
        assert_eq!(seen["nested"][column], nested[column], "{column}: {seen}");
    }
    assert!(seen["nested"]["user"].is_object(), "{seen}");
    assert!(seen["nested"]["tags"].is_array(), "{seen}");
    assert_eq!(seen["nested"]["ingested_at_type"], "datetime");
    assert_eq!(seen["nested"]["ingested_at_aware"], true);
    for write in seen["writes"].as_array().unwrap() {
        assert_eq!(write["sqlstate"], "25006", "{write}");
    }
    assert_eq!(seen["after_refusals"], RECORDS);
    assert_eq!(seen["cancel"]["sqlstate"], "57014", "{}", seen["cancel"]);
    assert!(
        seen["cancel"]["seconds"].as_f64().unwrap() < 3.5,
        "{}",
        seen["cancel"]
    );
    // libpq reports a refused login as text (psycopg has no SQLSTATE for
    // it): the server's messages for 28P01 and 3D000.
    for (name, expected) in [
        (
            "wrong_password",
            format!("Password authentication failed for user \"{USER}\""),
        ),
        (
            "unknown_user",
            "Password authentication failed for user \"nobody\"".to_string(),
        ),
        (
            "unknown_database",
            "database \"postgres\" does not exist (the database is \"hubflow\")".to_string(),
        ),
    ] {
        let message = seen[name]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&expected), "{name}: {}", seen[name]);
    }

    // Garbage on the port: the connection ends, the server answers on.
    for garbage in [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        vec![0xff; 64],
        vec![0, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef],
    ] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket.write_all(&garbage).await.unwrap();
        let _ = socket.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut sink)).await;
    }
    let (ok, out, err) = psql(&psql_bin, addr, PASSWORD, "SELECT count(*) FROM demo").await;
    assert!(ok, "after garbage: {err}");
    assert_eq!(out, RECORDS.to_string());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_are_refused_with_postgres_error_and_new_tables_appear() {
    let Some((psql_bin, _)) = clients() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let location = empty_location(dir.path());
    // No curated data yet: the server starts with no table.
    let sql = sql_config(10_000, 2).validate(true).unwrap();
    let server = SqlServer::start(&sql, location.clone()).await.unwrap();
    let addr = server.pg_addr();
    let (ok, out, err) = psql(
        &psql_bin,
        addr,
        PASSWORD,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "0");

    // Data lands: the table appears without a restart.
    let settings = curated_run(dir.path()).await;
    assert_eq!(settings.curated_location().data_dir, location.data_dir);
    common::eventually(
        "the demo table appears",
        Duration::from_secs(20),
        Duration::from_millis(200),
        async || {
            let (ok, out, err) = psql(&psql_bin, addr, PASSWORD, "SELECT count(*) FROM demo").await;
            if ok && out == RECORDS.to_string() {
                Ok(())
            } else {
                Err(format!("{out} {err}"))
            }
        },
    )
    .await;

    // Two idle connections hold both slots: the third gets 53300's message.
    // (psql's last connection may still be closing: start from none.)
    connections_reach(&server, 0).await;
    let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
    connections_reach(&server, 2).await;
    let (ok, _, err) = psql(&psql_bin, addr, PASSWORD, "SELECT 1").await;
    assert!(!ok);
    assert!(err.contains("too many connections"), "{err}");
    drop((_a, _b));
    common::eventually(
        "a slot is free again",
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let (ok, _, err) = psql(&psql_bin, addr, PASSWORD, "SELECT 1").await;
            if ok { Ok(()) } else { Err(err) }
        },
    )
    .await;
    server.stop().await;
}

/// A self-signed certificate for 127.0.0.1 (openssl, installed by
/// scripts/install-sql-clients.sh): (certificate, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("sql.crt");
    let key = dir.join("sql.key");
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_clients_verify_the_server_over_tls() {
    let Some((psql_bin, _)) = clients() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let sql = SqlConfig {
        tls_cert: Some(cert.clone()),
        tls_key: Some(key),
        ..sql_config(10_000, 8)
    }
    .validate(true)
    .unwrap();
    let server = SqlServer::start(&sql, empty_location(dir.path()))
        .await
        .unwrap();
    let addr = server.pg_addr();
    let base = format!(
        "host={} port={} dbname=hubflow user={USER}",
        addr.ip(),
        addr.port()
    );
    // verify-full: TLS, the chain checked against the certificate, and the
    // name (the IP in subjectAltName) against the host.
    let (ok, out, err) = psql_conninfo(
        &psql_bin,
        &format!("{base} sslmode=verify-full sslrootcert={}", cert.display()),
        PASSWORD,
        "SELECT 40 + 2",
    )
    .await;
    assert!(ok, "over TLS: {err}");
    assert_eq!(out, "42");
    // A client that trusts another certificate is stopped by the check,
    // which it can only make if the server speaks TLS.
    let other = tempfile::tempdir().unwrap();
    let (other_cert, _) = self_signed(other.path());
    let (ok, _, err) = psql_conninfo(
        &psql_bin,
        &format!(
            "{base} sslmode=verify-full sslrootcert={}",
            other_cert.display()
        ),
        PASSWORD,
        "SELECT 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("certificate verify failed"), "{err}");
    // Plain text stays open on loopback (off loopback it is refused, see
    // the unit test in src/sql/mod.rs).
    let (ok, out, err) = psql_conninfo(
        &psql_bin,
        &format!("{base} sslmode=disable"),
        PASSWORD,
        "SELECT 1",
    )
    .await;
    assert!(ok, "plain text on loopback: {err}");
    assert_eq!(out, "1");

    // Flight SQL over TLS (grpc+tls): verified against the certificate;
    // a client trusting another one, or speaking plain text, gets nothing.
    if let Some(python) = adbc() {
        let flight = server.flight_addr().unwrap();
        let tls_uri = format!("grpc+tls://{flight}");
        let (ok, value) =
            adbc_value(&python, &tls_uri, PASSWORD, Some(&cert), "SELECT 40 + 2").await;
        assert!(ok, "flight over TLS: {value}");
        assert_eq!(value, "42");
        let (ok, value) =
            adbc_value(&python, &tls_uri, PASSWORD, Some(&other_cert), "SELECT 1").await;
        assert!(!ok);
        assert!(value.contains("certificate"), "{value}");
        let (ok, value) = adbc_value(
            &python,
            &format!("grpc://{flight}"),
            PASSWORD,
            None,
            "SELECT 1",
        )
        .await;
        assert!(!ok, "plain text reached a TLS flight server: {value}");
    }
    server.stop().await;
}

/// `hubflow sql serve` as an operator starts it: a config whose source
/// secret is not in the environment still serves SQL; without a user, or
/// off loopback without TLS, it refuses to start and says why; SIGTERM
/// stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_serve_needs_no_ingestion_secret_and_refuses_bad_settings() {
    let Some((psql_bin, _)) = clients() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[pipeline]\ndata_dir = {:?}\n\
             [[sources]]\nname = \"flights\"\nurl = \"http://127.0.0.1:9/v1\"\n\
             auth = {{ type = \"bearer\", token = {{ env = \"HUBFLOW_TEST_UNSET_TOKEN\" }} }}\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let serve = |listen: &str, user: Option<(&str, &str)>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hubflow"));
        command
            .args(["sql", "serve", "--config"])
            .arg(&config)
            .args(["--pg-listen", listen, "--flight-listen", "127.0.0.1:0"])
            .env("HUBFLOW_LOG", "warn")
            .env_remove("HUBFLOW_SQL_USER")
            .env_remove("HUBFLOW_SQL_PASSWORD")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some((name, password)) = user {
            command
                .env("HUBFLOW_SQL_USER", name)
                .env("HUBFLOW_SQL_PASSWORD", password);
        }
        command.spawn().expect("starting hubflow sql serve")
    };
    let refusal = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let err = refusal(serve("127.0.0.1:0", None));
    assert!(
        err.contains("sql.users") && err.contains("HUBFLOW_SQL_USER"),
        "{err}"
    );
    let err = refusal(serve("127.0.0.1:0", Some((USER, "short"))));
    assert!(err.contains("at least 8 characters"), "{err}");
    let err = refusal(serve("0.0.0.0:0", Some((USER, PASSWORD))));
    assert!(
        err.contains("not a loopback address") && err.contains("tls_cert"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD), "a password in an error: {err}");

    let mut child = serve("127.0.0.1:0", Some((USER, PASSWORD)));
    // The bound port, from the line the command prints on stderr.
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(rest) = line.strip_prefix("sql: postgres wire protocol on ") {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("hubflow sql serve did not print its address")
        .parse()
        .unwrap();
    let (ok, out, err) = psql(
        &psql_bin,
        addr,
        PASSWORD,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "0");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "sql serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

/// Inside `hubflow run` with `[sql] enabled`: the server comes up with the
/// pipeline, the source's table appears and fills as records are curated,
/// and the server stops with the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_with_sql_enabled_serves_the_tables_as_they_fill() {
    let Some((psql_bin, _)) = clients() else {
        return;
    };
    let _heavy = common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total: RECORDS,
        ..DemoConfig::default()
    })
    .await;
    let mut config = common::config(dir.path(), &demo.url);
    config.sql = sql_config(10_000, 8);
    let settings = config.validate().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stop = std::sync::Arc::new(tokio::sync::Notify::new());
    let hooks = service::Hooks {
        on_sql_listening: Some(tx),
        stop: Some(stop.clone()),
        ..service::Hooks::default()
    };
    let run = tokio::spawn(service::run_with(settings, RunOptions::default(), hooks));
    let addr = tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("the sql server did not come up")
        .expect("the run ended before the sql server listened");
    common::eventually(
        "every record is queryable over the Postgres protocol",
        Duration::from_secs(120),
        Duration::from_millis(250),
        async || {
            let (ok, out, err) = psql(
                &psql_bin,
                addr,
                PASSWORD,
                "SELECT count(DISTINCT id) FROM demo",
            )
            .await;
            if ok && out == RECORDS.to_string() {
                Ok(())
            } else {
                Err(format!("{out} {err}"))
            }
        },
    )
    .await;
    stop.notify_one();
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run did not stop")
        .unwrap()
        .unwrap();
    demo.stop().await;
    let (ok, _, _) = psql(&psql_bin, addr, PASSWORD, "SELECT 1").await;
    assert!(!ok, "the sql server outlived the run");
}

/// Arrow Flight SQL through the ADBC driver (and pandas through it): the
/// same rows as `hubflow query`, a parameterised prepared statement, the
/// catalog ADBC lists, writes and session changes refused, a bad column, a
/// result over the row cap, a statement over its memory cap, a client
/// cancel, a runaway statement stopped by its time limit
/// while another connection answers, a wrong password, and garbage bytes
/// on the port first: each a clear error, the server still answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adbc_queries_the_same_tables_over_flight_sql_read_only_and_within_limits() {
    let Some(python) = adbc() else {
        return;
    };
    let _heavy = common::exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = curated_run(dir.path()).await;
    let sql = SqlConfig {
        max_result_rows: 1_500,
        statement_memory_limit_mb: 1,
        ..sql_config(6_000, 16)
    }
    .validate(true)
    .unwrap();
    let server = SqlServer::start(&sql, settings.curated_location())
        .await
        .unwrap();
    let addr = server.flight_addr().expect("flight sql is on by default");

    // Garbage first: not HTTP/2, then an HTTP/2 preface followed by junk.
    for garbage in [
        b"\x16\x03\x01 this is not grpc at all\r\n\r\n".to_vec(),
        [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice(), &[0xff; 64]].concat(),
    ] {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket.write_all(&garbage).await.unwrap();
        let mut sink = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "the server kept a garbage connection open");
    }

    let seen = client_script(
        &python,
        "flight_clients.py",
        &[&format!("grpc://{addr}"), USER, PASSWORD],
    )
    .await;

    let expected_sum = hubflow_value(&settings, "SELECT sum(amount) AS s FROM demo")
        .await
        .as_f64()
        .unwrap();
    assert_eq!(seen["totals"][0], RECORDS, "{seen}");
    assert_eq!(seen["totals"][1], RECORDS);
    assert!((seen["totals"][2].as_f64().unwrap() - expected_sum).abs() < 1e-6);
    // Arrow types as DataFusion produced them, not text.
    assert_eq!(
        seen["totals_types"],
        serde_json::json!(["int64", "int64", "double"])
    );
    let purchases = hubflow_value(
        &settings,
        "SELECT count(*) AS n FROM demo WHERE type = 'purchase'",
    )
    .await;
    assert!(purchases.as_u64().unwrap() > 0);
    assert_eq!(seen["purchases"], purchases);
    for (p, got) in seen["by_partition"].as_array().unwrap().iter().enumerate() {
        let want = hubflow_value(
            &settings,
            &format!("SELECT count(*) AS n FROM demo WHERE _hub_partition = {p}"),
        )
        .await;
        assert_eq!(got, &want, "partition {p}");
    }
    let first = common::json_rows(
        &settings,
        "SELECT id, amount FROM demo WHERE amount > 100.0 ORDER BY id LIMIT 3",
    )
    .await;
    assert_eq!(seen["first_three"].as_array().unwrap().len(), 3);
    for (got, want) in seen["first_three"].as_array().unwrap().iter().zip(&first) {
        assert_eq!(got[0], want["id"]);
        assert!((got[1].as_f64().unwrap() - want["amount"].as_f64().unwrap()).abs() < 1e-9);
    }
    let dtype = seen["ingested_at_dtype"].as_str().unwrap();
    assert!(
        dtype.starts_with("datetime64") && dtype.contains("UTC"),
        "{dtype}"
    );
    assert!(seen["nested"]["user"].is_object(), "{seen}");
    assert!(seen["nested"]["tags"].is_array(), "{seen}");

    assert_eq!(
        seen["catalogs"],
        serde_json::json!([{"catalog": "hubflow", "schemas": [{"schema": "public", "tables": ["demo"]}]}])
    );
    let columns: Vec<&str> = seen["demo_columns"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for column in ["id", "amount", "created_at", "_hub_partition", "date"] {
        assert!(columns.contains(&column), "{columns:?} lacks {column}");
    }
    assert_eq!(seen["table_types"], serde_json::json!(["TABLE"]));

    for refused in ["create", "insert", "set"] {
        let message = seen[refused]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("read-only"),
            "{refused}: {}",
            seen[refused]
        );
    }
    let message = seen["unknown_column"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("nope"), "{}", seen["unknown_column"]);
    let message = seen["too_many_rows"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("more than 1500 rows"),
        "{}",
        seen["too_many_rows"]
    );
    let message = seen["memory_hog"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("sql.statement_memory_limit_mb") && message.contains("ResourceExhausted"),
        "{}",
        seen["memory_hog"]
    );
    assert_eq!(seen["after_errors"]["ok"][0]["n"], RECORDS);

    assert_eq!(seen["beside_runaway"]["ok"][0]["n"], RECORDS, "{seen}");
    assert_eq!(
        seen["runaway_still_running"], true,
        "the runaway statement ended before the other connection's answer"
    );
    let message = seen["runaway"]["result"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("ran longer than"), "{}", seen["runaway"]);
    assert!(seen["runaway"]["seconds"].as_f64().unwrap() < 30.0);

    // The time limit is 6 s; the cancel came after 1 s.
    let message = seen["cancelled"]["result"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.starts_with("CANCELLED"), "{}", seen["cancelled"]);
    assert!(
        seen["cancelled"]["seconds"].as_f64().unwrap() < 4.0,
        "{}",
        seen["cancelled"]
    );

    let message = seen["wrong_password"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(&format!(
            "password authentication failed for user \"{USER}\""
        )),
        "{}",
        seen["wrong_password"]
    );
    assert!(!message.contains("wrong-password"), "{message}");

    // Still answering after all of it.
    let (ok, value) = adbc_value(
        &python,
        &format!("grpc://{addr}"),
        PASSWORD,
        None,
        "SELECT count(*) FROM demo",
    )
    .await;
    assert!(ok, "{value}");
    assert_eq!(value, RECORDS.to_string());
    server.stop().await;
}
