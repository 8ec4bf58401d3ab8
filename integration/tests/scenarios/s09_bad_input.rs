//! Scenario 9: bad input at every service, while the hammer runs: wrong
//! `rangerctl` arguments, zero and unknown ids, bad split and join
//! boundaries, oversized keys and values, invalid UTF-8 where the wire says
//! string, garbage and truncated protobuf, at the controller (Orchestrator,
//! Control, Debug, and Registry on the embedded backend), the nodes
//! (`ranger.Node`, `kv.KV`) and the proxy (`kv.KV`). Each must get a clear
//! error (the right code, a message), and nothing may change: the keyspace,
//! the nodes, the operations and the data are compared before and after each
//! group, and the hammer's clients see no error at all.

use std::fmt::Debug;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use ranger_integration::ctl::{Ctl, CtlOutput};
use ranger_integration::views::{Layout, NodeView};
use ranger_integration::{Backend, Cluster, Summary, raw_grpc};
use ranger_kv::pb as kvpb;
use ranger_proto::pb::ranger as pb;
use tonic::{Code, Status};

use crate::common::{self, Markers, holding};

/// A node id no cluster has.
const NOBODY: &str = "nobody";
/// A range id no cluster reaches in these tests.
const UNKNOWN: u64 = 999_999;
/// Garbage: an endless varint, which no protobuf decoder accepts.
const GARBAGE: [u8; 12] = [0xff; 12];
/// Truncated: field 1, length-delimited, announcing 16 bytes and giving one.
const TRUNCATED: [u8; 3] = [0x0a, 0x10, b'a'];
/// Field 1 (a `string` in every message this is sent as) holding bytes that
/// are not UTF-8.
const NOT_UTF8: [u8; 4] = [0x0a, 0x02, 0xff, 0xfe];
/// Larger than any gRPC message our servers accept (the proxy 4 MiB, nodes
/// 64 MiB).
const HUGE: usize = 65 << 20;
/// Larger than the proxy's 4 MiB message limit.
const BIG: usize = 5 << 20;

/// What went wrong, gathered, so that one run names every problem.
#[derive(Debug, Default)]
struct Findings {
    problems: Vec<String>,
    checked: usize,
}

impl Findings {
    /// A gRPC call must fail with one of `codes` and say why.
    fn status<T: Debug>(&mut self, what: &str, result: Result<T, Status>, codes: &[Code]) {
        self.checked += 1;
        match result {
            Ok(answer) => self.problems.push(format!(
                "{what}: accepted ({answer:?}); want one of {codes:?}"
            )),
            Err(status) if !codes.contains(&status.code()) => self.problems.push(format!(
                "{what}: {:?} {:?}; want one of {codes:?}",
                status.code(),
                status.message()
            )),
            Err(status) if status.message().trim().is_empty() => self
                .problems
                .push(format!("{what}: {:?} without a message", status.code())),
            Err(status) => {
                tracing::info!(what, code = ?status.code(), message = status.message(), "refused")
            }
        }
    }

    /// A raw call: as [`Findings::status`], for a server that was reached.
    fn raw(&mut self, what: &str, result: anyhow::Result<Result<Vec<u8>, Status>>, codes: &[Code]) {
        match result {
            Ok(answer) => self.status(what, answer, codes),
            Err(error) => {
                self.checked += 1;
                self.problems
                    .push(format!("{what}: the server was not reached: {error:#}"));
            }
        }
    }

    /// `rangerctl` must exit non-zero with one of `needles` on stderr.
    fn ctl(&mut self, out: anyhow::Result<CtlOutput>, needles: &[&str]) {
        self.checked += 1;
        match out {
            Err(error) => self
                .problems
                .push(format!("rangerctl did not run: {error:#}")),
            Ok(out) if out.success() => self.problems.push(format!("{out}: succeeded")),
            Ok(out) if !needles.iter().any(|n| out.stderr.contains(n)) => self
                .problems
                .push(format!("{out}: want one of {needles:?} in the message")),
            Ok(_) => {}
        }
    }
}

/// Everything bad input must not change.
#[derive(Debug, PartialEq, Eq)]
struct State {
    layout: Layout,
    nodes: Vec<NodeView>,
    operations: usize,
}

