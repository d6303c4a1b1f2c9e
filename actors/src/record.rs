//! Conventions shared by every stage: event properties, blob names, the
//! "landed" notification.

use serde::{Deserialize, Serialize};

/// Event property holding the record's stable id.
pub const PROP_ID: &str = "hubflow-id";
/// Event property holding the source name.
pub const PROP_SOURCE: &str = "hubflow-source";
/// Event property holding the fetch time (ms since epoch).
pub const PROP_FETCHED_MS: &str = "hubflow-fetched-ms";

/// File extension of raw blobs.
pub const RAW_EXTENSION: &str = "hfr";

/// The deterministic name of a raw blob: one hub partition, one contiguous
/// sequence-number range. Writing the same range again yields the same name,
/// and the ranges of one partition chain (`next.first == prev.last + 1`), so a
/// reader can walk them from any position by prefix lookups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RawBlobName {
    pub hub: String,
    pub partition: u32,
    pub first_seq: i64,
    pub last_seq: i64,
}

impl RawBlobName {
    /// `<hub>/p<partition>/<first>-<last>.hfr`, numbers zero-padded so names sort.
    pub fn to_name(&self) -> String {
        format!(
            "{}{:020}-{:020}.{RAW_EXTENSION}",
            Self::partition_prefix(&self.hub, self.partition),
            self.first_seq,
            self.last_seq
        )
    }

    pub fn partition_prefix(hub: &str, partition: u32) -> String {
        format!("{hub}/p{partition:04}/")
    }

    /// Prefix matching the raw blob that starts exactly at `first_seq`.
    pub fn starting_at_prefix(hub: &str, partition: u32, first_seq: i64) -> String {
        format!("{}{first_seq:020}-", Self::partition_prefix(hub, partition))
    }

    /// The stem used to name derived (curated) files.
    pub fn stem(&self) -> String {
        format!(
            "{}-p{:04}-{:020}-{:020}",
            self.hub, self.partition, self.first_seq, self.last_seq
        )
    }

    pub fn parse(name: &str) -> Option<Self> {
        let rest = name.strip_suffix(&format!(".{RAW_EXTENSION}"))?;
        let mut parts = rest.rsplitn(3, '/');
        let range = parts.next()?;
        let partition = parts.next()?.strip_prefix('p')?.parse().ok()?;
        let hub = parts.next()?.to_string();
        let (first, last) = range.split_once('-')?;
        let (first_seq, last_seq): (i64, i64) = (first.parse().ok()?, last.parse().ok()?);
        if hub.is_empty() || first_seq < 0 || last_seq < first_seq {
            return None;
        }
        Some(RawBlobName {
            hub,
            partition,
            first_seq,
            last_seq,
        })
    }
}

/// The notification a blob-writer publishes to hub "landed" once a raw blob
/// is durable (an Event Grid BlobCreated event is translated to the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandedEvent {
    pub container: String,
    pub blob: String,
    pub records: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_blob_names_round_trip_and_sort() {
        let a = RawBlobName {
            hub: "ingest".into(),
            partition: 3,
            first_seq: 9,
            last_seq: 10,
        };
        let b = RawBlobName {
            first_seq: 11,
            last_seq: 200,
            ..a.clone()
        };
        assert_eq!(RawBlobName::parse(&a.to_name()), Some(a.clone()));
        assert!(a.to_name() < b.to_name());
        assert!(
            b.to_name()
                .starts_with(&RawBlobName::starting_at_prefix("ingest", 3, 11))
        );
    }

    #[test]
    fn bad_raw_names_are_rejected() {
        for bad in [
            "",
            "ingest/p0001/1-2.txt",
            "ingest/px/1-2.hfr",
            "ingest/p0001/5-2.hfr",
            "ingest/p0001/a-b.hfr",
            "p0001/1-2.hfr",
        ] {
            assert_eq!(RawBlobName::parse(bad), None, "{bad}");
        }
    }
}
