//! The HTTP source's wire configuration ([`HttpSourceConfig`], as written in
//! `hubflow.toml`) and its validated form ([`HttpSourceSettings`]).
//!
//! Validation resolves secrets, parses URLs, header names and body paths, and
//! checks the combination of options; every error names the field path
//! (`sources.orders.pagination.size` style, relative to the source).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use hubflow_actors::retry::RetryBudget;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use url::Url;

use super::error::ConfigError;
use super::extract::{JsonPath, redact_url};
use super::oauth::{ClientAuth, DEFAULT_REFRESH_MARGIN_SECS, OAuth2Settings};
use super::ratelimit::{RateLimit, RateLimitConfig};
use super::secret::{Secret, SecretString};
use super::watermark::{Watermark, WatermarkConfig, WatermarkSource};

/// Default request timeout (whole request, body included).
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Default cap on a response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// One HTTP GET source, as configured.
///
/// ```toml
/// name = "orders"
/// url = "https://api.example.com/v1/orders"
/// query = { status = "all" }
/// auth = { type = "bearer", token = { env = "ORDERS_TOKEN" } }
/// records = "data.items"
/// id_field = "id"
/// pagination = { type = "cursor", param = "cursor", from = "meta.next_cursor" }
/// watermark = { field = "updated_at", param = "updated_since" }
/// rate_limit = { requests_per_sec = 5.0 }
/// retry_budget = { max_failures = 10 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Name of the source: labels logs and metrics and names its cursor
    /// record and dead letters. ASCII letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The endpoint (`http` or `https`); may already carry query parameters.
    pub url: String,
    /// Query parameters added to the first request of a walk. Server-given
    /// next URLs (`next_url`, `link_header`) are followed as given.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Extra request headers. Values may be secrets (`{ env = "VAR" }`);
    /// all header values are treated as sensitive and never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, SecretString>,
    /// How requests authenticate.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `json` (default): the body is one JSON document. `ndjson`: one record
    /// per line.
    #[serde(default)]
    pub format: BodyFormat,
    /// Where the records are in a JSON body: a dotted path (`data.items`), or
    /// `$` (default) when the body itself is the array. Must be `$` for ndjson.
    #[serde(default = "default_records")]
    pub records: String,
    /// Path of each record's id inside the record (`id`, `meta.uuid`). Absent,
    /// or missing from a record: the id is a hash of the record's canonical
    /// JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    /// How to ask for the next page.
    #[serde(default)]
    pub pagination: PaginationConfig,
    /// Body path of a boolean that is `true` on the last page available now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_page_flag: Option<String>,
    /// Body path of a boolean that is `false` on the last page available now
    /// (`has_more` style).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_more_flag: Option<String>,
    /// Timeout of one request, body included, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Largest response body accepted; larger ones are dead-lettered.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// After this many pages in a row without catching up, report caught up
    /// anyway so the fetcher pauses for its poll interval (spreads load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pages_per_poll: Option<u32>,
    /// Incremental sync: a watermark sent as a query parameter on every
    /// request of a poll (see [`super::watermark`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkConfig>,
    /// Conditional GET: remember the `ETag` / `Last-Modified` of the page a
    /// poll starts from and send `If-None-Match` / `If-Modified-Since` when
    /// asking for it again; `304 Not Modified` means nothing new.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub conditional_get: bool,
    /// Client-side request rate and the server's rate-limit headers (see
    /// [`super::ratelimit`]).
    #[serde(default, skip_serializing_if = "is_default")]
    pub rate_limit: RateLimitConfig,
    /// When the fetcher stops retrying in place and fails, so its supervisor
    /// restarts it with backoff.
    #[serde(default, skip_serializing_if = "is_default")]
    pub retry_budget: RetryBudgetConfig,
}

impl HttpSourceConfig {
    /// A source with every option at its default.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        HttpSourceConfig {
            name: name.into(),
            url: url.into(),
            query: BTreeMap::new(),
            headers: BTreeMap::new(),
            auth: AuthConfig::None,
            format: BodyFormat::Json,
            records: default_records(),
            id_field: None,
            pagination: PaginationConfig::None,
            last_page_flag: None,
            has_more_flag: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            max_pages_per_poll: None,
            watermark: None,
            conditional_get: true,
            rate_limit: RateLimitConfig::default(),
            retry_budget: RetryBudgetConfig::default(),
        }
    }
}

/// Default consecutive failures a fetcher absorbs before it fails.
pub const DEFAULT_RETRY_MAX_FAILURES: u32 = 10;

