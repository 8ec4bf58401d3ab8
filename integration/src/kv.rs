//! The `kv` client binary, as a user runs it, with `--json` output parsed.

use std::path::PathBuf;
use std::process::ExitStatus;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::binaries::{KV, binary};

/// `kv --addr ADDR` (a proxy or a node).
#[derive(Debug, Clone)]
pub struct Kv {
    program: PathBuf,
    addr: String,
}

/// What one `kv` run printed, and how it exited (0 ok, 1 not found, 2 error).
#[derive(Debug, Clone)]
pub struct KvOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// A key and its value as `kv --json` prints them (text, or `hex:...`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Pair {
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

impl Kv {
    /// The client of the `kv.KV` server at `addr`.
    pub fn new(addr: impl Into<String>) -> anyhow::Result<Kv> {
        Ok(Kv {
            program: binary(KV)?,
            addr: addr.into(),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Runs `kv --addr ADDR --json ARGS...`.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<KvOutput> {
        let output = tokio::process::Command::new(&self.program)
            .args(["--addr", &self.addr, "--json"])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .context("running kv")?;
        Ok(KvOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// `kv put KEY VALUE`, which must succeed.
    pub async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let out = self.run(&["put", key, value]).await?;
        if !out.status.success() {
            bail!(
                "kv put {key:?} failed ({}): {}",
                out.status,
                out.stderr.trim()
            );
        }
        Ok(())
    }

    /// `kv get KEY`: the value, or `None` for a missing key.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let out = self.run(&["get", key]).await?;
        match out.status.code() {
            Some(0) => {
                let pair: Pair = serde_json::from_str(&out.stdout)
                    .with_context(|| format!("parsing kv get output {:?}", out.stdout))?;
                Ok(Some(pair.value))
            }
            Some(1) => Ok(None),
            _ => bail!(
                "kv get {key:?} failed ({}): {}",
                out.status,
                out.stderr.trim()
            ),
        }
    }

    /// `kv scan START [END]`: every pair in `[start, end)`, across ranges.
    pub async fn scan(&self, start: &str, end: Option<&str>) -> anyhow::Result<Vec<Pair>> {
        let mut args = vec!["scan", start];
        args.extend(end);
        let out = self.run(&args).await?;
        if !out.status.success() {
            bail!("kv scan failed ({}): {}", out.status, out.stderr.trim());
        }
        serde_json::from_str(&out.stdout).context("parsing kv scan output")
    }
}
