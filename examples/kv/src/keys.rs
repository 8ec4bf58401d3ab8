//! Keys on command lines: text, or `hex:...`, or `b64:...`.

use base64::Engine as _;

/// Why a key could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyParseError {
    #[error("bad hex key {0:?}: {1}")]
    Hex(String, hex::FromHexError),
    #[error("bad base64 key {0:?}: {1}")]
    Base64(String, base64::DecodeError),
}

/// Parses a key given as text, `hex:6162`, or `b64:YWI=`.
pub fn parse_key(text: &str) -> Result<Vec<u8>, KeyParseError> {
    if let Some(hex) = text.strip_prefix("hex:") {
        return hex::decode(hex).map_err(|e| KeyParseError::Hex(hex.to_owned(), e));
    }
    if let Some(b64) = text.strip_prefix("b64:") {
        return base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| KeyParseError::Base64(b64.to_owned(), e));
    }
    Ok(text.as_bytes().to_vec())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_hex_and_base64() {
        assert_eq!(parse_key("abc").unwrap(), b"abc");
        assert_eq!(parse_key("hex:00ff").unwrap(), vec![0, 255]);
        assert_eq!(parse_key("b64:YWI=").unwrap(), b"ab");
        assert!(parse_key("hex:zz").is_err());
        assert!(parse_key("b64:***").is_err());
    }
}
