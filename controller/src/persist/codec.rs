//! The byte form of range records, shared by the backends, with the checks that
//! turn bad stored bytes into [`PersistError::Corrupt`] naming the key.

use super::PersistError;
use crate::keyspace::{ChangeSet, RangeRecord};

/// The key a range's record is stored under, as an operator would look for it.
pub(super) fn record_key(id: u64) -> String {
    format!("range {id}")
}

/// Encodes every record of a change set, keyed by range id.
pub(super) fn encode_all(changes: &ChangeSet) -> Result<Vec<(u64, Vec<u8>)>, PersistError> {
    changes
        .upserts
        .iter()
        .map(|record| {
            let id = record.id.get();
            record
                .encode()
                .map(|bytes| (id, bytes))
                .map_err(|e| PersistError::backend(format!("encoding {}", record_key(id)), e))
        })
        .collect()
}

/// Decodes the record stored under range id `key`, checking that it is the
/// record of that range.
pub(super) fn decode(key: u64, bytes: &[u8]) -> Result<RangeRecord, PersistError> {
    let record = RangeRecord::decode(bytes).map_err(|e| PersistError::Corrupt {
        key: record_key(key),
        detail: e.to_string(),
    })?;
    if record.id.get() != key {
        return Err(PersistError::Corrupt {
            key: record_key(key),
            detail: format!("holds the record of range {}", record.id),
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_names_the_key() {
        let err = decode(5, b"{").unwrap_err();
        assert!(
            matches!(&err, PersistError::Corrupt { key, .. } if key == "range 5"),
            "{err}"
        );
        assert!(!err.is_retryable());
    }
}