/// The `retry_budget` table: the first limit reached ends the fetcher's
/// in-place retries (0 turns a limit off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RetryBudgetConfig {
    /// Consecutive failed fetches.
    pub max_failures: u32,
    /// Length of a failure streak, in milliseconds.
    pub max_elapsed_ms: u64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            max_failures: DEFAULT_RETRY_MAX_FAILURES,
            max_elapsed_ms: 0,
        }
    }
}

impl RetryBudgetConfig {
    pub fn budget(&self) -> RetryBudget {
        RetryBudget {
            max_failures: (self.max_failures > 0).then_some(self.max_failures),
            max_elapsed: (self.max_elapsed_ms > 0)
                .then(|| Duration::from_millis(self.max_elapsed_ms)),
        }
    }
}

fn default_true() -> bool {
    true
}
fn is_true(v: &bool) -> bool {
    *v
}
fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
fn default_refresh_margin_secs() -> u64 {
    DEFAULT_REFRESH_MARGIN_SECS
}

fn default_records() -> String {
    "$".to_string()
}
fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}
fn default_max_response_bytes() -> u64 {
    DEFAULT_MAX_RESPONSE_BYTES
}

/// Body format of a page.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Json,
    Ndjson,
    /// A header row, then one record per row (RFC 4180 quoting). Each row
    /// becomes a JSON object of the header's names: empty fields are null,
    /// `true`/`false` booleans, numbers numbers (unless they have a leading
    /// zero, like `007`), the rest strings; the curated format then infers
    /// column types as for JSON.
    Csv,
}

impl BodyFormat {
    /// Whether a `Content-Type` is acceptable for the body format. A missing
    /// header is accepted (many APIs omit it); HTML and friends are not.
    pub fn accepts(self, content_type: Option<&str>) -> bool {
        let Some(content_type) = content_type else {
            return true;
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match self {
            BodyFormat::Json | BodyFormat::Ndjson
                if essence.is_empty()
                    || essence.ends_with("json")
                    || essence.ends_with("+json") =>
            {
                true
            }
            BodyFormat::Json => false,
            BodyFormat::Ndjson => matches!(
                essence.as_str(),
                "application/x-ndjson"
                    | "application/jsonl"
                    | "application/json-seq"
                    | "text/plain"
            ),
            BodyFormat::Csv => matches!(
                essence.as_str(),
                "" | "text/csv" | "application/csv" | "text/plain" | "application/octet-stream"
            ),
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            BodyFormat::Json => "json",
            BodyFormat::Ndjson => "ndjson",
            BodyFormat::Csv => "csv",
        }
    }

    /// A body of records one after another, with no JSON document around
    /// them to read paths, flags or cursors from.
    pub fn is_record_stream(self) -> bool {
        self != BodyFormat::Json
    }
}

/// Request authentication.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer { token: SecretString },
    /// An API key in a header (`header = "X-Api-Key"`) or a query parameter
    /// (`query = "api_key"`): exactly one of the two.
    ApiKey {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        header: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        query: Option<String>,
        value: SecretString,
    },
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        username: String,
        password: SecretString,
    },
    /// OAuth 2.0 client credentials: `Authorization: Bearer <token>` with a
    /// token from `token_url`, cached and refreshed (see [`super::oauth`]).
    #[serde(rename = "oauth2")]
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: SecretString,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// `basic` (default) or `body`: how the client authenticates to
        /// the token endpoint.
        #[serde(default)]
        client_auth: ClientAuth,
        /// Replace the token this long before it expires.
        #[serde(default = "default_refresh_margin_secs")]
        refresh_margin_secs: u64,
    },
}

