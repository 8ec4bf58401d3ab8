//! `ranger_process::incoming`: the connections a server accepts have
//! Nagle's algorithm off, so that a small answer is not held back for a delayed
//! acknowledgement (a handoff's delta fetch took ~45 ms before).

// Tests fail by panicking: unwrapping is the point.
#![allow(clippy::unwrap_used)]

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;

#[tokio::test]
async fn accepted_connections_have_nagle_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = ranger_process::incoming(listener);
    let client = TcpStream::connect(addr).await.unwrap();
    let accepted = incoming.next().await.unwrap().unwrap();
    assert!(
        accepted.nodelay().unwrap(),
        "the accepted socket has Nagle on"
    );
    // The kernel's default, for contrast: what a plain accept gives.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    let _other = TcpStream::connect(plain_addr).await.unwrap();
    let (raw, _) = plain.accept().await.unwrap();
    assert!(!raw.nodelay().unwrap(), "this test would prove nothing");
    drop(client);
}
