//! The raw format: what the blob-writer lands and the transformer reads.
//!
//! A raw blob is a fixed 40-byte header followed by a zstd frame holding an
//! rkyv archive of a [`RawBatch`]:
//!
//! ```text
//! offset size field
//!      0    4 magic  b"HFRW"
//!      4    2 format version (little endian), currently 1
//!      6    1 codec: 1 = zstd
//!      7    1 flags (0)
//!      8    4 record count
//!     12    8 uncompressed archive length
//!     20    8 compressed payload length
//!     28    8 xxh3-64 of the compressed payload
//!     36    4 xxh3-64 of bytes 0..36, truncated (header checksum)
//! ```
//!
//! Readers check every field before touching the payload: the header
//! checksum, the payload length (a truncated blob is caught here), the payload
//! checksum, a bound on the uncompressed length (a hostile blob cannot make us
//! allocate without limit), then rkyv's bytecheck on the archive. Every
//! failure is a typed [`RawError`]; nothing panics. A blob that fails is
//! moved under [`QUARANTINE_PREFIX`] by [`quarantine`] with the reason beside
//! it, and the pipeline skips its range.

use bytes::Bytes;
use rkyv::rancor;
use serde::Serialize;

use crate::ports::{BlobError, BlobStore, PutCondition};

pub const MAGIC: [u8; 4] = *b"HFRW";
pub const FORMAT_VERSION: u16 = 1;
pub const CODEC_ZSTD: u8 = 1;
pub const HEADER_LEN: usize = 40;
/// Refuse archives claiming to be larger than this when decompressed.
pub const MAX_UNCOMPRESSED: u64 = 1 << 30;
/// Where corrupt blobs are moved, inside the raw container.
pub const QUARANTINE_PREFIX: &str = "_quarantine/";

/// One batch of consecutive events of one hub partition.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RawBatch {
    pub hub: String,
    pub partition: u32,
    pub first_seq: i64,
    pub last_seq: i64,
    /// When the blob-writer built the batch (ms since the epoch).
    pub created_ms: i64,
    pub records: Vec<RawRecord>,
}

/// One event as landed: the source's record plus its hub position.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RawRecord {
    pub id: String,
    pub source: String,
    pub sequence_number: i64,
    pub offset: String,
    pub enqueued_time_ms: i64,
    pub fetched_time_ms: i64,
    /// The record as fetched (JSON text), byte for byte. Archived exactly
    /// as a `Vec<u8>`, from the hub event's buffer without a copy.
    #[rkyv(with = BytesAsVec)]
    pub payload: Bytes,
}

/// Archives [`Bytes`] as an `ArchivedVec<u8>` (the layout of a `Vec<u8>`
/// field), serializing straight from the shared buffer.
pub struct BytesAsVec;

impl rkyv::with::ArchiveWith<Bytes> for BytesAsVec {
    type Archived = rkyv::vec::ArchivedVec<u8>;
    type Resolver = rkyv::vec::VecResolver;

    fn resolve_with(field: &Bytes, resolver: Self::Resolver, out: rkyv::Place<Self::Archived>) {
        rkyv::vec::ArchivedVec::resolve_from_len(field.len(), resolver, out);
    }
}

impl<S> rkyv::with::SerializeWith<Bytes, S> for BytesAsVec
where
    S: rkyv::rancor::Fallible + rkyv::ser::Allocator + rkyv::ser::Writer + ?Sized,
{
    fn serialize_with(field: &Bytes, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::vec::ArchivedVec::<u8>::serialize_from_slice(field.as_ref(), serializer)
    }
}