/// How the next page is requested.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PaginationConfig {
    /// One request per poll; every poll fetches the same URL.
    #[default]
    None,
    /// `?page=N` from `start`, `size` records per page (the server's page
    /// size, sent as `size_param` when set). A page shorter than `size` is the
    /// last one for now; the next poll asks for it again and keeps only the
    /// records past those already delivered.
    PageNumber {
        #[serde(default = "default_page_param")]
        param: String,
        #[serde(default = "default_page_start")]
        start: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_param: Option<String>,
        size: u64,
    },
    /// `?offset=N&limit=M`; a page shorter than `limit` is the last one for now.
    OffsetLimit {
        #[serde(default = "default_offset_param")]
        offset_param: String,
        #[serde(default = "default_limit_param")]
        limit_param: String,
        limit: u64,
    },
    /// `?<param>=<cursor>` where the cursor comes from the body at `from`; no
    /// cursor in the body means caught up (the last cursor is kept, so records
    /// appended later are fetched by the next poll).
    Cursor {
        #[serde(default = "default_cursor_param")]
        param: String,
        from: String,
    },
    /// The next page's URL (absolute or relative) is in the body at `from`.
    NextUrl { from: String },
    /// The next page's URL is the `Link` header's `rel="next"` target.
    LinkHeader,
    /// Keyset (Stripe, Shopify): `?<param>=<value>` where the value is the
    /// field `from_record` of the last record of the previous page. A body
    /// flag `has_more` (optional) says whether more pages exist now;
    /// without it an empty page, or one shorter than `page_size` when that
    /// is set, means caught up. A later poll asks for the records after
    /// the last one delivered.
    Keyset {
        #[serde(default = "default_keyset_param")]
        param: String,
        from_record: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        has_more: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        page_size: Option<u64>,
    },
}

fn default_keyset_param() -> String {
    "starting_after".into()
}

fn default_page_param() -> String {
    "page".into()
}
fn default_page_start() -> u64 {
    1
}
fn default_offset_param() -> String {
    "offset".into()
}
fn default_limit_param() -> String {
    "limit".into()
}
fn default_cursor_param() -> String {
    "cursor".into()
}

/// Validated pagination.
#[derive(Debug, Clone, PartialEq)]
pub enum Pagination {
    None,
    PageNumber {
        param: String,
        start: u64,
        size_param: Option<String>,
        size: u64,
    },
    OffsetLimit {
        offset_param: String,
        limit_param: String,
        limit: u64,
    },
    Cursor {
        param: String,
        from: JsonPath,
    },
    NextUrl {
        from: JsonPath,
    },
    LinkHeader,
    Keyset {
        param: String,
        from_record: JsonPath,
        page_size: Option<u64>,
    },
}

impl Pagination {
    /// The config name of this pagination type.
    pub fn kind(&self) -> &'static str {
        match self {
            Pagination::None => "none",
            Pagination::PageNumber { .. } => "page_number",
            Pagination::OffsetLimit { .. } => "offset_limit",
            Pagination::Cursor { .. } => "cursor",
            Pagination::NextUrl { .. } => "next_url",
            Pagination::LinkHeader => "link_header",
            Pagination::Keyset { .. } => "keyset",
        }
    }
}

/// A validated HTTP source: everything resolved, secrets kept out of `Debug`.
#[derive(Clone)]
pub struct HttpSourceSettings {
    pub(crate) name: String,
    /// First-page URL with the configured query applied (no API key).
    pub(crate) url: Url,
    /// Configured and auth headers, all marked sensitive.
    pub(crate) headers: HeaderMap,
    /// API key sent as a query parameter: (name, value).
    pub(crate) query_key: Option<(String, Secret)>,
    pub(crate) format: BodyFormat,
    pub(crate) records: JsonPath,
    pub(crate) id_field: Option<JsonPath>,
    pub(crate) pagination: Pagination,
    pub(crate) last_page_flag: Option<JsonPath>,
    pub(crate) has_more_flag: Option<JsonPath>,
    pub(crate) timeout: Duration,
    pub(crate) max_response_bytes: u64,
    pub(crate) max_pages_per_poll: Option<u32>,
    pub(crate) oauth: Option<OAuth2Settings>,
    pub(crate) watermark: Option<Watermark>,
    pub(crate) conditional_get: bool,
    pub(crate) rate_limit: RateLimit,
    pub(crate) retry_budget: RetryBudget,
}

impl HttpSourceSettings {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first-page URL as it may be shown (secrets redacted).
    pub fn display_url(&self) -> String {
        redact_url(&self.url, self.query_key.as_ref().map(|(n, _)| n.as_str()))
    }

    pub fn pagination(&self) -> &Pagination {
        &self.pagination
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The fetcher's retry budget for this source.
    pub fn retry_budget(&self) -> RetryBudget {
        self.retry_budget
    }

    pub fn watermark(&self) -> Option<&Watermark> {
        self.watermark.as_ref()
    }

    pub fn rate_limit(&self) -> &RateLimit {
        &self.rate_limit
    }
}

impl fmt::Debug for HttpSourceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSourceSettings")
            .field("name", &self.name)
            .field("url", &self.display_url())
            .field(
                "headers",
                &self.headers.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            )
            .field("query_key", &self.query_key.as_ref().map(|(n, _)| n))
            .field("format", &self.format)
            .field("records", &self.records)
            .field("id_field", &self.id_field)
            .field("pagination", &self.pagination)
            .field("last_page_flag", &self.last_page_flag)
            .field("has_more_flag", &self.has_more_flag)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_pages_per_poll", &self.max_pages_per_poll)
            .field("oauth", &self.oauth)
            .field("watermark", &self.watermark)
            .field("conditional_get", &self.conditional_get)
            .field("rate_limit", &self.rate_limit)
            .field("retry_budget", &self.retry_budget)
            .finish()
    }
}

