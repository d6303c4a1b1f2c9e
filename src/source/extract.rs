//! Reading HTTP responses: body paths, records and their ids, `Link` and
//! `Retry-After` headers, content types, URL redaction.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde_json::Value;
use sha2::{Digest, Sha256};
use url::Url;

/// Longest wait a `Retry-After` header can impose (a broken server must not
/// park the fetcher for days).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Query parameters whose values are redacted from every URL we show, on top
/// of the configured API-key parameter.
const SENSITIVE_QUERY_NAMES: &[&str] = &[
    "access_token",
    "api_key",
    "apikey",
    "api-key",
    "auth",
    "client_secret",
    "code",
    "key",
    "password",
    "secret",
    "sig",
    "signature",
    "token",
];

/// A dotted path into a JSON body: `$` is the body itself, `data.items`
/// walks object keys, and a numeric segment indexes an array (`data.0.id`).
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    segments: Vec<String>,
}

impl JsonPath {
    /// Parses a path; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("path is empty (use `$` for the whole body)".into());
        }
        let rest = if trimmed == "$" {
            ""
        } else if let Some(rest) = trimmed.strip_prefix("$.") {
            rest
        } else {
            trimmed
        };
        let segments: Vec<String> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('.').map(str::to_string).collect()
        };
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("path `{trimmed}` has an empty segment"));
        }
        Ok(JsonPath {
            text: trimmed.to_string(),
            segments,
        })
    }

    /// The segments, `[]` for `$`.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// True for `$`.
    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The value at this path, if present.
    pub fn lookup<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        let mut current = value;
        for segment in &self.segments {
            current = match current {
                Value::Object(map) => map.get(segment)?,
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(current)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A scalar body value (a cursor, an id) as text; `None` for null, empty
/// strings, objects and arrays.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Hex SHA-256 (first 128 bits) of the canonical form of a JSON value: object
/// keys sorted at every level, no whitespace. Equal payloads get equal ids
/// whatever key order the server used.
pub fn content_id(value: &Value) -> String {
    let mut hasher = Sha256::new();
    hash_canonical(value, &mut hasher);
    hex::encode(&hasher.finalize()[..16])
}

fn hash_canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                hasher.update(Value::String(key.clone()).to_string().as_bytes());
                hasher.update(b":");
                hash_canonical(&map[key], hasher);
            }
            hasher.update(b"}");
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hasher.update(b",");
                }
                hash_canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => hasher.update(scalar.to_string().as_bytes()),
    }
}

/// A short digest of a page's record ids, to notice a server returning the
/// same page twice.
pub fn page_digest<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for id in ids {
        hasher.update(id.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (IMF-fixdate), capped
/// at [`MAX_RETRY_AFTER`]. A date in the past means "now".
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    if let Ok(secs) = value.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(
                secs.min(MAX_RETRY_AFTER.as_secs_f64()),
            ));
        }
        return None;
    }
    let date = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    let wait = (date - now).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The `rel="next"` target of an RFC 8288 `Link` header, unresolved.
pub fn link_next(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let start = rest.find('<')?;
        let end = start + rest[start..].find('>')?;
        let target = &rest[start + 1..end];
        let after = &rest[end + 1..];
        // Parameters run until the next link (`, <`), outside quotes.
        let mut in_quotes = false;
        let mut params_end = after.len();
        for (i, c) in after.char_indices() {
            match c {
                '"' => in_quotes = !in_quotes,
                ',' if !in_quotes => {
                    params_end = i;
                    break;
                }
                _ => {}
            }
        }
        let params = &after[..params_end];
        for param in params.split(';') {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("rel") {
                let rels = value.trim().trim_matches('"');
                if rels
                    .split_ascii_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
                {
                    return Some(target.trim().to_string());
                }
            }
        }
        rest = &after[params_end..];
    }
}

