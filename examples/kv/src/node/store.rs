//! The node's RocksDB: data keys stored as they are in the default column family,
//! and the node's own bookkeeping (range states, transfers awaiting their delta)
//! in a `ranger` column family, so that both survive a restart together.
//!
//! Acknowledged is durable: every write returns only once it is in the synced
//! WAL (RocksDB groups concurrent synced writers into one fsync), so a machine
//! crash loses no acknowledged write. Transfer chunks are the one exception, and
//! only until [`Store::sync_wal`], which a copy calls before it reports success.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use ranger_node_sdk::{StateStore, StateStoreError, StoredRange};
use ranger_proto::RangeId;
use rocksdb::{
    ColumnFamilyDescriptor, DB, IngestExternalFileOptions, IteratorMode, Options, ReadOptions,
    SstFileWriter, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};

use super::reclaim::Reclaimer;
use super::spans::Span;
use super::writeback::Writeback;

const RANGER_CF: &str = "ranger";
const RANGE_PREFIX: &[u8] = b"range/";
/// The newest controller term this node has seen (8 bytes, big-endian), so that a
/// restarted node still refuses a deposed controller's late commands.
const TERM_KEY: &[u8] = b"controller-term";
const PENDING_PREFIX: &[u8] = b"pending/";
/// Per replicated range: how far this copy follows the replica log (see
/// `node::replica`), written in the same batch as the data it describes.
const REPLICA_PREFIX: &[u8] = b"replica/";

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {context}: {source}")]
    Rocks {
        context: &'static str,
        #[source]
        source: rocksdb::Error,
    },
    #[error("the `{0}` column family is missing")]
    MissingColumnFamily(&'static str),
    #[error("corrupt bookkeeping record under {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("a storage task failed: {reason}")]
    Task { reason: String },
    #[error("staging a copy's table files under {dir}: {source}")]
    Staging {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up the reclaim directory {dir}: {source}")]
    Reclaim {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| StoreError::Rocks { context, source }
}

/// A delta the node still has to fetch from a source when it activates a range:
/// where the snapshot came from and the source's transfer id; or, for a source
/// without Snapshot (a Go reference node), the part to copy whole with `Dump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingTransfer {
    pub source_addr: String,
    /// The source's transfer id (unused with `dump`).
    pub transfer: u64,
    /// A copy of the range itself from a copy that was serving it: if the
    /// range is replicated, this copy joins its replica log at the delta.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// Copy this part with `Dump` at activation, once the source is frozen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpFrom>,
}

/// A part to copy with the reference's `Dump`: the source's range, and the span
/// of it that belongs to the range being prepared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFrom {
    pub source_range: u64,
    pub span: Span,
}

/// A checksum over pairs in order, so a receiver can verify it got exactly what
/// the sender read. Lengths are included so that ("ab","c") and ("a","bc") differ.
#[derive(Debug, Default)]
pub struct PairChecksum {
    hasher: crc32fast::Hasher,
    count: u64,
}

impl PairChecksum {
    pub fn add(&mut self, key: &[u8], value: &[u8], deleted: bool) {
        self.hasher.update(&(key.len() as u64).to_le_bytes());
        self.hasher.update(key);
        self.hasher.update(&[u8::from(deleted)]);
        self.hasher.update(&(value.len() as u64).to_le_bytes());
        self.hasher.update(value);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn value(&self) -> u64 {
        u64::from(self.hasher.clone().finalize())
    }
}

/// A key and its value, as stored.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The space a node's RocksDB takes (see [`Store::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub sst_bytes: u64,
    pub memtable_bytes: u64,
    /// Table files RocksDB deleted that the reclaimer has not freed yet.
    pub reclaiming_bytes: u64,
}

/// One RocksDB per node.
#[derive(Debug)]
pub struct Store {
    db: DB,
    /// Where copies stage the table files they build (see [`TableSink`]):
    /// inside the database's directory, so that ingesting links them instead
    /// of copying them.
    incoming: PathBuf,
    /// Frees the space of the table files a cleared span leaves, gently.
    reclaimer: Reclaimer,
}

/// The directory under the database's in which copies stage table files.
const INCOMING_DIR: &str = "incoming";
/// The directory under the database's through which a cleared span's table
/// files are freed (see [`Reclaimer`]).
const RECLAIM_DIR: &str = "reclaim";

/// Table files a copy builds are rolled over at this size. Small, because each
/// file is synced to disk when it is finished, and while one sync flushes the
/// whole file, the node's WAL syncs (every client write waits for one) queue
/// behind it: with 256 MB files, the slowest client write during a move was
/// p50 25 ms (100 MB range) and 50 ms (1 GB); with 16 MB, 11-13 ms and 17 ms,
/// at the same copy rate (`bench_handoff`, 2026-11-29). Smaller still (2 MB)
/// cost a third of the rate for little more.
const TABLE_FILE_BYTES: u64 = 16 << 20;

