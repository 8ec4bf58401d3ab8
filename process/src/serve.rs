//! How every gRPC server accepts connections.

use tonic::transport::server::TcpIncoming;

/// The connections a server accepts on `listener`, with Nagle's algorithm off
/// (`TCP_NODELAY`), to pass to `serve_with_incoming(_shutdown)`.
///
/// Why: tonic sets `TCP_NODELAY` only on the sockets it binds itself; on a
/// listener handed to it (what a server on port 0 or behind a fault relay
/// needs) the kernel's default holds back a small write until the previous one
/// is acknowledged, and the peer delays that acknowledgement by up to 40 ms.
/// Every answer that ends in a small frame paid it: a handoff's delta fetch
/// took ~45 ms for a handful of keys.
pub fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
