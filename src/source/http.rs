//! [`HttpSource`]: one GET per `fetch`, classified into a page or a
//! [`SourceError`]. Retries, backoff and cursor storage are the fetcher's.
//!
//! Around the GET: the rate limiter's wait, the OAuth2 token (one retry with
//! a fresh token on a 401), the watermark parameter, and conditional
//! headers for a page asked for again (a 304 is an empty, caught-up page).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use hubflow_actors::ports::{DeadLetter, Page, Source, SourceCursor, SourceError, SourceRecord};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderValue};
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use super::config::{BodyFormat, HttpSourceConfig, HttpSourceSettings, Pagination};
use super::error::{ConfigError, error_chain};
use super::extract::{
    JsonPath, content_id, link_next, page_digest, parse_retry_after, redact_url, scalar_text,
    with_query_param, without_query_param,
};
use super::oauth::{TokenError, TokenSource};
use super::paging::{CursorState, Observed, Step, Validators, advance, skip_unreadable};
use super::ratelimit::RateLimiter;
use super::scan::{Records, raw_lookup, scan_document};

/// Connecting gives up after this long even when the request timeout is longer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP GET API as a [`Source`].
pub struct HttpSource {
    settings: HttpSourceSettings,
    client: reqwest::Client,
    /// Pages returned in a row without catching up (for `max_pages_per_poll`).
    pages_in_poll: AtomicU32,
    /// OAuth2 client credentials, when configured.
    tokens: Option<TokenSource>,
    limiter: RateLimiter,
}

impl fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSource")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The validators of a response to `position` for the next conditional GET
/// (none when it sent neither `ETag` nor `Last-Modified`).
fn validators(position: &Url, headers: &HeaderMap) -> Option<Box<Validators>> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let (etag, last_modified) = (text(header::ETAG), text(header::LAST_MODIFIED));
    (etag.is_some() || last_modified.is_some()).then(|| {
        Box::new(Validators {
            url: position.to_string(),
            etag,
            last_modified,
        })
    })
}

/// A body's records and the body values asked for, as
/// [`HttpSource::split_records`] returns them.
type Split<'b> = (Vec<Cow<'b, str>>, Vec<Option<Value>>);

/// Why one fetch failed, before it gets the source name.
enum Failure {
    Transient {
        message: String,
        retry_after: Option<Duration>,
    },
    Bad {
        reason: String,
        body: Bytes,
        skip_to: Option<Box<CursorState>>,
    },
    Fatal(String),
}

impl Failure {
    fn bad(reason: impl Into<String>, body: Bytes) -> Self {
        Failure::Bad {
            reason: reason.into(),
            body,
            skip_to: None,
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Failure::Transient { .. } => "transient",
            Failure::Bad { .. } => "bad_response",
            Failure::Fatal(_) => "fatal",
        }
    }
}

enum BodyError {
    Timeout(String),
    Truncated(Bytes, String),
    TooLarge(Bytes),
}

