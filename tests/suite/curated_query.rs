//! Curated files written by `curate` and read back through the SQL layer:
//! two sources, two hours on two dates, schema evolution across files (a
//! field added later, an int widened to float), nested access, partition
//! filters, every output format and the error cases.

use std::collections::BTreeMap;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use hubflow::query::{
    OutputFormat, QueryError, format_batches, query_dir, query_dir_with_schemas, table_name,
};
use hubflow_actors::formats::curated::{
    ConflictKind, CurateInput, CurateOptions, CuratedOutput, curate,
};
use serde_json::{Value, json};

/// 2023-11-14T23:00:00Z and the next hour, on the next date.
const H0: i64 = 1_700_002_800_000;
const H1: i64 = H0 + 3_600_000;
const ORDERS_EARLY: i64 = 30;
const ORDERS_LATE: i64 = 20;
const CLICKS: i64 = 15;

struct Rec {
    id: String,
    source: &'static str,
    seq: i64,
    time: i64,
    payload: Vec<u8>,
}

fn write_batch(
    root: &Path,
    recs: &[Rec],
    stem: &str,
    known: &BTreeMap<String, SchemaRef>,
) -> CuratedOutput {
    let inputs: Vec<CurateInput<'_>> = recs
        .iter()
        .map(|r| CurateInput {
            id: &r.id,
            source: r.source,
            partition: 0,
            sequence_number: r.seq,
            offset: "0",
            enqueued_time_ms: r.time,
            fetched_time_ms: r.time,
            payload: &r.payload,
        })
        .collect();
    let out = curate(
        &inputs,
        &format!("ingest/p0000/{stem}.hfr"),
        stem,
        known,
        &CurateOptions::default(),
    )
    .unwrap();
    assert!(out.rejected.is_empty(), "{:?}", out.rejected);
    for file in &out.files {
        let path = root.join(&file.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &file.data).unwrap();
    }
    out
}

fn order(seq: i64, time: i64, payload: Value) -> Rec {
    Rec {
        id: format!("order-{seq}"),
        source: "orders",
        seq,
        time,
        payload: serde_json::to_vec(&payload).unwrap(),
    }
}

/// Writes the fixture and returns the registry after both batches.
fn fixture(root: &Path) -> BTreeMap<String, SchemaRef> {
    // Batch 1, hour H0: integer amounts, no coupon; a second source.
    let mut first: Vec<Rec> = (0..ORDERS_EARLY)
        .map(|i| {
            order(
                i,
                H0 + i * 1000,
                json!({"id": i, "amount": 10, "user": {"name": format!("u{i}"), "tier": i % 3}}),
            )
        })
        .collect();
    first.extend((0..CLICKS).map(|i| Rec {
        id: format!("click-{i}"),
        source: "web-clicks",
        seq: 1000 + i,
        time: H0 + i,
        payload: serde_json::to_vec(&json!({"page": format!("/p{}", i % 4), "ms": i})).unwrap(),
    }));
    let out1 = write_batch(root, &first, "b1", &BTreeMap::new());
    assert!(out1.conflicts.is_empty(), "{:?}", out1.conflicts);
    assert_eq!(
        out1.schemas["orders"]
            .field_with_name("amount")
            .unwrap()
            .data_type(),
        &DataType::Int64
    );

    // Batch 2, hour H1 (next date): float amounts and a new field.
    let second: Vec<Rec> = (ORDERS_EARLY..ORDERS_EARLY + ORDERS_LATE)
        .map(|i| {
            order(
                i,
                H1 + i,
                json!({"id": i, "amount": 2.5, "coupon": "SAVE", "user": {"name": format!("u{i}")}}),
            )
        })
        .collect();
    let out2 = write_batch(root, &second, "b2", &out1.schemas);
    assert!(
        out2.conflicts
            .iter()
            .any(|c| c.field == "amount" && c.kind == ConflictKind::Widened && c.to == "Float64"),
        "{:?}",
        out2.conflicts
    );
    let mut registry = out1.schemas.clone();
    registry.extend(out2.schemas);
    registry
}

