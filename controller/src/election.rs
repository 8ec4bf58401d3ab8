//! Leader election among controllers through a Consul lock (DESIGN.md §5 HA).
//!
//! Several `rangerd --consul` run; the one whose Consul session holds the lock
//! on `<prefix>leader` is the leader and the only one that runs the controller
//! loop. The others are standbys: they follow the key with a blocking query and
//! try to take the lock the moment it is free.
//!
//! # Session, health check, TTLs and lock delay
//!
//! Consul's shortest session TTL is 10 s, and Consul may wait up to twice the
//! TTL before ending an unrenewed session: a TTL alone would leave the cluster
//! without a controller for 10 to 20 s after a crash. So each candidate also
//! registers a service (`rangerd` by default) with a **TTL health check** of
//! [`DEFAULT_CHECK_TTL`] that it passes itself every quarter of it, and binds
//! its session to that check (and to the node's `serfHealth`): when the
//! process dies, the check turns critical one check TTL after the last pass,
//! which ends the session at once and frees the lock. The session still has a
//! TTL (the minimum, renewed by a [`SessionKeeper`]) as a second line: it ends
//! a session whose owner is gone even if the check were somehow removed.
//!
//! - **Crash**: the lock is free about one check TTL after the last pass, taken
//!   after the lock delay: 1 s + 0.5 s with the defaults; measured from the
//!   `kill -9` to the standby answering as leader, 1.42-1.51 s (it was
//!   3.75-3.87 s with the former 3 s + 1 s; `integration/examples/bench_failover.rs`).
//! - **Clean stop** ([`LeaderElection::shutdown`]): the leader releases the key
//!   first (an explicit release sets no lock delay), then destroys its session
//!   and deregisters its service; a standby's blocking query wakes at the
//!   release, so it leads within a few milliseconds.
//! - **Lock delay**: [`DEFAULT_LOCK_DELAY`] (500 ms) instead of Consul's 15 s.
//!   The lock delay exists so that a holder that has not yet noticed the loss
//!   of its session stops before anyone else takes over. Here that protection
//!   comes from elsewhere, so the margins can be short:
//!   1. every keyspace write of the leader is a Consul transaction that checks
//!      its session still holds this lock ([`crate::persist::Fence`]): a
//!      deposed leader can never write, however late it notices;
//!   2. it sends node commands only after persisting the state they carry
//!      out, so a late command of the old leader is one the new leader's
//!      loaded state already expects, and every command carries the
//!      controller term, which the new leader bumps and persists before it
//!      sends anything: a node that heard from the new leader refuses the old
//!      one (SCENARIOS.md #43);
//!   3. nodes stop writing on their own when their lease is not renewed
//!      (DESIGN.md §6), whoever leads.
//!
//!   On top of that, the two leaderships do not overlap in time: the leader
//!   deposes itself when it could not pass its check for a whole check TTL,
//!   measured from when it *sent* the last successful pass, which is before the
//!   agent's timer for that pass started, so it stops before Consul can end its
//!   session; a new leader can take the lock only a lock delay after that.
//!   The lock delay covers the scheduling slack of the deposition (the check
//!   keeper wakes at the exact deadline; the controller loop stops on the role
//!   change). If that slack ever exceeded 500 ms, 1-3 still hold.
//!
//!   What a short check TTL costs: a leader that cannot pass its check for
//!   1 s (passes every 250 ms to the local agent) steps down and a standby
//!   takes over: a busy machine may see a needless failover, never two
//!   writers. A Consul that stalls longer than the check TTL makes the leader
//!   step down sooner too, and with it the nodes' leases lapse sooner: with
//!   Consul frozen 10 s (scenario s08) writes were unavailable 9.3 s with these
//!   defaults, against 3.1 s measured with 3 s + 1 s. Both are flags (`rangerd --leader-check-ttl-ms`,
//!   `--leader-lock-delay-ms`) for clusters that prefer fewer failovers to
//!   faster ones.
//!
//! # Being deposed
//!
//! The current [`Role`] is published on a watch channel. A leader becomes a
//! standby the moment it learns that the lock is not its own any more: the
//! blocking query on the key answers as soon as the key changes (a destroyed
//! session releases it), the keeper reports the session lost, or its health
//! check could not be passed for a whole check TTL. It then campaigns again
//! with a fresh session, after [`ElectionConfig::rejoin_delay`], so that a
//! healthy standby wins the race for the free lock.

use std::time::Duration;

