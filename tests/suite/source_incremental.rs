//! Incremental polling of the HTTP source against loopback servers: OAuth2
//! client credentials, the watermark (and that it is stored only once the
//! records are in the hub), conditional GET, and rate limits on both sides.

use crate::common::server::TestServer;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::DateTime;
use hubflow::demo::{
    DemoConfig, FaultConfig, demo_incremental_source_config, demo_record, demo_source_config,
};
use hubflow::source::{
    AuthConfig, ClientAuth, HttpSource, HttpSourceConfig, PaginationConfig, RateLimitConfig,
    SecretString, WatermarkConfig,
};
use hubflow_actors::fetcher::{CursorRecord, Fetcher, FetcherParams, cursor_record_name};
use hubflow_actors::ports::memory::{MemoryBlobStore, MemoryHub};
use hubflow_actors::ports::{
    BlobStore, EventData, Hub, HubError, PartitionProperties, PartitionReceiver, PublishTarget,
    Source, SourceCursor, SourceError, StartPosition, StateStore,
};
use hubflow_actors::retry::{RetryBudget, RetryDelay};
use hubflow_supervision::ActorProbe;
use ractor::Actor;
use serde_json::{Value, json};

fn params(query: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn json_response(body: Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn source_config(name: &str, url: String) -> HttpSourceConfig {
    let mut config = HttpSourceConfig::new(name, url);
    config.id_field = Some("id".into());
    config.timeout_ms = 5_000;
    config
}

/// Fetches from `cursor` until caught up; transient errors are retried.
async fn poll(source: &HttpSource, cursor: SourceCursor) -> (Vec<String>, SourceCursor, u32) {
    let mut cursor = cursor;
    let mut ids = Vec::new();
    let mut transient = 0;
    for _ in 0..1_000 {
        match source.fetch(&cursor).await {
            Ok(page) => {
                ids.extend(page.records.into_iter().map(|r| r.id));
                cursor = page.next;
                if page.caught_up {
                    return (ids, cursor, transient);
                }
            }
            Err(SourceError::Transient { .. }) => {
                transient += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    panic!("not caught up after 1000 fetches");
}

// ------------------------------------------------------------------ oauth2

const CLIENT_ID: &str = "hubflow-client";
const CLIENT_SECRET: &str = "cl1ent-s3cret-value";

#[derive(Default)]
struct OAuthState {
    /// Token requests, valid or not.
    token_requests: AtomicU32,
    /// Problems with a token request's grant or credentials.
    grant_errors: Mutex<Vec<String>>,
    /// Tokens the API accepts.
    valid: Mutex<Vec<String>>,
    issued: AtomicU32,
    expires_in: AtomicU32,
    /// Answer every API request with 401.
    refuse_all: AtomicBool,
    api_unauthorized: AtomicU32,
}

type OAuth = Arc<OAuthState>;

async fn token_endpoint(State(s): State<OAuth>, headers: HeaderMap, body: Bytes) -> Response {
    s.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let mut problems = Vec::new();
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        problems.push(format!("grant_type {:?}", form.get("grant_type")));
    }
    if form.get("scope").map(String::as_str) != Some("orders.read") {
        problems.push(format!("scope {:?}", form.get("scope")));
    }
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        problems.push("content type".into());
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let credentials = match (&basic, form.get("client_id"), form.get("client_secret")) {
        (Some(pair), None, None) => pair.split_once(':').map(|(a, b)| (a.into(), b.into())),
        (None, Some(id), Some(secret)) => Some((id.clone(), secret.clone())),
        _ => None,
    };
    let Some((id, secret)): Option<(String, String)> = credentials else {
        problems.push("client authentication".into());
        s.grant_errors.lock().unwrap().extend(problems);
        return (StatusCode::BAD_REQUEST, "{}").into_response();
    };
    if id != CLIENT_ID || secret != CLIENT_SECRET {
        // Some servers echo what they got; the source must not repeat it.
        return (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"error": "invalid_client", "error_description": format!("bad secret {secret}")})
                .to_string(),
        )
            .into_response();
    }
    s.grant_errors.lock().unwrap().extend(problems);
    let n = s.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let token = format!("acc3ss-tok3n-{n}");
    s.valid.lock().unwrap().push(token.clone());
    json_response(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": s.expires_in.load(Ordering::SeqCst),
    }))
}

