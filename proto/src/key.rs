use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Why a key written by a person (a command-line argument) could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("bad hex key {0:?}: {1}")]
    Hex(String, String),
    #[error("bad base64 key {0:?}: {1}")]
    Base64(String, String),
}

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

    /// Reads a key as operators write it: text, `hex:6162`, or `b64:YWI=` (for
    /// binary keys). The inverse of [`fmt::Display`] for text and hex keys.
    pub fn parse(text: &str) -> Result<Key, KeyParseError> {
        if let Some(hex) = text.strip_prefix("hex:") {
            return hex::decode(hex)
                .map(Key)
                .map_err(|e| KeyParseError::Hex(hex.to_owned(), e.to_string()));
        }
        if let Some(b64) = text.strip_prefix("b64:") {
            return base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map(Key)
                .map_err(|e| KeyParseError::Base64(b64.to_owned(), e.to_string()));
        }
        Ok(Key::from(text))
    }

    /// The exact text form: the key itself when every byte is printable ASCII
    /// (space to `~`) and it does not start with `hex:` or `b64:`, otherwise
    /// `hex:` and its bytes in lower-case hex. Unlike [`fmt::Display`], which
    /// prints a text key such as `hex:00` as it is, this never confuses two keys:
    /// `Key::parse(&key.to_text()) == Ok(key)` for every key. Persisted records
    /// store keys this way, so that an operator reads them as rangerctl prints
    /// and accepts them.
    pub fn to_text(&self) -> String {
        if self.is_plain_text() {
            // Every byte is printable ASCII, so this is valid UTF-8.
            String::from_utf8_lossy(&self.0).into_owned()
        } else {
            let mut text = String::with_capacity(4 + 2 * self.0.len());
            text.push_str("hex:");
            text.push_str(&hex::encode(&self.0));
            text
        }
    }

    /// Whether [`Key::to_text`] writes the key as it is: printable, and not
    /// read back as an encoded key.
    fn is_plain_text(&self) -> bool {
        self.is_printable() && !self.0.starts_with(b"hex:") && !self.0.starts_with(b"b64:")
    }

    /// Every byte printable ASCII (or a space), so the bytes are their own text.
    fn is_printable(&self) -> bool {
        self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
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
        if self.is_printable() {
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
    fn parses_text_hex_and_base64() {
        assert_eq!(Key::parse("abc"), Ok(Key::from("abc")));
        assert_eq!(Key::parse("hex:00ff"), Ok(Key::new(vec![0, 255])));
        assert_eq!(Key::parse("b64:YWI="), Ok(Key::from("ab")));
        assert!(Key::parse("hex:zz").is_err());
        assert!(Key::parse("b64:***").is_err());
        let binary = Key::new(vec![0u8, 1]);
        assert_eq!(Key::parse(&binary.to_string()), Ok(binary));
    }

    #[test]
    fn the_text_form_round_trips_every_awkward_key() {
        let mut awkward = vec![
            Key::empty(),
            Key::from("user:1"),
            Key::from(" leading and trailing "),
            Key::from("quote \" and backslash \\"),
            Key::new(vec![0u8]),
            Key::new(vec![0xff, 0xfe, 0x80]),
            Key::from("hex:00"),
            Key::from("b64:YWI="),
            Key::from("hex:"),
            Key::from("hex"),
            Key::new(b"hex:\x00".to_vec()),
            Key::from("caf\u{e9}"),
            Key::new(vec![b'a'; 64 * 1024]),
            Key::new((0..=255u8).collect::<Vec<_>>()),
        ];
        awkward.extend((0..=255u8).map(|b| Key::new(vec![b])));
        for key in awkward {
            let text = key.to_text();
            assert_eq!(Key::parse(&text), Ok(key.clone()), "{text:?}");
        }
    }

    #[test]
    fn the_text_form_is_the_key_itself_when_printable() {
        assert_eq!(Key::from("k0000000005").to_text(), "k0000000005");
        assert_eq!(Key::empty().to_text(), "");
        assert_eq!(Key::new(vec![0u8, 255]).to_text(), "hex:00ff");
        assert_eq!(Key::from("hex:00").to_text(), "hex:6865783a3030");
    }

    #[test]
    fn displays_text_or_hex() {
        assert_eq!(Key::from("user:1").to_string(), "user:1");
        assert_eq!(Key::new(vec![0u8, 255]).to_string(), "hex:00ff");
        assert_eq!(Key::empty().to_string(), "");
    }
}