fn int(batches: &[RecordBatch], row: usize, col: usize) -> i64 {
    let batch = single(batches);
    batch.column(col).as_primitive::<Int64Type>().value(row)
}

fn single(batches: &[RecordBatch]) -> RecordBatch {
    let non_empty: Vec<_> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    assert_eq!(non_empty.len(), 1, "{batches:?}");
    non_empty[0].clone()
}

#[tokio::test]
async fn counts_match_with_inferred_and_registry_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let registry = fixture(dir.path());
    let sql = "SELECT count(*), count(DISTINCT _record_id) FROM orders";
    let total = ORDERS_EARLY + ORDERS_LATE;

    let inferred = query_dir(dir.path(), sql).await.unwrap();
    assert_eq!((int(&inferred, 0, 0), int(&inferred, 0, 1)), (total, total));
    let with_registry = query_dir_with_schemas(dir.path(), sql, &registry)
        .await
        .unwrap();
    assert_eq!(
        (int(&with_registry, 0, 0), int(&with_registry, 0, 1)),
        (total, total)
    );

    // The second source is a table too, under its sanitized name.
    assert_eq!(table_name("web-clicks"), "web_clicks");
    let clicks = query_dir(dir.path(), "SELECT count(*) FROM web_clicks")
        .await
        .unwrap();
    assert_eq!(int(&clicks, 0, 0), CLICKS);
}

#[tokio::test]
async fn schema_evolution_reads_old_files_through_the_union() {
    let dir = tempfile::tempdir().unwrap();
    let registry = fixture(dir.path());
    let sql = "SELECT sum(amount) AS total, count(coupon) AS coupons, \
               count(*) FILTER (WHERE coupon IS NULL) AS without FROM orders";
    for schemas in [BTreeMap::new(), registry] {
        let batches = query_dir_with_schemas(dir.path(), sql, &schemas)
            .await
            .unwrap();
        let batch = single(&batches);
        let total = batch.column(0).as_primitive::<Float64Type>().value(0);
        assert_eq!(total, (ORDERS_EARLY * 10) as f64 + ORDERS_LATE as f64 * 2.5);
        assert_eq!(
            batch.column(1).as_primitive::<Int64Type>().value(0),
            ORDERS_LATE
        );
        assert_eq!(
            batch.column(2).as_primitive::<Int64Type>().value(0),
            ORDERS_EARLY
        );
    }
}

#[tokio::test]
async fn nested_fields_and_partition_filters() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());

    let batches = query_dir(
        dir.path(),
        "SELECT user['name'] AS name, get_field(user, 'tier') AS tier \
         FROM orders WHERE id IN (4, 35) ORDER BY id",
    )
    .await
    .unwrap();
    let batch = single(&batches);
    let names = batch.column(0).as_string::<i32>();
    assert_eq!((names.value(0), names.value(1)), ("u4", "u35"));
    let tiers = batch.column(1).as_primitive::<Int64Type>();
    assert_eq!(tiers.value(0), 1);
    assert!(tiers.is_null(1), "tier was absent in the later file");

    let by_date = query_dir(
        dir.path(),
        "SELECT date, hour, count(*) FROM orders GROUP BY date, hour ORDER BY date",
    )
    .await
    .unwrap();
    let text = format_batches(&by_date, OutputFormat::Csv).unwrap();
    assert_eq!(
        text,
        format!("date,hour,count(*)\n2023-11-14,23,{ORDERS_EARLY}\n2023-11-15,00,{ORDERS_LATE}\n")
    );
    let late = query_dir(
        dir.path(),
        "SELECT count(*) FROM orders WHERE date = '2023-11-15'",
    )
    .await
    .unwrap();
    assert_eq!(int(&late, 0, 0), ORDERS_LATE);
}

