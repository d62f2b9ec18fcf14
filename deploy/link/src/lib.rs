//! A userspace link emulator (kernel netem is not available): a TCP or UDP
//! proxy that gives each direction its own rate or trace, delay, jitter and
//! loss.
//!
//! "Up" is client → upstream (edge → cloud), "down" is upstream → client.
//! Experiments and tests put a link in front of a server in-process:
//!
//! ```no_run
//! # async fn demo(server: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use offramp_link::{spawn_tcp_link, DirectionConfig, LinkConfig};
//! let dir = DirectionConfig::default().with_rate_bps(10e6).with_delay(Duration::from_millis(25));
//! let link = spawn_tcp_link("127.0.0.1:0".parse().unwrap(), server, LinkConfig::symmetric(dir)).await?;
//! // connect the client to link.local_addr() instead of `server`
//! # Ok(()) }
//! ```
//!
//! - [`shaper`]: the per-direction model (serialization queue at a rate or
//!   along a trace, then delay + jitter, loss), on a virtual clock.
//! - [`trace`]: Mahimahi and throughput trace files.
//! - [`tcp`], [`udp`]: the two proxies (read their docs for how loss works in each).
//! - [`clock`]: sub-millisecond wake-ups at absolute deadlines.
//! - [`bench`]: `offramp link bench`, the fidelity benchmark.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod shaper;
pub mod tcp;
pub mod trace;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offramp_base::rng::SplitMix64;
use tokio::task::JoinHandle;

pub use cli::{LinkArgs, LinkCommand};
pub use shaper::{DirectionConfig, DirectionStatsSnapshot, RateModel};
pub use tcp::{spawn_tcp_link, Upstream};
pub use trace::{Trace, TraceError, TraceFormat, MTU};
pub use udp::spawn_udp_link;

use shaper::Direction;

/// Both directions of a link.
#[derive(Debug, Clone, Default)]
pub struct LinkConfig {
    /// Client → upstream (edge → cloud).
    pub up: DirectionConfig,
    /// Upstream → client (cloud → edge).
    pub down: DirectionConfig,
    /// Seed of the loss and jitter draws (each direction has its own stream).
    pub seed: u64,
}

impl LinkConfig {
    /// The same settings in both directions.
    pub fn symmetric(dir: DirectionConfig) -> Self {
        Self { up: dir.clone(), down: dir, seed: 0 }
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Base round-trip time: both propagation delays (no queueing).
    pub fn rtt(&self) -> Duration {
        self.up.delay + self.down.delay
    }
}

/// Counters of both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub up: DirectionStatsSnapshot,
    pub down: DirectionStatsSnapshot,
}

/// A running link. Dropping it (or [`LinkHandle::shutdown`]) stops the link
/// and closes every connection through it.
pub struct LinkHandle {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    epoch: Instant,
    up: Arc<Direction>,
    down: Arc<Direction>,
    task: Option<JoinHandle<()>>,
}

impl LinkHandle {
    /// A handle without a task yet, and the two directions' live state
    /// (the link clock starts now).
    fn prepare(
        local_addr: SocketAddr,
        upstream: SocketAddr,
        cfg: LinkConfig,
    ) -> (Self, Arc<Direction>, Arc<Direction>) {
        let epoch = Instant::now();
        let mut seeds = SplitMix64::new(cfg.seed);
        let up = Arc::new(Direction::new(cfg.up, epoch, seeds.next_u64()));
        let down = Arc::new(Direction::new(cfg.down, epoch, seeds.next_u64()));
        let handle = Self { local_addr, upstream, epoch, up: up.clone(), down: down.clone(), task: None };
        (handle, up, down)
    }

    fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.task = Some(task);
        self
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Time 0 of the link clock (traces start here).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn config(&self) -> (&DirectionConfig, &DirectionConfig) {
        (self.up.config(), self.down.config())
    }

    pub fn stats(&self) -> LinkStats {
        LinkStats { up: self.up.stats.snapshot(), down: self.down.stats.snapshot() }
    }

    /// Stops the link and waits until its tasks are gone.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for LinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkHandle").field("local_addr", &self.local_addr).field("upstream", &self.upstream).finish()
    }
}

#[cfg(test)]
mod tests;
