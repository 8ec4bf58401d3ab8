//! The production transport: tonic clients, one lazily connected channel per node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::node_client::NodeClient;
use ranger_proto::{Command, Outcome};
use ranger_proto::{RangeId, RemoteState, ReplicaGroup};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::{NodeReport, NodeTransport, ProbeAnswer};
use crate::orchestrator::{Answer, Call, CallError};

/// gRPC to `ranger.Node`. Channels are cached per address; tonic reconnects them
/// on its own after a failure.
#[derive(Debug, Default)]
pub struct GrpcTransport {
    channels: Mutex<HashMap<String, Channel>>,
}

impl GrpcTransport {
    pub fn new() -> Self {
        Self::default()
    }

    fn client(&self, addr: &str) -> Result<NodeClient<Channel>, CallError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(channel) = channels.get(addr) {
            return Ok(NodeClient::new(channel.clone()));
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| CallError::Unreachable(format!("bad address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            // A node that goes silent (a partition, a frozen process) is noticed
            // on an idle channel too, not only by the next request's deadline.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(NodeClient::new(channel))
    }
}

/// Maps a node's status to what the orchestrator acts on. PROTOCOL.md: an
/// Activate or Deactivate of a range the node does not hold is INVALID_ARGUMENT,
/// but the reference rangelet also answers INVALID_ARGUMENT for a range in the
/// wrong state. The code alone cannot tell the two apart (and our own message
/// text is no contract), so it is `Invalid`: the orchestrator then learns the
/// range's state from the node's next probe instead of assuming it is gone.
pub(super) fn call_error(status: Status, command: Option<Command>) -> CallError {
    let message = status.message().to_owned();
    match status.code() {
        Code::InvalidArgument
            if matches!(command, Some(Command::Activate | Command::Deactivate)) =>
        {
            CallError::Invalid(message)
        }
        Code::FailedPrecondition => CallError::WrongState(message),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            CallError::Unreachable(format!("{:?}: {message}", status.code()))
        }
        code => CallError::Other(format!("{code:?}: {message}")),
    }
}

fn outcome(state: i32, failure: Option<pb::CallbackFailure>) -> Answer {
    let state = RemoteState::try_from(state)
        .map_err(|e| CallError::Other(format!("node answered a bad state: {e}")))?;
    Ok(Outcome {
        state,
        failure: failure.map(|f| f.message),
    })
}

/// A request carrying the operation it is sent for, if the sending task has
/// one (see [`super::context`]), in the `ranger-operation` metadata entry.
fn with_context<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(op) = super::context::current_operation()
        && let Ok(value) = op.to_string().parse()
    {
        request
            .metadata_mut()
            .insert(ranger_proto::OPERATION_METADATA, value);
    }
    request
}

impl NodeTransport for GrpcTransport {
    async fn call(
        &self,
        addr: &str,
        range: RangeId,
        call: Call,
        term: u64,
        timeout: Duration,
    ) -> Answer {
        let mut client = self.client(addr)?;
        let id = range.get();
        let command = call.command();
        let request = async {
            match call {
                Call::Prepare { meta, parents } => {
                    let response = client
                        .prepare(with_context(pb::PrepareRequest {
                            range: Some((&meta).into()),
                            parents: parents.iter().map(pb::Parent::from).collect(),
                            term,
                        }))
                        .await?
                        .into_inner();
                    let state = response.range_info.map_or(0, |i| i.state);
                    Ok::<_, Status>(outcome(state, response.failure))
                }
                Call::Activate => {
                    let r = client
                        .activate(with_context(pb::ActivateRequest {
                            range: id,
                            force: false,
                            term,
                        }))
                        .await?
                        .into_inner();
                    Ok(outcome(r.state, r.failure))
                }
                Call::Deactivate => {
                    let r = client
                        .deactivate(with_context(pb::DeactivateRequest { range: id, term }))
                        .await?
                        .into_inner();
                    Ok(outcome(r.state, r.failure))
                }
                Call::Drop { force } => {
                    let r = client
                        .drop(with_context(pb::DropRequest {
                            range: id,
                            force,
                            term,
                        }))
                        .await?
                        .into_inner();
                    Ok(outcome(r.state, r.failure))
                }
            }
        };
        match tokio::time::timeout(timeout, request).await {
            Err(_) => Err(CallError::Unreachable(format!(
                "no answer within {timeout:?}"
            ))),
            Ok(Err(status)) => Err(call_error(status, Some(command))),
            Ok(Ok(answer)) => answer,
        }
    }

    async fn probe(
        &self,
        addr: &str,
        term: u64,
        lease: Duration,
        groups: &[ReplicaGroup],
        timeout: Duration,
    ) -> ProbeAnswer {
        let mut client = self.client(addr).map_err(|e| e.to_string())?;
        let lease_millis = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let response = tokio::time::timeout(
            timeout,
            client.info(pb::InfoRequest {
                lease_millis,
                term,
                groups: groups.iter().map(pb::ReplicaGroup::from).collect(),
            }),
        )
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|s| call_error(s, None).to_string())?
        .into_inner();
        NodeReport::from_wire(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_by_code_and_command() {
        let unknown = Status::invalid_argument("whatever a Go node says");
        // Unknown range, or a reference rangelet's "wrong state": not assumed
        // to be either (the next probe tells).
        assert!(matches!(
            call_error(unknown.clone(), Some(Command::Activate)),
            CallError::Invalid(_)
        ));
        assert!(matches!(
            call_error(unknown, Some(Command::Prepare)),
            CallError::Other(_)
        ));
        assert!(matches!(
            call_error(Status::failed_precondition("x"), Some(Command::Drop)),
            CallError::WrongState(_)
        ));
        assert!(matches!(
            call_error(Status::unavailable("x"), None),
            CallError::Unreachable(_)
        ));
    }
}
