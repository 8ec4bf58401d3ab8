//! Frees the disk space of the table files a dropped range leaves behind a few
//! megabytes at a time, so that freeing it never stalls the node's writes.
//!
//! Why: on ext4 mounted with `discard` (as this project's machines are),
//! unlinking a big file discards its blocks within a journal commit, and every
//! WAL sync of that moment waits for it. Measured there (a loop of 100-byte
//! writes each followed by `fdatasync`): unlinking a 100 MB file made the
//! slowest sync 56-62 ms; truncating the same file 4 MB at a time, 10 ms apart,
//! and then unlinking it, 4 ms. A moved range's drop compacts its table files
//! away, and its client writes, on the node and on any node sharing its disk,
//! waited up to 50-120 ms (`bench_handoff`, the slowest write after the drop).
//! RocksDB has this built in (`SstFileManager`'s rate-limited deletes through a
//! trash directory), but the `rocksdb` crate does not expose it: hence this.
//!
//! How: before the store compacts a cleared span away, it links each table file
//! holding part of the span into the reclaim directory ([`Reclaimer::keep`]).
//! Once RocksDB deletes the file, the link is its last name (link count 1): no
//! one can open it any more, so it is cut down step by step and then unlinked.
//! A file RocksDB keeps is never touched: its link is just removed, which frees
//! nothing ([`Reclaimer::release`], or after [`GIVE_UP_AFTER`]). Links a crash
//! left behind are reclaimed the same way when the store opens again.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How much of a file one step cuts off.
pub const STEP_BYTES: u64 = 4 << 20;
/// The pause between steps: 4 MB every 10 ms frees up to 400 MB/s.
const STEP_PAUSE: Duration = Duration::from_millis(10);
/// How often a link whose file RocksDB still has is looked at again.
const RECHECK: Duration = Duration::from_millis(200);
/// A link whose file RocksDB still has after this long is removed (RocksDB
/// deletes the file itself, later, in one go: only slower, never unsafe).
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// What one pass over the reclaim directory found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A file was cut down or removed: more to do right away.
    Working,
    /// Only links whose files RocksDB still has: look again later.
    Waiting,
    /// Nothing left.
    Empty,
}

/// What [`Trash::look_at`] did with one link.
enum Look {
    Cut,
    Shared,
    Skipped,
}

/// The reclaim directory and what a pass over it knows (pure of timing: the
/// caller says what time it is, so tests run passes one by one).
#[derive(Debug)]
pub struct Trash {
    dir: PathBuf,
    /// When each link was first seen still shared with RocksDB.
    shared_since: HashMap<PathBuf, Instant>,
    /// Links that could be neither cut nor removed: skipped from then on.
    stuck: HashSet<PathBuf>,
}

impl Trash {
    pub fn new(dir: PathBuf) -> Trash {
        Trash {
            dir,
            shared_since: HashMap::new(),
            stuck: HashSet::new(),
        }
    }

