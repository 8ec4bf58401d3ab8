//! The gRPC `ranger.Node` service: wire requests in, rangelet calls, wire answers
//! out. All checking of wire data happens in `ranger_proto::convert`; all state
//! logic in [`crate::Rangelet`]. This module only translates.
//!
//! Every command and probe carries the controller's `term` (field 16; 0 from the
//! reference controller, which has none) and goes to the rangelet's `*_in_term`
//! entry point, which refuses a stale one: FAILED_PRECONDITION, with a message
//! starting "stale controller term" (SCENARIOS.md #43).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use ranger_proto::pb::ranger as pb;
use ranger_proto::{
    ConversionError, Parent, RangeId, RangeMeta, RemoteState, ReplicaGroup, convert,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::node::Node;
use crate::rangelet::{CommandError, Outcome, RangeChange, Rangelet};

/// The `ranger.Node` gRPC service over a [`Rangelet`].
#[derive(Debug)]
pub struct NodeService<N> {
    rangelet: Rangelet<N>,
}

impl<N: Node> NodeService<N> {
    pub fn new(rangelet: Rangelet<N>) -> Self {
        NodeService { rangelet }
    }

    /// The tonic server wrapper, ready for `Server::builder().add_service(..)`.
    pub fn into_server(self) -> pb::node_server::NodeServer<Self> {
        pb::node_server::NodeServer::new(self)
    }
}

/// Maps refusals to the status codes PROTOCOL.md documents.
impl From<CommandError> for Status {
    fn from(e: CommandError) -> Self {
        let message = e.to_string();
        match e {
            CommandError::UnknownRange(_) | CommandError::MetaMismatch { .. } => {
                Status::invalid_argument(message)
            }
            CommandError::WrongState { .. } | CommandError::StaleTerm { .. } => {
                Status::failed_precondition(message)
            }
            CommandError::Persist { .. } | CommandError::PersistTerm { .. } => {
                Status::internal(message)
            }
            CommandError::ShuttingDown => Status::unavailable(message),
        }
    }
}

fn bad_request(e: ConversionError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn failure(outcome: &Outcome) -> Option<pb::CallbackFailure> {
    outcome.failure.as_ref().map(|message| pb::CallbackFailure {
        message: message.clone(),
    })
}

fn range_id(id: u64) -> Result<RangeId, Status> {
    RangeId::new(id).map_err(bad_request)
}

/// The span a command runs in: which command, and the controller's operation it
/// is for when the controller named one (`ranger-operation` metadata), so that
/// a node's logs of a handoff can be found from the controller's by its id.
fn command_span<T>(request: &Request<T>, command: &'static str) -> tracing::Span {
    let op = request
        .metadata()
        .get(ranger_proto::OPERATION_METADATA)
        .and_then(|value| value.to_str().ok());
    match op {
        Some(op) => tracing::info_span!("operation", op, command),
        None => tracing::info_span!("command", command),
    }
}

type RangesStream = Pin<Box<dyn Stream<Item = Result<pb::RangesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<N: Node> pb::node_server::Node for NodeService<N> {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let span = command_span(&request, "prepare");
        let request = request.into_inner();
        async move {
            let meta: RangeMeta = convert::require(request.range, "PrepareRequest.range")
                .and_then(RangeMeta::try_from)
                .map_err(bad_request)?;
            let parents = request
                .parents
                .into_iter()
                .map(Parent::try_from)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bad_request)?;
            let outcome = self
                .rangelet
                .prepare_in_term(request.term, meta.clone(), parents)
                .await?;
            Ok(Response::new(pb::PrepareResponse {
                range_info: Some(pb::RangeInfo {
                    meta: Some((&meta).into()),
                    state: outcome.state.into(),
                    info: None,
                }),
                failure: failure(&outcome),
            }))
        }
        .instrument(span)
        .await
    }

    async fn activate(
        &self,
        request: Request<pb::ActivateRequest>,
    ) -> Result<Response<pb::ActivateResponse>, Status> {
        let span = command_span(&request, "activate");
        let request = request.into_inner();
        async move {
            let id = range_id(request.range)?;
            let outcome = self.rangelet.activate_in_term(request.term, id).await?;
            Ok(Response::new(pb::ActivateResponse {
                state: outcome.state.into(),
                failure: failure(&outcome),
            }))
        }
        .instrument(span)
        .await
    }

    async fn deactivate(
        &self,
        request: Request<pb::DeactivateRequest>,
    ) -> Result<Response<pb::DeactivateResponse>, Status> {
        let span = command_span(&request, "deactivate");
        let request = request.into_inner();
        async move {
            let id = range_id(request.range)?;
            let outcome = self.rangelet.deactivate_in_term(request.term, id).await?;
            Ok(Response::new(pb::DeactivateResponse {
                state: outcome.state.into(),
                failure: failure(&outcome),
            }))
        }
        .instrument(span)
        .await
    }

    async fn drop(
        &self,
        request: Request<pb::DropRequest>,
    ) -> Result<Response<pb::DropResponse>, Status> {
        let span = command_span(&request, "drop");
        let request = request.into_inner();
        async move {
            let id = range_id(request.range)?;
            let outcome = self
                .rangelet
                .drop_range_in_term(request.term, id, request.force)
                .await?;
            Ok(Response::new(pb::DropResponse {
                state: outcome.state.into(),
                failure: failure(&outcome),
            }))
        }
        .instrument(span)
        .await
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let request = request.into_inner();
        let lease_millis = request.lease_millis;
        let lease = (lease_millis > 0).then(|| Duration::from_millis(lease_millis));
        // Checked before anything changes: a bad group refuses the whole probe.
        let groups = request
            .groups
            .into_iter()
            .map(ReplicaGroup::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ranges = self.rangelet.probe(request.term, lease, groups).await?;
        Ok(Response::new(pb::InfoResponse {
            ranges: ranges.iter().map(pb::RangeInfo::from).collect(),
            want_drain: self.rangelet.wants_drain(),
            capacity: self.rangelet.capacity(),
        }))
    }

    type RangesStream = RangesStream;

    async fn ranges(
        &self,
        _request: Request<pb::RangesRequest>,
    ) -> Result<Response<Self::RangesStream>, Status> {
        // A bounded channel per subscriber: a slow reader fills only its own
        // buffer; the rangelet's broadcast then lags and the feeder resyncs it.
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(feed_ranges(self.rangelet.clone(), tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn to_wire(change: &RangeChange) -> pb::RangesResponse {
    pb::RangesResponse {
        meta: Some((&change.meta).into()),
        state: change.state.into(),
    }
}

/// Feeds one `Ranges` subscriber: the current states, then every change. If the
/// subscriber falls so far behind that the broadcast drops changes, it gets the
/// difference between what it was last sent and a fresh snapshot (including
/// NotFound for ranges that vanished meanwhile), so it always converges.
async fn feed_ranges<N: Node>(
    rangelet: Rangelet<N>,
    tx: mpsc::Sender<Result<pb::RangesResponse, Status>>,
) {
    let shutdown = rangelet.shutdown_signal();
    tokio::pin!(shutdown);
    let (snapshot, mut changes) = rangelet.subscribe();
    let mut sent: HashMap<RangeId, RangeChange> = HashMap::new();
    let mut outbox: Vec<RangeChange> = snapshot;
    loop {
        for change in outbox.drain(..) {
            if tx.send(Ok(to_wire(&change))).await.is_err() {
                return; // The subscriber went away.
            }
            if change.state == RemoteState::NotFound {
                sent.remove(&change.meta.id());
            } else {
                sent.insert(change.meta.id(), change);
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            received = changes.recv() => match received {
                Ok(change) => outbox.push(change),
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "Ranges subscriber lagged; resyncing from a snapshot");
                    let (snapshot, fresh) = rangelet.subscribe();
                    changes = fresh;
                    outbox = resync(&sent, snapshot);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// The changes that take a subscriber from `sent` to `snapshot`.
fn resync(sent: &HashMap<RangeId, RangeChange>, snapshot: Vec<RangeChange>) -> Vec<RangeChange> {
    let current: HashMap<RangeId, &RangeChange> =
        snapshot.iter().map(|c| (c.meta.id(), c)).collect();
    let mut out: Vec<RangeChange> = sent
        .values()
        .filter(|old| !current.contains_key(&old.meta.id()))
        .map(|old| RangeChange {
            meta: old.meta.clone(),
            state: RemoteState::NotFound,
        })
        .collect();
    out.extend(
        snapshot
            .iter()
            .filter(|c| sent.get(&c.meta.id()) != Some(*c))
            .cloned(),
    );
    out
}
