//! The runtime around the [`Engine`]: one task that owns it, feeds it events
//! (command answers, probe results, saves that ended, discovery changes,
//! operator requests), runs its steps and executes the effects they return. The
//! engine holds every command that depends on a save until the save is
//! reported done (DESIGN.md invariant 4), so the runtime decides nothing.
//!
//! Every I/O happens in tasks of its own (one per save, command or probe), so a
//! slow store or a slow node never delays the loop: probes keep leases alive
//! while a save is in flight, and other ranges' commands keep going.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ranger_proto::NodeId;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::orchestrator::{
    Answer, Dispatch, Effect, Engine, Event, ForgetReport, OpError, OpId, Persisted, Probe,
};
use crate::persist::{PersistError, Persister};
use crate::transport::{NodeTransport, ProbeAnswer};

use crate::discovery::Membership;
use crate::metrics::RuntimeMetrics;

/// An operator's request for an operation: the engine's own type, here too
/// because it is what callers of [`ControllerHandle::submit`] build.
pub use crate::orchestrator::OpRequest;

/// Resolves when an operation ends.
pub type Completion = oneshot::Receiver<Result<(), OpError>>;

type Inspector = Box<dyn FnOnce(&Engine) + Send>;

enum Request {
    Submit {
        op: OpRequest,
        reply: oneshot::Sender<Result<(OpId, Completion), OpError>>,
    },
    Cancel {
        op: OpId,
        reply: oneshot::Sender<Result<(), OpError>>,
    },
    Drain {
        node: NodeId,
        drain: bool,
        reply: oneshot::Sender<Result<(), OpError>>,
    },
    Forget {
        node: NodeId,
        reply: oneshot::Sender<Result<ForgetReport, OpError>>,
    },
    PauseBalancing {
        duration: Duration,
        reply: oneshot::Sender<Result<(), OpError>>,
    },
    ResumeBalancing {
        reply: oneshot::Sender<Result<(), OpError>>,
    },
    Inspect(Inspector),
}

enum Internal {
    Answer(Dispatch, Answer),
    Probe(NodeId, Instant, ProbeAnswer),
    /// A save the engine asked for ended.
    Saved(Result<(), PersistError>),
}

/// Why the controller loop stopped other than by a shutdown request.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The store refused a write for good (fenced by another leader, a conflict,
    /// or corrupt data): this controller must stop acting.
    #[error("persistence failed permanently: {0}")]
    Persist(#[from] PersistError),
}

/// Why a request to the controller could not be answered.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HandleError {
    #[error("the controller is not running")]
    Stopped,
    #[error(transparent)]
    Op(#[from] OpError),
}

/// A cheap, clonable handle to a running controller.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    requests: mpsc::Sender<Request>,
    events: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl ControllerHandle {
    /// Starts an operation; returns its id and a receiver for its end.
    pub async fn submit(&self, op: OpRequest) -> Result<(OpId, Completion), HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Submit { op, reply }).await?;
        Ok(rx.await.map_err(|_| HandleError::Stopped)??)
    }

    /// Starts an operation and waits for its end.
    pub async fn run(&self, op: OpRequest) -> Result<(), HandleError> {
        let (_, done) = self.submit(op).await?;
        Ok(done.await.map_err(|_| HandleError::Stopped)??)
    }

    pub async fn cancel(&self, op: OpId) -> Result<(), HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Cancel { op, reply }).await?;
        Ok(rx.await.map_err(|_| HandleError::Stopped)??)
    }

    pub async fn drain(&self, node: NodeId, drain: bool) -> Result<(), HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Drain { node, drain, reply }).await?;
        Ok(rx.await.map_err(|_| HandleError::Stopped)??)
    }

    /// Declares a lost node gone for good: the ranges that waited for its data
    /// are re-created empty elsewhere (SCENARIOS.md #31). Refused unless the
    /// node is lost.
    pub async fn forget_node(&self, node: NodeId) -> Result<ForgetReport, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Forget { node, reply }).await?;
        Ok(rx.await.map_err(|_| HandleError::Stopped)??)
    }

    /// Pauses balancing for `duration` (always with an end); queued balancer
    /// operations are cancelled, running handoffs go on.
    pub async fn pause_balancing(&self, duration: Duration) -> Result<(), HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::PauseBalancing { duration, reply })
            .await?;
        Ok(rx.await.map_err(|_| HandleError::Stopped)??)
    }

    /// Ends a pause of balancing at once.
    pub async fn resume_balancing(&self) -> Result<(), HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::ResumeBalancing { reply }).await?;
        Ok(rx.await.map_err(|_| HandleError::Stopped)??)
    }

    /// Runs `f` against the engine (read-only) inside the loop and returns its
    /// result: how the Debug service and tests look at the controller's state.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Engine) -> R + Send + 'static,
    ) -> Result<R, HandleError> {
        let (reply, rx) = oneshot::channel();
        let inspector: Inspector = Box::new(move |engine| {
            let _ = reply.send(f(engine));
        });
        self.send(Request::Inspect(inspector)).await?;
        rx.await.map_err(|_| HandleError::Stopped)
    }

    /// Every event from now on (placement transitions, failures, operations).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn send(&self, request: Request) -> Result<(), HandleError> {
        self.requests
            .send(request)
            .await
            .map_err(|_| HandleError::Stopped)
    }
}