/// How far ahead a snapshot's scan reads its table files.
const SNAPSHOT_READAHEAD: usize = 2 << 20;

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Arc<Store>, StoreError> {
        Self::open_with(path, Options::default())
    }

    /// Opens with `options` as the base (tests add statistics).
    fn open_with(path: &Path, mut options: Options) -> Result<Arc<Store>, StoreError> {
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Flushes and compactions write their files back in small steps
        // (RocksDB's own), for the reason `writeback` gives for a copy's.
        options.set_bytes_per_sync(super::writeback::WRITEBACK_STEP_BYTES);
        let cfs = [
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, Options::default()),
            ColumnFamilyDescriptor::new(RANGER_CF, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&options, path, cfs).map_err(rocks("open"))?;
        // Files staged by copies a crash interrupted are never ingested: the
        // copy failed, and the controller retries it from the start.
        let incoming = path.join(INCOMING_DIR);
        let staging = |source| StoreError::Staging {
            dir: incoming.clone(),
            source,
        };
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming).map_err(staging)?;
        }
        std::fs::create_dir_all(&incoming).map_err(staging)?;
        let reclaim = path.join(RECLAIM_DIR);
        let reclaimer =
            Reclaimer::start(reclaim.clone()).map_err(|source| StoreError::Reclaim {
                dir: reclaim,
                source,
            })?;
        Ok(Arc::new(Store {
            db,
            incoming,
            reclaimer,
        }))
    }

    /// Options for the table files a [`TableSink`] writes: the data column
    /// family's, so that ingested files look like the ones it writes itself;
    /// or the same without compression, for data that does not compress.
    pub fn table_options(compressed: bool) -> &'static Options {
        static COMPRESSED: LazyLock<Options> =
            LazyLock::new(|| Store::new_table_options(rocksdb::DBCompressionType::Lz4));
        static PLAIN: LazyLock<Options> =
            LazyLock::new(|| Store::new_table_options(rocksdb::DBCompressionType::None));
        if compressed { &COMPRESSED } else { &PLAIN }
    }

    fn new_table_options(compression: rocksdb::DBCompressionType) -> Options {
        let mut options = Options::default();
        options.set_compression_type(compression);
        // 16 KiB blocks rather than RocksDB's 4: a quarter of the per-block
        // work (compression, checksum, index entry) when a copy writes its
        // tables, which made 100 MB moves 20% faster (`bench_handoff`); a
        // point read in them reads one such block.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_size(16 << 10);
        options.set_block_based_table_factory(&table);
        // Not `bytes_per_sync`: an `SstFileWriter` made through the `rocksdb`
        // crate ignores it (see `writeback`, which does its work instead).
        options
    }

    /// A sink for a copy's pairs (see [`TableSink`]).
    pub fn table_sink(&self) -> Result<TableSink<'_>, StoreError> {
        let dir = tempfile::Builder::new()
            .prefix("copy-")
            .tempdir_in(&self.incoming)
            .map_err(|source| StoreError::Staging {
                dir: self.incoming.clone(),
                source,
            })?;
        Ok(TableSink {
            store: self,
            dir,
            writer: None,
            finishing: None,
            files: Vec::new(),
            compression: Compression::default(),
            writeback: Writeback::start(),
        })
    }

    fn ranger_cf(&self) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db
            .cf_handle(RANGER_CF)
            .ok_or(StoreError::MissingColumnFamily(RANGER_CF))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(rocks("get"))
    }

    /// Writes `key`; returns once the write is in the synced WAL. Blocking.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_opt(key, value, &Self::sync_write())
            .map_err(rocks("put"))
    }

    /// Deletes `key`; returns once the deletion is in the synced WAL. Blocking.
    pub fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.db
            .delete_opt(key, &Self::sync_write())
            .map_err(rocks("delete"))
    }

    /// Writes `batch` atomically; returns once it is in the synced WAL.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.db
            .write_opt(batch, &Self::sync_write())
            .map_err(rocks("write batch"))
    }

    /// Writes `batch` and `range`'s replica record (see `node::replica`)
    /// atomically; returns once both are in the synced WAL. Blocking.
    pub fn write_with_replica_record(
        &self,
        mut batch: WriteBatch,
        range: RangeId,
        record: &[u8],
    ) -> Result<(), StoreError> {
        batch.put_cf(self.ranger_cf()?, Self::key(REPLICA_PREFIX, range), record);
        self.write(batch)
    }

    /// `range`'s replica record, if this copy follows a replica log.
    pub fn replica_record(&self, range: RangeId) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.ranger_cf()?, Self::key(REPLICA_PREFIX, range))
            .map_err(rocks("get replica record"))
    }

    /// Replaces (or, with `None`, removes) `range`'s replica record, synced.
    pub fn set_replica_record(
        &self,
        range: RangeId,
        record: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let key = Self::key(REPLICA_PREFIX, range);
        match record {
            Some(record) => self.put_meta(&key, record),
            None => self.delete_meta(&key),
        }
    }

    /// Writes `batch` atomically without waiting for the WAL sync: for transfer
    /// chunks, whose copy calls [`Store::sync_wal`] before it reports success.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.db.write(batch).map_err(rocks("write batch"))
    }

    /// Syncs the WAL: every write before this call is durable once it returns.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(rocks("sync wal"))
    }

    fn read_options(span: &Span) -> ReadOptions {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(span.start.clone());
        if let Some(end) = &span.end {
            options.set_iterate_upper_bound(end.clone());
        }
        options
    }

    /// Up to `limit` pairs of `span` in key order, and the key to continue from
    /// if the span has more.
    pub fn scan(
        &self,
        span: &Span,
        limit: usize,
    ) -> Result<(Vec<Pair>, Option<Vec<u8>>), StoreError> {
        let mut pairs = Vec::new();
        let iter = self.db.iterator_opt(
            IteratorMode::From(&span.start, rocksdb::Direction::Forward),
            Self::read_options(span),
        );
        for item in iter {
            let (key, value) = item.map_err(rocks("scan"))?;
            if pairs.len() == limit {
                return Ok((pairs, Some(key.to_vec())));
            }
            pairs.push((key.to_vec(), value.to_vec()));
        }
        Ok((pairs, None))
    }

    /// Streams a consistent snapshot of `span` to `emit` in chunks of about
    /// `chunk_bytes`, packed ([`super::packed`]); `emit` returns false to stop
    /// (the receiver went away). Returns the checksum of everything emitted.
    /// Blocking: call it from `spawn_blocking`. `before_snapshot` runs right
    /// before the snapshot is taken (the source starts tracking writes there,
    /// so nothing falls between). Pairs are packed straight from the iterator's
    /// buffers: no allocation per pair.
    pub fn stream_snapshot(
        &self,
        span: &Span,
        chunk_bytes: usize,
        before_snapshot: impl FnOnce(),
        mut emit: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<PairChecksum, StoreError> {
        before_snapshot();
        let snapshot = self.db.snapshot();
        let mut options = Self::read_options(span);
        // A bulk read: it must not push the blocks clients read out of the
        // cache, and it reads ahead in big steps.
        options.fill_cache(false);
        options.set_readahead_size(SNAPSHOT_READAHEAD);
        let mut iter = snapshot.raw_iterator_opt(options);
        iter.seek(&span.start);
        let mut checksum = PairChecksum::default();
        let capacity = chunk_bytes.saturating_add(chunk_bytes / 8);
        let mut chunk = Vec::with_capacity(capacity);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            checksum.add(key, value, false);
            super::packed::pack(&mut chunk, key, value);
            if chunk.len() >= chunk_bytes {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(capacity));
                if !emit(full) {
                    return Ok(checksum);
                }
            }
            iter.next();
        }
        iter.status().map_err(rocks("snapshot scan"))?;
        if !chunk.is_empty() {
            emit(chunk);
        }
        Ok(checksum)
    }

    /// Deletes every key of `span` and compacts it away, freeing the space
    /// (gradually: see [`Reclaimer`]).
    pub fn clear(&self, span: &Span) -> Result<(), StoreError> {
        let end = match &span.end {
            Some(end) => end.clone(),
            None => {
                // DeleteRange needs an end: use the last key, deleted on its own.
                let mut iter = self.db.iterator(IteratorMode::End);
                match iter.next() {
                    Some(item) => {
                        let (last, _) = item.map_err(rocks("find last key"))?;
                        if last.as_ref() < span.start.as_slice() {
                            return Ok(());
                        }
                        self.db
                            .delete_opt(&last, &Self::sync_write())
                            .map_err(rocks("delete last key"))?;
                        last.to_vec()
                    }
                    None => return Ok(()),
                }
            }
        };
        if end.as_slice() > span.start.as_slice() {
            let cf = self
                .db
                .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
                .ok_or(StoreError::MissingColumnFamily("default"))?;
            self.db
                .delete_range_cf_opt(cf, &span.start, &end, &Self::sync_write())
                .map_err(rocks("delete range"))?;
            // Best effort: without the list, RocksDB frees the files itself.
            let doomed = self
                .table_files_within(&span.start, &end)
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "could not list table files to reclaim gently");
                    Vec::new()
                });
            for file in &doomed {
                if let Err(error) = self.reclaimer.keep(file) {
                    // Only slower: RocksDB then frees it in one go.
                    tracing::debug!(file = %file.display(), %error, "could not link a table file for reclaiming");
                }
            }
            self.db.compact_range(Some(&span.start), Some(&end));
            // The compaction kept these (it had nothing to drop from them).
            let kept = if doomed.is_empty() {
                Vec::new()
            } else {
                self.table_files_within(&span.start, &end)
                    .unwrap_or_else(|error| {
                        // Their links go after `GIVE_UP_AFTER` instead.
                        tracing::warn!(%error, "could not list the table files a clear kept");
                        Vec::new()
                    })
            };
            for file in kept {
                if doomed.contains(&file)
                    && let Err(error) = self.reclaimer.release(&file)
                {
                    tracing::debug!(file = %file.display(), %error, "could not unlink a reclaim link");
                }
            }
            self.reclaimer.wake();
        }
        Ok(())
    }

    /// The table files holding keys in `[start, end]`.
    fn table_files_within(&self, start: &[u8], end: &[u8]) -> Result<Vec<PathBuf>, StoreError> {
        let files = self.db.live_files().map_err(rocks("list table files"))?;
        Ok(files
            .into_iter()
            .filter(|file| {
                let first = file.start_key.as_deref().unwrap_or_default();
                let last = file.end_key.as_deref().unwrap_or_default();
                first <= end && last >= start
            })
            .map(|file| self.db.path().join(file.name.trim_start_matches('/')))
            .collect())
    }

    /// Writes the memtables out to SST files (tests and operators: RocksDB's
    /// size estimates then come from the files' indexes).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(rocks("flush"))
    }

    /// How much space the database takes, from RocksDB's own properties summed
    /// over both column families: the SST files (`rocksdb.total-sst-files-size`,
    /// obsolete files still referenced included) and the memtables
    /// (`rocksdb.size-all-mem-tables`, active, immutable and pinned).
    pub fn usage(&self) -> Result<Usage, StoreError> {
        let mut usage = Usage::default();
        for name in [rocksdb::DEFAULT_COLUMN_FAMILY_NAME, RANGER_CF] {
            let cf = self
                .db
                .cf_handle(name)
                .ok_or(StoreError::MissingColumnFamily(name))?;
            let property = |property: &str| {
                self.db
                    .property_int_value_cf(&cf, property)
                    .map_err(rocks("read a property"))
                    .map(Option::unwrap_or_default)
            };
            usage.sst_bytes += property("rocksdb.total-sst-files-size")?;
            usage.memtable_bytes += property("rocksdb.size-all-mem-tables")?;
        }
        usage.reclaiming_bytes =
            self.reclaimer
                .pending_bytes()
                .map_err(|source| StoreError::Reclaim {
                    dir: self.reclaimer.dir().to_owned(),
                    source,
                })?;
        Ok(usage)
    }

    /// Sizes `span` from RocksDB's own estimates rather than by reading it:
    ///
    /// - **bytes**: the span's share of the SST files as RocksDB estimates it
    ///   from its index blocks (`get_approximate_sizes_cf`: file-system bytes,
    ///   so compressed), plus the span's entries in the memtables, which that
    ///   estimate leaves out (the safe API has no "include memtables" flag) and
    ///   which a memtable-only iterator walks (bounded by RocksDB's memtable
    ///   budget, `write_buffer_size` × `max_write_buffer_number`, not by keys).
    ///   A key both flushed and rewritten since counts twice: an estimate.
    /// - **keys**: the memtable entries counted, plus the span's file bytes times
    ///   the column family's keys per file byte (`rocksdb.estimate-num-keys`
    ///   less the memtables' entries, over `rocksdb.live-sst-files-size`). When
    ///   the split-key walk below saw the whole span, its exact count wins.
    /// - **split key by size**: a walk of at most `walk_cap` keys keeping a
    ///   bounded sample; the median sampled key if the walk reached the span's
    ///   end, else the last key walked (the balancer splits off that much and
    ///   splits the rest again later).
    pub fn size(&self, span: &Span, walk_cap: usize) -> Result<Size, StoreError> {
        let cf = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or(StoreError::MissingColumnFamily("default"))?;
        let end = match &span.end {
            Some(end) => Some(end.clone()),
            // An open end: just past the last key, if there is any.
            None => match self.db.iterator(IteratorMode::End).next() {
                Some(item) => {
                    let (last, _) = item.map_err(rocks("find last key"))?;
                    let mut past = last.to_vec();
                    past.push(0);
                    Some(past)
                }
                None => None,
            },
        };
        let file_bytes = match &end {
            Some(end) if end.as_slice() > span.start.as_slice() => self
                .db
                .get_approximate_sizes_cf(&cf, &[rocksdb::Range::new(&span.start, end)])
                .first()
                .copied()
                .unwrap_or(0),
            _ => 0,
        };

        let mut memtable = Self::read_options(span);
        memtable.set_read_tier(rocksdb::ReadTier::Memtable);
        let iter = self.db.iterator_opt(
            IteratorMode::From(&span.start, rocksdb::Direction::Forward),
            memtable,
        );
        let (mut mem_keys, mut mem_bytes) = (0u64, 0u64);
        for item in iter {
            let (key, value) = item.map_err(rocks("walk memtables"))?;
            mem_keys += 1;
            mem_bytes += (key.len() + value.len()) as u64;
        }

        let property = |name: &str| {
            self.db
                .property_int_value_cf(&cf, name)
                .map_err(rocks("read a property"))
                .map(Option::unwrap_or_default)
        };
        let memtable_entries = property("rocksdb.num-entries-active-mem-table")?
            + property("rocksdb.num-entries-imm-mem-tables")?;
        let flushed_keys = property("rocksdb.estimate-num-keys")?.saturating_sub(memtable_entries);
        let sst_bytes = property("rocksdb.live-sst-files-size")?;
        let file_keys = if sst_bytes == 0 {
            0
        } else {
            (file_bytes as f64 * flushed_keys as f64 / sst_bytes as f64).round() as u64
        };

        let walk = self.walk_for_split(span, walk_cap)?;
        Ok(Size {
            keys: walk.exact_keys.unwrap_or(mem_keys + file_keys),
            bytes: file_bytes + mem_bytes,
            split_key: walk.split_key,
        })
    }

    /// Walks at most `cap` keys of `span` for a size split key (see
    /// [`Store::size`]), keeping every `stride`-th key and doubling the stride
    /// when the sample fills: bounded memory, and the middle sample stays near
    /// the median key.
    fn walk_for_split(&self, span: &Span, cap: usize) -> Result<Walk, StoreError> {
        let iter = self.db.iterator_opt(
            IteratorMode::From(&span.start, rocksdb::Direction::Forward),
            Self::read_options(span),
        );
        let mut sample: Vec<Vec<u8>> = Vec::new();
        let mut stride = 1u64;
        let mut walked = 0u64;
        let mut last = None;
        for item in iter {
            let (key, _) = item.map_err(rocks("walk for a split key"))?;
            if walked as usize >= cap {
                return Ok(Walk {
                    exact_keys: None,
                    split_key: last,
                });
            }
            if walked.is_multiple_of(stride) {
                sample.push(key.to_vec());
                if sample.len() >= 1024 {
                    sample = sample.into_iter().step_by(2).collect();
                    stride *= 2;
                }
            }
            walked += 1;
            last = Some(key.to_vec());
        }
        Ok(Walk {
            exact_keys: Some(walked),
            split_key: sample.get(sample.len() / 2).cloned(),
        })
    }

    // ---- bookkeeping ----

    fn sync_write() -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        options
    }

    fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.ranger_cf()?, key, value, &Self::sync_write())
            .map_err(rocks("put bookkeeping"))
    }

    fn delete_meta(&self, key: &[u8]) -> Result<(), StoreError> {
        self.db
            .delete_cf_opt(self.ranger_cf()?, key, &Self::sync_write())
            .map_err(rocks("delete bookkeeping"))
    }

    fn scan_meta(&self, prefix: &[u8]) -> Result<Vec<Pair>, StoreError> {
        let iter = self.db.iterator_cf(
            self.ranger_cf()?,
            IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(rocks("scan bookkeeping"))?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    fn key(prefix: &[u8], range: RangeId) -> Vec<u8> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(&range.get().to_be_bytes());
        key
    }

    /// Deltas still to fetch for `range`.
    pub fn pending(&self, range: RangeId) -> Result<Vec<PendingTransfer>, StoreError> {
        let key = Self::key(PENDING_PREFIX, range);
        match self
            .db
            .get_cf(self.ranger_cf()?, &key)
            .map_err(rocks("get pending"))?
        {
            None => Ok(Vec::new()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                key: format!("pending/{range}"),
                reason: e.to_string(),
            }),
        }
    }

    pub fn set_pending(
        &self,
        range: RangeId,
        pending: &[PendingTransfer],
    ) -> Result<(), StoreError> {
        let key = Self::key(PENDING_PREFIX, range);
        if pending.is_empty() {
            return self.delete_meta(&key);
        }
        let bytes = serde_json::to_vec(pending).map_err(|e| StoreError::Corrupt {
            key: format!("pending/{range}"),
            reason: e.to_string(),
        })?;
        self.put_meta(&key, &bytes)
    }
}

