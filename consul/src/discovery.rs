//! Service discovery through Consul, following the conventions Ranger's
//! reference nodes use (PROTOCOL.md, "Consul conventions") so that mixed
//! clusters work:
//!
//! - a node registers itself with its **local** agent as service `node`
//!   (configurable), with service ID `<port>` when its host is `localhost` or
//!   `127.0.0.1` and `<host>:<port>` otherwise, its address and port set, and a
//!   gRPC health check on `grpc.health.v1.Health` (every 3 s, 1 s timeout,
//!   deregistered after 10 s critical) — see [`ServiceRegistration`];
//! - the controller and the proxy follow the *passing* instances of that
//!   service with blocking queries — see [`watch_service`].
//!
//! A node (e.g. `kv-node`) does:
//!
//! ```no_run
//! # async fn run(client: ranger_consul::Client) -> ranger_consul::Result<()> {
//! use ranger_consul::discovery::{RegistrationConfig, ServiceRegistration};
//! // The node's gRPC server (with a grpc.health.v1.Health service reporting ""
//! // as SERVING) listens on 10.0.0.5:7001.
//! let registration =
//!     ServiceRegistration::start(client, RegistrationConfig::new("10.0.0.5", 7001)).await?;
//! // ... serve until asked to stop ...
//! registration.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! and a proxy (or the controller) does:
//!
//! ```no_run
//! # async fn run(client: ranger_consul::Client) {
//! let (mut nodes, watch) = ranger_consul::discovery::watch_service(client, "node");
//! watch.synced().await; // optional: wait for Consul's first answer
//! loop {
//!     let addrs: Vec<String> = nodes.borrow_and_update().iter().map(|i| i.addr()).collect();
//!     println!("healthy nodes: {addrs:?}");
//!     if nodes.changed().await.is_err() {
//!         break; // the watch was dropped
//!     }
//! }
//! # }
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{self, CheckDefinition, CheckStatus};
use crate::blocking::BlockingQuery;
use crate::client::{Client, Scope};
use crate::error::{Error, Result};

/// The service name the reference nodes register under, and so the default.
pub const DEFAULT_SERVICE_NAME: &str = "node";
/// Default time between the agent's gRPC health checks.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3);
/// Default time limit of one gRPC health check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time a service may stay critical before the agent removes it, so
/// that dead nodes leave the catalog by themselves.
pub const DEFAULT_DEREGISTER_CRITICAL_AFTER: Duration = Duration::from_secs(10);
/// Default time between checks that the agent still has the registration.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(3);
/// Default longest wait of one blocking query in [`watch_service`]: short
/// enough that a silently dead connection is noticed within a minute.
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(60);