async fn protected(State(s): State<OAuth>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    if s.refuse_all.load(Ordering::SeqCst) || !s.valid.lock().unwrap().contains(&token) {
        s.api_unauthorized.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::UNAUTHORIZED, "{}").into_response();
    }
    json_response(json!([{"id": "a"}, {"id": "b"}]))
}

/// Log lines written while a test runs (the subscriber is per thread).
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn oauth_source(base: &str, secret: &str, client_auth: ClientAuth) -> HttpSourceConfig {
    let mut cfg = source_config("oauth", format!("{base}/api"));
    cfg.auth = AuthConfig::OAuth2 {
        token_url: format!("{base}/token"),
        client_id: CLIENT_ID.into(),
        client_secret: SecretString::literal(secret),
        scope: Some("orders.read".into()),
        client_auth,
        refresh_margin_secs: 3,
    };
    cfg
}

#[tokio::test]
async fn oauth2_tokens_are_fetched_cached_refreshed_and_renewed_once_on_401() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let state: OAuth = Arc::default();
    state.expires_in.store(5, Ordering::SeqCst);
    let app = Router::new()
        .route("/token", post(token_endpoint))
        .route("/api", get(protected))
        .with_state(state.clone());
    let server = TestServer::router(app).await;
    let tokens = || state.token_requests.load(Ordering::SeqCst);
    let mut shown = Vec::new();

    for client_auth in [ClientAuth::Basic, ClientAuth::Body] {
        let before = tokens();
        let source =
            HttpSource::from_config(&oauth_source(&server.base, CLIENT_SECRET, client_auth))
                .unwrap();
        shown.push(format!("{source:?}"));
        let page = source.fetch(&SourceCursor::default()).await.unwrap();
        assert_eq!(page.records.len(), 2);
        source.fetch(&SourceCursor::default()).await.unwrap();
        assert_eq!(
            tokens() - before,
            1,
            "{client_auth:?}: fetched once, then cached"
        );
    }
    assert_eq!(*state.grant_errors.lock().unwrap(), Vec::<String>::new());

    // The API forgets its tokens: one 401, one new token, the page arrives.
    let source = HttpSource::from_config(&oauth_source(
        &server.base,
        CLIENT_SECRET,
        ClientAuth::Basic,
    ))
    .unwrap();
    source.fetch(&SourceCursor::default()).await.unwrap();
    let before = tokens();
    state.valid.lock().unwrap().clear();
    source.fetch(&SourceCursor::default()).await.unwrap();
    assert_eq!(tokens() - before, 1);
    assert_eq!(state.api_unauthorized.load(Ordering::SeqCst), 1);

    // expires_in 5 s, margin 3 s: replaced after 2 s, before the API
    // refuses it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    source.fetch(&SourceCursor::default()).await.unwrap();
    assert_eq!(tokens() - before, 2, "refreshed before expiry");
    assert_eq!(state.api_unauthorized.load(Ordering::SeqCst), 1);

    // An API that refuses every token: exactly one renewal, then fatal.
    state.refuse_all.store(true, Ordering::SeqCst);
    let before = tokens();
    let err = source.fetch(&SourceCursor::default()).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Fatal { message, .. } if message.contains("401")),
        "{err}"
    );
    assert_eq!(tokens() - before, 1, "one renewal, no loop");
    let mut errors = vec![err.to_string()];

    // Wrong secret: fatal, naming the OAuth error code only.
    let wrong = "wr0ng-s3cret-value";
    let bad =
        HttpSource::from_config(&oauth_source(&server.base, wrong, ClientAuth::Basic)).unwrap();
    let err = bad.fetch(&SourceCursor::default()).await.unwrap_err();
    assert!(
        matches!(&err, SourceError::Fatal { message, .. }
            if message.contains("invalid_client") && message.contains("/token")),
        "{err}"
    );
    errors.push(err.to_string());
    shown.push(format!("{bad:?}"));
    shown.push(format!("{:?}", bad.settings()));
    server.shutdown().await;

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("oauth2 token fetched"),
        "logs captured: {logs}"
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    for text in shown.iter().chain(&errors).chain([&logs]) {
        for secret in [CLIENT_SECRET, wrong, "acc3ss-tok3n", basic.as_str()] {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }
}