/// What [`Store::size`] estimated.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Size {
    pub keys: u64,
    pub bytes: u64,
    /// A key that roughly halves the span's data (see [`Store::size`]).
    pub split_key: Option<Vec<u8>>,
}

#[derive(Debug)]
struct Walk {
    /// The walk reached the span's end: this many keys, exactly.
    exact_keys: Option<u64>,
    split_key: Option<Vec<u8>>,
}

/// Builds RocksDB table files from a copy's pairs, which arrive in key order,
/// and ingests them into the database in one step once the copy is complete:
/// the bulk of a transfer bypasses the memtable, the WAL, and the compactions
/// that would rewrite it (how TiKV and CockroachDB apply snapshots). Nothing is
/// visible before [`TableSink::ingest`]; the staged files go with the sink,
/// whether the copy completed or not.
pub struct TableSink<'a> {
    store: &'a Store,
    dir: tempfile::TempDir,
    /// The file being written, if any pair came since the last one was rolled.
    writer: Option<SstFileWriter<'static>>,
    /// The previous file, being finished (its index written and the file
    /// synced) on a thread of its own while the next one fills: the sync is
    /// disk time the copy would otherwise wait out, a third of a 100 MB
    /// move's writing on this project's machines. At most one file waits so.
    finishing: Option<std::thread::JoinHandle<Result<(), rocksdb::Error>>>,
    files: Vec<PathBuf>,
    compression: Compression,
    /// Syncs the file being written in small steps, so that the WAL
    /// syncs of the node's clients never wait behind a whole file's.
    writeback: Writeback,
}

