//! The HTTP source against real HTTP servers on loopback: the demo API with
//! faults, small handlers for each pagination style and each way a response
//! can go wrong, authentication, and secret redaction.

use crate::common::server::TestServer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hubflow::demo::{DemoConfig, FaultConfig, demo_source_config};
use hubflow::source::{
    AuthConfig, BodyFormat, HttpSource, HttpSourceConfig, PaginationConfig, SecretString,
};
use hubflow_actors::ports::{Page, Source, SourceCursor, SourceError, SourceRecord};
use serde_json::{Value, json};

fn config(name: &str, url: String, pagination: PaginationConfig) -> HttpSourceConfig {
    let mut config = HttpSourceConfig::new(name, url);
    config.id_field = Some("id".into());
    config.pagination = pagination;
    config.timeout_ms = 5_000;
    config.max_response_bytes = 1024 * 1024;
    config
}

#[derive(Debug, Default)]
struct Walk {
    records: Vec<SourceRecord>,
    cursor: SourceCursor,
    transient: Vec<(String, Option<Duration>)>,
    bad: Vec<String>,
    calls: u32,
}

impl Walk {
    fn ids(&self) -> Vec<String> {
        self.records.iter().map(|r| r.id.clone()).collect()
    }
}

/// Drives `fetch` the way the fetcher does, until the source is caught up:
/// transient errors and unskippable bad responses are retried (after a short
/// pause: the fetcher's real waits are its business), skippable ones skipped.
async fn walk(source: &HttpSource, cursor: SourceCursor, max_calls: u32) -> Walk {
    let mut w = Walk {
        cursor,
        ..Default::default()
    };
    loop {
        assert!(
            w.calls < max_calls,
            "not caught up after {max_calls} calls: {w:?}"
        );
        w.calls += 1;
        match source.fetch(&w.cursor).await {
            Ok(Page {
                records,
                next,
                caught_up,
                ..
            }) => {
                w.records.extend(records);
                w.cursor = next;
                if caught_up {
                    return w;
                }
            }
            Err(SourceError::Transient {
                message,
                retry_after,
                ..
            }) => {
                w.transient.push((message, retry_after));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(SourceError::BadResponse(letter, skip)) => {
                w.bad.push(letter.reason.clone());
                if let Some(next) = skip {
                    w.cursor = next;
                } else {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Err(e @ SourceError::Fatal { .. }) => panic!("fatal: {e}"),
        }
    }
}

fn demo_ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("evt-{i:08}")).collect()
}

// ---------------------------------------------------------------- demo API

#[tokio::test]
async fn demo_api_with_faults_delivers_every_record_once_in_order() {
    let demo = DemoConfig {
        total: 10_000,
        faults: FaultConfig {
            error_rate: 0.08,
            throttle_rate: 0.05,
            slow_rate: 0.05,
            slow_ms: 20,
            truncate_rate: 0.08,
            garbage_rate: 0.06,
            rate_limit_per_sec: None,
            not_object_every: None,
        },
        seed: 42,
        ..DemoConfig::default()
    };
    let server = TestServer::demo(demo).await;
    let source = HttpSource::from_config(&demo_source_config(&server.base)).unwrap();
    let w = walk(&source, SourceCursor::default(), 2_000).await;
    assert_eq!(w.ids(), demo_ids(0..10_000));
    for r in w.records.iter().step_by(997) {
        let payload: Value = serde_json::from_slice(&r.payload).unwrap();
        let i: u64 = r.id[4..].parse().unwrap();
        assert_eq!(payload, hubflow::demo::demo_record(i));
    }
    assert!(
        w.transient
            .iter()
            .any(|(_, after)| *after == Some(Duration::from_secs(1))),
        "throttles seen"
    );
    assert!(
        w.transient.iter().any(|(m, _)| m.contains("500")),
        "500s seen: {:?}",
        w.transient
    );
    assert!(
        w.bad.iter().any(|r| r.contains("truncated")),
        "truncations seen: {:?}",
        w.bad
    );
    assert!(w.bad.len() >= 5, "garbage seen: {:?}", w.bad);

    // Caught up: polling again returns nothing new, and no duplicates.
    let again = walk(&source, w.cursor.clone(), 50).await;
    assert!(again.records.is_empty(), "{:?}", again.ids());
    server.shutdown().await;
}

#[tokio::test]
async fn demo_api_records_appearing_over_time_arrive_exactly_once() {
    let server = TestServer::demo(DemoConfig {
        total: 300,
        rate_per_sec: Some(3000.0),
        default_page_size: 40,
        ..DemoConfig::default()
    })
    .await;
    let mut cfg = demo_source_config(&server.base);
    cfg.query.insert("limit".into(), "40".into());
    let source = HttpSource::from_config(&cfg).unwrap();
    let mut cursor = SourceCursor::default();
    let mut ids = Vec::new();
    for _ in 0..500 {
        let w = walk(&source, cursor, 100).await;
        ids.extend(w.ids());
        cursor = w.cursor;
        if ids.len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ids, demo_ids(0..300));
    server.shutdown().await;
}

#[tokio::test]
async fn demo_api_serves_every_pagination_style() {
    let server = TestServer::demo(DemoConfig {
        total: 250,
        ..DemoConfig::default()
    })
    .await;
    let url = format!("{}/v1/events", server.base);
    let styles = [
        PaginationConfig::PageNumber {
            param: "page".into(),
            start: 1,
            size_param: Some("per_page".into()),
            size: 30,
        },
        PaginationConfig::OffsetLimit {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 30,
        },
        PaginationConfig::Cursor {
            param: "cursor".into(),
            from: "next_cursor".into(),
        },
        PaginationConfig::NextUrl {
            from: "next_url".into(),
        },
        PaginationConfig::LinkHeader,
    ];
    for style in styles {
        let mut cfg = config("demo", url.clone(), style.clone());
        cfg.records = "data".into();
        let source = HttpSource::from_config(&cfg).unwrap();
        let w = walk(&source, SourceCursor::default(), 100).await;
        assert_eq!(w.ids(), demo_ids(0..250), "{style:?}");
        assert!(
            w.transient.is_empty() && w.bad.is_empty(),
            "{style:?}: {w:?}"
        );
    }
    server.shutdown().await;
}

async fn one_fetch(
    faults: FaultConfig,
    timeout_ms: u64,
    seed: u64,
    calls: usize,
) -> Vec<SourceError> {
    let server = TestServer::demo(DemoConfig {
        total: 50,
        faults,
        seed,
        ..DemoConfig::default()
    })
    .await;
    let mut cfg = demo_source_config(&server.base);
    cfg.timeout_ms = timeout_ms;
    let source = HttpSource::from_config(&cfg).unwrap();
    let mut errors = Vec::new();
    for _ in 0..calls {
        errors.push(
            source
                .fetch(&SourceCursor::default())
                .await
                .expect_err("every request is faulty"),
        );
    }
    server.shutdown().await;
    errors
}

/// A 500: transient, no retry hint.
#[tokio::test]
async fn demo_fault_server_errors_are_transient_without_a_retry_hint() {
    let errors = one_fetch(
        FaultConfig {
            error_rate: 1.0,
            ..Default::default()
        },
        5_000,
        1,
        2,
    )
    .await;
    for e in errors {
        assert!(
            matches!(&e, SourceError::Transient { retry_after: None, message, .. } if message.contains("500")),
            "{e}"
        );
    }
}

/// A 429: transient, retried after its Retry-After.
#[tokio::test]
async fn demo_fault_throttling_is_transient_with_the_retry_after_hint() {
    let errors = one_fetch(
        FaultConfig {
            throttle_rate: 1.0,
            ..Default::default()
        },
        5_000,
        1,
        2,
    )
    .await;
    for e in errors {
        assert!(
            matches!(&e, SourceError::Transient { retry_after: Some(d), message, .. } if *d == Duration::from_secs(1) && message.contains("429")),
            "{e}"
        );
    }
}

/// A response slower than the timeout: transient.
#[tokio::test]
async fn demo_fault_a_response_slower_than_the_timeout_is_transient() {
    let errors = one_fetch(
        FaultConfig {
            slow_rate: 1.0,
            slow_ms: 3_000,
            ..Default::default()
        },
        150,
        1,
        1,
    )
    .await;
    assert!(
        matches!(&errors[0], SourceError::Transient { .. }),
        "{}",
        errors[0]
    );
}

/// Truncated bodies (JSON and transfer): bad responses naming the request,
/// which cannot be skipped on a cursor walk.
#[tokio::test]
async fn demo_fault_truncated_bodies_are_bad_responses_that_cannot_be_skipped() {
    let errors = one_fetch(
        FaultConfig {
            truncate_rate: 1.0,
            ..Default::default()
        },
        5_000,
        3,
        10,
    )
    .await;
    let mut reasons = Vec::new();
    for e in errors {
        let SourceError::BadResponse(letter, skip) = e else {
            panic!("{e}")
        };
        assert!(skip.is_none(), "a truncated cursor page cannot be skipped");
        assert!(letter.reason.contains("truncated"), "{}", letter.reason);
        assert!(
            letter.request.starts_with("GET http://127.0.0.1:"),
            "{}",
            letter.request
        );
        reasons.push(letter.reason.clone());
    }
    assert!(
        reasons.iter().any(|r| r.starts_with("truncated json")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("truncated body")),
        "{reasons:?}"
    );
}

/// Garbage bodies (wrong content type, malformed JSON, `data` null): bad
/// responses that keep the body.
#[tokio::test]
async fn demo_fault_garbage_bodies_are_bad_responses_that_keep_the_body() {
    let errors = one_fetch(
        FaultConfig {
            garbage_rate: 1.0,
            ..Default::default()
        },
        5_000,
        5,
        12,
    )
    .await;
    let mut reasons = Vec::new();
    for e in errors {
        let SourceError::BadResponse(letter, None) = e else {
            panic!("{e}")
        };
        assert!(!letter.body.is_empty());
        reasons.push(letter.reason.clone());
    }
    assert!(
        reasons.iter().any(|r| r.contains("content type")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("malformed json")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("`data` is null")),
        "{reasons:?}"
    );
}

// ------------------------------------------------------ pagination styles

/// A growing list of records `{"id": "r<i>", "n": i}` served in every style.
#[derive(Clone, Default)]
struct Items(Arc<Mutex<Vec<Value>>>);

impl Items {
    fn push(&self, count: usize) {
        let mut items = self.0.lock().unwrap();
        for _ in 0..count {
            let i = items.len();
            items.push(json!({"id": format!("r{i}"), "n": i}));
        }
    }

    fn slice(&self, start: usize, len: usize) -> (Vec<Value>, bool) {
        let items = self.0.lock().unwrap();
        let start = start.min(items.len());
        let end = (start + len).min(items.len());
        (items[start..end].to_vec(), end < items.len())
    }
}

fn params(query: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn num(p: &HashMap<String, String>, key: &str, default: usize) -> usize {
    p.get(key).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn json_response(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn page_style(State(items): State<Items>, RawQuery(q): RawQuery) -> Response {
    let p = params(q);
    let size = num(&p, "size", 10);
    let (data, _) = items.slice((num(&p, "page", 1) - 1) * size, size);
    json_response(json!({ "items": data }))
}

async fn offset_style(State(items): State<Items>, RawQuery(q): RawQuery) -> Response {
    let p = params(q);
    let (data, _) = items.slice(num(&p, "offset", 0), num(&p, "limit", 10));
    json_response(json!(data))
}

async fn cursor_style(State(items): State<Items>, RawQuery(q): RawQuery) -> Response {
    let p = params(q);
    let start = p
        .get("after")
        .and_then(|c| c.strip_prefix('c'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let (data, more) = items.slice(start, 4);
    let next = more.then(|| format!("c{}", start + data.len()));
    json_response(json!({ "data": data, "meta": { "next": next } }))
}

/// Stripe-like keyset: `?starting_after=r<N>` gives the items after r<N>,
/// `has_more` says whether more exist now.
async fn keyset_style(State(items): State<Items>, RawQuery(q): RawQuery) -> Response {
    let p = params(q);
    let start = p
        .get("starting_after")
        .and_then(|c| c.strip_prefix('r'))
        .and_then(|n| n.parse::<usize>().ok())
        .map_or(0, |n| n + 1);
    let (data, more) = items.slice(start, 4);
    json_response(json!({ "object": "list", "data": data, "has_more": more }))
}

async fn next_style(State(items): State<Items>, RawQuery(q): RawQuery) -> Response {
    let start = num(&params(q), "start", 0);
    let (data, more) = items.slice(start, 4);
    let next = more.then(|| format!("/next?start={}", start + data.len()));
    json_response(json!({ "results": data, "links": { "next": next } }))
}

async fn link_style(
    State(items): State<Items>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let start = num(&params(q), "start", 0);
    let (data, more) = items.slice(start, 4);
    let mut response = json_response(json!(data));
    if more {
        let host = headers[header::HOST].to_str().unwrap().to_string();
        let link = format!(
            r#"<http://{host}/link?start={}>; rel="next", <http://{host}/link>; rel="first""#,
            start + data.len()
        );
        response
            .headers_mut()
            .insert(header::LINK, link.parse().unwrap());
    }
    response
}

async fn ndjson_style(State(items): State<Items>, RawQuery(q): RawQuery) -> Response {
    let p = params(q);
    let (data, _) = items.slice(num(&p, "offset", 0), num(&p, "limit", 10));
    let body: String = data.iter().map(|v| format!("{v}\n")).collect();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

fn item_ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("r{i}")).collect()
}

/// A source config for every route of the styles' server at `b`.
fn style_configs(b: &str) -> Vec<HttpSourceConfig> {
    let mut cases = Vec::new();
    let mut page = config(
        "page",
        format!("{b}/page"),
        PaginationConfig::PageNumber {
            param: "page".into(),
            start: 1,
            size_param: Some("size".into()),
            size: 4,
        },
    );
    page.records = "items".into();
    cases.push(page);
    cases.push(config(
        "offset",
        format!("{b}/offset"),
        PaginationConfig::OffsetLimit {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 4,
        },
    ));
    let mut cursor = config(
        "cursor",
        format!("{b}/cursor"),
        PaginationConfig::Cursor {
            param: "after".into(),
            from: "meta.next".into(),
        },
    );
    cursor.records = "data".into();
    cases.push(cursor);
    let mut keyset = config(
        "keyset",
        format!("{b}/keyset"),
        PaginationConfig::Keyset {
            param: "starting_after".into(),
            from_record: "id".into(),
            has_more: Some("has_more".into()),
            page_size: None,
        },
    );
    keyset.records = "data".into();
    cases.push(keyset);
    // Without the body flag: a page shorter than page_size is the last.
    let mut keyset_short = config(
        "keyset-short",
        format!("{b}/keyset"),
        PaginationConfig::Keyset {
            param: "starting_after".into(),
            from_record: "id".into(),
            has_more: None,
            page_size: Some(4),
        },
    );
    keyset_short.records = "data".into();
    cases.push(keyset_short);
    let mut next = config(
        "next",
        format!("{b}/next"),
        PaginationConfig::NextUrl {
            from: "links.next".into(),
        },
    );
    next.records = "results".into();
    cases.push(next);
    cases.push(config(
        "link",
        format!("{b}/link"),
        PaginationConfig::LinkHeader,
    ));
    let mut ndjson = config(
        "ndjson",
        format!("{b}/ndjson"),
        PaginationConfig::OffsetLimit {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 4,
        },
    );
    ndjson.format = BodyFormat::Ndjson;
    cases.push(ndjson);
    cases
}

#[tokio::test]
async fn every_pagination_style_walks_and_picks_up_appended_records() {
    let items = Items::default();
    let app = Router::new()
        .route("/page", get(page_style))
        .route("/offset", get(offset_style))
        .route("/cursor", get(cursor_style))
        .route("/keyset", get(keyset_style))
        .route("/next", get(next_style))
        .route("/link", get(link_style))
        .route("/ndjson", get(ndjson_style))
        .with_state(items.clone());
    let server = TestServer::router(app).await;
    let cases = style_configs(&server.base);

    items.push(10);
    let sources: Vec<HttpSource> = cases
        .iter()
        .map(|c| HttpSource::from_config(c).unwrap())
        .collect();
    let mut cursors = Vec::new();
    for source in &sources {
        let w = walk(source, SourceCursor::default(), 20).await;
        assert_eq!(w.ids(), item_ids(0..10), "{}", source.name());
        assert!(
            w.bad.is_empty() && w.transient.is_empty(),
            "{}: {w:?}",
            source.name()
        );
        // Polling a caught-up source again yields nothing.
        let idle = walk(source, w.cursor.clone(), 5).await;
        assert!(
            idle.records.is_empty(),
            "{}: {:?}",
            source.name(),
            idle.ids()
        );
        cursors.push(idle.cursor);
    }
    items.push(7);
    for (source, cursor) in sources.iter().zip(cursors) {
        let w = walk(source, cursor, 20).await;
        assert_eq!(w.ids(), item_ids(10..17), "{} after growth", source.name());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn flags_and_max_pages_per_poll_end_a_poll() {
    let items = Items::default();
    items.push(12);
    let app = Router::new()
        .route(
            "/flagged",
            get(
                |State(items): State<Items>, RawQuery(q): RawQuery| async move {
                    let start = num(&params(q), "offset", 0);
                    let (data, more) = items.slice(start, 4);
                    json_response(json!({ "data": data, "paging": { "more": more } }))
                },
            ),
        )
        .with_state(items);
    let server = TestServer::router(app).await;
    let mut cfg = config(
        "flagged",
        format!("{}/flagged", server.base),
        PaginationConfig::OffsetLimit {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 4,
        },
    );
    cfg.records = "data".into();
    cfg.has_more_flag = Some("paging.more".into());
    let source = HttpSource::from_config(&cfg).unwrap();
    // 12 records in pages of 4: the third page is full but says no more.
    let w = walk(&source, SourceCursor::default(), 10).await;
    assert_eq!((w.ids(), w.calls), (item_ids(0..12), 3));

    cfg.has_more_flag = None;
    cfg.max_pages_per_poll = Some(2);
    let source = HttpSource::from_config(&cfg).unwrap();
    let first = walk(&source, SourceCursor::default(), 10).await;
    assert_eq!(first.ids(), item_ids(0..8), "stops after two pages");
    let rest = walk(&source, first.cursor, 10).await;
    assert_eq!(rest.ids(), item_ids(8..12));
    server.shutdown().await;
}

// ------------------------------------------------- classification details

async fn fetch_from(
    app: Router,
    path: &str,
    edit: impl FnOnce(&mut HttpSourceConfig),
) -> Result<Page, SourceError> {
    let server = TestServer::router(app).await;
    let mut cfg = config(
        "edge",
        format!("{}{path}", server.base),
        PaginationConfig::OffsetLimit {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 3,
        },
    );
    edit(&mut cfg);
    let source = HttpSource::from_config(&cfg).unwrap();
    let result = source.fetch(&SourceCursor::default()).await;
    server.shutdown().await;
    result
}

fn bad(result: Result<Page, SourceError>) -> (String, Option<SourceCursor>) {
    match result {
        Err(SourceError::BadResponse(letter, skip)) => (letter.reason, skip),
        other => panic!("expected a bad response, got {other:?}"),
    }
}

#[tokio::test]
async fn unusable_responses_are_bad_responses() {
    let html = Router::new().route(
        "/x",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "text/html")],
                "<html>maintenance</html>",
            )
        }),
    );
    let (reason, skip) = bad(fetch_from(html, "/x", |_| {}).await);
    assert!(
        reason.contains("content type") && skip.is_none(),
        "{reason}"
    );

    let wrong_path = Router::new().route(
        "/x",
        get(|| async { json_response(json!({"error": "nope"})) }),
    );
    let (reason, _) = bad(fetch_from(wrong_path, "/x", |c| c.records = "data.items".into()).await);
    assert_eq!(reason, "no records at `data.items`");

    let big = || {
        json_response(json!(
            (0..500)
                .map(|i| json!({"id": i, "pad": "x".repeat(50)}))
                .collect::<Vec<_>>()
        ))
    };
    let big_app = Router::new().route("/x", get(move || async move { big() }));
    let (reason, skip) =
        bad(fetch_from(big_app.clone(), "/x", |c| c.max_response_bytes = 1000).await);
    assert!(reason.contains("max_response_bytes"), "{reason}");
    // Offsets can step over a page that will never fit.
    assert_eq!(skip, Some(SourceCursor(json!({"offset": 3}))));
    let (_, skip) = bad(fetch_from(big_app, "/x", |c| {
        c.max_response_bytes = 1000;
        c.pagination = PaginationConfig::Cursor {
            param: "c".into(),
            from: "next".into(),
        };
    })
    .await);
    assert_eq!(
        skip, None,
        "a cursor page that cannot be read cannot be skipped"
    );

    // Streamed without Content-Length: reading stops at the limit.
    let chunked = Router::new().route(
        "/x",
        get(|| async {
            let chunks = (0..1000)
                .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[b' '; 1024])));
            let mut r =
                axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response();
            r.headers_mut()
                .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
            r
        }),
    );
    let server = TestServer::router(chunked).await;
    let mut cfg = config("edge", format!("{}/x", server.base), PaginationConfig::None);
    cfg.max_response_bytes = 10_000;
    let source = HttpSource::from_config(&cfg).unwrap();
    match source.fetch(&SourceCursor::default()).await {
        Err(SourceError::BadResponse(letter, _)) => assert_eq!(letter.body.len(), 10_000),
        other => panic!("{other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn keyset_pages_without_a_cursor_field_or_empty_with_has_more_are_bad_responses() {
    let keyset = |c: &mut HttpSourceConfig| {
        c.records = "data".into();
        c.pagination = PaginationConfig::Keyset {
            param: "starting_after".into(),
            from_record: "id".into(),
            has_more: Some("has_more".into()),
            page_size: None,
        };
    };
    let no_id = Router::new().route(
        "/x",
        get(|| async {
            json_response(json!({"data": [{"id": "a"}, {"name": "no id"}], "has_more": true}))
        }),
    );
    let (reason, skip) = bad(fetch_from(no_id, "/x", keyset).await);
    assert!(
        reason.contains("last record") && reason.contains("`id`"),
        "{reason}"
    );
    assert_eq!(skip, None, "a keyset position cannot be guessed");
    let empty_more = Router::new().route(
        "/x",
        get(|| async { json_response(json!({"data": [], "has_more": true})) }),
    );
    let (reason, _) = bad(fetch_from(empty_more, "/x", keyset).await);
    assert!(
        reason.contains("has_more") && reason.contains("empty"),
        "{reason}"
    );
    // The flag given twice is a config error naming the field.
    let mut twice = config(
        "twice",
        "http://127.0.0.1:9/x".into(),
        PaginationConfig::None,
    );
    keyset(&mut twice);
    twice.has_more_flag = Some("more".into());
    let err = match twice.validate() {
        Ok(_) => panic!("a flag given twice was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("pagination.has_more"), "{err}");
}

#[tokio::test]
async fn repeated_pages_and_stuck_cursors_are_bad_responses() {
    // A server that ignores the offset: the second page repeats the first.
    let app = Router::new().route(
        "/x",
        get(|| async { json_response(json!([{"id": 1}, {"id": 2}, {"id": 3}])) }),
    );
    let server = TestServer::router(app).await;
    let cfg = config(
        "same",
        format!("{}/x", server.base),
        PaginationConfig::OffsetLimit {
            offset_param: "offset".into(),
            limit_param: "limit".into(),
            limit: 3,
        },
    );
    let source = HttpSource::from_config(&cfg).unwrap();
    let page = source.fetch(&SourceCursor::default()).await.unwrap();
    assert!(!page.caught_up);
    let (reason, skip) = bad(source.fetch(&page.next).await);
    assert!(reason.contains("identical") && skip.is_none(), "{reason}");
    server.shutdown().await;

    // A server that hands back the cursor it was given.
    let app = Router::new().route(
        "/x",
        get(|| async { json_response(json!({"data": [{"id": "a"}], "next": "same"})) }),
    );
    let server = TestServer::router(app).await;
    let mut cfg = config(
        "stuck",
        format!("{}/x", server.base),
        PaginationConfig::Cursor {
            param: "c".into(),
            from: "next".into(),
        },
    );
    cfg.records = "data".into();
    let source = HttpSource::from_config(&cfg).unwrap();
    let page = source.fetch(&SourceCursor::default()).await.unwrap();
    assert_eq!(
        page.next,
        SourceCursor(json!({"cursor": "same", "prev": page.next.0["prev"].clone()}))
    );
    let (reason, skip) = bad(source.fetch(&page.next).await);
    assert!(
        reason.contains("equals the requested") && skip.is_none(),
        "{reason}"
    );
    server.shutdown().await;

    // A next URL pointing at another origin is not followed (our credentials
    // would go with it).
    let app = Router::new().route(
        "/x",
        get(|| async {
            json_response(json!({"data": [{"id": "a"}], "next": "http://evil.example/steal"}))
        }),
    );
    let (reason, _) = bad(fetch_from(app, "/x", |c| {
        c.records = "data".into();
        c.pagination = PaginationConfig::NextUrl {
            from: "next".into(),
        };
    })
    .await);
    assert!(reason.contains("origin"), "{reason}");
}

#[tokio::test]
async fn statuses_map_to_error_classes() {
    let app = Router::new()
        .route(
            "/busy",
            get(|| async {
                let when = (chrono::Utc::now() + chrono::Duration::seconds(30))
                    .to_rfc2822()
                    .replace("+0000", "GMT");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, when)],
                    "busy",
                )
            }),
        )
        .route("/gone", get(|| async { StatusCode::NOT_FOUND }))
        .route("/teapot", get(|| async { StatusCode::BAD_GATEWAY }));
    let server = TestServer::router(app).await;
    let source = |path: &str| {
        let mut cfg = config(
            "status",
            format!("{}{path}", server.base),
            PaginationConfig::None,
        );
        cfg.auth = AuthConfig::ApiKey {
            header: None,
            query: Some("key".into()),
            value: SecretString::literal("k3y-VALUE"),
        };
        HttpSource::from_config(&cfg).unwrap()
    };
    match source("/busy").fetch(&SourceCursor::default()).await {
        Err(SourceError::Transient {
            retry_after: Some(d),
            message,
            ..
        }) => {
            assert!(
                d > Duration::from_secs(25) && d <= Duration::from_secs(31),
                "{d:?}"
            );
            assert!(message.contains("503"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        source("/teapot").fetch(&SourceCursor::default()).await,
        Err(SourceError::Transient {
            retry_after: None,
            ..
        })
    ));
    match source("/gone").fetch(&SourceCursor::default()).await {
        Err(e @ SourceError::Fatal { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("404") && text.contains("/gone") && text.contains("key=***"),
                "{text}"
            );
            assert!(!text.contains("k3y-VALUE"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    server.shutdown().await;

    // Nothing listening: a connect error, transient, without the key.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = config(
        "down",
        format!("http://127.0.0.1:{port}/x"),
        PaginationConfig::None,
    );
    cfg.auth = AuthConfig::ApiKey {
        header: None,
        query: Some("key".into()),
        value: SecretString::literal("k3y-VALUE"),
    };
    match HttpSource::from_config(&cfg)
        .unwrap()
        .fetch(&SourceCursor::default())
        .await
    {
        Err(e @ SourceError::Transient { .. }) => {
            assert!(!format!("{e} {e:?}").contains("k3y-VALUE"), "{e:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn ids_come_from_the_id_field_or_a_content_hash() {
    let app = Router::new().route(
        "/x",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"[{"b":1,"a":2},{"a":2,"b":1},{"uid":7},{"uid":"x"}]"#,
            )
        }),
    );
    let page = fetch_from(app.clone(), "/x", |c| {
        c.id_field = None;
        c.pagination = PaginationConfig::None;
    })
    .await
    .unwrap();
    assert_eq!(page.records.len(), 4);
    assert_eq!(
        page.records[0].id, page.records[1].id,
        "key order does not change the hash"
    );
    assert_eq!(page.records[0].id.len(), 32);
    assert_ne!(page.records[0].id, page.records[2].id);
    assert_eq!(
        page.records[0].payload.as_ref(),
        br#"{"b":1,"a":2}"#,
        "payload keeps the server's order"
    );

    let page = fetch_from(app, "/x", |c| {
        c.id_field = Some("uid".into());
        c.pagination = PaginationConfig::None;
    })
    .await
    .unwrap();
    assert_eq!(page.records[2].id, "7");
    assert_eq!(page.records[3].id, "x");
    assert_eq!(
        page.records[0].id.len(),
        32,
        "records without the field fall back to the hash"
    );
}

// ------------------------------------------------------ auth and secrets

/// A request as a handler saw it: headers and query parameters.
type SeenRequest = (HeaderMap, HashMap<String, String>);

/// Records the auth-relevant parts of every request it gets.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<SeenRequest>>>);

async fn record_request(
    State(seen): State<Seen>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = params(q);
    seen.0.lock().unwrap().push((headers, p.clone()));
    let start = num(&p, "start", 0);
    // Two pages; the next URL echoes the API key back, as some APIs do.
    let next = (start == 0).then(|| {
        format!(
            "/r?start=1&api_key={}",
            p.get("api_key").cloned().unwrap_or_default()
        )
    });
    json_response(json!({ "data": [{"id": format!("a{start}")}], "next": next }))
}

#[tokio::test]
async fn auth_reaches_the_server_and_never_the_cursor() {
    let seen = Seen::default();
    let app = Router::new()
        .route("/r", get(record_request))
        .with_state(seen.clone());
    let server = TestServer::router(app).await;
    let base = config(
        "auth",
        format!("{}/r", server.base),
        PaginationConfig::NextUrl {
            from: "next".into(),
        },
    );
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "file-t0ken\n").unwrap();

    let cases: Vec<(AuthConfig, &str)> = vec![
        (
            AuthConfig::Bearer {
                token: SecretString::file(token_file.path()),
            },
            "bearer",
        ),
        (
            AuthConfig::ApiKey {
                header: Some("X-Api-Key".into()),
                query: None,
                value: SecretString::literal("hdr-k3y"),
            },
            "header",
        ),
        (
            AuthConfig::ApiKey {
                header: None,
                query: Some("api_key".into()),
                value: SecretString::literal("qry-k3y"),
            },
            "query",
        ),
        (
            AuthConfig::Basic {
                username: "alice".into(),
                password: SecretString::literal("b4sic-pw"),
            },
            "basic",
        ),
    ];
    for (auth, label) in cases {
        seen.0.lock().unwrap().clear();
        let mut cfg = base.clone();
        cfg.records = "data".into();
        cfg.auth = auth;
        cfg.headers
            .insert("X-Tenant".into(), SecretString::literal("acme"));
        let source = HttpSource::from_config(&cfg).unwrap();
        let w = walk(&source, SourceCursor::default(), 5).await;
        assert_eq!(w.ids(), ["a0", "a1"], "{label}");
        let requests = seen.0.lock().unwrap().clone();
        assert_eq!(requests.len(), 2, "{label}");
        for (headers, query) in &requests {
            assert_eq!(headers["x-tenant"], "acme");
            match label {
                "bearer" => assert_eq!(headers[header::AUTHORIZATION], "Bearer file-t0ken"),
                "header" => assert_eq!(headers["x-api-key"], "hdr-k3y"),
                "query" => {
                    assert_eq!(query["api_key"], "qry-k3y");
                    assert_eq!(
                        query.len(),
                        if query.contains_key("start") { 2 } else { 1 },
                        "key sent once: {query:?}"
                    );
                }
                _ => assert_eq!(headers[header::AUTHORIZATION], "Basic YWxpY2U6YjRzaWMtcHc="),
            }
        }
        let cursor = w.cursor.0.to_string();
        for secret in ["file-t0ken", "hdr-k3y", "qry-k3y", "b4sic-pw"] {
            assert!(!cursor.contains(secret), "{label}: cursor {cursor}");
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn secrets_stay_out_of_debug_and_errors() {
    let token_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token_file.path(), "file-s3cret-token").unwrap();
    let app = Router::new()
        .route("/denied", get(|| async { StatusCode::UNAUTHORIZED }))
        .route(
            "/garbage",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], "{oops") }),
        );
    let server = TestServer::router(app).await;
    let secrets = ["file-s3cret-token", "lit-s3cret", "hdr-s3cret"];
    for (path, auth) in [
        (
            "/denied",
            AuthConfig::Bearer {
                token: SecretString::file(token_file.path()),
            },
        ),
        (
            "/denied",
            AuthConfig::ApiKey {
                header: None,
                query: Some("token".into()),
                value: SecretString::literal("lit-s3cret"),
            },
        ),
        (
            "/garbage",
            AuthConfig::ApiKey {
                header: None,
                query: Some("k".into()),
                value: SecretString::literal("lit-s3cret"),
            },
        ),
        (
            "/denied",
            AuthConfig::Basic {
                username: "u".into(),
                password: SecretString::literal("lit-s3cret"),
            },
        ),
    ] {
        let mut cfg = config(
            "secret",
            format!("{}{path}", server.base),
            PaginationConfig::None,
        );
        cfg.auth = auth;
        cfg.headers
            .insert("X-Other".into(), SecretString::literal("hdr-s3cret"));
        let settings = cfg.validate().unwrap();
        let source = HttpSource::new(settings.clone()).unwrap();
        let error = source.fetch(&SourceCursor::default()).await.unwrap_err();
        let mut shown = vec![
            format!("{cfg:?}"),
            format!("{cfg:#?}"),
            format!("{settings:?}"),
            format!("{source:?}"),
            format!("{error}"),
            format!("{error:?}"),
            toml::to_string(&cfg).unwrap(),
        ];
        if let SourceError::BadResponse(letter, _) = &error {
            shown.push(letter.request.clone());
        }
        for text in shown {
            for secret in secrets {
                assert!(!text.contains(secret), "{secret} leaked: {text}");
            }
        }
    }
    server.shutdown().await;
}

/// Compressed answers are decoded (and their size limit applies to the
/// decoded bytes); a body that does not decode is a bad response.
#[tokio::test]
async fn gzip_and_zstd_bodies_are_decoded_and_corrupt_ones_dead_lettered() {
    for coding in ["gzip", "zstd"] {
        let server = TestServer::demo(DemoConfig {
            total: 300,
            content_encoding: Some(coding.into()),
            ..DemoConfig::default()
        })
        .await;
        let url = format!("{}/v1/events?limit=100", server.base);
        // The server really compresses (a client that does not decode sees it).
        let raw = reqwest::Client::builder()
            .no_gzip()
            .no_zstd()
            .build()
            .unwrap()
            .get(&url)
            .header(header::ACCEPT_ENCODING, coding)
            .send()
            .await
            .unwrap();
        assert_eq!(raw.headers()[header::CONTENT_ENCODING], coding);
        let source = HttpSource::from_config(&demo_source_config(&server.base)).unwrap();
        let w = walk(&source, SourceCursor::default(), 10).await;
        assert_eq!(w.ids(), demo_ids(0..300), "{coding}");
        // The limit counts decoded bytes: a small compressed page that
        // inflates past it is refused.
        let mut small = demo_source_config(&server.base);
        small.max_response_bytes = 2_000;
        let source = HttpSource::from_config(&small).unwrap();
        let (reason, _) = bad(source.fetch(&SourceCursor::default()).await);
        assert!(reason.contains("max_response_bytes"), "{coding}: {reason}");
        server.shutdown().await;
    }
    let corrupt = Router::new().route(
        "/x",
        get(|| async {
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CONTENT_ENCODING, "gzip"),
                ],
                b"\x1f\x8b\x08\x00not really gzip at all".to_vec(),
            )
        }),
    );
    let (reason, skip) = bad(fetch_from(corrupt, "/x", |_| {}).await);
    assert!(reason.contains("body"), "{reason}");
    assert!(skip.is_none(), "{reason}");
}

