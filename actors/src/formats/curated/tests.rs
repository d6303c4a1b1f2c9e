use super::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Fields;
use arrow::datatypes::{Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use serde_json::json;

const T0: i64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

struct Rec {
    id: String,
    source: String,
    seq: i64,
    time: i64,
    payload: Vec<u8>,
}

fn rec(source: &str, seq: i64, time: i64, payload: Value) -> Rec {
    Rec {
        id: format!("{source}-{seq}"),
        source: source.into(),
        seq,
        time,
        payload: serde_json::to_vec(&payload).unwrap(),
    }
}

fn inputs(recs: &[Rec]) -> Vec<CurateInput<'_>> {
    recs.iter()
        .map(|r| CurateInput {
            id: &r.id,
            source: &r.source,
            partition: 2,
            sequence_number: r.seq,
            offset: "off",
            enqueued_time_ms: r.time,
            fetched_time_ms: r.time,
            payload: &r.payload,
        })
        .collect()
}

fn run(recs: &[Rec], known: &BTreeMap<String, SchemaRef>) -> CuratedOutput {
    curate(
        &inputs(recs),
        "ingest/p0002/1-2.hfr",
        "stem",
        known,
        &CurateOptions::default(),
    )
    .unwrap()
}

fn read(file: &CuratedFile) -> RecordBatch {
    let reader = ParquetRecordBatchReaderBuilder::try_new(file.data.clone())
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn field_type(schema: &Schema, name: &str) -> DataType {
    schema.field_with_name(name).unwrap().data_type().clone()
}

fn widened(out: &CuratedOutput, field: &str) -> Option<(String, String)> {
    out.conflicts
        .iter()
        .find(|c| c.field == field && c.kind == ConflictKind::Widened)
        .map(|c| (c.from.clone(), c.to.clone()))
}

#[test]
fn nested_objects_and_arrays_round_trip() {
    let recs = vec![
        rec(
            "s",
            1,
            T0,
            json!({"user": {"name": "ann", "age": 3, "tags": ["a", "b"]}, "scores": [1, 2]}),
        ),
        rec(
            "s",
            2,
            T0,
            json!({"user": {"name": "bob", "geo": {"lat": 1.5}}, "scores": []}),
        ),
        rec("s", 3, T0, json!({"user": null, "scores": [null, 7]})),
    ];
    let out = run(&recs, &BTreeMap::new());
    assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
    assert_eq!(out.files.len(), 1);
    let batch = read(&out.files[0]);
    assert_eq!(batch.schema(), out.schemas["s"]);
    assert_eq!(batch.num_rows(), 3);

    let user = batch.column_by_name("user").unwrap().as_struct();
    assert!(user.is_null(2));
    let names = user.column_by_name("name").unwrap().as_string::<i32>();
    assert_eq!(names.value(1), "bob");
    let tags = user.column_by_name("tags").unwrap().as_list::<i32>();
    assert_eq!(tags.value(0).as_string::<i32>().value(1), "b");
    assert!(tags.is_null(1));
    let geo = user.column_by_name("geo").unwrap().as_struct();
    let lat = geo
        .column_by_name("lat")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(lat.value(1), 1.5);
    assert!(geo.is_null(0));

    let scores = batch.column_by_name("scores").unwrap().as_list::<i32>();
    assert_eq!(
        field_type(&batch.schema(), "scores"),
        DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true)))
    );
    assert_eq!(scores.value(1).len(), 0);
    let third = scores.value(2);
    let third = third.as_primitive::<Int64Type>();
    assert!(third.is_null(0));
    assert_eq!(third.value(1), 7);
}

#[test]
fn int_and_float_widen_to_float() {
    let recs = vec![
        rec("s", 1, T0, json!({"x": 1})),
        rec("s", 2, T0, json!({"x": 2.5})),
    ];
    let out = run(&recs, &BTreeMap::new());
    assert_eq!(field_type(&out.schemas["s"], "x"), DataType::Float64);
    assert_eq!(widened(&out, "x"), Some(("Int64".into(), "Float64".into())));
    let batch = read(&out.files[0]);
    let x = batch
        .column_by_name("x")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!((x.value(0), x.value(1)), (1.0, 2.5));
}