/// Whether a copy's table files are compressed. RocksDB keeps a block
/// uncompressed when compressing it saves less than an eighth, but only after
/// trying: on data that does not compress (already compressed or encrypted
/// values), that try was half of a copy's writing time (`tmp`: 100 MB of random
/// values, 132-158 ms with LZ4 against 60-73 without, on this project's
/// machines). So a copy starts with a small compressed file, a probe; if it
/// compressed poorly, the next files are written without trying, and every
/// [`Compression::PROBE_EVERY`]th file is a probe again, in case the data
/// changed along the range. On disk the result is the same: blocks that do
/// not compress are stored as they are either way.
#[derive(Debug, Clone, Copy)]
struct Compression {
    /// The file being written is compressed.
    current: bool,
    /// The last compressed file saved enough: compressed files need no probe.
    proven: bool,
    /// Key and value bytes put into the file being written.
    raw_bytes: u64,
    /// Files written without compression since the last that tried.
    plain_files: u32,
    /// Files written so far, compressed and not (for tests and logs).
    compressed_files: u32,
    uncompressed_files: u32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            current: true,
            proven: false,
            raw_bytes: 0,
            plain_files: 0,
            compressed_files: 0,
            uncompressed_files: 0,
        }
    }
}

impl Compression {
    /// A plain file follows a compressed one that saved less than this share.
    const WORTH_IT: f64 = 0.1;
    const PROBE_EVERY: u32 = 4;
    /// A probe is this big: a quarter of a full file, so that a copy of data
    /// that does not compress pays little for finding out.
    const PROBE_BYTES: u64 = TABLE_FILE_BYTES / 4;