use ranger_consul::agent::CheckDefinition;
use ranger_consul::session::ServiceCheckRef;
use ranger_consul::{
    BlockingQuery, CheckStatus, Client, KvPair, PutOptions, ServiceRegistration, SessionBehavior,
    SessionKeeper, SessionRequest,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::persist::Fence;

/// How long the candidate's health check stays passing without a new pass. A
/// crashed leader's lock is free this long after its last pass.
pub const DEFAULT_CHECK_TTL: Duration = Duration::from_secs(1);
/// The session's own TTL: Consul's minimum (the health check is what ends a
/// crashed leader's session quickly).
pub const DEFAULT_SESSION_TTL: Duration = SessionRequest::MIN_TTL;
/// How long after a session is *invalidated* nobody can take its lock (Consul's
/// default is 15 s; see the module docs for why 500 ms is safe here).
pub const DEFAULT_LOCK_DELAY: Duration = Duration::from_millis(500);
/// The key under the Consul prefix that holds the leader lock.
pub const LEADER_KEY: &str = "leader";

/// Who a controller is, as written in the leader key: what standbys name when
/// they refuse requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// Unique per process (a restarted controller gets a new one).
    pub id: String,
    /// The gRPC address other processes reach this controller at.
    pub addr: String,
}

/// What this controller is right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not leading: `leader` holds the lock, if anyone does (and its value
    /// could be read).
    Standby { leader: Option<Candidate> },
    /// Holding the lock. `term` counts this process's leaderships: a new term
    /// means someone else may have led in between, so the controller loop must
    /// start over from the stored keyspace. `fence` is what every write must
    /// check.
    Leader { term: u64, fence: Fence },
    /// The election was shut down.
    Stopped,
}

impl Role {
    /// Whether this is leadership.
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader { .. })
    }

    /// Whether this is leadership in `term`.
    pub fn is_leader_in(&self, term: u64) -> bool {
        matches!(self, Role::Leader { term: t, .. } if *t == term)
    }
}

/// How a controller takes part in the election.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// The lock key, `<prefix>leader`.
    pub key: String,
    /// This controller, written in the key while it leads.
    pub candidate: Candidate,
    /// The service this controller registers with its agent (`rangerd`).
    pub service_name: String,
    /// The registration's ID, unique on the agent and to this candidate (so
    /// to this process: see [`Candidate::id`]). A restarted controller must
    /// not take over its dead predecessor's registration: re-registering the
    /// same health check keeps it passing, which keeps the predecessor's
    /// session, and so the lock, alive until the session's own TTL runs out
    /// (Consul allows up to twice its 10 s) instead of one check TTL. The
    /// predecessor's check turns critical and ends its session as after any
    /// crash; Consul removes its registration a minute later.
    pub service_id: String,
    /// See [`DEFAULT_CHECK_TTL`].
    pub check_ttl: Duration,
    /// See [`DEFAULT_SESSION_TTL`]; at least Consul's minimum of 10 s.
    pub session_ttl: Duration,
    /// See [`DEFAULT_LOCK_DELAY`].
    pub lock_delay: Duration,
    /// After losing leadership (or failing to create a session), this long
    /// without trying to take the lock.
    pub rejoin_delay: Duration,
    /// Pause between attempts to take a free lock that Consul refused (its lock
    /// delay is running).
    pub retry_pause: Duration,
    /// The longest one blocking query on the key waits.
    pub wait: Duration,
}

impl ElectionConfig {
    /// The defaults for `candidate`, with the lock under `prefix` (e.g.
    /// `ranger/`) and the service `rangerd`.
    pub fn new(prefix: &str, candidate: Candidate) -> Self {
        // Service IDs appear in URL paths: no slashes.
        let service_id = format!("rangerd-{}", candidate.id.replace('/', "_"));
        ElectionConfig {
            key: format!("{prefix}{LEADER_KEY}"),
            candidate,
            service_name: "rangerd".to_owned(),
            service_id,
            check_ttl: DEFAULT_CHECK_TTL,
            session_ttl: DEFAULT_SESSION_TTL,
            lock_delay: DEFAULT_LOCK_DELAY,
            rejoin_delay: Duration::from_secs(2),
            retry_pause: Duration::from_millis(100),
            wait: Duration::from_secs(30),
        }
    }

    fn check_id(&self) -> String {
        format!("{}:leader-ttl", self.service_id)
    }

