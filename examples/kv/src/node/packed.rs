//! Pairs packed into one buffer for a snapshot chunk (`SnapshotChunk.packed` in
//! `proto/kv.proto`): each pair as its key's length and its value's length
//! (protobuf varints), then the key and value bytes.
//!
//! Why not a message per pair: a snapshot is almost all pairs, and per pair the
//! source allocated the key and the value twice, framed them, and the
//! destination allocated them again; at 1 KB values that per-pair work, not the
//! bytes, bounded a transfer's rate (`bench_handoff` prints where a copy's time
//! goes). Packed, a chunk is one buffer written straight from RocksDB's
//! iterator and read in place.

use prost::bytes::Buf;
use prost::encoding::{decode_varint, encode_varint};

/// Appends one pair to `buf`.
pub fn pack(buf: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    encode_varint(key.len() as u64, buf);
    encode_varint(value.len() as u64, buf);
    buf.extend_from_slice(key);
    buf.extend_from_slice(value);
}

/// A packed buffer that does not parse: a peer's bug or a corrupted stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed packed pairs at byte {offset}: {reason}")]
pub struct UnpackError {
    pub offset: usize,
    pub reason: &'static str,
}

/// The pairs of a packed buffer, in order, as slices of it. Stops at the first
/// malformed pair with an error (and yields nothing after it).
pub fn unpack(buf: &[u8]) -> Unpack<'_> {
    Unpack {
        whole: buf.len(),
        rest: buf,
        failed: false,
    }
}

/// A key and its value, borrowed from a packed buffer.
pub type PairRef<'a> = (&'a [u8], &'a [u8]);

/// The iterator [`unpack`] returns.
#[derive(Debug)]
pub struct Unpack<'a> {
    whole: usize,
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Unpack<'a> {
    fn fail(&mut self, reason: &'static str) -> Option<Result<PairRef<'a>, UnpackError>> {
        self.failed = true;
        Some(Err(UnpackError {
            offset: self.whole - self.rest.len(),
            reason,
        }))
    }
}

impl<'a> Iterator for Unpack<'a> {
    type Item = Result<PairRef<'a>, UnpackError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let mut cursor = self.rest;
        let Ok(key_len) = decode_varint(&mut cursor) else {
            return self.fail("bad key length");
        };
        let Ok(value_len) = decode_varint(&mut cursor) else {
            return self.fail("bad value length");
        };
        let (Ok(key_len), Ok(value_len)) = (usize::try_from(key_len), usize::try_from(value_len))
        else {
            return self.fail("length out of range");
        };
        let Some(len) = key_len.checked_add(value_len) else {
            return self.fail("length out of range");
        };
        if cursor.remaining() < len {
            return self.fail("pair longer than the buffer");
        }
        let (key, rest) = cursor.split_at(key_len);
        let (value, rest) = rest.split_at(value_len);
        self.rest = rest;
        Some(Ok((key, value)))
    }
}

#[cfg(test)]
mod tests {
    // Tests fail by panicking: unwrapping is the point.
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn pairs_come_back_as_they_were_packed() {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"".to_vec()),
            (vec![0u8; 300], vec![1u8; 70_000]),
            (b"".to_vec(), b"v".to_vec()),
        ];
        let mut buf = Vec::new();
        for (k, v) in &pairs {
            pack(&mut buf, k, v);
        }
        let back: Vec<(Vec<u8>, Vec<u8>)> = unpack(&buf)
            .map(|p| p.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, pairs);
        assert_eq!(unpack(&[]).count(), 0);
    }

    #[test]
    fn a_truncated_or_garbled_buffer_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        pack(&mut buf, b"key", b"value");
        pack(&mut buf, b"key2", b"value2");
        for cut in 1..buf.len() {
            let parsed: Vec<_> = unpack(&buf[..cut]).collect();
            let first_pair_len = 2 + 3 + 5;
            if cut == first_pair_len {
                assert!(parsed.iter().all(Result::is_ok), "cut at a pair boundary");
            } else {
                assert!(parsed.last().unwrap().is_err(), "cut at {cut}: {parsed:?}");
            }
        }
        // A length that claims more than there is, and one that overflows.
        let huge = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00,
        ];
        let err = unpack(&huge).next().unwrap().unwrap_err();
        assert_eq!(err.offset, 0);
        let garbage = [0xffu8; 20];
        assert!(unpack(&garbage).next().unwrap().is_err());
        // Nothing after the first error.
        assert_eq!(unpack(&garbage).count(), 1);
    }
}
