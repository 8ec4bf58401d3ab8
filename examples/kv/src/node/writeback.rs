//! Writes a copy's table file back to disk half a megabyte at a time while it
//! fills, and keeps the copy from running ahead of the disk.
//!
//! Every client write waits for a WAL sync (see [`super::store`]). On the
//! filesystems these nodes run on (ext4, ordered data), a WAL sync that commits
//! the journal first waits for every block allocated since the last commit to
//! reach the disk: while a copy leaves a 16 MB table file dirty and then syncs
//! it whole, the client writes of that moment wait the whole flush out. Synced
//! in small steps, a WAL sync waits for about one step. Measured on this
//! project's machines (a loop of 100-byte writes each followed by
//! `fdatasync`, beside 112 MB written as 16 MB files): the slowest WAL sync was
//! 27-34 ms with one sync per file, 11 ms syncing every 4 MB, 3 ms every 1 MB.
//!
//! The copy waits when it is a step ahead of the syncs: otherwise it writes
//! faster than the disk takes the data, the unsynced part grows, and each step
//! flushes (and each WAL sync waits for) several megabytes. `bench_handoff 100
//! 5`, one run each on 2026-11-30: the slowest client write of a move p50 50 ms
//! with steps of 1 MB that never waited, 33 ms with 1 MB steps that wait, 20 ms
//! with 512 KB steps that wait; the copy ran at 340, 257 and 251 MB/s (the
//! disk's synced copy: 450-500 MB/s).
//!
//! RocksDB does this itself for the files it writes (`bytes_per_sync`), but not
//! for an `SstFileWriter` built through the `rocksdb` crate: that takes default
//! `EnvOptions`, which the crate offers no way to change (`strace` shows no
//! ranged sync from one), so the sink does it here, by hand. The syncs run on a
//! thread of their own, so that the copy writes the next step meanwhile.
//!
//! A step is `sync_file_range` over the bytes written since the step before
//! (the call behind RocksDB's `bytes_per_sync`), with its wait flags: it
//! writes the data back and waits for it, like `fdatasync`, but without a
//! journal commit per step, which with `fdatasync` cost every step (and every
//! client WAL sync queued behind it) a flush of the journal. No well-kept
//! crate wraps the call (`nix` and `rustix` do not), so [`range_sync`] calls
//! libc itself: the workspace's one `unsafe` block, a syscall that takes only
//! integers. Elsewhere than Linux a step is an `fdatasync`. `bench_handoff 100
//! 5`, the two builds alternating, on 2026-11-30 (a day this machine's disk
//! synced slowly: a synced raw copy 397-423 MB/s): the copy ran at 176 and 194
//! MB/s with `fdatasync` steps and at 259 and 251 with ranged ones, with the
//! slowest client write of a move at p50 33 and 23 ms against 37 and 31 (the
//! same, within this machine's noise).
//!
//! A failed step is only logged: the table file's final sync (in
//! `SstFileWriter::finish`) is what makes it durable, and it reports failure.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

/// How much of a file is written between two steps.
pub const WRITEBACK_STEP_BYTES: u64 = 512 << 10;

/// The syncing thread of one copy. Dropping it ends the thread once the step
/// it is taking (if any) is done.
#[derive(Debug)]
pub struct Writeback {
    /// A rendezvous channel: asking for a step waits until the thread has
    /// finished the one before.
    requests: Option<SyncSender<Step>>,
    /// The file being written, opened once for all its steps (a sync covers
    /// the file, whichever descriptor asks).
    file: Option<Arc<File>>,
    /// Its size at which the next step is due.
    due: u64,
    /// Where the next step starts: the file's size at the step before.
    from: u64,
    /// Steps asked for (whether or not one was waiting already).
    asked: u64,
    steps: Arc<Steps>,
}

/// One step: the bytes of `file` from offset `from` to its end.
struct Step {
    file: Arc<File>,
    from: u64,
}

/// What the thread did, for tests and logs.
#[derive(Debug, Default)]
struct Steps {
    taken: AtomicU64,
    /// Failed steps, and files that could not be opened for steps.
    failed: AtomicU64,
}

