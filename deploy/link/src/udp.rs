//! UDP mode: a datagram proxy for QUIC and other UDP protocols.
//!
//! Every client address gets its own socket towards the upstream (so the
//! upstream sees one peer per client, and replies find their way back). Each
//! datagram is dropped with probability `loss` (seeded PRNG), dropped when the
//! direction's serialization queue holds more than `queue_bytes` (drop tail),
//! and otherwise delivered at `departure + delay + jitter`; with jitter,
//! datagrams may be reordered, as on a real path. Lost datagrams do not use
//! link capacity. Client sessions live as long as the link.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::clock;
use super::shaper::Direction;
use super::{LinkConfig, LinkHandle};

const MAX_DATAGRAM: usize = 65_536;

enum Dest {
    /// The session's socket, connected to the upstream.
    Upstream(Arc<UdpSocket>),
    /// The listening socket, towards a client.
    Client(Arc<UdpSocket>, SocketAddr),
}

struct Datagram {
    deadline: Instant,
    seq: u64,
    dest: Dest,
    data: Bytes,
}

impl PartialEq for Datagram {
    fn eq(&self, other: &Self) -> bool {
        (self.deadline, self.seq) == (other.deadline, other.seq)
    }
}
impl Eq for Datagram {}
impl PartialOrd for Datagram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Datagram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.deadline, self.seq).cmp(&(other.deadline, other.seq))
    }
}

/// Starts a UDP link: datagrams to `listen` are forwarded to `upstream` and
/// replies come back, each direction shaped as `cfg` says. The link stops
/// when the handle is dropped or shut down.
pub async fn spawn_udp_link(listen: SocketAddr, upstream: SocketAddr, cfg: LinkConfig) -> io::Result<LinkHandle> {
    let socket = Arc::new(UdpSocket::bind(listen).await?);
    let local = socket.local_addr()?;
    let (handle, up, down) = LinkHandle::prepare(local, upstream, cfg);
    let task = tokio::spawn(run(socket, upstream, up, down));
    Ok(handle.with_task(task))
}

async fn run(listen: Arc<UdpSocket>, upstream: SocketAddr, up: Arc<Direction>, down: Arc<Direction>) {
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    tasks.spawn(scheduler(up_rx));
    tasks.spawn(scheduler(down_rx));
    let mut sessions: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let unspecified: IpAddr =
        if upstream.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    loop {
        let (n, from) = match listen.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "link-udp: receive failed");
                continue;
            }
        };
        let now = Instant::now();
        let session = match sessions.get(&from) {
            Some(s) => s.clone(),
            None => {
                let socket = match open_session(unspecified, upstream).await {
                    Ok(s) => Arc::new(s),
                    Err(e) => {
                        tracing::warn!(client = %from, %upstream, error = %e, "link-udp: cannot open an upstream socket");
                        continue;
                    }
                };
                tracing::debug!(client = %from, "link-udp: new session");
                tasks.spawn(session_down(socket.clone(), from, listen.clone(), down.clone(), down_tx.clone()));
                sessions.insert(from, socket.clone());
                socket
            }
        };
        if let Some(deadline) = up.schedule_datagram(n, now) {
            let data = Bytes::copy_from_slice(&buf[..n]);
            let _ = up_tx.send(Datagram { deadline, seq: 0, dest: Dest::Upstream(session), data });
        }
    }
}

async fn open_session(local: IpAddr, upstream: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(upstream).await?;
    Ok(socket)
}

/// Carries the upstream's replies for one client into the down direction.
async fn session_down(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    listen: Arc<UdpSocket>,
    down: Arc<Direction>,
    tx: mpsc::UnboundedSender<Datagram>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                if let Some(deadline) = down.schedule_datagram(n, Instant::now()) {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    let dest = Dest::Client(listen.clone(), client);
                    if tx.send(Datagram { deadline, seq: 0, dest, data }).is_err() {
                        return;
                    }
                }
            }
            // ICMP port unreachable from an upstream that is not up (yet).
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                tracing::debug!(%client, error = %e, "link-udp: session receive failed");
                return;
            }
        }
    }
}

/// Sends datagrams at their deadlines, earliest first (so jitter reorders).
async fn scheduler(mut rx: mpsc::UnboundedReceiver<Datagram>) {
    type Timer = (Instant, Pin<Box<dyn Future<Output = ()> + Send>>);
    let mut heap: BinaryHeap<Reverse<Datagram>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    let mut timer: Option<Timer> = None;
    loop {
        let now = Instant::now();
        while heap.peek().is_some_and(|Reverse(d)| d.deadline <= now) {
            let Reverse(d) = heap.pop().expect("peeked");
            let sent = match &d.dest {
                Dest::Upstream(s) => s.send(&d.data).await,
                Dest::Client(s, addr) => s.send_to(&d.data, *addr).await,
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "link-udp: send failed");
            }
        }
        if !open && heap.is_empty() {
            return;
        }
        let head = heap.peek().map(|Reverse(d)| d.deadline);
        if head != timer.as_ref().map(|(d, _)| *d) {
            timer = head.map(|d| (d, Box::pin(clock::sleep_until(d)) as Pin<Box<dyn Future<Output = ()> + Send>>));
        }
        let fired = tokio::select! {
            msg = rx.recv(), if open => {
                match msg {
                    Some(mut d) => {
                        seq += 1;
                        d.seq = seq;
                        heap.push(Reverse(d));
                    }
                    None => open = false,
                }
                false
            }
            _ = async {
                match timer.as_mut() {
                    Some((_, sleep)) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if fired {
            timer = None;
        }
    }
}