#[test]
fn scalar_mixed_with_string_becomes_text() {
    let recs = vec![
        rec("s", 1, T0, json!({"a": 7, "b": true, "c": "x"})),
        rec("s", 2, T0, json!({"a": "seven", "b": 1, "c": 2.5})),
    ];
    let out = run(&recs, &BTreeMap::new());
    for f in ["a", "b", "c"] {
        assert_eq!(field_type(&out.schemas["s"], f), DataType::Utf8, "{f}");
    }
    assert_eq!(widened(&out, "a"), Some(("Int64".into(), "Utf8".into())));
    assert_eq!(widened(&out, "b"), Some(("Boolean".into(), "Utf8".into())));
    assert_eq!(widened(&out, "c"), None, "a Utf8 column absorbs numbers");
    let batch = read(&out.files[0]);
    let col = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
    assert_eq!((col("a").value(0), col("a").value(1)), ("7", "seven"));
    assert_eq!((col("b").value(0), col("b").value(1)), ("true", "1"));
    assert_eq!(col("c").value(1), "2.5");
}

#[test]
fn scalar_mixed_with_object_or_array_becomes_json_text() {
    let recs = vec![
        rec(
            "s",
            1,
            T0,
            json!({"o": {"k": 1, "z": [1]}, "l": [1, 2], "n": 5}),
        ),
        rec(
            "s",
            2,
            T0,
            json!({"o": 3, "l": "flat", "n": {"deep": true}}),
        ),
    ];
    let out = run(&recs, &BTreeMap::new());
    assert_eq!(widened(&out, "o"), Some(("Struct".into(), "Utf8".into())));
    assert_eq!(widened(&out, "l"), Some(("List".into(), "Utf8".into())));
    assert_eq!(widened(&out, "n"), Some(("Int64".into(), "Utf8".into())));
    let batch = read(&out.files[0]);
    let col = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
    assert_eq!(col("o").value(0), r#"{"k":1,"z":[1]}"#);
    assert_eq!(col("o").value(1), "3");
    assert_eq!(col("l").value(0), "[1,2]");
    assert_eq!(col("n").value(1), r#"{"deep":true}"#);
}

#[test]
fn structs_union_recursively_and_list_elements_merge() {
    let recs = vec![
        rec("s", 1, T0, json!({"u": {"a": 1}, "l": [1]})),
        rec("s", 2, T0, json!({"u": {"b": {"c": 1}}, "l": [2.5]})),
        rec(
            "s",
            3,
            T0,
            json!({"u": {"b": {"c": "x", "d": null}}, "l": [[1]]}),
        ),
    ];
    let out = run(&recs, &BTreeMap::new());
    let u = field_type(&out.schemas["s"], "u");
    let DataType::Struct(fields) = u else {
        panic!("u is {u}")
    };
    let names: Vec<_> = fields.iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    let b = fields[1].data_type();
    assert_eq!(
        b,
        &DataType::Struct(Fields::from(vec![
            Field::new("c", DataType::Utf8, true),
            Field::new("d", DataType::Null, true),
        ]))
    );
    assert_eq!(
        widened(&out, "u.b.c"),
        Some(("Int64".into(), "Utf8".into()))
    );
    assert_eq!(widened(&out, "l[]").map(|c| c.1), Some("Float64".into()));
    assert_eq!(
        field_type(&out.schemas["s"], "l"),
        DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
    );
    let batch = read(&out.files[0]);
    let l = batch.column_by_name("l").unwrap().as_list::<i32>();
    assert_eq!(l.value(2).as_string::<i32>().value(0), "[1]");
    assert_eq!(l.value(1).as_string::<i32>().value(0), "2.5");
}

#[test]
fn known_schema_comes_first_and_is_widened() {
    let known_schema = Schema::new(vec![
        Field::new("z", DataType::Int64, true),
        Field::new("old", DataType::Utf8, true),
    ]);
    let mut known = BTreeMap::new();
    known.insert("s".to_string(), Arc::new(known_schema));
    let recs = vec![rec("s", 1, T0, json!({"new": true, "z": 0.5}))];
    let out = run(&recs, &known);
    let names: Vec<_> = out.schemas["s"]
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut expected = vec!["z", "old", "new"];
    expected.extend(METADATA_COLUMNS);
    assert_eq!(names, expected);
    assert_eq!(widened(&out, "z"), Some(("Int64".into(), "Float64".into())));
    assert_eq!(out.conflicts.len(), 1);
    // Known schemas that already carry metadata columns are accepted as is.
    let mut known2 = BTreeMap::new();
    known2.insert("s".to_string(), out.schemas["s"].clone());
    let again = run(&recs, &known2);
    assert_eq!(again.schemas["s"], out.schemas["s"]);
    assert!(again.conflicts.is_empty(), "{:?}", again.conflicts);
}

#[test]
fn float_known_absorbs_ints_without_conflict() {
    let mut known = BTreeMap::new();
    known.insert(
        "s".to_string(),
        Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)])),
    );
    let out = run(&[rec("s", 1, T0, json!({"x": 3}))], &known);
    assert!(out.conflicts.is_empty());
    let batch = read(&out.files[0]);
    let x = batch
        .column_by_name("x")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(x.value(0), 3.0);
}

