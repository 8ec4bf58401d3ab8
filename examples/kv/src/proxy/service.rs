//! The `kv.KV` service the proxy serves: each client method forwarded to the
//! right node, the node-to-node transfer methods refused. Every call is counted,
//! by method and code, in the proxy's request metrics.

use std::sync::Arc;

use crate::pb::{self, kv_server::Kv};
use ranger_proto::RangeId;
use tonic::{Request, Response, Status};

use super::batch::Op;
use super::forward::Forwarder;

/// The proxy's `kv.KV` implementation; get one from [`super::Proxy::service`].
#[derive(Debug, Clone)]
pub struct ProxyService {
    forwarder: Arc<Forwarder>,
}

impl ProxyService {
    pub(crate) fn new(forwarder: Arc<Forwarder>) -> Self {
        ProxyService { forwarder }
    }
}

/// Refuses an empty key before any node sees it (PROTOCOL.md: INVALID_ARGUMENT).
fn require_key<'a>(method: &str, key: &'a str) -> Result<&'a [u8], Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument(format!("{method}: empty key")));
    }
    Ok(key.as_bytes())
}

/// Transfers run between nodes directly; through the proxy they would be routed
/// by a range the proxy cannot vouch for.
fn node_to_node(method: &str) -> Status {
    Status::unimplemented(format!(
        "{method} is node-to-node; call the source node directly, not the proxy"
    ))
}

#[tonic::async_trait]
impl Kv for ProxyService {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Get", async move {
                let request = request.into_inner();
                let key = require_key("Get", &request.key)?;
                let value = self
                    .forwarder
                    .by_key("Get", key, |node| node.call(Op::Get(request.clone())))
                    .await?;
                Ok(Response::new(pb::GetResponse { value }))
            })
            .await
    }

    // A Put is retried after UNAVAILABLE or a lost answer even though the first
    // attempt may have been applied: harmless here, because it sets the key to
    // the same value again (last write wins).
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Put", async move {
                let request = request.into_inner();
                let key = require_key("Put", &request.key)?;
                self.forwarder
                    .by_key("Put", key, |node| node.call(Op::Put(request.clone())))
                    .await?;
                Ok(Response::new(pb::PutResponse {}))
            })
            .await
    }

    async fn dump(
        &self,
        request: Request<pb::DumpRequest>,
    ) -> Result<Response<pb::DumpResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Dump", async move {
                let request = request.into_inner();
                let id = RangeId::new(request.range_ident)
                    .map_err(|e| Status::invalid_argument(format!("Dump: {e}")))?;
                let pairs = self
                    .forwarder
                    .by_range(id, |node| async move {
                        let request = pb::DumpRequest {
                            range_ident: id.get(),
                        };
                        Ok(node.client().dump(request).await?.into_inner().pairs)
                    })
                    .await?;
                Ok(Response::new(pb::DumpResponse { pairs }))
            })
            .await
    }

    // Like Put, safe to retry: removing an absent key succeeds.
    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Delete", async move {
                let request = request.into_inner();
                let key = require_key("Delete", &request.key)?;
                self.forwarder
                    .by_key("Delete", key, |node| node.call(Op::Delete(request.clone())))
                    .await?;
                Ok(Response::new(pb::DeleteResponse {}))
            })
            .await
    }

    /// Goes to the node holding `start` (an empty start is the first range), which
    /// stops at its range's end and says where to continue in `next`.
    async fn scan(
        &self,
        request: Request<pb::ScanRequest>,
    ) -> Result<Response<pb::ScanResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Scan", async move {
                let request = request.into_inner();
                let start = request.start.as_bytes();
                let answer = self
                    .forwarder
                    .by_key("Scan", start, |node| {
                        let request = request.clone();
                        async move { Ok(node.client().scan(request).await?.into_inner()) }
                    })
                    .await?;
                Ok(Response::new(answer))
            })
            .await
    }

    /// The proxy batches on its own (see [`super::batch`]); a client's batch
    /// would have to be split by node and its answers put back in order, which
    /// the proxy does not do (yet): clients send single calls.
    async fn batch(
        &self,
        _request: Request<pb::BatchRequest>,
    ) -> Result<Response<pb::BatchResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Batch", async move {
                Err(Status::unimplemented(
                    "Batch is node-facing: send the proxy single Get, Put and Delete calls, which it batches per node",
                ))
            })
            .await
    }

    type SnapshotStream = tokio_stream::Empty<Result<pb::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Snapshot", async move { Err(node_to_node("Snapshot")) })
            .await
    }

    type DeltaStream = tokio_stream::Empty<Result<pb::DeltaChunk, Status>>;

    async fn delta(
        &self,
        _request: Request<pb::DeltaRequest>,
    ) -> Result<Response<Self::DeltaStream>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Delta", async move { Err(node_to_node("Delta")) })
            .await
    }

    async fn end_transfer(
        &self,
        _request: Request<pb::EndTransferRequest>,
    ) -> Result<Response<pb::EndTransferResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe(
                "EndTransfer",
                async move { Err(node_to_node("EndTransfer")) },
            )
            .await
    }

    async fn replicate(
        &self,
        _request: Request<pb::ReplicateRequest>,
    ) -> Result<Response<pb::ReplicateResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("Replicate", async move { Err(node_to_node("Replicate")) })
            .await
    }

    async fn take_over(
        &self,
        _request: Request<pb::TakeOverRequest>,
    ) -> Result<Response<pb::TakeOverResponse>, Status> {
        let requests = &self.forwarder.metrics().requests;
        requests
            .observe("TakeOver", async move { Err(node_to_node("TakeOver")) })
            .await
    }
}