impl Writeback {
    /// Starts the thread. Without one (the system refused it), writes are
    /// still correct, only their syncs come in bigger pieces: logged, not fatal.
    pub fn start() -> Writeback {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Step>(0);
        let steps = Arc::new(Steps::default());
        let counted = steps.clone();
        let spawned = std::thread::Builder::new()
            .name("copy-writeback".into())
            .spawn(move || {
                for step in receiver {
                    match range_sync::write_back(&step.file, step.from) {
                        Ok(()) => counted.taken.fetch_add(1, Ordering::Relaxed),
                        Err(error) => {
                            tracing::debug!(%error, "a writeback step failed; the file's final sync still decides");
                            counted.failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            });
        let requests = match spawned {
            Ok(_) => Some(sender),
            Err(error) => {
                tracing::warn!(%error, "no thread for a copy's writeback; its table files sync only when finished");
                None
            }
        };
        Writeback {
            requests,
            file: None,
            due: WRITEBACK_STEP_BYTES,
            from: 0,
            asked: 0,
            steps,
        }
    }

    /// The copy has started writing the (new, empty) file at `path`. A file
    /// that cannot be opened for steps gets none (logged, counted as failed).
    pub fn begin(&mut self, path: &Path) {
        self.due = WRITEBACK_STEP_BYTES;
        self.from = 0;
        self.file = match OpenOptions::new().write(true).open(path) {
            Ok(file) => Some(Arc::new(file)),
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "no writeback for this table file; its final sync still decides");
                self.steps.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
    }

    /// The file being written has grown to `size` bytes: asks for a step once
    /// [`WRITEBACK_STEP_BYTES`] have been written since the last, waiting
    /// while the step before it is still being taken.
    pub fn grew(&mut self, size: u64) {
        if size < self.due {
            return;
        }
        self.due = size + WRITEBACK_STEP_BYTES;
        self.asked += 1;
        let from = std::mem::replace(&mut self.from, size);
        let (Some(requests), Some(file)) = (&self.requests, &self.file) else {
            return;
        };
        let step = Step {
            file: file.clone(),
            from,
        };
        if requests.send(step).is_err() {
            self.requests = None;
        }
    }

    /// Steps asked for so far.
    pub fn asked(&self) -> u64 {
        self.asked
    }

    /// Steps taken so far (tests: the file was synced while it filled).
    pub fn taken(&self) -> u64 {
        self.steps.taken.load(Ordering::Relaxed)
    }

    /// Steps that failed so far (logged; the final sync decides).
    pub fn failed(&self) -> u64 {
        self.steps.failed.load(Ordering::Relaxed)
    }
}

/// Writes a file's bytes from an offset to its end back to disk and waits
/// for them, without committing the file's metadata (its final sync does).
mod range_sync {
    use std::fs::File;

    /// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` from `from` to the
    /// end of the file (a length of 0 means "to the end").
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    pub(super) fn write_back(file: &File, from: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let offset = i64::try_from(from).map_err(std::io::Error::other)?;
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        // SAFETY: the call reads no memory of ours: it takes a descriptor
        // (valid while `file` is borrowed) and three integers, and at worst
        // fails with an errno.
        let answer = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, 0, flags) };
        if answer == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Elsewhere: the whole file's data, as `fdatasync` writes it.
    #[cfg(not(target_os = "linux"))]
    pub(super) fn write_back(file: &File, _from: u64) -> std::io::Result<()> {
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    /// Waits (up to 10 s) for the thread to have taken or failed `at_least`
    /// steps in all; returns (taken, failed).
    fn wait_for_steps(writeback: &Writeback, at_least: u64) -> (u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while writeback.taken() + writeback.failed() < at_least && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        (writeback.taken(), writeback.failed())
    }

    const STEP: u64 = WRITEBACK_STEP_BYTES;

    #[test]
    fn a_step_is_asked_each_time_another_step_is_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("table.sst");
        File::create(&path).expect("create");
        let mut writeback = Writeback::start();
        writeback.begin(&path);
        for quarter in 1..4 {
            writeback.grew(STEP * quarter / 4);
        }
        assert_eq!(writeback.asked(), 0, "less than a step written");
        writeback.grew(STEP);
        assert_eq!(writeback.asked(), 1);
        writeback.grew(2 * STEP - 1);
        assert_eq!(writeback.asked(), 1, "less than a step since the last");
        writeback.grew(5 * STEP);
        assert_eq!(writeback.asked(), 2, "a big jump is one step");
        assert_eq!(
            writeback.from,
            5 * STEP,
            "the next step starts where it ended"
        );
    }

    #[test]
    fn a_new_file_starts_its_own_count() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (first, second) = (dir.path().join("1.sst"), dir.path().join("2.sst"));
        File::create(&first).expect("create");
        File::create(&second).expect("create");
        let mut writeback = Writeback::start();
        writeback.begin(&first);
        writeback.grew(3 * STEP);
        writeback.begin(&second);
        assert_eq!(writeback.from, 0, "the new file's first step starts at 0");
        writeback.grew(STEP - 1);
        assert_eq!(writeback.asked(), 1, "the new file has not reached a step");
        writeback.grew(STEP);
        assert_eq!(writeback.asked(), 2);
    }

    #[test]
    fn asking_waits_until_the_step_before_is_taken() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("table.sst");
        File::create(&path).expect("create");
        let mut writeback = Writeback::start();
        writeback.begin(&path);
        for n in 1..=3 {
            writeback.grew(n * STEP);
        }
        // The third request was taken by the thread only once the first
        // two steps were done: at least two are, before any wait here.
        assert!(writeback.taken() + writeback.failed() >= 2);
    }

    #[test]
    fn the_thread_syncs_the_file_being_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("table.sst");
        let mut file = File::create(&path).expect("create");
        let mut writeback = Writeback::start();
        writeback.begin(&path);
        file.write_all(&vec![7u8; STEP as usize]).expect("write");
        writeback.grew(STEP);
        assert_eq!(wait_for_steps(&writeback, 1), (1, 0));
    }

    #[test]
    fn writing_back_a_range_of_a_file_works_and_of_a_pipe_fails() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut file = File::create(dir.path().join("table.sst")).expect("create");
        file.write_all(&vec![7u8; 3 * STEP as usize])
            .expect("write");
        range_sync::write_back(&file, STEP).expect("a range of a regular file");
        let (reader, _writer) = std::io::pipe().expect("pipe");
        let pipe = File::from(std::os::fd::OwnedFd::from(reader));
        assert!(
            range_sync::write_back(&pipe, 0).is_err(),
            "a pipe has no range to write back: the error must reach the caller"
        );
    }

    #[test]
    fn a_step_that_fails_is_not_an_error_of_the_copy() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut writeback = Writeback::start();
        // The file does not exist: the step fails, and is only logged.
        writeback.begin(&dir.path().join("gone.sst"));
        writeback.grew(2 * STEP);
        assert_eq!(wait_for_steps(&writeback, 1), (0, 1));
        // The thread is still there for the next file.
        let path = dir.path().join("table.sst");
        File::create(&path).expect("create");
        writeback.begin(&path);
        writeback.grew(2 * STEP);
        assert_eq!(wait_for_steps(&writeback, 2), (1, 1));
    }
}
