//! One child process the harness owns: started from a fixed command line (so
//! a restart is the same program on the same ports and data), its output
//! appended to one log file across restarts, and killed when dropped, also
//! when a test panics.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

/// How much of a log's end is read for its tail.
const TAIL_BYTES: u64 = 64 * 1024;

/// A command line, and the process running it if any.
#[derive(Debug)]
pub struct Process {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: PathBuf,
    /// Where stdout goes instead of the log (a program's machine-readable
    /// output, e.g. the hammer's report).
    stdout: Option<PathBuf>,
    child: Option<Child>,
    starts: u32,
}

impl Process {
    /// A process named `name` (its log is `<dir>/<name>.log`), not started yet.
    pub fn new(name: &str, program: PathBuf, dir: &Path) -> Process {
        Process {
            name: name.to_owned(),
            program,
            args: Vec::new(),
            // Logs go to files, read by people: no colour escapes.
            envs: vec![("NO_COLOR".into(), "1".into())],
            log: dir.join(format!("{name}.log")),
            stdout: None,
            child: None,
            starts: 0,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Process
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds a flag followed by a path.
    pub fn arg_path(mut self, flag: &str, path: &Path) -> Process {
        self.args.push(flag.into());
        self.args.push(path.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Process {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Sends stdout to `path` (truncated at each start) instead of the log.
    pub fn stdout_to(mut self, path: PathBuf) -> Process {
        self.stdout = Some(path);
        self
    }

    /// Starts the process; its stdout and stderr go to the end of its log,
    /// after a line that says which start this is.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        writeln!(
            log,
            "===== {} start #{}: {} {} =====",
            self.name,
            self.starts,
            self.program.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        )?;
        let stdout = match &self.stdout {
            Some(path) => {
                File::create(path).with_context(|| format!("creating {}", path.display()))?
            }
            None => log.try_clone()?,
        };
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        tracing::debug!(name = %self.name, pid = child.id(), start = self.starts, "process started");
        self.child = Some(child);
        Ok(())
    }

    /// Its name, as in its log file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Whether it is running (an exited child is reaped and forgotten).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            None => false,
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                Ok(Some(status)) => {
                    tracing::debug!(name = %self.name, %status, "process exited");
                    self.child = None;
                    false
                }
                Err(_) => false,
            },
        }
    }

    /// `kill -9`: no clean-up of any kind, as in a crash. Waits until the
    /// process is gone, so that its ports are free for a restart.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.name);
        };
        // An error means it already exited, which is as good.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        tracing::debug!(name = %self.name, "killed with SIGKILL");
        Ok(())
    }

    /// Sends a signal by name (`INT`, `TERM`, `STOP`, `CONT`...).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        let status = Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -s {signal} {pid} ({}) failed: {status}", self.name);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(child) = &mut self.child else {
                bail!("{} is not running", self.name);
            };
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits up to `timeout` for it to exit.
    pub async fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait_exit(timeout).await
    }

    /// The log file: everything the process printed, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log as text.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already gone is fine; there is nothing else to do on failure.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The last `lines` lines of a file (from its last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let _ = file.read_to_end(&mut bytes);
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
