//! Consul's key/value store: reads (blocking if asked), writes with
//! compare-and-set and lock sessions, deletes. Values are bytes: Consul stores
//! any byte string, and Ranger's values need not be UTF-8.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::client::{Client, Scope};
use crate::error::{Error, Result};
use crate::query::{Indexed, QueryOptions};

/// One key with its value and Consul's bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvPair {
    /// The key.
    pub key: String,
    /// The value, decoded from Consul's base64 (empty if the key has none).
    pub value: Vec<u8>,
    /// Opaque flags stored with the value.
    pub flags: u64,
    /// Raft index of the key's creation.
    pub create_index: u64,
    /// Raft index of the key's last change: the `cas` to pass to change it only
    /// if nobody else did meanwhile.
    pub modify_index: u64,
    /// How often a lock on the key was acquired.
    pub lock_index: u64,
    /// The session holding the key's lock, if any.
    pub session: Option<String>,
}

/// A KV entry as Consul's JSON has it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct RawKvPair {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    create_index: u64,
    #[serde(default)]
    modify_index: u64,
    #[serde(default)]
    lock_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl RawKvPair {
    /// Decodes the base64 value; `path` names the request in errors.
    pub(crate) fn decode(self, path: &str) -> Result<KvPair> {
        let value = match self.value {
            Some(v) if !v.is_empty() => BASE64.decode(v.as_bytes()).map_err(|e| Error::Decode {
                path: path.to_owned(),
                reason: format!("value of key {:?} is not base64: {e}", self.key),
            })?,
            _ => Vec::new(),
        };
        Ok(KvPair {
            key: self.key,
            value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.filter(|s| !s.is_empty()),
        })
    }
}

/// Conditions and lock actions of a put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Write only if the key's `ModifyIndex` is this; 0 means "only if the key
    /// does not exist".
    pub cas: Option<u64>,
    /// Write only if this session gets (or already holds) the key's lock.
    pub acquire: Option<String>,
    /// Write and release the key's lock, only if this session holds it.
    pub release: Option<String>,
    /// Opaque flags to store with the value.
    pub flags: Option<u64>,
}

impl PutOptions {
    /// A put that succeeds only if the key's `ModifyIndex` is `index` (0: only
    /// if the key is absent).
    pub fn cas(index: u64) -> Self {
        Self {
            cas: Some(index),
            ..Self::default()
        }
    }

    /// A put that takes the key's lock for `session`.
    pub fn acquire(session: impl Into<String>) -> Self {
        Self {
            acquire: Some(session.into()),
            ..Self::default()
        }
    }

    /// A put that releases the key's lock held by `session`.
    pub fn release(session: impl Into<String>) -> Self {
        Self {
            release: Some(session.into()),
            ..Self::default()
        }
    }
}

/// Conditions of a delete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Delete only if the key's `ModifyIndex` is this.
    pub cas: Option<u64>,
    /// Delete every key that starts with the given one.
    pub recurse: bool,
}