    /// The size at which the file being written is rolled over.
    fn roll_at(&self) -> u64 {
        if self.current && !self.proven {
            Self::PROBE_BYTES
        } else {
            TABLE_FILE_BYTES
        }
    }

    /// Notes a finished file of `file_size` bytes and decides the next one.
    fn file_done(&mut self, file_size: u64) {
        if self.current {
            self.compressed_files += 1;
            let saved = 1.0 - file_size as f64 / self.raw_bytes.max(1) as f64;
            self.proven = saved >= Self::WORTH_IT;
            self.current = self.proven;
            self.plain_files = 0;
        } else {
            self.uncompressed_files += 1;
            self.plain_files += 1;
            self.current = self.plain_files >= Self::PROBE_EVERY;
        }
        self.raw_bytes = 0;
    }
}

impl std::fmt::Debug for TableSink<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableSink")
            .field("dir", &self.dir.path())
            .field("files", &self.files.len())
            .field("writing", &self.writer.is_some())
            .field("finishing", &self.finishing.is_some())
            .finish()
    }
}

impl TableSink<'_> {
    /// Adds a pair. Keys must come in strictly ascending order (a source's
    /// snapshot iterator gives them so); anything else is an error, and the
    /// copy fails with nothing ingested.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.writer.is_none() {
            let path = self.dir.path().join(format!("{:06}.sst", self.files.len()));
            let writer = SstFileWriter::create(Store::table_options(self.compression.current));
            writer.open(&path).map_err(rocks("open a table file"))?;
            self.writeback.begin(&path);
            self.files.push(path);
            self.writer = Some(writer);
        }
        if let Some(writer) = self.writer.as_mut() {
            writer
                .put(key, value)
                .map_err(rocks("write a table file"))?;
            self.compression.raw_bytes += (key.len() + value.len()) as u64;
            self.writeback.grew(writer.file_size());
            if writer.file_size() >= self.compression.roll_at() {
                self.finish_behind()?;
            }
        }
        Ok(())
    }

    /// Hands the file being written to a thread that finishes it, once the
    /// previous one is finished.
    fn finish_behind(&mut self) -> Result<(), StoreError> {
        self.wait_for_finishing()?;
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        self.compression.file_done(writer.file_size());
        let spawned = std::thread::Builder::new()
            .name("copy-table-finish".into())
            .spawn(move || writer.finish());
        match spawned {
            Ok(handle) => self.finishing = Some(handle),
            // No thread to be had: the copy fails (its staged files go with
            // the sink) rather than wait; the controller tries again.
            Err(e) => {
                return Err(StoreError::Task {
                    reason: format!("could not start a thread to finish a table file: {e}"),
                });
            }
        }
        Ok(())
    }

    fn wait_for_finishing(&mut self) -> Result<(), StoreError> {
        match self.finishing.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(rocks("finish a table file")(e)),
            Some(Err(_)) => Err(StoreError::Task {
                reason: "the thread finishing a table file panicked".into(),
            }),
        }
    }

    /// Finishes the file being written, and waits until every file is.
    fn finish_file(&mut self) -> Result<(), StoreError> {
        self.finish_behind()?;
        self.wait_for_finishing()
    }

    /// Ingests every file written (moved into the database, not copied): the
    /// pairs are durable and visible once this returns. Blocking.
    pub fn ingest(mut self) -> Result<(), StoreError> {
        self.finish_file()?;
        if self.files.is_empty() {
            return Ok(());
        }
        tracing::debug!(
            files = self.files.len(),
            compressed = self.compression.compressed_files,
            uncompressed = self.compression.uncompressed_files,
            "ingesting a copy's table files"
        );
        let mut options = IngestExternalFileOptions::default();
        options.set_move_files(true);
        self.store
            .db
            .ingest_external_file_opts(&options, self.files.clone())
            .map_err(rocks("ingest table files"))
    }
}

