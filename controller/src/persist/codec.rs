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

/// Decodes `parts` of a store's records, each on a thread of its own
/// (scoped, so that a part may borrow what the backend read), and joins their
/// records in the parts' order. Decoding is most of a big load's time, and
/// each record decodes on its own. The error is the first part's, so with
/// parts in id order it is the one a single thread would have reported.
pub(super) fn decode_on_threads<P: Send>(
    parts: Vec<P>,
    decode: impl Fn(P) -> Result<Vec<RangeRecord>, PersistError> + Sync,
) -> Result<Vec<RangeRecord>, PersistError> {
    let decode = &decode;
    let decoded: Vec<Result<Vec<RangeRecord>, PersistError>> = std::thread::scope(|scope| {
        let threads: Vec<_> = parts
            .into_iter()
            .map(|part| scope.spawn(move || decode(part)))
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread.join().unwrap_or_else(|_| {
                    Err(PersistError::backend(
                        "decoding the keyspace",
                        "a decoder thread panicked",
                    ))
                })
            })
            .collect()
    });
    let total = decoded
        .iter()
        .map(|part| part.as_ref().map_or(0, Vec::len))
        .sum();
    let mut records = Vec::with_capacity(total);
    for part in decoded {
        records.extend(part?);
    }
    Ok(records)
}

/// How many threads a big load may decode on: one per core, up to 8.
pub(super) fn decoder_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Fewest records a decoding thread is given: below that, starting one costs
/// more than it saves (a few milliseconds of decoding).
#[cfg(not(test))]
const RECORDS_PER_DECODER: u64 = 4096;
/// Small in tests, so that a small store takes the threaded path.
#[cfg(test)]
const RECORDS_PER_DECODER: u64 = 4;

/// How many threads to decode `records` records on, at most `most`: the one
/// rule both backends' loads follow.
pub(super) fn decoders_for(records: u64, most: usize) -> usize {
    let most = most.max(1) as u64;
    (records / RECORDS_PER_DECODER).clamp(1, most) as usize
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