async fn state(cluster: &Cluster) -> anyhow::Result<State> {
    let ctl = cluster.ctl();
    let mut nodes: Vec<NodeView> = ctl.nodes().await?;
    for node in &mut nodes {
        node.ranges.sort_by_key(|r| r.id);
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(State {
        layout: Layout::of(&ctl.ranges().await?),
        nodes,
        operations: ctl.ops().await?.len(),
    })
}

/// Checks that the state and the data are as they were.
async fn unchanged(
    cluster: &Cluster,
    before: &State,
    markers: &Markers,
    group: &str,
) -> anyhow::Result<()> {
    let after = state(cluster).await?;
    if &after != before {
        bail!(
            "{group} changed the cluster:\nbefore {before:?}\nafter {after:?}\nlayout before:\n{}layout after:\n{}",
            before.layout,
            after.layout
        );
    }
    markers
        .check(cluster)
        .await
        .with_context(|| format!("after {group}"))
}

/// The three ranges the scenario cuts: (-inf, h1), [h1, h2), [h2, +inf).
struct Ranges {
    a: u64,
    b: u64,
    c: u64,
}

async fn bad_input(backend: Backend, name: &str) -> anyhow::Result<()> {
    let cluster = common::cluster(backend).await?;
    let result = all_bad_input(&cluster, backend, name).await;
    cluster.conclude(result)
}

async fn all_bad_input(cluster: &Cluster, backend: Backend, name: &str) -> anyhow::Result<()> {
    let markers = Markers::write(cluster).await?;
    common::split_at(cluster, "h1").await?;
    let ranges = common::split_at(cluster, "h2").await?;
    let ids = Ranges {
        a: holding(&ranges, "h0")?.id,
        b: holding(&ranges, "h1")?.id,
        c: holding(&ranges, "h2")?.id,
    };
    let hammer = common::hammer(cluster, 909).await?;
    let before = state(cluster).await?;
    let mut findings = Findings::default();

    rangerctl_arguments(cluster, &ids, &mut findings).await;
    unchanged(cluster, &before, &markers, "wrong rangerctl arguments").await?;
    unknown_ids(cluster.ctl(), &ids, &mut findings).await;
    unchanged(cluster, &before, &markers, "zero and unknown ids").await?;
    bad_boundaries(cluster, &ids, &mut findings).await?;
    unchanged(cluster, &before, &markers, "bad boundaries").await?;
    node_service(cluster, &mut findings).await?;
    unchanged(cluster, &before, &markers, "bad ranger.Node commands").await?;
    kv_service(cluster, &ranges, &mut findings).await?;
    unchanged(cluster, &before, &markers, "bad kv.KV requests").await?;
    oversized(cluster, &ids, &mut findings).await?;
    unchanged(cluster, &before, &markers, "oversized keys and values").await?;
    raw_bytes(cluster, &mut findings).await?;
    unchanged(
        cluster,
        &before,
        &markers,
        "garbage, truncated and non-UTF-8 protobuf",
    )
    .await?;

    // Every process is still up.
    for process in cluster
        .controllers
        .iter()
        .map(|c| &c.process)
        .chain(cluster.nodes.iter().map(|n| &n.process))
        .chain(cluster.proxy.iter().map(|p| &p.process))
    {
        anyhow::ensure!(
            std::process::Command::new("kill")
                .args(["-0", &process.pid().context("not started")?.to_string()])
                .status()?
                .success(),
            "{} died",
            process.name()
        );
    }

    let report = hammer.stop().await?;
    report.check_no_loss()?;
    Summary::new(name, backend, &report)
        .note(format!(
            "{} bad inputs, {} answered wrongly",
            findings.checked,
            findings.problems.len()
        ))
        .print();
    if !findings.problems.is_empty() {
        bail!(
            "{} of {} bad inputs were not refused clearly:\n  {}",
            findings.problems.len(),
            findings.checked,
            findings.problems.join("\n  ")
        );
    }
    report.check_no_client_errors("bad input sent by others")?;
    Ok(())
}

async fn rangerctl_arguments(cluster: &Cluster, ids: &Ranges, f: &mut Findings) {
    let ctl = cluster.ctl();
    let a = ids.a.to_string();
    f.ctl(ctl.run(&[]).await, &["Usage"]);
    f.ctl(ctl.run(&["frobnicate"]).await, &["unrecognized subcommand"]);
    f.ctl(ctl.run(&["move"]).await, &["required"]);
    f.ctl(ctl.run(&["move", "abc"]).await, &["invalid value"]);
    f.ctl(ctl.run(&["move", "-1"]).await, &["unexpected argument"]);
    f.ctl(
        ctl.run(&["range", "18446744073709551616"]).await,
        &["invalid value"],
    );
    f.ctl(ctl.run(&["split", &a]).await, &["required"]);
    f.ctl(ctl.run(&["split", &a, ""]).await, &["must not be empty"]);
    f.ctl(ctl.run(&["split", &a, "hex:zz"]).await, &["bad hex key"]);
    f.ctl(
        ctl.run(&["split", &a, "b64:@@@@"]).await,
        &["b64", "base64"],
    );
    f.ctl(ctl.run(&["join", &a]).await, &["required"]);
    f.ctl(ctl.run(&["balance", "pause"]).await, &["required"]);
    f.ctl(
        ctl.run(&["balance", "pause", "soon"]).await,
        &["invalid value"],
    );
    f.ctl(ctl.run(&["drain"]).await, &["required"]);
    match Ctl::new("127.0.0.1:1") {
        Ok(nowhere) => f.ctl(nowhere.run(&["ranges"]).await, &["cannot reach rangerd"]),
        Err(error) => f.problems.push(format!("no rangerctl: {error:#}")),
    }
}

async fn unknown_ids(ctl: &Ctl, ids: &Ranges, f: &mut Findings) {
    let a = ids.a.to_string();
    let unknown = UNKNOWN.to_string();
    let zero_or_unknown = &["InvalidArgument", "NotFound"][..];
    for args in [
        vec!["range", "0"],
        vec!["move", "0"],
        vec!["split", "0", "h"],
        vec!["join", "0", &a],
        vec!["join", &a, "0"],
        vec!["explain", "0"],
        vec!["cancel", "0"],
    ] {
        f.ctl(ctl.run(&args).await, zero_or_unknown);
    }
    for args in [
        vec!["range", &unknown],
        vec!["move", &unknown],
        vec!["split", &unknown, "h"],
        vec!["join", &unknown, &a],
        vec!["explain", &unknown],
        vec!["cancel", &unknown],
        vec!["node", NOBODY],
        vec!["move", &a, NOBODY],
        vec!["drain", NOBODY],
        vec!["drain", NOBODY, "--undo"],
        vec!["forget", NOBODY],
    ] {
        f.ctl(ctl.run(&args).await, &["NotFound"]);
    }
}

async fn bad_boundaries(cluster: &Cluster, ids: &Ranges, f: &mut Findings) -> anyhow::Result<()> {
    let ctl = cluster.ctl();
    let (a, b, c) = (ids.a.to_string(), ids.b.to_string(), ids.c.to_string());
    let refused = &["InvalidArgument", "FailedPrecondition"][..];
    // A split at the range's own start, at its end, or outside it.
    f.ctl(ctl.run(&["split", &b, "h1"]).await, refused);
    f.ctl(ctl.run(&["split", &a, "h1"]).await, refused);
    f.ctl(ctl.run(&["split", &a, "h3"]).await, refused);
    f.ctl(ctl.run(&["split", &c, "a"]).await, refused);
    // Joins of ranges that are not left and right neighbours.
    f.ctl(ctl.run(&["join", &a, &c]).await, refused);
    f.ctl(ctl.run(&["join", &b, &a]).await, refused);
    f.ctl(ctl.run(&["join", &a, &a]).await, refused);
    // What rangerctl refuses before sending, sent anyway.
    let mut orchestrator =
        pb::orchestrator_client::OrchestratorClient::connect(format!("http://{}", ctl.addr()))
            .await?;
    f.status(
        "Split at an empty boundary",
        orchestrator
            .split(pb::SplitRequest {
                range: ids.a,
                boundary: Vec::new(),
                ..Default::default()
            })
            .await,
        &[Code::InvalidArgument],
    );
    f.status(
        "Split of range 0",
        orchestrator
            .split(pb::SplitRequest {
                range: 0,
                boundary: b"h0".to_vec(),
                ..Default::default()
            })
            .await,
        &[Code::InvalidArgument],
    );
    f.status(
        "Join of range 0 with range 0",
        orchestrator.join(pb::JoinRequest::default()).await,
        &[Code::InvalidArgument],
    );
    let mut control =
        pb::control_client::ControlClient::connect(format!("http://{}", ctl.addr())).await?;
    f.status(
        "Drain of the empty node id",
        control.drain(pb::DrainRequest::default()).await,
        &[Code::InvalidArgument, Code::NotFound],
    );
    f.status(
        "Forget of the empty node id",
        control.forget(pb::ForgetRequest::default()).await,
        &[Code::InvalidArgument, Code::NotFound],
    );
    f.status(
        "a zero balancer pause",
        control
            .pause_balance(pb::PauseBalanceRequest { millis: 0 })
            .await,
        &[Code::InvalidArgument],
    );
    f.status(
        "a balancer pause of u64::MAX ms",
        control
            .pause_balance(pb::PauseBalanceRequest { millis: u64::MAX })
            .await,
        &[Code::InvalidArgument],
    );
    if cluster.backend() == Backend::Embedded {
        let mut registry =
            pb::registry_client::RegistryClient::connect(format!("http://{}", ctl.addr())).await?;
        f.status(
            "Register of the empty node id",
            registry
                .register(pb::RegisterRequest {
                    node: String::new(),
                    address: "127.0.0.1:1".into(),
                })
                .await,
            &[Code::InvalidArgument],
        );
        f.status(
            "Register at an address that is not host:port",
            registry
                .register(pb::RegisterRequest {
                    node: "intruder".into(),
                    address: "no port here".into(),
                })
                .await,
            &[Code::InvalidArgument],
        );
        f.status(
            "Deregister of the empty node id",
            registry.deregister(pb::DeregisterRequest::default()).await,
            &[Code::InvalidArgument],
        );
    }
    Ok(())
}

fn meta(ident: u64, start: &[u8], end: &[u8]) -> pb::RangeMeta {
    pb::RangeMeta {
        ident,
        start: start.to_vec().into(),
        end: end.to_vec().into(),
    }
}

async fn node_service(cluster: &Cluster, f: &mut Findings) -> anyhow::Result<()> {
    for node in &cluster.nodes {
        let mut client =
            pb::node_client::NodeClient::connect(format!("http://{}", node.listen)).await?;
        let on = |what: &str| format!("{what} on {}", node.id);
        f.status(
            &on("Prepare of range 0"),
            client
                .prepare(pb::PrepareRequest {
                    range: Some(meta(0, b"", b"")),
                    ..Default::default()
                })
                .await,
            &[Code::InvalidArgument],
        );
        f.status(
            &on("Prepare without a range"),
            client.prepare(pb::PrepareRequest::default()).await,
            &[Code::InvalidArgument],
        );
        f.status(
            &on("Prepare of an inverted range (start after end)"),
            client
                .prepare(pb::PrepareRequest {
                    range: Some(meta(UNKNOWN, b"m", b"c")),
                    ..Default::default()
                })
                .await,
            &[Code::InvalidArgument],
        );
        f.status(
            &on("Prepare of an empty range (start equal to end)"),
            client
                .prepare(pb::PrepareRequest {
                    range: Some(meta(UNKNOWN, b"m", b"m")),
                    ..Default::default()
                })
                .await,
            &[Code::InvalidArgument],
        );
        for range in [0, UNKNOWN] {
            f.status(
                &on(&format!("Activate of range {range}")),
                client
                    .activate(pb::ActivateRequest {
                        range,
                        ..Default::default()
                    })
                    .await,
                &[Code::InvalidArgument, Code::NotFound],
            );
            f.status(
                &on(&format!("Deactivate of range {range}")),
                client
                    .deactivate(pb::DeactivateRequest {
                        range,
                        ..Default::default()
                    })
                    .await,
                &[Code::InvalidArgument, Code::NotFound],
            );
        }
        f.status(
            &on("Drop of range 0"),
            client
                .drop(pb::DropRequest {
                    range: 0,
                    ..Default::default()
                })
                .await,
            &[Code::InvalidArgument],
        );
        // Drop of a range the node never had is answered, not refused: the
        // range is NotFound, which is what a Drop wants (the reference's
        // controller relies on it).
        f.checked += 1;
        match client
            .drop(pb::DropRequest {
                range: UNKNOWN,
                ..Default::default()
            })
            .await
        {
            Ok(answer) if answer.get_ref().state == pb::RemoteState::RemoteNotFound as i32 => {}
            Err(status) if status.code() == Code::NotFound => {}
            other => f
                .problems
                .push(format!("{}: {other:?}", on("Drop of an unknown range"))),
        }
    }
    Ok(())
}

async fn kv_service(
    cluster: &Cluster,
    ranges: &[ranger_integration::views::RangeView],
    f: &mut Findings,
) -> anyhow::Result<()> {
    let mut targets = vec![("the proxy".to_owned(), cluster.proxy_addr()?.to_owned())];
    targets.extend(
        cluster
            .nodes
            .iter()
            .map(|n| (format!("node {}", n.id), n.listen.to_string())),
    );
    for (name, addr) in &targets {
        let mut kv = kvpb::kv_client::KvClient::connect(format!("http://{addr}")).await?;
        let at = |what: &str| format!("{what} at {name}");
        f.status(
            &at("Get of the empty key"),
            kv.get(kvpb::GetRequest { key: String::new() }).await,
            &[Code::InvalidArgument],
        );
        f.status(
            &at("Put of the empty key"),
            kv.put(kvpb::PutRequest {
                key: String::new(),
                value: b"v".to_vec(),
            })
            .await,
            &[Code::InvalidArgument],
        );
        f.status(
            &at("Delete of the empty key"),
            kv.delete(kvpb::DeleteRequest { key: String::new() }).await,
            &[Code::InvalidArgument],
        );
        f.status(
            &at("Dump of range 0"),
            kv.dump(kvpb::DumpRequest { range_ident: 0 }).await,
            &[Code::InvalidArgument],
        );
        f.status(
            &at("Dump of an unknown range"),
            kv.dump(kvpb::DumpRequest {
                range_ident: UNKNOWN,
            })
            .await,
            &[Code::NotFound],
        );
        // An inverted scan is empty or refused, never an error of the server.
        f.checked += 1;
        match kv
            .scan(kvpb::ScanRequest {
                start: "z".into(),
                end: "a".into(),
                limit: 0,
            })
            .await
        {
            Ok(answer) if answer.get_ref().pairs.is_empty() => {}
            // A node that does not serve the start key says so first.
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::FailedPrecondition
                ) => {}
            other => f
                .problems
                .push(format!("{}: {other:?}", at("an inverted Scan"))),
        }
    }
    // A node asked for a key it does not serve says so.
    for key in ["h0-not-here", "h1-not-here", "h2-not-here"] {
        let server = holding(ranges, key)?.served_by();
        for node in cluster
            .nodes
            .iter()
            .filter(|n| Some(&n.id) != server.as_ref())
        {
            let mut kv =
                kvpb::kv_client::KvClient::connect(format!("http://{}", node.listen)).await?;
            f.status(
                &format!("Put of {key:?} at {}, which does not serve it", node.id),
                kv.put(kvpb::PutRequest {
                    key: key.to_owned(),
                    value: b"v".to_vec(),
                })
                .await,
                &[Code::FailedPrecondition, Code::Aborted],
            );
        }
    }
    Ok(())
}

