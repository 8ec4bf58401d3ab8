//! The hammer against in-test fake `kv.KV` servers: a correct one passes; one
//! that acks puts it does not store is caught (lost writes, failing run and exit
//! status); one that corrupts values is caught (unexpected); one that is
//! unavailable for a while costs errors and a write-unavailable window, not
//! correctness.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ranger_kv::hammer::{self, HammerConfig, Report};
use ranger_kv::pb::kv_server::{Kv, KvServer};
use ranger_kv::pb::*;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// How the fake server misbehaves.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// Ack but do not store one put in this many (0: never).
    drop_every: u64,
    /// Flip the last byte of one returned value in this many (0: never).
    corrupt_every: u64,
    /// Answer UNAVAILABLE (without doing anything) for this long, from the
    /// put number `.0` on (deletes clear the keys first, so puts mean load).
    outage: Option<(u64, Duration)>,
    /// Hold every put (and answer it late, successfully) for this long, from
    /// the put number `.0` on: what a client sees of a handoff behind a proxy
    /// that waits and retries.
    stall: Option<(u64, Duration)>,
}

/// `kv.KV` over a map, with injected faults.
#[derive(Debug)]
struct Fake {
    data: Mutex<BTreeMap<String, Vec<u8>>>,
    faults: Faults,
    outage_start: OnceLock<Instant>,
    stall_start: OnceLock<Instant>,
    put_calls: AtomicU64,
    stalled_calls: AtomicU64,
    puts: AtomicU64,
    gets: AtomicU64,
}

impl Fake {
    fn check(&self, key: &str) -> Result<(), Status> {
        if let (Some((_, length)), Some(start)) = (self.faults.outage, self.outage_start.get())
            && start.elapsed() < length
        {
            return Err(Status::unavailable("fake outage"));
        }
        if key.is_empty() {
            return Err(Status::invalid_argument("empty key"));
        }
        Ok(())
    }
}