/// Tunables of the loop itself.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// How often the loop steps without any event (backoffs, deadlines).
    pub tick: Duration,
    /// How often the balancer plans a round (when balancing is on or dry-run).
    pub balance_interval: Duration,
    /// Where the loop records saves, probe failures and command answers
    /// (registered nowhere by default).
    pub metrics: RuntimeMetrics,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            tick: Duration::from_millis(100),
            balance_interval: Duration::from_secs(10),
            metrics: RuntimeMetrics::default(),
        }
    }
}

/// The parts a controller is started from: where the keyspace is kept, how
/// nodes are reached, which nodes exist, and the tunables.
#[derive(Debug)]
pub struct Parts<P, T> {
    pub persister: P,
    pub transport: Arc<T>,
    pub membership: watch::Receiver<Membership>,
    pub orchestrator: crate::config::OrchestratorConfig,
    pub runtime: RuntimeConfig,
}

/// Starts a controller from its parts: loads (or creates) the keyspace,
/// refusing a corrupt one (SCENARIOS.md #35), builds the engine (which begins a
/// new term) and spawns the loop until `shutdown`. The one way every binary,
/// test and benchmark wires persister, keyspace, engine and runtime together.
pub async fn start<P, T>(
    parts: Parts<P, T>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(ControllerHandle, JoinHandle<Result<(), RuntimeError>>), crate::bootstrap::LoadError>
where
    P: Persister + 'static,
    T: NodeTransport,
{
    let keyspace = crate::bootstrap::load_keyspace(&parts.persister).await?;
    let engine = Engine::new(keyspace, parts.orchestrator, Instant::now())
        .with_wall_clock(crate::orchestrator::wall_clock_now());
    Ok(spawn(
        engine,
        parts.persister,
        parts.transport,
        parts.membership,
        parts.runtime,
        shutdown,
    ))
}

/// Spawns the controller loop. It runs until `shutdown` resolves or persistence
/// fails permanently.
pub fn spawn<P, T>(
    engine: Engine,
    persister: P,
    transport: Arc<T>,
    membership: watch::Receiver<Membership>,
    config: RuntimeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (ControllerHandle, JoinHandle<Result<(), RuntimeError>>)
where
    P: Persister + 'static,
    T: NodeTransport,
{
    let (requests_tx, requests) = mpsc::channel(256);
    let (events, _) = broadcast::channel(4096);
    let (internal_tx, internal) = mpsc::unbounded_channel();
    let runtime = Runtime {
        engine,
        persister: Arc::new(persister),
        retry_save_at: None,
        transport,
        membership,
        config,
        requests,
        internal,
        internal_tx,
        events: events.clone(),
        waiters: HashMap::new(),
        known: Membership::new(),
    };
    let task = tokio::spawn(runtime.run(shutdown));
    (
        ControllerHandle {
            requests: requests_tx,
            events,
        },
        task,
    )
}

struct Runtime<P, T> {
    engine: Engine,
    persister: Arc<P>,
    /// After a failed save, no new step until then (no tight retry loop).
    retry_save_at: Option<Instant>,
    transport: Arc<T>,
    membership: watch::Receiver<Membership>,
    config: RuntimeConfig,
    requests: mpsc::Receiver<Request>,
    internal: mpsc::UnboundedReceiver<Internal>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    events: broadcast::Sender<Event>,
    waiters: HashMap<OpId, Vec<oneshot::Sender<Result<(), OpError>>>>,
    known: Membership,
}

impl<P: Persister + 'static, T: NodeTransport> Runtime<P, T> {
    async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), RuntimeError> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut probe = tokio::time::interval(self.engine.config().probe_interval);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first round waits a whole interval: nodes report their load first.
        let mut balance = tokio::time::interval_at(
            Instant::now() + self.config.balance_interval,
            self.config.balance_interval,
        );
        balance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.apply_membership();
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    tracing::info!("controller loop stopping");
                    return Ok(());
                }
                request = self.requests.recv() => match request {
                    Some(request) => self.handle_request(request),
                    None => return Ok(()),
                },
                Some(internal) = self.internal.recv() => self.handle_internal(internal)?,
                changed = self.membership.changed() => {
                    if changed.is_ok() {
                        self.apply_membership();
                    }
                }
                _ = probe.tick() => self.engine.probe_tick(),
                _ = balance.tick() => self.engine.balance_tick(),
                _ = tick.tick() => {}
            }
            // Take everything else that is ready, then step once for the batch.
            while let Ok(internal) = self.internal.try_recv() {
                self.handle_internal(internal)?;
            }
            self.step();
        }
    }

    fn handle_request(&mut self, request: Request) {
        let now = Instant::now();
        match request {
            Request::Submit { op, reply } => {
                let started = self.engine.request(op, now);
                let answer = started.map(|id| {
                    let (done_tx, done_rx) = oneshot::channel();
                    self.waiters.entry(id).or_default().push(done_tx);
                    (id, done_rx)
                });
                let _ = reply.send(answer);
            }
            Request::Cancel { op, reply } => {
                let _ = reply.send(self.engine.cancel(op, Instant::now()));
            }
            Request::Drain { node, drain, reply } => {
                let _ = reply.send(self.engine.drain(&node, drain));
            }
            Request::Forget { node, reply } => {
                let _ = reply.send(self.engine.forget_node(&node, now));
            }
            Request::PauseBalancing { duration, reply } => {
                let _ = reply.send(self.engine.pause_balancing(duration, now));
            }
            Request::ResumeBalancing { reply } => {
                self.engine.resume_balancing();
                let _ = reply.send(Ok(()));
            }
            Request::Inspect(inspect) => inspect(&self.engine),
        }
    }

    fn handle_internal(&mut self, internal: Internal) -> Result<(), RuntimeError> {
        match internal {
            Internal::Answer(dispatch, answer) => {
                self.engine.on_answer(&dispatch, answer, Instant::now());
            }
            Internal::Probe(node, sent_at, result) => {
                tracing::trace!(%node, ok = result.is_ok(), "probe answered");
                if result.is_err() {
                    self.config.metrics.probe_failed(node.as_str());
                }
                self.engine.on_probe(&node, sent_at, result);
            }
            Internal::Saved(result) => {
                let persisted = match result {
                    Ok(()) => Persisted::Saved,
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(error = %e, "could not persist the keyspace; commands held back");
                        self.retry_save_at = Some(Instant::now() + self.config.tick);
                        Persisted::Failed
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "persistence failed permanently; stopping");
                        return Err(e.into());
                    }
                };
                let released = self.engine.persisted(persisted);
                self.execute(released);
            }
        }
        Ok(())
    }

    /// Applies discovery's latest node set (the engine probes new nodes at its
    /// next step).
    fn apply_membership(&mut self) {
        let now = Instant::now();
        let current = self.membership.borrow_and_update().clone();
        for (id, addr) in &current {
            if self.known.get(id) != Some(addr) {
                self.engine.node_registered(id.clone(), addr.clone(), now);
            }
        }
        for id in self.known.keys() {
            if !current.contains_key(id) {
                tracing::info!(node = %id, "node left discovery");
                self.engine.node_deregistered(id);
            }
        }
        self.known = current;
    }

    /// Steps the engine until it has nothing more to do right now, executing
    /// what each step asks for in order. A save runs in its own task; its end
    /// comes back as an event and releases what waited for it.
    fn step(&mut self) {
        for _ in 0..8 {
            // Probes first and on their own: each lease counts from the
            // instant the engine records it, so nothing may run in between.
            let probes = self.engine.take_probes(Instant::now());
            self.execute(probes);
            if self.retry_save_at.is_some_and(|at| Instant::now() < at) {
                break;
            }
            self.retry_save_at = None;
            let effects = self.engine.step(Instant::now());
            if effects.is_empty() {
                break;
            }
            // While a save is in flight the engine decides nothing new, so
            // the next step comes back empty and ends the loop.
            self.execute(effects);
        }
        // The last step may have made nodes due (a replica group changed, its
        // members must hear of it): they are probed now, not after the next
        // event.
        let probes = self.engine.take_probes(Instant::now());
        self.execute(probes);
    }

    /// Executes effects in order; none waits (saves, probes and commands each
    /// run in a task of their own).
    fn execute(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Persist(changes) => self.save(changes),
                Effect::Probe(probe) => self.probe(probe),
                Effect::Send(dispatch) => self.dispatch(dispatch),
                Effect::Finished { op, result } => {
                    for waiter in self.waiters.remove(&op).unwrap_or_default() {
                        let _ = waiter.send(result.clone());
                    }
                }
                Effect::Event(event) => {
                    tracing::info!(range = %event.range, "{}", event.message);
                    let _ = self.events.send(event);
                }
            }
        }
    }

    /// A save runs in its own task: the loop goes on answering, probing and
    /// sending retries meanwhile (a slow store must not let leases lapse).
    fn save(&self, changes: crate::keyspace::ChangeSet) {
        let persister = Arc::clone(&self.persister);
        let tx = self.internal_tx.clone();
        let metrics = self.config.metrics.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = persister.save(&changes).await;
            metrics.saved(result.is_ok(), started.elapsed());
            let _ = tx.send(Internal::Saved(result));
        });
    }

    fn probe(&self, probe: Probe) {
        let transport = Arc::clone(&self.transport);
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = transport
                .probe(
                    &probe.addr,
                    probe.term,
                    probe.lease,
                    &probe.groups,
                    probe.timeout,
                )
                .await;
            let _ = tx.send(Internal::Probe(probe.node, probe.sent_at, result));
        });
    }

    fn dispatch(&self, dispatch: Dispatch) {
        let transport = Arc::clone(&self.transport);
        let tx = self.internal_tx.clone();
        let metrics = self.config.metrics.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let call = transport.call(
                &dispatch.addr,
                dispatch.range,
                dispatch.call.clone(),
                dispatch.term,
                dispatch.timeout,
            );
            // One span per operation's command, named by the operation's id,
            // which the node's logs carry too (OPERATION_METADATA).
            let span = match dispatch.op {
                Some(op) => {
                    tracing::info_span!("operation", %op, node = %dispatch.node, range = %dispatch.range)
                }
                None => tracing::Span::none(),
            };
            let command = dispatch.call.command();
            let answer = crate::transport::context::with_operation(dispatch.op, async {
                tracing::debug!(node = %dispatch.node, range = %dispatch.range, ?command, "sending");
                let answer = call.await;
                tracing::debug!(node = %dispatch.node, range = %dispatch.range, ?command, ok = answer.is_ok(), "answered");
                answer
            })
            .instrument(span)
            .await;
            metrics.command_answered(
                command_label(&dispatch.call),
                answer_label(&answer),
                started.elapsed(),
            );
            let _ = tx.send(Internal::Answer(dispatch, answer));
        });
    }
}

/// A command as a metric label.
fn command_label(call: &crate::orchestrator::Call) -> &'static str {
    use crate::orchestrator::Call;
    match call {
        Call::Prepare { .. } => "prepare",
        Call::Activate => "activate",
        Call::Deactivate => "deactivate",
        Call::Drop { .. } => "drop",
    }
}

/// A command's answer as a metric label: ok, `failed` when the node answered
/// that its callback failed, or the call's error kind.
fn answer_label(answer: &Answer) -> &'static str {
    use crate::orchestrator::CallError;
    match answer {
        Ok(outcome) if outcome.failure.is_some() => "failed",
        Ok(_) => "ok",
        Err(CallError::Invalid(_)) => "invalid",
        Err(CallError::WrongState(_)) => "wrong_state",
        Err(CallError::Unreachable(_)) => "unreachable",
        Err(CallError::Other(_)) => "error",
    }
}
