//! A real Consul agent for tests: `consul agent -dev` on free loopback ports,
//! with its own data directory, killed when the handle is dropped (also when a
//! test panics). Tests run against the real thing because Consul's semantics
//! (indexes, sessions, check states) are what Ranger's safety rests on.
//!
//! The binary comes from `$RANGER_CONSUL_BIN` if set, else from the
//! repository's `bin/consul path`, which finds or builds one.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use reqwest::Method;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::client::{Client, Scope};
use crate::config::ClientConfig;

/// How long an agent may take to elect itself leader; generous, since tests
/// run in parallel on small machines.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts retried when the agent dies at once (usually a port taken between
/// picking it and Consul binding it).
const START_ATTEMPTS: usize = 3;
/// Lines of the agent's log shown in errors.
const LOG_TAIL_LINES: usize = 40;

/// Why a test agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum TestAgentError {
    /// No consul binary could be found or built.
    #[error("no consul binary: {0}")]
    Binary(String),
    /// A file or process operation failed.
    #[error("could not start consul: {0}")]
    Io(#[from] std::io::Error),
    /// The agent exited during startup.
    #[error("consul agent exited during startup ({status}); its log ends with:\n{log}")]
    Exited {
        /// How it exited.
        status: ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// The agent did not become ready in time.
    #[error("consul agent not ready after {timeout:?} ({what}); its log ends with:\n{log}")]
    NotReady {
        /// The time allowed.
        timeout: Duration,
        /// What it was still waiting for.
        what: String,
        /// The end of its log.
        log: String,
    },
    /// The client could not be made.
    #[error(transparent)]
    Client(#[from] crate::Error),
}

/// A running `consul agent -dev`, stopped on drop.
#[derive(Debug)]
pub struct TestAgent {
    child: Child,
    http_addr: SocketAddr,
    node: String,
    log_path: PathBuf,
    client: Client,
    // Last, so that it is removed after the agent is killed.
    _dir: tempfile::TempDir,
}

impl TestAgent {
    /// Starts an agent and waits until it is leader and its node is in the
    /// catalog, so that sessions and service registrations work at once.
    pub async fn start() -> Result<Self, TestAgentError> {
        let binary = consul_binary().await?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary).await {
                Ok(agent) => return Ok(agent),
                Err(error @ TestAgentError::Exited { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| TestAgentError::Binary("no start attempted".into())))
    }

    async fn start_once(binary: &Path) -> Result<Self, TestAgentError> {
        let dir = tempfile::Builder::new()
            .prefix("ranger-consul-")
            .tempdir()?;
        let [http, serf_lan, serf_wan, server] = free_ports()?;
        let node = format!("ranger-test-{http}");
        let log_path = dir.path().join("agent.log");
        let log = File::create(&log_path)?;
        let child = Command::new(binary)
            .arg("agent")
            .arg("-dev")
            .args(["-bind", "127.0.0.1", "-client", "127.0.0.1"])
            .args(["-node", &node])
            .args(["-http-port", &http.to_string()])
            .args([
                "-grpc-port",
                "-1",
                "-grpc-tls-port",
                "-1",
                "-dns-port",
                "-1",
            ])
            .args(["-serf-lan-port", &serf_lan.to_string()])
            .args(["-serf-wan-port", &serf_wan.to_string()])
            .args(["-server-port", &server.to_string()])
            .arg("-data-dir")
            .arg(dir.path().join("data"))
            .args(["-log-level", "info"])
            .args(["-hcl", "disable_update_check = true"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let http_addr = SocketAddr::from(([127, 0, 0, 1], http));
        let client = Client::new(
            ClientConfig::new(format!("http://{http_addr}"))
                .with_request_timeout(Duration::from_secs(5)),
        )?;
        let mut agent = Self {
            child,
            http_addr,
            node,
            log_path,
            client,
            _dir: dir,
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    /// Waits for a leader and for the agent's node in the catalog.
    async fn wait_ready(&mut self) -> Result<(), TestAgentError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut waiting_for = "a leader";
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(TestAgentError::Exited {
                    status,
                    log: self.log_tail(LOG_TAIL_LINES),
                });
            }
            if let Ok(Some(_)) = self.client.status_leader().await {
                waiting_for = "its node in the catalog";
                if self.node_registered().await {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(TestAgentError::NotReady {
                    timeout: START_TIMEOUT,
                    what: format!("waiting for {waiting_for}"),
                    log: self.log_tail(LOG_TAIL_LINES),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn node_registered(&self) -> bool {
        let url = self.client.url(&["catalog", "node"], Some(&self.node));
        let answer = self
            .client
            .call(Method::GET, url, Scope::Cluster)
            .send()
            .await;
        match answer {
            Ok(answer) => matches!(answer.json::<serde_json::Value>().await, Ok(v) if !v.is_null()),
            Err(_) => false,
        }
    }

    /// The agent's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The agent's HTTP base URL, e.g. `http://127.0.0.1:41234`.
    pub fn address(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    /// The agent's node name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// A client for this agent.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The last `lines` lines of the agent's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // Already exited is fine; there is nothing more to do on failure.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Four distinct free loopback ports: all bound at once so they differ, then
/// released for Consul. Another process may take one meanwhile; the caller
/// retries when the agent then fails to start.
fn free_ports() -> std::io::Result<[u16; 4]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let mut ports = [0u16; 4];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        // The tail is in the last 64 KiB, whatever the log's length.
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The consul binary, found once per process: `$RANGER_CONSUL_BIN`, else the
/// output of the repository's `bin/consul path` (which may build it; its
/// progress goes to stderr).
async fn consul_binary() -> Result<PathBuf, TestAgentError> {
    static BINARY: OnceCell<Result<PathBuf, String>> = OnceCell::const_new();
    BINARY
        .get_or_init(resolve_binary)
        .await
        .clone()
        .map_err(TestAgentError::Binary)
}

async fn resolve_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("RANGER_CONSUL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest_dir
        .parent()
        .map(|root| root.join("bin").join("consul"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{} has no bin/consul beside it; set RANGER_CONSUL_BIN to a consul binary",
                manifest_dir.display()
            )
        })?;
    let output = tokio::process::Command::new(&script)
        .arg("path")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} path failed ({})",
            script.display(),
            output.status
        ));
    }
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if path.is_empty() {
        return Err(format!("{} path printed nothing", script.display()));
    }
    Ok(PathBuf::from(path))
}