    fn registration(&self) -> ServiceRegistration {
        let (host, port) = split_host_port(&self.candidate.addr);
        let mut check = CheckDefinition::ttl(self.check_ttl);
        check.check_id = Some(self.check_id());
        check.name = Some("rangerd is alive".to_owned());
        // Passing from the start: a session cannot be bound to a critical check.
        check.initial_status = Some(CheckStatus::Passing);
        // Consul's minimum: a crashed controller's registration goes away.
        check.deregister_critical_service_after = Some(Duration::from_secs(60));
        ServiceRegistration {
            id: Some(self.service_id.clone()),
            name: self.service_name.clone(),
            address: host,
            port,
            tags: Vec::new(),
            meta: [("candidate".to_owned(), self.candidate.id.clone())]
                .into_iter()
                .collect(),
            checks: vec![check],
        }
    }
}

/// `host:port` split for the registration; anything else registers no address.
fn split_host_port(addr: &str) -> (Option<String>, Option<u16>) {
    match addr.rsplit_once(':') {
        Some((host, port)) => match port.parse() {
            Ok(port) => (Some(host.trim_matches(['[', ']']).to_owned()), Some(port)),
            Err(_) => (None, None),
        },
        None => (None, None),
    }
}

/// Why the election could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The settings cannot work (e.g. a session TTL Consul refuses).
    #[error("invalid election settings: {0}")]
    Config(String),
    /// The agent refused or did not answer the registration of the
    /// controller's service and health check.
    #[error("could not register service {service} with the Consul agent: {source}")]
    Register {
        service: String,
        #[source]
        source: ranger_consul::Error,
    },
    /// Leaving cleanly failed (releasing the lock, destroying the session or
    /// deregistering); the lock is then freed when the health check expires.
    #[error("could not leave the election cleanly: {0}")]
    Leave(#[source] ranger_consul::Error),
}

/// One controller's part in the election: registers its service and health
/// check, then campaigns in a background task and publishes its [`Role`].
/// Dropping it stops campaigning without cleaning up (the check then expires);
/// [`LeaderElection::shutdown`] leaves cleanly.
#[derive(Debug)]
pub struct LeaderElection {
    client: Client,
    config: ElectionConfig,
    role: watch::Receiver<Role>,
    stop: watch::Sender<bool>,
    resign: mpsc::UnboundedSender<u64>,
    campaign: Option<JoinHandle<Result<(), ranger_consul::Error>>>,
    health: Option<JoinHandle<()>>,
}

impl LeaderElection {
    /// Registers the service and its passing health check with the agent and
    /// starts campaigning. Fails if the agent cannot be reached: better to say so
    /// at start-up than to sit as a standby that can never lead.
    pub async fn start(client: Client, config: ElectionConfig) -> Result<Self, ElectionError> {
        if !(SessionRequest::MIN_TTL..=SessionRequest::MAX_TTL).contains(&config.session_ttl) {
            return Err(ElectionError::Config(format!(
                "session TTL {:?} is outside Consul's 10 s to 24 h",
                config.session_ttl
            )));
        }
        if config.check_ttl < Duration::from_millis(200) {
            return Err(ElectionError::Config(format!(
                "check TTL {:?} is too short to pass reliably",
                config.check_ttl
            )));
        }
        let registration = config.registration();
        client
            .agent_service_register(&registration)
            .await
            .map_err(|source| ElectionError::Register {
                service: config.service_name.clone(),
                source,
            })?;
        tracing::info!(
            key = %config.key,
            service = %config.service_id,
            candidate = %config.candidate.addr,
            "joined the leader election"
        );
        let (healthy_tx, healthy) = watch::channel(true);
        let health = tokio::spawn(keep_passing(
            client.clone(),
            registration,
            config.check_id(),
            config.check_ttl,
            healthy_tx,
        ));
        let (role_tx, role) = watch::channel(Role::Standby { leader: None });
        let (stop, stop_rx) = watch::channel(false);
        let (resign, resign_rx) = mpsc::unbounded_channel();
        let campaign = Campaign {
            client: client.clone(),
            value: serde_json::to_vec(&config.candidate).unwrap_or_default(),
            config: config.clone(),
            role: role_tx,
            stop: stop_rx,
            healthy,
            resign: resign_rx,
            term: 0,
        };
        let campaign = tokio::spawn(campaign.run());
        Ok(LeaderElection {
            client,
            config,
            role,
            stop,
            resign,
            campaign: Some(campaign),
            health: Some(health),
        })
    }