fn path(field: &str, text: &str) -> Result<JsonPath, ConfigError> {
    JsonPath::parse(text).map_err(|m| ConfigError::invalid(field, m))
}

fn non_empty(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(field, "must not be empty"));
    }
    Ok(())
}

fn sensitive(field: &str, value: &str) -> Result<HeaderValue, ConfigError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ConfigError::invalid(field, "not a valid header value"))?;
    v.set_sensitive(true);
    Ok(v)
}

impl HttpSourceConfig {
    /// Checks the configuration and resolves its secrets.
    /// Whether a secret (a header or an auth value) is given inline: such
    /// settings cannot be kept in the state container (literals serialize as
    /// `***`).
    pub fn has_literal_secrets(&self) -> bool {
        let auth = match &self.auth {
            AuthConfig::None => None,
            AuthConfig::Bearer { token } => Some(token),
            AuthConfig::ApiKey { value, .. } => Some(value),
            AuthConfig::Basic { password, .. } => Some(password),
            AuthConfig::OAuth2 { client_secret, .. } => Some(client_secret),
        };
        auth.is_some_and(SecretString::is_literal)
            || self.headers.values().any(SecretString::is_literal)
    }

    pub fn validate(&self) -> Result<HttpSourceSettings, ConfigError> {
        self.check_name()?;
        let url = self.first_url()?;
        let mut headers = self.headers()?;
        let (query_key, oauth) = self.auth(&url, &mut headers)?;
        let paths = self.body_paths()?;
        let pagination = self.pagination.validate()?;
        self.check_pagination(&pagination, &paths, &query_key)?;
        let watermark = self.watermark(&pagination, &query_key)?;
        let rate_limit = self.rate_limit.validate()?;

        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid("timeout_ms", "must be at least 1"));
        }
        if self.max_response_bytes == 0 {
            return Err(ConfigError::invalid(
                "max_response_bytes",
                "must be at least 1",
            ));
        }
        if self.max_pages_per_poll == Some(0) {
            return Err(ConfigError::invalid(
                "max_pages_per_poll",
                "must be at least 1",
            ));
        }

        Ok(HttpSourceSettings {
            name: self.name.clone(),
            url,
            headers,
            query_key,
            format: self.format,
            records: paths.records,
            id_field: paths.id_field,
            pagination,
            last_page_flag: paths.last_page_flag,
            has_more_flag: paths.has_more_flag,
            timeout: Duration::from_millis(self.timeout_ms),
            max_response_bytes: self.max_response_bytes,
            max_pages_per_poll: self.max_pages_per_poll,
            oauth,
            watermark,
            conditional_get: self.conditional_get,
            rate_limit,
            retry_budget: self.retry_budget.budget(),
        })
    }

    fn check_name(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::invalid(
                "name",
                "must be non-empty ASCII letters, digits, `-`, `_` or `.`",
            ));
        }
        Ok(())
    }

    /// The first page's URL: the configured one with `query` applied.
    fn first_url(&self) -> Result<Url, ConfigError> {
        let mut url = Url::parse(&self.url)
            .map_err(|e| ConfigError::invalid("url", format!("not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::invalid("url", "scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::invalid("url", "has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::invalid(
                "url",
                "must not contain credentials; use auth = { type = \"basic\", ... }",
            ));
        }
        url.set_fragment(None);
        for k in self.query.keys() {
            non_empty(&format!("query.{k}"), k)?;
        }
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(self.query.iter());
        }
        Ok(url)
    }

    /// `Accept` for the body format and the configured headers (sensitive).
    fn headers(&self) -> Result<HeaderMap, ConfigError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(match self.format {
                BodyFormat::Json => "application/json",
                BodyFormat::Ndjson => "application/x-ndjson, application/json;q=0.9",
                BodyFormat::Csv => "text/csv, application/csv;q=0.9",
            }),
        );
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ConfigError::invalid(&field, "not a valid header name"))?;
            let value = value.resolve(&field)?;
            headers.insert(header_name, sensitive(&field, value.expose())?);
        }
        Ok(headers)
    }

    /// The auth header (into `headers`), or the API key query parameter, or
    /// the OAuth2 settings.
    fn auth(
        &self,
        url: &Url,
        headers: &mut HeaderMap,
    ) -> Result<(QueryKey, Option<OAuth2Settings>), ConfigError> {
        let mut query_key = None;
        let mut oauth = None;
        match &self.auth {
            AuthConfig::None => {}
            AuthConfig::Bearer { token } => {
                let token = token.resolve("auth.token")?;
                let v = sensitive("auth.token", &format!("Bearer {}", token.expose()))?;
                headers.insert(header::AUTHORIZATION, v);
            }
            AuthConfig::ApiKey {
                header: h,
                query,
                value,
            } => match (h, query) {
                (Some(h), None) => {
                    let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                        ConfigError::invalid("auth.header", "not a valid header name")
                    })?;
                    let value = value.resolve("auth.value")?;
                    headers.insert(name, sensitive("auth.value", value.expose())?);
                }
                (None, Some(q)) => {
                    non_empty("auth.query", q)?;
                    if url.query_pairs().any(|(k, _)| k == q.as_str()) {
                        return Err(ConfigError::invalid(
                            "auth.query",
                            format!("parameter `{q}` is also set in url or query"),
                        ));
                    }
                    query_key = Some((q.clone(), value.resolve("auth.value")?));
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "auth",
                        "api_key needs exactly one of `header` or `query`",
                    ));
                }
            },
            AuthConfig::Basic { username, password } => {
                if username.contains(':') {
                    return Err(ConfigError::invalid(
                        "auth.username",
                        "must not contain `:`",
                    ));
                }
                let password = password.resolve("auth.password")?;
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{}", password.expose()));
                headers.insert(
                    header::AUTHORIZATION,
                    sensitive("auth.password", &format!("Basic {encoded}"))?,
                );
            }
            AuthConfig::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                client_auth,
                refresh_margin_secs,
            } => {
                oauth = Some(OAuth2Settings::validate(
                    token_url,
                    client_id,
                    client_secret,
                    scope.as_deref(),
                    *client_auth,
                    *refresh_margin_secs,
                )?);
            }
        }
        Ok((query_key, oauth))
    }

    /// Where records, ids and the body's paging flags are.
    fn body_paths(&self) -> Result<BodyPaths, ConfigError> {
        let records = path("records", &self.records)?;
        if self.format.is_record_stream() && !records.is_root() {
            return Err(ConfigError::invalid(
                "records",
                format!("must be `$` with format = \"{}\"", self.format.name()),
            ));
        }
        let id_field = self
            .id_field
            .as_deref()
            .map(|p| path("id_field", p))
            .transpose()?;
        if id_field.as_ref().is_some_and(JsonPath::is_root) {
            return Err(ConfigError::invalid(
                "id_field",
                "must name a field inside the record",
            ));
        }
        let last_page_flag = self
            .last_page_flag
            .as_deref()
            .map(|p| path("last_page_flag", p))
            .transpose()?;
        let keyset_has_more = match &self.pagination {
            PaginationConfig::Keyset {
                has_more: Some(flag),
                ..
            } => {
                if self.has_more_flag.is_some() {
                    return Err(ConfigError::invalid(
                        "pagination.has_more",
                        "give the flag either here or as has_more_flag, not both",
                    ));
                }
                Some(flag.as_str())
            }
            _ => None,
        };
        let has_more_flag = self
            .has_more_flag
            .as_deref()
            .or(keyset_has_more)
            .map(|p| path("has_more_flag", p))
            .transpose()?;
        Ok(BodyPaths {
            records,
            id_field,
            last_page_flag,
            has_more_flag,
        })
    }

    /// What the body format and the API key allow of the pagination.
    fn check_pagination(
        &self,
        pagination: &Pagination,
        paths: &BodyPaths,
        query_key: &QueryKey,
    ) -> Result<(), ConfigError> {
        if self.format.is_record_stream() {
            let format = self.format.name();
            if matches!(
                pagination,
                Pagination::Cursor { .. } | Pagination::NextUrl { .. }
            ) {
                return Err(ConfigError::invalid(
                    "pagination.type",
                    format!("cursor and next_url read the body, which {format} does not allow"),
                ));
            }
            if paths.last_page_flag.is_some() || paths.has_more_flag.is_some() {
                return Err(ConfigError::invalid(
                    if paths.last_page_flag.is_some() {
                        "last_page_flag"
                    } else {
                        "has_more_flag"
                    },
                    format!("body flags are not available with format = \"{format}\""),
                ));
            }
        }
        if let (
            Some((key, _)),
            Pagination::PageNumber {
                param, size_param, ..
            },
        ) = (&query_key, &pagination)
            && (key == param || size_param.as_ref() == Some(key))
        {
            return Err(ConfigError::invalid(
                "auth.query",
                "collides with a pagination parameter",
            ));
        }
        Ok(())
    }

    /// The watermark, which must not reuse a pagination or API key parameter.
    fn watermark(
        &self,
        pagination: &Pagination,
        query_key: &QueryKey,
    ) -> Result<Option<Watermark>, ConfigError> {
        let watermark = self
            .watermark
            .as_ref()
            .map(WatermarkConfig::validate)
            .transpose()?;
        if let Some(w) = &watermark {
            if self.format.is_record_stream() && matches!(w.source, WatermarkSource::Body(_)) {
                return Err(ConfigError::invalid(
                    "watermark.from",
                    format!(
                        "reads the body, which format = \"{}\" does not allow; use `field`",
                        self.format.name()
                    ),
                ));
            }
            let taken: Vec<&str> = match &pagination {
                Pagination::PageNumber {
                    param, size_param, ..
                } => std::iter::once(param.as_str())
                    .chain(size_param.as_deref())
                    .collect(),
                Pagination::OffsetLimit {
                    offset_param,
                    limit_param,
                    ..
                } => vec![offset_param, limit_param],
                Pagination::Cursor { param, .. } => vec![param],
                _ => Vec::new(),
            };
            if taken.contains(&w.param.as_str())
                || query_key.as_ref().is_some_and(|(k, _)| *k == w.param)
            {
                return Err(ConfigError::invalid(
                    "watermark.param",
                    format!("`{}` is already a pagination or api key parameter", w.param),
                ));
            }
        }
        Ok(watermark)
    }
}