/// The URL as we may show it: user info dropped, values of the named secret
/// query parameter and of well-known sensitive ones replaced by `***`.
pub fn redact_url(url: &Url, secret_param: Option<&str>) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = shown
            .query_pairs()
            .map(|(k, v)| {
                let sensitive = secret_param.is_some_and(|p| p == k)
                    || SENSITIVE_QUERY_NAMES
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(&k));
                let v = if sensitive {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown.to_string()
}

/// Removes one query parameter (the API key) from a URL, so that URLs we
/// store in cursors never hold it.
pub fn without_query_param(url: &Url, name: &str) -> Url {
    let mut out = url.clone();
    if url.query_pairs().any(|(k, _)| k == name) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != name)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.is_empty() {
            out.set_query(None);
        } else {
            out.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    out
}

/// Sets a query parameter, replacing any existing values of it.
pub fn with_query_param(url: &Url, name: &str, value: &str) -> Url {
    let mut out = without_query_param(url, name);
    out.query_pairs_mut().append_pair(name, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_walk_objects_and_arrays() {
        let body = json!({"data": {"items": [1, 2]}, "list": [{"id": "a"}], "n": null});
        assert_eq!(JsonPath::parse("$").unwrap().lookup(&body), Some(&body));
        assert_eq!(
            JsonPath::parse("data.items").unwrap().lookup(&body),
            Some(&json!([1, 2]))
        );
        assert_eq!(
            JsonPath::parse("$.data.items").unwrap().lookup(&body),
            Some(&json!([1, 2]))
        );
        assert_eq!(
            JsonPath::parse("list.0.id").unwrap().lookup(&body),
            Some(&json!("a"))
        );
        assert_eq!(JsonPath::parse("list.x").unwrap().lookup(&body), None);
        assert_eq!(JsonPath::parse("data.items.5").unwrap().lookup(&body), None);
        assert!(JsonPath::parse("").is_err());
        assert!(JsonPath::parse("a..b").is_err());
    }

    #[test]
    fn content_ids_ignore_key_order_and_differ_by_content() {
        let a = json!({"b": 1, "a": {"y": [1, "x"], "x": null}});
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#).unwrap();
        assert_eq!(content_id(&a), content_id(&b));
        assert_eq!(content_id(&a).len(), 32);
        assert_ne!(
            content_id(&a),
            content_id(&json!({"b": 2, "a": {"y": [1, "x"], "x": null}}))
        );
        // A string and a number with the same digits differ.
        assert_ne!(content_id(&json!({"k": "1"})), content_id(&json!({"k": 1})));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 1 ", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after("0.5", now),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn link_header_next() {
        let h = r#"<https://api.example.com/items?page=1>; rel="prev", <https://api.example.com/items?page=3>; rel="next""#;
        assert_eq!(
            link_next(h).as_deref(),
            Some("https://api.example.com/items?page=3")
        );
        assert_eq!(
            link_next(r#"</v1/x?c=2>; title="a, b"; rel="next last""#).as_deref(),
            Some("/v1/x?c=2")
        );
        assert_eq!(
            link_next("<https://x/y?page=9>; rel=next").as_deref(),
            Some("https://x/y?page=9")
        );
        assert_eq!(link_next(r#"<https://x/a>; rel="prev""#), None);
        assert_eq!(link_next("garbage"), None);
    }

    #[test]
    fn urls_are_redacted() {
        let url =
            Url::parse("https://user:pw@api.example.com/x?page=2&k=SECRET&token=T0K&a=b").unwrap();
        let shown = redact_url(&url, Some("k"));
        assert!(
            !shown.contains("SECRET") && !shown.contains("T0K") && !shown.contains("pw"),
            "{shown}"
        );
        assert!(shown.contains("page=2") && shown.contains("a=b"), "{shown}");
        let stripped = without_query_param(&url, "k");
        assert!(!stripped.as_str().contains("SECRET"));
        assert_eq!(
            without_query_param(&Url::parse("http://h/p?k=1").unwrap(), "k").as_str(),
            "http://h/p"
        );
        let set = with_query_param(&Url::parse("http://h/p?k=1&x=2").unwrap(), "k", "9");
        assert_eq!(set.as_str(), "http://h/p?x=2&k=9");
    }
}
