//! The fetcher's page log: which request fetched which records, kept for
//! lineage (`hubflow ctl trace`) without storing anything per record.
//!
//! Every page a fetcher publishes gets a fetch time that is unique within
//! its source: the page's arrival time, made strictly increasing
//! ([`PageLog::stamp`]). Every record of the page carries it (the
//! `hubflow-fetched-ms` event property, kept in raw as `fetched_time_ms`),
//! so a record's fetch time names its page.
//!
//! The fetcher buffers one [`PageLogPage`] per page and writes the buffer as
//! one blob `pagelog/<source>/<first fetch time, 13 digits>` in the state
//! container once it holds [`FLUSH_PAGES`] pages or its oldest page is
//! [`FLUSH_AFTER`] old, and when the fetcher stops. [`find`] looks a fetch
//! time up in the two name buckets (10^6 ms each) around it. The log is
//! best effort: a failed write is counted and logged and never holds up
//! ingestion; a crash loses at most the buffered pages, which `trace` then
//! reports as not logged. Blobs older than the retention are deleted by
//! the fetcher ([`PageLog::prune`], at most once per [`PRUNE_EVERY`]).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::ports::{StateError, StateStore};

/// Where the page log of every source lives in the state container.
pub const PREFIX: &str = "pagelog/";
/// Pages per page-log blob, at most.
pub const FLUSH_PAGES: usize = 512;
/// How long a page waits in the buffer, at most.
pub const FLUSH_AFTER: Duration = Duration::from_secs(10);
/// How often a fetcher deletes page-log blobs older than the retention.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Name buckets: a blob's name starts with its first fetch time's leading
/// digits, so [`find`] lists one bucket (and the one before) only.
const BUCKET_MS: i64 = 1_000_000;

/// One fetched page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageLogPage {
    /// The fetch time every record of the page carries.
    pub fetched_ms: i64,
    /// The request, secrets removed (`GET https://…`).
    pub request: String,
    /// The source cursor the request was made from.
    pub cursor: serde_json::Value,
    pub records: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// One page-log blob.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageLogBlob {
    pub source: String,
    /// Who wrote it (the node id, or empty on a single node).
    #[serde(default)]
    pub node: String,
    pub pages: Vec<PageLogPage>,
}

pub fn blob_name(source: &str, first_fetched_ms: i64) -> String {
    format!("{PREFIX}{source}/{first_fetched_ms:013}")
}

fn bucket_prefix(source: &str, ms: i64) -> String {
    let name = blob_name(source, ms.max(0));
    // Drop the last six digits: the names of one 10^6 ms bucket.
    name[..name.len() - 6].to_string()
}

/// A fetcher's page-log buffer.
#[derive(Debug)]
pub struct PageLog {
    source: String,
    node: String,
    retention: Duration,
    pending: Vec<PageLogPage>,
    oldest: Option<Instant>,
    last_ms: i64,
    last_prune: Option<Instant>,
}