/// An API key sent as a query parameter: (name, value).
type QueryKey = Option<(String, Secret)>;

/// The validated body paths of a source.
struct BodyPaths {
    records: JsonPath,
    id_field: Option<JsonPath>,
    last_page_flag: Option<JsonPath>,
    has_more_flag: Option<JsonPath>,
}

impl PaginationConfig {
    fn validate(&self) -> Result<Pagination, ConfigError> {
        let pagination = match self {
            PaginationConfig::None => Pagination::None,
            PaginationConfig::PageNumber {
                param,
                start,
                size_param,
                size,
            } => {
                non_empty("pagination.param", param)?;
                if let Some(p) = size_param {
                    non_empty("pagination.size_param", p)?;
                }
                if *size == 0 {
                    return Err(ConfigError::invalid(
                        "pagination.size",
                        "must be at least 1",
                    ));
                }
                Pagination::PageNumber {
                    param: param.clone(),
                    start: *start,
                    size_param: size_param.clone(),
                    size: *size,
                }
            }
            PaginationConfig::OffsetLimit {
                offset_param,
                limit_param,
                limit,
            } => {
                non_empty("pagination.offset_param", offset_param)?;
                non_empty("pagination.limit_param", limit_param)?;
                if *limit == 0 {
                    return Err(ConfigError::invalid(
                        "pagination.limit",
                        "must be at least 1",
                    ));
                }
                Pagination::OffsetLimit {
                    offset_param: offset_param.clone(),
                    limit_param: limit_param.clone(),
                    limit: *limit,
                }
            }
            PaginationConfig::Cursor { param, from } => {
                non_empty("pagination.param", param)?;
                Pagination::Cursor {
                    param: param.clone(),
                    from: path("pagination.from", from)?,
                }
            }
            PaginationConfig::NextUrl { from } => Pagination::NextUrl {
                from: path("pagination.from", from)?,
            },
            PaginationConfig::LinkHeader => Pagination::LinkHeader,
            PaginationConfig::Keyset {
                param,
                from_record,
                page_size,
                ..
            } => {
                non_empty("pagination.param", param)?;
                if *page_size == Some(0) {
                    return Err(ConfigError::invalid(
                        "pagination.page_size",
                        "must be at least 1",
                    ));
                }
                Pagination::Keyset {
                    param: param.clone(),
                    from_record: path("pagination.from_record", from_record)?,
                    page_size: *page_size,
                }
            }
        };
        Ok(pagination)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        use BodyFormat::{Csv, Json, Ndjson};
        assert!(Json.accepts(None));
        assert!(Json.accepts(Some("application/json; charset=utf-8")));
        assert!(Json.accepts(Some("application/vnd.api+json")));
        assert!(!Json.accepts(Some("text/html")));
        assert!(!Json.accepts(Some("text/plain")));
        assert!(Ndjson.accepts(Some("application/x-ndjson")));
        assert!(!Ndjson.accepts(Some("text/html; charset=utf-8")));
        assert!(Csv.accepts(Some("text/csv; charset=utf-8")));
        assert!(!Csv.accepts(Some("application/json")));
    }

