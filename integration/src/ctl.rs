//! `rangerctl` as the operator runs it: a process per command, its `--json`
//! output parsed into [`crate::views`].

use std::path::PathBuf;
use std::process::ExitStatus;

use anyhow::{Context, bail};
use serde::de::DeserializeOwned;

use crate::binaries::{RANGERCTL, binary};
use crate::views::{NodeView, OpLine, OpResult, OpView, RangeView};

/// `rangerctl --addr ADDR`.
#[derive(Debug, Clone)]
pub struct Ctl {
    program: PathBuf,
    addr: String,
}

/// What one `rangerctl` run printed, and how it exited.
#[derive(Debug, Clone)]
pub struct CtlOutput {
    /// The arguments, for messages.
    pub args: Vec<String>,
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error (the reason, when it fails).
    pub stderr: String,
}

impl CtlOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` when it exited 0, else an error with what it printed.
    pub fn ok(self) -> anyhow::Result<CtlOutput> {
        if self.success() {
            Ok(self)
        } else {
            bail!("{self}")
        }
    }
}

impl std::fmt::Display for CtlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rangerctl {} ({}): {}{}",
            self.args.join(" "),
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// What `rangerctl --json move|split|join` printed: the events it saw and
/// the result line (missing when it did not end normally, e.g. the
/// controller was killed under it).
#[derive(Debug, Clone)]
pub struct OpRun {
    /// The events, in order.
    pub events: Vec<crate::views::EventView>,
    /// The result line.
    pub result: Option<OpResult>,
    /// The whole run.
    pub output: CtlOutput,
}

impl OpRun {
    /// Whether the operation succeeded.
    pub fn ok(&self) -> bool {
        self.output.success() && self.result.as_ref().is_some_and(|r| r.ok)
    }
}

impl Ctl {
    /// `rangerctl` talking to the controller at `addr`.
    pub fn new(addr: impl Into<String>) -> anyhow::Result<Ctl> {
        Ok(Ctl {
            program: binary(RANGERCTL)?,
            addr: addr.into(),
        })
    }

    /// The controller's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `rangerctl --addr ADDR ARGS...`; a non-zero exit is not an error
    /// here (tests look at it).
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<CtlOutput> {
        let output = tokio::process::Command::new(&self.program)
            .arg("--addr")
            .arg(&self.addr)
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .context("running rangerctl")?;
        Ok(CtlOutput {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `rangerctl --json ARGS...`, which must succeed, and parses its output.
    pub async fn json<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all).await?.ok()?;
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("parsing the output of {}", out.args.join(" ")))
    }

    /// `rangerctl ranges`.
    pub async fn ranges(&self) -> anyhow::Result<Vec<RangeView>> {
        self.json(&["ranges"]).await
    }

    /// `rangerctl nodes`.
    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        self.json(&["nodes"]).await
    }

    /// `rangerctl ops`.
    pub async fn ops(&self) -> anyhow::Result<Vec<OpView>> {
        self.json(&["ops"]).await
    }

    /// Runs an operation (`move`, `split`, `join`) with `--json` and parses
    /// every line; a failed operation is an [`OpRun`] that is not ok, not an
    /// error.
    pub async fn operation(&self, args: &[&str]) -> anyhow::Result<OpRun> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let output = self.run(&all).await?;
        Ok(parse_op_run(output))
    }

    /// [`Ctl::operation`], which must succeed.
    pub async fn operation_ok(&self, args: &[&str]) -> anyhow::Result<OpRun> {
        let run = self.operation(args).await?;
        if !run.ok() {
            bail!("operation failed: {}", run.output);
        }
        Ok(run)
    }
}

/// Splits `rangerctl --json` operation output into events and the result.
pub fn parse_op_run(output: CtlOutput) -> OpRun {
    let mut events = Vec::new();
    let mut result = None;
    for line in output.stdout.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<OpLine>(line) {
            Ok(OpLine::Event { event }) => events.push(event),
            Ok(OpLine::Result(r)) => result = Some(r),
            Err(e) => tracing::warn!(%line, error = %e, "unparsed rangerctl line"),
        }
    }
    OpRun {
        events,
        result,
        output,
    }
}
