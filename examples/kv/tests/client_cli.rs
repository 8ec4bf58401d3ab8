//! The `kv` binary against an in-test fake `kv.KV` server: put, get, delete and
//! scan round trip (scan follows `next` across a fake range boundary); a missing
//! key exits 1 with "not found"; bad keys and server errors exit 2 with the reason.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ranger_kv::pb::kv_server::{Kv, KvServer};
use ranger_kv::pb::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The fake serves two ranges, split here: a scan stops at the boundary and
/// says where to continue, like a node.
const BOUNDARY: &str = "m";
/// Keys the fake refuses, like a node that does not serve them.
const FOREIGN: &str = "foreign";

/// `kv.KV` over a map.
#[derive(Debug, Default)]
struct Fake {
    data: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn check(key: &str) -> Result<(), Status> {
    match key {
        "" => Err(Status::invalid_argument("empty key")),
        FOREIGN => Err(Status::failed_precondition("key not served by this node")),
        _ => Ok(()),
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = request.into_inner().key;
        check(&key)?;
        let data = self.data.lock().unwrap();
        let value = data
            .get(&key)
            .cloned()
            .ok_or_else(|| Status::not_found(key))?;
        Ok(Response::new(GetResponse { value }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let PutRequest { key, value } = request.into_inner();
        check(&key)?;
        self.data.lock().unwrap().insert(key, value);
        Ok(Response::new(PutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let key = request.into_inner().key;
        check(&key)?;
        self.data.lock().unwrap().remove(&key);
        Ok(Response::new(DeleteResponse {}))
    }

    async fn batch(&self, _: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let ScanRequest { start, end, limit } = request.into_inner();
        // The range holding `start` ends at the boundary (or never).
        let range_end = (start.as_str() < BOUNDARY).then_some(BOUNDARY);
        let stop = match (range_end, end.as_str()) {
            (Some(r), "") => r.to_owned(),
            (Some(r), e) => r.min(e).to_owned(),
            (None, e) => e.to_owned(),
        };
        let limit = if limit == 0 { 1000 } else { limit as usize };
        let data = self.data.lock().unwrap();
        let mut pairs: Vec<Pair> = data
            .range(start..)
            .take_while(|(k, _)| stop.is_empty() || **k < stop)
            .map(|(k, v)| Pair {
                key: k.clone(),
                value: v.clone(),
            })
            .collect();
        let next = if pairs.len() > limit {
            pairs.truncate(limit);
            format!("{}\0", pairs[limit - 1].key)
        } else if range_end.is_some() && (end.is_empty() || end.as_str() > BOUNDARY) {
            BOUNDARY.to_owned()
        } else {
            String::new()
        };
        Ok(Response::new(ScanResponse { pairs, next }))
    }

    async fn dump(&self, _: Request<DumpRequest>) -> Result<Response<DumpResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type SnapshotStream = tokio_stream::Empty<Result<SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type DeltaStream = tokio_stream::Empty<Result<DeltaChunk, Status>>;

    async fn delta(&self, _: Request<DeltaRequest>) -> Result<Response<Self::DeltaStream>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn end_transfer(
        &self,
        _: Request<EndTransferRequest>,
    ) -> Result<Response<EndTransferResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn replicate(
        &self,
        _: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn take_over(
        &self,
        _: Request<TakeOverRequest>,
    ) -> Result<Response<TakeOverResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

async fn serve() -> (SocketAddr, Arc<Fake>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::default());
    let router = tonic::transport::Server::builder().add_service(KvServer::from_arc(fake.clone()));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    (addr, fake)
}

/// The outcome of one `kv` run.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn kv(addr: SocketAddr, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kv"))
        .arg("--addr")
        .arg(addr.to_string())
        .args(args)
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Runs `kv` and expects success; returns stdout.
async fn ok(addr: SocketAddr, args: &[&str]) -> String {
    let run = kv(addr, args).await;
    assert_eq!(run.code, 0, "kv {args:?}: {run:?}");
    run.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_scan_round_trip() {
    let (addr, fake) = serve().await;
    for (key, value) in [("a", "1"), ("b", "two"), ("n", "3"), ("z", "hex:00ff")] {
        assert_eq!(ok(addr, &["put", key, value]).await, "OK\n");
    }
    assert_eq!(fake.data.lock().unwrap()["z"], vec![0, 255]);
    assert_eq!(ok(addr, &["get", "b"]).await, "two\n");
    assert_eq!(ok(addr, &["get", "b64:Yg=="]).await, "two\n");
    // Binary values print as hex, which parses back.
    assert_eq!(ok(addr, &["get", "z"]).await, "hex:00ff\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(addr, &["--json", "get", "a"]).await).unwrap();
    assert_eq!(json["value"], "1");

    // Across the boundary at "m".
    let all = "a\t1\nb\ttwo\nn\t3\nz\thex:00ff\n";
    assert_eq!(ok(addr, &["scan", ""]).await, all);
    assert_eq!(ok(addr, &["scan", "b", "z"]).await, "b\ttwo\nn\t3\n");
    assert_eq!(
        ok(addr, &["scan", "", "--limit", "3"]).await,
        "a\t1\nb\ttwo\nn\t3\n"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(addr, &["--json", "scan", "c"]).await).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2);

    assert_eq!(ok(addr, &["delete", "a"]).await, "OK\n");
    assert_eq!(ok(addr, &["delete", "a"]).await, "OK\n");
    assert_eq!(ok(addr, &["scan", "", "c"]).await, "b\ttwo\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_non_zero_with_the_reason() {
    let (addr, _fake) = serve().await;
    let missing = kv(addr, &["get", "nope"]).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert_eq!(missing.stderr.trim(), "not found");
    assert!(missing.stdout.is_empty());

    let bad_hex = kv(addr, &["get", "hex:zz"]).await;
    assert_eq!(bad_hex.code, 2, "{bad_hex:?}");
    assert!(bad_hex.stderr.contains("bad hex key"), "{bad_hex:?}");

    let not_utf8 = kv(addr, &["put", "hex:ff", "x"]).await;
    assert_eq!(not_utf8.code, 2, "{not_utf8:?}");
    assert!(not_utf8.stderr.contains("not UTF-8"), "{not_utf8:?}");

    let refused = kv(addr, &["put", FOREIGN, "x"]).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("FailedPrecondition") && refused.stderr.contains("not served"),
        "{refused:?}"
    );

    let empty = kv(addr, &["get", ""]).await;
    assert_eq!(empty.code, 2, "{empty:?}");
    assert!(empty.stderr.contains("InvalidArgument"), "{empty:?}");

    let nobody = kv("127.0.0.1:1".parse().unwrap(), &["get", "a"]).await;
    assert_eq!(nobody.code, 2, "{nobody:?}");
    assert!(nobody.stderr.contains("cannot connect"), "{nobody:?}");
}