    fn parse(text: &str) -> HttpSourceConfig {
        toml::from_str(text).unwrap()
    }

    const MINIMAL: &str = r#"
        name = "orders"
        url = "https://api.example.com/v1/orders"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let settings = parse(MINIMAL).validate().unwrap();
        assert_eq!(settings.pagination, Pagination::None);
        assert!(settings.records.is_root());
        assert_eq!(settings.timeout, Duration::from_millis(DEFAULT_TIMEOUT_MS));
        assert_eq!(settings.max_response_bytes, DEFAULT_MAX_RESPONSE_BYTES);
    }

    #[test]
    fn full_config_parses() {
        let cfg = parse(
            r#"
            name = "orders"
            url = "https://api.example.com/v1/orders?fixed=1"
            query = { status = "all" }
            headers = { "X-Tenant" = "acme", "X-Token" = { env = "HUBFLOW_TEST_UNUSED" } }
            auth = { type = "api_key", query = "api_key", value = "k" }
            records = "data.items"
            id_field = "meta.id"
            pagination = { type = "page_number", param = "p", start = 0, size_param = "n", size = 50 }
            last_page_flag = "meta.last"
            timeout_ms = 500
            max_response_bytes = 1024
            max_pages_per_poll = 10
        "#,
        );
        assert_eq!(
            cfg.pagination,
            PaginationConfig::PageNumber {
                param: "p".into(),
                start: 0,
                size_param: Some("n".into()),
                size: 50
            }
        );
        assert_eq!(
            cfg.headers["X-Token"],
            SecretString::env("HUBFLOW_TEST_UNUSED")
        );
        // The env var is unset: validation names the header.
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("headers.X-Token:"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        for bad in [
            "colour = 1",
            r#"pagination = { type = "cursor", from = "c", oops = 1 }"#,
            r#"auth = { type = "bearer", token = "t", extra = 2 }"#,
            r#"pagination = { type = "sideways" }"#,
        ] {
            let text = format!("{MINIMAL}\n{bad}");
            assert!(
                toml::from_str::<HttpSourceConfig>(&text).is_err(),
                "accepted: {bad}"
            );
        }
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                r#"pagination = { type = "page_number", size = 0 }"#,
                "pagination.size:",
            ),
            (
                r#"pagination = { type = "offset_limit", limit = 0 }"#,
                "pagination.limit:",
            ),
            (
                r#"pagination = { type = "cursor", from = "" }"#,
                "pagination.from:",
            ),
            (r#"auth = { type = "api_key", value = "v" }"#, "auth:"),
            (
                r#"auth = { type = "api_key", header = "bad header", value = "v" }"#,
                "auth.header:",
            ),
            (r#"headers = { "X-A" = "line\nbreak" }"#, "headers.X-A:"),
            ("id_field = \"$\"", "id_field:"),
            ("timeout_ms = 0", "timeout_ms:"),
            ("max_pages_per_poll = 0", "max_pages_per_poll:"),
            (
                r#"format = "ndjson"
                records = "data""#,
                "records:",
            ),
            (
                r#"format = "ndjson"
                pagination = { type = "next_url", from = "next" }"#,
                "pagination.type:",
            ),
            (
                r#"auth = { type = "oauth2", token_url = "nope", client_id = "c", client_secret = "s" }"#,
                "auth.token_url:",
            ),
            (
                r#"auth = { type = "oauth2", token_url = "https://t/x", client_id = "c", client_secret = { env = "HUBFLOW_TEST_UNSET_SECRET" } }"#,
                "auth.client_secret:",
            ),
            (
                r#"watermark = { field = "updated_at", from = "x", param = "since" }"#,
                "watermark:",
            ),
            (
                r#"pagination = { type = "cursor", param = "since", from = "next" }
                watermark = { field = "updated_at", param = "since" }"#,
                "watermark.param:",
            ),
            (
                r#"format = "ndjson"
                watermark = { from = "sync", param = "since" }"#,
                "watermark.from:",
            ),
            (
                "rate_limit = { requests_per_sec = -1.0 }",
                "rate_limit.requests_per_sec:",
            ),
            ("rate_limit = { burst = 0 }", "rate_limit.burst:"),
        ];
        for (extra, field) in cases {
            let err = parse(&format!("{MINIMAL}\n{extra}"))
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(field), "{extra}: {err}");
        }
        let mut cfg = parse(MINIMAL);
        cfg.url = "ftp://x/y".into();
        assert!(cfg.validate().unwrap_err().to_string().starts_with("url:"));
        cfg.url = "https://me:pw@x/y".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.starts_with("url:") && !err.contains("pw"), "{err}");
        cfg.url = "https://x/y".into();
        cfg.name = "has space".into();
        assert!(cfg.validate().unwrap_err().to_string().starts_with("name:"));
    }

    #[test]
    fn incremental_options_parse_with_defaults() {
        let settings = parse(MINIMAL).validate().unwrap();
        assert!(settings.conditional_get);
        assert_eq!(settings.watermark, None);
        assert_eq!(settings.rate_limit.requests_per_sec, None);
        assert!(settings.rate_limit.honor_headers);
        assert_eq!(
            settings.retry_budget,
            RetryBudget {
                max_failures: Some(DEFAULT_RETRY_MAX_FAILURES),
                max_elapsed: None
            }
        );
        let cfg = parse(&format!(
            r#"{MINIMAL}
            auth = {{ type = "oauth2", token_url = "https://login.example.com/t", client_id = "hubflow", client_secret = "oauth-s3cret", scope = "read", client_auth = "body" }}
            watermark = {{ field = "meta.updated_at", param = "updated_since", initial = "2024-01-01T00:00:00Z" }}
            conditional_get = false
            rate_limit = {{ requests_per_sec = 2.5, burst = 3, honor_headers = false, max_wait_ms = 1000 }}
            retry_budget = {{ max_failures = 0, max_elapsed_ms = 60000 }}
            "#
        ));
        let settings = cfg.validate().unwrap();
        assert!(!settings.conditional_get);
        let w = settings.watermark.as_ref().unwrap();
        assert_eq!(
            (w.param.as_str(), w.initial.as_deref()),
            ("updated_since", Some("2024-01-01T00:00:00Z"))
        );
        assert_eq!(settings.rate_limit.requests_per_sec, Some(2.5));
        assert_eq!(settings.rate_limit.burst, 3);
        assert_eq!(
            settings.retry_budget,
            RetryBudget {
                max_failures: None,
                max_elapsed: Some(Duration::from_secs(60))
            }
        );
        let oauth = settings.oauth.as_ref().unwrap();
        assert_eq!(oauth.client_auth, ClientAuth::Body);
        assert_eq!(oauth.scope.as_deref(), Some("read"));
        assert_eq!(
            oauth.refresh_margin,
            Duration::from_secs(DEFAULT_REFRESH_MARGIN_SECS)
        );
        for shown in [format!("{cfg:?}"), format!("{settings:?}")] {
            assert!(!shown.contains("oauth-s3cret"), "{shown}");
        }
        // The wire form round-trips (secrets as `***`, defaults left out).
        let text = toml::to_string(&cfg).unwrap();
        assert!(
            !text.contains("oauth-s3cret") && !text.contains("conditional_get = true"),
            "{text}"
        );
        let text = toml::to_string(&parse(MINIMAL)).unwrap();
        assert!(
            !text.contains("rate_limit") && !text.contains("retry_budget"),
            "{text}"
        );
    }

    #[test]
    fn settings_debug_hides_secrets() {
        let mut cfg = parse(MINIMAL);
        cfg.auth = AuthConfig::Basic {
            username: "u".into(),
            password: SecretString::literal("pa55word"),
        };
        cfg.headers
            .insert("X-Extra".into(), SecretString::literal("hdr-s3cret"));
        let settings = cfg.validate().unwrap();
        for shown in [
            format!("{cfg:?}"),
            format!("{settings:?}"),
            format!("{settings:#?}"),
        ] {
            assert!(
                !shown.contains("pa55word") && !shown.contains("hdr-s3cret"),
                "{shown}"
            );
            // base64("u:pa55word")
            assert!(!shown.contains("dTpwYTU1d29yZA"), "{shown}");
        }
    }
}