impl<D: rkyv::rancor::Fallible + ?Sized>
    rkyv::with::DeserializeWith<rkyv::vec::ArchivedVec<u8>, Bytes, D> for BytesAsVec
{
    fn deserialize_with(field: &rkyv::vec::ArchivedVec<u8>, _: &mut D) -> Result<Bytes, D::Error> {
        Ok(Bytes::copy_from_slice(field.as_slice()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawError {
    #[error("raw blob is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    TooShort { len: usize },
    #[error("raw blob has bad magic {found:02x?} (not a hubflow raw blob)")]
    BadMagic { found: [u8; 4] },
    #[error("raw blob header checksum mismatch")]
    HeaderChecksum,
    #[error("raw blob format version {0} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("raw blob codec {0} is not supported")]
    UnsupportedCodec(u8),
    #[error("raw blob is truncated or padded: header says {expected} payload bytes, found {found}")]
    Length { expected: u64, found: u64 },
    #[error("raw blob payload checksum mismatch")]
    PayloadChecksum,
    #[error("raw blob claims {0} uncompressed bytes, above the {MAX_UNCOMPRESSED} limit")]
    TooLarge(u64),
    #[error("raw blob payload does not decompress: {0}")]
    Decompress(String),
    #[error("raw blob archive is invalid: {0}")]
    Archive(String),
    #[error("raw blob header says {header} records, archive holds {archive}")]
    RecordCount { header: u32, archive: usize },
    #[error("cannot encode raw batch: {0}")]
    Encode(String),
}

fn header_checksum(header: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(&header[..36]) as u32
}

/// Serialize, compress and frame a batch.
pub fn encode(batch: &RawBatch, zstd_level: i32) -> Result<Vec<u8>, RawError> {
    // Sized up front (payloads, their strings and a margin per record), so
    // the archive does not grow by copying.
    let estimate = 1024
        + batch
            .records
            .iter()
            .map(|r| r.payload.len() + r.id.len() + r.source.len() + r.offset.len() + 96)
            .sum::<usize>();
    let archive = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
        batch,
        rkyv::util::AlignedVec::<16>::with_capacity(estimate),
    )
    .map_err(|e| RawError::Encode(e.to_string()))?;
    let payload =
        zstd::bulk::compress(&archive, zstd_level).map_err(|e| RawError::Encode(e.to_string()))?;
    let count = u32::try_from(batch.records.len())
        .map_err(|_| RawError::Encode("more than u32::MAX records".to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(CODEC_ZSTD);
    out.push(0);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(archive.len() as u64).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    let check = header_checksum(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The validated header of a raw blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    pub version: u16,
    pub codec: u8,
    pub records: u32,
    pub uncompressed_len: u64,
    pub payload_len: u64,
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Validate the header and the payload checksum without decompressing.
pub fn read_header(blob: &[u8]) -> Result<RawHeader, RawError> {
    if blob.len() < HEADER_LEN {
        return Err(RawError::TooShort { len: blob.len() });
    }
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&blob[..4]);
    if magic != MAGIC {
        return Err(RawError::BadMagic { found: magic });
    }
    if le_u32(blob, 36) != header_checksum(blob) {
        return Err(RawError::HeaderChecksum);
    }
    let version = u16::from_le_bytes([blob[4], blob[5]]);
    if version != FORMAT_VERSION {
        return Err(RawError::UnsupportedVersion(version));
    }
    let codec = blob[6];
    if codec != CODEC_ZSTD {
        return Err(RawError::UnsupportedCodec(codec));
    }
    let header = RawHeader {
        version,
        codec,
        records: le_u32(blob, 8),
        uncompressed_len: le_u64(blob, 12),
        payload_len: le_u64(blob, 20),
    };
    let found = (blob.len() - HEADER_LEN) as u64;
    if found != header.payload_len {
        return Err(RawError::Length {
            expected: header.payload_len,
            found,
        });
    }
    if header.uncompressed_len > MAX_UNCOMPRESSED {
        return Err(RawError::TooLarge(header.uncompressed_len));
    }
    if xxhash_rust::xxh3::xxh3_64(&blob[HEADER_LEN..]) != le_u64(blob, 28) {
        return Err(RawError::PayloadChecksum);
    }
    Ok(header)
}

/// The buffer a raw blob's archive is decompressed into, aligned for rkyv.
/// Reuse one across blobs to keep the allocation.
#[derive(Default)]
pub struct RawBuf(rkyv::util::AlignedVec<16>);

/// Validate a raw blob and read it in place: the archive is decompressed
/// into `buf` and checked by bytecheck, and the records are read from it
/// without copying (the payloads stay in `buf`).
pub fn decode_into<'b>(blob: &[u8], buf: &'b mut RawBuf) -> Result<&'b ArchivedRawBatch, RawError> {
    let header = read_header(blob)?;
    let len = usize::try_from(header.uncompressed_len)
        .map_err(|_| RawError::TooLarge(header.uncompressed_len))?;
    buf.0.clear();
    buf.0.resize(len, 0);
    let written = zstd::bulk::decompress_to_buffer(&blob[HEADER_LEN..], &mut buf.0[..])
        .map_err(|e| RawError::Decompress(e.to_string()))?;
    if written != len {
        return Err(RawError::Decompress(format!(
            "expected {len} bytes, got {written}"
        )));
    }
    let batch = rkyv::access::<ArchivedRawBatch, rancor::Error>(&buf.0[..])
        .map_err(|e| RawError::Archive(e.to_string()))?;
    if batch.records.len() != header.records as usize {
        return Err(RawError::RecordCount {
            header: header.records,
            archive: batch.records.len(),
        });
    }
    Ok(batch)
}

/// Validate and decode a raw blob into owned values (the payloads copied
/// out); [`decode_into`] reads them in place.
pub fn decode(blob: &[u8]) -> Result<RawBatch, RawError> {
    let mut buf = RawBuf::default();
    let archived = decode_into(blob, &mut buf)?;
    rkyv::deserialize::<RawBatch, rancor::Error>(archived)
        .map_err(|e| RawError::Archive(e.to_string()))
}

#[derive(Serialize)]
struct QuarantineNote<'a> {
    original: &'a str,
    reason: &'a str,
    quarantined_ms: i64,
}

/// Move a blob that cannot be read under [`QUARANTINE_PREFIX`] with a `.reason.json`
/// beside it, then delete the original. Idempotent: a repeated call after a
/// crash finds the copy already there. Returns the quarantined name.
pub async fn quarantine(
    store: &dyn BlobStore,
    container: &str,
    name: &str,
    reason: &str,
) -> Result<String, BlobError> {
    let target = format!("{QUARANTINE_PREFIX}{name}");
    let (data, _) = match store.get(container, name).await {
        Ok(found) => found,
        // Already moved by an earlier attempt.
        Err(e) if e.is_not_found() => return Ok(target),
        Err(e) => return Err(e),
    };
    store
        .put(container, &target, data, PutCondition::None)
        .await?;
    let note = QuarantineNote {
        original: name,
        reason,
        quarantined_ms: crate::now_ms(),
    };
    let note = serde_json::to_vec_pretty(&note).unwrap_or_default();
    store
        .put(
            container,
            &format!("{target}.reason.json"),
            Bytes::from(note),
            PutCondition::None,
        )
        .await?;
    match store.delete(container, name, None).await {
        Ok(()) => Ok(target),
        Err(e) if e.is_not_found() => Ok(target),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::memory::MemoryBlobStore;

    fn batch(n: usize) -> RawBatch {
        RawBatch {
            hub: "ingest".into(),
            partition: 3,
            first_seq: 100,
            last_seq: 100 + n as i64 - 1,
            created_ms: 1_700_000_000_000,
            records: (0..n)
                .map(|i| RawRecord {
                    id: format!("evt-{i}"),
                    source: "demo".into(),
                    sequence_number: 100 + i as i64,
                    offset: (100 + i).to_string(),
                    enqueued_time_ms: 1_700_000_000_000 + i as i64,
                    fetched_time_ms: 1_700_000_000_000,
                    payload: format!(r#"{{"id":"evt-{i}","n":{i}}}"#).into(),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips() {
        let b = batch(500);
        let encoded = encode(&b, 3).unwrap();
        assert_eq!(decode(&encoded).unwrap(), b);
        let header = read_header(&encoded).unwrap();
        assert_eq!(header.records, 500);
        assert_eq!(decode(&encode(&batch(0), 3).unwrap()).unwrap(), batch(0));
    }

    #[test]
    fn encoding_is_deterministic() {
        assert_eq!(
            encode(&batch(50), 3).unwrap(),
            encode(&batch(50), 3).unwrap()
        );
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let encoded = encode(&batch(20), 3).unwrap();
        for len in 0..encoded.len() {
            assert!(
                decode(&encoded[..len]).is_err(),
                "truncated at {len} decoded"
            );
        }
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let encoded = encode(&batch(20), 3).unwrap();
        for at in 0..encoded.len() {
            let mut bad = encoded.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {at} decoded");
        }
    }

    #[test]
    fn decoding_in_place_reads_what_was_written_and_refuses_what_decode_refuses() {
        let b = batch(300);
        let encoded = encode(&b, 3).unwrap();
        let mut buf = RawBuf::default();
        let view = decode_into(&encoded, &mut buf).unwrap();
        assert_eq!(view.records.len(), 300);
        assert_eq!(view.first_seq.to_native(), b.first_seq);
        for (a, r) in view.records.iter().zip(&b.records) {
            assert_eq!(a.id.as_str(), r.id);
            assert_eq!(a.payload.as_slice(), &r.payload[..]);
            assert_eq!(a.sequence_number.to_native(), r.sequence_number);
        }
        let small = encode(&batch(20), 3).unwrap();
        for len in 0..small.len() {
            assert!(decode_into(&small[..len], &mut buf).is_err(), "{len}");
        }
        for at in 0..small.len() {
            let mut bad = small.clone();
            bad[at] ^= 0x40;
            assert!(decode_into(&bad, &mut buf).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn specific_errors() {
        let encoded = encode(&batch(3), 3).unwrap();
        assert_eq!(decode(b"short"), Err(RawError::TooShort { len: 5 }));
        let mut bad = encoded.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(RawError::BadMagic { .. })));
        let mut padded = encoded.clone();
        padded.push(0);
        assert!(matches!(decode(&padded), Err(RawError::Length { .. })));
        let mut payload = encoded.clone();
        let last = payload.len() - 1;
        payload[last] ^= 1;
        assert_eq!(decode(&payload), Err(RawError::PayloadChecksum));
    }

    #[test]
    fn a_forged_archive_with_valid_checksums_is_rejected_by_bytecheck() {
        // Random bytes, correctly framed: only rkyv's validation stands in the way.
        let garbage: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let payload = zstd::bulk::compress(&garbage, 1).unwrap();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.push(CODEC_ZSTD);
        out.push(0);
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&(garbage.len() as u64).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
        let check = header_checksum(&out);
        out.extend_from_slice(&check.to_le_bytes());
        out.extend_from_slice(&payload);
        assert!(matches!(
            decode(&out),
            Err(RawError::Archive(_) | RawError::RecordCount { .. })
        ));
    }

    #[tokio::test]
    async fn quarantine_moves_the_blob_and_is_idempotent() {
        let store = MemoryBlobStore::new();
        store.create_container("raw").await.unwrap();
        store
            .put(
                "raw",
                "ingest/p0000/x.hfr",
                Bytes::from_static(b"junk"),
                PutCondition::None,
            )
            .await
            .unwrap();
        let moved = quarantine(&store, "raw", "ingest/p0000/x.hfr", "bad magic")
            .await
            .unwrap();
        assert_eq!(moved, "_quarantine/ingest/p0000/x.hfr");
        assert_eq!(
            store.names("raw"),
            vec![
                "_quarantine/ingest/p0000/x.hfr".to_string(),
                "_quarantine/ingest/p0000/x.hfr.reason.json".to_string()
            ]
        );
        let again = quarantine(&store, "raw", "ingest/p0000/x.hfr", "bad magic")
            .await
            .unwrap();
        assert_eq!(again, moved);
    }
}
