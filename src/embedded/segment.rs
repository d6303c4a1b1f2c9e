//! The encoding of one segment of the embedded hub: the consecutive events
//! of one publish to one partition, stored as one SQLite blob.
//!
//! ```text
//! per event, in sequence order:
//!   varint  offset - segment first offset
//!   varint  enqueued time - segment enqueued time (ms, never negative)
//!   varint  property count, then per property: varint len, key, varint len, value
//!   varint  body length, body
//! ```
//!
//! Varints are LEB128. An event's offset advances the partition's offset by
//! `1 + body length + encoded properties length`, so offsets are strictly
//! increasing even for empty events. Decoding checks every length against
//! the blob and fails with [`SegmentError`] instead of panicking.

use std::collections::BTreeMap;

use bytes::Bytes;

/// A segment that does not decode: the database was altered or damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt segment: {0}")]
pub struct SegmentError(&'static str);

/// The encoded properties of an event.
pub fn encode_properties(properties: &BTreeMap<String, String>, out: &mut Vec<u8>) {
    put_varint(out, properties.len() as u64);
    for (key, value) in properties {
        put_varint(out, key.len() as u64);
        out.extend_from_slice(key.as_bytes());
        put_varint(out, value.len() as u64);
        out.extend_from_slice(value.as_bytes());
    }
}

/// Builds a segment from events that share the segment's enqueued time.
pub struct SegmentWriter {
    buf: Vec<u8>,
    /// Offset of the next event, relative to the segment's first.
    next_offset: u64,
    events: u64,
    scratch: Vec<u8>,
}

impl SegmentWriter {
    pub fn with_capacity(bytes: usize) -> Self {
        SegmentWriter {
            buf: Vec::with_capacity(bytes),
            next_offset: 0,
            events: 0,
            scratch: Vec::new(),
        }
    }

    /// Appends an event; returns how far it advances the partition offset.
    pub fn push(&mut self, body: &[u8], properties: &BTreeMap<String, String>) -> u64 {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        encode_properties(properties, &mut scratch);
        let advance = self.push_encoded(self.next_offset, 0, body, &scratch);
        self.scratch = scratch;
        advance
    }

    /// Appends an event with an explicit relative offset and enqueued delta
    /// (the migration of events stored one per row keeps theirs).
    pub fn push_encoded(
        &mut self,
        offset: u64,
        enqueued_delta: u64,
        body: &[u8],
        properties: &[u8],
    ) -> u64 {
        put_varint(&mut self.buf, offset);
        put_varint(&mut self.buf, enqueued_delta);
        self.buf.extend_from_slice(properties);
        put_varint(&mut self.buf, body.len() as u64);
        self.buf.extend_from_slice(body);
        let advance = 1 + body.len() as u64 + properties.len() as u64;
        self.next_offset = offset + advance;
        self.events += 1;
        advance
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    /// Offset just past the last event, relative to the segment's first.
    pub fn end_offset(&self) -> u64 {
        self.next_offset
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// One decoded event of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentEvent {
    pub offset: u64,
    pub enqueued_delta: u64,
    pub properties: BTreeMap<String, String>,
    /// A slice of the segment's buffer, not a copy.
    pub body: Bytes,
}

/// Walks the events of a segment in order.
pub struct SegmentReader {
    data: Bytes,
    at: usize,
}

impl SegmentReader {
    pub fn new(data: Bytes) -> Self {
        SegmentReader { data, at: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.at >= self.data.len()
    }

    /// The next event, `None` at the end.
    pub fn next_event(&mut self) -> Result<Option<SegmentEvent>, SegmentError> {
        if self.is_empty() {
            return Ok(None);
        }
        let offset = self.varint()?;
        let enqueued_delta = self.varint()?;
        let count = self.varint()?;
        let mut properties = BTreeMap::new();
        for _ in 0..count {
            let key = self.text()?;
            let value = self.text()?;
            properties.insert(key, value);
        }
        let len = self.len()?;
        let body = self.data.slice(self.at..self.at + len);
        self.at += len;
        Ok(Some(SegmentEvent {
            offset,
            enqueued_delta,
            properties,
            body,
        }))
    }

    fn varint(&mut self) -> Result<u64, SegmentError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .data
                .get(self.at)
                .ok_or(SegmentError("a varint runs past the end"))?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(SegmentError("a varint is longer than 64 bits"))
    }

    fn len(&mut self) -> Result<usize, SegmentError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| SegmentError("a length does not fit in memory"))?;
        if len > self.data.len() - self.at {
            return Err(SegmentError("a length runs past the end"));
        }
        Ok(len)
    }

    fn text(&mut self) -> Result<String, SegmentError> {
        let len = self.len()?;
        let text = std::str::from_utf8(&self.data[self.at..self.at + len])
            .map_err(|_| SegmentError("a property is not UTF-8"))?
            .to_string();
        self.at += len;
        Ok(text)
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn segments_round_trip_with_increasing_offsets() {
        let mut w = SegmentWriter::with_capacity(64);
        let a = props(&[("hubflow-id", "1"), ("é", "ü")]);
        let advance = w.push(b"{\"x\":1}", &a);
        w.push(b"", &BTreeMap::new());
        w.push_encoded(1_000_000, 7, b"big", &[0]);
        assert_eq!(w.events(), 3);
        let mut r = SegmentReader::new(Bytes::from(w.finish()));
        let first = r.next_event().unwrap().unwrap();
        assert_eq!(
            (first.offset, first.properties, &first.body[..]),
            (0, a, &b"{\"x\":1}"[..])
        );
        let second = r.next_event().unwrap().unwrap();
        assert_eq!((second.offset, second.body.len()), (advance, 0));
        let third = r.next_event().unwrap().unwrap();
        assert_eq!((third.offset, third.enqueued_delta), (1_000_000, 7));
        assert_eq!(r.next_event().unwrap(), None);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut w = SegmentWriter::with_capacity(64);
        w.push(b"payload", &props(&[("k", "v")]));
        let data = w.finish();
        for len in 1..data.len() {
            let mut r = SegmentReader::new(Bytes::copy_from_slice(&data[..len]));
            assert!(r.next_event().is_err(), "truncated at {len}");
        }
        let mut bad = data.clone();
        bad[4] = 0xff; // a key byte: not UTF-8
        assert!(SegmentReader::new(Bytes::from(bad)).next_event().is_err());
    }
}
