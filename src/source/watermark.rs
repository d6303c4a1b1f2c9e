//! Incremental sync: a watermark sent as a query parameter on every request
//! of a poll, so the server returns only what changed since.
//!
//! ```toml
//! watermark = { field = "updated_at", param = "updated_since" }
//! watermark = { from = "meta.sync_token", param = "since" }
//! ```
//!
//! With `field`, the watermark is the maximum of that record field over the
//! records of a poll; with `from`, the last value of a body path (a cursor
//! the server hands out). Values compare as numbers when both are numbers,
//! as instants when both are RFC 3339 timestamps (or `YYYY-MM-DD` dates),
//! and as text when neither is; values of different kinds do not compare and
//! are ignored with a warning, so one odd record cannot move the watermark.
//!
//! The watermark lives in the source cursor: `watermark` (sent on this poll)
//! and `high` (the highest value seen so far in it). When the poll catches
//! up, `high` becomes the next poll's watermark and pagination starts over.
//! The fetcher stores the cursor only after the records are in the hub, so a
//! restart resumes exactly there. Servers usually filter inclusively
//! (`>=`): the records at the watermark come again and are deduplicated.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ConfigError;
use super::extract::{JsonPath, scalar_text};

/// The `watermark` table of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatermarkConfig {
    /// Record field (path inside each record) whose maximum over a poll is
    /// the next watermark. Exactly one of `field` and `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Body path of a sync cursor the server returns; its last value in a
    /// poll is the next watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Query parameter the watermark is sent as.
    pub param: String,
    /// Watermark of the very first poll; absent: the first poll sends none
    /// and fetches everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
}

/// Where the next watermark comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum WatermarkSource {
    /// Maximum of a record field.
    Field(JsonPath),
    /// Last value of a body path.
    Body(JsonPath),
}

/// A validated watermark setting.
#[derive(Debug, Clone, PartialEq)]
pub struct Watermark {
    pub source: WatermarkSource,
    pub param: String,
    pub initial: Option<String>,
}

impl WatermarkConfig {
    /// Checks the table; errors name `watermark.<field>`.
    pub fn validate(&self) -> Result<Watermark, ConfigError> {
        if self.param.trim().is_empty() {
            return Err(ConfigError::invalid("watermark.param", "must not be empty"));
        }
        let parse = |field: &str, text: &str| {
            JsonPath::parse(text).map_err(|m| ConfigError::invalid(field, m))
        };
        let source = match (&self.field, &self.from) {
            (Some(field), None) => {
                let path = parse("watermark.field", field)?;
                if path.is_root() {
                    return Err(ConfigError::invalid(
                        "watermark.field",
                        "must name a field inside the record",
                    ));
                }
                WatermarkSource::Field(path)
            }
            (None, Some(from)) => WatermarkSource::Body(parse("watermark.from", from)?),
            _ => {
                return Err(ConfigError::invalid(
                    "watermark",
                    "needs exactly one of `field` (a record field) or `from` (a body path)",
                ));
            }
        };
        if self.initial.as_ref().is_some_and(|i| i.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "watermark.initial",
                "must not be empty",
            ));
        }
        Ok(Watermark {
            source,
            param: self.param.clone(),
            initial: self.initial.clone(),
        })
    }
}

impl Watermark {
    /// The highest watermark after a page: `high` raised by the page's
    /// records' `field` values (`fields`, as text) or replaced by the body's
    /// value at `from` (`body`). Returns the values that could not be
    /// compared, for a warning.
    pub fn observe(
        &self,
        high: Option<String>,
        body: Option<&Value>,
        fields: impl IntoIterator<Item = String>,
    ) -> (Option<String>, Vec<String>) {
        match &self.source {
            WatermarkSource::Body(_) => (body.and_then(scalar_text).or(high), Vec::new()),
            WatermarkSource::Field(_) => {
                let mut high = high;
                let mut odd = Vec::new();
                for value in fields {
                    if let Err(value) = raise(&mut high, value) {
                        odd.push(value);
                    }
                }
                (high, odd)
            }
        }
    }

    /// The body path of a `from` watermark.
    pub fn body_path(&self) -> Option<&JsonPath> {
        match &self.source {
            WatermarkSource::Body(path) => Some(path),
            WatermarkSource::Field(_) => None,
        }
    }

    /// The record path of a `field` watermark.
    pub fn field_path(&self) -> Option<&JsonPath> {
        match &self.source {
            WatermarkSource::Field(path) => Some(path),
            WatermarkSource::Body(_) => None,
        }
    }

    /// The watermark of the next poll once this one caught up.
    pub fn next(&self, current: Option<&str>, high: Option<String>) -> Option<String> {
        match (&self.source, high) {
            (_, None) => current.map(str::to_string),
            (WatermarkSource::Body(_), Some(high)) => Some(high),
            (WatermarkSource::Field(_), Some(high)) => {
                let mut best = current.map(str::to_string);
                // An incomparable high was never accepted into `high`.
                let _ = raise(&mut best, high);
                best
            }
        }
    }
}

