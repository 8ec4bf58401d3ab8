//! The example key-value store: RocksDB, range-sharded by Ranger.
//!
//! - [`node`]: a KV node. One RocksDB per node; implements the node SDK's
//!   `Node` trait (with streamed state transfer between nodes) and the `kv.KV`
//!   service.
//! - [`proxy`]: the routing proxy: `kv.KV` in front of every node.
//! - [`hammer`]: a load generator that checks every acknowledged write.
//! - [`keys`]: how keys are written on command lines.

pub mod hammer;
pub mod keys;
pub mod node;
pub mod proxy;
