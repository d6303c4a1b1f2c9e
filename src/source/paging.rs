//! Where a walk over pages stands, and where the next request goes.
//!
//! The position is stored by the fetcher as the source cursor (JSON):
//! `{"page": 3}`, `{"offset": 200}`, `{"cursor": "abc"}` (cursor and keyset:
//! for keyset, the last delivered record's key) or `{"url": ".."}`,
//! plus `seen` (records of this position already delivered: the position is
//! re-requested after catching up, so records appended to it later are not
//! missed, and the first `seen` are dropped) and `prev` (a digest of the
//! page delivered just before this position, to notice a server that
//! returns the same page again). URLs in cursors never hold the API key.
//!
//! Beside the position: `watermark` and `high` of an incremental sync (see
//! [`super::watermark`]) and `validators`, the `ETag` / `Last-Modified` of
//! the page at this position for a conditional GET. [`advance`] decides the
//! position only; the HTTP source fills in the rest.

use serde::{Deserialize, Serialize};

use super::config::Pagination;

/// The decoded source cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seen: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    /// Watermark sent on every request of this poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Highest watermark value seen so far in this poll.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<String>,
    /// Validators of the page at this position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validators: Option<Box<Validators>>,
}

/// What a server said identifies a page's content, to ask for it
/// conditionally next time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validators {
    /// The URL (without the API key) the validators belong to.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl CursorState {
    /// Decodes a stored cursor; `null` is the start. A cursor written for
    /// another pagination type is refused rather than silently restarted.
    pub fn decode(value: &serde_json::Value, pagination: &Pagination) -> Result<Self, String> {
        if value.is_null() {
            return Ok(CursorState::default());
        }
        let state: CursorState = serde_json::from_value(value.clone())
            .map_err(|e| format!("stored cursor {value} is not an http source cursor: {e}"))?;
        let fits = match pagination {
            Pagination::None => {
                state.page.is_none()
                    && state.offset.is_none()
                    && state.cursor.is_none()
                    && state.url.is_none()
            }
            Pagination::PageNumber { .. } => {
                state.offset.is_none() && state.cursor.is_none() && state.url.is_none()
            }
            Pagination::OffsetLimit { .. } => {
                state.page.is_none() && state.cursor.is_none() && state.url.is_none()
            }
            Pagination::Cursor { .. } | Pagination::Keyset { .. } => {
                state.page.is_none() && state.offset.is_none() && state.url.is_none()
            }
            Pagination::NextUrl { .. } | Pagination::LinkHeader => {
                state.page.is_none() && state.offset.is_none() && state.cursor.is_none()
            }
        };
        if !fits {
            return Err(format!(
                "stored cursor {value} does not fit pagination type `{}`; reset the source's cursor",
                pagination.kind()
            ));
        }
        Ok(state)
    }

    pub fn encode(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// What a usable response said about paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Records in the response.
    pub count: u64,
    /// Digest of their ids (only meaningful when `count > 0`).
    pub digest: String,
    /// A body flag said this is the last page available now.
    pub last_page: bool,
    /// Next cursor (cursor pagination) or next URL (next_url, link_header;
    /// resolved, without the API key), if the response gave one.
    pub next_token: Option<String>,
}

/// The outcome of one response for the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Deliver the records after the first `skip`, store `next`.
    Page {
        next: CursorState,
        skip: u64,
        caught_up: bool,
    },
    /// The same records as the page before: a server that ignores the page
    /// parameter. Not skipped: skipping would race through endless copies.
    Identical,
    /// The server sent the position we asked for as the next one.
    NotAdvanced,
}

/// Decides the next position. `current_token` is the position of token
/// styles (cursor text, or the URL that was requested, without the key).
pub fn advance(
    pagination: &Pagination,
    state: &CursorState,
    seen: &Observed,
    current_token: Option<&str>,
) -> Step {
    if let Some(refused) = refusal(pagination, state, seen, current_token) {
        return refused;
    }
    let n = seen.count;
    let prev_after = if n > 0 {
        Some(seen.digest.clone())
    } else {
        state.prev.clone()
    };
    let skip = state.seen.min(n);
    match pagination {
        Pagination::None => Step::Page {
            next: CursorState::default(),
            skip: 0,
            caught_up: true,
        },
        Pagination::PageNumber { start, size, .. } => {
            let page = state.page.unwrap_or(*start);
            if n >= *size && !seen.last_page {
                Step::Page {
                    next: CursorState {
                        page: Some(page + 1),
                        prev: prev_after,
                        ..Default::default()
                    },
                    skip,
                    caught_up: false,
                }
            } else {
                Step::Page {
                    next: CursorState {
                        page: Some(page),
                        seen: n,
                        prev: state.prev.clone(),
                        ..Default::default()
                    },
                    skip,
                    caught_up: true,
                }
            }
        }
        Pagination::OffsetLimit { limit, .. } => {
            let offset = state.offset.unwrap_or(0);
            Step::Page {
                next: CursorState {
                    offset: Some(offset + n),
                    prev: prev_after,
                    ..Default::default()
                },
                skip: 0,
                caught_up: n < *limit || seen.last_page,
            }
        }
        Pagination::Cursor { .. }
        | Pagination::NextUrl { .. }
        | Pagination::LinkHeader
        | Pagination::Keyset { .. } => {
            token_step(pagination, state, seen, current_token, prev_after, skip)
        }
    }
}

