//! A log of every client write this node acknowledged, for fault drills: with
//! one per node, a test can prove from outside that no key was accepted by two
//! nodes at once while the network between them and the controller was cut
//! (issue 12, scenario 7; DESIGN.md §4 "one writer per key").
//!
//! Each line is one JSON [`Ack`]: the key, the range, when the node decided it
//! may write (`accepted_us`, just after the rangelet said the range is
//! writable) and when the write was durable and about to be acknowledged
//! (`acked_us`), in microseconds of the host's wall clock, so that the logs of
//! nodes on one machine can be compared.
//!
//! Off unless `kv-node --ack-log PATH` asks for it: a line per write is a cost
//! a production node does not pay.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub key: String,
    pub range: u64,
    /// When the node found the range writable and went ahead.
    pub accepted_us: u64,
    /// When the write was durable, just before the client was answered.
    pub acked_us: u64,
}

/// Microseconds since the Unix epoch on this host's clock.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The open log of one node.
#[derive(Debug)]
pub struct AckLog {
    file: Mutex<BufWriter<File>>,
}

impl AckLog {
    /// Opens the log at `path` for appending (creating it): a node restarted
    /// on the same log adds to what it acknowledged before.
    pub fn create(path: &Path) -> std::io::Result<AckLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AckLog {
            file: Mutex::new(BufWriter::new(file)),
        })
    }

    /// Appends one acknowledged write and flushes it, so that a node killed
    /// with SIGKILL leaves every write it acknowledged in the log. A write the
    /// log cannot take is logged loudly rather than failed: the drill's count
    /// of acknowledged writes then disagrees with the client's and says so.
    pub fn record(&self, ack: &Ack) {
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = serde_json::to_writer(&mut *file, ack)
            .map_err(std::io::Error::other)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.flush());
        if let Err(e) = written {
            tracing::error!(key = %ack.key, error = %e, "could not log an acknowledged write");
        }
    }

    /// Reads a log back (a line cut short by a kill is skipped).
    pub fn read(path: &Path) -> std::io::Result<Vec<Ack>> {
        let mut acks = Vec::new();
        for line in BufReader::new(File::open(path)?).lines() {
            if let Ok(ack) = serde_json::from_str::<Ack>(&line?) {
                acks.push(ack);
            }
        }
        Ok(acks)
    }
}

/// Two nodes that accepted the same key at once, or one that accepted it again
/// after another had taken it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwoWriters {
    pub key: String,
    /// The node that had written the key, and its last acknowledgement then.
    pub earlier: (String, u64),
    /// The other node, and when it accepted its write.
    pub later: (String, u64),
}

/// Checks the logs of several nodes (name, acks) for one writer per key: for
/// every key, ordered by acceptance, a node's write must be accepted after the
/// last acknowledgement of every other node's earlier writes (no overlap), and
/// once another node has written a key, the first may not write it again (no
/// A→B→A: fault drills do not move ranges back while they check).
pub fn check_one_writer_per_key(logs: &[(String, Vec<Ack>)]) -> Result<(), Vec<TwoWriters>> {
    let mut by_key: HashMap<&str, Vec<(&str, &Ack)>> = HashMap::new();
    for (node, acks) in logs {
        for ack in acks {
            by_key
                .entry(ack.key.as_str())
                .or_default()
                .push((node.as_str(), ack));
        }
    }
    let mut found = Vec::new();
    for (key, mut acks) in by_key {
        acks.sort_by_key(|(_, a)| (a.accepted_us, a.acked_us));
        // Per node: its latest acknowledgement so far; and the nodes that
        // handed the key on (wrote it before another node did).
        let mut last_acked: HashMap<&str, u64> = HashMap::new();
        let mut handed_on: HashSet<&str> = HashSet::new();
        let mut current: Option<&str> = None;
        for (node, ack) in acks {
            let previous = current.filter(|&c| c != node);
            if let Some(previous) = previous
                && handed_on.contains(node)
            {
                found.push(TwoWriters {
                    key: key.to_string(),
                    earlier: (previous.to_string(), last_acked[previous]),
                    later: (node.to_string(), ack.accepted_us),
                });
            }
            for (&other, &acked) in &last_acked {
                if other != node && acked > ack.accepted_us {
                    found.push(TwoWriters {
                        key: key.to_string(),
                        earlier: (other.to_string(), acked),
                        later: (node.to_string(), ack.accepted_us),
                    });
                }
            }
            if let Some(previous) = previous {
                handed_on.insert(previous);
            }
            current = Some(node);
            let latest = last_acked.entry(node).or_insert(0);
            *latest = (*latest).max(ack.acked_us);
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        found.sort_by(|a, b| a.key.cmp(&b.key).then(a.later.1.cmp(&b.later.1)));
        Err(found)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ack(key: &str, accepted_us: u64, acked_us: u64) -> Ack {
        Ack {
            key: key.into(),
            range: 1,
            accepted_us,
            acked_us,
        }
    }

    #[test]
    fn a_key_written_by_one_node_then_another_is_one_writer_at_a_time() {
        let logs = vec![
            ("a".to_string(), vec![ack("k", 10, 12), ack("k", 20, 25)]),
            ("b".to_string(), vec![ack("k", 30, 31), ack("j", 1, 2)]),
        ];
        assert_eq!(check_one_writer_per_key(&logs), Ok(()));
    }

    #[test]
    fn overlapping_writes_of_one_key_by_two_nodes_are_found() {
        let logs = vec![
            ("a".to_string(), vec![ack("k", 10, 40)]),
            ("b".to_string(), vec![ack("k", 30, 31)]),
        ];
        let found = check_one_writer_per_key(&logs).unwrap_err();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].earlier, ("a".to_string(), 40));
        assert_eq!(found[0].later, ("b".to_string(), 30));
    }

    #[test]
    fn a_node_writing_a_key_again_after_another_took_it_over_is_found() {
        let logs = vec![
            ("a".to_string(), vec![ack("k", 10, 11), ack("k", 50, 51)]),
            ("b".to_string(), vec![ack("k", 20, 21)]),
        ];
        let found = check_one_writer_per_key(&logs).unwrap_err();
        assert_eq!(found[0].later, ("a".to_string(), 50));
    }

    #[test]
    fn the_log_keeps_every_record_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acks.jsonl");
        let log = AckLog::create(&path).unwrap();
        log.record(&ack("k1", 1, 2));
        log.record(&ack("k2", 3, 4));
        // A line cut short by a kill is skipped, not an error.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"key\":\"k3\",\"ran")
            .unwrap();
        assert_eq!(
            AckLog::read(&path).unwrap(),
            vec![ack("k1", 1, 2), ack("k2", 3, 4)]
        );
        // Reopened (a restarted node): appends.
        drop(log);
        std::fs::write(&path, b"").unwrap();
        AckLog::create(&path).unwrap().record(&ack("k1", 1, 2));
        AckLog::create(&path).unwrap().record(&ack("k2", 3, 4));
        assert_eq!(
            AckLog::read(&path).unwrap(),
            vec![ack("k1", 1, 2), ack("k2", 3, 4)]
        );
    }
}
