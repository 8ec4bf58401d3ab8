//! A real Consul agent for tests: `consul agent -dev` on free loopback ports,
//! with its own data directory, killed when the handle is dropped (also when a
//! test panics). Tests run against the real thing because Consul's semantics
//! (indexes, sessions, check states) are what Ranger's safety rests on.
//!
//! The binary comes from `$RANGER_CONSUL_BIN` if set, else from the
//! repository's `bin/consul path`, which finds or builds one.
//!
//! With the cargo feature `testcontainers` and `RANGER_CONSUL_DOCKER=1` in the
//! environment, the agent is instead the `hashicorp/consul` image of
//! `testcontainers-modules`, run in Docker: for machines that have Docker but
//! neither a consul binary nor the Go toolchain to build one. The feature is off
//! by default because CI has no Docker engine, and the variable is needed as
//! well so that enabling the feature (e.g. `--all-features`) alone changes no
//! test run. When Docker cannot be reached, [`TestAgent::start`] fails with
//! `TestAgentError::DockerUnavailable`, which [`TestAgent::start_or_skip`]
//! and [`test_agent_or_skip!`](crate::test_agent_or_skip) turn into a skip
//! (Rust tests cannot be marked skipped at run time, so a skipped test returns
//! early and passes, after saying so on stderr).
//!
//! In the container, the agent's own health checks run inside Docker's
//! network, so checks that point at a server on the host's loopback do not
//! reach it; KV, sessions, catalog and health queries behave as with the binary.

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
    /// `RANGER_CONSUL_DOCKER=1` asked for the container, but no Docker engine
    /// answered: a reason to skip a test, not to fail it (see
    /// [`TestAgent::start_or_skip`]).
    #[cfg(feature = "testcontainers")]
    #[error(
        "Docker not available (RANGER_CONSUL_DOCKER=1 with feature testcontainers): {0}; \
         unset RANGER_CONSUL_DOCKER to use the consul binary instead"
    )]
    DockerUnavailable(String),
    /// Docker answered, but the Consul container could not be started.
    #[cfg(feature = "testcontainers")]
    #[error("could not start the consul container: {0}")]
    Docker(String),
}

/// A running `consul agent -dev`, stopped on drop.
#[derive(Debug)]
pub struct TestAgent {
    http_addr: SocketAddr,
    node: String,
    client: Client,
    backend: Backend,
}

/// What runs the agent; each variant stops it when dropped.
#[derive(Debug)]
enum Backend {
    /// A child process of the consul binary.
    Process(ProcessAgent),
    /// A Docker container of the Consul image (boxed: its handle is large).
    #[cfg(feature = "testcontainers")]
    Container(Box<docker::ContainerAgent>),
}

