//! The built-in demo API: a small "third-party" HTTP service that the quick
//! start ingests from and the end-to-end tests hammer.
//!
//! `GET /v1/events?cursor=<n>&limit=<m>` (or `offset=` for `cursor=`, or
//! `page=<p>&per_page=<m>` from page 1, or `starting_after=<record id>` for
//! keyset pagination) answers
//! `{"data": [...], "next_cursor": "<n+m>" | null, "has_more": bool,
//! "next_url": "/v1/events?..." | null}` and a `Link: <...>; rel="next"`
//! header, so every pagination style of the HTTP source can run against it.
//! `next_cursor` is null once the page reaches the records available now;
//! records are a pure function of their index ([`demo_record`]), and can be
//! made to appear over time (`rate_per_sec`).
//!
//! Faults (500s, 429 with `Retry-After: 1`, slow answers, bodies cut
//! mid-JSON, garbage) are drawn from `(seed, request number)`, so a run is
//! reproducible; a faulty answer never changes what a correct retry returns.
//!
//! For incremental polling: `updated_since=<RFC 3339>` keeps the records
//! whose `updated_at` is at or after it (positions then count from the first
//! of those); pages carry an `ETag` and answer `If-None-Match` with `304`;
//! with `faults.rate_limit_per_sec` every answer carries `X-RateLimit-Limit`,
//! `X-RateLimit-Remaining` and `X-RateLimit-Reset` (Unix seconds), and
//! requests over the limit in one wall-clock second get `429`.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tracing::info;

use crate::source::{HttpSourceConfig, PaginationConfig, WatermarkConfig};

/// What the demo API serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Records the API will ever have.
    pub total: u64,
    /// Records appear at this rate from server start, up to `total`;
    /// `None`: all `total` are there from the start.
    pub rate_per_sec: Option<f64>,
    /// Page size when the request gives none.
    pub default_page_size: u64,
    /// Larger requested page sizes are clamped to this.
    pub max_page_size: u64,
    pub faults: FaultConfig,
    /// Seeds the fault sequence.
    pub seed: u64,
    /// Answer `text/csv` (a header row, then one flat row per record:
    /// nested values as JSON text) instead of JSON.
    pub csv: bool,
    /// Compress answers with this `Content-Encoding` (`gzip` or `zstd`)
    /// when the request accepts it.
    pub content_encoding: Option<String>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            total: 10_000,
            rate_per_sec: None,
            default_page_size: 100,
            max_page_size: 1000,
            faults: FaultConfig::default(),
            seed: 0,
            csv: false,
            content_encoding: None,
        }
    }
}

/// Share of requests (0.0..=1.0 each, at most 1.0 together) answered with
/// each fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultConfig {
    /// `500 Internal Server Error`.
    pub error_rate: f64,
    /// `429 Too Many Requests` with `Retry-After: 1`.
    pub throttle_rate: f64,
    /// A correct answer after `slow_ms`.
    pub slow_rate: f64,
    pub slow_ms: u64,
    /// A correct answer cut in the middle of its JSON (sometimes with an
    /// honest `Content-Length`, sometimes by dropping the connection).
    pub truncate_rate: f64,
    /// `200` with a body that is not the page (HTML, noise, wrong shape).
    pub garbage_rate: f64,
    /// Server-side rate limit: requests allowed per wall-clock second (the
    /// rest get `429`); absent: no limit and no rate-limit headers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    /// Every this many records, one is served as a JSON string instead of
    /// an object (records `n - 1`, `2n - 1`, ...; JSON pages; not for keyset
    /// pagination, which needs the last record's id): the source takes it,
    /// the transformer rejects it, so it becomes a `transform` dead letter.
    /// Absent: every record is an object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_object_every: Option<u64>,
}

impl FaultConfig {
    /// A mix for the quick start: enough trouble to watch retries and dead
    /// letters, little enough to keep data flowing.
    pub fn lively() -> Self {
        FaultConfig {
            error_rate: 0.03,
            throttle_rate: 0.02,
            slow_rate: 0.02,
            slow_ms: 300,
            truncate_rate: 0.02,
            garbage_rate: 0.01,
            rate_limit_per_sec: None,
            not_object_every: None,
        }
    }