/// A page that must not be taken: the server sent back the position we
/// asked for as the next one, or the same records as the page before.
fn refusal(
    pagination: &Pagination,
    state: &CursorState,
    seen: &Observed,
    current_token: Option<&str>,
) -> Option<Step> {
    let n = seen.count;
    let fresh = state.seen == 0;
    let token_style = matches!(
        pagination,
        Pagination::Cursor { .. }
            | Pagination::NextUrl { .. }
            | Pagination::LinkHeader
            | Pagination::Keyset { .. }
    );
    if token_style
        && fresh
        && n > 0
        && !seen.last_page
        && seen.next_token.is_some()
        && seen.next_token.as_deref() == current_token
    {
        return Some(Step::NotAdvanced);
    }
    if fresh
        && n > 0
        && state.prev.as_deref() == Some(seen.digest.as_str())
        && !matches!(pagination, Pagination::None)
    {
        return Some(Step::Identical);
    }
    None
}

/// The next position of the token styles (cursor, next URL, Link header,
/// keyset): the page's token, or stay where we are when it has none or
/// echoes the current one.
fn token_step(
    pagination: &Pagination,
    state: &CursorState,
    seen: &Observed,
    current_token: Option<&str>,
    prev_after: Option<String>,
    skip: u64,
) -> Step {
    let n = seen.count;
    // Keyset without a body flag: a page shorter than the server's page
    // size is the last one for now.
    let short = matches!(pagination, Pagination::Keyset { page_size: Some(size), .. } if n < *size);
    let stay = CursorState {
        seen: n,
        prev: state.prev.clone(),
        ..token_state(pagination, state_token(state))
    };
    match seen.next_token.as_deref() {
        None => Step::Page {
            next: stay,
            skip,
            caught_up: true,
        },
        // Echoed position on a re-poll, an empty page or a last page.
        Some(t) if Some(t) == current_token => Step::Page {
            next: stay,
            skip,
            caught_up: true,
        },
        Some(t) => Step::Page {
            next: CursorState {
                prev: prev_after,
                ..token_state(pagination, Some(t.to_string()))
            },
            skip,
            caught_up: seen.last_page || n == 0 || short,
        },
    }
}

/// Where to go to step over a page that can never be read (too large), when
/// the position arithmetic allows it.
pub fn skip_unreadable(pagination: &Pagination, state: &CursorState) -> Option<CursorState> {
    match pagination {
        Pagination::PageNumber { start, .. } => Some(CursorState {
            page: Some(state.page.unwrap_or(*start) + 1),
            prev: state.prev.clone(),
            ..Default::default()
        }),
        Pagination::OffsetLimit { limit, .. } => Some(CursorState {
            offset: Some(state.offset.unwrap_or(0) + limit),
            prev: state.prev.clone(),
            ..Default::default()
        }),
        _ => None,
    }
}

fn state_token(state: &CursorState) -> Option<String> {
    state.cursor.clone().or_else(|| state.url.clone())
}

