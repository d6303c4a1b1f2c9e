//! Throughput of the two formats on demo records: raw encode/decode (zstd
//! rkyv) and curate (JSON → Arrow → zstd Parquet).
//!
//! `cargo bench --bench formats`

use std::collections::BTreeMap;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hubflow::demo::demo_record;
use hubflow_actors::formats::curated::{CurateInput, CurateOptions, curate};
use hubflow_actors::formats::raw::{RawBatch, RawRecord, decode, encode};

const N: usize = 10_000;

fn batch() -> RawBatch {
    RawBatch {
        hub: "ingest".into(),
        partition: 0,
        first_seq: 0,
        last_seq: N as i64 - 1,
        created_ms: 1_767_225_600_000,
        records: (0..N)
            .map(|i| RawRecord {
                id: format!("evt-{i:08}"),
                source: "demo".into(),
                sequence_number: i as i64,
                offset: i.to_string(),
                enqueued_time_ms: 1_767_225_600_000 + i as i64,
                fetched_time_ms: 1_767_225_600_000,
                payload: serde_json::to_vec(&demo_record(i as u64)).unwrap_or_default(),
            })
            .collect(),
    }
}

fn formats(c: &mut Criterion) {
    let batch = batch();
    let bytes: u64 = batch.records.iter().map(|r| r.payload.len() as u64).sum();
    let encoded = encode(&batch, 3).unwrap_or_default();
    let mut group = c.benchmark_group("formats");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(10);
    group.bench_function("raw_encode_10k", |b| b.iter(|| encode(&batch, 3)));
    group.bench_function("raw_decode_10k", |b| b.iter(|| decode(&encoded)));
    let inputs: Vec<CurateInput<'_>> = batch
        .records
        .iter()
        .map(|r| CurateInput {
            id: &r.id,
            source: &r.source,
            partition: 0,
            sequence_number: r.sequence_number,
            offset: &r.offset,
            enqueued_time_ms: r.enqueued_time_ms,
            payload: &r.payload,
        })
        .collect();
    let known = BTreeMap::new();
    let options = CurateOptions::default();
    group.bench_function("curate_10k", |b| {
        b.iter(|| curate(&inputs, "raw/x.hfr", "x", &known, &options))
    });
    group.finish();
}

criterion_group!(benches, formats);
criterion_main!(benches);
