//! Both node transports pass the transport conformance suite
//! (`ranger_controller::testing::transport`): gRPC against rangelets served on
//! 127.0.0.1, and the in-process one that the scenario tests use.

#![allow(clippy::unwrap_used)]

use ranger_controller::testing::transport::{TransportHarness, run_all};
use ranger_controller::transport::{GrpcTransport, InProcessTransport};
use ranger_node_sdk::testing::{ScriptedNode, serve_on_loopback};
use ranger_node_sdk::{MemoryStateStore, Rangelet, RangeletConfig};

async fn rangelet(node: ScriptedNode, config: RangeletConfig) -> Rangelet<ScriptedNode> {
    Rangelet::open(node, MemoryStateStore::new(), config)
        .await
        .unwrap()
}

/// Rangelets behind real gRPC servers on loopback ports.
struct Grpc {
    transport: GrpcTransport,
    /// Kept so that the servers run until the suite ends.
    rangelets: Vec<Rangelet<ScriptedNode>>,
}

impl TransportHarness for Grpc {
    type Transport = GrpcTransport;

    fn transport(&self) -> &GrpcTransport {
        &self.transport
    }

    async fn serve(&mut self, node: ScriptedNode, config: RangeletConfig) -> String {
        let rangelet = rangelet(node, config).await;
        let addr = serve_on_loopback(&rangelet).await.unwrap();
        self.rangelets.push(rangelet);
        addr.to_string()
    }

    fn nowhere(&self) -> String {
        // Bound then dropped: nothing listens there any more.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }
}

/// Rangelets attached to the in-process transport by name.
struct InProcess {
    transport: InProcessTransport<ScriptedNode>,
    served: usize,
}

impl TransportHarness for InProcess {
    type Transport = InProcessTransport<ScriptedNode>;

    fn transport(&self) -> &Self::Transport {
        &self.transport
    }

    async fn serve(&mut self, node: ScriptedNode, config: RangeletConfig) -> String {
        self.served += 1;
        let addr = format!("node{}:7000", self.served);
        self.transport
            .attach(addr.clone(), rangelet(node, config).await);
        addr
    }

    fn nowhere(&self) -> String {
        "nobody:7000".into()
    }
}

#[tokio::test]
async fn the_grpc_transport_passes_the_transport_suite() {
    let mut harness = Grpc {
        transport: GrpcTransport::new(),
        rangelets: Vec::new(),
    };
    run_all(&mut harness).await;
}

#[tokio::test]
async fn the_in_process_transport_passes_the_transport_suite() {
    let mut harness = InProcess {
        transport: InProcessTransport::new(),
        served: 0,
    };
    run_all(&mut harness).await;
}