    fn rates(&self) -> [(&'static str, f64); 5] {
        [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
            ("slow_rate", self.slow_rate),
            ("truncate_rate", self.truncate_rate),
            ("garbage_rate", self.garbage_rate),
        ]
    }
}

impl DemoConfig {
    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_page_size == 0 || self.max_page_size == 0 {
            return Err("default_page_size and max_page_size must be at least 1".into());
        }
        if let Some(rate) = self.rate_per_sec
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err("rate_per_sec must be a positive number".into());
        }
        let mut sum = 0.0;
        for (name, rate) in self.faults.rates() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("faults.{name} must be within 0.0..=1.0"));
            }
            sum += rate;
        }
        if sum > 1.0 + 1e-9 {
            return Err("fault rates add up to more than 1.0".into());
        }
        if self.faults.rate_limit_per_sec == Some(0) {
            return Err("faults.rate_limit_per_sec must be at least 1".into());
        }
        if self.faults.not_object_every == Some(0) {
            return Err("faults.not_object_every must be at least 1".into());
        }
        Ok(())
    }
}

/// The HTTP source config that reads the demo API at `base_url`
/// (`http://127.0.0.1:8081`): cursor pagination, 100 records a page.
pub fn demo_source_config(base_url: &str) -> HttpSourceConfig {
    let mut config = HttpSourceConfig::new(
        "demo",
        format!("{}/v1/events", base_url.trim_end_matches('/')),
    );
    config.query.insert("limit".to_string(), "100".to_string());
    config.records = "data".into();
    config.id_field = Some("id".into());
    config.pagination = PaginationConfig::Cursor {
        param: "cursor".into(),
        from: "next_cursor".into(),
    };
    config.timeout_ms = 10_000;
    config.max_response_bytes = 8 * 1024 * 1024;
    config
}

/// [`demo_source_config`] polling incrementally: each poll sends
/// `updated_since` = the largest `updated_at` delivered so far (the demo
/// filters inclusively, so the record at the watermark comes again and the
/// transformer drops it).
pub fn demo_incremental_source_config(base_url: &str) -> HttpSourceConfig {
    let mut config = demo_source_config(base_url);
    config.watermark = Some(WatermarkConfig {
        field: Some("updated_at".into()),
        from: None,
        param: "updated_since".into(),
        initial: None,
    });
    config
}

/// Serves the demo API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: DemoConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    config.validate().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("demo config: {e}"),
        )
    })?;
    let addr = listener.local_addr()?;
    info!(%addr, total = config.total, "demo api listening");
    axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The demo API's routes, for embedding in another server.
pub fn router(config: DemoConfig) -> Router {
    let demo = Arc::new(Demo {
        config,
        started: Instant::now(),
        requests: AtomicU64::new(0),
        window: Mutex::new((0, 0)),
    });
    Router::new()
        .route("/v1/events", get(events))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(demo)
}

struct Demo {
    config: DemoConfig,
    started: Instant,
    requests: AtomicU64,
    /// Rate limit window: (Unix second, requests in it).
    window: Mutex<(i64, u32)>,
}

