//! TCP mode: a terminating proxy that shapes the byte stream of every
//! connection in both directions.
//!
//! Each accepted connection gets its own connection to the upstream. Bytes
//! read from one side are cut into MTU-sized (1500-byte) packets, pushed
//! through the direction's [`Direction`] (serialization queue, then
//! propagation delay and jitter) and written to the other side at their
//! delivery deadlines. All connections of a link share one serialization queue
//! per direction, as they would share a real bottleneck.
//!
//! # Semantics and limits
//!
//! - **Ordering.** Jitter never reorders a stream: a packet's deadline is at
//!   least the previous packet's (`max(departure + delay + jitter, previous)`),
//!   so jitter shows up as bunching, like a real TCP receiver's in-order
//!   delivery.
//! - **Loss is modelled as retransmission delay, not as dropped bytes.**
//!   Dropping bytes from a stream would corrupt it. Instead, each packet is
//!   "lost" with probability `loss`; a lost packet is delivered one link RTT
//!   (`up.delay + down.delay`) later, approximating a fast retransmit, and
//!   because the stream is in order every later byte waits behind it
//!   (head-of-line blocking, as in TCP). The retransmission does not take
//!   serialization capacity a second time and the sender's congestion window
//!   is not reduced, so this underestimates the throughput cost of loss; use
//!   UDP mode with QUIC to see real loss recovery.
//! - **Queue.** When a direction's serialization backlog exceeds its
//!   `queue_bytes`, the proxy stops reading from the sender (TCP flow control
//!   pushes back) instead of dropping.
//! - **Split TCP.** The proxy terminates TCP on both sides, so the endpoints'
//!   congestion control sees loopback, not the emulated link: there is no slow
//!   start over the emulated RTT, and the handshake itself is not delayed
//!   (`connect` returns at once; the first bytes pay the delay).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::clock;
use super::shaper::Direction;
use super::trace::MTU;
use super::{LinkConfig, LinkHandle};

/// Largest read from a socket.
const READ_SIZE: usize = 64 * 1024;
/// Largest single write (coalesced packets that are due together).
const MAX_WRITE: usize = 256 * 1024;
/// Bytes a connection direction may hold between reading and writing
/// (queue plus everything in propagation), bounding memory when a receiver stalls.
const IN_FLIGHT_CAP: usize = 32 * 1024 * 1024;

struct Chunk {
    deadline: Instant,
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// Where a TCP link forwards its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A fixed address.
    Addr(SocketAddr),
    /// `host:port`, resolved again for every new connection, so an upstream
    /// that comes back at another address (a restarted container or pod
    /// behind DNS) is found without restarting the link.
    Name(Arc<str>),
}

impl Upstream {
    /// `host:port` or `ip:port`.
    pub fn parse(s: &str) -> Self {
        s.parse().map(Upstream::Addr).unwrap_or_else(|_| Upstream::Name(s.into()))
    }

    /// The address a new connection should go to now.
    pub async fn resolve(&self) -> io::Result<SocketAddr> {
        match self {
            Upstream::Addr(a) => Ok(*a),
            Upstream::Name(name) => tokio::net::lookup_host(&**name)
                .await?
                .next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{name} resolves to no address"))),
        }
    }
}

impl From<SocketAddr> for Upstream {
    fn from(a: SocketAddr) -> Self {
        Upstream::Addr(a)
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Addr(a) => a.fmt(f),
            Upstream::Name(n) => f.write_str(n),
        }
    }
}

