//! Restarts through the whole pipeline, for every pagination style: the
//! pipeline is stopped after some pages, started again on the same data
//! directory, its fetcher killed while a (slow) page is in flight, stopped and
//! started once more; curated then holds every source record exactly once.
//! One more run polls incrementally (cursor pagination under a watermark);
//! two more read CSV bodies (gzip) and zstd-compressed JSON.

use crate::common;
use crate::common::harness;

use std::time::{Duration, Instant};

use hubflow::demo::{DemoConfig, FaultConfig, demo_incremental_source_config, demo_source_config};
use hubflow::pipeline::{Pipeline, Progress};
use hubflow::source::{BodyFormat, HttpSourceConfig, PaginationConfig, RateLimitConfig};
use hubflow_actors::fetcher::FetcherStatus;

const TOTAL: u64 = 2_000;
const FETCHER: &str = "pipeline/sources/fetcher-demo";

fn style(url: &str, kind: &str) -> HttpSourceConfig {
    let mut cfg = demo_source_config(url);
    match kind {
        "cursor" => {}
        "cursor_watermark" => {
            cfg = demo_incremental_source_config(url);
        }
        "offset_limit" => {
            cfg.query.clear();
            cfg.pagination = PaginationConfig::OffsetLimit {
                offset_param: "offset".into(),
                limit_param: "limit".into(),
                limit: 100,
            };
        }
        "page_number" => {
            cfg.query.clear();
            cfg.pagination = PaginationConfig::PageNumber {
                param: "page".into(),
                start: 1,
                size_param: Some("per_page".into()),
                size: 100,
            };
        }
        "next_url" => {
            cfg.pagination = PaginationConfig::NextUrl {
                from: "next_url".into(),
            };
        }
        "link_header" => cfg.pagination = PaginationConfig::LinkHeader,
        "keyset" => {
            cfg.pagination = PaginationConfig::Keyset {
                param: "starting_after".into(),
                from_record: "id".into(),
                has_more: Some("has_more".into()),
                page_size: None,
            };
        }
        // CSV pages (gzip-compressed by the server): offsets, as a CSV body
        // has nothing else to page by.
        "csv_gzip" => {
            cfg.query.clear();
            cfg.format = BodyFormat::Csv;
            cfg.records = "$".into();
            cfg.pagination = PaginationConfig::OffsetLimit {
                offset_param: "offset".into(),
                limit_param: "limit".into(),
                limit: 100,
            };
        }
        // JSON pages compressed with zstd.
        "cursor_zstd" => {}
        other => panic!("unknown style {other}"),
    }
    // 20 pages take at least two seconds: the stops land mid-walk even when
    // the machine is busy with other tests.
    cfg.rate_limit = RateLimitConfig {
        requests_per_sec: Some(10.0),
        ..RateLimitConfig::default()
    };
    cfg
}

/// Waits (bounded) until `done` holds for the pipeline's progress.
async fn wait_for(pipeline: &Pipeline, what: &str, done: impl Fn(&Progress) -> bool) -> Progress {
    harness::until_progress(
        pipeline,
        what,
        Duration::from_secs(90),
        Duration::from_millis(10),
        done,
    )
    .await
}

async fn restarts_lose_and_duplicate_nothing(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::DemoServer::start(DemoConfig {
        total: TOTAL,
        faults: FaultConfig {
            slow_rate: 0.5,
            slow_ms: 150,
            ..FaultConfig::default()
        },
        seed: 11,
        csv: kind.starts_with("csv"),
        content_encoding: kind
            .rsplit_once('_')
            .and_then(|(_, coding)| matches!(coding, "gzip" | "zstd").then(|| coding.to_string())),
        ..DemoConfig::default()
    })
    .await;
    let mut config = common::config(dir.path(), &demo.url);
    config.sources = vec![style(&demo.url, kind)];
    let settings = config.validate().unwrap();

    // 1. Stop between pages, a few pages in.
    let pipeline = harness::start_embedded(&settings).await;
    let first = wait_for(&pipeline, "first pages", |p| p.fetched >= 300).await;
    pipeline.shutdown().await;
    assert!(first.fetched < TOTAL, "{kind}: stopped too late: {first:?}");

    // 2. Start on the same data; kill the fetcher while a page is in flight,
    //    then stop everything.
    let pipeline = harness::start_embedded(&settings).await;
    // Two more pages than the first run saved (not a fixed count: the
    // first stop may land late on a busy machine).
    let more = first.fetched + 200;
    wait_for(&pipeline, "more pages", |p| p.fetched >= more).await;
    // Kill it while it works on a page of a walk it has not finished, by
    // its own published status (not a progress read, which can lag).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let snapshot = pipeline.root.snapshot();
        let fetcher = snapshot.find(FETCHER).expect("fetcher node");
        let status: FetcherStatus =
            serde_json::from_value(fetcher.observed.clone()).unwrap_or_default();
        if fetcher.busy && !status.caught_up && status.records_total < TOTAL {
            pipeline.root.kill(FETCHER).unwrap();
            break;
        }
        assert!(
            Instant::now() < deadline && !status.caught_up,
            "{kind}: the fetcher finished its walk before it could be killed: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pipeline.shutdown().await;

    // 3. Start again and run until everything is curated.
    let pipeline = harness::start_embedded(&settings).await;
    let end = wait_for(&pipeline, "all curated", |p| {
        p.fetched >= TOTAL && p.idle(1)
    })
    .await;
    pipeline.shutdown().await;
    // Each restart resumed from the stored cursor: at most the page in
    // flight at each stop went to the hub twice (a walk from the start
    // would add hundreds).
    assert!(
        (TOTAL..=TOTAL + 200).contains(&end.in_hub),
        "{kind}: {end:?}"
    );

    assert_eq!(common::counts(&settings).await, (TOTAL, TOTAL), "{kind}");
    demo.stop().await;
}

/// One test per style, each holding the heavy-test lock.
macro_rules! restart_tests {
    ($($name:ident => $kind:literal),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let _heavy = common::exclusive().await;
            restarts_lose_and_duplicate_nothing($kind).await;
        }
    )*};
}

restart_tests! {
    restart_with_cursor_pagination => "cursor",
    restart_with_offset_limit_pagination => "offset_limit",
    restart_with_page_number_pagination => "page_number",
    restart_with_next_url_pagination => "next_url",
    restart_with_link_header_pagination => "link_header",
    restart_with_keyset_pagination => "keyset",
    restart_with_csv_bodies_gzip_compressed => "csv_gzip",
    restart_with_zstd_compressed_bodies => "cursor_zstd",
    restart_with_cursor_pagination_and_a_watermark => "cursor_watermark",
}