    /// Cuts one file down by a step (or removes it once empty), or finds that
    /// nothing can be cut now. A file that cannot be cut does not hold up the
    /// others: its link is removed (its space then goes in one piece), and a
    /// link that cannot even be removed is left alone from then on.
    pub fn pass(&mut self, now: Instant) -> io::Result<Pass> {
        let mut shared = HashSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if self.stuck.contains(&path) {
                continue;
            }
            match self.look_at(&path, now) {
                Ok(Look::Cut) => return Ok(Pass::Working),
                Ok(Look::Shared) => {
                    shared.insert(path);
                }
                Ok(Look::Skipped) => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "could not cut a reclaimed table file down; removing its link whole");
                    if let Err(error) = self.forget(&path) {
                        tracing::warn!(path = %path.display(), %error, "could not remove a reclaim link either; leaving it");
                        self.stuck.insert(path);
                    }
                    return Ok(Pass::Working);
                }
            }
        }
        // A full pass: forget links that went since (released, or removed).
        self.shared_since.retain(|path, _| shared.contains(path));
        Ok(if shared.is_empty() {
            Pass::Empty
        } else {
            Pass::Waiting
        })
    }

    /// One link: cut down (or removed), still shared with RocksDB, or not a
    /// regular file (never touched: only links [`Reclaimer::keep`] made are).
    fn look_at(&mut self, path: &Path, now: Instant) -> io::Result<Look> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => return Ok(Look::Skipped),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Look::Skipped),
            Err(e) => return Err(e),
        }
        // Judged by the open file, and cut through it: a name checked first
        // and opened after could name another file by then.
        let file = match OpenOptions::new().write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Look::Skipped),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if meta.nlink() > 1 {
            let since = *self.shared_since.entry(path.to_owned()).or_insert(now);
            if now.saturating_duration_since(since) < GIVE_UP_AFTER {
                return Ok(Look::Shared);
            }
            tracing::debug!(path = %path.display(), "RocksDB still has this table file; its reclaim link goes");
            self.forget(path)?;
            return Ok(Look::Cut);
        }
        // The last name of a file RocksDB deleted: ours to free.
        if meta.len() == 0 {
            self.forget(path)?;
        } else {
            file.set_len(meta.len().saturating_sub(STEP_BYTES))?;
        }
        Ok(Look::Cut)
    }

    fn forget(&mut self, path: &Path) -> io::Result<()> {
        self.shared_since.remove(path);
        remove_if_present(path).map(drop)
    }
}

