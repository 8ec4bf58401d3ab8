//! The key/value layout under the prefix (module docs of [`consul`](super),
//! *Layout*): key names, and the header line and payload of every value. The
//! on-disk format lives here alone, so that it can be read, and versioned, in
//! one place; the rest of the backend deals in [`RecordSlot`]s and
//! [`CountersValue`]s.

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Inner;
use crate::keyspace::Counters;
use crate::persist::PersistError;

/// The layout version written in every value's header; the only one read.
pub(super) const LAYOUT_VERSION: u32 = 1;
/// A header line longer than this is not one of ours.
pub(super) const MAX_HEADER_BYTES: usize = 128;

/// Identifies one commit (and the tentative values staged for it). Random, so
/// that two writers, or two attempts of one, never share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CommitId(pub(super) u64);

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A random u64 without a random-number crate: std's `RandomState` is seeded
/// from the OS once per thread and differs for every instance.
pub(super) fn random_u64() -> u64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    RandomState::new().hash_one((
        CALLS.fetch_add(1, Ordering::Relaxed),
        nanos,
        std::process::id(),
    ))
}

/// Where a range's record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum RecordSlot {
    /// `ranges/<id>`: settled, or tentative for a new range.
    Range(u64),
    /// `pending/<id>`: tentative new version of an existing range.
    Pending(u64),
}

/// What the counters key says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CountersValue {
    /// The current commit; `None` before the first.
    pub(super) commit: Option<CommitId>,
    /// Random per write, so that a write in doubt can be recognised.
    pub(super) write: u64,
    /// `None` exactly when `commit` is.
    pub(super) counters: Option<Counters>,
}

/// Writes a record value: header line, then the codec's bytes.
pub(super) fn record_value(commit: Option<CommitId>, payload: &[u8]) -> Vec<u8> {
    let header = match commit {
        None => format!("v{LAYOUT_VERSION}\n"),
        Some(commit) => format!("v{LAYOUT_VERSION} commit={commit}\n"),
    };
    let mut value = Vec::with_capacity(header.len() + payload.len());
    value.extend_from_slice(header.as_bytes());
    value.extend_from_slice(payload);
    value
}

/// Writes the counters value. The JSON is written by hand (it cannot fail that
/// way); a unit test checks it is what serde reads.
pub(super) fn counters_value(value: &CountersValue) -> Vec<u8> {
    let commit = value
        .commit
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    let mut text = format!(
        "v{LAYOUT_VERSION} commit={commit} write={:016x}\n",
        value.write
    );
    if let Some(c) = value.counters {
        text.push_str(&format!(
            "{{\"next_range_id\":{},\"next_placement_id\":{},\"term\":{}}}",
            c.next_range_id, c.next_placement_id, c.term
        ));
    }
    text.into_bytes()
}

/// The `name=value` fields of a header line, after the version.
pub(super) type HeaderFields<'a> = Vec<(&'a str, &'a str)>;

/// Splits a value into its header fields (after the version) and payload,
/// checking the layout version.
pub(super) fn split_value(value: &[u8]) -> Result<(HeaderFields<'_>, &[u8]), String> {
    let end = value
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or("no header line (expected `v1 ...` and a newline)")?;
    let header = std::str::from_utf8(&value[..end]).map_err(|_| "header line is not text")?;
    let mut words = header.split(' ');
    let version = words
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("header {header:?} does not start with a layout version"))?;
    if version != u64::from(LAYOUT_VERSION) {
        return Err(format!(
            "value layout version {version} is not supported (this build reads version {LAYOUT_VERSION})"
        ));
    }
    let fields = words
        .map(|w| {
            w.split_once('=')
                .ok_or_else(|| format!("header field {w:?} is not name=value"))
        })
        .collect::<Result<_, _>>()?;
    Ok((fields, &value[end + 1..]))
}

pub(super) fn parse_hex(field: &str, text: &str) -> Result<u64, String> {
    if text.len() != 16 {
        return Err(format!("{field}={text:?} is not 16 hex digits"));
    }
    u64::from_str_radix(text, 16).map_err(|_| format!("{field}={text:?} is not 16 hex digits"))
}

/// Reads a record value: its commit if tentative, and the codec's bytes.
pub(super) fn parse_record(value: &[u8]) -> Result<(Option<CommitId>, &[u8]), String> {
    let (fields, payload) = split_value(value)?;
    match fields.as_slice() {
        [] => Ok((None, payload)),
        [("commit", commit)] => Ok((Some(CommitId(parse_hex("commit", commit)?)), payload)),
        other => Err(format!("unexpected header fields {other:?}")),
    }
}

pub(super) fn parse_counters(value: &[u8]) -> Result<CountersValue, String> {
    let (fields, payload) = split_value(value)?;
    let [("commit", commit), ("write", write)] = fields.as_slice() else {
        return Err(format!("unexpected header fields {fields:?}"));
    };
    let write = parse_hex("write", write)?;
    if *commit == "none" {
        if !payload.is_empty() {
            return Err("counters present although no commit is named".into());
        }
        return Ok(CountersValue {
            commit: None,
            write,
            counters: None,
        });
    }
    let commit = CommitId(parse_hex("commit", commit)?);
    let counters: Counters =
        serde_json::from_slice(payload).map_err(|e| format!("malformed counters: {e}"))?;
    Ok(CountersValue {
        commit: Some(commit),
        write,
        counters: Some(counters),
    })
}

/// A key under the prefix, by role.
pub(super) enum ParsedKey {
    Counters,
    Record(RecordSlot),
}

pub(super) fn counters_key(prefix: &str) -> String {
    format!("{prefix}counters")
}

impl Inner {
    pub(super) fn counters_key(&self) -> String {
        counters_key(&self.prefix)
    }

    pub(super) fn record_key(&self, slot: RecordSlot) -> String {
        match slot {
            RecordSlot::Range(id) => format!("{}ranges/{id:020}", self.prefix),
            RecordSlot::Pending(id) => format!("{}pending/{id:020}", self.prefix),
        }
    }
}

/// Which key of ours `key` is: `Ok(None)` for a folder marker (an empty key
/// ending in `/`, as Consul's UI creates).
pub(super) fn parse_key(
    prefix: &str,
    key: &str,
    value: &[u8],
) -> Result<Option<ParsedKey>, PersistError> {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    if (rest.is_empty() || rest.ends_with('/')) && value.is_empty() {
        return Ok(None);
    }
    if rest == "counters" {
        return Ok(Some(ParsedKey::Counters));
    }
    let id = |digits: &str| {
        (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<u64>().ok())
            .flatten()
            .filter(|id| *id > 0)
    };
    let slot = if let Some(digits) = rest.strip_prefix("ranges/") {
        id(digits).map(RecordSlot::Range)
    } else if let Some(digits) = rest.strip_prefix("pending/") {
        id(digits).map(RecordSlot::Pending)
    } else {
        None
    };
    slot.map(|s| Some(ParsedKey::Record(s)))
        .ok_or_else(|| PersistError::Corrupt {
            key: key.to_owned(),
            detail: format!(
                "not a key of the keyspace layout under {prefix} (does something else write there?)"
            ),
        })
}
