//! What the persister knows of the store, and how `load` learns it. Every
//! write is a compare-and-set on an index remembered here, and a save finishes or
//! cleans up an interrupted one from the tentative values remembered here
//! (module docs of [`consul`](super), *Atomicity*), so this is the backend's
//! whole memory; `load` replaces it from one listing of the prefix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ranger_consul::{KvPair, QueryOptions};

use super::Inner;
use super::layout::{
    CommitId, CountersValue, ParsedKey, RecordSlot, counters_key, parse_counters, parse_key,
    parse_record,
};
use super::plan::{Batch, PlannedOp};
use crate::persist::{Loaded, PersistError, codec};

/// A record key as last seen: its index and, if tentative, its commit and record.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) index: u64,
    pub(super) tentative: Option<Tentative>,
}

#[derive(Clone, Debug)]
pub(super) struct Tentative {
    pub(super) commit: CommitId,
    /// The record's codec bytes, to settle it without reading it back.
    pub(super) payload: Arc<[u8]>,
}

/// What this persister knows of the store: every key's `ModifyIndex`, and the
/// contents it needs to finish or clean up a two-phase save.
#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) counters: Option<(u64, CountersValue)>,
    pub(super) ranges: HashMap<u64, Entry>,
    pub(super) pending: HashMap<u64, Entry>,
    /// Ids whose `ranges/` entry is tentative.
    pub(super) unsettled: BTreeSet<u64>,
    /// Transactions that may or may not have been applied (their answer was
    /// lost); resolved before the next write.
    pub(super) in_doubt: Vec<Batch>,
}

impl State {
    pub(super) fn current_commit(&self) -> Option<CommitId> {
        self.counters.as_ref().and_then(|(_, v)| v.commit)
    }

    pub(super) fn counters_index(&self) -> u64 {
        self.counters.as_ref().map_or(0, |(index, _)| *index)
    }

    pub(super) fn index(&self, slot: RecordSlot) -> u64 {
        let entry = match slot {
            RecordSlot::Range(id) => self.ranges.get(&id),
            RecordSlot::Pending(id) => self.pending.get(&id),
        };
        entry.map_or(0, |e| e.index)
    }

    pub(super) fn has_leftovers(&self) -> bool {
        !self.unsettled.is_empty() || !self.pending.is_empty()
    }

    /// Records the effect of an applied operation whose key now has `index`.
    pub(super) fn apply(&mut self, op: &PlannedOp, index: u64) {
        match op {
            PlannedOp::PutCounters { value, .. } => self.counters = Some((index, value.clone())),
            PlannedOp::PutRecord {
                slot,
                commit,
                payload,
                ..
            } => {
                let entry = Entry {
                    index,
                    tentative: commit.map(|commit| Tentative {
                        commit,
                        payload: Arc::clone(payload),
                    }),
                };
                match *slot {
                    RecordSlot::Range(id) => {
                        if entry.tentative.is_some() {
                            self.unsettled.insert(id);
                        } else {
                            self.unsettled.remove(&id);
                        }
                        self.ranges.insert(id, entry);
                    }
                    RecordSlot::Pending(id) => {
                        self.pending.insert(id, entry);
                    }
                }
            }
            PlannedOp::Delete { slot, .. } => match *slot {
                RecordSlot::Range(id) => {
                    self.unsettled.remove(&id);
                    self.ranges.remove(&id);
                }
                RecordSlot::Pending(id) => {
                    self.pending.remove(&id);
                }
            },
        }
    }
}

impl Inner {
    pub(super) async fn load(&self) -> Result<Option<Loaded>, PersistError> {
        let started = Instant::now();
        let mut state = self.state.lock().await;
        let pairs = self
            .client
            .kv_list(&self.prefix, QueryOptions::default())
            .await
            .map_err(|e| PersistError::backend(format!("listing {}", self.prefix), e))?
            .value;
        let listed = started.elapsed();
        let prefix = self.prefix.clone();
        // Decoding 100k records takes a while: off the async threads.
        let (fresh, loaded) = tokio::task::spawn_blocking(move || decode_listing(&prefix, &pairs))
            .await
            .map_err(|e| PersistError::backend("decoding the keyspace (task failed)", e))??;
        tracing::info!(
            prefix = %self.prefix,
            records = loaded.as_ref().map_or(0, |(_, records)| records.len()),
            leftovers = fresh.unsettled.len() + fresh.pending.len(),
            listed_ms = listed.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "keyspace loaded from Consul"
        );
        *state = fresh;
        Ok(loaded)
    }
}