fn token_state(pagination: &Pagination, token: Option<String>) -> CursorState {
    match pagination {
        Pagination::Cursor { .. } | Pagination::Keyset { .. } => CursorState {
            cursor: token,
            ..Default::default()
        },
        _ => CursorState {
            url: token,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::extract::JsonPath;
    use serde_json::json;

    fn obs(count: u64, digest: &str, next: Option<&str>) -> Observed {
        Observed {
            count,
            digest: digest.into(),
            last_page: false,
            next_token: next.map(str::to_string),
        }
    }

    fn page(step: Step) -> (CursorState, u64, bool) {
        match step {
            Step::Page {
                next,
                skip,
                caught_up,
            } => (next, skip, caught_up),
            other => panic!("expected a page, got {other:?}"),
        }
    }

    #[test]
    fn page_numbers_stay_on_a_short_page_and_drop_what_was_seen() {
        let p = Pagination::PageNumber {
            param: "page".into(),
            start: 1,
            size_param: None,
            size: 3,
        };
        let (next, skip, caught_up) = page(advance(
            &p,
            &CursorState::default(),
            &obs(3, "a", None),
            None,
        ));
        assert_eq!(
            (next.page, next.prev.as_deref(), skip, caught_up),
            (Some(2), Some("a"), 0, false)
        );
        let (short, skip, caught_up) = page(advance(&p, &next, &obs(2, "b", None), None));
        assert_eq!(
            (short.page, short.seen, skip, caught_up),
            (Some(2), 2, 0, true)
        );
        assert_eq!(short.prev.as_deref(), Some("a"));
        // Later the page has filled up: deliver only the third record, move on.
        let (after, skip, caught_up) = page(advance(&p, &short, &obs(3, "c", None), None));
        assert_eq!(
            (after.page, after.seen, skip, caught_up),
            (Some(3), 0, 2, false)
        );
        // A server ignoring `page` sends page 1 again.
        assert_eq!(
            advance(&p, &next, &obs(3, "a", None), None),
            Step::Identical
        );
    }

    #[test]
    fn offsets_advance_by_what_arrived() {
        let p = Pagination::OffsetLimit {
            offset_param: "o".into(),
            limit_param: "l".into(),
            limit: 10,
        };
        let (next, _, caught_up) = page(advance(
            &p,
            &CursorState::default(),
            &obs(10, "a", None),
            None,
        ));
        assert_eq!((next.offset, caught_up), (Some(10), false));
        let (next, _, caught_up) = page(advance(&p, &next, &obs(4, "b", None), None));
        assert_eq!((next.offset, caught_up), (Some(14), true));
        let (same, _, caught_up) = page(advance(&p, &next, &obs(0, "", None), None));
        assert_eq!(
            (same.offset, same.prev.as_deref(), caught_up),
            (Some(14), Some("b"), true)
        );
    }

    #[test]
    fn cursors_keep_the_last_position_when_caught_up() {
        let p = Pagination::Cursor {
            param: "c".into(),
            from: JsonPath::parse("next").unwrap(),
        };
        let (next, _, caught_up) = page(advance(
            &p,
            &CursorState::default(),
            &obs(5, "a", Some("5")),
            None,
        ));
        assert_eq!((next.cursor.as_deref(), caught_up), (Some("5"), false));
        let (end, skip, caught_up) = page(advance(&p, &next, &obs(2, "b", None), Some("5")));
        assert_eq!(
            (end.cursor.as_deref(), end.seen, skip, caught_up),
            (Some("5"), 2, 0, true)
        );
        // Re-poll: two old records, one new, and a new cursor.
        let (more, skip, caught_up) = page(advance(&p, &end, &obs(3, "c", Some("8")), Some("5")));
        assert_eq!(
            (more.cursor.as_deref(), more.seen, skip, caught_up),
            (Some("8"), 0, 2, false)
        );
        // A server echoing the cursor it was given on a fresh page.
        assert_eq!(
            advance(&p, &next, &obs(5, "z", Some("5")), Some("5")),
            Step::NotAdvanced
        );
        // ... is fine when nothing new came.
        let (still, _, caught_up) = page(advance(&p, &end, &obs(2, "b", Some("5")), Some("5")));
        assert_eq!((still, caught_up), (end.clone(), true));
    }

    #[test]
    fn cursors_decode_only_for_their_pagination() {
        let p = Pagination::OffsetLimit {
            offset_param: "o".into(),
            limit_param: "l".into(),
            limit: 10,
        };
        assert_eq!(
            CursorState::decode(&json!(null), &p).unwrap(),
            CursorState::default()
        );
        let s = CursorState::decode(&json!({"offset": 20, "prev": "ab"}), &p).unwrap();
        assert_eq!(s.offset, Some(20));
        assert_eq!(CursorState::decode(&s.encode(), &p).unwrap(), s);
        let full = CursorState::decode(
            &json!({"offset": 20, "watermark": "5", "high": "9",
                    "validators": {"url": "http://x/?offset=20", "etag": "\"v1\""}}),
            &p,
        )
        .unwrap();
        assert_eq!(
            (full.watermark.as_deref(), full.high.as_deref()),
            (Some("5"), Some("9"))
        );
        assert_eq!(CursorState::decode(&full.encode(), &p).unwrap(), full);
        assert!(CursorState::decode(&json!({"page": 2}), &p).is_err());
        assert!(CursorState::decode(&json!(17), &p).is_err());
        assert!(CursorState::decode(&json!({"bogus": 1}), &p).is_err());
    }
}