impl Demo {
    /// Records available now.
    fn available(&self) -> u64 {
        match self.config.rate_per_sec {
            None => self.config.total,
            Some(rate) => {
                let grown = (self.started.elapsed().as_secs_f64() * rate).floor();
                // `as` saturates for floats; clamp to the total.
                (grown as u64).min(self.config.total)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Error,
    Throttle,
    Slow,
    Truncate,
    Garbage,
}

/// The fault (if any) for request number `n`, and spare random bits.
fn fault_for(seed: u64, n: u64, faults: &FaultConfig) -> (Option<Fault>, u64) {
    let bits = splitmix64(seed ^ splitmix64(n));
    let draw = (bits >> 11) as f64 / (1u64 << 53) as f64;
    let kinds = [
        Fault::Error,
        Fault::Throttle,
        Fault::Slow,
        Fault::Truncate,
        Fault::Garbage,
    ];
    let mut edge = 0.0;
    for (kind, (_, rate)) in kinds.into_iter().zip(faults.rates()) {
        edge += rate;
        if draw < edge {
            return (Some(kind), splitmix64(bits));
        }
    }
    (None, splitmix64(bits))
}

fn error_body(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": message }).to_string(),
    )
        .into_response()
}

async fn events(
    State(demo): State<Arc<Demo>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(limit) = demo.config.faults.rate_limit_per_sec else {
        return answer(&demo, query, headers).await;
    };
    let now = chrono::Utc::now();
    let second = now.timestamp();
    let used = {
        let mut window = demo.window.lock().unwrap_or_else(|p| p.into_inner());
        if window.0 != second {
            *window = (second, 0);
        }
        window.1 = window.1.saturating_add(1);
        window.1
    };
    let mut response = if used > limit {
        metrics::counter!("hubflow_demo_requests_total", "outcome" => "rate_limited").increment(1);
        let mut response = error_body(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    } else {
        answer(&demo, query, headers).await
    };
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(limit.saturating_sub(used)),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(second + 1));
    response
}

/// The answer to one request, without rate limiting.
async fn answer(demo: &Demo, query: Option<String>, headers: HeaderMap) -> Response {
    let n = demo.requests.fetch_add(1, Ordering::Relaxed);
    let (fault, bits) = fault_for(demo.config.seed, n, &demo.config.faults);
    let label = match fault {
        None => "ok",
        Some(Fault::Error) => "error",
        Some(Fault::Throttle) => "throttle",
        Some(Fault::Slow) => "slow",
        Some(Fault::Truncate) => "truncate",
        Some(Fault::Garbage) => "garbage",
    };
    metrics::counter!("hubflow_demo_requests_total", "outcome" => label).increment(1);
    match fault {
        Some(Fault::Error) => {
            return error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error (simulated)",
            );
        }
        Some(Fault::Throttle) => {
            let mut response =
                error_body(StatusCode::TOO_MANY_REQUESTS, "rate limited (simulated)");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        Some(Fault::Slow) => {
            tokio::time::sleep(Duration::from_millis(demo.config.faults.slow_ms)).await
        }
        _ => {}
    }

    let request = match PageRequest::parse(query.as_deref().unwrap_or(""), &demo.config) {
        Ok(r) => r,
        Err(message) => return error_body(StatusCode::BAD_REQUEST, &message),
    };
    let (body, next_path) = page_body(demo, &request);
    let etag = format!("\"{}\"", &hex::encode(Sha256::digest(&body))[..20]);
    let garbage = fault == Some(Fault::Garbage);
    if !garbage && if_none_match(&headers, &etag) {
        metrics::counter!("hubflow_demo_requests_total", "outcome" => "not_modified").increment(1);
        return Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header(header::ETAG, etag)
            .body(Body::empty())
            .unwrap_or_else(|e| error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()));
    }

    let content_type = if demo.config.csv {
        "text/csv; charset=utf-8"
    } else {
        "application/json"
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type);
    if !garbage {
        builder = builder.header(header::ETAG, etag);
    }
    let accepted = |coding: &str| {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|c| c.split(';').next().unwrap_or_default().trim() == coding)
    };
    let body = match demo.config.content_encoding.as_deref() {
        Some(coding) if !garbage && accepted(coding) => match compress(coding, &body) {
            Ok(compressed) => {
                builder = builder.header(header::CONTENT_ENCODING, coding);
                compressed
            }
            Err(e) => return error_body(StatusCode::INTERNAL_SERVER_ERROR, &e),
        },
        _ => body,
    };
    if let Some(path) = &next_path {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        builder = builder.header(header::LINK, format!("<http://{host}{path}>; rel=\"next\""));
    }

    faulty(fault, bits, builder, body)
        .unwrap_or_else(|e| error_body(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()))
}

/// The page `request` asks for (JSON or CSV) and the path of the next one.
fn page_body(demo: &Demo, request: &PageRequest) -> (Bytes, Option<String>) {
    let available = demo.available();
    // Positions count from the first record at or after `updated_since`.
    let first = request
        .since
        .map_or(0, |since| first_updated_at_or_after(since, available));
    let start = match request.after {
        Some(after) => after.saturating_add(1).max(first),
        None => first.saturating_add(request.start),
    }
    .min(available);
    let end = start.saturating_add(request.limit).min(available);
    let data: Vec<Value> = (start..end).map(demo_record).collect();
    let more = end < available;
    let next_path = more.then(|| request.next_path(end - first));
    let body = if demo.config.csv {
        Bytes::from(csv_page(&data))
    } else {
        let data: Vec<Value> = match demo.config.faults.not_object_every {
            Some(every) => (start..end)
                .zip(data)
                .map(|(i, record)| {
                    if (i + 1).is_multiple_of(every) {
                        not_an_object(i)
                    } else {
                        record
                    }
                })
                .collect(),
            None => data,
        };
        let body = json!({
            "data": data,
            "next_cursor": more.then(|| (end - first).to_string()),
            "has_more": more,
            "next_url": next_path,
        });
        Bytes::from(body.to_string())
    };
    (body, next_path)
}