/// The first pause after a failed registration check.
const RETRY_START: Duration = Duration::from_millis(250);
/// The longest pause between failed registration checks.
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The service ID the reference nodes use for a node at `host:port`: `<port>`
/// when `host` is `localhost` or `127.0.0.1` (single-machine clusters, where the
/// port alone tells nodes apart), `<host>:<port>` otherwise. The controller uses
/// this ID as the node's ID, so every implementation must derive it alike.
pub fn default_service_id(host: &str, port: u16) -> String {
    if host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" {
        port.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port`, with an IPv6 literal host bracketed so the result parses as a
/// socket address or URL authority.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// How a node registers itself. [`RegistrationConfig::new`] gives the reference
/// conventions; change fields to deviate (e.g. another service name to run two
/// clusters against one Consul).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrationConfig {
    /// Service name (default [`DEFAULT_SERVICE_NAME`], `node`); what watchers
    /// pass to [`watch_service`].
    pub service_name: String,
    /// The host others reach the node at; registered as the service address.
    pub host: String,
    /// The node's gRPC port; registered as the service port.
    pub port: u16,
    /// Service ID; `None` derives it with [`default_service_id`].
    pub service_id: Option<String>,
    /// Service tags.
    pub tags: Vec<String>,
    /// Service metadata.
    pub meta: BTreeMap<String, String>,
    /// Where the agent sends `grpc.health.v1.Health/Check`; `None` means
    /// `host:port`. Append `/name` to check a named service instead of the
    /// server's overall health (the empty service name).
    pub check_target: Option<String>,
    /// Time between health checks (default 3 s).
    pub check_interval: Duration,
    /// Time limit of one health check (default 1 s).
    pub check_timeout: Duration,
    /// How long the check may stay critical before the agent deregisters the
    /// service (default 10 s; `None`: never). Consul reaps such services on its
    /// own schedule (every 30 s by default), so removal may take longer.
    pub deregister_critical_after: Option<Duration>,
    /// The check's status until its first run. `None` keeps Consul's default,
    /// critical, so a node is not advertised before the agent has seen it
    /// healthy. Consul runs the first check at a random point within the first
    /// interval.
    pub initial_status: Option<CheckStatus>,
    /// How often the background task checks that the agent still has the
    /// service (default 3 s), re-registering it when not.
    pub resync_interval: Duration,
}

impl RegistrationConfig {
    /// The reference conventions for a node serving gRPC at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            host: host.into(),
            port,
            service_id: None,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            check_target: None,
            check_interval: DEFAULT_CHECK_INTERVAL,
            check_timeout: DEFAULT_CHECK_TIMEOUT,
            deregister_critical_after: Some(DEFAULT_DEREGISTER_CRITICAL_AFTER),
            initial_status: None,
            resync_interval: DEFAULT_RESYNC_INTERVAL,
        }
    }

    /// Sets the service name.
    pub fn with_service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Sets an explicit service ID instead of the derived one.
    pub fn with_service_id(mut self, id: impl Into<String>) -> Self {
        self.service_id = Some(id.into());
        self
    }

    /// The service ID to register: the explicit one, else
    /// [`default_service_id`].
    pub fn service_id(&self) -> String {
        self.service_id
            .clone()
            .unwrap_or_else(|| default_service_id(&self.host, self.port))
    }

    /// The health check's target: the explicit one, else `host:port`.
    pub fn check_target(&self) -> String {
        self.check_target
            .clone()
            .unwrap_or_else(|| join_host_port(&self.host, self.port))
    }

    /// Refuses what Consul would refuse or misread, before anything is sent.
    pub fn validate(&self) -> Result<()> {
        let invalid = |what: &str| Err(Error::InvalidArgument(format!("registration: {what}")));
        if self.service_name.trim().is_empty() {
            return invalid("empty service name");
        }
        if self.host.trim().is_empty() {
            return invalid("empty host");
        }
        if self.port == 0 {
            return invalid("port 0");
        }
        if self.service_id().trim().is_empty() {
            return invalid("empty service ID");
        }
        if self.check_interval.is_zero() || self.check_timeout.is_zero() {
            return invalid("zero check interval or timeout");
        }
        if self.resync_interval.is_zero() {
            return invalid("zero resync interval");
        }
        Ok(())
    }

    /// The agent registration this configuration stands for.
    pub fn to_agent_registration(&self) -> agent::ServiceRegistration {
        let mut check =
            CheckDefinition::grpc(self.check_target(), self.check_interval, self.check_timeout);
        check.name = Some("grpc.health.v1.Health".to_owned());
        check.initial_status = self.initial_status;
        check.deregister_critical_service_after = self.deregister_critical_after;
        agent::ServiceRegistration {
            id: Some(self.service_id()),
            name: self.service_name.clone(),
            address: Some(self.host.clone()),
            port: Some(self.port),
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            checks: vec![check],
        }
    }
}

/// A service as the local agent holds it (`/v1/agent/service/<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    /// Service ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Service address (empty: the node's).
    #[serde(default)]
    pub address: String,
    /// Port.
    #[serde(default)]
    pub port: u16,
}

