//! `rangerctl`: the operator's client for `rangerd`.
//!
//! Reads with `ranges`, `range`, `nodes`, `node`, `ops`, `balance`, `explain`;
//! acts with `move`, `split`, `join`, `drain`, `cancel`, `forget`, `balance
//! pause|resume`. Operations print each placement transition as it
//! happens and exit non-zero with the reason if they fail. `--json` prints
//! machine-readable output instead of tables.

mod balance;

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use ranger_controller::dashboard::views::{RangeView, placement_state, range_state, show_key};
use ranger_proto::Key;
use ranger_proto::pb::ranger as pb;
use ranger_proto::pb::ranger::control_client::ControlClient;
use ranger_proto::pb::ranger::debug_client::DebugClient;
use ranger_proto::pb::ranger::orchestrator_client::OrchestratorClient;
use serde_json::{Value, json};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "rangerctl", version, about = "Operate a Ranger controller")]
struct Cli {
    /// The controller's address.
    #[arg(
        long,
        env = "RANGERCTL_ADDR",
        default_value = "127.0.0.1:5000",
        global = true
    )]
    addr: String,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every range with its state and placements.
    Ranges,
    /// One range.
    Range { id: u64 },
    /// Every node with its ranges.
    Nodes,
    /// One node.
    Node { id: String },
    /// Operations in flight (with --recent: the latest that ended, newest
    /// first, with how long they took and how they ended).
    Ops {
        #[arg(long)]
        recent: bool,
    },
    /// Move a range to a node (any node if omitted).
    Move { id: u64, node: Option<String> },
    /// Split a range at KEY (text, or hex:..., or b64:...).
    Split {
        id: u64,
        key: String,
        node_left: Option<String>,
        node_right: Option<String>,
    },
    /// Join two adjacent ranges onto a node (any node if omitted).
    Join {
        left: u64,
        right: u64,
        node: Option<String>,
    },
    /// Move every range off a node and place nothing new on it.
    Drain {
        node: String,
        /// Undo an earlier drain.
        #[arg(long)]
        undo: bool,
    },
    /// Cancel an operation (see `ops`) before its point of no return.
    Cancel { op: u64 },
    /// Declare a lost node gone for good: the ranges waiting for its data are
    /// re-created EMPTY elsewhere (their data is lost). Refused unless the node
    /// is lost.
    Forget { node: String },
    /// The balancer: mode, per-node load, imbalance, the last round's plan and
    /// what it skipped and why; or pause it for a while, or resume it.
    Balance {
        #[command(subcommand)]
        action: Option<BalanceCmd>,
    },
    /// Why a range is where it is, and why it is (not) moving.
    Explain { id: u64 },
}