/// Starts a TCP link: listens on `listen`, forwards every connection to
/// `upstream`, shaping both directions as `cfg` says. The link stops when the
/// handle is dropped or shut down. A named upstream must resolve now (so a
/// typo fails at start) and is resolved again for each connection.
pub async fn spawn_tcp_link(
    listen: SocketAddr,
    upstream: impl Into<Upstream>,
    cfg: LinkConfig,
) -> io::Result<LinkHandle> {
    let upstream = upstream.into();
    let first = upstream.resolve().await?;
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let retransmit = cfg.rtt();
    let (handle, up, down) = LinkHandle::prepare(local, first, cfg);
    let task = tokio::spawn(accept_loop(listener, upstream, up, down, retransmit));
    Ok(handle.with_task(task))
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Upstream,
    up: Arc<Direction>,
    down: Arc<Direction>,
    retransmit: Duration,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    conns.spawn(connection(client, peer, upstream.clone(), up.clone(), down.clone(), retransmit));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "link: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: Upstream,
    up: Arc<Direction>,
    down: Arc<Direction>,
    retransmit: Duration,
) {
    let connected = match upstream.resolve().await {
        Ok(addr) => TcpStream::connect(addr).await,
        Err(e) => Err(e),
    };
    let server = match connected {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, %upstream, error = %e, "link: cannot reach the upstream; closing the connection");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tracing::debug!(%peer, %upstream, "link: connection open");
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let result =
        tokio::try_join!(pipe(&up, client_r, server_w, retransmit), pipe(&down, server_r, client_w, retransmit),);
    match result {
        Ok(_) => tracing::debug!(%peer, "link: connection closed"),
        Err(e) => tracing::debug!(%peer, error = %e, "link: connection ended"),
    }
}

/// Shapes one direction of a connection until the reader's EOF has been
/// passed on (as a FIN) or either side fails.
async fn pipe(dir: &Direction, reader: OwnedReadHalf, writer: OwnedWriteHalf, retransmit: Duration) -> io::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::try_join!(read_side(dir, reader, tx, retransmit), write_side(rx, writer)).map(|_| ())
}

async fn read_side(
    dir: &Direction,
    mut reader: OwnedReadHalf,
    tx: mpsc::UnboundedSender<Chunk>,
    retransmit: Duration,
) -> io::Result<()> {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT_CAP));
    let mut buf = BytesMut::new();
    let mut last: Option<Instant> = None;
    loop {
        // Backpressure: read only while the serialization queue has room.
        while let Some(until) = dir.queue_wait(Instant::now()) {
            tokio::time::sleep_until(until.into()).await;
        }
        buf.reserve(READ_SIZE);
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            return Ok(()); // EOF: dropping `tx` lets the writer drain and send FIN
        }
        let now = Instant::now();
        let data = buf.split().freeze();
        let sizes = (0..n).step_by(MTU).map(|o| (n - o).min(MTU));
        let deadlines = dir.schedule_stream(sizes, now, retransmit);
        for (i, deadline) in deadlines.into_iter().enumerate() {
            // FIFO: jitter must not reorder bytes within the stream.
            let deadline = last.map_or(deadline, |l| deadline.max(l));
            last = Some(deadline);
            let data = data.slice(i * MTU..((i + 1) * MTU).min(n));
            let permit = in_flight
                .clone()
                .acquire_many_owned(data.len() as u32)
                .await
                .map_err(|_| io::Error::other("link: in-flight limit closed"))?;
            if tx.send(Chunk { deadline, data, _permit: permit }).is_err() {
                return Ok(()); // the writer has stopped
            }
        }
    }
}

async fn write_side(mut rx: mpsc::UnboundedReceiver<Chunk>, mut writer: OwnedWriteHalf) -> io::Result<()> {
    let mut next: Option<Chunk> = None;
    let mut out = Vec::with_capacity(MAX_WRITE);
    loop {
        let first = match next.take() {
            Some(c) => c,
            None => match rx.recv().await {
                Some(c) => c,
                None => break,
            },
        };
        clock::sleep_until(first.deadline).await;
        out.clear();
        out.extend_from_slice(&first.data);
        drop(first);
        // Coalesce everything else that is already due into one write.
        let now = Instant::now();
        while out.len() < MAX_WRITE {
            match rx.try_recv() {
                Ok(c) if c.deadline <= now => out.extend_from_slice(&c.data),
                Ok(c) => {
                    next = Some(c);
                    break;
                }
                Err(_) => break,
            }
        }
        writer.write_all(&out).await?;
    }
    writer.shutdown().await
}
