//! Client-side rate limiting of one source.
//!
//! ```toml
//! rate_limit = { requests_per_sec = 5.0, burst = 2, max_wait_ms = 30000 }
//! ```
//!
//! Two brakes, both applied before each request:
//! - a token bucket of `burst` requests refilled at `requests_per_sec`
//!   (off when `requests_per_sec` is absent);
//! - the server's own counters: when a response says no requests remain
//!   (`X-RateLimit-Remaining: 0` or `RateLimit-Remaining: 0`), the next
//!   request waits until the reset it announced (`X-RateLimit-Reset` /
//!   `RateLimit-Reset`: seconds from now, or a Unix time when the number is
//!   that large; `Retry-After` or one second when there is none), never
//!   longer than `max_wait_ms`. On by default (`honor_headers`).
//!
//! Waits happen inside `fetch`, so keep `max_wait_ms` below the supervision
//! stall timeout.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::error::ConfigError;
use super::extract::parse_retry_after;

/// Default cap on one rate-limit wait.
pub const DEFAULT_MAX_WAIT_MS: u64 = 30_000;
/// A `Reset` value at least this large is a Unix time, not a delay.
const UNIX_TIME_THRESHOLD: f64 = 1_000_000_000.0;

/// The `rate_limit` table of a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained request rate; absent: no client-side limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_sec: Option<f64>,
    /// Requests that may go out back to back after a quiet spell.
    pub burst: u32,
    /// Wait for the reset the server announces when it says none remain.
    pub honor_headers: bool,
    /// Longest single wait, in milliseconds.
    pub max_wait_ms: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            requests_per_sec: None,
            burst: 1,
            honor_headers: true,
            max_wait_ms: DEFAULT_MAX_WAIT_MS,
        }
    }
}

impl RateLimitConfig {
    /// Checks the table; errors name `rate_limit.<field>`.
    pub fn validate(&self) -> Result<RateLimit, ConfigError> {
        if let Some(rate) = self.requests_per_sec
            && !(rate.is_finite() && rate > 0.0)
        {
            return Err(ConfigError::invalid(
                "rate_limit.requests_per_sec",
                "must be a positive number",
            ));
        }
        if self.burst == 0 {
            return Err(ConfigError::invalid(
                "rate_limit.burst",
                "must be at least 1",
            ));
        }
        if self.max_wait_ms == 0 {
            return Err(ConfigError::invalid(
                "rate_limit.max_wait_ms",
                "must be at least 1",
            ));
        }
        Ok(RateLimit {
            requests_per_sec: self.requests_per_sec,
            burst: self.burst,
            honor_headers: self.honor_headers,
            max_wait: Duration::from_millis(self.max_wait_ms),
        })
    }
}

/// Validated rate-limit settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests_per_sec: Option<f64>,
    pub burst: u32,
    pub honor_headers: bool,
    pub max_wait: Duration,
}

/// The limiter of one source: call [`RateLimiter::acquire`] before each
/// request and [`RateLimiter::observe`] with each response's headers.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May go negative: requests already promised a slot.
    tokens: f64,
    refilled: Instant,
    /// The server said to wait until then.
    blocked_until: Option<Instant>,
}

/// Why a request waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    Client,
    Server,
}

impl WaitReason {
    pub fn label(self) -> &'static str {
        match self {
            WaitReason::Client => "client",
            WaitReason::Server => "server",
        }
    }
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            state: Mutex::new(Bucket {
                tokens: f64::from(limit.burst),
                refilled: Instant::now(),
                blocked_until: None,
            }),
            limit,
        }
    }

    /// Reserves the next request slot: how long to wait before sending, and
    /// which brake imposed it. Reserving (not sleeping) keeps the lock short.
    pub fn reserve(&self) -> Option<(Duration, WaitReason)> {
        let now = Instant::now();
        let mut bucket = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let server = bucket
            .blocked_until
            .take()
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        let client = match self.limit.requests_per_sec {
            None => Duration::ZERO,
            Some(rate) => {
                let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
                bucket.tokens = (bucket.tokens + elapsed * rate).min(f64::from(self.limit.burst));
                bucket.refilled = now;
                bucket.tokens -= 1.0;
                if bucket.tokens >= 0.0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(-bucket.tokens / rate)
                }
            }
        };
        let server = server.min(self.limit.max_wait);
        if server.is_zero() && client.is_zero() {
            None
        } else if server > client {
            Some((server, WaitReason::Server))
        } else {
            Some((client, WaitReason::Client))
        }
    }

    /// Waits for the next request slot; returns the wait, if any.
    pub async fn acquire(&self) -> Option<(Duration, WaitReason)> {
        let wait = self.reserve();
        if let Some((duration, _)) = wait {
            tokio::time::sleep(duration).await;
        }
        wait
    }

    /// Reads a response's rate-limit headers; when they say nothing remains,
    /// the next request waits for the reset. Returns that wait.
    pub fn observe(&self, headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
        if !self.limit.honor_headers {
            return None;
        }
        let wait = exhausted_wait(headers, now)?.min(self.limit.max_wait);
        let mut bucket = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let until = Instant::now() + wait;
        bucket.blocked_until = Some(bucket.blocked_until.map_or(until, |b| b.max(until)));
        Some(wait)
    }
}

