//! Keys on command lines: text, or `hex:...`, or `b64:...` (see [`Key::parse`]).

use ranger_proto::Key;
pub use ranger_proto::KeyParseError;

/// Parses a key given as text, `hex:6162`, or `b64:YWI=`.
pub fn parse_key(text: &str) -> Result<Vec<u8>, KeyParseError> {
    Key::parse(text).map(Key::into_bytes)
}
