//! Consul transactions (`/v1/txn`): up to 64 KV operations applied atomically,
//! all or none. Ranger writes its persistent state this way, with checks (an
//! index, a session, absence) that make a stale or deposed writer fail instead
//! of overwriting newer state.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{Client, Scope};
use crate::error::{Error, Result, TxnOpError};
use crate::kv::{KvPair, RawKvPair};

/// One KV operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes `value` at `key`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Flags to store, if any.
        flags: Option<u64>,
    },
    /// Writes `value` at `key` only if the key's `ModifyIndex` is `index` (0:
    /// only if the key is absent).
    Cas {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The expected `ModifyIndex`.
        index: u64,
        /// Flags to store, if any.
        flags: Option<u64>,
    },
    /// Reads `key`; fails the transaction if it is absent.
    Get {
        /// The key.
        key: String,
    },
    /// Reads every key under `key`.
    GetTree {
        /// The prefix.
        key: String,
    },
    /// Deletes `key` (no error if absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Deletes every key under `key`.
    DeleteTree {
        /// The prefix.
        key: String,
    },
    /// Deletes `key` only if its `ModifyIndex` is `index`.
    DeleteCas {
        /// The key.
        key: String,
        /// The expected `ModifyIndex`.
        index: u64,
    },
    /// Fails the transaction unless `key`'s `ModifyIndex` is `index`.
    CheckIndex {
        /// The key.
        key: String,
        /// The expected `ModifyIndex`.
        index: u64,
    },
    /// Fails the transaction unless `session` holds `key`'s lock: the fence
    /// that stops a deposed leader's writes.
    CheckSession {
        /// The key.
        key: String,
        /// The session that must hold the lock.
        session: String,
    },
    /// Fails the transaction if `key` exists.
    CheckNotExists {
        /// The key.
        key: String,
    },
    /// Takes `key`'s lock for `session` and writes `value`.
    Lock {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The session.
        session: String,
    },
    /// Releases `key`'s lock held by `session` and writes `value`.
    Unlock {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The session.
        session: String,
    },
}

impl TxnOp {
    /// A [`TxnOp::Set`] without flags.
    pub fn set(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::Set {
            key: key.into(),
            value: value.into(),
            flags: None,
        }
    }

    /// A [`TxnOp::Cas`] without flags.
    pub fn cas(key: impl Into<String>, value: impl Into<Vec<u8>>, index: u64) -> Self {
        Self::Cas {
            key: key.into(),
            value: value.into(),
            index,
            flags: None,
        }
    }

    /// A [`TxnOp::Get`].
    pub fn get(key: impl Into<String>) -> Self {
        Self::Get { key: key.into() }
    }