    /// The role, updated as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The role right now.
    pub fn current(&self) -> Role {
        self.role.borrow().clone()
    }

    /// The settings this election runs with.
    pub fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Gives up leadership of `term` (if this controller still holds it):
    /// releases the lock and campaigns again after the rejoin delay. For a
    /// leader that cannot do its job (its store refuses it), so that another
    /// controller gets the chance.
    pub fn resign(&self, term: u64) {
        let _ = self.resign.send(term);
    }

    /// Leaves the election cleanly: stops campaigning, releases the lock if held
    /// (a standby takes over within milliseconds), destroys the session and
    /// deregisters the service. Stop the controller loop *before* calling this,
    /// so that it issues nothing once another controller leads.
    pub async fn shutdown(mut self) -> Result<(), ElectionError> {
        let _ = self.stop.send(true);
        let mut result = Ok(());
        if let Some(campaign) = self.campaign.take() {
            match campaign.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(ElectionError::Leave(e)),
                Err(e) => tracing::error!(error = %e, "election task failed"),
            }
        }
        if let Some(health) = self.health.take() {
            health.abort();
        }
        if let Err(e) = self
            .client
            .agent_service_deregister(&self.config.service_id)
            .await
        {
            tracing::warn!(error = %e, "could not deregister the rangerd service");
            if result.is_ok() {
                result = Err(ElectionError::Leave(e));
            }
        }
        tracing::info!("left the leader election");
        result
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        if let Some(task) = self.campaign.take() {
            task.abort();
        }
        if let Some(task) = self.health.take() {
            task.abort();
        }
    }
}

/// Passes the health check every quarter TTL and publishes whether it is
/// *confirmed* passing: false once no pass sent within the last TTL succeeded,
/// i.e. when the agent may already have turned it critical. A check the agent
/// forgot (it restarted) is registered again.
async fn keep_passing(
    client: Client,
    registration: ServiceRegistration,
    check_id: String,
    ttl: Duration,
    healthy: watch::Sender<bool>,
) {
    let interval = ttl / 4;
    let mut alive_until = Instant::now() + ttl;
    loop {
        let sent = Instant::now();
        let limit = alive_until.saturating_duration_since(sent).max(interval);
        let failure = match tokio::time::timeout(limit, client.agent_check_pass(&check_id)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) if !e.is_transient() => {
                // Most likely the agent lost our registration; put it back.
                match client.agent_service_register(&registration).await {
                    Ok(()) => {
                        tracing::warn!(error = %e, "health check was unknown; registered again");
                        None
                    }
                    Err(again) => Some(format!("{e}; registering again failed: {again}")),
                }
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {limit:?}")),
        };
        let next = match failure {
            None => {
                alive_until = sent + ttl;
                healthy.send_if_modified(|h| !std::mem::replace(h, true));
                sent + interval
            }
            Some(error) => {
                let now = Instant::now();
                if now >= alive_until {
                    if healthy.send_if_modified(|h| std::mem::replace(h, false)) {
                        tracing::warn!(%error, "health check not confirmed for a whole TTL");
                    }
                } else {
                    tracing::debug!(%error, "passing the health check failed; retrying");
                }
                now + (interval / 2).max(Duration::from_millis(50))
            }
        };
        if *healthy.borrow() {
            tokio::time::sleep_until(next.min(alive_until)).await;
            if Instant::now() >= alive_until
                && healthy.send_if_modified(|h| std::mem::replace(h, false))
            {
                tracing::warn!("health check not confirmed for a whole TTL");
            }
        } else {
            tokio::time::sleep_until(next).await;
        }
    }
}

/// Why campaigning with one session ended.
enum End {
    /// Shutdown requested.
    Stop,
    /// The session is gone or can no longer be vouched for.
    Lost(String),
    /// Asked to resign.
    Resign,
}

struct Campaign {
    client: Client,
    config: ElectionConfig,
    value: Vec<u8>,
    role: watch::Sender<Role>,
    stop: watch::Receiver<bool>,
    healthy: watch::Receiver<bool>,
    resign: mpsc::UnboundedReceiver<u64>,
    term: u64,
}

