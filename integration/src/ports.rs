//! Free loopback ports for the processes of a test.
//!
//! Ports are drawn below Linux's ephemeral range (32768-60999 by default),
//! which the kernel hands out for outgoing connections and for port 0: a
//! process killed with `kill -9` must be able to listen on its port again
//! when it restarts, and an outgoing connection of any other process that
//! happened to get that port as its local one would make the restart fail.
//! A drawn port is checked free by binding it, then released, and it is
//! never handed out twice by one test process: between the check and the
//! child binding it, another of this process's tests (they run side by side)
//! could otherwise draw it too, and one of the two processes would fail to
//! start (CI saw it once: a node's metrics port taken). Consul test agents
//! draw from their own, disjoint range (`ranger_consul::TestAgent`). Another
//! process on the machine may still take a port in between; a process that
//! cannot bind fails at once with the reason in its log.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{LazyLock, Mutex, PoisonError};

use anyhow::bail;

/// Ports drawn from here: below the ephemeral range, above the usual fixed
/// service ports, and below the Consul test agents' range (26,400 and up).
const RANGE: std::ops::Range<u16> = 20_000..26_400;

/// Every port this process handed out.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));
/// Draws before giving up.
const ATTEMPTS: usize = 200;

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..ATTEMPTS {
        let port = draw();
        if handed_out.contains(&port) {
            continue;
        }
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpListener::bind(addr).is_ok() {
            handed_out.insert(port);
            return Ok(addr);
        }
    }
    bail!("no free port in {RANGE:?} after {ATTEMPTS} draws")
}

/// A port from [`RANGE`], drawn at random so that concurrent tests rarely
/// draw the same one.
fn draw() -> u16 {
    rand::random_range(RANGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_below_the_ephemeral_range_and_bindable() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let addr = free_addr().unwrap_or_else(|e| panic!("{e}"));
            assert!(RANGE.contains(&addr.port()), "{addr}");
            assert!(addr.ip().is_loopback());
            seen.insert(addr.port());
        }
        // No port is handed out twice, though each was released at once.
        assert_eq!(seen.len(), 50, "a port handed out twice");
    }
}