#[tokio::test]
async fn csv_pages_become_records_and_ragged_ones_are_bad_responses() {
    let csv = |c: &mut HttpSourceConfig| {
        c.format = BodyFormat::Csv;
        c.records = "$".into();
        c.id_field = Some("id".into());
    };
    let good = Router::new().route(
        "/x",
        get(|| async {
            (
                [(header::CONTENT_TYPE, "text/csv")],
                "id,name,qty\nA1,\"Doe, J\",3\nA2,,007\n",
            )
        }),
    );
    let page = fetch_from(good, "/x", csv).await.unwrap();
    let got: Vec<(String, Value)> = page
        .records
        .iter()
        .map(|r| (r.id.clone(), serde_json::from_slice(&r.payload).unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "A1".to_string(),
                json!({"id": "A1", "name": "Doe, J", "qty": 3})
            ),
            (
                "A2".to_string(),
                json!({"id": "A2", "name": null, "qty": "007"})
            ),
        ]
    );
    let ragged = Router::new().route(
        "/x",
        get(|| async { ([(header::CONTENT_TYPE, "text/csv")], "id,qty\nA1,3\nA2\n") }),
    );
    let (reason, _) = bad(fetch_from(ragged, "/x", csv).await);
    assert!(reason.contains("has 1 fields, the header 2"), "{reason}");
    // Body paths do not exist in a CSV body: refused at validation.
    let mut cursor = config(
        "c",
        "http://127.0.0.1:9/x".into(),
        PaginationConfig::Cursor {
            param: "c".into(),
            from: "next".into(),
        },
    );
    csv(&mut cursor);
    let err = match cursor.validate() {
        Ok(_) => panic!("cursor pagination over csv was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("csv"), "{err}");
}
