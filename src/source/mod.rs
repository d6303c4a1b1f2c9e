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
//!   the configured path, a page identical to the previous one and a cursor
//!   that did not advance.
//!
//! Files:
//! - [`config`]: the wire config [`HttpSourceConfig`] and its validated form
//!   [`HttpSourceSettings`];
//! - [`secret`]: [`SecretString`] (literal, `{ env = .. }`, `{ file = .. }`);
//! - [`paging`]: the cursor JSON and how each pagination style advances;
//! - [`extract`]: body paths, ids, `Link`/`Retry-After` parsing, redaction;
//! - [`http`]: [`HttpSource`] itself.

pub mod config;
pub mod extract;
pub mod http;
pub mod paging;
pub mod secret;

pub use config::{
    AuthConfig, BodyFormat, ConfigError, HttpSourceConfig, HttpSourceSettings, Pagination,
    PaginationConfig,
};
pub use extract::JsonPath;
pub use http::HttpSource;
pub use secret::{Secret, SecretString};