#[test]
fn metadata_columns_are_filled_and_collisions_renamed() {
    let recs = vec![
        rec(
            "s",
            41,
            T0,
            json!({"_record_id": "payload-id", "v": 1, "date": "2020-01-01"}),
        ),
        rec("s", 42, T0 + 1, json!({"v": 2})),
    ];
    let out = run(&recs, &BTreeMap::new());
    let renamed: Vec<_> = out
        .conflicts
        .iter()
        .filter(|c| c.kind == ConflictKind::Renamed)
        .collect();
    assert_eq!(renamed.len(), 2);
    assert_eq!(renamed[0].from, "_record_id");
    assert_eq!(renamed[0].to, "_record_id_payload");
    assert_eq!(renamed[1].to, "date_payload");

    let batch = read(&out.files[0]);
    let schema = batch.schema();
    let tail: Vec<_> = schema
        .fields()
        .iter()
        .rev()
        .take(METADATA_COLUMNS.len())
        .rev()
        .cloned()
        .collect();
    let meta: Vec<_> = metadata_fields().into_iter().map(Arc::new).collect();
    assert_eq!(tail, meta);
    let s = |n: &str| batch.column_by_name(n).unwrap().as_string::<i32>().clone();
    assert_eq!(s("_record_id_payload").value(0), "payload-id");
    assert!(s("_record_id_payload").is_null(1));
    assert_eq!(s("date_payload").value(0), "2020-01-01");
    assert!(batch.column_by_name("date").is_none());
    assert_eq!(s("_record_id").value(0), "s-41");
    assert_eq!(s("_hub_offset").value(1), "off");
    assert_eq!(s("_raw_blob").value(1), "ingest/p0002/1-2.hfr");
    assert_eq!(s("_transform_version").value(1), IDENTITY_VERSION);
    let part = batch.column_by_name("_hub_partition").unwrap();
    assert_eq!(part.as_primitive::<Int32Type>().value(0), 2);
    let seq = batch.column_by_name("_hub_sequence").unwrap();
    assert_eq!(seq.as_primitive::<Int64Type>().value(1), 42);
    let at = batch.column_by_name("_ingested_at").unwrap();
    assert_eq!(
        at.as_primitive::<TimestampMillisecondType>().value(1),
        T0 + 1
    );
}

#[test]
fn files_are_split_by_source_and_hour() {
    let recs = vec![
        rec("b", 1, T0, json!({"v": 1})),
        rec("a", 2, T0, json!({"v": 1})),
        rec("a", 3, T0 + HOUR_MS, json!({"v": 1})),
        rec("a", 4, T0 + 10, json!({"v": 1})),
    ];
    let out = run(&recs, &BTreeMap::new());
    let paths: Vec<_> = out
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.rows))
        .collect();
    assert_eq!(
        paths,
        [
            ("a/date=2023-11-14/hour=22/stem.parquet", 2),
            ("a/date=2023-11-14/hour=23/stem.parquet", 1),
            ("b/date=2023-11-14/hour=22/stem.parquet", 1),
        ]
    );
    let ids = read(&out.files[0]);
    let ids = ids.column_by_name("_record_id").unwrap().as_string::<i32>();
    assert_eq!((ids.value(0), ids.value(1)), ("a-2", "a-4"));
}

