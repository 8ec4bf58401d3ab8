//! A fault-injecting TCP relay: the network between two processes, made
//! breakable from the test (issue 12, "faults from outside the code under test").
//!
//! A process is told to dial the relay's address instead of its peer's; the relay
//! forwards every connection to the real address and, on command, misbehaves the
//! way networks do:
//!
//! - [`Fault::Delay`]: every chunk waits before it is forwarded, both ways;
//! - [`Fault::Blackhole`]: connections stay open and bytes are accepted, but
//!   nothing is forwarded in either direction (a partition: the peer neither
//!   answers nor refuses); new connections are accepted and never dialled on;
//! - [`Fault::CutToTarget`] / [`Fault::CutFromTarget`]: one direction stalls, the
//!   other flows (an asymmetric partition);
//! - [`Fault::Reset`]: every connection is closed at once and new ones are
//!   closed as soon as they are accepted (a peer that went away).
//!
//! A stalled direction holds its bytes rather than discarding them, as TCP
//! would during a partition: when the fault is healed they flow again in order,
//! so a healed connection carries an intact stream (dropping bytes from the
//! middle of an HTTP/2 stream would test a corruption no real network makes).
//! What a long partition does to the endpoints (keepalives failing, connections
//! abandoned) is theirs to do, as it would be.
//!
//! Hand-written rather than a crate because what we need is small and specific:
//! faults switched at run time on connections already open, per direction.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the relay treats traffic now. Changing it applies to the connections
/// already open as well as to new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything as it comes.
    #[default]
    None,
    /// Forward everything, each chunk after this delay.
    Delay(Duration),
    /// Forward nothing either way; accept new connections and leave them hanging.
    Blackhole,
    /// Forward nothing from the dialling side to the target; the other way flows.
    CutToTarget,
    /// Forward nothing from the target back to the dialling side; the other way flows.
    CutFromTarget,
    /// Close every connection, and each new one as soon as it is accepted.
    Reset,
}

/// The two directions a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToTarget,
    FromTarget,
}

impl Fault {
    /// Whether bytes going `direction` must wait for the fault to change.
    fn stalls(self, direction: Direction) -> bool {
        match self {
            Fault::Blackhole => true,
            Fault::CutToTarget => direction == Direction::ToTarget,
            Fault::CutFromTarget => direction == Direction::FromTarget,
            Fault::None | Fault::Delay(_) | Fault::Reset => false,
        }
    }
}