/// What `faults.not_object_every` serves in place of record `i`: valid
/// JSON the curated format rejects (not an object).
pub fn not_an_object(i: u64) -> Value {
    json!(format!("evt-{i:08} is not an object"))
}

/// The response with the fault this request drew applied to its body: cut
/// short (honestly or by dropping the connection) or replaced by garbage.
fn faulty(
    fault: Option<Fault>,
    bits: u64,
    mut builder: axum::http::response::Builder,
    body: Bytes,
) -> Result<Response, axum::http::Error> {
    match fault {
        Some(Fault::Truncate) => {
            let cut = body.len() / 2;
            if bits & 1 == 0 {
                // An honest Content-Length for half a document.
                builder.body(Body::from(body.slice(..cut)))
            } else {
                // Promise the whole document, send half, drop the connection.
                let half = body.slice(..cut);
                // The pause lets the first half go out before the cut.
                let stream = futures::stream::iter([Ok::<Bytes, std::io::Error>(half)]).chain(
                    futures::stream::once(async {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Err(std::io::Error::other("connection dropped (simulated)"))
                    }),
                );
                builder
                    .header(header::CONTENT_LENGTH, body.len())
                    .body(Body::from_stream(stream))
            }
        }
        Some(Fault::Garbage) => match (bits >> 1) % 3 {
            0 => {
                if let Some(h) = builder.headers_mut() {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                }
                builder.body(Body::from(
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                ))
            }
            1 => {
                let noise: Vec<u8> = (0..64u64)
                    .map(|i| (splitmix64(bits ^ i) & 0xff) as u8)
                    .collect();
                builder.body(Body::from(noise))
            }
            _ => builder.body(Body::from(
                json!({"data": null, "error": "shard unavailable"}).to_string(),
            )),
        },
        _ => builder.body(Body::from(body)),
    }
}