impl Campaign {
    /// Campaigns until stopped: one session at a time, a new one after each
    /// loss. Returns the outcome of leaving cleanly.
    async fn run(mut self) -> Result<(), ranger_consul::Error> {
        let mut acquire_after = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = until(&mut self.stop, true) => break,
                _ = until(&mut self.healthy, true) => {}
            }
            let session = match self.create_session().await {
                Ok(session) => session,
                Err(e) => {
                    tracing::warn!(error = %e, "could not create a Consul session; retrying");
                    if self.pause(self.config.rejoin_delay).await {
                        break;
                    }
                    continue;
                }
            };
            tracing::debug!(%session, "campaigning");
            let keeper = SessionKeeper::with_interval(
                self.client.clone(),
                session.clone(),
                self.config.session_ttl,
                self.config.session_ttl / 5,
            );
            let end = self.hold(&session, &keeper, acquire_after).await;
            let was_leader = self.role.borrow().is_leader();
            match end {
                End::Stop => {
                    self.role.send_replace(Role::Stopped);
                    let released = if was_leader {
                        self.release(&session).await
                    } else {
                        Ok(())
                    };
                    let destroyed = keeper.shutdown().await;
                    return released.and(destroyed);
                }
                End::Lost(reason) => {
                    self.set_standby(None);
                    if was_leader {
                        tracing::warn!(%reason, "deposed: leadership lost");
                    } else {
                        tracing::info!(%reason, "session lost; starting a new one");
                    }
                    // It may still exist (unconfirmed, not gone): end it so
                    // that it cannot hold the lock behind our back.
                    if let Err(e) = keeper.shutdown().await {
                        tracing::debug!(error = %e, "could not destroy the old session");
                    }
                }
                End::Resign => {
                    self.set_standby(None);
                    tracing::warn!("resigning leadership");
                    if let Err(e) = self.release(&session).await {
                        tracing::warn!(error = %e, "could not release the leader key");
                    }
                    if let Err(e) = keeper.shutdown().await {
                        tracing::debug!(error = %e, "could not destroy the old session");
                    }
                }
            }
            acquire_after = Instant::now() + self.config.rejoin_delay;
        }
        self.role.send_replace(Role::Stopped);
        Ok(())
    }

    /// Sleeps, unless stopped first (then returns true).
    async fn pause(&mut self, pause: Duration) -> bool {
        tokio::select! {
            _ = until(&mut self.stop, true) => true,
            _ = tokio::time::sleep(pause) => false,
        }
    }

    async fn create_session(&self) -> Result<String, ranger_consul::Error> {
        let request = SessionRequest {
            name: Some(format!(
                "rangerd leader election: {}",
                self.config.candidate.addr
            )),
            ttl: Some(self.config.session_ttl),
            behavior: SessionBehavior::Release,
            lock_delay: Some(self.config.lock_delay),
            // Consul's default node check (serfHealth) plus our own health.
            node: None,
            node_checks: None,
            service_checks: Some(vec![ServiceCheckRef {
                id: self.config.check_id(),
                namespace: None,
            }]),
        };
        self.client.session_create(&request).await
    }

    /// Follows the lock with `session` until the session is lost, leadership is
    /// resigned, or the campaign is stopped; takes the lock when it is free (not
    /// before `acquire_after`) and publishes the role as it changes.
    async fn hold(&mut self, session: &str, keeper: &SessionKeeper, acquire_after: Instant) -> End {
        let client = self.client.clone();
        let key = self.config.key.clone();
        let mut query = BlockingQuery::new(self.config.wait);
        let mut acquire_after = acquire_after;
        let mut attempt_at: Option<Instant> = None;
        let mut healthy = self.healthy.clone();
        let mut stop = self.stop.clone();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            let read = tokio::select! {
                biased;
                _ = until(&mut stop, true) => return End::Stop,
                loss = keeper.lost() => return End::Lost(format!("session ended ({loss:?})")),
                _ = until(&mut healthy, false) => {
                    return End::Lost("health check could not be passed for a whole TTL".into());
                }
                Some(term) = self.resign.recv() => {
                    if self.role.borrow().is_leader_in(term) {
                        return End::Resign;
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(attempt_at.unwrap_or(far)), if attempt_at.is_some() => {
                    attempt_at = None;
                    match client
                        .kv_put(&key, &self.value, &PutOptions::acquire(session))
                        .await
                    {
                        Ok(true) => self.set_leader(session),
                        Ok(false) => {
                            tracing::debug!("lock refused (lock delay, or taken); reading again");
                        }
                        Err(e) => match client.session_info(session).await {
                            Ok(None) => return End::Lost("session no longer exists".into()),
                            _ => tracing::warn!(error = %e, "could not take the leader lock"),
                        },
                    }
                    // Read again at once: whatever happened changed the key or
                    // left it as it was (then the next attempt is paced).
                    query = BlockingQuery::new(self.config.wait);
                    acquire_after = acquire_after.max(Instant::now() + self.config.retry_pause);
                    continue;
                }
                read = query.try_next(|opts| client.kv_get(&key, opts)) => read,
            };
            let pair = match read {
                Ok(answer) => answer.value,
                Err(e) => {
                    // The role stays as it was: the fence protects writes, and
                    // the keeper or the health check decide when it is lost.
                    tracing::warn!(error = %e, "could not read the leader key; retrying");
                    continue;
                }
            };
            match pair.as_ref().and_then(|p| p.session.as_deref()) {
                Some(holder) if holder == session => self.set_leader(session),
                Some(_) => {
                    if self.role.borrow().is_leader() {
                        tracing::warn!("deposed: another session holds the leader lock");
                        acquire_after = Instant::now() + self.config.rejoin_delay;
                    }
                    self.set_standby(pair.as_ref().and_then(parse_candidate));
                    attempt_at = None;
                }
                None => {
                    if self.role.borrow().is_leader() {
                        tracing::warn!("deposed: the leader lock was released");
                        acquire_after = Instant::now() + self.config.rejoin_delay;
                    }
                    self.set_standby(None);
                    attempt_at = Some(acquire_after.max(Instant::now()));
                }
            }
        }
    }

    fn set_leader(&mut self, session: &str) {
        if self.role.borrow().is_leader() {
            return;
        }
        self.term += 1;
        tracing::info!(term = self.term, %session, key = %self.config.key, "leading");
        self.role.send_replace(Role::Leader {
            term: self.term,
            fence: Fence {
                leader_key: self.config.key.clone(),
                session_id: session.to_owned(),
            },
        });
    }

    fn set_standby(&mut self, leader: Option<Candidate>) {
        let role = Role::Standby { leader };
        self.role.send_if_modified(|current| {
            if *current == role {
                false
            } else {
                if let Role::Standby {
                    leader: Some(leader),
                } = &role
                {
                    tracing::info!(leader = %leader.addr, "standing by");
                }
                *current = role;
                true
            }
        });
    }

    /// Releases the lock (no lock delay follows an explicit release).
    async fn release(&self, session: &str) -> Result<(), ranger_consul::Error> {
        let released = self
            .client
            .kv_put(&self.config.key, b"", &PutOptions::release(session))
            .await?;
        if released {
            tracing::info!(key = %self.config.key, "released the leader lock");
        }
        Ok(())
    }
}