/// A running relay; it stops (and closes its connections) when dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Starts a relay to `target` on a free loopback port.
    pub async fn start(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Relay::serve(listener, target)
    }

    /// Starts a relay to `target` on a free loopback port without awaiting
    /// (for hooks that must return an address at once, such as the cluster's
    /// `advertise`); needs a running tokio runtime.
    pub fn start_now(target: SocketAddr) -> std::io::Result<Relay> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Relay::serve(TcpListener::from_std(listener)?, target)
    }

    fn serve(listener: TcpListener, target: SocketAddr) -> std::io::Result<Relay> {
        let addr = listener.local_addr()?;
        let (fault, _) = watch::channel(Fault::None);
        let fault = Arc::new(fault);
        let accept = tokio::spawn(accept_loop(listener, target, Arc::clone(&fault)));
        Ok(Relay {
            addr,
            target,
            fault,
            accept,
        })
    }

    /// The address processes dial instead of the target's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault, for open connections and new ones.
    pub fn set(&self, fault: Fault) {
        tracing::info!(relay = %self.addr, target = %self.target, ?fault, "relay fault");
        self.fault.send_replace(fault);
    }

    /// Back to forwarding everything; stalled bytes flow again.
    pub fn heal(&self) {
        self.set(Fault::None);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Connections end with the relay: a Reset tells every pump to close.
        self.fault.send_replace(Fault::Reset);
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, fault: Arc<watch::Sender<Fault>>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(relay_connection(client, target, fault.subscribe()));
            }
            Err(e) => {
                // Out of descriptors, usually: wait rather than spin.
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One accepted connection: dialled on to the target once the fault lets
/// traffic through (a blackholed connection just hangs), then pumped both ways.
async fn relay_connection(
    client: TcpStream,
    target: SocketAddr,
    mut fault: watch::Receiver<Fault>,
) {
    let current = *fault.borrow_and_update();
    if current == Fault::Reset {
        return; // dropping `client` closes it
    }
    if current == Fault::Blackhole {
        // Hold the connection, read nothing, until the fault changes.
        let Ok(after) = fault.wait_for(|f| *f != Fault::Blackhole).await.map(|f| *f) else {
            return;
        };
        if after == Fault::Reset {
            return;
        }
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return; // the target is down: the client sees its connection closed
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(
        client_read,
        server_write,
        Direction::ToTarget,
        fault.clone(),
    );
    let down = pump(server_read, client_write, Direction::FromTarget, fault);
    // Either side closing (or a Reset) ends the connection both ways.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// Forwards one direction until the source closes or a Reset comes, waiting
/// while the fault stalls this direction and delaying each chunk under Delay.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    direction: Direction,
    mut fault: watch::Receiver<Fault>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Do not even read while stalled: the bytes wait in the socket, so the
        // sender sees a peer that stopped taking data, as in a partition.
        let Ok(now) = fault.wait_for(|f| !f.stalls(direction)).await.map(|f| *f) else {
            return;
        };
        if now == Fault::Reset {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // The fault changed while waiting for bytes: look at it again.
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // Bytes already read are delivered under the fault in force when they
        // can go: held while stalled, dropped with the connection on a Reset.
        loop {
            let now = *fault.borrow_and_update();
            if now == Fault::Reset {
                return;
            }
            if now.stalls(direction) {
                if fault.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if let Fault::Delay(d) = now {
                tokio::time::sleep(d).await;
            }
            break;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server whose connections also receive "hello" first, so that
    /// the direction from the target can be seen on its own.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text).await?;
        let mut got = vec![0u8; text.len()];
        stream.read_exact(&mut got).await?;
        Ok(got)
    }

    /// Reads what arrives within `wait`; None when nothing did.
    async fn read_within(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 1024];
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            Ok(Err(_)) => Some(Vec::new()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn forwards_both_ways_when_there_is_no_fault() {
        let relay = Relay::start(echo_server().await).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut s, b"ping").await.expect("echo"), b"ping");
    }

    #[tokio::test]
    async fn a_blackhole_holds_the_bytes_of_open_connections_until_it_heals() {
        let relay = Relay::start(echo_server().await).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut s, b"one").await.expect("echo"), b"one");
        relay.set(Fault::Blackhole);
        s.write_all(b"two").await.expect("the write is accepted");
        assert_eq!(read_within(&mut s, Duration::from_millis(300)).await, None);
        relay.heal();
        let mut got = vec![0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("the held bytes flow after healing")
            .expect("read");
        assert_eq!(got, b"two");
    }

    #[tokio::test]
    async fn a_new_connection_into_a_blackhole_hangs_and_then_works_when_healed() {
        let relay = Relay::start(echo_server().await).await.expect("relay");
        relay.set(Fault::Blackhole);
        let mut s = TcpStream::connect(relay.addr()).await.expect("accepted");
        s.write_all(b"hi").await.expect("write");
        assert_eq!(read_within(&mut s, Duration::from_millis(300)).await, None);
        relay.heal();
        let mut got = vec![0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("answered after healing")
            .expect("read");
        assert_eq!(got, b"hi");
    }

    #[tokio::test]
    async fn cutting_one_direction_stalls_only_that_direction() {
        // A target that speaks first and then echoes.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = listener.local_addr().expect("addr");
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let (say_tx, mut say) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let (mut r, mut w) = socket.into_split();
            tokio::spawn(async move {
                while let Some(bytes) = say.recv().await {
                    w.write_all(&bytes).await.expect("target writes");
                }
            });
            let mut buf = [0u8; 64];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                let _ = received_tx.send(buf[..n].to_vec());
            }
        });
        let relay = Relay::start(target).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr()).await.expect("connect");

        relay.set(Fault::CutToTarget);
        s.write_all(b"up").await.expect("write");
        let nothing = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
        assert!(nothing.is_err(), "the target got bytes through a cut");
        say_tx.send(b"down".to_vec()).expect("say");
        assert_eq!(
            read_within(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some(&b"down"[..]),
            "the other direction flows"
        );

        relay.set(Fault::CutFromTarget);
        let up = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("the held bytes reach the target once that way flows");
        assert_eq!(up.as_deref(), Some(&b"up"[..]));
        say_tx.send(b"held".to_vec()).expect("say");
        assert_eq!(read_within(&mut s, Duration::from_millis(300)).await, None);
        relay.heal();
        assert_eq!(
            read_within(&mut s, Duration::from_secs(5)).await.as_deref(),
            Some(&b"held"[..])
        );
    }

    #[tokio::test]
    async fn a_delay_holds_each_chunk_for_at_least_that_long() {
        let relay = Relay::start(echo_server().await).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr()).await.expect("connect");
        relay.set(Fault::Delay(Duration::from_millis(100)));
        let started = tokio::time::Instant::now();
        assert_eq!(roundtrip(&mut s, b"slow").await.expect("echo"), b"slow");
        // One delay each way.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_reset_closes_open_connections_and_every_new_one() {
        let relay = Relay::start(echo_server().await).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut s, b"x").await.expect("echo"), b"x");
        relay.set(Fault::Reset);
        assert_eq!(
            read_within(&mut s, Duration::from_secs(5)).await,
            Some(Vec::new()),
            "the open connection is closed"
        );
        let mut fresh = TcpStream::connect(relay.addr()).await.expect("accepted");
        assert_eq!(
            read_within(&mut fresh, Duration::from_secs(5)).await,
            Some(Vec::new()),
            "a new connection is closed at once"
        );
        relay.heal();
        let mut again = TcpStream::connect(relay.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut again, b"y").await.expect("echo"), b"y");
    }

    #[tokio::test]
    async fn a_dropped_relay_closes_its_connections() {
        let relay = Relay::start(echo_server().await).await.expect("relay");
        let mut s = TcpStream::connect(relay.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut s, b"x").await.expect("echo"), b"x");
        drop(relay);
        assert_eq!(
            read_within(&mut s, Duration::from_secs(5)).await,
            Some(Vec::new())
        );
    }
}