impl Drop for TableSink<'_> {
    /// A file still being finished is waited for, so that the staging
    /// directory is removed after its last write, not before.
    fn drop(&mut self) {
        let _ = self.wait_for_finishing();
    }
}

/// The rangelet's [`StateStore`] in the node's RocksDB, written with fsync.
#[derive(Debug, Clone)]
pub struct RangeStates(pub Arc<Store>);

fn state_error(e: StoreError) -> StateStoreError {
    StateStoreError::Backend(e.to_string())
}

impl StateStore for RangeStates {
    fn load(&self) -> Result<Vec<StoredRange>, StateStoreError> {
        self.0
            .scan_meta(RANGE_PREFIX)
            .map_err(state_error)?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_slice(&value).map_err(|e| StateStoreError::Corrupt {
                    path: String::from_utf8_lossy(&key).into_owned().into(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    fn put(&self, range: &StoredRange) -> Result<(), StateStoreError> {
        let bytes =
            serde_json::to_vec(range).map_err(|e| StateStoreError::Backend(e.to_string()))?;
        self.0
            .put_meta(&Store::key(RANGE_PREFIX, range.meta.id()), &bytes)
            .map_err(state_error)
    }

    fn remove(&self, id: RangeId) -> Result<(), StateStoreError> {
        self.0
            .delete_meta(&Store::key(RANGE_PREFIX, id))
            .map_err(state_error)
    }

    fn load_term(&self) -> Result<u64, StateStoreError> {
        let found = self.0.scan_meta(TERM_KEY).map_err(state_error)?;
        match found
            .into_iter()
            .find(|(key, _)| key.as_slice() == TERM_KEY)
        {
            None => Ok(0),
            Some((_, value)) => {
                let bytes: [u8; 8] =
                    value
                        .as_slice()
                        .try_into()
                        .map_err(|_| StateStoreError::Corrupt {
                            path: String::from_utf8_lossy(TERM_KEY).into_owned().into(),
                            reason: format!("expected 8 bytes, found {}", value.len()),
                        })?;
                Ok(u64::from_be_bytes(bytes))
            }
        }
    }

    fn put_term(&self, term: u64) -> Result<(), StateStoreError> {
        self.0
            .put_meta(TERM_KEY, &term.to_be_bytes())
            .map_err(state_error)
    }
}

#[cfg(test)]
mod tests {
    // Tests fail by panicking: unwrapping is the point.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rocksdb::statistics::Ticker;

    /// A store whose RocksDB counts its WAL syncs, and the options to read them.
    fn counted_store(dir: &Path) -> (Arc<Store>, Options) {
        let mut options = Options::default();
        options.enable_statistics();
        // The statistics object is shared by the copy the DB keeps.
        (Store::open_with(dir, options.clone()).unwrap(), options)
    }

    fn wal_syncs(options: &Options) -> u64 {
        options.get_ticker_count(Ticker::WalFileSynced)
    }

    fn entries_in_memtable(store: &Store) -> u64 {
        store
            .db
            .property_int_value("rocksdb.num-entries-active-mem-table")
            .unwrap()
            .unwrap_or_default()
    }

    fn staged_files(store: &Store) -> usize {
        walk(&store.incoming)
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                if path.is_dir() { walk(&path) } else { 1 }
            })
            .sum()
    }

    #[test]
    fn a_table_sink_ingests_its_pairs_without_the_memtable_or_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = counted_store(dir.path());
        let syncs = wal_syncs(&options);
        let mut sink = store.table_sink().unwrap();
        for i in 0..5_000u32 {
            sink.put(format!("k{i:06}").as_bytes(), &[7u8; 100])
                .unwrap();
        }
        assert_eq!(
            store.get(b"k000042").unwrap(),
            None,
            "visible before ingest"
        );
        sink.ingest().unwrap();
        assert_eq!(store.get(b"k000042").unwrap(), Some(vec![7u8; 100]));
        assert_eq!(store.get(b"k004999").unwrap(), Some(vec![7u8; 100]));
        assert_eq!(entries_in_memtable(&store), 0, "went through the memtable");
        assert_eq!(wal_syncs(&options), syncs, "went through the WAL");
        assert_eq!(staged_files(&store), 0, "staged files left behind");
        // Durable: still there after a reopen.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get(b"k000042").unwrap(), Some(vec![7u8; 100]));
    }

    #[test]
    fn a_copy_bigger_than_a_table_file_is_rolled_into_several_and_all_ingested() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sink = store.table_sink().unwrap();
        // Incompressible values (a seeded random stream), so that the files
        // reach their size: 1.5 table files' worth.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let (pairs, value) = fill_sink(&mut sink, 1.5, |v| rand::RngCore::fill_bytes(&mut rng, v));
        assert!(
            sink.files.len() == 3 && sink.writer.is_some(),
            "a probe and a full file finished, a third being written: {sink:?}"
        );
        sink.ingest().unwrap();
        assert_eq!(
            store.get(b"k00000000").unwrap().map(|v| v.len()),
            Some(1000)
        );
        let last = format!("k{:08}", pairs - 1);
        assert_eq!(store.get(last.as_bytes()).unwrap(), Some(value));
        assert_eq!(staged_files(&store), 0, "staged files left behind");
    }