// --------------------------------------------------------------- watermark

/// Records with an `updated_at` in assorted UTC offsets: text order is not
/// time order. Filter `?since=` keeps those at or after it (by instant);
/// offset pagination, 3 a page.
#[derive(Clone, Default)]
struct Changes {
    records: Arc<Mutex<Vec<Value>>>,
    queries: Arc<Mutex<Vec<HashMap<String, String>>>>,
}

fn instant(text: &str) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(text).unwrap()
}

async fn changes(State(c): State<Changes>, RawQuery(q): RawQuery) -> Response {
    let p = params(q);
    c.queries.lock().unwrap().push(p.clone());
    let since = p.get("since").map(|s| instant(s));
    let offset: usize = p.get("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
    let matching: Vec<Value> = c
        .records
        .lock()
        .unwrap()
        .iter()
        .filter(|r| since.is_none_or(|s| r["updated_at"].as_str().is_some_and(|t| instant(t) >= s)))
        .cloned()
        .collect();
    let page: Vec<Value> = matching.into_iter().skip(offset).take(3).collect();
    json_response(json!(page))
}

#[tokio::test]
async fn watermark_is_sent_on_the_next_poll_and_compared_as_instants() {
    let c = Changes::default();
    *c.records.lock().unwrap() = vec![
        json!({"id": "a", "updated_at": "2024-05-01T10:00:00+02:00"}), // 08:00Z
        json!({"id": "b", "updated_at": "2024-05-01T09:00:00Z"}),
        json!({"id": "c", "updated_at": "2024-05-01T10:30:00+02:00"}), // 08:30Z
        json!({"id": "d", "updated_at": "2024-05-01T08:59:59.500Z"}),
        json!({"id": "e", "updated_at": null}),
    ];
    let app = Router::new()
        .route("/changes", get(changes))
        .with_state(c.clone());
    let server = TestServer::router(app).await;
    let mut cfg = source_config("changes", format!("{}/changes", server.base));
    cfg.pagination = PaginationConfig::OffsetLimit {
        offset_param: "offset".into(),
        limit_param: "limit".into(),
        limit: 3,
    };
    cfg.watermark = Some(WatermarkConfig {
        field: Some("updated_at".into()),
        from: None,
        param: "since".into(),
        initial: None,
    });
    let source = HttpSource::from_config(&cfg).unwrap();

    let (ids, cursor, _) = poll(&source, SourceCursor::default()).await;
    assert_eq!(ids, ["a", "b", "c", "d", "e"]);
    assert_eq!(
        cursor.0,
        json!({"watermark": "2024-05-01T09:00:00Z"}),
        "the latest instant, not the largest text; pagination starts over"
    );
    assert!(
        c.queries
            .lock()
            .unwrap()
            .iter()
            .all(|q| !q.contains_key("since")),
        "the first poll has no watermark"
    );

    // Later changes, one of them in an offset that sorts first as text.
    c.records.lock().unwrap().extend([
        json!({"id": "f", "updated_at": "2024-05-01T12:00:00+02:00"}), // 10:00Z
        json!({"id": "g", "updated_at": "2024-05-01T09:30:00Z"}),
        json!({"id": "h", "updated_at": "2024-05-01T08:00:00Z"}),
    ]);
    c.queries.lock().unwrap().clear();
    let (ids, cursor, _) = poll(&source, cursor).await;
    // The server filters inclusively: `b` (at the watermark) comes again.
    assert_eq!(ids, ["b", "f", "g"]);
    assert_eq!(cursor.0, json!({"watermark": "2024-05-01T12:00:00+02:00"}));
    let queries = c.queries.lock().unwrap().clone();
    assert!(
        queries
            .iter()
            .all(|q| q.get("since").map(String::as_str) == Some("2024-05-01T09:00:00Z")),
        "{queries:?}"
    );
    assert_eq!(queries[0].get("offset").map(String::as_str), Some("0"));
    server.shutdown().await;
}

/// A hub that refuses publishes while `fail` is set.
struct FlakyHub {
    inner: MemoryHub,
    fail: AtomicBool,
}

#[async_trait]
impl Hub for FlakyHub {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn partition_ids(&self) -> Result<Vec<u32>, HubError> {
        self.inner.partition_ids().await
    }
    async fn publish(&self, target: PublishTarget, events: Vec<EventData>) -> Result<(), HubError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(HubError::Other {
                hub: "ingest".into(),
                message: "publish refused (test)".into(),
            });
        }
        self.inner.publish(target, events).await
    }
    async fn open_receiver(
        &self,
        consumer_group: &str,
        partition: u32,
        from: StartPosition,
    ) -> Result<Box<dyn PartitionReceiver>, HubError> {
        self.inner
            .open_receiver(consumer_group, partition, from)
            .await
    }
    async fn partition_properties(&self, partition: u32) -> Result<PartitionProperties, HubError> {
        self.inner.partition_properties(partition).await
    }
}