impl Client {
    /// Reads one key; `None` if it does not exist. Blocks if `opts.index > 0`.
    pub async fn kv_get(&self, key: &str, opts: QueryOptions) -> Result<Indexed<Option<KvPair>>> {
        let url = self.url(&["kv"], Some(key));
        let answer = self.read(url, &opts).send_raw().await?;
        let meta = answer.meta();
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(Indexed { value: None, meta });
        }
        let answer = answer.success().await?;
        let path = answer.path().to_owned();
        let pairs: Vec<RawKvPair> = answer.json().await?;
        let value = match pairs.into_iter().next() {
            Some(raw) => Some(raw.decode(&path)?),
            None => None,
        };
        Ok(Indexed { value, meta })
    }

    /// Reads every key that starts with `prefix`, in key order. Blocks if
    /// `opts.index > 0`.
    pub async fn kv_list(&self, prefix: &str, opts: QueryOptions) -> Result<Indexed<Vec<KvPair>>> {
        let url = self.url(&["kv"], Some(prefix));
        let answer = self
            .read(url, &opts)
            .query(&[("recurse", "true")])
            .send_raw()
            .await?;
        let meta = answer.meta();
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                meta,
            });
        }
        let answer = answer.success().await?;
        let path = answer.path().to_owned();
        let pairs: Vec<RawKvPair> = answer.json().await?;
        let value = pairs
            .into_iter()
            .map(|raw| raw.decode(&path))
            .collect::<Result<Vec<_>>>()?;
        Ok(Indexed { value, meta })
    }

    /// Lists the keys that start with `prefix`, without values. With a
    /// `separator`, keys are cut after its first occurrence past the prefix, so
    /// `("a/", "/")` lists the "directories" under `a/` once each.
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        opts: QueryOptions,
    ) -> Result<Indexed<Vec<String>>> {
        let url = self.url(&["kv"], Some(prefix));
        let mut call = self.read(url, &opts).query(&[("keys", "true")]);
        if let Some(separator) = separator {
            call = call.query(&[("separator", separator)]);
        }
        let answer = call.send_raw().await?;
        let meta = answer.meta();
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                meta,
            });
        }
        let value = answer.success().await?.json().await?;
        Ok(Indexed { value, meta })
    }

    /// Writes `value` at `key`. Returns false when a condition of `opts` was
    /// not met (a CAS mismatch, a lock held by another session).
    pub async fn kv_put(&self, key: &str, value: &[u8], opts: &PutOptions) -> Result<bool> {
        let max = self.config().limits.max_value_size;
        if value.len() > max {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                size: value.len(),
                max,
            });
        }
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(cas) = opts.cas {
            params.push(("cas", cas.to_string()));
        }
        if let Some(session) = &opts.acquire {
            params.push(("acquire", session.clone()));
        }
        if let Some(session) = &opts.release {
            params.push(("release", session.clone()));
        }
        if let Some(flags) = opts.flags {
            params.push(("flags", flags.to_string()));
        }
        let url = self.url(&["kv"], Some(key));
        self.call(Method::PUT, url, Scope::Cluster)
            .query(&params)
            .body(value.to_vec())
            .send()
            .await?
            .json()
            .await
    }

    /// Deletes `key` (or, with `recurse`, every key under it). Returns false
    /// when the `cas` condition was not met.
    pub async fn kv_delete(&self, key: &str, opts: &DeleteOptions) -> Result<bool> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(cas) = opts.cas {
            params.push(("cas", cas.to_string()));
        }
        if opts.recurse {
            params.push(("recurse", "true".into()));
        }
        let url = self.url(&["kv"], Some(key));
        self.call(Method::DELETE, url, Scope::Cluster)
            .query(&params)
            .send()
            .await?
            .json()
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_binary_values_and_empty_sessions() {
        let raw: RawKvPair = serde_json::from_str(
            r#"{"Key":"k","Value":"/wA=","Flags":3,"CreateIndex":5,"ModifyIndex":7,"LockIndex":0,"Session":""}"#,
        )
        .unwrap();
        let pair = raw.decode("/v1/kv/k").unwrap();
        assert_eq!(pair.value, vec![0xff, 0x00]);
        assert_eq!(
            (pair.flags, pair.create_index, pair.modify_index),
            (3, 5, 7)
        );
        assert_eq!(pair.session, None);
    }

    #[test]
    fn a_null_value_is_empty_and_bad_base64_is_an_error() {
        let raw: RawKvPair = serde_json::from_str(r#"{"Key":"k","Value":null}"#).unwrap();
        assert!(raw.decode("p").unwrap().value.is_empty());
        let raw: RawKvPair = serde_json::from_str(r#"{"Key":"k","Value":"!!"}"#).unwrap();
        assert!(matches!(raw.decode("p"), Err(Error::Decode { .. })));
    }
}
