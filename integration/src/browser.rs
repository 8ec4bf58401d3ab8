//! A real headless Chromium, driven over WebDriver, for the dashboard's
//! end-to-end test: `chromedriver` as a child process on a free loopback
//! port, `fantoccini` as the client, a fresh profile directory per browser.
//!
//! Why a real browser: the dashboard is JavaScript that renders the API's
//! JSON and follows a server-sent event stream; only a browser runs that
//! code as users do. Why Debian's `chromium` and `chromium-driver`: these
//! machines reach the Debian mirror and nothing else, and the two packages
//! are built from one source, so their versions always match. `bin/test`
//! installs them (`bin/lib/browser.sh`); a missing one is an error naming
//! that command, never a skipped test.
//!
//! Chromium runs with everything that phones home turned off: the network
//! here is closed, and without those flags it waits on refused connections.
//! Everything (chromedriver and the Chromium it started, one process group)
//! is killed on drop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::ports::free_addr;
use crate::wait;

/// Where Debian's `chromium` puts the browser (`RANGER_CHROMIUM` overrides).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Where Debian's `chromium-driver` puts chromedriver
/// (`RANGER_CHROMEDRIVER` overrides).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The flags Chromium needs here: headless, as root in a container (no
/// sandbox), and nothing that reaches the (closed) network.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];

fn tool(env: &str, default: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    if !path.is_file() {
        bail!(
            "{} is missing: the dashboard's browser test needs Debian's `chromium` and \
             `chromium-driver`. Run `bin/test` (it installs them through \
             bin/lib/browser.sh's ensure_browser), or `apt-get install chromium chromium-driver`; \
             {env} names another binary",
            path.display()
        );
    }
    Ok(path)
}

/// A headless Chromium session. Dropping it kills chromedriver and the
/// browser.
#[derive(Debug)]
pub struct Browser {
    client: Client,
    driver: Child,
    // Last: removed once the browser is gone.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile.
    pub async fn start() -> anyhow::Result<Browser> {
        let chromium = tool("RANGER_CHROMIUM", CHROMIUM)?;
        let chromedriver = tool("RANGER_CHROMEDRIVER", CHROMEDRIVER)?;
        let port = free_addr()?.port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that drop kills the browsers it started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", chromedriver.display()))?;
        let profile = tempfile::Builder::new()
            .prefix("ranger-chromium-")
            .tempdir()
            .context("creating a Chromium profile directory")?;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            bail!("capabilities are not a JSON object");
        };
        let url = format!("http://127.0.0.1:{port}");
        let mut guard = DriverGuard(Some(driver));
        // chromedriver takes a moment to listen; a session takes longer.
        let client = wait::until(
            "chromedriver starts a Chromium session",
            Duration::from_secs(60),
            async || {
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&url)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
        let driver = guard.0.take().context("chromedriver handle")?;
        Ok(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// The WebDriver client, for clicks, typing and lookups.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("opening {url}"))
    }

    /// Runs `script` (a function body: `return ...;`) in the page and answers
    /// its value as `T`.
    pub async fn eval<T: DeserializeOwned>(&self, script: &str) -> anyhow::Result<T> {
        let value = self
            .client
            .execute(script, Vec::new())
            .await
            .with_context(|| format!("running in the page: {script}"))?;
        serde_json::from_value(value.clone())
            .with_context(|| format!("the page answered {value} to: {script}"))
    }

    /// Polls `script` until it answers something other than `null` (what
    /// it answers then), for at most `timeout`.
    pub async fn wait_for<T: DeserializeOwned>(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
    ) -> anyhow::Result<T> {
        wait::until(what, timeout, async || {
            let value: Value = self.eval(script).await.map_err(|e| format!("{e:#}"))?;
            if value.is_null() {
                return Err(format!("{script} answered null"));
            }
            serde_json::from_value(value).map_err(|e| e.to_string())
        })
        .await
    }

    /// Saves a PNG screenshot of the viewport to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Saves `<name>.png` (a screenshot) and `<name>.html` (the page as it
    /// is now, after the script rendered it) to `dir`.
    pub async fn save_page(&self, dir: &Path, name: &str) -> anyhow::Result<()> {
        self.screenshot(&dir.join(format!("{name}.png"))).await?;
        let html = self.client.source().await.context("reading the page")?;
        let path = dir.join(format!("{name}.html"));
        std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(mut self) -> anyhow::Result<()> {
        let closed = self.client.clone().close().await;
        let _ = self.driver.kill().await;
        closed.context("closing the browser session")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&self.driver);
    }
}

/// Kills chromedriver's process group if starting the session fails.
struct DriverGuard(Option<Child>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if let Some(child) = &self.0 {
            kill_group(child);
        }
    }
}

/// SIGKILL to the process group chromedriver leads (it and the browsers it
/// started), by its id.
fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Where a failing browser test saves screenshots and page sources:
/// `$RANGER_IT_ARTIFACTS/<test>`, else `target/test-artifacts/<test>` in the
/// build's target directory.
pub fn artifacts_dir(test: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("RANGER_IT_ARTIFACTS") {
        return PathBuf::from(dir).join(test);
    }
    // The test executable is target/<profile>/deps/<test>.
    let target = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(Path::to_path_buf)
    });
    target
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("test-artifacts")
        .join(test)
}