/// The CSV form of a page of demo records: their top-level fields, nested
/// values (`user`, `tags`, `attributes`) as JSON text.
fn csv_page(data: &[Value]) -> Vec<u8> {
    const COLUMNS: [&str; 8] = [
        "id",
        "created_at",
        "updated_at",
        "type",
        "amount",
        "user",
        "tags",
        "attributes",
    ];
    let mut out = csv::Writer::from_writer(Vec::new());
    let _ = out.write_record(COLUMNS);
    for record in data {
        let row = COLUMNS.map(|c| match &record[c] {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        let _ = out.write_record(&row);
    }
    out.into_inner().unwrap_or_default()
}

/// `body` compressed with `coding` (`gzip` or `zstd`).
fn compress(coding: &str, body: &[u8]) -> Result<Bytes, String> {
    use std::io::Write as _;
    match coding {
        "gzip" => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder
                .write_all(body)
                .and_then(|()| encoder.finish())
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        }
        "zstd" => zstd::encode_all(body, 1)
            .map(Bytes::from)
            .map_err(|e| e.to_string()),
        other => Err(format!("unsupported content encoding {other}")),
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// `updated_at` of record `i` in Unix seconds: strictly increasing in `i`.
fn updated_secs(i: u64) -> i64 {
    let h = splitmix64(i);
    created_secs(i, h) + ((h >> 16) % 7) as i64
}

fn created_secs(i: u64, h: u64) -> i64 {
    EPOCH + (i as i64).saturating_mul(37) + (h % 30) as i64
}

/// The first record index below `available` updated at or after `since`
/// (`available` when none is).
fn first_updated_at_or_after(since: i64, available: u64) -> u64 {
    let (mut lo, mut hi) = (0u64, available);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if updated_secs(mid) < since {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A parsed `/v1/events` query.
struct PageRequest {
    start: u64,
    limit: u64,
    /// The request used page numbers (`page`, `per_page`).
    paged: bool,
    /// `updated_since`, in Unix seconds.
    since: Option<i64>,
    /// `starting_after=evt-N` (keyset pagination): the records after N.
    after: Option<u64>,
}

impl PageRequest {
    fn parse(query: &str, config: &DemoConfig) -> Result<PageRequest, String> {
        let mut cursor = None;
        let mut limit = None;
        let mut page = None;
        let mut since = None;
        let mut after = None;
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("`{key}` must be a non-negative integer"))
            };
            match key.as_ref() {
                "cursor" | "offset" => cursor = Some(number()?),
                "limit" | "per_page" => limit = Some(number()?),
                "page" => page = Some(number()?),
                "starting_after" => {
                    after = Some(
                        value
                            .strip_prefix("evt-")
                            .and_then(|n| n.parse::<u64>().ok())
                            .ok_or("`starting_after` must be a record id (evt-N)")?,
                    );
                }
                "updated_since" => {
                    let t = DateTime::parse_from_rfc3339(&value)
                        .map_err(|_| "`updated_since` must be an RFC 3339 timestamp".to_string())?;
                    since = Some(t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0));
                }
                _ => {}
            }
        }
        let limit = limit
            .unwrap_or(config.default_page_size)
            .clamp(1, config.max_page_size);
        if after.is_some() && (page.is_some() || cursor.is_some()) {
            return Err("use either `starting_after` or `page`/`cursor`/`offset`".into());
        }
        match (page, cursor) {
            (Some(_), Some(_)) => Err("use either `page` or `cursor`/`offset`".into()),
            (Some(0), None) => Err("`page` starts at 1".into()),
            (Some(p), None) => Ok(PageRequest {
                start: (p - 1).saturating_mul(limit),
                limit,
                paged: true,
                since,
                after,
            }),
            (None, c) => Ok(PageRequest {
                start: c.unwrap_or(0),
                limit,
                paged: false,
                since,
                after,
            }),
        }
    }

    fn next_path(&self, end: u64) -> String {
        let mut path = if self.paged {
            format!(
                "/v1/events?page={}&per_page={}",
                end / self.limit + 1,
                self.limit
            )
        } else {
            format!("/v1/events?cursor={end}&limit={}", self.limit)
        };
        if let Some(since) = self.since.and_then(|s| DateTime::from_timestamp(s, 0)) {
            path.push_str("&updated_since=");
            path.push_str(
                &since
                    .to_rfc3339_opts(SecondsFormat::Secs, true)
                    .replace('+', "%2B"),
            );
        }
        path
    }
}

/// SplitMix64: a fast, well-mixed hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const EVENT_TYPES: &[&str] = &[
    "page_view",
    "signup",
    "login",
    "purchase",
    "refund",
    "logout",
];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Bo", "Chen", "Dara", "Elif", "Femi", "Greta", "Hiro", "Ines", "Jonas", "Kaia", "Luca",
];
const LAST_NAMES: &[&str] = &[
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Silva",
    "Novak",
    "Haddad",
    "Byrne",
];
const COUNTRIES: &[&str] = &["DE", "US", "FR", "JP", "BR", "NG", "SE", "IN", "GB", "CA"];
const TAGS: &[&str] = &["mobile", "web", "beta", "vip", "returning", "promo"];
const DEVICES: &[&str] = &["ios", "android", "web", "desktop"];
/// 2024-01-01T00:00:00Z
const EPOCH: i64 = 1_704_067_200;

fn pick<'a>(items: &[&'a str], bits: u64) -> &'a str {
    items[(bits % items.len() as u64) as usize]
}