#[derive(Debug, Subcommand)]
enum BalanceCmd {
    /// Pause for DURATION (e.g. 30s, 10m, 1h; always with an end). Queued
    /// balancer operations are cancelled; running handoffs finish.
    Pause { duration: humantime::Duration },
    /// End a pause now.
    Resume,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

async fn channel(addr: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .context("bad --addr")?
        .connect()
        .await
        .with_context(|| format!("cannot reach rangerd at {addr}"))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let channel = channel(&cli.addr).await?;
    let mut debug = DebugClient::new(channel.clone());
    let mut control = ControlClient::new(channel.clone());
    let mut orchestrator = OrchestratorClient::new(channel);
    match cli.command {
        Cmd::Ranges => {
            let ranges = debug
                .ranges_list(pb::RangesListRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .ranges;
            print_ranges(&ranges, cli.json);
        }
        Cmd::Range { id } => {
            let range = debug
                .range(pb::RangeRequest { range: id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_ranges(&[range], cli.json);
        }
        Cmd::Nodes => {
            let nodes = debug
                .nodes_list(pb::NodesListRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .nodes;
            print_nodes(&nodes, cli.json);
        }
        Cmd::Node { id } => {
            let node = debug
                .node(pb::NodeRequest { node: id })
                .await
                .map_err(status_error)?
                .into_inner();
            print_nodes(&[node], cli.json);
        }
        Cmd::Ops { recent } => {
            let response = control
                .operations(pb::OperationsRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            if recent {
                print_ended_ops(&response.recent, cli.json);
            } else {
                print_ops(&response.operations, cli.json);
            }
        }
        Cmd::Move { id, node } => {
            let request = pb::MoveRequest {
                range: id,
                node: node.unwrap_or_default(),
            };
            let call = async move { orchestrator.r#move(request).await.map(|_| ()) };
            watch_while(&mut control, call, cli.json, &format!("move {id}")).await?;
        }
        Cmd::Split {
            id,
            key,
            node_left,
            node_right,
        } => {
            let boundary = Key::parse(&key)?.into_bytes();
            if boundary.is_empty() {
                bail!("the split key must not be empty");
            }
            let request = pb::SplitRequest {
                range: id,
                boundary,
                node_left: node_left.unwrap_or_default(),
                node_right: node_right.unwrap_or_default(),
            };
            let call = async move { orchestrator.split(request).await.map(|_| ()) };
            watch_while(&mut control, call, cli.json, &format!("split {id}")).await?;
        }
        Cmd::Join { left, right, node } => {
            let request = pb::JoinRequest {
                range_left: left,
                range_right: right,
                node: node.unwrap_or_default(),
            };
            let call = async move { orchestrator.join(request).await.map(|_| ()) };
            watch_while(
                &mut control,
                call,
                cli.json,
                &format!("join {left} {right}"),
            )
            .await?;
        }
        Cmd::Drain { node, undo } => {
            control
                .drain(pb::DrainRequest {
                    node: node.clone(),
                    drain: !undo,
                })
                .await
                .map_err(status_error)?;
            let what = if undo {
                "no longer draining"
            } else {
                "draining"
            };
            if cli.json {
                println!("{}", json!({"ok": true, "node": node, "draining": !undo}));
            } else {
                println!("node {node}: {what}");
            }
        }
        Cmd::Forget { node } => {
            let lost = control
                .forget(pb::ForgetRequest { node: node.clone() })
                .await
                .map_err(status_error)?
                .into_inner()
                .ranges_lost;
            if cli.json {
                println!("{}", json!({"ok": true, "node": node, "ranges_lost": lost}));
            } else {
                println!(
                    "node {node} forgotten: {} range(s) re-created empty, their data is lost: {lost:?}",
                    lost.len()
                );
            }
        }
        Cmd::Balance { action } => {
            let status = match action {
                None => control.balance(pb::BalanceRequest {}).await,
                Some(BalanceCmd::Pause { duration }) => {
                    let millis = u64::try_from(std::time::Duration::from(duration).as_millis())
                        .unwrap_or(u64::MAX);
                    control
                        .pause_balance(pb::PauseBalanceRequest { millis })
                        .await
                }
                Some(BalanceCmd::Resume) => {
                    control.resume_balance(pb::ResumeBalanceRequest {}).await
                }
            }
            .map_err(status_error)?
            .into_inner();
            balance::print_balance(&status, cli.json);
        }
        Cmd::Explain { id } => {
            let lines = control
                .explain(pb::ExplainRequest { range: id })
                .await
                .map_err(status_error)?
                .into_inner()
                .lines;
            if cli.json {
                println!("{}", json!({"range": id, "lines": lines}));
            } else {
                for line in lines {
                    println!("{line}");
                }
            }
        }
        Cmd::Cancel { op } => {
            control
                .cancel(pb::CancelRequest { operation: op })
                .await
                .map_err(status_error)?;
            if cli.json {
                println!("{}", json!({"ok": true, "operation": op}));
            } else {
                println!("op{op}: cancel requested");
            }
        }
    }
    Ok(())
}

/// Runs an operation call while printing the controller's events, live.
async fn watch_while(
    control: &mut ControlClient<Channel>,
    call: impl std::future::Future<Output = Result<(), tonic::Status>>,
    json: bool,
    what: &str,
) -> anyhow::Result<()> {
    let mut events = control
        .watch(pb::WatchRequest { ranges: vec![] })
        .await
        .map_err(status_error)?
        .into_inner();
    let started = std::time::Instant::now();
    tokio::pin!(call);
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            event = events.message() => match event {
                Ok(Some(event)) => print_event(&event, started, json),

                Ok(None) | Err(_) => {
                    // The watch ended (controller restarting?): keep waiting for the call.
                    break (&mut call).await;
                }
            },
        }
    };
    // The call's answer and the last events travel on different streams: print
    // the events that were already on their way.
    while let Ok(Ok(Some(event))) =
        tokio::time::timeout(std::time::Duration::from_millis(150), events.message()).await
    {
        print_event(&event, started, json);
    }
    let ms = started.elapsed().as_millis();
    match result {
        Ok(()) => {
            if json {
                println!("{}", json!({"ok": true, "operation": what, "ms": ms}));
            } else {
                println!("{what}: done in {ms} ms");
            }
            Ok(())
        }
        Err(status) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "operation": what, "code": format!("{:?}", status.code()), "error": status.message()})
                );
            }
            Err(status_error(status)).with_context(|| format!("{what} failed"))
        }
    }
}

