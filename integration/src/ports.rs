//! Free loopback ports for the processes of a test.
//!
//! A port is found by binding port 0 and releasing it, so another process may
//! take it before ours binds it; on loopback in a test machine that is rare,
//! and a process that cannot bind fails at once with the reason in its log.

use std::net::{SocketAddr, TcpListener};

use anyhow::Context;

/// A loopback address with a port that was free a moment ago.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}