/// Waits until `flag` is `want` (or its sender is gone, which counts as
/// stopping). Returns nothing, so that no watch guard is held across awaits.
async fn until(flag: &mut watch::Receiver<bool>, want: bool) {
    let _ = flag.wait_for(|v| *v == want).await;
}

/// The candidate written in the lock's value, if it is one.
fn parse_candidate(pair: &KvPair) -> Option<Candidate> {
    match serde_json::from_slice(&pair.value) {
        Ok(candidate) => Some(candidate),
        Err(e) => {
            tracing::debug!(error = %e, "the leader key holds no candidate");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_addresses_for_the_registration() {
        assert_eq!(
            split_host_port("127.0.0.1:5000"),
            (Some("127.0.0.1".into()), Some(5000))
        );
        assert_eq!(split_host_port("[::1]:7"), (Some("::1".into()), Some(7)));
        assert_eq!(split_host_port("nohost"), (None, None));
    }

    #[test]
    fn roles_know_their_term() {
        let leader = Role::Leader {
            term: 3,
            fence: Fence {
                leader_key: "k".into(),
                session_id: "s".into(),
            },
        };
        assert!(leader.is_leader() && leader.is_leader_in(3) && !leader.is_leader_in(2));
        assert!(!Role::Standby { leader: None }.is_leader());
        assert!(!Role::Stopped.is_leader());
    }

    #[test]
    fn defaults_use_the_prefix() {
        let config = ElectionConfig::new(
            "ranger/",
            Candidate {
                id: "127.0.0.1:5000/pid-42".into(),
                addr: "127.0.0.1:5000".into(),
            },
        );
        assert_eq!(config.key, "ranger/leader");
        // One registration per process, never a predecessor's.
        assert_eq!(config.service_id, "rangerd-127.0.0.1:5000_pid-42");
        assert!(config.lock_delay < config.check_ttl);
    }
}