impl Client {
    /// The service `service_id` as the local agent holds it, or `None` if the
    /// agent does not know it (never registered, deregistered, or forgotten by
    /// a restart).
    pub async fn agent_service(&self, service_id: &str) -> Result<Option<AgentService>> {
        let url = self.url(&["agent", "service"], Some(service_id));
        let answer = self
            .call(reqwest::Method::GET, url, Scope::Agent)
            .send_raw()
            .await?;
        if answer.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(answer.success().await?.json().await?))
    }
}

/// A node's registration with its local agent, kept in place by a background
/// task: if the agent forgets the service (it restarted without its data, or it
/// deregistered the service after the check stayed critical, or someone removed
/// it), the task registers it again within about
/// [`RegistrationConfig::resync_interval`]. Errors talking to the agent are
/// logged and retried with backoff; the task never panics.
///
/// Call [`ServiceRegistration::deregister`] on clean shutdown so that watchers
/// drop the node at once. Dropping the registration only stops the task: the
/// service then stays until its check goes critical (once the node stops
/// serving) and the agent deregisters it.
#[derive(Debug)]
pub struct ServiceRegistration {
    client: Client,
    service_id: String,
    service_name: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl ServiceRegistration {
    /// Registers the service now, returning the agent's error if that fails
    /// (so that a misconfiguration shows at startup), then keeps it registered
    /// from a background task. Must be called within a tokio runtime.
    pub async fn start(client: Client, config: RegistrationConfig) -> Result<Self> {
        config.validate()?;
        let registration = config.to_agent_registration();
        client.agent_service_register(&registration).await?;
        tracing::info!(
            service = %config.service_name,
            service_id = %config.service_id(),
            check = %config.check_target(),
            "registered with the Consul agent"
        );
        Ok(Self::spawn_task(client, &config, registration, true))
    }

    /// Like [`ServiceRegistration::start`] but does not wait: the first
    /// registration happens in the background, retried until the agent takes
    /// it, so a node can start while its agent is still down. Fails only on an
    /// invalid configuration. Must be called within a tokio runtime.
    pub fn spawn(client: Client, config: RegistrationConfig) -> Result<Self> {
        config.validate()?;
        let registration = config.to_agent_registration();
        Ok(Self::spawn_task(client, &config, registration, false))
    }

    fn spawn_task(
        client: Client,
        config: &RegistrationConfig,
        registration: agent::ServiceRegistration,
        registered: bool,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let service_id = config.service_id();
        let task = tokio::spawn(keep_registered(
            client.clone(),
            registration,
            config.resync_interval,
            registered,
            stopped,
        ));
        Self {
            client,
            service_id,
            service_name: config.service_name.clone(),
            stop,
            task: Some(task),
        }
    }

    /// The registered service ID (what the controller uses as the node ID).
    pub fn service_id(&self) -> &str {
        &self.service_id
    }

    /// The registered service name.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Stops the background task, then removes the service from the agent so
    /// that watchers drop the node at once. A service the agent no longer has
    /// counts as removed. The task is allowed to finish a request in flight
    /// first, so that it cannot register the service again after this.
    pub async fn deregister(mut self) -> Result<()> {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(%error, "the registration task panicked");
        }
        match self.client.agent_service_deregister(&self.service_id).await {
            Ok(()) => {}
            Err(Error::Status { status: 404, .. }) => {}
            Err(error) => return Err(error),
        }
        tracing::info!(service_id = %self.service_id, "deregistered from the Consul agent");
        Ok(())
    }
}