#[test]
fn output_is_deterministic() {
    let recs: Vec<_> = (0..4600i64)
        .map(|i| {
            rec(
                if i % 3 == 0 { "x" } else { "y" },
                i,
                T0 + i * 60_000,
                json!({"i": i, "f": i as f64 / 3.0, "s": format!("v{i}"), "o": {"k": [i]}}),
            )
        })
        .collect();
    let a = run(&recs, &BTreeMap::new());
    let b = run(&recs, &BTreeMap::new());
    assert!(a.files.len() > 2);
    assert_eq!(a.files, b.files);
    assert_eq!(a.schemas, b.schemas);
    // Input order is kept within a file.
    let batch = read(&a.files[0]);
    let seq = batch.column_by_name("_hub_sequence").unwrap();
    let seq = seq.as_primitive::<Int64Type>();
    assert!(seq.values().windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a.files.iter().map(|f| f.rows).sum::<usize>(), recs.len());
}

#[test]
fn key_order_does_not_matter() {
    let recs = vec![
        rec("s", 1, T0, json!({"a": 1, "b": "x", "o": {"p": 1, "q": 2}})),
        rec("s", 2, T0, json!({"o": {"q": 4, "p": 3}, "b": "y", "a": 2})),
        rec("s", 3, T0, json!({"b": "z"})),
    ];
    let out = run(&recs, &BTreeMap::new());
    let batch = read(&out.files[0]);
    let a = batch.column_by_name("a").unwrap();
    let a = a.as_primitive::<Int64Type>();
    assert_eq!((a.value(0), a.value(1)), (1, 2));
    assert!(a.is_null(2));
    let b = batch.column_by_name("b").unwrap();
    let b = b.as_string::<i32>();
    assert_eq!((b.value(0), b.value(1), b.value(2)), ("x", "y", "z"));
    let o = batch.column_by_name("o").unwrap().as_struct();
    let q = o.column_by_name("q").unwrap().as_primitive::<Int64Type>();
    assert_eq!((q.value(0), q.value(1)), (2, 4));
    assert!(o.is_null(2));
}

#[test]
fn bad_records_are_rejected_not_fatal() {
    let mut recs = vec![
        rec("s", 1, T0, json!({"ok": 1})),
        rec("s", 2, T0, json!([1, 2])),
        rec("s", 3, T0, json!("text")),
        rec("../x", 4, T0, json!({"ok": 1})),
        rec("s", 5, -1, json!({"ok": 1})),
    ];
    recs.push(Rec {
        id: "broken".into(),
        source: "s".into(),
        seq: 6,
        time: T0,
        payload: b"{\"ok\": ".to_vec(),
    });
    let out = run(&recs, &BTreeMap::new());
    let rejected: Vec<_> = out.rejected.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(rejected, ["s-2", "s-3", "../x-4", "s-5", "broken"]);
    assert!(out.rejected[0].reason.contains("array"));
    assert!(out.rejected[4].reason.contains("not valid json"));
    assert_eq!(out.files.len(), 1);
    assert_eq!(out.files[0].rows, 1);
}

#[test]
fn bad_arguments_are_errors() {
    let recs = vec![rec("s", 1, T0, json!({}))];
    let recs = inputs(&recs);
    let known = BTreeMap::new();
    let err = curate(&recs, "r", "a/b", &known, &CurateOptions::default());
    assert!(matches!(err, Err(CurateError::InvalidStem { .. })));
    let opts = CurateOptions {
        zstd_level: 99,
        ..CurateOptions::default()
    };
    let err = curate(&recs, "r", "ok", &known, &opts);
    assert!(matches!(err, Err(CurateError::InvalidOptions(_))));
    let opts = CurateOptions {
        max_row_group_rows: 0,
        ..CurateOptions::default()
    };
    let err = curate(&recs, "r", "ok", &known, &opts);
    assert!(matches!(err, Err(CurateError::InvalidOptions(_))));
}