    fn reclaim_links(store: &Store) -> usize {
        walk(store.reclaimer.dir())
    }

    #[test]
    fn clearing_a_span_frees_its_table_files_through_the_reclaimer_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Two table files: one of `a` keys, one of `b` keys.
        for prefix in ["a", "b"] {
            let mut batch = WriteBatch::default();
            for i in 0..2_000u32 {
                batch.put(format!("{prefix}{i:05}"), [prefix.as_bytes()[0]; 1000]);
            }
            store.write(batch).unwrap();
            store.flush().unwrap();
        }
        store
            .clear(&Span::new(b"a".to_vec(), Some(b"b".to_vec())))
            .unwrap();
        assert_eq!(
            (store.reclaimer.linked(), store.reclaimer.released()),
            (1, 0),
            "the `a` file went through the reclaimer, and RocksDB deleted it"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reclaim_links(&store) > 0 {
            assert!(std::time::Instant::now() < deadline, "never reclaimed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let check = |store: &Store| {
            assert_eq!(store.get(b"a00042").unwrap(), None);
            for i in 0..2_000u32 {
                let key = format!("b{i:05}");
                assert_eq!(
                    store.get(key.as_bytes()).unwrap(),
                    Some(vec![b'b'; 1000]),
                    "{key}"
                );
            }
        };
        check(&store);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        check(&store);
    }

    #[test]
    fn a_table_sink_asks_for_its_file_to_be_synced_in_steps_as_it_fills() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sink = store.table_sink().unwrap();
        // 1.5 files of incompressible values: 24 MB written in all, in a
        // 4 MB probe, a 16 MB file and 4 MB of a third: a step per
        // `WRITEBACK_STEP_BYTES` of each, give or take the last of each.
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        fill_sink(&mut sink, 1.5, |v| rand::RngCore::fill_bytes(&mut rng, v));
        let per_mb = (1 << 20) / crate::node::writeback::WRITEBACK_STEP_BYTES;
        let asked = sink.writeback.asked();
        assert!(
            (21 * per_mb..=24 * per_mb).contains(&asked),
            "{asked} steps asked"
        );
        sink.ingest().unwrap();
    }

