//! Request input: path ids and JSON bodies, checked before any service is
//! called so that bad input is a 400 that says what is wrong and changes
//! nothing.
//!
//! Why ids accept both `7` and `"7"`: HTML forms hand the page strings, and a
//! script is as likely to send numbers; anything else (a negative number, a
//! fraction, letters) is refused here with the field's name.

use std::fmt;
use std::time::Duration;

use axum::body::Bytes;
use ranger_proto::Key;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

use super::error::ApiError;

/// A range or operation id: a whole number, given as a JSON number or string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Id(pub u64);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number (as a number or a string of digits)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Id, E> {
                u64::try_from(v)
                    .map(Id)
                    .map_err(|_| E::custom(format!("{v} is negative; ids are whole numbers")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                parse_id(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

fn parse_id(text: &str) -> Result<Id, String> {
    let text = text.trim();
    text.parse::<u64>()
        .map(Id)
        .map_err(|_| format!("{text:?} is not an id (a whole number)"))
}

/// An id from the URL path, e.g. the `7` of `/api/ranges/7`.
pub(super) fn path_id(what: &str, text: &str) -> Result<u64, ApiError> {
    parse_id(text)
        .map(|id| id.0)
        .map_err(|e| ApiError::BadRequest(format!("bad {what}: {e}")))
}

/// A JSON request body as `T`, or a 400 naming what is wrong.
pub(super) fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::BadRequest(
            "the request needs a JSON body".to_owned(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("bad request body: {e}")))
}

/// A node id from a form: blank means "any node" (the services' empty string).
pub(super) fn optional_node(node: Option<String>) -> String {
    node.map(|n| n.trim().to_owned()).unwrap_or_default()
}

/// `POST /api/move`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveBody {
    pub range: Id,
    #[serde(default)]
    pub node: Option<String>,
}

/// `POST /api/split`: `key` as `rangerctl split` takes it (text, `hex:...`
/// or `b64:...`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SplitBody {
    pub range: Id,
    pub key: String,
    #[serde(default)]
    pub node_left: Option<String>,
    #[serde(default)]
    pub node_right: Option<String>,
}

impl SplitBody {
    /// The boundary's bytes: refused when it does not parse or is empty.
    pub fn boundary(&self) -> Result<Vec<u8>, ApiError> {
        let key = Key::parse(&self.key)
            .map_err(|e| ApiError::BadRequest(format!("bad split key: {e}")))?
            .into_bytes();
        if key.is_empty() {
            return Err(ApiError::BadRequest(
                "the split key must not be empty".to_owned(),
            ));
        }
        Ok(key)
    }
}

/// `POST /api/join`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JoinBody {
    pub left: Id,
    pub right: Id,
    #[serde(default)]
    pub node: Option<String>,
}

/// `POST /api/drain` and `/api/undrain`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NodeBody {
    pub node: String,
}

/// `POST /api/cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelBody {
    pub operation: Id,
}

/// `POST /api/balance/pause`: `duration` as `rangerctl balance pause` takes
/// it (`30s`, `10m`, `1h`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PauseBody {
    pub duration: String,
}

impl PauseBody {
    /// The pause in milliseconds (zero is the service's to refuse).
    pub fn millis(&self) -> Result<u64, ApiError> {
        let duration: Duration = humantime::parse_duration(self.duration.trim())
            .map_err(|e| ApiError::BadRequest(format!("bad duration {:?}: {e}", self.duration)))?;
        Ok(crate::service::millis(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_numbers_or_strings_of_digits() {
        let body: CancelBody = serde_json::from_str(r#"{"operation": 7}"#).expect("number");
        assert_eq!(body.operation, Id(7));
        let body: CancelBody = serde_json::from_str(r#"{"operation": " 8 "}"#).expect("string");
        assert_eq!(body.operation, Id(8));
        for bad in [
            r#"{"operation": "x"}"#,
            r#"{"operation": -1}"#,
            r#"{"operation": 1.5}"#,
        ] {
            assert!(serde_json::from_str::<CancelBody>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_split_key_must_parse_and_not_be_empty() {
        let split = |key: &str| SplitBody {
            range: Id(1),
            key: key.to_owned(),
            node_left: None,
            node_right: None,
        };
        assert_eq!(split("hex:6d").boundary().expect("hex"), b"m");
        assert!(split("hex:zz").boundary().is_err());
        assert!(split("").boundary().is_err());
    }
}