#[test]
fn empty_objects_and_null_only_fields_are_writable() {
    let recs = vec![
        rec("s", 1, T0, json!({})),
        rec("s", 2, T0, json!({"e": {}, "n": null, "l": [], "le": [{}]})),
    ];
    let out = run(&recs, &BTreeMap::new());
    let schema = &out.schemas["s"];
    assert_eq!(field_type(schema, "e"), DataType::Null);
    assert_eq!(field_type(schema, "n"), DataType::Null);
    let batch = read(&out.files[0]);
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.schema(), out.schemas["s"]);
}

#[test]
fn row_groups_respect_the_limit() {
    let recs: Vec<_> = (0..25).map(|i| rec("s", i, T0, json!({"i": i}))).collect();
    let out = curate(
        &inputs(&recs),
        "r",
        "stem",
        &BTreeMap::new(),
        &CurateOptions {
            zstd_level: 1,
            max_row_group_rows: 10,
        },
    )
    .unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(out.files[0].data.clone()).unwrap();
    let meta = builder.metadata();
    assert_eq!(meta.num_row_groups(), 3);
    let column = meta.row_group(0).column(0);
    assert!(column.statistics().is_some());
    assert!(matches!(column.compression(), Compression::ZSTD(_)));
}

#[test]
fn merge_schemas_unions_and_keeps_metadata_last() {
    let a = Schema::new(
        [Field::new("x", DataType::Int64, true)]
            .into_iter()
            .chain(metadata_fields())
            .collect::<Vec<_>>(),
    );
    let b = Schema::new(vec![
        Field::new("y", DataType::Boolean, true),
        Field::new("x", DataType::Float64, true),
    ]);
    let (merged, conflicts) = merge_schemas(&a, &b);
    let names: Vec<_> = merged.fields().iter().map(|f| f.name().clone()).collect();
    let mut expected = vec!["x", "y"];
    expected.extend(METADATA_COLUMNS);
    assert_eq!(names, expected);
    assert_eq!(field_type(&merged, "x"), DataType::Float64);
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].field, "x");
}

#[test]
fn schema_json_round_trips() {
    let recs = vec![rec(
        "s",
        1,
        T0,
        json!({"u": {"n": "a", "l": [[1.5]]}, "b": true, "z": null}),
    )];
    let out = run(&recs, &BTreeMap::new());
    let mut fields: Vec<Field> = out.schemas["s"]
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("odd", DataType::UInt16, false));
    let schema = Schema::new(fields);
    let encoded = schema_to_json(&schema);
    let text = serde_json::to_string(&encoded).unwrap();
    let decoded = schema_from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    assert_eq!(decoded, schema);

    for bad in [
        json!({}),
        json!({"fields": 3}),
        json!({"fields": [{"name": "a"}]}),
        json!({"fields": [{"name": "a", "type": "wat"}]}),
        json!({"fields": [{"name": "a", "type": "list"}]}),
    ] {
        assert!(
            matches!(schema_from_json(&bad), Err(CurateError::InvalidSchema(_))),
            "{bad}"
        );
    }
}

