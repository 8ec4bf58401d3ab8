//! How `rangerctl balance` prints the balancer's status: a table of nodes
//! (load, capacity, share of the mean now and after the plan), the imbalance
//! against the tolerance band, the round's actions with their reasons, and
//! what it skipped and why.

use ranger_proto::pb::ranger as pb;
use serde_json::{Value, json};

pub fn print_balance(b: &pb::BalanceResponse, as_json: bool) {
    if as_json {
        println!("{}", to_json(b));
        return;
    }
    let paused = if b.paused_millis > 0 {
        format!(", paused for {:.0} s more", b.paused_millis as f64 / 1000.0)
    } else {
        String::new()
    };
    println!("balancer: {}{paused}", b.mode);
    if !b.has_round {
        println!("no round planned yet (the first comes one interval after start)");
        return;
    }
    println!(
        "last round {:.1} s ago: imbalance {:.2} (max/mean; requests {:.2}, bytes {:.2}, keys {:.2}), {:.2} after its moves; tolerance ±{:.0}%",
        b.round_age_millis as f64 / 1000.0,
        b.imbalance,
        b.imbalance_requests,
        b.imbalance_bytes,
        b.imbalance_keys,
        b.planned_imbalance,
        b.tolerance * 100.0
    );
    println!(
        "\n{:<12} {:<16} {:>8} {:>10} {:>8} {:>8} {:>7} {:>12}",
        "NODE", "STATE", "CAPACITY", "LOAD", "SHARE", "PLANNED", "RANGES", "BYTES"
    );
    for n in &b.nodes {
        let state = if n.fresh {
            n.state.clone()
        } else {
            format!("{} (stale)", n.state)
        };
        println!(
            "{:<12} {:<16} {:>8.2} {:>10.2} {:>7.0}% {:>7.0}% {:>7} {:>12}",
            n.node,
            state,
            n.capacity,
            n.load,
            n.share_of_mean * 100.0,
            n.planned_share_of_mean * 100.0,
            n.ranges,
            n.bytes
        );
    }
    println!(
        "\nplan ({} bytes to move of a {} byte budget):",
        b.bytes_moved, b.bytes_budget
    );
    if b.actions.is_empty() {
        println!("  nothing");
    }
    for a in &b.actions {
        let fate = if a.op != 0 {
            format!("-> op{}", a.op)
        } else if !a.refused.is_empty() {
            format!("refused: {}", a.refused)
        } else {
            format!("not queued ({})", b.mode)
        };
        println!("  {:<36} {:<18} {fate}", a.description, a.reason);
    }
    if !b.skip_counts.is_empty() {
        let counts: Vec<String> = b
            .skip_counts
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect();
        println!("skipped: {}", counts.join(", "));
        for s in b.skipped.iter().take(20) {
            let range = if s.range != 0 {
                format!(" range {}", s.range)
            } else {
                String::new()
            };
            let node = if s.node.is_empty() {
                String::new()
            } else {
                format!(" on {}", s.node)
            };
            println!("  {}{range}{node}: {}", s.candidate, s.reason);
        }
    }
}

fn to_json(b: &pb::BalanceResponse) -> Value {
    json!({
        "mode": b.mode,
        "paused_ms": b.paused_millis,
        "has_round": b.has_round,
        "round_age_ms": b.round_age_millis,
        "imbalance": b.imbalance,
        "imbalance_requests": b.imbalance_requests,
        "imbalance_bytes": b.imbalance_bytes,
        "imbalance_keys": b.imbalance_keys,
        "planned_imbalance": b.planned_imbalance,
        "tolerance": b.tolerance,
        "bytes_moved": b.bytes_moved,
        "bytes_budget": b.bytes_budget,
        "nodes": b.nodes.iter().map(|n| json!({
            "node": n.node, "state": n.state, "capacity": n.capacity, "fresh": n.fresh,
            "load": n.load, "share_of_mean": n.share_of_mean,
            "planned_share_of_mean": n.planned_share_of_mean, "ranges": n.ranges, "bytes": n.bytes,
        })).collect::<Vec<_>>(),
        "actions": b.actions.iter().map(|a| json!({
            "description": a.description, "reason": a.reason, "op": a.op, "refused": a.refused,
        })).collect::<Vec<_>>(),
        "skipped": b.skipped.iter().map(|s| json!({
            "candidate": s.candidate, "range": s.range, "node": s.node, "reason": s.reason,
        })).collect::<Vec<_>>(),
        "skip_counts": b.skip_counts,
    })
}