async fn oversized(cluster: &Cluster, ids: &Ranges, f: &mut Findings) -> anyhow::Result<()> {
    let proxy = cluster.proxy_addr()?.to_owned();
    let mut kv = kvpb::kv_client::KvClient::connect(format!("http://{proxy}")).await?;
    let too_large = &[
        Code::ResourceExhausted,
        Code::OutOfRange,
        Code::InvalidArgument,
    ];
    let big_key = format!("h0-{}", "k".repeat(BIG));
    f.status(
        "Put of a 5 MiB value through the proxy",
        kv.put(kvpb::PutRequest {
            key: "h0-big".into(),
            value: vec![b'v'; BIG],
        })
        .await,
        too_large,
    );
    f.status(
        "Put of a 5 MiB key through the proxy",
        kv.put(kvpb::PutRequest {
            key: big_key.clone(),
            value: b"v".to_vec(),
        })
        .await,
        too_large,
    );
    f.status(
        "Get of a 5 MiB key through the proxy",
        kv.get(kvpb::GetRequest { key: big_key }).await,
        too_large,
    );
    for node in &cluster.nodes {
        let mut kv = kvpb::kv_client::KvClient::connect(format!("http://{}", node.listen))
            .await?
            .max_encoding_message_size(usize::MAX);
        f.status(
            &format!("Put of a 65 MiB value at node {}", node.id),
            kv.put(kvpb::PutRequest {
                key: "h0-huge".into(),
                value: vec![b'v'; HUGE],
            })
            .await,
            too_large,
        );
    }
    let mut orchestrator = pb::orchestrator_client::OrchestratorClient::connect(format!(
        "http://{}",
        cluster.ctl().addr()
    ))
    .await?
    .max_encoding_message_size(usize::MAX);
    f.status(
        "Split at a 1 MiB boundary",
        orchestrator
            .split(pb::SplitRequest {
                range: ids.a,
                boundary: format!("h0-{}", "b".repeat(1 << 20)).into_bytes(),
                ..Default::default()
            })
            .await,
        too_large,
    );
    f.status(
        "Split at a 5 MiB boundary",
        orchestrator
            .split(pb::SplitRequest {
                range: ids.a,
                boundary: format!("h0-{}", "b".repeat(BIG)).into_bytes(),
                ..Default::default()
            })
            .await,
        too_large,
    );
    Ok(())
}