    /// A [`TxnOp::Delete`].
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }

    /// A [`TxnOp::DeleteCas`].
    pub fn delete_cas(key: impl Into<String>, index: u64) -> Self {
        Self::DeleteCas {
            key: key.into(),
            index,
        }
    }

    /// A [`TxnOp::CheckIndex`].
    pub fn check_index(key: impl Into<String>, index: u64) -> Self {
        Self::CheckIndex {
            key: key.into(),
            index,
        }
    }

    /// A [`TxnOp::CheckSession`].
    pub fn check_session(key: impl Into<String>, session: impl Into<String>) -> Self {
        Self::CheckSession {
            key: key.into(),
            session: session.into(),
        }
    }

    /// A [`TxnOp::CheckNotExists`].
    pub fn check_not_exists(key: impl Into<String>) -> Self {
        Self::CheckNotExists { key: key.into() }
    }

    /// A [`TxnOp::Lock`].
    pub fn lock(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        session: impl Into<String>,
    ) -> Self {
        Self::Lock {
            key: key.into(),
            value: value.into(),
            session: session.into(),
        }
    }

    /// A [`TxnOp::Unlock`].
    pub fn unlock(
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        session: impl Into<String>,
    ) -> Self {
        Self::Unlock {
            key: key.into(),
            value: value.into(),
            session: session.into(),
        }
    }

    /// The key the operation is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Set { key, .. }
            | Self::Cas { key, .. }
            | Self::Get { key }
            | Self::GetTree { key }
            | Self::Delete { key }
            | Self::DeleteTree { key }
            | Self::DeleteCas { key, .. }
            | Self::CheckIndex { key, .. }
            | Self::CheckSession { key, .. }
            | Self::CheckNotExists { key }
            | Self::Lock { key, .. }
            | Self::Unlock { key, .. } => key,
        }
    }

    /// The value the operation writes, if any.
    pub fn value(&self) -> Option<&[u8]> {
        match self {
            Self::Set { value, .. }
            | Self::Cas { value, .. }
            | Self::Lock { value, .. }
            | Self::Unlock { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The operation as Consul's JSON has it.
    fn to_wire(&self) -> WireOp<'_> {
        let mut kv = WireKv {
            verb: "",
            key: self.key(),
            value: self.value().map(|v| BASE64.encode(v)),
            flags: None,
            index: None,
            session: None,
        };
        match self {
            Self::Set { flags, .. } => {
                kv.verb = "set";
                kv.flags = *flags;
            }
            Self::Cas { index, flags, .. } => {
                kv.verb = "cas";
                kv.index = Some(*index);
                kv.flags = *flags;
            }
            Self::Get { .. } => kv.verb = "get",
            Self::GetTree { .. } => kv.verb = "get-tree",
            Self::Delete { .. } => kv.verb = "delete",
            Self::DeleteTree { .. } => kv.verb = "delete-tree",
            Self::DeleteCas { index, .. } => {
                kv.verb = "delete-cas";
                kv.index = Some(*index);
            }
            Self::CheckIndex { index, .. } => {
                kv.verb = "check-index";
                kv.index = Some(*index);
            }
            Self::CheckSession { session, .. } => {
                kv.verb = "check-session";
                kv.session = Some(session);
            }
            Self::CheckNotExists { .. } => kv.verb = "check-not-exists",
            Self::Lock { session, .. } => {
                kv.verb = "lock";
                kv.session = Some(session);
            }
            Self::Unlock { session, .. } => {
                kv.verb = "unlock";
                kv.session = Some(session);
            }
        }
        WireOp { kv }
    }
}

#[derive(Debug, Serialize)]
struct WireOp<'a> {
    #[serde(rename = "KV")]
    kv: WireKv<'a>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct WireKv<'a> {
    verb: &'static str,
    key: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireAnswer {
    #[serde(default)]
    results: Option<Vec<WireResult>>,
    #[serde(default)]
    errors: Option<Vec<WireError>>,
}

#[derive(Debug, Deserialize)]
struct WireResult {
    #[serde(rename = "KV", default)]
    kv: Option<RawKvPair>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireError {
    op_index: usize,
    what: String,
}

/// What a committed transaction returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnResults {
    /// One entry per KV result, in operation order: the entry read by a get,
    /// or the written entry's metadata (without its value) for a write. Checks
    /// and deletes return nothing.
    pub results: Vec<KvPair>,
}

impl Client {
    /// Applies `ops` atomically. On a failed condition Consul rolls everything
    /// back and this returns [`Error::TxnRolledBack`] listing the failed
    /// operations. Transactions over Consul's limits are refused before
    /// sending ([`Error::TxnTooManyOps`], [`Error::ValueTooLarge`],
    /// [`Error::TxnTooLarge`]): the caller splits them into batches.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<TxnResults> {
        let body = self.encode_txn(ops)?;
        let url = self.url(&["txn"], None);
        let answer = self
            .call(Method::PUT, url, Scope::Cluster)
            .body(body)
            .send_raw()
            .await?;
        let status = answer.status();
        if status != StatusCode::OK && status != StatusCode::CONFLICT {
            return Err(answer.into_status_error().await);
        }
        let path = answer.path().to_owned();
        let wire: WireAnswer = answer.json().await?;
        let errors = wire.errors.unwrap_or_default();
        if status == StatusCode::CONFLICT || !errors.is_empty() {
            return Err(Error::TxnRolledBack(
                errors
                    .into_iter()
                    .map(|e| TxnOpError {
                        op_index: e.op_index,
                        what: e.what,
                    })
                    .collect(),
            ));
        }
        let results = wire
            .results
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.kv)
            .map(|raw| raw.decode(&path))
            .collect::<Result<Vec<_>>>()?;
        Ok(TxnResults { results })
    }

    /// Checks `ops` against the limits and encodes the request body.
    fn encode_txn(&self, ops: &[TxnOp]) -> Result<Vec<u8>> {
        let limits = self.config().limits;
        if ops.is_empty() {
            return Err(Error::InvalidArgument(
                "a transaction needs at least one operation".into(),
            ));
        }
        if ops.len() > limits.max_txn_ops {
            return Err(Error::TxnTooManyOps {
                ops: ops.len(),
                max: limits.max_txn_ops,
            });
        }
        for op in ops {
            if let Some(value) = op.value()
                && value.len() > limits.max_value_size
            {
                return Err(Error::ValueTooLarge {
                    key: op.key().to_owned(),
                    size: value.len(),
                    max: limits.max_value_size,
                });
            }
        }
        let wire: Vec<WireOp<'_>> = ops.iter().map(TxnOp::to_wire).collect();
        let body = serde_json::to_vec(&wire)
            .map_err(|e| Error::InvalidArgument(format!("transaction not encodable: {e}")))?;
        if body.len() > limits.max_txn_request_bytes {
            return Err(Error::TxnTooLarge {
                bytes: body.len(),
                max: limits.max_txn_request_bytes,
            });
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::from_address("http://127.0.0.1:1").unwrap()
    }

    #[test]
    fn encodes_verbs_as_consul_expects() {
        let body = client()
            .encode_txn(&[
                TxnOp::cas("a", b"\xff".to_vec(), 0),
                TxnOp::check_session("b", "s1"),
                TxnOp::check_not_exists("c"),
            ])
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"KV": {"Verb": "cas", "Key": "a", "Value": "/w==", "Index": 0}},
                {"KV": {"Verb": "check-session", "Key": "b", "Session": "s1"}},
                {"KV": {"Verb": "check-not-exists", "Key": "c"}},
            ])
        );
    }

    #[test]
    fn refuses_what_consul_would_refuse() {
        let c = client();
        let ops: Vec<_> = (0..65).map(|i| TxnOp::delete(format!("k{i}"))).collect();
        assert!(matches!(
            c.encode_txn(&ops),
            Err(Error::TxnTooManyOps { ops: 65, max: 64 })
        ));
        assert!(c.encode_txn(&ops[..64]).is_ok());
        assert!(matches!(c.encode_txn(&[]), Err(Error::InvalidArgument(_))));
        let big = vec![0u8; 512 * 1024 + 1];
        assert!(matches!(
            c.encode_txn(&[TxnOp::set("k", big)]),
            Err(Error::ValueTooLarge { .. })
        ));
        // Each value fits, but base64 makes the body too large.
        let ops: Vec<_> = (0..2)
            .map(|i| TxnOp::set(format!("k{i}"), vec![0u8; 300 * 1024]))
            .collect();
        assert!(matches!(c.encode_txn(&ops), Err(Error::TxnTooLarge { .. })));
    }
}