impl PageLog {
    /// A log for `source`; `retention` zero keeps no log at all.
    pub fn new(source: &str, node: &str, retention: Duration) -> PageLog {
        PageLog {
            source: source.to_string(),
            node: node.to_string(),
            retention,
            pending: Vec::new(),
            oldest: None,
            last_ms: 0,
            last_prune: None,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.retention.is_zero()
    }

    /// The fetch time of a page that arrived at `arrival_ms`: strictly
    /// after the previous page's, so it names one page. (Also when the log
    /// is off: the records carry it either way.)
    pub fn stamp(&mut self, arrival_ms: i64) -> i64 {
        let ms = arrival_ms.max(self.last_ms + 1);
        self.last_ms = ms;
        ms
    }

    pub fn push(&mut self, page: PageLogPage) {
        if !self.enabled() {
            return;
        }
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(page);
    }

    /// Whether the buffer should be written now.
    pub fn due(&self) -> bool {
        self.pending.len() >= FLUSH_PAGES || self.oldest.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    /// Write the buffer as one blob (best effort: a failure is counted,
    /// logged and the pages are dropped, never retried forever).
    pub async fn flush(&mut self, state: &StateStore) {
        let Some(first) = self.pending.first() else {
            return;
        };
        let name = blob_name(&self.source, first.fetched_ms);
        let blob = PageLogBlob {
            source: self.source.clone(),
            node: self.node.clone(),
            pages: std::mem::take(&mut self.pending),
        };
        self.oldest = None;
        if let Err(error) = state.store(&name, &blob).await {
            warn!(source = %self.source, %name, %error, "cannot write the page log; these pages will not be traceable");
            metrics::counter!("hubflow_fetcher_page_log_errors_total", "source" => self.source.clone())
                .increment(1);
        }
    }

    /// Delete this source's page-log blobs older than the retention (at
    /// most once per [`PRUNE_EVERY`]; best effort).
    pub async fn prune(&mut self, state: &StateStore, now_ms: i64) {
        if !self.enabled() || self.last_prune.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
            return;
        }
        self.last_prune = Some(Instant::now());
        let cutoff = blob_name(
            &self.source,
            now_ms
                .saturating_sub(self.retention.as_millis() as i64)
                .max(0),
        );
        let names = match state.list_names(&format!("{PREFIX}{}/", self.source)).await {
            Ok(names) => names,
            Err(error) => {
                warn!(source = %self.source, %error, "cannot list the page log to prune it");
                return;
            }
        };
        for name in names.into_iter().filter(|n| *n < cutoff) {
            if let Err(error) = state.blobs().delete(state.container(), &name, None).await
                && !error.is_not_found()
            {
                warn!(source = %self.source, %name, %error, "cannot delete an old page-log blob");
                return;
            }
        }
    }
}

/// The logged page of `source` whose fetch time is `fetched_ms`, if the log
/// still holds it.
pub async fn find(
    state: &StateStore,
    source: &str,
    fetched_ms: i64,
) -> Result<Option<(String, PageLogPage)>, StateError> {
    let mut names = state
        .list_names(&bucket_prefix(source, fetched_ms - BUCKET_MS))
        .await?;
    names.extend(state.list_names(&bucket_prefix(source, fetched_ms)).await?);
    // It is in a blob that starts at or before it; newest first (after a
    // lease moved, two nodes' blobs may interleave).
    let want = blob_name(source, fetched_ms);
    names.sort();
    for name in names.iter().rev().filter(|n| **n <= want) {
        let Some(blob) = state.load::<PageLogBlob>(name).await? else {
            continue;
        };
        if let Some(page) = blob
            .value
            .pages
            .into_iter()
            .find(|p| p.fetched_ms == fetched_ms)
        {
            return Ok(Some((name.clone(), page)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::MemoryBlobStore;
    use std::sync::Arc;

    fn page(ms: i64) -> PageLogPage {
        PageLogPage {
            fetched_ms: ms,
            request: format!("GET https://api.example/v1/events?cursor={ms}"),
            cursor: serde_json::json!({ "cursor": ms }),
            records: 2,
            first_id: Some(format!("a{ms}")),
            last_id: Some(format!("b{ms}")),
        }
    }

    async fn store() -> StateStore {
        let state = StateStore::new(Arc::new(MemoryBlobStore::new()), "state");
        state.ensure_container().await.unwrap();
        state
    }

    #[test]
    fn stamps_are_strictly_increasing() {
        let mut log = PageLog::new("orders", "", Duration::from_secs(60));
        assert_eq!(log.stamp(1_000), 1_000);
        assert_eq!(log.stamp(1_000), 1_001);
        assert_eq!(log.stamp(999), 1_002);
        assert_eq!(log.stamp(5_000), 5_000);
    }

    #[tokio::test]
    async fn pages_are_found_by_fetch_time_across_blobs_and_buckets() {
        let state = store().await;
        let mut log = PageLog::new("orders", "n1", Duration::from_secs(3600));
        // Two blobs; the second starts in the next name bucket.
        for ms in [1_999_990, 1_999_995] {
            log.push(page(ms));
        }
        log.flush(&state).await;
        for ms in [2_000_010, 2_000_020] {
            log.push(page(ms));
        }
        log.flush(&state).await;
        assert_eq!(state.list_names(PREFIX).await.unwrap().len(), 2);

        let (name, found) = find(&state, "orders", 1_999_995).await.unwrap().unwrap();
        assert_eq!(name, blob_name("orders", 1_999_990));
        assert_eq!(found, page(1_999_995));
        let (_, found) = find(&state, "orders", 2_000_020).await.unwrap().unwrap();
        assert_eq!(found.request, page(2_000_020).request);
        assert_eq!(find(&state, "orders", 2_000_015).await.unwrap(), None);
        assert_eq!(find(&state, "orders", 5).await.unwrap(), None);
        assert_eq!(find(&state, "other", 1_999_995).await.unwrap(), None);
    }

    #[tokio::test]
    async fn old_blobs_are_pruned_and_a_zero_retention_logs_nothing() {
        let state = store().await;
        let mut log = PageLog::new("orders", "", Duration::from_secs(10));
        log.push(page(1_000));
        log.flush(&state).await;
        log.push(page(50_000));
        log.flush(&state).await;
        log.prune(&state, 55_000).await;
        assert_eq!(
            state.list_names(PREFIX).await.unwrap(),
            vec![blob_name("orders", 50_000)]
        );

        let mut off = PageLog::new("orders", "", Duration::ZERO);
        off.push(page(60_000));
        assert!(!off.due());
        off.flush(&state).await;
        assert_eq!(state.list_names(PREFIX).await.unwrap().len(), 1);
    }

    #[test]
    fn the_buffer_is_due_when_full() {
        let mut log = PageLog::new("orders", "", Duration::from_secs(10));
        assert!(!log.due());
        for ms in 0..FLUSH_PAGES as i64 {
            log.push(page(ms));
        }
        assert!(log.due());
    }
}
