//! What a KV node reports to Prometheus beyond the node SDK's metrics: its
//! `kv.KV` requests (every client read and write, and the node-to-node
//! transfer calls), and how much space its RocksDB takes, sampled just before
//! each scrape from RocksDB's own properties (reading them is cheap, and a
//! gauge kept up to date on every write would cost every write).
//!
//! Families are named `ranger_kv_node_*`. [`super::server::NodeServer::metrics`]
//! puts them and the SDK's `ranger_node_*` into one registry.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::store::Store;
use crate::metrics::RequestMetrics;

/// The prefix of every family [`KvNodeMetrics::register`] registers.
pub const PREFIX: &str = "ranger_kv_node";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartLabels {
    part: &'static str,
}

/// A KV node's own metrics. Cheap to clone: clones share the families.
#[derive(Debug, Clone, Default)]
pub struct KvNodeMetrics {
    /// `kv.KV` requests served by this node.
    pub requests: RequestMetrics,
    store_bytes: Family<PartLabels, Gauge>,
    primary_ranges: Gauge,
}

impl KvNodeMetrics {
    /// Registers every family into `registry`, named `ranger_kv_node_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix(PREFIX);
        self.requests.register(registry, "served by this node");
        registry.register(
            "store_bytes",
            "Bytes of the node's RocksDB by part: sst (rocksdb.total-sst-files-size) and memtables (rocksdb.size-all-mem-tables), summed over its column families, and reclaiming (deleted table files of dropped ranges not freed yet, see node/reclaim.rs), sampled at scrape time",
            self.store_bytes.clone(),
        );
        registry.register(
            "primary_ranges",
            "Replicated ranges this node serves as their primary (takes and forwards their writes; see node/replica), sampled at scrape time",
            self.primary_ranges.clone(),
        );
    }

    /// Samples how many replicated ranges the node serves as primary.
    pub fn sample_primaries(&self, count: usize) {
        self.primary_ranges
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Samples the store's size. A property RocksDB cannot read is logged and
    /// leaves the gauge as it was: a scrape never fails for it.
    pub fn sample_store(&self, store: &Arc<Store>) {
        match store.usage() {
            Ok(usage) => {
                for (part, bytes) in [
                    ("sst", usage.sst_bytes),
                    ("memtables", usage.memtable_bytes),
                    ("reclaiming", usage.reclaiming_bytes),
                ] {
                    self.store_bytes
                        .get_or_create(&PartLabels { part })
                        .set(i64::try_from(bytes).unwrap_or(i64::MAX));
                }
            }
            Err(error) => tracing::warn!(%error, "could not read the store's size for metrics"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_bytes(registry: &Registry, part: &str) -> u64 {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        let series = format!(r#"ranger_kv_node_store_bytes{{part="{part}"}} "#);
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .parse()
            .expect("a number")
    }

    #[test]
    fn the_store_size_follows_writes_and_flushes_when_sampled() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("opens");
        let metrics = KvNodeMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);

        metrics.sample_store(&store);
        assert_eq!(store_bytes(&registry, "sst"), 0);
        assert_eq!(store_bytes(&registry, "reclaiming"), 0);
        let empty_memtables = store_bytes(&registry, "memtables");

        let value = vec![7u8; 64 << 10];
        for i in 0..16 {
            store
                .put(format!("key{i}").as_bytes(), &value)
                .expect("puts");
        }
        metrics.sample_store(&store);
        assert!(
            store_bytes(&registry, "memtables") > empty_memtables + (512 << 10),
            "a megabyte written shows in the memtables"
        );
        store.flush().expect("flushes");
        metrics.sample_store(&store);
        assert!(
            store_bytes(&registry, "sst") > 0,
            "flushed data shows in the SST files"
        );
    }
}