fn header_number(headers: &HeaderMap, names: &[&str]) -> Option<f64> {
    names.iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite())
    })
}

/// How long to wait when the headers say no requests remain; `None` when
/// some remain or the server does not say.
pub fn exhausted_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let remaining = header_number(headers, &["x-ratelimit-remaining", "ratelimit-remaining"])?;
    if remaining > 0.0 {
        return None;
    }
    let reset = header_number(headers, &["x-ratelimit-reset", "ratelimit-reset"]);
    let wait = match reset {
        Some(secs) if secs >= UNIX_TIME_THRESHOLD => {
            let now_secs = now.timestamp_millis() as f64 / 1000.0;
            Duration::from_secs_f64((secs - now_secs).max(0.0))
        }
        Some(secs) => Duration::from_secs_f64(secs.max(0.0)),
        None => headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
            .unwrap_or(Duration::from_secs(1)),
    };
    Some(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn server_headers_in_both_styles() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let epoch = now.timestamp();
        assert_eq!(
            exhausted_wait(&headers(&[("x-ratelimit-remaining", "3")]), now),
            None
        );
        assert_eq!(exhausted_wait(&headers(&[]), now), None);
        assert_eq!(
            exhausted_wait(
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &(epoch + 7).to_string())
                ]),
                now
            ),
            Some(Duration::from_secs(7)),
            "unix time"
        );
        assert_eq!(
            exhausted_wait(
                &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "4")]),
                now
            ),
            Some(Duration::from_secs(4)),
            "delay seconds"
        );
        assert_eq!(
            exhausted_wait(
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", &(epoch - 5).to_string())
                ]),
                now
            ),
            Some(Duration::ZERO),
            "reset in the past"
        );
        assert_eq!(
            exhausted_wait(
                &headers(&[("ratelimit-remaining", "0"), ("retry-after", "3")]),
                now
            ),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            exhausted_wait(&headers(&[("ratelimit-remaining", "0")]), now),
            Some(Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_spaces_requests_after_the_burst() {
        let limiter = RateLimiter::new(
            RateLimitConfig {
                requests_per_sec: Some(4.0),
                burst: 2,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..6 {
            limiter.acquire().await;
            sent.push(start.elapsed());
        }
        let ms: Vec<u128> = sent.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 0, 250, 500, 750, 1000]);
        // A quiet spell refills the burst, not more.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let t = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(t.elapsed().as_millis(), 250);
    }

    #[tokio::test(start_paused = true)]
    async fn server_exhaustion_blocks_until_reset_within_max_wait() {
        let limiter = RateLimiter::new(
            RateLimitConfig {
                max_wait_ms: 5_000,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        assert_eq!(limiter.reserve(), None);
        let now = Utc::now();
        limiter.observe(
            &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "2")]),
            now,
        );
        assert_eq!(
            limiter.acquire().await,
            Some((Duration::from_secs(2), WaitReason::Server))
        );
        assert_eq!(limiter.reserve(), None, "one wait per exhaustion");
        limiter.observe(
            &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "3600")]),
            now,
        );
        assert_eq!(
            limiter.reserve(),
            Some((Duration::from_secs(5), WaitReason::Server)),
            "bounded by max_wait"
        );
        let off = RateLimiter::new(
            RateLimitConfig {
                honor_headers: false,
                ..Default::default()
            }
            .validate()
            .unwrap(),
        );
        off.observe(
            &headers(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "2")]),
            now,
        );
        assert_eq!(off.reserve(), None);
    }

    #[test]
    fn config_errors_name_the_field() {
        for (cfg, field) in [
            (
                RateLimitConfig {
                    requests_per_sec: Some(0.0),
                    ..Default::default()
                },
                "rate_limit.requests_per_sec:",
            ),
            (
                RateLimitConfig {
                    burst: 0,
                    ..Default::default()
                },
                "rate_limit.burst:",
            ),
            (
                RateLimitConfig {
                    max_wait_ms: 0,
                    ..Default::default()
                },
                "rate_limit.max_wait_ms:",
            ),
        ] {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
        }
    }
}