/// Reads a listing of the prefix: what the persister must remember (every key's
/// index, the leftovers of interrupted saves) and the committed keyspace, if any.
/// The records are decoded on every core: at 100k ranges that is a good part of a
/// restart.
pub(super) fn decode_listing(
    prefix: &str,
    pairs: &[KvPair],
) -> Result<(State, Option<Loaded>), PersistError> {
    let mut state = State::default();
    // (slot, key, commit, payload) of every record key, as listed.
    let mut records: Vec<(RecordSlot, &str, Option<CommitId>, &[u8])> =
        Vec::with_capacity(pairs.len());
    for pair in pairs {
        let corrupt = |detail: String| PersistError::Corrupt {
            key: pair.key.clone(),
            detail,
        };
        match parse_key(prefix, &pair.key, &pair.value)? {
            None => {}
            Some(ParsedKey::Counters) => {
                let value = parse_counters(&pair.value).map_err(corrupt)?;
                state.counters = Some((pair.modify_index, value));
            }
            Some(ParsedKey::Record(slot)) => {
                let (commit, payload) = parse_record(&pair.value).map_err(corrupt)?;
                let entry = Entry {
                    index: pair.modify_index,
                    tentative: commit.map(|commit| Tentative {
                        commit,
                        payload: Arc::from(payload),
                    }),
                };
                match slot {
                    RecordSlot::Range(id) => {
                        if commit.is_some() {
                            state.unsettled.insert(id);
                        }
                        state.ranges.insert(id, entry);
                    }
                    RecordSlot::Pending(id) => {
                        if commit.is_none() {
                            return Err(corrupt("a pending record must name its commit".into()));
                        }
                        state.pending.insert(id, entry);
                    }
                }
                records.push((slot, &pair.key, commit, payload));
            }
        }
    }
    // The committed view: per id, a committed pending value over a settled or
    // committed ranges value.
    let current = state.current_commit();
    let mut chosen: BTreeMap<u64, (&str, &[u8])> = BTreeMap::new();
    for &(slot, key, commit, payload) in &records {
        match (slot, commit) {
            // A committed new version wins over whatever `ranges/` holds.
            (RecordSlot::Pending(id), Some(c)) if Some(c) == current => {
                chosen.insert(id, (key, payload));
            }
            (RecordSlot::Range(id), Some(c)) if Some(c) == current => {
                chosen.entry(id).or_insert((key, payload));
            }
            (RecordSlot::Range(id), None) => {
                // A settled record proves that a commit happened.
                if current.is_none() {
                    return Err(PersistError::Corrupt {
                        key: codec::record_key(id),
                        detail: format!(
                            "record at Consul key {key} is stored but {} names no commit",
                            counters_key(prefix)
                        ),
                    });
                }
                chosen.entry(id).or_insert((key, payload));
            }
            // Staged for a commit that did not happen (yet): not part of the
            // keyspace; the next save deletes it.
            _ => {}
        }
    }
    let Some(counters) = state.counters.as_ref().and_then(|(_, v)| v.counters) else {
        return Ok((state, None));
    };
    let chosen: Vec<(u64, &str, &[u8])> = chosen
        .into_iter()
        .map(|(id, (key, payload))| (id, key, payload))
        .collect();
    let decode = |chunk: &[(u64, &str, &[u8])]| {
        chunk
            .iter()
            .map(|&(id, key, payload)| {
                codec::decode(id, payload).map_err(|e| match e {
                    PersistError::Corrupt { key: name, detail } => PersistError::Corrupt {
                        key: name,
                        detail: format!("{detail} (Consul key {key})"),
                    },
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let threads = codec::decoders_for(chosen.len() as u64, codec::decoder_threads());
    let records = if threads < 2 {
        decode(&chosen)?
    } else {
        let chunk = chosen.len().div_ceil(threads);
        // In id order, so that the error reported is the first range's.
        codec::decode_on_threads(chosen.chunks(chunk).collect(), decode)?
    };
    Ok((state, Some((counters, records))))
}