    /// Puts `files` table files' worth of 1000-byte values from `value_of`
    /// under keys `k00000000`, `k00000001`, ...: how many, and the last value.
    fn fill_sink(
        sink: &mut TableSink<'_>,
        files: f64,
        mut value_of: impl FnMut(&mut [u8]),
    ) -> (usize, Vec<u8>) {
        let mut value = vec![0u8; 1000];
        let pairs = (TABLE_FILE_BYTES as f64 * files) as usize / value.len();
        for i in 0..pairs {
            value_of(&mut value);
            sink.put(format!("k{i:08}").as_bytes(), &value).unwrap();
        }
        (pairs, value)
    }

    #[test]
    fn a_copy_of_data_that_does_not_compress_writes_its_next_files_without_trying() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sink = store.table_sink().unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        fill_sink(&mut sink, 2.5, |v| rand::RngCore::fill_bytes(&mut rng, v));
        assert_eq!(
            (
                sink.compression.compressed_files,
                sink.compression.uncompressed_files
            ),
            (1, 2),
            "a probe a quarter of a file, then two full files that do not try: {:?}",
            sink.compression
        );
        assert!(!sink.compression.current, "{:?}", sink.compression);
        sink.ingest().unwrap();
        assert_eq!(
            store.get(b"k00040000").unwrap().map(|v| v.len()),
            Some(1000)
        );
        assert_eq!(staged_files(&store), 0);
    }

    #[test]
    fn a_copy_of_data_that_compresses_stays_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sink = store.table_sink().unwrap();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        // Half of each value random, half zeros: LZ4 saves about half.
        fill_sink(&mut sink, 2.5, |v| {
            rand::RngCore::fill_bytes(&mut rng, &mut v[..500])
        });
        assert_eq!(
            sink.compression.uncompressed_files, 0,
            "{:?}",
            sink.compression
        );
        assert!(sink.compression.compressed_files >= 1 && sink.compression.current);
        sink.ingest().unwrap();
        assert_eq!(
            store.get(b"k00000007").unwrap().map(|v| v.len()),
            Some(1000)
        );
    }

    #[test]
    fn compression_that_did_not_pay_is_tried_again_every_few_files() {
        let mut compression = Compression::default();
        let mut tried = Vec::new();
        for _ in 0..11 {
            tried.push(compression.current);
            let size = if compression.current {
                TABLE_FILE_BYTES / 4
            } else {
                TABLE_FILE_BYTES
            };
            assert_eq!(compression.roll_at(), size, "probes are small");
            compression.raw_bytes = 100;
            // Whatever was tried saved nothing.
            compression.file_done(100);
        }
        let (t, f) = (true, false);
        assert_eq!(tried, [t, f, f, f, f, t, f, f, f, f, t]);
        // A file that compressed well keeps compression on.
        let mut compression = Compression {
            raw_bytes: 100,
            ..Compression::default()
        };
        compression.file_done(50);
        assert!(compression.current);
        assert_eq!(compression.roll_at(), TABLE_FILE_BYTES, "and full files");
    }

    #[test]
    fn a_table_sink_refuses_keys_out_of_order_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sink = store.table_sink().unwrap();
        sink.put(b"k2", b"v").unwrap();
        assert!(sink.put(b"k1", b"v").is_err(), "a key below the last one");
        assert!(staged_files(&store) > 0);
        drop(sink);
        assert_eq!(staged_files(&store), 0, "a failed copy's files stay staged");
        assert_eq!(store.get(b"k2").unwrap(), None);
    }

    #[test]
    fn files_a_crash_left_staged_are_removed_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sink = store.table_sink().unwrap();
        sink.put(b"k1", b"v").unwrap();
        // A crash: the sink's clean-up never runs.
        std::mem::forget(sink);
        assert!(staged_files(&store) > 0);
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(staged_files(&store), 0);
    }

    #[test]
    fn the_newest_controller_term_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let states = RangeStates(Store::open(dir.path()).unwrap());
            assert_eq!(states.load_term().unwrap(), 0);
            states.put_term(7).unwrap();
            assert_eq!(states.load_term().unwrap(), 7);
        }
        let states = RangeStates(Store::open(dir.path()).unwrap());
        assert_eq!(states.load_term().unwrap(), 7);
        assert!(states.load().unwrap().is_empty(), "the term is not a range");
    }

    #[test]
    fn every_data_write_is_in_the_synced_wal_before_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = counted_store(dir.path());
        let before = wal_syncs(&options);
        store.put(b"k", b"v").unwrap();
        let after_put = wal_syncs(&options);
        assert!(after_put > before, "put returned before the WAL was synced");
        store.delete(b"k").unwrap();
        let after_delete = wal_syncs(&options);
        assert!(
            after_delete > after_put,
            "delete returned before the WAL was synced"
        );
        let mut batch = WriteBatch::default();
        batch.put(b"a", b"1");
        store.write(batch).unwrap();
        let after_batch = wal_syncs(&options);
        assert!(
            after_batch > after_delete,
            "a batch returned before the WAL was synced"
        );
        store.clear(&Span::new(Vec::new(), None)).unwrap();
        assert!(
            wal_syncs(&options) > after_batch,
            "a clear returned before the WAL was synced"
        );
    }

    #[test]
    fn a_transfer_chunk_is_durable_once_the_wal_is_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (store, options) = counted_store(dir.path());
        let mut batch = WriteBatch::default();
        batch.put(b"a", b"1");
        store.write_unsynced(batch).unwrap();
        let before = wal_syncs(&options);
        store.sync_wal().unwrap();
        assert!(wal_syncs(&options) > before);
    }
}