/// Raises `high` to `value` if it is greater. `Err(value)` when the two do
/// not compare (different kinds).
pub fn raise(high: &mut Option<String>, value: String) -> Result<(), String> {
    match high {
        None => {
            *high = Some(value);
            Ok(())
        }
        Some(current) => match compare(current, &value) {
            Some(Ordering::Less) => {
                *high = Some(value);
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err(value),
        },
    }
}

/// A watermark value, typed for comparison.
#[derive(Debug, PartialEq)]
enum Typed<'a> {
    Int(i128),
    Float(f64),
    Instant(DateTime<Utc>),
    Text(&'a str),
}

fn typed(text: &str) -> Typed<'_> {
    let t = text.trim();
    if let Ok(i) = t.parse::<i128>() {
        return Typed::Int(i);
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Typed::Float(f);
    }
    if let Ok(instant) = DateTime::parse_from_rfc3339(t) {
        return Typed::Instant(instant.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        && let Some(midnight) = date.and_hms_opt(0, 0, 0)
    {
        return Typed::Instant(midnight.and_utc());
    }
    Typed::Text(text)
}

/// Orders two watermark values; `None` when they are of different kinds.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    match (typed(a), typed(b)) {
        (Typed::Int(x), Typed::Int(y)) => Some(x.cmp(&y)),
        (Typed::Int(x), Typed::Float(y)) => (x as f64).partial_cmp(&y),
        (Typed::Float(x), Typed::Int(y)) => x.partial_cmp(&(y as f64)),
        (Typed::Float(x), Typed::Float(y)) => x.partial_cmp(&y),
        (Typed::Instant(x), Typed::Instant(y)) => Some(x.cmp(&y)),
        (Typed::Text(x), Typed::Text(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_compare_by_kind() {
        assert_eq!(compare("9", "10"), Some(Ordering::Less), "not as text");
        assert_eq!(compare("10.5", "10"), Some(Ordering::Greater));
        assert_eq!(
            compare("170000000000000000000", "9"),
            Some(Ordering::Greater)
        );
        // Same instant in two offsets; later instant with a "smaller" text.
        assert_eq!(
            compare("2024-05-01T12:00:00Z", "2024-05-01T14:00:00+02:00"),
            Some(Ordering::Equal)
        );
        assert_eq!(
            compare("2024-05-01T12:00:00+02:00", "2024-05-01T11:00:00Z"),
            Some(Ordering::Less)
        );
        assert_eq!(
            compare("2024-05-01T00:00:00.5Z", "2024-05-01T00:00:00.25Z"),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare("2024-05-01", "2024-04-30T23:59:59Z"),
            Some(Ordering::Greater)
        );
        assert_eq!(compare("abc", "abd"), Some(Ordering::Less));
        assert_eq!(compare("10", "2024-05-01T00:00:00Z"), None);
        assert_eq!(compare("abc", "10"), None);
    }

    #[test]
    fn field_watermarks_take_the_maximum_and_skip_odd_values() {
        let w = WatermarkConfig {
            field: Some("meta.updated".into()),
            from: None,
            param: "since".into(),
            initial: None,
        }
        .validate()
        .unwrap();
        let records = [
            json!({"meta": {"updated": "2024-05-01T10:00:00+02:00"}}),
            json!({"meta": {"updated": "2024-05-01T09:00:00Z"}}),
            json!({"meta": {"updated": null}}),
            json!({"other": 1}),
            json!({"meta": {"updated": 17}}),
            json!({"meta": {"updated": "2024-05-01T08:30:00Z"}}),
        ];
        let path = w.field_path().unwrap();
        let texts = |records: &[Value]| -> Vec<String> {
            records
                .iter()
                .filter_map(|r| path.lookup(r).and_then(scalar_text))
                .collect()
        };
        let (high, odd) = w.observe(None, None, texts(&records));
        assert_eq!(high.as_deref(), Some("2024-05-01T09:00:00Z"));
        assert_eq!(odd, vec!["17".to_string()]);
        // A later page with older values does not lower it.
        let (high, _) = w.observe(
            high,
            None,
            texts(&[json!({"meta": {"updated": "2024-04-01T00:00:00Z"}})]),
        );
        assert_eq!(high.as_deref(), Some("2024-05-01T09:00:00Z"));
        assert_eq!(
            w.next(Some("2024-06-01T00:00:00Z"), high.clone())
                .as_deref(),
            Some("2024-06-01T00:00:00Z"),
            "never moves back"
        );
        assert_eq!(w.next(None, high).as_deref(), Some("2024-05-01T09:00:00Z"));
        assert_eq!(w.next(Some("5"), None).as_deref(), Some("5"));
    }

    #[test]
    fn body_watermarks_take_the_last_value() {
        let w = WatermarkConfig {
            field: None,
            from: Some("meta.sync".into()),
            param: "since".into(),
            initial: Some("0".into()),
        }
        .validate()
        .unwrap();
        let at = |body: &Value| w.body_path().unwrap().lookup(body).cloned();
        let (high, _) = w.observe(
            Some("b".into()),
            at(&json!({"meta": {"sync": "a"}})).as_ref(),
            Vec::new(),
        );
        assert_eq!(high.as_deref(), Some("a"));
        let (high, _) = w.observe(high, at(&json!({"meta": {}})).as_ref(), Vec::new());
        assert_eq!(w.next(Some("z"), high).as_deref(), Some("a"));
    }

    #[test]
    fn config_errors_name_the_field() {
        let base = WatermarkConfig {
            field: Some("updated_at".into()),
            from: None,
            param: "since".into(),
            initial: None,
        };
        let mut c = base.clone();
        c.param = " ".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("watermark.param:")
        );
        let mut c = base.clone();
        c.from = Some("x".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("watermark:")
        );
        let mut c = base.clone();
        c.field = Some("$".into());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("watermark.field:")
        );
        let mut c = base;
        c.initial = Some(String::new());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("watermark.initial:")
        );
    }
}