impl Backend {
    /// `Some(how)` once the agent has exited.
    async fn exited(&mut self) -> Result<Option<TestAgentError>, TestAgentError> {
        match self {
            Backend::Process(process) => {
                Ok(process
                    .child
                    .try_wait()?
                    .map(|status| TestAgentError::Exited {
                        status,
                        log: log_tail(&process.log_path, LOG_TAIL_LINES),
                    }))
            }
            #[cfg(feature = "testcontainers")]
            Backend::Container(container) => Ok(container.exited().await),
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        match self {
            Backend::Process(process) => log_tail(&process.log_path, lines),
            #[cfg(feature = "testcontainers")]
            Backend::Container(container) => container.log_tail(lines),
        }
    }
}

/// A `consul agent -dev` child process with its data directory.
#[derive(Debug)]
struct ProcessAgent {
    child: Child,
    log_path: PathBuf,
    // Last, so that it is removed after the agent is killed.
    _dir: tempfile::TempDir,
}

impl Drop for ProcessAgent {
    fn drop(&mut self) {
        // Already exited is fine; there is nothing more to do on failure.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestAgent {
    /// Starts an agent and waits until it is leader and its node is in the
    /// catalog, so that sessions and service registrations work at once.
    ///
    /// With the feature `testcontainers` and `RANGER_CONSUL_DOCKER=1`, the
    /// agent is a Docker container (see the module's documentation), and no
    /// reachable Docker engine is `TestAgentError::DockerUnavailable`.
    pub async fn start() -> Result<Self, TestAgentError> {
        #[cfg(feature = "testcontainers")]
        if docker::requested() {
            return Self::start_container().await;
        }
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
            http_addr,
            node,
            client,
            backend: Backend::Process(ProcessAgent {
                child,
                log_path,
                _dir: dir,
            }),
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    /// [`TestAgent::start`], except that a missing Docker engine (only
    /// possible with the feature `testcontainers` and `RANGER_CONSUL_DOCKER=1`)
    /// prints `SKIPPED: Docker not available (...): <reason>` to stderr and
    /// gives `None`, for the test to return early. Any other failure panics with
    /// its reason, as a test would on `start()`'s error. With default features
    /// this never gives `None`.
    pub async fn start_or_skip() -> Option<Self> {
        match Self::start().await {
            Ok(agent) => Some(agent),
            #[cfg(feature = "testcontainers")]
            Err(TestAgentError::DockerUnavailable(reason)) => {
                eprintln!(
                    "SKIPPED: Docker not available (RANGER_CONSUL_DOCKER=1 with feature \
                     testcontainers): {reason}"
                );
                None
            }
            Err(error) => panic!("{error}"),
        }
    }

    /// Starts the Consul image in Docker; its HTTP port 8500, which the image
    /// exposes, is published on an ephemeral host port.
    #[cfg(feature = "testcontainers")]
    async fn start_container() -> Result<Self, TestAgentError> {
        let node = format!("ranger-test-{:08x}", rand::random::<u32>());
        let (container, http_addr) = docker::ContainerAgent::start(&node).await?;
        let client = Client::new(
            ClientConfig::new(format!("http://{http_addr}"))
                .with_request_timeout(Duration::from_secs(5)),
        )?;
        let mut agent = Self {
            http_addr,
            node,
            client,
            backend: Backend::Container(Box::new(container)),
        };
        agent.wait_ready().await?;
        Ok(agent)
    }

    /// Waits for a leader and for the agent's node in the catalog.
    async fn wait_ready(&mut self) -> Result<(), TestAgentError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut waiting_for = "a leader";
        loop {
            if let Some(exited) = self.backend.exited().await? {
                return Err(exited);
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
        self.backend.log_tail(lines)
    }
}

/// `let agent = test_agent_or_skip!();` in an async test: a started
/// [`TestAgent`](crate::test_agent::TestAgent), or, when
/// [`TestAgent::start_or_skip`] gives `None` (no Docker with
/// `RANGER_CONSUL_DOCKER=1`), an early `return` from the test, which then
/// passes after printing why it was skipped.
#[macro_export]
macro_rules! test_agent_or_skip {
    () => {
        match $crate::test_agent::TestAgent::start_or_skip().await {
            ::std::option::Option::Some(agent) => agent,
            ::std::option::Option::None => return,
        }
    };
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

/// The Docker backend: the Consul image of `testcontainers-modules`.
#[cfg(feature = "testcontainers")]
mod docker {
    use std::collections::VecDeque;
    use std::error::Error as _;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex, PoisonError};

    use testcontainers_modules::consul::Consul;
    use testcontainers_modules::testcontainers::bollard::errors::Error as BollardError;
    use testcontainers_modules::testcontainers::core::error::ClientError;
    use testcontainers_modules::testcontainers::core::logs::LogFrame;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt, TestcontainersError};

    use super::{LOG_TAIL_LINES, START_TIMEOUT, TestAgentError};

    /// The Consul HTTP port inside the container.
    const HTTP_PORT: u16 = 8500;
    /// Log lines kept for failure messages.
    const LOG_LINES_KEPT: usize = 1000;

    /// Whether `RANGER_CONSUL_DOCKER=1` asks for the container.
    pub(super) fn requested() -> bool {
        std::env::var_os("RANGER_CONSUL_DOCKER").is_some_and(|v| v == "1")
    }

    /// The log lines the container printed, newest last, at most
    /// [`LOG_LINES_KEPT`]: collected as they come, since reading the logs from
    /// Docker is async and [`super::TestAgent::log_tail`] is not.
    type Log = Arc<Mutex<VecDeque<String>>>;

    /// A running Consul container, removed when dropped (by testcontainers'
    /// own drop, which also works on a current-thread runtime).
    #[derive(Debug)]
    pub(super) struct ContainerAgent {
        container: ContainerAsync<Consul>,
        log: Log,
    }

    impl ContainerAgent {
        /// Starts the container with the given node name and gives it with the
        /// host address of its HTTP port.
        pub(super) async fn start(node: &str) -> Result<(Self, SocketAddr), TestAgentError> {
            let log: Log = Arc::default();
            let sink = Arc::clone(&log);
            let config = serde_json::json!({
                "node_name": node,
                "disable_update_check": true,
            });
            let container = Consul::default()
                .with_local_config(config)
                .with_startup_timeout(START_TIMEOUT)
                .with_log_consumer(move |frame: &LogFrame| {
                    let text = String::from_utf8_lossy(frame.bytes());
                    let mut lines = sink.lock().unwrap_or_else(PoisonError::into_inner);
                    for line in text.lines() {
                        if lines.len() == LOG_LINES_KEPT {
                            lines.pop_front();
                        }
                        lines.push_back(line.to_owned());
                    }
                })
                .start()
                .await
                .map_err(classify)?;
            let agent = Self { container, log };
            let addr = agent.http_addr().await?;
            Ok((agent, addr))
        }

        /// The host address that Docker published the HTTP port on.
        async fn http_addr(&self) -> Result<SocketAddr, TestAgentError> {
            let host = self.container.get_host().await.map_err(classify)?;
            let port = self
                .container
                .get_host_port_ipv4(HTTP_PORT)
                .await
                .map_err(classify)?;
            // `localhost` (the usual host) may resolve to ::1 first, but the
            // port is the IPv4 one.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host(format!("{host}:{port}"))
                .await?
                .collect();
            addrs
                .iter()
                .find(|addr| addr.is_ipv4())
                .or(addrs.first())
                .copied()
                .ok_or_else(|| TestAgentError::Docker(format!("{host} resolves to no address")))
        }

        /// `Some(error)` once the container has stopped.
        pub(super) async fn exited(&self) -> Option<TestAgentError> {
            match self.container.is_running().await {
                Ok(true) => None,
                Ok(false) => Some(TestAgentError::Docker(format!(
                    "the container exited during startup; its log ends with:\n{}",
                    self.log_tail(LOG_TAIL_LINES)
                ))),
                Err(error) => Some(classify(error)),
            }
        }

        pub(super) fn log_tail(&self, lines: usize) -> String {
            let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            let skip = log.len().saturating_sub(lines);
            log.iter()
                .skip(skip)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    /// [`TestAgentError::DockerUnavailable`] when no Docker engine answered
    /// (no client, no socket, connection refused or timed out), so that the
    /// test can be skipped; any other failure is a real one.
    fn classify(error: TestcontainersError) -> TestAgentError {
        let unreachable = match &error {
            TestcontainersError::Client(
                ClientError::Init(_)
                | ClientError::Configuration(_)
                | ClientError::InvalidDockerHost(_),
            ) => true,
            TestcontainersError::Client(
                ClientError::PullImage { err, .. }
                | ClientError::CreateContainer(err)
                | ClientError::StartContainer(err)
                | ClientError::ListContainers(err)
                | ClientError::InspectContainer(err),
            ) => not_answered(err),
            _ => false,
        };
        if unreachable {
            TestAgentError::DockerUnavailable(error.to_string())
        } else {
            TestAgentError::Docker(error.to_string())
        }
    }

    /// Whether the request never got an answer from Docker: a missing
    /// socket, a timeout, or an I/O error anywhere in the error's causes
    /// (refused, not found, permission denied on the socket).
    fn not_answered(err: &BollardError) -> bool {
        if matches!(
            err,
            BollardError::SocketNotFoundError(_)
                | BollardError::RequestTimeoutError
                | BollardError::UnsupportedURISchemeError { .. }
                | BollardError::IOError { .. }
        ) {
            return true;
        }
        let mut cause = err.source();
        while let Some(error) = cause {
            if error.is::<std::io::Error>() {
                return true;
            }
            cause = error.source();
        }
        false
    }
}

/// The Docker backend end to end, through the skip macro: with
/// `RANGER_CONSUL_DOCKER=1` it starts a container (or prints the skip when no
/// Docker answers); without it there is nothing Docker-specific to test.
#[cfg(all(test, feature = "testcontainers"))]
mod docker_tests {
    #[tokio::test]
    async fn container_agent_serves_kv_or_is_skipped() {
        if !super::docker::requested() {
            return;
        }
        let agent = crate::test_agent_or_skip!();
        let leader = agent.client().status_leader().await;
        assert!(
            matches!(leader, Ok(Some(_))),
            "no leader: {leader:?}\n{}",
            agent.log_tail(20)
        );
    }
}