impl HttpSource {
    /// Builds the source and its HTTP client from validated settings.
    pub fn new(settings: HttpSourceSettings) -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(CONNECT_TIMEOUT))
            .user_agent(concat!("hubflow/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|e| ConfigError::Client(error_chain(&e.without_url())))?;
        let tokens = settings
            .oauth
            .clone()
            .map(|oauth| TokenSource::new(&settings.name, oauth, client.clone()));
        let limiter = RateLimiter::new(settings.rate_limit);
        Ok(HttpSource {
            settings,
            client,
            pages_in_poll: AtomicU32::new(0),
            tokens,
            limiter,
        })
    }

    /// Validates `config` and builds the source.
    pub fn from_config(config: &HttpSourceConfig) -> Result<Self, ConfigError> {
        HttpSource::new(config.validate()?)
    }

    pub fn settings(&self) -> &HttpSourceSettings {
        &self.settings
    }

    fn key_name(&self) -> Option<&str> {
        self.settings.query_key.as_ref().map(|(n, _)| n.as_str())
    }

    /// The body paths a page's values are read from: flags, the next
    /// cursor or URL, a body watermark.
    fn body_paths(&self) -> Vec<&JsonPath> {
        let s = &self.settings;
        let mut paths: Vec<&JsonPath> = Vec::new();
        paths.extend(s.last_page_flag.as_ref());
        paths.extend(s.has_more_flag.as_ref());
        if let Pagination::Cursor { from, .. } | Pagination::NextUrl { from } = &s.pagination {
            paths.push(from);
        }
        paths.extend(s.watermark.as_ref().and_then(|w| w.body_path()));
        paths
    }

    /// The watermark the requests at `state` carry.
    fn watermark_of(&self, state: &CursorState) -> Option<String> {
        let w = self.settings.watermark.as_ref()?;
        state.watermark.clone().or_else(|| w.initial.clone())
    }

    /// The URL of the page at `state`, without the API key.
    fn position_url(&self, state: &CursorState) -> Result<Url, Failure> {
        let watermarked;
        let base = match (&self.settings.watermark, self.watermark_of(state)) {
            (Some(w), Some(value)) => {
                watermarked = with_query_param(&self.settings.url, &w.param, &value);
                &watermarked
            }
            _ => &self.settings.url,
        };
        Ok(match &self.settings.pagination {
            Pagination::None => base.clone(),
            Pagination::PageNumber {
                param,
                start,
                size_param,
                size,
            } => {
                let url = with_query_param(base, param, &state.page.unwrap_or(*start).to_string());
                match size_param {
                    Some(p) => with_query_param(&url, p, &size.to_string()),
                    None => url,
                }
            }
            Pagination::OffsetLimit {
                offset_param,
                limit_param,
                limit,
            } => {
                let url =
                    with_query_param(base, offset_param, &state.offset.unwrap_or(0).to_string());
                with_query_param(&url, limit_param, &limit.to_string())
            }
            Pagination::Cursor { param, .. } | Pagination::Keyset { param, .. } => {
                match &state.cursor {
                    Some(c) => with_query_param(base, param, c),
                    None => base.clone(),
                }
            }
            Pagination::NextUrl { .. } | Pagination::LinkHeader => match &state.url {
                Some(u) => Url::parse(u)
                    .map_err(|e| Failure::Fatal(format!("stored cursor url is invalid: {e}")))?,
                None => base.clone(),
            },
        })
    }

    /// A server-given next URL, resolved against the request and checked to
    /// stay on the configured origin (our credentials go wherever it points).
    fn next_url(&self, requested: &Url, raw: &str, body: &Bytes) -> Result<String, Failure> {
        let url = requested
            .join(raw.trim())
            .map_err(|e| Failure::bad(format!("next url is not a url: {e}"), body.clone()))?;
        if url.origin() != self.settings.url.origin() {
            return Err(Failure::bad(
                format!(
                    "next url {} leaves the configured origin",
                    redact_url(&url, self.key_name())
                ),
                body.clone(),
            ));
        }
        let mut url = match self.key_name() {
            Some(k) => without_query_param(&url, k),
            None => url,
        };
        url.set_fragment(None);
        Ok(url.to_string())
    }

    async fn fetch_inner(
        &self,
        cursor: &SourceCursor,
        shown: &mut String,
    ) -> Result<Page, Failure> {
        let pagination = &self.settings.pagination;
        let state = CursorState::decode(&cursor.0, pagination).map_err(Failure::Fatal)?;
        let position = self.position_url(&state)?;
        let request_url = match &self.settings.query_key {
            Some((name, value)) => with_query_param(&position, name, value.expose()),
            None => position.clone(),
        };
        *shown = redact_url(&request_url, self.key_name());
        let conditional = state
            .validators
            .as_ref()
            .filter(|v| self.settings.conditional_get && v.url == position.as_str());

        let response = self
            .send(&request_url, conditional.map(|v| v.as_ref()), shown)
            .await?;

        let status = response.status();
        let headers = response.headers().clone();
        if status == StatusCode::NOT_MODIFIED {
            return self.not_modified(conditional.is_some(), &state, shown);
        }
        if !status.is_success() {
            return Err(self.status_failure(status, &headers, shown, response).await);
        }
        let body = self.page_body(response, &headers, &state, shown).await?;
        self.page_of(status, &headers, body, &state, &position, shown)
    }

    /// A 304 to a conditional request: nothing new, the poll is over.
    fn not_modified(
        &self,
        conditional: bool,
        state: &CursorState,
        shown: &str,
    ) -> Result<Page, Failure> {
        if !conditional {
            return Err(Failure::bad(
                "304 Not Modified to a request that was not conditional",
                Bytes::new(),
            ));
        }
        metrics::counter!("hubflow_source_not_modified_total", "source" => self.settings.name.clone())
            .increment(1);
        self.pages_in_poll.store(0, Ordering::Relaxed);
        debug!(source = %self.settings.name, url = %shown, "not modified");
        Ok(Page {
            records: Vec::new(),
            next: SourceCursor(state.encode()),
            caught_up: true,
            request: format!("GET {shown}"),
        })
    }

    /// The body of a successful response, within `max_response_bytes`, in
    /// a content type the source's format accepts.
    async fn page_body(
        &self,
        response: reqwest::Response,
        headers: &HeaderMap,
        state: &CursorState,
        shown: &str,
    ) -> Result<Bytes, Failure> {
        let pagination = &self.settings.pagination;
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap_or("(binary)"));
        let format = self.settings.format;
        let body = match read_body(response, self.settings.max_response_bytes).await {
            Ok(body) => body,
            Err(BodyError::Timeout(e)) => {
                return Err(Failure::Transient {
                    message: format!("GET {shown}: reading body: {e}"),
                    retry_after: None,
                });
            }
            Err(BodyError::Truncated(partial, e)) => {
                return Err(Failure::bad(format!("truncated body: {e}"), partial));
            }
            Err(BodyError::TooLarge(partial)) => {
                return Err(Failure::Bad {
                    reason: format!(
                        "body exceeds max_response_bytes ({})",
                        self.settings.max_response_bytes
                    ),
                    body: partial,
                    skip_to: skip_unreadable(pagination, state).map(Box::new),
                });
            }
        };
        metrics::counter!("hubflow_source_response_bytes_total", "source" => self.settings.name.clone())
            .increment(body.len() as u64);
        if !format.accepts(content_type) {
            return Err(Failure::bad(
                format!(
                    "unexpected content type {:?}",
                    content_type.unwrap_or_default()
                ),
                body,
            ));
        }
        Ok(body)
    }

    /// The page in `body`: its records (less those already delivered) and
    /// the cursor after it, with the watermark and validators it carries.
    fn page_of(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: Bytes,
        state: &CursorState,
        position: &Url,
        shown: &str,
    ) -> Result<Page, Failure> {
        let pagination = &self.settings.pagination;
        // The records (spans of the body) and the body values asked for.
        let wanted = self.body_paths();
        let (texts, found) = self.split_records(status, &body, &wanted)?;
        let body_value = |path: &Option<JsonPath>| {
            let path = path.as_ref()?;
            let i = wanted.iter().position(|w| *w == path)?;
            found[i].as_ref()
        };

        let (mut records, watermark_values) = self.records_of(&texts, &body)?;

        let flag = |path: &Option<JsonPath>| body_value(path).and_then(Value::as_bool);
        let last_page = flag(&self.settings.last_page_flag) == Some(true)
            || flag(&self.settings.has_more_flag) == Some(false);
        let next_token = self.next_token(position, headers, &texts, &body, body_value)?;
        let current_token = match pagination {
            Pagination::Cursor { .. } | Pagination::Keyset { .. } => state.cursor.clone(),
            _ => Some(position.to_string()),
        };
        let observed = Observed {
            count: records.len() as u64,
            digest: page_digest(records.iter().map(|r| r.id.as_str())),
            last_page,
            next_token,
        };
        let (mut next, skip, caught_up) =
            match advance(pagination, state, &observed, current_token.as_deref()) {
                Step::Page {
                    next,
                    skip,
                    caught_up,
                } => (next, skip, caught_up),
                Step::Identical => {
                    return Err(Failure::bad("page is identical to the previous page", body));
                }
                Step::NotAdvanced => {
                    return Err(Failure::bad("next position equals the requested one", body));
                }
            };
        if let Some(w) = &self.settings.watermark {
            let body_watermark = body_value(&w.body_path().cloned()).cloned();
            next = self.with_watermark(state, next, caught_up, body_watermark, watermark_values);
        }
        if self.settings.conditional_get
            && self.position_url(&next)? == *position
            && let Some(v) = validators(position, headers)
        {
            next.validators = Some(v);
        }
        let caught_up = self.end_of_poll(caught_up);
        let skip = usize::try_from(skip)
            .unwrap_or(usize::MAX)
            .min(records.len());
        records.drain(..skip);
        debug!(source = %self.settings.name, url = %shown, records = records.len(), skipped = skip, caught_up, "page fetched");
        Ok(Page {
            records,
            next: SourceCursor(next.encode()),
            caught_up,
            request: format!("GET {shown}"),
        })
    }

    /// The next cursor with the watermark: raised from what this page
    /// showed once the poll is over (the next poll starts from the
    /// beginning), carried along while it goes on.
    fn with_watermark(
        &self,
        state: &CursorState,
        next: CursorState,
        caught_up: bool,
        body_watermark: Option<Value>,
        record_values: Vec<String>,
    ) -> CursorState {
        let Some(w) = &self.settings.watermark else {
            return next;
        };
        let (high, odd) = w.observe(state.high.clone(), body_watermark.as_ref(), record_values);
        if let Some(first) = odd.first() {
            warn!(source = %self.settings.name, ignored = odd.len(), value = %first, "watermark values of another kind ignored");
        }
        let current = self.watermark_of(state);
        if caught_up {
            CursorState {
                watermark: w.next(current.as_deref(), high),
                ..Default::default()
            }
        } else {
            CursorState {
                watermark: current,
                high,
                ..next
            }
        }
    }

    /// Whether the poll ends with this page: the source is caught up, or
    /// `max_pages_per_poll` pages were fetched in it.
    fn end_of_poll(&self, caught_up: bool) -> bool {
        if caught_up {
            self.pages_in_poll.store(0, Ordering::Relaxed);
            return true;
        }
        if let Some(max) = self.settings.max_pages_per_poll {
            let pages = self.pages_in_poll.fetch_add(1, Ordering::Relaxed) + 1;
            if pages >= max {
                self.pages_in_poll.store(0, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// The token of the next page: from the body (cursor, next URL), the
    /// `Link` header, or the last record (keyset).
    fn next_token<'v>(
        &self,
        position: &Url,
        headers: &HeaderMap,
        texts: &[Cow<'_, str>],
        body: &Bytes,
        body_value: impl Fn(&Option<JsonPath>) -> Option<&'v Value>,
    ) -> Result<Option<String>, Failure> {
        let pagination = &self.settings.pagination;
        let flag = |path: &Option<JsonPath>| body_value(path).and_then(Value::as_bool);
        let token = match pagination {
            Pagination::Cursor { from, .. } | Pagination::NextUrl { from } => {
                let raw = body_value(&Some(from.clone())).and_then(scalar_text);
                match (raw, pagination) {
                    (Some(raw), Pagination::NextUrl { .. }) => {
                        Some(self.next_url(position, &raw, body)?)
                    }
                    (raw, _) => raw,
                }
            }
            Pagination::LinkHeader => {
                let link = headers
                    .get_all(header::LINK)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(link_next);
                match link {
                    Some(raw) => Some(self.next_url(position, &raw, body)?),
                    None => None,
                }
            }
            Pagination::Keyset { from_record, .. } => match texts.last() {
                None => {
                    if flag(&self.settings.has_more_flag) == Some(true) {
                        return Err(Failure::bad(
                            "keyset: the body says has_more but the page is empty",
                            body.clone(),
                        ));
                    }
                    None
                }
                Some(last) => {
                    let value = raw_lookup(last, from_record.segments())
                        .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
                        .as_ref()
                        .and_then(scalar_text);
                    match value {
                        Some(v) => Some(v),
                        None => {
                            return Err(Failure::bad(
                                format!(
                                    "keyset: the last record of the page has no `{from_record}` to continue after"
                                ),
                                body.clone(),
                            ));
                        }
                    }
                }
            },
            _ => None,
        };
        Ok(token)
    }

    /// Send the GET (after the rate limiter; with validators for a
    /// conditional GET and the OAuth2 token), once more with a fresh token
    /// if the API refuses the one used.
    async fn send(
        &self,
        request_url: &Url,
        conditional: Option<&Validators>,
        shown: &str,
    ) -> Result<reqwest::Response, Failure> {
        let mut token_refreshed = false;
        loop {
            if let Some((wait, reason)) = self.limiter.acquire().await {
                metrics::histogram!("hubflow_source_rate_limit_wait_seconds", "source" => self.settings.name.clone(), "reason" => reason.label())
                    .record(wait.as_secs_f64());
                debug!(source = %self.settings.name, wait_ms = wait.as_millis() as u64, reason = reason.label(), "rate limit wait");
            }
            let mut request = self
                .client
                .get(request_url.clone())
                .headers(self.settings.headers.clone());
            if let Some(v) = conditional {
                for (name, value) in [
                    (header::IF_NONE_MATCH, &v.etag),
                    (header::IF_MODIFIED_SINCE, &v.last_modified),
                ] {
                    if let Some(value) =
                        value.as_deref().and_then(|t| HeaderValue::from_str(t).ok())
                    {
                        request = request.header(name, value);
                    }
                }
            }
            let authorization = match &self.tokens {
                Some(tokens) => Some(tokens.authorization().await.map_err(token_failure)?),
                None => None,
            };
            if let Some(value) = &authorization {
                request = request.header(header::AUTHORIZATION, value.clone());
            }
            let response = request.send().await.map_err(|e| {
                let builder = e.is_builder();
                let message = format!("GET {shown}: {}", error_chain(&e.without_url()));
                if builder {
                    Failure::Fatal(message)
                } else {
                    Failure::Transient {
                        message,
                        retry_after: None,
                    }
                }
            })?;
            if let Some(wait) = self.limiter.observe(response.headers(), chrono::Utc::now()) {
                debug!(source = %self.settings.name, wait_ms = wait.as_millis() as u64, "server rate limit exhausted, next request waits for its reset");
            }
            if response.status() == StatusCode::UNAUTHORIZED
                && !token_refreshed
                && let (Some(tokens), Some(used)) = (&self.tokens, &authorization)
            {
                debug!(source = %self.settings.name, "api refused the oauth2 token, fetching a new one");
                tokens.reject(used).await;
                token_refreshed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// The body's records (spans of the body, or owned text for CSV) and
    /// the values at `wanted` (JSON bodies only).
    fn split_records<'b>(
        &self,
        status: StatusCode,
        body: &'b Bytes,
        wanted: &[&JsonPath],
    ) -> Result<Split<'b>, Failure> {
        let format = self.settings.format;
        let wanted_segments: Vec<&[String]> = wanted.iter().map(|p| p.segments()).collect();
        let split = if status == StatusCode::NO_CONTENT
            || (format.is_record_stream() && body.is_empty())
        {
            (Vec::new(), vec![None; wanted.len()])
        } else if format == BodyFormat::Ndjson {
            (
                split_ndjson(body).map_err(|reason| Failure::bad(reason, body.clone()))?,
                vec![None; wanted.len()],
            )
        } else if format == BodyFormat::Csv {
            (
                super::csv::records(body).map_err(|reason| Failure::bad(reason, body.clone()))?,
                vec![None; wanted.len()],
            )
        } else {
            let scanned = scan_document(body, self.settings.records.segments(), &wanted_segments)
                .map_err(|e| {
                let what = if e.is_eof() {
                    "truncated json"
                } else {
                    "malformed json"
                };
                Failure::bad(format!("{what}: {e}"), body.clone())
            })?;
            match scanned.records {
                Records::Found(texts) => (texts, scanned.values),
                Records::NotArray(what) => {
                    return Err(Failure::bad(
                        format!(
                            "`{}` is {what} (expected an array of records)",
                            self.settings.records
                        ),
                        body.clone(),
                    ));
                }
                Records::Missing => {
                    return Err(Failure::bad(
                        format!("no records at `{}`", self.settings.records),
                        body.clone(),
                    ));
                }
            }
        };
        Ok(split)
    }

    /// Each record with its id (the id field, or a hash of the record),
    /// and the record watermark values.
    fn records_of(
        &self,
        texts: &[Cow<'_, str>],
        body: &Bytes,
    ) -> Result<(Vec<SourceRecord>, Vec<String>), Failure> {
        let mut records = Vec::with_capacity(texts.len());
        let mut watermark_values = Vec::new();
        let watermark_field = self
            .settings
            .watermark
            .as_ref()
            .and_then(|w| w.field_path());
        for text in texts {
            let id = match &self.settings.id_field {
                Some(path) => raw_lookup(text, path.segments())
                    .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
                    .as_ref()
                    .and_then(scalar_text),
                None => None,
            };
            let id = match id {
                Some(id) => id,
                None => {
                    let value: Value = serde_json::from_str(text).map_err(|e| {
                        Failure::bad(format!("record is not json: {e}"), body.clone())
                    })?;
                    content_id(&value)
                }
            };
            if let Some(path) = watermark_field
                && let Some(value) = raw_lookup(text, path.segments())
                    .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
                    .as_ref()
                    .and_then(scalar_text)
            {
                watermark_values.push(value);
            }
            let payload = match text {
                Cow::Borrowed(span) => body.slice_ref(span.as_bytes()),
                Cow::Owned(owned) => Bytes::from(owned.clone()),
            };
            records.push(SourceRecord { id, payload });
        }
        Ok((records, watermark_values))
    }

    async fn status_failure(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        shown: &str,
        response: reqwest::Response,
    ) -> Failure {
        let retry_after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now()));
        let message = format!("http {status} for GET {shown}");
        if status.is_server_error()
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
        {
            return Failure::Transient {
                message,
                retry_after,
            };
        }
        if status.is_client_error() {
            return Failure::Fatal(message);
        }
        // 1xx or a redirect we did not follow: keep what came for inspection.
        let body = match read_body(response, self.settings.max_response_bytes).await {
            Ok(b) | Err(BodyError::Truncated(b, _)) | Err(BodyError::TooLarge(b)) => b,
            Err(BodyError::Timeout(_)) => Bytes::new(),
        };
        Failure::bad(format!("unexpected status {status}"), body)
    }
}

#[async_trait]
impl Source for HttpSource {
    fn name(&self) -> &str {
        &self.settings.name
    }

    async fn fetch(&self, cursor: &SourceCursor) -> Result<Page, SourceError> {
        let started = Instant::now();
        let mut shown = self.settings.display_url();
        let result = self.fetch_inner(cursor, &mut shown).await;
        let name = self.settings.name.clone();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(f) => f.outcome(),
        };
        metrics::counter!("hubflow_source_requests_total", "source" => name.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!("hubflow_source_request_duration_seconds", "source" => name.clone())
            .record(started.elapsed().as_secs_f64());
        result.map_err(|failure| match failure {
            Failure::Transient {
                message,
                retry_after,
            } => SourceError::Transient {
                source_name: name,
                message,
                retry_after,
            },
            Failure::Fatal(message) => SourceError::Fatal {
                source_name: name,
                message,
            },
            Failure::Bad {
                reason,
                body,
                skip_to,
            } => SourceError::BadResponse(
                Box::new(DeadLetter {
                    source: name,
                    reason,
                    request: format!("GET {shown}"),
                    body,
                }),
                skip_to.map(|s| SourceCursor(s.encode())),
            ),
        })
    }
}

/// Reads a body up to `max` bytes, keeping what arrived when it fails.
async fn read_body(mut response: reqwest::Response, max: u64) -> Result<Bytes, BodyError> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    if response
        .content_length()
        .is_some_and(|len| len > max as u64)
    {
        return Err(BodyError::TooLarge(Bytes::new()));
    }
    let mut buf = BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > max {
                    let room = max - buf.len();
                    buf.extend_from_slice(&chunk[..room]);
                    return Err(BodyError::TooLarge(buf.freeze()));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(e) if e.is_timeout() => {
                return Err(BodyError::Timeout(error_chain(&e.without_url())));
            }
            Err(e) => {
                return Err(BodyError::Truncated(
                    buf.freeze(),
                    error_chain(&e.without_url()),
                ));
            }
        }
    }
}

/// The records of an NDJSON body, each line validated as one JSON value.
fn split_ndjson(body: &[u8]) -> Result<Vec<Cow<'_, str>>, String> {
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        serde_json::from_slice::<serde::de::IgnoredAny>(line)
            .map_err(|e| format!("malformed ndjson line {}: {e}", i + 1))?;
        let text = std::str::from_utf8(line)
            .map_err(|e| format!("malformed ndjson line {}: invalid utf-8: {e}", i + 1))?;
        out.push(Cow::Borrowed(
            text.trim_matches(|c: char| c.is_ascii_whitespace()),
        ));
    }
    Ok(out)
}

fn token_failure(error: TokenError) -> Failure {
    match error {
        TokenError::Transient {
            message,
            retry_after,
        } => Failure::Transient {
            message,
            retry_after,
        },
        TokenError::Fatal(message) => Failure::Fatal(message),
    }
}