fn rfc3339(secs: i64) -> Value {
    DateTime::from_timestamp(secs, 0)
        .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// Record number `i` of the demo API: always the same for the same `i`.
pub fn demo_record(i: u64) -> Value {
    let h = splitmix64(i);
    let g = splitmix64(h);
    let created = created_secs(i, h);
    let kind = pick(EVENT_TYPES, h >> 3);
    let user = (h >> 8) % 500;
    let amount = match kind {
        "purchase" | "refund" if (g >> 4).is_multiple_of(5) => json!((g >> 8) % 200 + 1),
        "purchase" | "refund" => json!(((g >> 8) % 50_000 + 1) as f64 / 100.0),
        _ if (g >> 4).is_multiple_of(17) => Value::Null,
        _ => json!(0.0),
    };
    let tags: Vec<&str> = TAGS
        .iter()
        .enumerate()
        .filter(|(t, _)| (g >> (20 + t)) & 3 == 0)
        .map(|(_, tag)| *tag)
        .collect();
    let mut attributes = json!({
        "device": pick(DEVICES, g >> 30),
        "session": format!("s-{:08x}", (g >> 32) as u32),
        "referrer": if (g >> 36).is_multiple_of(4) { Value::Null } else { json!(format!("https://ref{}.example.com/", (g >> 40) % 7)) },
    });
    if (h >> 40).is_multiple_of(7) {
        attributes["experiment"] =
            json!({ "name": "checkout_v2", "variant": if (h >> 43) & 1 == 0 { "a" } else { "b" } });
    }
    if (h >> 46).is_multiple_of(13) {
        attributes["coupon"] = json!(format!("SAVE{}", 5 * ((h >> 50) % 4 + 1)));
    }
    json!({
        "id": format!("evt-{i:08}"),
        "created_at": rfc3339(created),
        "updated_at": rfc3339(updated_secs(i)),
        "type": kind,
        "user": {
            "id": format!("usr-{user:04}"),
            "name": format!("{} {}", pick(FIRST_NAMES, user), pick(LAST_NAMES, user / 3)),
            "country": if (h >> 24).is_multiple_of(23) { Value::Null } else { json!(pick(COUNTRIES, user >> 1)) },
        },
        "amount": amount,
        "tags": tags,
        "attributes": attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_a_pure_function_of_the_index_and_varied() {
        assert_eq!(demo_record(42), demo_record(42));
        assert_eq!(demo_record(42)["id"], "evt-00000042");
        assert!(
            demo_record(0)["created_at"]
                .as_str()
                .unwrap()
                .starts_with("2024-01-01T00:00:")
        );
        let sample: Vec<Value> = (0..2000).map(demo_record).collect();
        let types: std::collections::BTreeSet<&str> =
            sample.iter().filter_map(|r| r["type"].as_str()).collect();
        assert_eq!(types.len(), EVENT_TYPES.len());
        assert!(
            sample.iter().any(|r| r["amount"].is_u64()),
            "some integer amounts"
        );
        assert!(
            sample.iter().any(|r| r["amount"].is_f64()),
            "some float amounts"
        );
        assert!(
            sample.iter().any(|r| r["user"]["country"].is_null()),
            "some null fields"
        );
        let updated: Vec<i64> = sample
            .iter()
            .map(|r| {
                DateTime::parse_from_rfc3339(r["updated_at"].as_str().unwrap())
                    .unwrap()
                    .timestamp()
            })
            .collect();
        assert!(
            updated.windows(2).all(|w| w[0] < w[1]),
            "updated_at strictly increases"
        );
        assert!(
            sample
                .iter()
                .any(|r| r["attributes"].get("experiment").is_some()),
            "extra fields"
        );
        assert!(
            sample
                .iter()
                .any(|r| r["tags"].as_array().is_some_and(|t| t.len() >= 2))
        );
        for r in &sample {
            let created = r["created_at"].as_str().unwrap();
            assert!(DateTime::parse_from_rfc3339(created).is_ok(), "{created}");
        }
    }

    #[test]
    fn faults_follow_the_configured_rates_deterministically() {
        let faults = FaultConfig {
            error_rate: 0.1,
            throttle_rate: 0.2,
            garbage_rate: 0.05,
            ..Default::default()
        };
        let draws: Vec<Option<Fault>> = (0..10_000).map(|n| fault_for(7, n, &faults).0).collect();
        let again: Vec<Option<Fault>> = (0..10_000).map(|n| fault_for(7, n, &faults).0).collect();
        assert_eq!(draws, again);
        let count = |f| draws.iter().filter(|d| **d == Some(f)).count();
        assert!(
            (800..1200).contains(&count(Fault::Error)),
            "{}",
            count(Fault::Error)
        );
        assert!((1700..2300).contains(&count(Fault::Throttle)));
        assert!((350..650).contains(&count(Fault::Garbage)));
        assert_eq!(count(Fault::Slow) + count(Fault::Truncate), 0);
        let other_seed: Vec<Option<Fault>> = (0..100).map(|n| fault_for(8, n, &faults).0).collect();
        assert_ne!(&draws[..100], &other_seed[..]);
    }

    #[test]
    fn config_validation() {
        assert!(DemoConfig::default().validate().is_ok());
        let mut c = DemoConfig::default();
        c.faults.error_rate = 0.7;
        c.faults.garbage_rate = 0.7;
        assert!(c.validate().is_err());
        c.faults = FaultConfig {
            error_rate: 1.5,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().contains("faults.error_rate"));
        let parsed: DemoConfig = toml::from_str("total = 5\n[faults]\nerror_rate = 0.1").unwrap();
        assert_eq!(
            (
                parsed.total,
                parsed.faults.error_rate,
                parsed.default_page_size
            ),
            (5, 0.1, 100)
        );
        assert!(toml::from_str::<DemoConfig>("totl = 5").is_err());
    }

    #[test]
    fn page_requests() {
        let c = DemoConfig::default();
        let r = PageRequest::parse("cursor=200&limit=50", &c).unwrap();
        assert_eq!(
            (r.start, r.limit, r.next_path(250)),
            (200, 50, "/v1/events?cursor=250&limit=50".to_string())
        );
        let r = PageRequest::parse("page=3&per_page=20", &c).unwrap();
        assert_eq!(
            (r.start, r.limit, r.next_path(60)),
            (40, 20, "/v1/events?page=4&per_page=20".to_string())
        );
        assert_eq!(PageRequest::parse("limit=100000", &c).unwrap().limit, 1000);
        assert!(PageRequest::parse("cursor=abc", &c).is_err());
        assert!(PageRequest::parse("page=0", &c).is_err());
        let r =
            PageRequest::parse("cursor=5&limit=10&updated_since=2024-01-01T01:00:00Z", &c).unwrap();
        assert_eq!(r.since, Some(EPOCH + 3600));
        assert_eq!(
            r.next_path(15),
            "/v1/events?cursor=15&limit=10&updated_since=2024-01-01T01:00:00Z"
        );
        assert!(PageRequest::parse("updated_since=yesterday", &c).is_err());
        let r = PageRequest::parse("starting_after=evt-00000041&limit=10", &c).unwrap();
        assert_eq!((r.after, r.limit), (Some(41), 10));
        assert!(PageRequest::parse("starting_after=41", &c).is_err());
        assert!(PageRequest::parse("starting_after=evt-1&cursor=3", &c).is_err());
    }

    #[test]
    fn not_object_every_serves_every_nth_record_as_a_string() {
        let demo = Demo {
            config: DemoConfig {
                faults: FaultConfig {
                    not_object_every: Some(4),
                    ..FaultConfig::default()
                },
                ..DemoConfig::default()
            },
            started: Instant::now(),
            requests: AtomicU64::new(0),
            window: Mutex::new((0, 0)),
        };
        let request = PageRequest::parse("cursor=0&limit=10", &demo.config).unwrap();
        let (body, _) = page_body(&demo, &request);
        let page: Value = serde_json::from_slice(&body).unwrap();
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 10);
        for (i, record) in data.iter().enumerate() {
            let i = i as u64;
            if i == 3 || i == 7 {
                assert_eq!(*record, not_an_object(i));
                assert!(record.is_string());
            } else {
                assert_eq!(*record, demo_record(i));
            }
        }
        let mut c = DemoConfig::default();
        c.faults.not_object_every = Some(0);
        assert!(c.validate().unwrap_err().contains("not_object_every"));
    }

    #[test]
    fn updated_since_finds_the_first_record_at_or_after() {
        for i in [0u64, 1, 2, 77, 999] {
            let at = updated_secs(i);
            assert_eq!(first_updated_at_or_after(at, 1000), i);
            assert_eq!(first_updated_at_or_after(at + 1, 1000), i + 1);
        }
        assert_eq!(first_updated_at_or_after(i64::MAX, 1000), 1000);
        assert_eq!(first_updated_at_or_after(0, 1000), 0);
    }
}