impl Drop for ServiceRegistration {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What one pass of the registration task found.
#[derive(Debug, PartialEq, Eq)]
enum Resync {
    /// The agent has the service as registered.
    Present,
    /// It did not (or held something else under the ID); registered again.
    Registered,
}

async fn resync(client: &Client, registration: &agent::ServiceRegistration) -> Result<Resync> {
    let id = registration.id.as_deref().unwrap_or(&registration.name);
    if let Some(held) = client.agent_service(id).await?
        && held.service == registration.name
        && Some(held.port) == registration.port
        && registration
            .address
            .as_deref()
            .is_none_or(|a| a == held.address)
    {
        return Ok(Resync::Present);
    }
    client.agent_service_register(registration).await?;
    Ok(Resync::Registered)
}

/// Checks every `interval` that the agent holds the registration and puts it
/// back if not. Stops when `stopped` turns true or its sender is dropped; a
/// request in flight is finished first, so a stop followed by a deregistration
/// cannot be undone by a late registration.
async fn keep_registered(
    client: Client,
    registration: agent::ServiceRegistration,
    interval: Duration,
    registered: bool,
    mut stopped: watch::Receiver<bool>,
) {
    let id = registration.id.clone().unwrap_or_default();
    let mut failures: u32 = 0;
    let mut pause = if registered { interval } else { Duration::ZERO };
    loop {
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            // Stopped (Ok), or the registration was dropped (Err).
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        match resync(&client, &registration).await {
            Ok(outcome) => {
                if outcome == Resync::Registered {
                    if registered || failures > 0 {
                        tracing::warn!(service_id = %id, "the Consul agent had lost the service; registered it again");
                    } else {
                        tracing::info!(service_id = %id, "registered with the Consul agent");
                    }
                } else if failures > 0 {
                    tracing::info!(service_id = %id, "the Consul agent is reachable again");
                }
                failures = 0;
                pause = interval;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                pause = backoff(failures);
                tracing::warn!(service_id = %id, %error, retry_in = ?pause, "could not check the registration with the Consul agent");
            }
        }
    }
}

/// The pause after `failures` consecutive failures: doubling from 250 ms to
/// 10 s, with jitter so that many nodes do not retry in step.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = RETRY_START.saturating_mul(1 << exp).min(RETRY_MAX);
    let half = base / 2;
    let jitter_ms = rand::random_range(0..=half.as_millis().max(1) as u64);
    half + Duration::from_millis(jitter_ms)
}

/// One healthy instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceInstance {
    /// Service ID; Ranger's controller uses it as the node ID.
    pub id: String,
    /// Address to reach it: the service address, else its Consul node's.
    pub address: String,
    /// Port.
    pub port: u16,
}

impl ServiceInstance {
    /// `host:port` to dial (IPv6 literals bracketed).
    pub fn addr(&self) -> String {
        join_host_port(&self.address, self.port)
    }
}

