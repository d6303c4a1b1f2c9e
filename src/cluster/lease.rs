//! Renewable leases in the state container: at most one holder per key
//! across the cluster (one fetcher per source), by etag compare-and-swap.
//!
//! A lease record (`<namespace>/leases/<key>`, a [`LeaseRecord`]) names its
//! holder and an expiry. The holder renews it well before the expiry; any
//! node takes it once it has expired or was released. The holder stops the
//! work the lease guards when a renewal fails and the expiry is near (the
//! ownership manager's rule), so by the time another node can take the lease
//! the previous holder has stopped.

use std::time::Duration;

use hubflow_actors::ports::{ETag, StateError, StateStore, Versioned};
use serde::{Deserialize, Serialize};

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// `None` once released.
    pub holder: Option<String>,
    /// Bumped every time the lease changes hands.
    pub epoch: u64,
    /// Ms since the Unix epoch.
    pub expires_at_ms: i64,
    pub updated_ms: i64,
}

impl LeaseRecord {
    /// The holder, while the lease has not expired.
    pub fn live_holder(&self, now_ms: i64) -> Option<&str> {
        self.holder
            .as_deref()
            .filter(|_| self.expires_at_ms > now_ms)
    }
}

/// The result of [`LeaseStore::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// This node took a free, released or expired lease.
    Acquired { epoch: u64, expires_at_ms: i64 },
    /// This node held it and extended it.
    Renewed { epoch: u64, expires_at_ms: i64 },
    /// Another node holds it.
    HeldBy { holder: String, expires_at_ms: i64 },
}

impl LeaseOutcome {
    /// This node holds the lease now.
    pub fn is_mine(&self) -> bool {
        !matches!(self, LeaseOutcome::HeldBy { .. })
    }

    pub fn expires_at_ms(&self) -> i64 {
        match self {
            LeaseOutcome::Acquired { expires_at_ms, .. }
            | LeaseOutcome::Renewed { expires_at_ms, .. }
            | LeaseOutcome::HeldBy { expires_at_ms, .. } => *expires_at_ms,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node wrote the lease since it was read; nothing was written.
    #[error("lease {key}: changed since it was read")]
    Conflict { key: String },
    #[error("lease state: {0}")]
    State(#[from] StateError),
}

impl LeaseError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, LeaseError::Conflict { .. })
    }
}

/// Lease I/O for one node.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    state: StateStore,
    prefix: String,
    node: String,
    lease: Duration,
}

