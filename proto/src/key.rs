use std::fmt;

use serde::{Deserialize, Serialize};

/// A key of the keyspace: any byte string, ordered bytewise.
///
/// As a range's start, the empty key means minus infinity; as its end, plus infinity
/// (see [`crate::RangeMeta`]). Keys are bytes, not strings, because storage systems
/// shard binary keys; [`fmt::Display`] prints printable ASCII as text and anything
/// else in hex so that logs stay readable.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key(Vec<u8>);

impl Key {
    /// The empty key: minus infinity as a start, plus infinity as an end.
    pub const fn empty() -> Self {
        Key(Vec::new())
    }

    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Key(bytes.into())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Key {
    fn from(value: &str) -> Self {
        Key(value.as_bytes().to_vec())
    }
}

impl From<String> for Key {
    fn from(value: String) -> Self {
        Key(value.into_bytes())
    }
}

impl From<Vec<u8>> for Key {
    fn from(value: Vec<u8>) -> Self {
        Key(value)
    }
}

impl From<&[u8]> for Key {
    fn from(value: &[u8]) -> Self {
        Key(value.to_vec())
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let printable = self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ');
        if printable {
            // Every byte is ASCII, so this is valid UTF-8.
            f.write_str(&String::from_utf8_lossy(&self.0))
        } else {
            f.write_str("hex:")?;
            for b in &self.0 {
                write!(f, "{b:02x}")?;
            }
            Ok(())
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_bytewise() {
        assert!(Key::from("a") < Key::from("b"));
        assert!(Key::from("a") < Key::from("aa"));
        assert!(Key::empty() < Key::from("\0"));
    }

    #[test]
    fn displays_text_or_hex() {
        assert_eq!(Key::from("user:1").to_string(), "user:1");
        assert_eq!(Key::new(vec![0u8, 255]).to_string(), "hex:00ff");
        assert_eq!(Key::empty().to_string(), "");
    }
}