/// The task behind [`watch_service`]; dropping it stops the task (the
/// receiver then keeps its last value and reports the channel closed).
#[derive(Debug)]
pub struct ServiceWatch {
    service: String,
    synced: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl ServiceWatch {
    /// The watched service name.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// True once Consul has answered at least once, i.e. the published set is
    /// Consul's and not the initial empty one.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until Consul has answered once (forever while it is unreachable;
    /// wrap in a timeout to bound it).
    pub async fn synced(&self) {
        let mut synced = self.synced.clone();
        // An error means the task ended, which only happens on drop.
        let _ = synced.wait_for(|s| *s).await;
    }
}

impl Drop for ServiceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the passing instances of service `name` (`/v1/health/service/<name>
/// ?passing`) with blocking queries and publishes the set, sorted by ID, each
/// time it changes. The receiver starts empty; see [`ServiceWatch::synced`].
///
/// While Consul is unreachable the last known set stays published (nodes are
/// not declared gone because Consul is), errors are logged and retried with
/// backoff. Blocking queries wait at most [`DEFAULT_WATCH_WAIT`]; see
/// [`watch_service_with_wait`]. The task stops when the returned
/// [`ServiceWatch`] is dropped or every receiver is.
/// Must be called within a tokio runtime.
pub fn watch_service(
    client: Client,
    name: &str,
) -> (watch::Receiver<Vec<ServiceInstance>>, ServiceWatch) {
    watch_service_with_wait(client, name, DEFAULT_WATCH_WAIT)
}

/// [`watch_service`] with blocking queries that wait at most `wait` each.
pub fn watch_service_with_wait(
    client: Client,
    name: &str,
    wait: Duration,
) -> (watch::Receiver<Vec<ServiceInstance>>, ServiceWatch) {
    let (tx, rx) = watch::channel(Vec::new());
    let (synced_tx, synced) = watch::channel(false);
    let task = tokio::spawn(follow(client, name.to_owned(), wait, tx, synced_tx));
    (
        rx,
        ServiceWatch {
            service: name.to_owned(),
            synced,
            task,
        },
    )
}

async fn follow(
    client: Client,
    name: String,
    wait: Duration,
    instances: watch::Sender<Vec<ServiceInstance>>,
    synced: watch::Sender<bool>,
) {
    let mut query = BlockingQuery::new(wait);
    let mut failing = false;
    loop {
        if instances.is_closed() {
            return;
        }
        let answer = query
            .try_next(|opts| client.health_service(&name, true, opts))
            .await;
        match answer {
            Ok(answer) => {
                let mut set: Vec<ServiceInstance> = answer
                    .value
                    .into_iter()
                    .map(|e| ServiceInstance {
                        id: e.service_id,
                        address: e.address,
                        port: e.port,
                    })
                    .collect();
                set.sort();
                if failing {
                    tracing::info!(service = %name, instances = set.len(), "Consul is reachable again");
                    failing = false;
                }
                let changed = instances.send_if_modified(|current| {
                    if *current == set {
                        false
                    } else {
                        *current = set;
                        true
                    }
                });
                if changed {
                    tracing::debug!(service = %name, instances = ?instances.borrow().iter().map(ServiceInstance::addr).collect::<Vec<_>>(), "service instances changed");
                }
                synced.send_if_modified(|s| !std::mem::replace(s, true));
            }
            Err(error) => {
                // try_next already paused (with backoff) before returning.
                failing = true;
                tracing::warn!(
                    service = %name,
                    %error,
                    kept = instances.borrow().len(),
                    "cannot reach Consul; keeping the last known instances"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_ids_follow_the_localhost_rule() {
        assert_eq!(default_service_id("127.0.0.1", 7001), "7001");
        assert_eq!(default_service_id("localhost", 7001), "7001");
        assert_eq!(default_service_id("10.0.0.5", 7001), "10.0.0.5:7001");
        assert_eq!(default_service_id("node-a", 7001), "node-a:7001");
    }

    #[test]
    fn defaults_are_the_reference_conventions() {
        let config = RegistrationConfig::new("10.0.0.5", 7001);
        config.validate().unwrap();
        let reg = config.to_agent_registration();
        assert_eq!(reg.name, "node");
        assert_eq!(reg.id.as_deref(), Some("10.0.0.5:7001"));
        assert_eq!(reg.address.as_deref(), Some("10.0.0.5"));
        assert_eq!(reg.port, Some(7001));
        let check = &reg.checks[0];
        assert_eq!(
            check.kind,
            agent::CheckKind::Grpc {
                target: "10.0.0.5:7001".into(),
                use_tls: false,
                interval: Duration::from_secs(3),
                timeout: Duration::from_secs(1),
            }
        );
        assert_eq!(
            check.deregister_critical_service_after,
            Some(Duration::from_secs(10))
        );
        assert_eq!(check.initial_status, None);
    }

    #[test]
    fn refuses_bad_configurations() {
        assert!(RegistrationConfig::new("", 1).validate().is_err());
        assert!(RegistrationConfig::new("h", 0).validate().is_err());
        assert!(
            RegistrationConfig::new("h", 1)
                .with_service_name(" ")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn addresses_bracket_ipv6() {
        let i = ServiceInstance {
            id: "x".into(),
            address: "::1".into(),
            port: 7,
        };
        assert_eq!(i.addr(), "[::1]:7");
        assert_eq!(join_host_port("10.0.0.1", 7), "10.0.0.1:7");
    }

    #[test]
    fn backoff_grows_to_a_limit() {
        assert!(backoff(1) <= RETRY_START);
        for n in 1..100 {
            assert!(backoff(n) <= RETRY_MAX);
        }
        assert!(backoff(100) >= RETRY_MAX / 2);
    }
}
