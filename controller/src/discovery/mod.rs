//! Which nodes exist. A backend publishes the full set of nodes (id to address)
//! through a watch channel; the runtime diffs consecutive sets.
//!
//! Backends: [`StaticDiscovery`] (a fixed list from flags), [`Registry`] (nodes
//! register with the controller and renew before their registration expires) and
//! [`ConsulDiscovery`] (the passing instances of a Consul service, which nodes
//! register with their local agent along with a gRPC health check, followed with
//! blocking queries).

mod consul;
mod registry;

use ranger_proto::ConversionError;
use tokio::sync::watch;

pub use consul::ConsulDiscovery;
pub use registry::{Registry, RegistryService};

/// The nodes discovery lists: id to address. Every discovery backend publishes
/// it; the controller's runtime follows it.
pub use ranger_proto::Membership;

/// A source of the node set.
pub trait Discovery: Send + Sync + 'static {
    /// The current node set, updated as it changes.
    fn membership(&self) -> watch::Receiver<Membership>;
}

/// A fixed list of nodes, e.g. from `--nodes a=127.0.0.1:7001,b=127.0.0.1:7002`.
#[derive(Debug)]
pub struct StaticDiscovery {
    nodes: watch::Sender<Membership>,
}

impl StaticDiscovery {
    pub fn new(nodes: Membership) -> Self {
        StaticDiscovery {
            nodes: watch::Sender::new(nodes),
        }
    }

    /// Parses `id=host:port` items separated by commas; a bare `host:port` is its
    /// own id. The grammar is [`ranger_proto::parse_node_list`], shared with the
    /// storage systems' routers so that one list serves both.
    pub fn parse(list: &str) -> Result<Self, ConversionError> {
        Ok(StaticDiscovery::new(ranger_proto::parse_node_list(list)?))
    }
}

impl Discovery for StaticDiscovery {
    fn membership(&self) -> watch::Receiver<Membership> {
        self.nodes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::discovery::{self as suite, Harness};
    use ranger_proto::NodeId;

    /// A static list given the way `rangerd --nodes` gives it.
    struct Fixed {
        discovery: StaticDiscovery,
    }

    impl Fixed {
        fn new() -> Self {
            Fixed {
                discovery: StaticDiscovery::parse(
                    "a=127.0.0.1:7001,b=10.0.0.2:7002,127.0.0.3:7003",
                )
                .expect("a valid list"),
            }
        }
    }

    impl Harness for Fixed {
        type Discovery = StaticDiscovery;

        fn discovery(&self) -> &StaticDiscovery {
            &self.discovery
        }

        fn expected(&self) -> Membership {
            [
                ("a", "127.0.0.1:7001"),
                ("b", "10.0.0.2:7002"),
                ("127.0.0.3:7003", "127.0.0.3:7003"),
            ]
            .into_iter()
            .map(|(id, addr)| (NodeId::new(id).expect("a valid id"), addr.to_owned()))
            .collect()
        }

        fn patience(&self) -> std::time::Duration {
            // A fixed list is there from the start.
            std::time::Duration::from_millis(100)
        }
    }

    #[tokio::test]
    async fn a_static_list_lists_exactly_its_nodes() {
        suite::lists_exactly_its_nodes(Fixed::new()).await;
    }

    #[tokio::test]
    async fn a_static_list_announces_nothing() {
        suite::renewals_announce_nothing(Fixed::new()).await;
    }

    #[test]
    fn parses_ids_and_bare_addresses() {
        let d = StaticDiscovery::parse("a=127.0.0.1:1, 127.0.0.1:2 ,").unwrap();
        let m = d.membership().borrow().clone();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&NodeId::new("a").unwrap()], "127.0.0.1:1");
        assert_eq!(m[&NodeId::new("127.0.0.1:2").unwrap()], "127.0.0.1:2");
        assert!(StaticDiscovery::parse("=x").is_err());
    }
}
