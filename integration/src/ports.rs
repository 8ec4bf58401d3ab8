//! Free loopback ports for the processes of a test.
//!
//! Ports are drawn below Linux's ephemeral range (32768-60999 by default),
//! which the kernel hands out for outgoing connections and for port 0: a
//! process killed with `kill -9` must be able to listen on its port again
//! when it restarts, and an outgoing connection of any other process that
//! happened to get that port as its local one would make the restart fail.
//! A drawn port is checked free by binding it, then released; another test
//! may take it before ours binds it, which is unlikely with random draws over
//! ten thousand ports, and a process that cannot bind fails at once with the
//! reason in its log.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::bail;

/// Ports drawn from here: below the ephemeral range, above the usual fixed
/// service ports.
const RANGE: std::ops::Range<u16> = 20_000..32_768;
/// Draws before giving up.
const ATTEMPTS: usize = 200;

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    for _ in 0..ATTEMPTS {
        let port = draw();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpListener::bind(addr).is_ok() {
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
        // Draws spread: fifty draws are not a handful of ports.
        assert!(seen.len() > 40, "{} distinct ports", seen.len());
    }
}
