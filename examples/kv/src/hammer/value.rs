//! Self-describing values: a value names its key and write number, so a read can
//! tell an older write of the key from a value that was never written.
//!
//! A value is `{key}@{seq}/` followed by filler derived from `seq` up to the
//! configured size. It is a pure function of `(key, seq, size)`, so the hammer
//! keeps only write numbers, never values, and a corrupted filler is caught.

/// The value of write number `seq` of `key`, at least `size` bytes long (longer
/// only when the prefix alone is longer).
pub fn encode(key: &str, seq: u64, size: usize) -> Vec<u8> {
    let mut value = format!("{key}@{seq}/").into_bytes();
    let prefix = value.len();
    value.extend((prefix..size).map(|i| filler(seq, i)));
    value
}

/// The write number encoded in `value`, if it is exactly a value [`encode`]
/// produces for `key` and `size`.
pub fn decode(key: &str, value: &[u8], size: usize) -> Option<u64> {
    let rest = value.strip_prefix(key.as_bytes())?.strip_prefix(b"@")?;
    let slash = rest.iter().position(|&b| b == b'/')?;
    let seq: u64 = std::str::from_utf8(&rest[..slash]).ok()?.parse().ok()?;
    (encode(key, seq, size) == value).then_some(seq)
}

/// Printable filler that differs between writes.
fn filler(seq: u64, index: usize) -> u8 {
    // Both operands are reduced modulo 26 first, so the sum cannot overflow.
    let offset = (seq % 26) as u8;
    let position = (index % 26) as u8;
    b'a' + (offset + position) % 26
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_foreign_values() {
        let v = encode("h1-000002", 42, 32);
        assert_eq!(v.len(), 32);
        assert_eq!(decode("h1-000002", &v, 32), Some(42));
        assert_eq!(decode("h1-000003", &v, 32), None);
        let mut corrupt = v.clone();
        corrupt[31] = b'!';
        assert_eq!(decode("h1-000002", &corrupt, 32), None);
        assert_eq!(decode("h1-000002", b"garbage", 32), None);
        // Shorter than the prefix: the prefix wins.
        assert_eq!(encode("k", 7, 0), b"k@7/");
    }
}