/// Removes `path`; whether it was there (gone already is no error).
fn remove_if_present(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The reclaim directory and the thread that empties it. Dropping it stops the
/// thread after its current step; what is left is reclaimed at the next start.
#[derive(Debug)]
pub struct Reclaimer {
    dir: PathBuf,
    wake: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Files linked so far (tests: a clear went through here).
    linked: AtomicU64,
    /// Links removed by [`Reclaimer::release`] (tests).
    released: AtomicU64,
}

impl Reclaimer {
    /// Creates `dir` if need be and starts emptying it (a crash may have left
    /// links in it).
    pub fn start(dir: PathBuf) -> io::Result<Reclaimer> {
        std::fs::create_dir_all(&dir)?;
        let (wake, woken) = std::sync::mpsc::sync_channel(1);
        let mut trash = Trash::new(dir.clone());
        let thread = std::thread::Builder::new()
            .name("reclaim".into())
            .spawn(move || run(&mut trash, &woken))?;
        Ok(Reclaimer {
            dir,
            wake: Some(wake),
            thread: Some(thread),
            linked: AtomicU64::new(0),
            released: AtomicU64::new(0),
        })
    }

    /// Links `file` (a table file RocksDB is about to delete) into the reclaim
    /// directory. A file already gone is fine: RocksDB deleted it first.
    pub fn keep(&self, file: &Path) -> io::Result<()> {
        let Some(link) = self.link_of(file) else {
            return Ok(());
        };
        match std::fs::hard_link(file, link) {
            Ok(()) => {
                self.linked.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Files linked so far.
    pub fn linked(&self) -> u64 {
        self.linked.load(Ordering::Relaxed)
    }

    /// Removes the link to `file`, which RocksDB keeps: nothing is freed.
    /// Unless RocksDB has deleted it meanwhile (the link is its last name):
    /// then the link stays, for the thread to cut the file down.
    pub fn release(&self, file: &Path) -> io::Result<()> {
        let Some(link) = self.link_of(file) else {
            return Ok(());
        };
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.nlink() > 1 => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if remove_if_present(&link)? {
            self.released.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Where `file`'s link in the reclaim directory is (by its name).
    fn link_of(&self, file: &Path) -> Option<PathBuf> {
        file.file_name().map(|name| self.dir.join(name))
    }

    /// Links removed by [`Reclaimer::release`] so far.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Relaxed)
    }

    /// Has the thread look at the directory now (RocksDB just deleted files).
    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            // Full: a wake-up is pending already. Disconnected: no thread.
            let _ = wake.try_send(());
        }
    }

    /// The reclaim directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of deleted table files not freed yet (see [`pending_bytes`]).
    pub fn pending_bytes(&self) -> io::Result<u64> {
        pending_bytes(&self.dir)
    }
}

/// Bytes that the files in the reclaim directory `dir` still hold and that
/// only the reclaimer will free: files RocksDB has deleted (their link here is
/// their last name). Links to files RocksDB still has free nothing and do not
/// count. What a dropped range still takes on disk, for the node's metrics.
pub fn pending_bytes(dir: &Path) -> io::Result<u64> {
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        match entry?.metadata() {
            Ok(meta) if meta.is_file() && meta.nlink() == 1 => bytes += meta.len(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(bytes)
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        self.wake = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread: passes while there is work, a step's pause apart; otherwise
/// sleeps until woken (or, with links RocksDB still has, until the next look).
fn run(trash: &mut Trash, woken: &Receiver<()>) {
    loop {
        let pause = match trash.pass(Instant::now()) {
            Ok(Pass::Working) => Some(STEP_PAUSE),
            Ok(Pass::Waiting) => Some(RECHECK),
            Ok(Pass::Empty) => None,
            Err(error) => {
                tracing::warn!(dir = %trash.dir.display(), %error, "reclaiming table files' space failed; trying again later");
                Some(RECHECK)
            }
        };
        let woke = match pause {
            Some(pause) => woken.recv_timeout(pause),
            None => woken.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        if let Err(RecvTimeoutError::Disconnected) = woke {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(path: &Path, megabytes: u64) {
        let file = std::fs::File::create(path).expect("create");
        file.set_len(megabytes << 20).expect("size");
    }

    fn reclaim_dir(root: &Path) -> PathBuf {
        let dir = root.join("reclaim");
        std::fs::create_dir_all(&dir).expect("reclaim dir");
        dir
    }

    #[test]
    fn a_file_rocksdb_deleted_is_cut_down_step_by_step_then_removed() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = reclaim_dir(root.path());
        let table = root.path().join("000012.sst");
        file_of(&table, 10);
        std::fs::hard_link(&table, dir.join("000012.sst")).expect("link");
        std::fs::remove_file(&table).expect("RocksDB deletes it");
        let mut trash = Trash::new(dir.clone());
        let link = dir.join("000012.sst");
        let now = Instant::now();
        let mut sizes = Vec::new();
        while let Ok(meta) = std::fs::metadata(&link) {
            sizes.push(meta.len() >> 20);
            assert_eq!(trash.pass(now).expect("pass"), Pass::Working);
        }
        assert_eq!(sizes, [10, 6, 2, 0], "4 MB per step, then removed");
        assert_eq!(trash.pass(now).expect("pass"), Pass::Empty);
    }

    #[test]
    fn only_files_rocksdb_deleted_count_as_pending() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = reclaim_dir(root.path());
        assert_eq!(pending_bytes(&dir).expect("pending"), 0);
        let (deleted, kept) = (root.path().join("1.sst"), root.path().join("2.sst"));
        file_of(&deleted, 3);
        file_of(&kept, 5);
        for table in [&deleted, &kept] {
            let name = table.file_name().expect("a name");
            std::fs::hard_link(table, dir.join(name)).expect("link");
        }
        std::fs::remove_file(&deleted).expect("RocksDB deletes one");
        assert_eq!(pending_bytes(&dir).expect("pending"), 3 << 20);
    }

    #[test]
    fn a_file_rocksdb_still_has_is_never_cut() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = reclaim_dir(root.path());
        let table = root.path().join("000013.sst");
        file_of(&table, 10);
        std::fs::hard_link(&table, dir.join("000013.sst")).expect("link");
        let mut trash = Trash::new(dir.clone());
        let now = Instant::now();
        assert_eq!(trash.pass(now).expect("pass"), Pass::Waiting);
        assert_eq!(trash.pass(now + RECHECK).expect("pass"), Pass::Waiting);
        assert_eq!(std::fs::metadata(&table).expect("table").len(), 10 << 20);
        // Given up on: the link goes, the file stays whole.
        assert_eq!(
            trash.pass(now + GIVE_UP_AFTER).expect("pass"),
            Pass::Working
        );
        assert_eq!(trash.pass(now + GIVE_UP_AFTER).expect("pass"), Pass::Empty);
        assert_eq!(std::fs::metadata(&table).expect("table").len(), 10 << 20);
    }

    #[test]
    fn released_links_go_and_their_files_stay_whole() {
        let root = tempfile::tempdir().expect("temp dir");
        let reclaimer = Reclaimer::start(root.path().join("reclaim")).expect("start");
        let table = root.path().join("000014.sst");
        file_of(&table, 3);
        reclaimer.keep(&table).expect("keep");
        reclaimer.keep(&table).expect("keeping twice is fine");
        assert!(reclaimer.dir().join("000014.sst").exists());
        assert_eq!(reclaimer.linked(), 1);
        reclaimer.release(&table).expect("release");
        assert!(!reclaimer.dir().join("000014.sst").exists());
        assert_eq!(std::fs::metadata(&table).expect("table").len(), 3 << 20);
        assert_eq!(reclaimer.released(), 1);
        // A file already deleted cannot be kept, and that is no error.
        reclaimer
            .keep(&root.path().join("000015.sst"))
            .expect("gone already");
    }

    #[test]
    fn a_release_after_rocksdb_deleted_the_file_leaves_it_to_be_cut_down() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = reclaim_dir(root.path());
        let table = root.path().join("000017.sst");
        file_of(&table, 3);
        std::fs::hard_link(&table, dir.join("000017.sst")).expect("link");
        std::fs::remove_file(&table).expect("RocksDB deletes it");
        // Not through a running thread: the link must still be there after.
        let reclaimer = Reclaimer {
            dir: dir.clone(),
            wake: None,
            thread: None,
            linked: AtomicU64::new(0),
            released: AtomicU64::new(0),
        };
        reclaimer.release(&table).expect("release");
        assert_eq!(reclaimer.released(), 0);
        assert_eq!(pending_bytes(&dir).expect("pending"), 3 << 20);
    }

    #[test]
    fn what_is_not_a_regular_file_is_skipped_and_holds_nothing_up() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = reclaim_dir(root.path());
        // A directory and a symlink to a live file: neither is touched.
        std::fs::create_dir(dir.join("odd")).expect("dir");
        let live = root.path().join("live.sst");
        file_of(&live, 5);
        std::os::unix::fs::symlink(&live, dir.join("000001.sst")).expect("symlink");
        file_of(&dir.join("000002.sst"), 1);
        let mut trash = Trash::new(dir.clone());
        let now = Instant::now();
        while trash.pass(now).expect("pass") == Pass::Working {}
        assert!(
            !dir.join("000002.sst").exists(),
            "the real leftover was reclaimed"
        );
        assert_eq!(std::fs::metadata(&live).expect("live").len(), 5 << 20);
        assert!(dir.join("odd").is_dir());
    }

    #[test]
    fn the_thread_frees_what_it_is_given_and_what_a_crash_left() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = reclaim_dir(root.path());
        // A crash left a link whose file RocksDB has deleted since.
        file_of(&dir.join("000001.sst"), 9);
        let reclaimer = Reclaimer::start(dir.clone()).expect("start");
        let table = root.path().join("000016.sst");
        file_of(&table, 9);
        reclaimer.keep(&table).expect("keep");
        std::fs::remove_file(&table).expect("RocksDB deletes it");
        reclaimer.wake();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_dir(&dir).expect("dir").next().is_some() {
            assert!(
                Instant::now() < deadline,
                "the reclaim directory never emptied"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
