//! The HTTP GET source: Hubflow's adapter to a third-party REST API.
//!
//! One [`HttpSource::fetch`] is one GET. The response is classified for the
//! fetcher, which owns retries, backoff and cursor storage:
//! - a page of records (each with a stable id: the configured `id_field`, or
//!   a hash of the record's canonical JSON) and the cursor to continue from;
//! - `Transient` for 429/503 (with `Retry-After`), other 5xx, 408, connect
//!   errors and timeouts;
//! - `Fatal` for other 4xx, naming the status and the URL without secrets;
//! - `BadResponse` (dead-lettered) for wrong content types, malformed or
//!   truncated bodies, bodies over `max_response_bytes`, records missing at
//!   the configured path, a page identical to the previous one, a cursor
//!   that did not advance, and keyset pages whose last record lacks the
//!   cursor field or that are empty while saying `has_more`;
//! - an empty caught-up page for `304 Not Modified` to a conditional GET.
//!
//! Incremental polling: an optional watermark parameter (the maximum of a
//! record field, or a server cursor), conditional GETs, a client-side rate
//! limit plus the server's rate-limit headers, and OAuth2 client
//! credentials. The fetcher's retry budget comes from the source's
//! `retry_budget` ([`retry_budget_for`]).
//!
//! Files:
//! - [`config`]: the wire config [`HttpSourceConfig`] and its validated form
//!   [`HttpSourceSettings`];
//! - [`error`]: [`ConfigError`] and the one-line error chain the fetch and
//!   token requests report;
//! - [`secret`]: [`SecretString`] (literal, `{ env = .. }`, `{ file = .. }`);
//! - [`paging`]: the cursor JSON and how each pagination style advances;
//! - [`csv`]: CSV bodies as JSON records;
//! - [`extract`]: body paths, ids, `Link`/`Retry-After` parsing, redaction;
//! - [`scan`]: records found in a body as byte spans, without a DOM;
//! - [`oauth`]: client credentials tokens ([`oauth::TokenSource`]);
//! - [`ratelimit`]: token bucket and rate-limit headers;
//! - [`watermark`]: incremental sync values and their ordering;
//! - [`http`]: [`HttpSource`] itself.

pub mod config;
pub mod csv;
pub mod error;
pub mod extract;
pub mod http;
pub mod live;
pub mod oauth;
pub mod paging;
pub mod ratelimit;
pub mod scan;
pub mod secret;
pub mod watermark;

pub use config::{
    AuthConfig, BodyFormat, HttpSourceConfig, HttpSourceSettings, Pagination, PaginationConfig,
    RetryBudgetConfig,
};
pub use error::ConfigError;
pub use extract::JsonPath;
pub use http::HttpSource;
pub use live::{ActiveSources, LiveSource};
pub use oauth::ClientAuth;
pub use ratelimit::RateLimitConfig;
pub use secret::{Secret, SecretString};
pub use watermark::WatermarkConfig;

/// The retry budget of the fetcher of source `name`: its configured
/// `retry_budget`, or unlimited for a source that is not an HTTP source.
pub fn retry_budget_for(
    sources: &[HttpSourceSettings],
    name: &str,
) -> hubflow_actors::retry::RetryBudget {
    sources
        .iter()
        .find(|s| s.name() == name)
        .map_or(hubflow_actors::retry::RetryBudget::UNLIMITED, |s| {
            s.retry_budget()
        })
}