#[tokio::test]
async fn every_output_format_renders() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    let batches = query_dir(
        dir.path(),
        "SELECT id, amount, user, _ingested_at FROM orders WHERE id IN (1, 31) ORDER BY id",
    )
    .await
    .unwrap();

    let table = format_batches(&batches, OutputFormat::Table).unwrap();
    assert!(table.contains("| id "), "{table}");
    assert!(table.contains("u31"), "{table}");
    assert!(table.contains("2023-11-14T23:00:01"), "{table}");

    let csv = format_batches(&batches, OutputFormat::Csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,amount,user,_ingested_at"));
    let first = lines.next().unwrap();
    assert!(
        first.starts_with(r#"1,10.0,"{""name"":""u1"",""tier"":1}","#),
        "{first}"
    );
    assert!(lines.next().unwrap().contains(r#"""tier"":null"#));
    assert_eq!(lines.next(), None);

    let json = format_batches(&batches, OutputFormat::Json).unwrap();
    let rows: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[0]["id"], json!(1));
    assert_eq!(rows[1]["amount"], json!(2.5));
    assert_eq!(rows[1]["user"]["name"], json!("u31"));
    assert_eq!(rows[1]["user"]["tier"], Value::Null);

    // No rows at all still renders valid output.
    assert_eq!(format_batches(&[], OutputFormat::Json).unwrap(), "[]");
    assert_eq!(format_batches(&[], OutputFormat::Csv).unwrap(), "");
}

#[tokio::test]
async fn missing_or_empty_dirs_and_unknown_tables_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = query_dir(&missing, "SELECT 1").await.unwrap_err();
    assert!(matches!(err, QueryError::NoData { .. }), "{err}");
    assert!(err.to_string().contains("nope"), "{err}");

    std::fs::create_dir_all(dir.path().join("empty-source/date=2023-11-14")).unwrap();
    let err = query_dir(dir.path(), "SELECT 1").await.unwrap_err();
    assert!(matches!(err, QueryError::NoData { .. }), "{err}");

    fixture(dir.path());
    let err = query_dir(dir.path(), "SELECT * FROM nosuch")
        .await
        .unwrap_err();
    assert!(matches!(err, QueryError::Sql(_)), "{err}");
    assert!(err.to_string().contains("nosuch"), "{err}");
}

#[tokio::test]
async fn payload_fields_named_like_partitions_stay_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let recs = vec![Rec {
        id: "x".into(),
        source: "events",
        seq: 1,
        time: H0,
        payload: serde_json::to_vec(&json!({"date": "2020-01-01", "hour": 5})).unwrap(),
    }];
    write_batch(dir.path(), &recs, "b", &BTreeMap::new());
    let batches = query_dir(
        dir.path(),
        "SELECT date, hour, date_payload, hour_payload FROM events",
    )
    .await
    .unwrap();
    let csv = format_batches(&batches, OutputFormat::Csv).unwrap();
    assert_eq!(
        csv,
        "date,hour,date_payload,hour_payload\n2023-11-14,23,2020-01-01,5\n"
    );
}

#[tokio::test]
async fn objects_widened_to_text_in_a_later_file_read_as_json_text() {
    let dir = tempfile::tempdir().unwrap();
    let rec = |id: &str, time: i64, payload: Value| Rec {
        id: id.into(),
        source: "events",
        seq: 1,
        time,
        payload: serde_json::to_vec(&payload).unwrap(),
    };
    let first = write_batch(
        dir.path(),
        &[rec("a", H0, json!({"o": {"k": 1}, "l": [1, 2]}))],
        "b1",
        &BTreeMap::new(),
    );
    let second = write_batch(
        dir.path(),
        &[rec("b", H1, json!({"o": "text", "l": 3}))],
        "b2",
        &first.schemas,
    );
    assert_eq!(second.conflicts.len(), 2, "{:?}", second.conflicts);
    for schemas in [BTreeMap::new(), second.schemas.clone()] {
        let batches = query_dir_with_schemas(
            dir.path(),
            "SELECT o, l FROM events WHERE o <> 'nothing' ORDER BY _record_id",
            &schemas,
        )
        .await
        .unwrap();
        let csv = format_batches(&batches, OutputFormat::Csv).unwrap();
        assert_eq!(csv, "o,l\n\"{\"\"k\"\":1}\",\"[1,2]\"\ntext,3\n");
    }
}