impl LeaseStore {
    pub fn new(
        state: StateStore,
        namespace: &str,
        node: impl Into<String>,
        lease: Duration,
    ) -> Self {
        LeaseStore {
            state,
            prefix: format!("{namespace}/leases/"),
            node: node.into(),
            lease,
        }
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The record name of lease `key` (`fetcher/<source>`).
    pub fn record_name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub async fn load(&self, key: &str) -> Result<Option<Versioned<LeaseRecord>>, LeaseError> {
        Ok(self.state.load(&self.record_name(key)).await?)
    }

    /// Acquire or renew `key` given its record as read (`current`).
    pub async fn try_acquire(
        &self,
        key: &str,
        current: Option<&Versioned<LeaseRecord>>,
        now_ms: i64,
    ) -> Result<LeaseOutcome, LeaseError> {
        let expires_at_ms = now_ms + self.lease.as_millis() as i64;
        let (epoch, renewal) = match current {
            None => (1, false),
            Some(cur) => match cur.value.live_holder(now_ms) {
                Some(holder) if holder == self.node => (cur.value.epoch, true),
                Some(holder) => {
                    return Ok(LeaseOutcome::HeldBy {
                        holder: holder.to_string(),
                        expires_at_ms: cur.value.expires_at_ms,
                    });
                }
                None => (cur.value.epoch + 1, false),
            },
        };
        let record = LeaseRecord {
            holder: Some(self.node.clone()),
            epoch,
            expires_at_ms,
            updated_ms: now_ms,
        };
        self.write(key, &record, current.map(|c| &c.etag)).await?;
        Ok(if renewal {
            LeaseOutcome::Renewed {
                epoch,
                expires_at_ms,
            }
        } else {
            LeaseOutcome::Acquired {
                epoch,
                expires_at_ms,
            }
        })
    }

    /// Read `key` and acquire or renew it.
    pub async fn acquire_or_renew(
        &self,
        key: &str,
        now_ms: i64,
    ) -> Result<LeaseOutcome, LeaseError> {
        let current = self.load(key).await?;
        self.try_acquire(key, current.as_ref(), now_ms).await
    }

    /// Give the lease up (the guarded work must already be stopped). False
    /// when this node did not hold it.
    pub async fn release(&self, key: &str, now_ms: i64) -> Result<bool, LeaseError> {
        let Some(cur) = self.load(key).await? else {
            return Ok(false);
        };
        if cur.value.holder.as_deref() != Some(self.node.as_str()) {
            return Ok(false);
        }
        let record = LeaseRecord {
            holder: None,
            expires_at_ms: now_ms,
            updated_ms: now_ms,
            ..cur.value
        };
        self.write(key, &record, Some(&cur.etag)).await?;
        Ok(true)
    }

    async fn write(
        &self,
        key: &str,
        record: &LeaseRecord,
        expected: Option<&ETag>,
    ) -> Result<ETag, LeaseError> {
        match self
            .state
            .compare_and_swap(&self.record_name(key), record, expected)
            .await
        {
            Ok(etag) => Ok(etag),
            Err(e) if e.is_conflict() => Err(LeaseError::Conflict {
                key: key.to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hubflow_actors::ports::memory::MemoryBlobStore;

    use super::*;

    const LEASE: Duration = Duration::from_secs(3);
    const KEY: &str = "fetcher/demo";

    async fn stores(nodes: &[&str]) -> Vec<LeaseStore> {
        let state = StateStore::new(Arc::new(MemoryBlobStore::new()), "state");
        state.ensure_container().await.unwrap();
        nodes
            .iter()
            .map(|n| LeaseStore::new(state.clone(), "ns", *n, LEASE))
            .collect()
    }

    #[tokio::test]
    async fn one_holder_renews_and_another_takes_over_after_expiry() {
        let s = stores(&["a", "b"]).await;
        let (a, b) = (&s[0], &s[1]);
        let t0 = 1_000_000;
        assert_eq!(
            a.acquire_or_renew(KEY, t0).await.unwrap(),
            LeaseOutcome::Acquired {
                epoch: 1,
                expires_at_ms: t0 + 3_000
            }
        );
        // a renews every second; b never gets it.
        let mut now = t0;
        for _ in 0..10 {
            now += 1_000;
            let renewed = a.acquire_or_renew(KEY, now).await.unwrap();
            assert!(
                matches!(renewed, LeaseOutcome::Renewed { epoch: 1, .. }),
                "{renewed:?}"
            );
            let other = b.acquire_or_renew(KEY, now + 500).await.unwrap();
            assert!(
                matches!(&other, LeaseOutcome::HeldBy { holder, .. } if holder == "a"),
                "{other:?}"
            );
        }
        // a stops renewing: b still cannot take it just before the expiry…
        let expiry = now + 3_000;
        assert!(!b.acquire_or_renew(KEY, expiry - 1).await.unwrap().is_mine());
        // …and takes it at the expiry, with a new epoch.
        assert_eq!(
            b.acquire_or_renew(KEY, expiry).await.unwrap(),
            LeaseOutcome::Acquired {
                epoch: 2,
                expires_at_ms: expiry + 3_000
            }
        );
        // a, coming back, sees b's lease.
        assert!(
            !a.acquire_or_renew(KEY, expiry + 10)
                .await
                .unwrap()
                .is_mine()
        );
    }

    #[tokio::test]
    async fn a_cas_race_has_exactly_one_winner() {
        let s = stores(&["a", "b", "c"]).await;
        // All read the same expired lease and try to take it at once.
        s[0].acquire_or_renew(KEY, 0).await.unwrap();
        let now = 10_000;
        let current = s[1].load(KEY).await.unwrap();
        let results = futures::future::join_all(
            s[1..]
                .iter()
                .map(|n| n.try_acquire(KEY, current.as_ref(), now)),
        )
        .await;
        let winners = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(winners, 1, "{results:?}");
        assert!(
            results
                .iter()
                .any(|r| matches!(r, Err(LeaseError::Conflict { .. })))
        );
        // Fresh lease: two creators, one winner too.
        let fresh = "fetcher/other";
        let results =
            futures::future::join_all(s.iter().map(|n| n.try_acquire(fresh, None, now))).await;
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    }

    #[tokio::test]
    async fn release_hands_it_over_at_once() {
        let s = stores(&["a", "b"]).await;
        s[0].acquire_or_renew(KEY, 0).await.unwrap();
        assert!(!s[1].release(KEY, 5).await.unwrap(), "b does not hold it");
        assert!(s[0].release(KEY, 10).await.unwrap());
        let taken = s[1].acquire_or_renew(KEY, 11).await.unwrap();
        assert_eq!(
            taken,
            LeaseOutcome::Acquired {
                epoch: 2,
                expires_at_ms: 3_011
            }
        );
        assert!(!s[0].release(KEY, 12).await.unwrap());
    }
}