async fn hub_ids(hub: &MemoryHub) -> Vec<String> {
    let mut ids = Vec::new();
    for p in hub.partition_ids().await.unwrap() {
        ids.extend(
            hub.events(p)
                .iter()
                .map(|e| e.properties[hubflow_actors::record::PROP_ID].clone()),
        );
    }
    ids.sort();
    ids
}

async fn saved_cursor(state: &StateStore, name: &str) -> Option<CursorRecord> {
    state
        .load::<CursorRecord>(&cursor_record_name(name))
        .await
        .unwrap()
        .map(|v| v.value)
}

/// Runs a fetcher until its stored cursor is caught up with `records`
/// published, or it stops; returns whether it is still running.
async fn run_fetcher(
    source: Arc<dyn Source>,
    hub: Arc<FlakyHub>,
    state: StateStore,
    blobs: Arc<MemoryBlobStore>,
    until_records: u64,
) -> bool {
    let params = FetcherParams {
        source: source.clone(),
        hub,
        state: state.clone(),
        dead_letters: blobs,
        dead_letter_container: "dead-letters".into(),
        poll_interval: Duration::from_secs(60),
        max_publish_events: 50,
        read_ahead_pages: hubflow_actors::fetcher::READ_AHEAD_PAGES,
        retry: RetryDelay::new(Duration::from_millis(5), Duration::from_millis(50)),
        retry_budget: RetryBudget::UNLIMITED,
        probe: ActorProbe::new(),
        start_paused: false,
        page_log_retention: Duration::from_secs(3600),
        node_id: "test".into(),
    };
    let (actor, handle) = Actor::spawn(None, Fetcher, params).await.unwrap();
    for _ in 0..2_000 {
        if handle.is_finished() {
            return false;
        }
        if let Some(c) = saved_cursor(&state, source.name()).await
            && c.caught_up
            && c.records >= until_records
        {
            actor.stop(None);
            handle.await.unwrap();
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fetcher neither caught up nor stopped");
}

#[tokio::test]
async fn watermark_is_stored_only_after_the_records_are_in_the_hub() {
    let blobs = Arc::new(MemoryBlobStore::new());
    for c in ["state", "dead-letters"] {
        blobs.create_container(c).await.unwrap();
    }
    let state = StateStore::new(blobs.clone(), "state");
    let hub = Arc::new(FlakyHub {
        inner: MemoryHub::new("ingest", 3),
        fail: AtomicBool::new(false),
    });

    // First run: 500 records, watermark = updated_at of the last one.
    let first = TestServer::demo(DemoConfig {
        total: 500,
        ..DemoConfig::default()
    })
    .await;
    let source: Arc<dyn Source> =
        Arc::new(HttpSource::from_config(&demo_incremental_source_config(&first.base)).unwrap());
    assert!(run_fetcher(source, hub.clone(), state.clone(), blobs.clone(), 500).await);
    first.shutdown().await;
    let saved = saved_cursor(&state, "demo").await.unwrap();
    let w500 = demo_record(499)["updated_at"].clone();
    assert_eq!(saved.cursor.0, json!({ "watermark": w500 }));

    // The source has grown to 800, but the hub refuses: the fetcher fails
    // and the stored watermark has not moved.
    let grown = TestServer::demo(DemoConfig {
        total: 800,
        ..DemoConfig::default()
    })
    .await;
    let source: Arc<dyn Source> =
        Arc::new(HttpSource::from_config(&demo_incremental_source_config(&grown.base)).unwrap());
    hub.fail.store(true, Ordering::SeqCst);
    assert!(
        !run_fetcher(
            source.clone(),
            hub.clone(),
            state.clone(),
            blobs.clone(),
            800
        )
        .await
    );
    assert_eq!(saved_cursor(&state, "demo").await.unwrap(), saved);

    // A restart resumes exactly from the stored watermark.
    hub.fail.store(false, Ordering::SeqCst);
    assert!(run_fetcher(source, hub.clone(), state.clone(), blobs, 800).await);
    let ids = hub_ids(&hub.inner).await;
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 800);
    // Only the record at the watermark came twice (inclusive filter).
    assert_eq!(ids.len(), 801);
    let resumed = saved_cursor(&state, "demo").await.unwrap();
    assert_eq!(
        resumed.cursor.0,
        json!({ "watermark": demo_record(799)["updated_at"].clone() })
    );
    grown.shutdown().await;
}

// ---------------------------------------------------------- conditional GET

/// (If-None-Match, If-Modified-Since) of a request.
type Conditions = (Option<String>, Option<String>);

#[derive(Clone, Default)]
struct Doc {
    version: Arc<AtomicU32>,
    /// (If-None-Match, If-Modified-Since) of each request.
    seen: Arc<Mutex<Vec<Conditions>>>,
    not_modified: Arc<AtomicU32>,
}

async fn document(State(d): State<Doc>, headers: HeaderMap) -> Response {
    let text = |h| {
        headers
            .get(h)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (inm, ims) = (text(header::IF_NONE_MATCH), text(header::IF_MODIFIED_SINCE));
    d.seen.lock().unwrap().push((inm.clone(), ims.clone()));
    let v = d.version.load(Ordering::SeqCst);
    let etag = format!("\"v{v}\"");
    let modified = format!("Wed, 0{} Jan 2025 00:00:00 GMT", v + 1);
    if inm.as_deref() == Some(etag.as_str()) || (inm.is_none() && ims.as_deref() == Some(&modified))
    {
        d.not_modified.fetch_add(1, Ordering::SeqCst);
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let records: Vec<Value> = (0..=v).map(|i| json!({"id": format!("v{i}")})).collect();
    let mut response = json_response(json!(records));
    response
        .headers_mut()
        .insert(header::ETAG, etag.parse().unwrap());
    response
        .headers_mut()
        .insert(header::LAST_MODIFIED, modified.parse().unwrap());
    response
}

#[tokio::test]
async fn conditional_get_makes_unchanged_polls_304_and_survives_a_restart() {
    let d = Doc::default();
    let app = Router::new()
        .route("/doc", get(document))
        .with_state(d.clone());
    let server = TestServer::router(app).await;
    let cfg = source_config("doc", format!("{}/doc", server.base));
    let source = HttpSource::from_config(&cfg).unwrap();

    let (ids, cursor, _) = poll(&source, SourceCursor::default()).await;
    assert_eq!(ids, ["v0"]);
    assert_eq!(cursor.0["validators"]["etag"], "\"v0\"");
    let (ids, cursor, _) = poll(&source, cursor).await;
    assert!(ids.is_empty(), "304: nothing new, no error");
    assert_eq!(d.not_modified.load(Ordering::SeqCst), 1);

    // A new source instance (a restart) from the stored cursor asks
    // conditionally too; a change comes through and moves the validators.
    let restarted = HttpSource::from_config(&cfg).unwrap();
    let (ids, cursor, _) = poll(&restarted, cursor).await;
    assert!(ids.is_empty());
    assert_eq!(d.not_modified.load(Ordering::SeqCst), 2);
    d.version.store(1, Ordering::SeqCst);
    let (ids, cursor, _) = poll(&restarted, cursor).await;
    assert_eq!(ids, ["v0", "v1"]);
    assert_eq!(cursor.0["validators"]["etag"], "\"v1\"");
    let seen = d.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|(inm, _)| inm.as_deref())
            .collect::<Vec<_>>(),
        [None, Some("\"v0\""), Some("\"v0\""), Some("\"v0\"")]
    );
    assert!(
        seen[1..]
            .iter()
            .all(|(_, ims)| ims.as_deref() == Some("Wed, 01 Jan 2025 00:00:00 GMT"))
    );

    // Switched off: no validators sent or kept.
    let mut off = cfg.clone();
    off.conditional_get = false;
    let plain = HttpSource::from_config(&off).unwrap();
    d.seen.lock().unwrap().clear();
    let (ids, cursor, _) = poll(&plain, cursor).await;
    assert_eq!(ids.len(), 2);
    assert!(cursor.0.get("validators").is_none(), "{cursor:?}");
    assert_eq!(*d.seen.lock().unwrap(), vec![(None, None)]);
    server.shutdown().await;
}

#[tokio::test]
async fn demo_pages_carry_etags_and_a_caught_up_repoll_is_not_modified() {
    let server = TestServer::demo(DemoConfig {
        total: 250,
        ..DemoConfig::default()
    })
    .await;
    let source = HttpSource::from_config(&demo_source_config(&server.base)).unwrap();
    let (ids, cursor, _) = poll(&source, SourceCursor::default()).await;
    assert_eq!(ids.len(), 250);
    assert!(cursor.0["validators"]["etag"].is_string(), "{cursor:?}");
    let page = source.fetch(&cursor).await.unwrap();
    assert!(page.records.is_empty() && page.caught_up);
    assert_eq!(page.next, cursor, "a 304 leaves the cursor as it was");
    server.shutdown().await;
}

// -------------------------------------------------------------- rate limits

type Header = (&'static str, String);

#[derive(Clone, Default)]
struct Clock {
    started: Arc<Mutex<Option<Instant>>>,
    times: Arc<Mutex<Vec<Duration>>>,
    /// Headers to answer with on each request number (0-based).
    script: Arc<Mutex<BTreeMap<usize, Vec<Header>>>>,
}

async fn timed(State(c): State<Clock>) -> Response {
    let now = Instant::now();
    let at = now - *c.started.lock().unwrap().get_or_insert(now);
    let n = {
        let mut times = c.times.lock().unwrap();
        times.push(at);
        times.len() - 1
    };
    let mut response = json_response(json!([{ "id": format!("t{n}") }]));
    if let Some(headers) = c.script.lock().unwrap().get(&n) {
        for (name, value) in headers {
            // `epoch+N`: a Unix time N seconds from now.
            let value = match value.strip_prefix("epoch+") {
                Some(n) => (chrono::Utc::now().timestamp() + n.parse::<i64>().unwrap()).to_string(),
                None => value.clone(),
            };
            response.headers_mut().insert(*name, value.parse().unwrap());
        }
    }
    response
}

fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test]
async fn client_rate_limit_spaces_requests() {
    let c = Clock::default();
    let app = Router::new().route("/t", get(timed)).with_state(c.clone());
    let server = TestServer::router(app).await;
    let mut cfg = source_config("timed", format!("{}/t", server.base));
    cfg.rate_limit = RateLimitConfig {
        requests_per_sec: Some(10.0),
        burst: 2,
        ..RateLimitConfig::default()
    };
    let source = HttpSource::from_config(&cfg).unwrap();
    for _ in 0..12 {
        source.fetch(&SourceCursor::default()).await.unwrap();
    }
    let times = c.times.lock().unwrap().clone();
    // A burst of 2, then one every 100 ms: 10 more take at least 1 s.
    let span = times[11] - times[0];
    assert!(span >= Duration::from_millis(950), "{times:?}");
    assert!(span < Duration::from_secs(20), "{times:?}");
    // Over any stretch, at most `burst` + rate x time requests (the bucket
    // lets a late request be followed closely, never more); 50 ms of slack
    // for scheduling on a loaded machine.
    for i in 0..times.len() {
        for j in i + 2..times.len() {
            let floor = Duration::from_millis(100 * (j - i - 1) as u64);
            assert!(
                times[j] - times[i] + Duration::from_millis(50) >= floor,
                "requests {i}..{j}: {times:?}"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn server_rate_limit_headers_make_the_next_request_wait() {
    let c = Clock::default();
    *c.script.lock().unwrap() = BTreeMap::from([
        (
            1,
            vec![
                ("ratelimit-remaining", "0".to_string()),
                ("ratelimit-reset", "1".to_string()),
            ],
        ),
        (
            3,
            vec![
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", "epoch+2".to_string()),
            ],
        ),
        (
            5,
            vec![
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", "3600".to_string()),
            ],
        ),
        (6, vec![("x-ratelimit-remaining", "7".to_string())]),
    ]);
    let app = Router::new().route("/t", get(timed)).with_state(c.clone());
    let server = TestServer::router(app).await;
    let mut cfg = source_config("timed", format!("{}/t", server.base));
    cfg.rate_limit.max_wait_ms = 1_500;
    let source = HttpSource::from_config(&cfg).unwrap();
    for _ in 0..8 {
        source.fetch(&SourceCursor::default()).await.unwrap();
    }
    let g = gaps(&c.times.lock().unwrap());
    // Remaining 0 with a 1 s reset (delay form): the next request waits.
    assert!(g[1] >= Duration::from_millis(900), "{g:?}");
    // A Unix-time reset 1 to 2 s away (whole seconds), capped at 1.5 s.
    assert!(g[3] >= Duration::from_millis(900), "{g:?}");
    // An hour away: capped at max_wait.
    assert!(g[5] >= Duration::from_millis(1_400), "{g:?}");
    assert!(g[5] < Duration::from_secs(30), "{g:?}");
    // Requests with quota left do not wait.
    for i in [0, 2, 4, 6] {
        assert!(g[i] < Duration::from_millis(900), "gap {i}: {g:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_demo_rate_limit_is_honoured_without_429s() {
    let server = TestServer::demo(DemoConfig {
        total: 3_000,
        faults: FaultConfig {
            rate_limit_per_sec: Some(10),
            ..FaultConfig::default()
        },
        ..DemoConfig::default()
    })
    .await;
    let started = Instant::now();
    let source = HttpSource::from_config(&demo_source_config(&server.base)).unwrap();
    let (ids, _, throttled) = poll(&source, SourceCursor::default()).await;
    assert_eq!(ids.len(), 3_000);
    // 30 requests at 10 per wall-clock second: the first window is partial,
    // the second full, the third needed.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        throttled <= 1,
        "{throttled} requests were throttled: headers not honoured"
    );
    server.shutdown().await;
}
