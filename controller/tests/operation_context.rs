//! A command sent for an operation carries the operation's id to the node (gRPC
//! metadata `ranger-operation`), and the node's logs of that command and of the
//! callback it runs are in a span named by it: an operator who sees "op42 failed"
//! in the controller's logs finds the node's side of op42 by its id. A real
//! rangelet behind the real gRPC service, on loopback; the logs are captured.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ranger_controller::orchestrator::{Call, OpId};
use ranger_controller::transport::context::with_operation;
use ranger_controller::transport::{GrpcTransport, NodeTransport};
use ranger_node_sdk::testing::{ScriptedNode, serve_on_loopback};
use ranger_node_sdk::{MemoryStateStore, Rangelet, RangeletConfig};
use ranger_proto::{RangeId, RangeMeta, RemoteState};

/// Log lines written while a test runs.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_nodes_logs_of_a_command_carry_the_controllers_operation_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is single-threaded: the server's tasks log here too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let rangelet = Rangelet::open(
        ScriptedNode::new(),
        MemoryStateStore::new(),
        RangeletConfig::default(),
    )
    .await
    .unwrap();
    let addr = serve_on_loopback(&rangelet).await.unwrap().to_string();
    let transport = GrpcTransport::new();
    let range = RangeId::FIRST;

    // A placement with no operation (the first range placed): no id.
    let prepare = Call::Prepare {
        meta: RangeMeta::whole(range),
        parents: Vec::new(),
    };
    transport
        .call(&addr, range, prepare, 0, TIMEOUT)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while rangelet.state(range) != RemoteState::Inactive {
        assert!(tokio::time::Instant::now() < deadline, "never prepared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // An activation sent for op42.
    let answer = with_operation(
        Some(OpId(42)),
        transport.call(&addr, range, Call::Activate, 0, TIMEOUT),
    )
    .await
    .unwrap();
    assert_eq!(answer.failure, None);
    while rangelet.state(range) != RemoteState::Active {
        assert!(tokio::time::Instant::now() < deadline, "never activated");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let lines = captured.lines();
    let activated = lines
        .iter()
        .find(|l| l.contains("transition done") && l.contains("Activate"))
        .unwrap_or_else(|| panic!("no activation logged: {lines:#?}"));
    assert!(
        activated.contains("operation{") && activated.contains("op42"),
        "the activation's log names op42: {activated}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("op42") && l.contains("command=\"prepare\"")),
        "the prepare was sent for no operation: {lines:#?}"
    );
}