async fn raw_bytes(cluster: &Cluster, f: &mut Findings) -> anyhow::Result<()> {
    let decode_errors = &[Code::Internal, Code::InvalidArgument];
    let controller = cluster.ctl().addr().to_owned();
    let mut controller_methods = vec![
        "/ranger.Orchestrator/Move",
        "/ranger.Orchestrator/Split",
        "/ranger.Orchestrator/Join",
        "/ranger.Control/Drain",
        "/ranger.Control/Cancel",
        "/ranger.Control/Forget",
        "/ranger.Control/Explain",
        "/ranger.Control/PauseBalance",
        "/ranger.Debug/Range",
        "/ranger.Debug/Node",
    ];
    if cluster.backend() == Backend::Embedded {
        controller_methods.extend(["/ranger.Registry/Register", "/ranger.Registry/Deregister"]);
    }
    let node_methods = [
        "/ranger.Node/Prepare",
        "/ranger.Node/Activate",
        "/ranger.Node/Deactivate",
        "/ranger.Node/Drop",
        "/ranger.Node/Info",
    ];
    let kv_methods = [
        "/kv.KV/Get",
        "/kv.KV/Put",
        "/kv.KV/Delete",
        "/kv.KV/Scan",
        "/kv.KV/Dump",
    ];
    let mut calls: Vec<(String, &str)> = controller_methods
        .iter()
        .map(|m| (controller.clone(), *m))
        .collect();
    for node in &cluster.nodes {
        let addr = node.listen.to_string();
        calls.extend(node_methods.iter().map(|m| (addr.clone(), *m)));
        calls.extend(kv_methods.iter().map(|m| (addr.clone(), *m)));
    }
    let proxy = cluster.proxy_addr()?.to_owned();
    calls.extend(kv_methods.iter().map(|m| (proxy.clone(), *m)));

    for (addr, method) in &calls {
        for (kind, bytes) in [("garbage", &GARBAGE[..]), ("truncated", &TRUNCATED[..])] {
            f.raw(
                &format!("{kind} protobuf to {method} at {addr}"),
                raw_grpc::call(addr, method, bytes.to_vec()).await,
                decode_errors,
            );
        }
    }
    // Field 1 is a string in these requests: the key, or a node id.
    let mut string_field_1: Vec<(String, &str)> = vec![
        (controller.clone(), "/ranger.Control/Drain"),
        (controller.clone(), "/ranger.Control/Forget"),
        (controller.clone(), "/ranger.Debug/Node"),
        (proxy.clone(), "/kv.KV/Get"),
        (proxy.clone(), "/kv.KV/Put"),
        (proxy.clone(), "/kv.KV/Delete"),
    ];
    if cluster.backend() == Backend::Embedded {
        string_field_1.push((controller.clone(), "/ranger.Registry/Register"));
    }
    for node in &cluster.nodes {
        let addr = node.listen.to_string();
        string_field_1.extend(
            ["/kv.KV/Get", "/kv.KV/Put", "/kv.KV/Delete"]
                .iter()
                .map(|m| (addr.clone(), *m)),
        );
    }
    for (addr, method) in &string_field_1 {
        f.raw(
            &format!("a non-UTF-8 string to {method} at {addr}"),
            raw_grpc::call(addr, method, NOT_UTF8.to_vec()).await,
            decode_errors,
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_bad_input_at_every_service_gets_a_clear_error_and_changes_nothing() {
    bad_input(Backend::Consul, "s09 bad input").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_on_the_embedded_default_bad_input_also_at_the_registry_changes_nothing() {
    bad_input(Backend::Embedded, "s09 bad input").await.unwrap();
}

/// A range record in Consul overwritten with garbage while the controller is
/// down (a bad restore, a stray tool): the restarted controller must refuse to
/// lead on it, say which record, and write nothing (SCENARIOS.md #35); once the
/// record is put back it leads with the keyspace as it was.
async fn corrupt_keyspace_in_consul() -> anyhow::Result<()> {
    let mut cluster = Cluster::builder(Backend::Consul)
        .nodes(1)
        .proxy(false)
        .start()
        .await?;
    let result = refuses_corrupt_keyspace(&mut cluster).await;
    cluster.conclude(result)
}

async fn refuses_corrupt_keyspace(cluster: &mut Cluster) -> anyhow::Result<()> {
    use ranger_consul::{PutOptions, QueryOptions};
    use ranger_integration::cluster::CONSUL_PREFIX;

    let before = Layout::of(&cluster.wait_settled().await?);
    let range = before.0.first().context("the keyspace has no range")?.id;
    cluster.kill_controller(0)?;
    let client = cluster.consul().context("no Consul")?.client();
    let key = format!("{CONSUL_PREFIX}keyspace/ranges/{range:020}");
    let original = client
        .kv_get(&key, QueryOptions::default())
        .await?
        .value
        .with_context(|| format!("no record at {key}"))?
        .value;
    let garbage = b"not a range record \xff\x00".to_vec();
    client
        .kv_put(&key, &garbage, &PutOptions::default())
        .await?;

    cluster.controllers[0].process.start()?;
    let refused = ranger_integration::wait::until(
        "the controller refuses the corrupt keyspace",
        Duration::from_secs(60),
        async || {
            let log = cluster.controllers[0].process.log_text();
            match log
                .lines()
                .find(|l| l.contains("cannot lead with this keyspace"))
            {
                Some(line) => Ok(line.to_owned()),
                None => Err("not yet".to_owned()),
            }
        },
    )
    .await?;
    if !refused.contains(&key) {
        bail!("the refusal does not name the record: {refused}");
    }
    let listing = cluster.ctl().run(&["ranges"]).await?;
    if listing.success() {
        bail!(
            "a controller leads on a corrupt keyspace: {}",
            listing.stdout
        );
    }
    let stored = client
        .kv_get(&key, QueryOptions::default())
        .await?
        .value
        .map(|p| p.value);
    if stored.as_deref() != Some(garbage.as_slice()) {
        bail!("the corrupt record was changed: {stored:?}");
    }

    // Put back: the same controller leads with the keyspace it had.
    client
        .kv_put(&key, &original, &PutOptions::default())
        .await?;
    cluster.wait_leads(0).await?;
    let after = Layout::of(&cluster.wait_settled().await?);
    if after != before {
        bail!("the keyspace changed: {before:?} -> {after:?}");
    }
    // Straight to stderr, like `Summary::print`: libtest captures `eprintln!`.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SCENARIO s09 corrupt keyspace in Consul [consul]: refused with {:?}; nothing written; led again once restored",
        refused.trim()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s09_a_corrupt_range_record_in_consul_is_refused_by_name_and_left_as_it_is() {
    corrupt_keyspace_in_consul().await.unwrap();
}
