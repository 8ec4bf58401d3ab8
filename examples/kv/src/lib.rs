//! The example key-value store: RocksDB, range-sharded by Ranger.
//!
//! - [`node`]: a KV node. One RocksDB per node; implements the node SDK's
//!   `Node` trait (with streamed state transfer between nodes) and the `kv.KV`
//!   service.
//! - [`proxy`]: the routing proxy: `kv.KV` in front of every node.
//! - [`hammer`]: a load generator that checks every acknowledged write.
//! - [`keys`]: how keys are written on command lines.
//! - [`metrics`]: request metrics, shared by the node and the proxy.
//! - [`pb`]: the store's own wire contract, `proto/kv.proto` (package `kv`).

/// Code generated from `proto/kv.proto` by `build.rs`: the `kv.KV` service,
/// wire-compatible with the Go reference's KV example for Get, Put and Dump.
#[allow(missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("kv");
}

pub mod hammer;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod proxy;