/// Deterministic xorshift generator for the tricky-input comparison.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn scalar(&mut self) -> String {
        self.pick(&[
            "null",
            "true",
            "false",
            "0",
            "-7",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890",
            "1.5",
            "-0.0",
            "1e5",
            "2.5E-3",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
            r#""plain""#,
            r#""""#,
            r#""tab\there\nline""#,
            r#""quote \" and \\ backslash""#,
            r#""\u00e9t\u00e9 \ud83d\ude00""#,
            r#""été 日本 🚀""#,
            r#""\u0000 control""#,
            r#""2013-01-01T10:00:00Z""#,
        ])
        .to_string()
    }

    fn key(&mut self) -> String {
        self.pick(&[
            r#""a""#,
            r#""b""#,
            r#""nested""#,
            r#""hour""#,
            r#""date""#,
            r#""hour_payload""#,
            r#""_record_id""#,
            r#""é""#,
            r#""日本""#,
            r#""q\"k""#,
            r#""\u0061""#,
            r#""""#,
        ])
        .to_string()
    }

    fn value(&mut self, depth: usize) -> String {
        let roll = self.below(10);
        if depth >= 3 || roll < 6 {
            return self.scalar();
        }
        if roll < 8 {
            let n = self.below(4);
            let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
            return format!("[{}]", items.join(","));
        }
        self.object(depth + 1)
    }

    fn object(&mut self, depth: usize) -> String {
        let n = self.below(5);
        let entries: Vec<String> = (0..n)
            .map(|_| format!("{}:{}", self.key(), self.value(depth)))
            .collect();
        format!("{{{}}}", entries.join(" , "))
    }

    /// A record: mostly objects whose fields keep a type, with deviations,
    /// repeated keys, reserved names, and now and then not an object at all.
    fn record(&mut self, i: usize) -> Vec<u8> {
        match self.below(50) {
            0 => return b"[1,2,3]".to_vec(),
            1 => return br#""just a string""#.to_vec(),
            2 => return br#"{"cut": "#.to_vec(),
            3 => return b"{\"bad\": \"\xff\"}".to_vec(),
            _ => {}
        }
        let mut fields = vec![format!(r#""id":"r{i}""#)];
        if self.chance(90) {
            let n = if self.chance(95) {
                (i as i64 * 37 - 500).to_string()
            } else {
                self.scalar()
            };
            fields.push(format!(r#""n":{n}"#));
        }
        if self.chance(80) {
            let s = if self.chance(95) {
                format!(r#""name {i} é""#)
            } else {
                self.value(1)
            };
            fields.push(format!(r#""s":{s}"#));
        }
        if self.chance(70) {
            let o = if self.chance(90) {
                format!(
                    r#"{{"x":{},"y":[{},{}],"z":{{"deep":{}}}}}"#,
                    i % 7,
                    i,
                    if self.chance(50) { "null" } else { "2.5" },
                    self.scalar()
                )
            } else {
                self.value(1)
            };
            fields.push(format!(r#""o":{o}"#));
        }
        if self.chance(30) {
            fields.push(format!(r#""mix":{}"#, self.value(0)));
        }
        if self.chance(10) {
            fields.push(format!("{}:{}", self.key(), self.value(0)));
        }
        if self.chance(5) {
            // A repeated key, top level or nested.
            fields.push(format!(r#""n":{}"#, self.scalar()));
        }
        if self.chance(3) {
            fields.push(format!(r#""o":{{"x":1,"x":{}}}"#, self.scalar()));
        }
        if self.chance(20) {
            let i = self.below(fields.len());
            fields.swap(0, i);
        }
        format!("{{ {} }}", fields.join(",")).into_bytes()
    }
}

fn assert_same(tape: &CuratedOutput, values: &CuratedOutput, what: &str) {
    assert_eq!(tape.rejected, values.rejected, "{what}: rejected");
    assert_eq!(tape.conflicts, values.conflicts, "{what}: conflicts");
    assert_eq!(tape.schemas, values.schemas, "{what}: schemas");
    assert_eq!(tape.files.len(), values.files.len(), "{what}: files");
    for (a, b) in tape.files.iter().zip(&values.files) {
        assert_eq!((&a.path, a.rows), (&b.path, b.rows), "{what}");
        if a.data != b.data {
            assert_eq!(read(a), read(b), "{what}: rows of {}", a.path);
            panic!("{what}: {} differs in bytes only", a.path);
        }
    }
}

#[test]
fn the_tape_path_curates_exactly_what_serde_json_values_did() {
    for seed in 1..=12u64 {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15 ^ seed);
        let recs: Vec<Rec> = (0..600)
            .map(|i| Rec {
                id: format!("r{i}"),
                source: if i % 5 == 0 {
                    "other".into()
                } else {
                    "s".into()
                },
                seq: i as i64,
                time: T0 + (i as i64 % 3) * 3_600_000,
                payload: g.record(i),
            })
            .collect();
        let inputs = inputs(&recs);
        let opts = CurateOptions::default();
        let run = |known: &BTreeMap<String, SchemaRef>, read| {
            curate_impl(&inputs, "raw/x.hfr", "stem", known, &opts, identity(read)).unwrap()
        };
        let fresh = run(&BTreeMap::new(), Read::Tape);
        assert_same(
            &fresh,
            &run(&BTreeMap::new(), Read::Values),
            &format!("seed {seed}"),
        );
        assert!(fresh.files.iter().map(|f| f.rows).sum::<usize>() > 400);
        // Against a known schema (the registry after a first batch).
        let known = fresh.schemas.clone();
        assert_same(
            &run(&known, Read::Tape),
            &run(&known, Read::Values),
            &format!("seed {seed}, known schema"),
        );
    }
}

#[test]
fn repeated_keys_keep_the_last_value_in_the_first_place() {
    let recs = vec![
        Rec {
            id: "a".into(),
            source: "s".into(),
            seq: 1,
            time: T0,
            payload: br#"{"k":1,"m":{"x":1,"x":"two"},"k":"last"}"#.to_vec(),
        },
        Rec {
            id: "b".into(),
            source: "s".into(),
            seq: 2,
            time: T0,
            payload: br#"{"k":"plain","m":{"x":"y"}}"#.to_vec(),
        },
    ];
    let inputs = inputs(&recs);
    let opts = CurateOptions::default();
    let out = curate(&inputs, "raw/x.hfr", "stem", &BTreeMap::new(), &opts).unwrap();
    let reference = curate_impl(
        &inputs,
        "raw/x.hfr",
        "stem",
        &BTreeMap::new(),
        &opts,
        identity(Read::Values),
    )
    .unwrap();
    assert_same(&out, &reference, "repeated keys");
    assert!(out.conflicts.is_empty(), "{:?}", out.conflicts);
    let batch = read(&out.files[0]);
    let k = batch.column_by_name("k").unwrap().as_string::<i32>();
    assert_eq!((k.value(0), k.value(1)), ("last", "plain"));
}

fn identity(read: Read) -> How<'static> {
    How {
        version: IDENTITY_VERSION,
        transform: None,
        read,
    }
}

/// A transform that forges or drops `_transform_version`.
struct Reshape {
    drop_version: bool,
}

impl BatchTransform for Reshape {
    fn version(&self) -> &str {
        "v7"
    }

    fn apply(&self, _source: &str, batch: RecordBatch) -> Result<RecordBatch, String> {
        let schema = batch.schema();
        let i = schema
            .index_of(COL_TRANSFORM_VERSION)
            .map_err(|e| e.to_string())?;
        if self.drop_version {
            let keep: Vec<usize> = (0..schema.fields().len()).filter(|j| *j != i).collect();
            return batch.project(&keep).map_err(|e| e.to_string());
        }
        let mut columns = batch.columns().to_vec();
        columns[i] = Arc::new(StringArray::from(vec!["forged"; batch.num_rows()]));
        RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())
    }
}

#[test]
fn rows_carry_the_version_that_curated_them_and_a_transform_cannot_forge_it() {
    let recs = vec![
        rec("s", 1, T0, json!({"v": 1})),
        rec("s", 2, T0, json!({"v": 2})),
    ];
    let inputs = inputs(&recs);
    let opts = CurateOptions::default();
    let labelled = CurateTransform {
        version: "from-config".into(),
        transform: None,
    };
    let out = curate_versioned(
        &inputs,
        "raw/x.hfr",
        "stem",
        &BTreeMap::new(),
        &opts,
        &labelled,
    )
    .unwrap();
    let version = |out: &CuratedOutput| {
        let batch = read(&out.files[0]);
        let col = batch
            .column_by_name(COL_TRANSFORM_VERSION)
            .unwrap()
            .as_string::<i32>()
            .clone();
        let meta = ParquetRecordBatchReaderBuilder::try_new(out.files[0].data.clone())
            .unwrap()
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == TRANSFORM_VERSION_KEY).cloned())
            .and_then(|kv| kv.value);
        (
            col.iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>(),
            meta,
        )
    };
    assert_eq!(
        version(&out),
        (
            vec!["from-config".to_string(); 2],
            Some("from-config".to_string())
        )
    );
    for drop_version in [false, true] {
        let t = Reshape { drop_version };
        let out = curate_with(
            &inputs,
            "raw/x.hfr",
            "stem",
            &BTreeMap::new(),
            &opts,
            Some(&t),
        )
        .unwrap();
        assert_eq!(
            version(&out),
            (vec!["v7".to_string(); 2], Some("v7".to_string()))
        );
    }
}