fn every(n: u64, counter: &AtomicU64) -> bool {
    n > 0 && counter.fetch_add(1, Ordering::Relaxed) % n == n - 1
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = request.into_inner().key;
        self.check(&key)?;
        let mut value = self
            .data
            .lock()
            .unwrap()
            .get(&key)
            .cloned()
            .ok_or_else(|| Status::not_found(key))?;
        if every(self.faults.corrupt_every, &self.gets) {
            *value.last_mut().unwrap() ^= 1;
        }
        Ok(Response::new(GetResponse { value }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let PutRequest { key, value } = request.into_inner();
        if let Some((after, _)) = self.faults.outage
            && self.put_calls.fetch_add(1, Ordering::Relaxed) == after
        {
            let _ = self.outage_start.set(Instant::now());
        }
        if let Some((after, length)) = self.faults.stall {
            if self.stalled_calls.fetch_add(1, Ordering::Relaxed) == after {
                let _ = self.stall_start.set(Instant::now());
            }
            if let Some(start) = self.stall_start.get() {
                tokio::time::sleep(length.saturating_sub(start.elapsed())).await;
            }
        }
        self.check(&key)?;
        if !every(self.faults.drop_every, &self.puts) {
            self.data.lock().unwrap().insert(key, value);
        }
        Ok(Response::new(PutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let key = request.into_inner().key;
        self.check(&key)?;
        self.data.lock().unwrap().remove(&key);
        Ok(Response::new(DeleteResponse {}))
    }

    async fn dump(&self, _: Request<DumpRequest>) -> Result<Response<DumpResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn batch(&self, _: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn scan(&self, _: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
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

/// Serves a fake on 127.0.0.1:0 for the rest of the test.
async fn serve(faults: Faults) -> (SocketAddr, Arc<Fake>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake {
        data: Mutex::default(),
        faults,
        outage_start: OnceLock::new(),
        stall_start: OnceLock::new(),
        put_calls: AtomicU64::new(0),
        stalled_calls: AtomicU64::new(0),
        puts: AtomicU64::new(0),
        gets: AtomicU64::new(0),
    });
    let router = tonic::transport::Server::builder().add_service(KvServer::from_arc(fake.clone()));
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    (addr, fake)
}

fn config(addr: SocketAddr, duration_ms: u64) -> HammerConfig {
    HammerConfig {
        workers: 4,
        keys_per_worker: 50,
        duration: Duration::from_millis(duration_ms),
        request_timeout: Duration::from_secs(2),
        settle_timeout: Duration::from_secs(5),
        seed: 7,
        ..HammerConfig::new(addr.to_string())
    }
}

async fn hammer(config: HammerConfig) -> Report {
    let report = hammer::run(config, std::future::pending::<()>())
        .await
        .unwrap();
    println!("{report}");
    report
}

/// Runs the `hammer` binary; returns its exit code and stdout+stderr.
async fn hammer_binary(addr: SocketAddr) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hammer"))
        .args([
            "--addr",
            &addr.to_string(),
            "--workers",
            "2",
            "--keys",
            "20",
        ])
        .args(["--duration", "0.5", "--seed", "1"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_server_passes() {
    let (addr, fake) = serve(Faults::default()).await;
    let report = hammer(config(addr, 1000)).await;
    assert!(report.passed(), "{report}");
    assert!(report.ops > 100, "{report}");
    assert_eq!(report.ops, report.ok_ops);
    assert!(report.errors.is_empty());
    assert_eq!((report.lost, report.stale, report.unexpected), (0, 0, 0));
    assert!(report.latency.read.count > 0 && report.latency.update.count > 0);
    assert!(report.latency.read.p50_ms <= report.latency.read.p99_ms);
    assert!(report.latency.read.p99_ms <= report.latency.read.max_ms);
    let v = &report.verification;
    assert!(v.keys > 0 && v.ok == v.keys, "{report}");
    // Every key the hammer wrote and did not delete is in the store.
    let stored = fake.data.lock().unwrap().len() as u64;
    assert!(stored > 0 && stored <= v.keys);

    let (code, text) = hammer_binary(addr).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("result: PASS"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_puts_are_lost_writes() {
    let faults = Faults {
        drop_every: 5,
        ..Faults::default()
    };
    let (addr, _fake) = serve(faults).await;
    let report = hammer(config(addr, 1000)).await;
    assert!(report.lost > 0, "{report}");
    assert!(!report.passed());
    assert!(report.failure_reasons()[0].contains("lost"));
    assert!(report.verification.lost > 0, "{report}");
    assert!(!report.problems.is_empty());
    assert_eq!(report.unexpected, 0);

    let (code, text) = hammer_binary(addr).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL") && text.contains("lost"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_values_are_unexpected() {
    let faults = Faults {
        corrupt_every: 10,
        ..Faults::default()
    };
    let (addr, _fake) = serve(faults).await;
    let report = hammer(config(addr, 500)).await;
    assert!(report.unexpected > 0, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(!report.passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_errors_and_a_window_but_no_writes() {
    let faults = Faults {
        outage: Some((100, Duration::from_millis(600))),
        ..Faults::default()
    };
    let (addr, _fake) = serve(faults).await;
    let report = hammer(config(addr, 1500)).await;
    assert!(report.passed(), "{report}");
    assert_eq!((report.lost, report.unexpected), (0, 0));
    assert!(
        report.errors.get("UNAVAILABLE").copied().unwrap_or(0) > 0,
        "{report}"
    );
    assert_eq!(report.errors.len(), 1, "{report}");
    assert!(report.uncertain_writes > 0);
    let w = &report.write_unavailable;
    assert!(w.count > 0, "{report}");
    // Every worker writes throughout, so some key waits out most of the outage.
    assert!(w.max_ms >= 300.0 && w.max_ms < 1500.0, "{report}");
    assert_eq!(w.open, 0);
    // A write's wait includes its failed attempts, so it spans the window.
    assert!(w.longest_wait_ms >= w.max_ms, "{report}");
    assert_eq!(report.verification.ok, report.verification.keys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_without_errors_shows_as_the_longest_wait_for_a_write() {
    let faults = Faults {
        stall: Some((100, Duration::from_millis(400))),
        ..Faults::default()
    };
    let (addr, _fake) = serve(faults).await;
    let report = hammer(config(addr, 1500)).await;
    assert!(report.passed(), "{report}");
    assert!(report.errors.is_empty(), "{report}");
    let w = &report.write_unavailable;
    // No write failed, so there is no failure window...
    assert_eq!((w.count, w.open), (0, 0), "{report}");
    // ...but the put that began the stall waited it out whole.
    assert!(
        w.longest_wait_ms >= 390.0 && w.longest_wait_ms < 1500.0,
        "{report}"
    );
}
