//! The Consul backend against a real Consul agent (`test_agent!`; DESIGN.md
//! §8: tests run against a real Consul, whose indexes and sessions the fencing rests on):
//! the persistence suite, then what only this backend has to get right:
//! fencing, races between writers, two-phase saves cut at each phase, lost
//! answers; and the pure parts (value layout, batch packing) alone.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ranger_consul::test_agent::TestAgent;
use ranger_consul::{Client, PutOptions, QueryOptions, SessionRequest};
use ranger_proto::{Key, RangeId, RangeState};

use super::layout::{
    CommitId, CountersValue, RecordSlot, counters_value, parse_counters, parse_record,
    record_value, split_value,
};
use super::plan::{BatchLimits, PlannedOp, pack};
use super::*;
use crate::keyspace::{ChangeSet, Counters, Keyspace, RECORD_VERSION, RangeRecord};
use crate::testing::persistence::Harness;

const LEADER_KEY: &str = "ranger/leader";

/// Takes the leader lock with a new session, as an elected controller would.
async fn lead(client: &Client) -> Fence {
    let session = client
        .session_create(&SessionRequest {
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .unwrap();
    assert!(
        client
            .kv_put(LEADER_KEY, b"controller", &PutOptions::acquire(&session))
            .await
            .unwrap()
    );
    Fence {
        leader_key: LEADER_KEY.into(),
        session_id: session,
    }
}

impl ConsulPersister {
    /// Another persister on the same store, as a restarted controller has.
    fn reopened(&self) -> Self {
        ConsulPersister::new(
            self.inner.client.clone(),
            self.prefix(),
            self.fence().cloned(),
        )
        .unwrap()
    }

    /// Every key under the prefix with its index and value.
    async fn dump(&self) -> Vec<(String, u64, Vec<u8>)> {
        self.inner
            .client
            .kv_list(self.prefix(), QueryOptions::default())
            .await
            .unwrap()
            .value
            .into_iter()
            .map(|p| (p.key, p.modify_index, p.value))
            .collect()
    }

    /// Asserts that the store holds only settled records and the counters.
    async fn assert_tidy(&self) {
        for (key, _, value) in self.dump().await {
            if key.ends_with("counters") {
                continue;
            }
            assert!(key.contains("/ranges/"), "leftover key {key}");
            assert!(value.starts_with(b"v1\n"), "unsettled value at {key}");
        }
    }

    async fn put(&self, key: &str, value: &[u8]) {
        assert!(
            self.inner
                .client
                .kv_put(key, value, &PutOptions::default())
                .await
                .unwrap()
        );
    }
}

impl Harness for ConsulPersister {
    fn fail_next_save(&self) {
        // Three records in three transactions, so that some are staged when
        // the save stops.
        let faults = self.faults();
        faults.arm(FaultPoint::Batching, Fault::OneRecordPerTransaction);
        faults.arm(FaultPoint::BeforeCommit, Fault::Stop);
    }

    fn records_written(&self) -> u64 {
        ConsulPersister::records_written(self)
    }

    async fn put_raw(&self, id: u64, bytes: &[u8]) {
        let key = self.inner.record_key(RecordSlot::Range(id));
        self.put(&key, &record_value(None, bytes)).await;
    }

    async fn reopen(self) -> Self {
        let reopened = self.reopened();
        reopened
            .inner
            .records_written
            .store(self.records_written(), Ordering::Relaxed);
        reopened
    }
}

/// A fenced persister on its own agent, for the conformance suite.
async fn fresh() -> (ConsulPersister, TestAgent) {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let fence = lead(&client).await;
    let persister = ConsulPersister::new(client, DEFAULT_PREFIX, Some(fence)).unwrap();
    (persister, agent)
}

crate::persistence_suite!(fresh);

async fn start(fenced: bool) -> (TestAgent, ConsulPersister) {
    let agent = ranger_consul::test_agent!();
    let client = agent.client();
    let fence = if fenced {
        Some(lead(&client).await)
    } else {
        None
    };
    let persister = ConsulPersister::new(client, DEFAULT_PREFIX, fence).unwrap();
    (agent, persister)
}

/// A change set creating `n` ranges that tile the keyspace.
fn tiling(n: u64) -> ChangeSet {
    let key = |i: u64| Key::from(format!("k{i:08}"));
    ChangeSet {
        counters: Counters {
            next_range_id: n + 1,
            next_placement_id: 1,
            term: 0,
        },
        upserts: (1..=n)
            .map(|i| RangeRecord {
                v: RECORD_VERSION,
                id: RangeId::new(i).unwrap(),
                start: if i == 1 { Key::empty() } else { key(i) },
                end: if i == n { Key::empty() } else { key(i + 1) },
                state: RangeState::Active,
                parents: vec![],
                children: vec![],
                ever_activated: false,
                placements: vec![],
                history: Default::default(),
            })
            .collect(),
    }
}

/// A new version of every record of `changes`.
fn touched(changes: &ChangeSet) -> ChangeSet {
    let mut changes = changes.clone();
    for record in &mut changes.upserts {
        record.ever_activated = !record.ever_activated;
    }
    changes.counters.next_placement_id += 1;
    changes
}

async fn loaded(p: &ConsulPersister) -> Keyspace {
    let (counters, records) = p.load().await.unwrap().expect("a keyspace is stored");
    Keyspace::from_records(counters, records).unwrap()
}

/// Splits range `id` at `at` and finishes the split: a change of three
/// records, one of them a new version.
fn split(ks: &mut Keyspace, id: u64, at: &str) -> ChangeSet {
    let id = RangeId::new(id).unwrap();
    ks.split(id, at.into()).unwrap();
    ks.finish_subsume(&[id]).unwrap();
    ks.take_changes()
}

#[tokio::test]
async fn a_second_writer_makes_the_first_conflict_and_write_nothing() {
    let (_agent, a) = start(false).await;
    let mut ks = Keyspace::new();
    a.save(&split(&mut ks, 1, "m")).await.unwrap();

    let b = a.reopened();
    let mut kb = loaded(&b).await;
    b.save(&split(&mut kb, 2, "c")).await.unwrap();
    let stored = b.dump().await;

    // One transaction's worth.
    let err = a.save(&split(&mut ks, 3, "t")).await.unwrap_err();
    assert!(matches!(&err, PersistError::Conflict { .. }), "{err}");
    assert!(!err.is_retryable());
    // Several transactions' worth: stopped at the first.
    let err = a.save(&tiling(300)).await.unwrap_err();
    assert!(matches!(&err, PersistError::Conflict { .. }), "{err}");
    assert_eq!(a.dump().await, stored, "the overtaken writer wrote nothing");
    assert_eq!(loaded(&b).await.to_records(), kb.to_records());
}

#[tokio::test]
async fn a_deposed_leader_is_fenced_and_writes_nothing() {
    let (agent, p) = start(true).await;
    let client = agent.client();
    let mut ks = Keyspace::new();
    p.save(&ks.take_changes()).await.unwrap();
    let stored = p.dump().await;

    // Its session ends: the lock is released.
    let fence = p.fence().unwrap().clone();
    client.session_destroy(&fence.session_id).await.unwrap();
    let err = p.save(&split(&mut ks, 1, "m")).await.unwrap_err();
    assert!(matches!(&err, PersistError::Fenced { .. }), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(p.dump().await, stored);

    // Another controller's session holds the lock now.
    let successor = lead(&client).await;
    let err = p.save(&tiling(300)).await.unwrap_err();
    assert!(matches!(&err, PersistError::Fenced { .. }), "{err}");
    assert_eq!(p.dump().await, stored);

    // The successor loads and writes.
    let next = ConsulPersister::new(client, p.prefix(), Some(successor)).unwrap();
    let mut kn = loaded(&next).await;
    next.save(&split(&mut kn, 1, "m")).await.unwrap();
    assert_eq!(loaded(&next.reopened()).await.to_records(), kn.to_records());
}

#[tokio::test]
async fn a_change_set_of_more_than_64_records_round_trips() {
    let (_agent, p) = start(true).await;
    let created = tiling(300);
    p.save(&created).await.unwrap();
    let (counters, records) = p.load().await.unwrap().unwrap();
    assert_eq!(
        (counters, records),
        (created.counters, created.upserts.clone())
    );
    p.assert_tidy().await;

    // New versions of existing ranges go through pending/.
    let updated = touched(&created);
    p.save(&updated).await.unwrap();
    p.assert_tidy().await;
    let (counters, records) = p.reopened().load().await.unwrap().unwrap();
    assert_eq!(
        (counters, records),
        (updated.counters, updated.upserts.clone())
    );
    assert_eq!(p.records_written(), 600);
}

#[tokio::test]
async fn a_save_interrupted_while_staging_leaves_the_previous_state() {
    let (_agent, p) = start(true).await;
    let mut ks = Keyspace::new();
    p.save(&split(&mut ks, 1, "m")).await.unwrap();
    let before = ks.to_records();

    p.fail_next_save();
    let mut lost = ks.clone();
    let err = p.save(&split(&mut lost, 3, "t")).await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    // A restarted controller sees the state before the change and cleans up
    // when it saves.
    let q = p.reopened();
    let mut kq = loaded(&q).await;
    assert_eq!(kq.to_records(), before);
    q.save(&split(&mut kq, 2, "c")).await.unwrap();
    q.assert_tidy().await;
    assert_eq!(loaded(&q.reopened()).await.to_records(), kq.to_records());
}

#[tokio::test]
async fn a_crash_between_commit_and_settling_keeps_the_change() {
    let (_agent, p) = start(true).await;
    let mut ks = Keyspace::new();
    p.save(&split(&mut ks, 1, "m")).await.unwrap();

    p.faults()
        .arm(FaultPoint::Batching, Fault::OneRecordPerTransaction);
    p.faults().arm(FaultPoint::BeforeSettle, Fault::Stop);
    let changes = split(&mut ks, 3, "t");
    p.save(&changes).await.unwrap_err();
    assert!(
        p.dump()
            .await
            .iter()
            .any(|(key, _, _)| key.contains("/pending/")),
        "range 3's new version is still pending"
    );

    let q = p.reopened();
    let mut kq = loaded(&q).await;
    assert_eq!(kq.to_records(), ks.to_records(), "the change was committed");
    q.save(&split(&mut kq, 2, "c")).await.unwrap();
    q.assert_tidy().await;
    assert_eq!(loaded(&q.reopened()).await.to_records(), kq.to_records());
}

#[tokio::test]
async fn a_lost_answer_is_resolved_before_the_next_write() {
    for how in [
        Fault::LoseAnswerAfterApplying,
        Fault::LoseAnswerBeforeSending,
    ] {
        let (_agent, p) = start(true).await;
        let mut ks = Keyspace::new();
        p.save(&ks.take_changes()).await.unwrap();
        for changes in [split(&mut ks, 1, "m"), tiling(100)] {
            p.faults().arm(FaultPoint::Send, how);
            let err = p.save(&changes).await.unwrap_err();
            assert!(err.is_retryable(), "{how:?}: {err}");
            assert_eq!(p.inner.state.lock().await.in_doubt.len(), 1);
            // Retried as the controller would: the same records again.
            p.save(&changes).await.unwrap();
            assert!(p.inner.state.lock().await.in_doubt.is_empty());
            if changes.upserts.len() == 100 {
                let (counters, records) = p.reopened().load().await.unwrap().unwrap();
                assert_eq!((counters, records), (changes.counters, changes.upserts));
            } else {
                assert_eq!(loaded(&p.reopened()).await.to_records(), ks.to_records());
            }
        }
        p.assert_tidy().await;
    }
}

#[tokio::test]
async fn a_persister_that_never_loaded_does_not_overwrite_a_store() {
    let (_agent, p) = start(false).await;
    p.save(&Keyspace::new().take_changes()).await.unwrap();
    let stored = p.dump().await;
    let err = p
        .reopened()
        .save(&Keyspace::new().take_changes())
        .await
        .unwrap_err();
    assert!(matches!(&err, PersistError::Conflict { .. }), "{err}");
    assert_eq!(p.dump().await, stored);
}

#[tokio::test]
async fn a_record_too_large_for_consul_is_refused_before_writing() {
    // Nothing listens there: the refusal comes before any request.
    let client = Client::from_address("http://127.0.0.1:1").unwrap();
    let p = ConsulPersister::new(client, DEFAULT_PREFIX, None).unwrap();
    let mut changes = tiling(2);
    changes.upserts[1].start = Key::from("k".repeat(600 * 1024));
    let err = p.save(&changes).await.unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    assert!(err.to_string().contains("range 2"), "{err}");
}

#[tokio::test]
async fn corrupt_values_are_named_by_their_key() {
    let (agent, p) = start(false).await;
    let mut ks = Keyspace::new();
    p.save(&split(&mut ks, 1, "m")).await.unwrap();
    let range2 = format!("{DEFAULT_PREFIX}ranges/{:020}", 2);
    let counters = format!("{DEFAULT_PREFIX}counters");
    let corrupt = |err: PersistError| match err {
        PersistError::Corrupt { key, detail } => (key, detail),
        other => panic!("expected Corrupt, got {other}"),
    };
    let good = p.dump().await;
    let restore = || async {
        for (key, _, value) in &good {
            p.put(key, value).await;
        }
    };

    p.put(&range2, b"v2\n{}").await;
    let (key, detail) = corrupt(p.load().await.unwrap_err());
    assert_eq!(key, range2);
    assert!(detail.contains("version 2"), "{detail}");

    p.put(&range2, b"no header").await;
    assert_eq!(corrupt(p.load().await.unwrap_err()).0, range2);

    restore().await;
    p.put(&counters, b"v1 commit=zz write=00\n{}").await;
    assert_eq!(corrupt(p.load().await.unwrap_err()).0, counters);

    restore().await;
    let stray = format!("{DEFAULT_PREFIX}stray");
    p.put(&stray, b"x").await;
    assert_eq!(corrupt(p.load().await.unwrap_err()).0, stray);

    // A settled record without counters: part of a keyspace is missing.
    let q = ConsulPersister::new(agent.client(), "other/", None).unwrap();
    let record = ks.to_records()[0].encode().unwrap();
    q.put(
        "other/ranges/00000000000000000001",
        &record_value(None, &record),
    )
    .await;
    let (key, detail) = corrupt(q.load().await.unwrap_err());
    assert_eq!(key, "range 1");
    assert!(detail.contains("other/counters"), "{detail}");
}

#[tokio::test]
async fn consul_down_is_a_retryable_backend_error() {
    let (agent, p) = start(false).await;
    let mut ks = Keyspace::new();
    p.save(&ks.take_changes()).await.unwrap();
    drop(agent);
    let err = p.save(&split(&mut ks, 1, "m")).await.unwrap_err();
    assert!(matches!(&err, PersistError::Backend { .. }), "{err}");
    assert!(err.is_retryable());
    let err = p.load().await.unwrap_err();
    assert!(matches!(&err, PersistError::Backend { .. }), "{err}");
}

#[test]
fn values_are_binary_safe_and_versioned() {
    let payload = b"\xff\x00\nnot json\n".to_vec();
    let commit = CommitId(0xdead_beef);
    for c in [None, Some(commit)] {
        let value = record_value(c, &payload);
        assert_eq!(parse_record(&value).unwrap(), (c, payload.as_slice()));
    }
    assert!(
        parse_record(b"v7\n{}")
            .unwrap_err()
            .contains("layout version 7")
    );
    assert!(parse_record(b"{}").is_err());
    assert!(parse_record(b"v1 commit=12\n{}").is_err());
    assert!(parse_record(b"v1 other=0000000000000001\n{}").is_err());

    let counters = Counters {
        next_range_id: 7,
        next_placement_id: 9,
        term: 4,
    };
    for value in [
        CountersValue {
            commit: Some(commit),
            write: 3,
            counters: Some(counters),
        },
        CountersValue {
            commit: None,
            write: u64::MAX,
            counters: None,
        },
    ] {
        assert_eq!(parse_counters(&counters_value(&value)).unwrap(), value);
    }
    // The hand-written JSON is serde's.
    let text = counters_value(&CountersValue {
        commit: Some(commit),
        write: 0,
        counters: Some(counters),
    });
    let (_, json) = split_value(&text).unwrap();
    assert_eq!(json, serde_json::to_vec(&counters).unwrap().as_slice());
}

#[test]
fn prefixes_are_checked_and_completed() {
    let client = Client::from_address("http://127.0.0.1:1").unwrap();
    let p = ConsulPersister::new(client.clone(), "a/b", None).unwrap();
    assert_eq!(p.prefix(), "a/b/");
    assert!(ConsulPersister::new(client.clone(), "", None).is_err());
    assert!(ConsulPersister::new(client, "/a/", None).is_err());
}

#[test]
fn batches_respect_both_limits() {
    let op = |id| PlannedOp::Delete {
        slot: RecordSlot::Range(id),
        expect: 1,
    };
    let groups = |sizes: &[usize]| {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| vec![(op(i as u64), *size)])
            .collect::<Vec<_>>()
    };
    let limits = BatchLimits { ops: 2, bytes: 100 };
    let lens = |batches: Vec<Vec<PlannedOp>>| batches.iter().map(Vec::len).collect::<Vec<_>>();
    assert_eq!(lens(pack(groups(&[10, 10, 10, 10, 10]), limits)), [2, 2, 1]);
    assert_eq!(lens(pack(groups(&[60, 60, 30, 200]), limits)), [1, 2, 1]);
    // A group is never split.
    let pair = vec![(op(1), 10), (op(1), 10), (op(1), 10)];
    assert_eq!(lens(pack(vec![pair], limits)), [3]);
}
