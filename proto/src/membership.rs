//! The node set, as discovery publishes it, and the static list an operator
//! writes on a command line.
//!
//! Both the controller (`rangerd --nodes`) and a storage system's router (the KV
//! proxy's `--nodes`) read the same list, and they live in crates that must not
//! link each other; this crate is the lowest both already depend on, and the list
//! is made of [`NodeId`]s, which live here. One parser means an operator can
//! hand the same list to both.

use std::collections::BTreeMap;

use tonic::codegen::http::Uri;

use crate::{ConversionError, NodeId};

/// The nodes discovery lists: id to `host:port` address. Every discovery backend
/// publishes it, and whoever routes to nodes follows it.
pub type Membership = BTreeMap<NodeId, String>;

/// Parses a static node list: `id=host:port` items separated by commas (spaces
/// allowed); a bare `host:port` is its own id.
///
/// Every address must be a dialable `host:port` (no path), and the list must
/// name at least one node: a typo here would otherwise surface only as a node
/// that never answers.
pub fn parse_node_list(list: &str) -> Result<Membership, ConversionError> {
    let mut nodes = Membership::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').unwrap_or((item, item));
        let addr = addr.trim();
        check_addr(addr)?;
        nodes.insert(NodeId::new(id.trim())?, addr.to_owned());
    }
    if nodes.is_empty() {
        return Err(ConversionError::EmptyNodeList(list.to_owned()));
    }
    Ok(nodes)
}

/// Checks that `addr` is `host:port`, the form every node address takes.
fn check_addr(addr: &str) -> Result<(), ConversionError> {
    let bad = |reason: &'static str| ConversionError::BadNodeAddress {
        addr: addr.to_owned(),
        reason,
    };
    let uri: Uri = format!("http://{addr}")
        .parse()
        .map_err(|_| bad("not host:port"))?;
    if uri.port().is_none() {
        return Err(bad("missing port"));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(bad("unexpected path"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn parses_ids_and_bare_addresses() {
        let m = parse_node_list("a=127.0.0.1:1, 127.0.0.1:2 ,").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[&id("a")], "127.0.0.1:1");
        assert_eq!(m[&id("127.0.0.1:2")], "127.0.0.1:2");
        assert!(parse_node_list("=x").is_err());
    }

    #[test]
    fn parses_static_lists() {
        let nodes: Vec<String> = parse_node_list("127.0.0.1:5101, localhost:5102,")
            .unwrap()
            .into_values()
            .collect();
        assert_eq!(nodes, ["127.0.0.1:5101", "localhost:5102"]);
        assert!(parse_node_list("127.0.0.1").is_err());
        assert!(parse_node_list("host:1/x").is_err());
        assert!(parse_node_list(" , ").is_err());
    }

    #[test]
    fn names_the_address_it_rejects_and_why() {
        assert_eq!(
            parse_node_list("a=h:1, b=h").unwrap_err().to_string(),
            "bad node address \"h\": missing port"
        );
        assert_eq!(
            parse_node_list(" , ").unwrap_err().to_string(),
            "bad node list \" , \": no address in it"
        );
    }
}