/// `hubflow query` on a data directory holding the fixture, with `stdin`.
fn hubflow_query(data: &Path, args: &[&str], stdin: &str) -> (bool, Vec<u8>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let config = data.join("hubflow.toml");
    std::fs::write(
        &config,
        format!("[pipeline]\ndata_dir = {:?}\n", data.display().to_string()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hubflow"))
        .args(["query", "--config", config.to_str().unwrap()])
        .args(args)
        .env("HUBFLOW_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Without SQL, `hubflow query` reads statements (multi-line, ending with
/// `;`) and meta-commands from stdin: a bad statement or command prints one
/// error and the session goes on; `\q` ends it.
#[test]
fn query_without_sql_is_an_interactive_session() {
    let dir = tempfile::tempdir().unwrap();
    fixture(&dir.path().join("blobs/curated"));
    let input = "\\d\n\\d orders\nSELECT count(*) AS n\n  FROM orders;\nSELEKT 1;\n\\x\n\\d nosuch\n\\s\n\\q\nSELECT 'after quit' AS q;\n";
    let (ok, stdout, stderr) = hubflow_query(dir.path(), &["--format", "csv"], input);
    let stdout = String::from_utf8(stdout).unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("orders (") && stdout.contains("web_clicks ("),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("amount ")),
        "\\d orders: {stdout}"
    );
    assert!(
        stdout.contains(&format!("n\n{}", ORDERS_EARLY + ORDERS_LATE)),
        "{stdout}"
    );
    assert!(
        stdout.contains("   1  SELECT count(*) AS n\n  FROM orders;"),
        "history: {stdout}"
    );
    assert!(
        !stdout.contains("after quit"),
        "\\q did not end the session: {stdout}"
    );
    let errors = stderr.lines().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 3, "{stderr}");
    assert_eq!(
        stderr.matches("SELEKT").count(),
        1,
        "an error prints once: {stderr}"
    );
    assert!(stderr.contains("unknown command \\x"), "{stderr}");
    assert!(
        stderr.contains("no table \"nosuch\" (tables: orders, web_clicks)"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hubflow>"),
        "a prompt without a terminal: {stderr}"
    );

    let (ok, _, stderr) = hubflow_query(dir.path(), &[], "SELECT 1 AS x");
    assert!(
        ok && stderr.contains("input ended inside a statement"),
        "{stderr}"
    );
}

/// `--format parquet` writes the result as a Parquet file, to `--output`
/// or to a stdout that is not a terminal; never in an interactive session.
#[test]
fn query_results_as_a_parquet_file() {
    let dir = tempfile::tempdir().unwrap();
    fixture(&dir.path().join("blobs/curated"));
    let file = dir.path().join("out.parquet");
    let sql = "SELECT id, amount FROM orders ORDER BY id";
    let args = [
        "--format",
        "parquet",
        "--output",
        file.to_str().unwrap(),
        sql,
    ];
    let (ok, _, stderr) = hubflow_query(dir.path(), &args, "");
    assert!(ok, "{stderr}");
    let bytes = bytes::Bytes::from(std::fs::read(&file).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows as i64, ORDERS_EARLY + ORDERS_LATE);

    let (ok, stdout, stderr) = hubflow_query(dir.path(), &["--format", "parquet", sql], "");
    assert!(
        ok && stdout.starts_with(b"PAR1") && stdout.ends_with(b"PAR1"),
        "{stderr}"
    );

    let (ok, _, stderr) = hubflow_query(dir.path(), &["--format", "parquet"], "SELECT 1;\n");
    assert!(
        !ok && stderr.contains("give a statement for --format parquet"),
        "{stderr}"
    );
}
