//! The local cluster as real processes, as `bin/cluster` runs it: `rangerd`
//! (redb store, embedded registry), three `kv-node`s on RocksDB, and `kv-proxy`.
//! The `kv` client works through the proxy, and the `hammer` binary runs while
//! `rangerctl` splits, moves and joins ranges: it must exit 0 (no lost write)
//! and report no error at all.
//!
//! `rangerd` and `rangerctl` belong to the controller crate; `cargo test
//! --workspace` builds them next to this crate's binaries.

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A binary of the controller crate, built next to ours by `cargo test --workspace`.
fn controller_bin(name: &str) -> PathBuf {
    let here = Path::new(env!("CARGO_BIN_EXE_kv-node"));
    let path = here.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or build it: `cargo build -p ranger-controller --bins`)",
        path.display()
    );
    path
}

/// A child process killed when the test ends, its output in a log file.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn start(name: &'static str, dir: &Path, command: &mut Command) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Process { name, child, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {} log ---\n{}", self.name, self.log_tail());
        }
    }
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

fn ctl(controller: &str, args: &[&str]) -> Output {
    run(Command::new(controller_bin("rangerctl"))
        .args(["--addr", controller])
        .args(args))
}

fn ctl_ok(controller: &str, args: &[&str]) -> String {
    let out = ctl(controller, args);
    assert!(
        out.status.success(),
        "rangerctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `check` holds for `rangerctl --json ranges`.
fn wait_ranges(controller: &str, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ctl(controller, &["--json", "ranges"]);
        if out.status.success() {
            let ranges: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            if check(&ranges) {
                return ranges;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {ranges:?}"
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Current ranges (not obsolete) with exactly one placement, Active.
fn settled(ranges: &[Value]) -> bool {
    ranges.iter().filter(|r| r["state"] != "Obsolete").all(|r| {
        let placements = r["placements"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        placements.len() == 1 && placements[0]["state"] == "Active"
    })
}

fn current(ranges: &[Value]) -> Vec<(u64, String)> {
    ranges
        .iter()
        .filter(|r| r["state"] != "Obsolete")
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["placements"][0]["node"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

#[test]
fn hammer_through_the_proxy_loses_nothing_while_rangerctl_splits_moves_and_joins() {
    let dir = tempfile::tempdir().unwrap();
    let controller = format!("127.0.0.1:{}", free_port());
    let proxy = format!("127.0.0.1:{}", free_port());
    let _rangerd = Process::start(
        "rangerd",
        dir.path(),
        Command::new(controller_bin("rangerd"))
            .args(["--listen", &controller, "--store"])
            .arg(dir.path().join("rangerd.redb"))
            .args(["--probe-ms", "200"]),
    );
    let mut nodes = Vec::new();
    for name in ["node1", "node2", "node3"] {
        let listen = format!("127.0.0.1:{}", free_port());
        nodes.push(Process::start(
            name,
            dir.path(),
            Command::new(env!("CARGO_BIN_EXE_kv-node"))
                .args([
                    "--id",
                    name,
                    "--listen",
                    &listen,
                    "--controller",
                    &controller,
                ])
                .arg("--data")
                .arg(dir.path().join(name)),
        ));
    }
    let _proxy = Process::start(
        "kv-proxy",
        dir.path(),
        Command::new(env!("CARGO_BIN_EXE_kv-proxy")).args([
            "--listen",
            &proxy,
            "--controller",
            &controller,
            "--poll-ms",
            "200",
        ]),
    );
    // All three nodes registered, range 1 placed.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ctl(&controller, &["--json", "nodes"]);
        if out.status.success() {
            let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
            if list.len() == 3 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "nodes did not register");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_ranges(&controller, "range 1 placed", settled);

    // The client through the proxy.
    let kv = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_kv"))
            .args(["--addr", &proxy])
            .args(args))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !kv(&["put", "hello", "world"]).status.success() {
        assert!(Instant::now() < deadline, "the proxy never served a put");
        std::thread::sleep(Duration::from_millis(100));
    }
    let got = kv(&["get", "hello"]);
    assert!(got.status.success());
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "world");

    // The hammer binary runs while ranges split, move and join.
    let hammer = Command::new(env!("CARGO_BIN_EXE_hammer"))
        .args(["--addr", &proxy, "--workers", "4", "--keys", "200"])
        .args(["--duration", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    ctl_ok(&controller, &["split", "1", "h2"]);
    let ranges = wait_ranges(&controller, "split settled", |r| {
        settled(r) && current(r).len() == 2
    });
    let halves = current(&ranges);
    let (right, right_node) = halves[1].clone();
    let to = ["node1", "node2", "node3"]
        .into_iter()
        .find(|n| *n != right_node && *n != halves[0].1)
        .unwrap();
    ctl_ok(&controller, &["move", &right.to_string(), to]);
    wait_ranges(&controller, "move settled", |r| {
        settled(r) && current(r).iter().any(|(id, n)| *id == right && n == to)
    });
    ctl_ok(
        &controller,
        &["join", &halves[0].0.to_string(), &right.to_string()],
    );
    wait_ranges(&controller, "join settled", |r| {
        settled(r) && current(r).len() == 1
    });
    std::thread::sleep(Duration::from_secs(1));

    // SIGINT: the hammer stops, verifies every key, and reports.
    let pid = hammer.id().to_string();
    assert!(
        run(Command::new("kill").args(["-INT", &pid]))
            .status
            .success()
    );
    let out = hammer.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the hammer failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["unexpected"], 0, "{report}");
    assert_eq!(report["stale"], 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert!(report["ok_ops"].as_u64().unwrap() > 100, "{report}");
}