fn print_event(event: &pb::WatchEvent, started: std::time::Instant, json: bool) {
    let ms = started.elapsed().as_millis();
    if json {
        println!(
            "{}",
            json!({"event": {"ms": ms, "range": event.range, "message": event.message}})
        );
    } else {
        println!("{ms:>6} ms  range {:<4} {}", event.range, event.message);
    }
}

fn print_ranges(ranges: &[pb::RangeResponse], json: bool) {
    if json {
        // The dashboard's `/api/ranges` answers with the same view.
        let all: Vec<RangeView> = ranges.iter().map(RangeView::from).collect();
        println!("{}", json!(all));
        return;
    }
    println!(
        "{:<6} {:<16} {:<16} {:<10} PLACEMENTS",
        "ID", "START", "END", "STATE"
    );
    for r in ranges {
        let meta = r.meta.clone().unwrap_or_default();
        let placements: Vec<String> = r
            .placements
            .iter()
            .filter_map(|p| p.placement.as_ref())
            .map(|p| format!("{}:{}", p.node, placement_state(p.state)))
            .collect();
        println!(
            "{:<6} {:<16} {:<16} {:<10} {}",
            meta.ident,
            show_key(&meta.start, "-inf"),
            show_key(&meta.end, "+inf"),
            range_state(r.state),
            if placements.is_empty() {
                "-".to_owned()
            } else {
                placements.join(" ")
            }
        );
        if !r.unavailable.is_empty() {
            println!(
                "       UNAVAILABLE for {:.1} s: {}",
                r.unavailable_millis as f64 / 1000.0,
                r.unavailable
            );
        }
    }
}

fn print_nodes(nodes: &[pb::NodeResponse], json: bool) {
    if json {
        let all: Vec<Value> = nodes
            .iter()
            .map(|n| {
                let meta = n.node.clone().unwrap_or_default();
                json!({
                    "id": meta.ident,
                    "address": meta.address,
                    "draining": meta.want_drain,
                    "capacity": n.capacity,
                    "ranges": n.ranges.iter().map(|r| json!({
                        "id": r.meta.as_ref().map_or(0, |m| m.ident),
                        "state": placement_state(r.state),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", Value::Array(all));
        return;
    }
    println!("{:<12} {:<22} {:<9} RANGES", "NODE", "ADDRESS", "DRAINING");
    for n in nodes {
        let meta = n.node.clone().unwrap_or_default();
        let ranges: Vec<String> = n
            .ranges
            .iter()
            .map(|r| {
                format!(
                    "{}:{}",
                    r.meta.as_ref().map_or(0, |m| m.ident),
                    placement_state(r.state)
                )
            })
            .collect();
        println!(
            "{:<12} {:<22} {:<9} {}",
            meta.ident,
            meta.address,
            if meta.want_drain { "yes" } else { "no" },
            if ranges.is_empty() {
                "-".to_owned()
            } else {
                ranges.join(" ")
            }
        );
    }
}

fn print_ended_ops(ops: &[pb::EndedOperationInfo], json: bool) {
    if json {
        let all: Vec<Value> = ops
            .iter()
            .map(|o| json!({"id": o.id, "description": o.description, "origin": o.origin, "ranges": o.ranges, "duration_ms": o.duration_millis, "ended_ago_ms": o.ended_ago_millis, "result": o.result, "error": o.error}))
            .collect();
        println!("{}", Value::Array(all));
        return;
    }
    if ops.is_empty() {
        println!("no operation ended since this controller started leading");
        return;
    }
    println!(
        "{:<6} {:<20} {:>9} {:>10}  {:<28} BY",
        "OP", "RESULT", "TOOK", "ENDED", "WHAT"
    );
    for o in ops {
        println!(
            "{:<6} {:<20} {:>7}ms {:>6}s ago  {:<28} {}{}",
            o.id,
            o.result,
            o.duration_millis,
            o.ended_ago_millis / 1000,
            o.description,
            o.origin,
            if o.error.is_empty() {
                String::new()
            } else {
                format!(" ({})", o.error)
            }
        );
    }
}

fn print_ops(ops: &[pb::OperationInfo], json: bool) {
    if json {
        let all: Vec<Value> = ops
            .iter()
            .map(|o| json!({"id": o.id, "description": o.description, "phase": o.phase, "ranges": o.ranges, "age_ms": o.age_millis, "origin": o.origin}))
            .collect();
        println!("{}", Value::Array(all));
        return;
    }
    if ops.is_empty() {
        println!("no operations in flight");
        return;
    }
    println!(
        "{:<6} {:<14} {:>9}  {:<28} BY",
        "OP", "PHASE", "AGE", "WHAT"
    );
    for o in ops {
        println!(
            "{:<6} {:<14} {:>7}ms  {:<28} {}",
            o.id, o.phase, o.age_millis, o.description, o.origin
        );
    }
}
