//! `rangerd` and `rangerctl` as processes: nodes (real rangelets over scripted
//! storage, served over gRPC in this test) register with rangerd's embedded
//! registry; rangerctl reads and acts; errors exit non-zero with the reason; the
//! keyspace survives a kill -9 of rangerd.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ranger_node_sdk::testing::ScriptedNode;
use ranger_node_sdk::{MemoryStateStore, Rangelet, RangeletConfig, Registration};
use ranger_proto::NodeId;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Rangerd {
    child: Child,
    addr: String,
}

impl Rangerd {
    fn start(store: &Path, port: u16) -> Rangerd {
        Self::start_with(store, port, &[])
    }

    fn start_with(store: &Path, port: u16, extra: &[&str]) -> Rangerd {
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(store.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_rangerd"))
            .args(["--listen", &addr, "--store"])
            .arg(store)
            .args([
                "--probe-ms",
                "100",
                "--registry-ttl-ms",
                "3000",
                "--lease-ms",
                "2000",
                "--lease-margin-ms",
                "1000",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Rangerd { child, addr }
    }
}

impl Drop for Rangerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rangerctl"))
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .unwrap()
}

fn ctl_json(addr: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(addr, &all);
    assert!(
        out.status.success(),
        "rangerctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Serves a rangelet on 127.0.0.1 and registers it with rangerd.
async fn start_node(
    name: &str,
    controller: &str,
) -> (Rangelet<ScriptedNode>, Registration, SocketAddr) {
    let rangelet = Rangelet::open(
        ScriptedNode::new(),
        MemoryStateStore::new(),
        RangeletConfig::default(),
    )
    .await
    .unwrap();
    let addr = ranger_node_sdk::testing::serve_on_loopback(&rangelet)
        .await
        .unwrap();
    let registration =
        Registration::start(controller, NodeId::new(name).unwrap(), addr.to_string()).unwrap();
    (rangelet, registration, addr)
}

/// Polls `rangerctl ranges --json` until `check` holds.
async fn wait_ranges(addr: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(addr, &["--json", "ranges"]);
        if out.status.success() {
            let ranges: Value = serde_json::from_slice(&out.stdout).unwrap();
            if check(&ranges) {
                return ranges;
            }
            if std::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}: {ranges}");
            }
        } else if std::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn range(ranges: &Value, id: u64) -> &Value {
    ranges
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap()
}

fn active_on(ranges: &Value, id: u64) -> Vec<String> {
    range(ranges, id)["placements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["state"] == "Active")
        .map(|p| p["node"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerctl_drives_rangerd_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("keyspace.redb");
    let port = free_port();
    let mut rangerd = Rangerd::start(&store, port);
    let addr = rangerd.addr.clone();
    let (_a, _reg_a, _) = start_node("a", &addr).await;
    let (_b, _reg_b, _) = start_node("b", &addr).await;

    let ranges = wait_ranges(&addr, "range 1 placed", |r| active_on(r, 1).len() == 1).await;
    let first = active_on(&ranges, 1)[0].clone();
    let other = if first == "a" { "b" } else { "a" };

    // Tables for people.
    let out = ctl(&addr, &["ranges"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.lines().next().unwrap().starts_with("ID"), "{table}");
    assert!(table.contains("-inf") && table.contains("+inf"), "{table}");
    let nodes = ctl_json(&addr, &["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 2, "{nodes}");

    // A move shows its transitions live and ends ok.
    let out = ctl(&addr, &["move", "1", other]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Pending") && text.contains("-> Active"),
        "{text}"
    );
    assert!(text.contains("move 1: done"), "{text}");
    let ranges = wait_ranges(&addr, "moved", |r| {
        active_on(r, 1) == vec![other.to_owned()]
    })
    .await;
    assert_eq!(range(&ranges, 1)["state"], "Active");

    // Split with a hex key, then join back, with JSON results.
    let out = ctl(&addr, &["--json", "split", "1", "hex:6d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["ok"], true);
    let ranges = wait_ranges(&addr, "split", |r| r.as_array().unwrap().len() == 3).await;
    assert_eq!(range(&ranges, 2)["end_text"], "m");
    assert_eq!(range(&ranges, 3)["start_text"], "m");
    let out = ctl(&addr, &["join", "2", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Errors: non-zero exit and the reason.
    for (args, reason) in [
        (vec!["move", "99"], "NotFound"),
        (vec!["range", "0"], "InvalidArgument"),
        (vec!["split", "4", "hex:zz"], "bad hex key"),
        (vec!["split", "1", "x"], "FailedPrecondition"),
        (vec!["join", "4", "1"], "FailedPrecondition"),
        (vec!["move", "4", "nobody"], "NotFound"),
        (vec!["cancel", "12345"], "NotFound"),
        (vec!["drain", "nobody"], "NotFound"),
    ] {
        let out = ctl(&addr, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
    assert_eq!(ctl_json(&addr, &["ops"]), Value::Array(vec![]));

    // Drain the node holding range 4: it moves away.
    let holder = active_on(&ctl_json(&addr, &["ranges"]), 4)[0].clone();
    let out = ctl(&addr, &["drain", &holder]);
    assert!(out.status.success());
    let ranges = wait_ranges(&addr, "drained", |r| {
        let on = active_on(r, 4);
        on.len() == 1 && on[0] != holder
    })
    .await;
    let survivor = active_on(&ranges, 4)[0].clone();

    // kill -9 and restart: the keyspace comes back from the embedded store.
    rangerd.child.kill().unwrap();
    rangerd.child.wait().unwrap();
    let rangerd2 = Rangerd::start(&store, port);
    let ranges = wait_ranges(&rangerd2.addr, "restarted with the same keyspace", |r| {
        r.as_array().unwrap().len() == 4 && active_on(r, 4) == vec![survivor.clone()]
    })
    .await;
    assert_eq!(range(&ranges, 1)["state"], "Obsolete");
    drop(rangerd);

    // SIGTERM: a clean exit.
    let pid = rangerd2.child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let mut rangerd2 = rangerd2;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = rangerd2.child.try_wait().unwrap() {
            assert!(status.success(), "rangerd exited with {status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rangerd did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerctl_shows_a_lost_nodes_range_unavailable_and_forget_recreates_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("keyspace.redb");
    let rangerd = Rangerd::start(&store, free_port());
    let addr = rangerd.addr.clone();
    let (a, _reg_a, _) = start_node("a", &addr).await;
    wait_ranges(&addr, "range 1 on a", |r| active_on(r, 1) == ["a"]).await;
    let (_b, _reg_b, _) = start_node("b", &addr).await;

    // a still answers: forgetting it is refused, nothing changes.
    let refused = ctl(&addr, &["forget", "a"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not lost"), "{stderr}");

    // a's process stops serving: after lease + margin, range 1 waits for it.
    a.shutdown();
    let ranges = wait_ranges(&addr, "range 1 unavailable", |r| {
        !range(r, 1)["unavailable"].is_null()
    })
    .await;
    let reason = range(&ranges, 1)["unavailable"]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(reason.contains("node a"), "{reason}");
    assert!(
        active_on(&ranges, 1).is_empty(),
        "nothing re-created: {ranges}"
    );
    let table = ctl(&addr, &["ranges"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("UNAVAILABLE"), "{text}");

    // The operator gives a up: range 1 is re-created empty on b, loss reported.
    let forgot = ctl_json(&addr, &["forget", "a"]);
    assert_eq!(forgot["ranges_lost"], serde_json::json!([1]), "{forgot}");
    wait_ranges(&addr, "range 1 on b", |r| active_on(r, 1) == ["b"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rangerctl_shows_the_balancer_pauses_it_and_explains_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("keyspace.redb");
    let rangerd = Rangerd::start_with(
        &store,
        free_port(),
        &["--balance", "dry-run", "--balance-interval-s", "1"],
    );
    let addr = rangerd.addr.clone();
    let (_a, _reg_a, _) = start_node("a", &addr).await;
    let (_b, _reg_b, _) = start_node("b", &addr).await;
    wait_ranges(&addr, "range 1 placed", |r| active_on(r, 1).len() == 1).await;

    // A round within a couple of intervals, planned but not acted on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = ctl_json(&addr, &["balance"]);
        if status["has_round"] == true && status["nodes"].as_array().unwrap().len() == 2 {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no round: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status["mode"], "dry-run", "{status}");
    assert_eq!(status["paused_ms"], 0, "{status}");
    let table = String::from_utf8_lossy(&ctl(&addr, &["balance"]).stdout).to_string();
    assert!(table.starts_with("balancer: dry-run"), "{table}");
    assert!(table.contains("NODE") && table.contains("SHARE"), "{table}");

    // Pauses always end; a zero pause is refused with the reason.
    let paused = ctl_json(&addr, &["balance", "pause", "10m"]);
    let left = paused["paused_ms"].as_u64().unwrap();
    assert!(left > 590_000 && left <= 600_000, "{paused}");
    let out = ctl(&addr, &["balance", "pause", "0s"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("always ends"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&addr, &["balance", "pause", "100000years"]);
    assert!(!out.status.success(), "an endless pause is refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&addr, &["balance", "pause", "soon"]);
    assert!(!out.status.success(), "a duration that does not parse");
    let resumed = ctl_json(&addr, &["balance", "resume"]);
    assert_eq!(resumed["paused_ms"], 0, "{resumed}");

    // Explain names the range and its node; an unknown range is an error.
    let explained = ctl_json(&addr, &["explain", "1"]);
    let first = explained["lines"][0].as_str().unwrap().to_owned();
    assert!(
        first.starts_with("range 1 ") && first.contains("Active"),
        "{explained}"
    );
    let out = ctl(&addr, &["explain", "99"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("99"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
