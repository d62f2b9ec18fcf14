//! One direction of the emulated link: a serialization queue that drains at a
//! fixed rate or along a trace, followed by a propagation delay with jitter,
//! and random loss.
//!
//! All arithmetic runs on a virtual clock: seconds (f64) since the link
//! started. A packet's departure from the serialization queue is computed from
//! the link's state when it arrives (not from when a task happens to wake up),
//! and its delivery deadline is `departure + delay (+ jitter)`, turned into an
//! absolute [`Instant`]. Delay is therefore pipelined with the rate (a 1 MB
//! transfer over 10 Mbit/s with 25 ms delay takes 0.8 s + 25 ms, not 667 ×
//! (1.2 ms + 25 ms)), and timer errors never accumulate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use offramp_base::rng::SplitMix64;

use super::trace::{Trace, MTU};

/// How fast a direction drains.
#[derive(Debug, Clone, Default)]
pub enum RateModel {
    /// No serialization delay.
    #[default]
    Unlimited,
    /// A fixed rate in bit/s.
    Fixed { bps: f64 },
    /// Replay of a trace (time 0 of the trace = when the link starts).
    Trace(Arc<Trace>),
}

impl RateModel {
    /// Mean rate in bit/s (`None` when unlimited).
    pub fn mean_bps(&self) -> Option<f64> {
        match self {
            RateModel::Unlimited => None,
            RateModel::Fixed { bps } => Some(*bps),
            RateModel::Trace(t) => Some(t.mean_rate_bps()),
        }
    }

    /// Bytes the model can carry in `[from_s, to_s)` (`None` when unlimited).
    pub fn capacity_bytes(&self, from_s: f64, to_s: f64) -> Option<f64> {
        match self {
            RateModel::Unlimited => None,
            RateModel::Fixed { bps } => Some((to_s - from_s) * bps / 8.0),
            RateModel::Trace(t) => Some(t.capacity_bytes(from_s, to_s)),
        }
    }
}

impl std::fmt::Display for RateModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateModel::Unlimited => write!(f, "unlimited"),
            RateModel::Fixed { bps } => write!(f, "{} Mbit/s", bps / 1e6),
            RateModel::Trace(t) => write!(f, "{t}"),
        }
    }
}

/// The serialization queue's drain schedule (pure: no clocks, no I/O).
#[derive(Debug, Clone)]
pub struct Shaper {
    model: RateModel,
    /// Fixed rate: when the queue will be empty.
    busy_until: f64,
    /// Mahimahi: current opportunity (loop, index) and bytes left in it.
    loop_k: u64,
    index: usize,
    credit: usize,
    /// Throughput trace: bits the link has been committed to carry so far.
    served_bits: f64,
}

impl Shaper {
    pub fn new(model: RateModel) -> Self {
        Self { model, busy_until: 0.0, loop_k: 0, index: 0, credit: MTU, served_bits: 0.0 }
    }

    /// When the last byte of a `bytes`-long packet that joins the queue at
    /// `arrival` (seconds since the link started) leaves it. Calls must come
    /// in arrival order (FIFO queue).
    pub fn depart(&mut self, arrival: f64, bytes: usize) -> f64 {
        match &self.model {
            RateModel::Unlimited => arrival,
            RateModel::Fixed { bps } => {
                self.busy_until = self.busy_until.max(arrival) + (bytes * 8) as f64 / bps;
                self.busy_until
            }
            RateModel::Trace(trace) => match trace.as_ref() {
                Trace::Throughput(t) => {
                    self.served_bits = self.served_bits.max(t.bits_upto(arrival)) + (bytes * 8) as f64;
                    t.time_for_bits(self.served_bits).max(arrival)
                }
                Trace::Mahimahi(t) => {
                    let ops = &t.opportunities_ms;
                    let time = |k: u64, i: usize| (k * t.period_ms + ops[i]) as f64 / 1e3;
                    if time(self.loop_k, self.index) < arrival {
                        // The link sat idle: opportunities that went by unused are lost.
                        let a_ms = arrival * 1e3;
                        let k = (a_ms / t.period_ms as f64).floor();
                        let rem = a_ms - k * t.period_ms as f64;
                        let i = ops.partition_point(|&o| (o as f64) < rem);
                        (self.loop_k, self.index) = if i == ops.len() { (k as u64 + 1, 0) } else { (k as u64, i) };
                        self.credit = MTU;
                    }
                    let mut need = bytes;
                    loop {
                        let take = need.min(self.credit);
                        need -= take;
                        self.credit -= take;
                        let at = time(self.loop_k, self.index);
                        if self.credit == 0 {
                            self.index += 1;
                            if self.index == ops.len() {
                                self.index = 0;
                                self.loop_k += 1;
                            }
                            self.credit = MTU;
                        }
                        if need == 0 {
                            return at.max(arrival);
                        }
                    }
                }
            },
        }
    }
}

/// Bytes waiting in the serialization queue.
#[derive(Debug, Default, Clone)]
pub struct Backlog {
    queue: VecDeque<(f64, usize)>,
    bytes: usize,
}

impl Backlog {
    /// Forgets packets that have left the queue by `now`.
    pub fn expire(&mut self, now: f64) {
        while let Some(&(departure, size)) = self.queue.front() {
            if departure > now {
                break;
            }
            self.queue.pop_front();
            self.bytes -= size;
        }
    }

    pub fn push(&mut self, departure: f64, size: usize) {
        self.queue.push_back((departure, size));
        self.bytes += size;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// When the backlog will be under `limit` bytes (`None`: it already is).
    pub fn time_below(&self, limit: usize) -> Option<f64> {
        if self.bytes < limit {
            return None;
        }
        let mut left = self.bytes;
        for &(departure, size) in &self.queue {
            left -= size;
            if left < limit || left == 0 {
                return Some(departure);
            }
        }
        None
    }
}

/// Configuration of one direction.
#[derive(Debug, Clone)]
pub struct DirectionConfig {
    /// Serialization rate or trace.
    pub rate: RateModel,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Jitter: each packet's delay is `delay + U(-jitter, +jitter)`, at least 0.
    pub jitter: Duration,
    /// Loss probability per packet (see the TCP notes in [`super::tcp`]).
    pub loss: f64,
    /// Serialization queue limit in bytes: UDP drops arrivals beyond it (drop
    /// tail); TCP stops reading from the sender until it drains.
    pub queue_bytes: usize,
}

impl Default for DirectionConfig {
    fn default() -> Self {
        Self {
            rate: RateModel::Unlimited,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            queue_bytes: 256 * 1024,
        }
    }
}

impl DirectionConfig {
    pub fn with_rate_bps(mut self, bps: f64) -> Self {
        self.rate = RateModel::Fixed { bps };
        self
    }
    pub fn with_trace(mut self, trace: Arc<Trace>) -> Self {
        self.rate = RateModel::Trace(trace);
        self
    }
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }
    pub fn with_loss(mut self, loss: f64) -> Self {
        self.loss = loss;
        self
    }
    pub fn with_queue_bytes(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    pub packets_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub dropped_loss: AtomicU64,
    pub dropped_queue: AtomicU64,
    /// TCP: packets that paid a retransmission delay instead of being dropped.
    pub retransmitted: AtomicU64,
}

/// A copy of [`DirectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DirectionStatsSnapshot {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub retransmitted: u64,
}

impl DirectionStats {
    pub fn snapshot(&self) -> DirectionStatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DirectionStatsSnapshot {
            packets_in: g(&self.packets_in),
            bytes_in: g(&self.bytes_in),
            dropped_loss: g(&self.dropped_loss),
            dropped_queue: g(&self.dropped_queue),
            retransmitted: g(&self.retransmitted),
        }
    }
}

struct State {
    shaper: Shaper,
    backlog: Backlog,
    rng: SplitMix64,
}

/// A direction's live state, shared by every connection (or UDP session)
/// crossing the link: they compete for one serialization queue.
pub struct Direction {
    cfg: DirectionConfig,
    epoch: Instant,
    state: Mutex<State>,
    pub stats: DirectionStats,
}

impl Direction {
    pub fn new(cfg: DirectionConfig, epoch: Instant, seed: u64) -> Self {
        let state =
            State { shaper: Shaper::new(cfg.rate.clone()), backlog: Backlog::default(), rng: SplitMix64::new(seed) };
        Self { cfg, epoch, state: Mutex::new(state), stats: DirectionStats::default() }
    }

    pub fn config(&self) -> &DirectionConfig {
        &self.cfg
    }

    /// Seconds since the link started.
    pub fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.epoch).as_secs_f64()
    }

    /// The instant `s` seconds after the link started.
    pub fn at(&self, s: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(s.max(0.0))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn uniform(rng: &mut SplitMix64) -> f64 {
        (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn propagation(&self, rng: &mut SplitMix64) -> f64 {
        let delay = self.cfg.delay.as_secs_f64();
        if self.cfg.jitter.is_zero() {
            return delay;
        }
        let j = self.cfg.jitter.as_secs_f64();
        (delay + j * (2.0 * Self::uniform(rng) - 1.0)).max(0.0)
    }

    /// When the backlog will be under the queue limit (`None`: it is now).
    pub fn queue_wait(&self, now: Instant) -> Option<Instant> {
        let now_s = self.secs(now);
        let mut st = self.lock();
        st.backlog.expire(now_s);
        st.backlog.time_below(self.cfg.queue_bytes).map(|s| self.at(s))
    }

    /// Schedules the packets of a byte stream that arrived at `now` and
    /// returns each one's delivery deadline (before FIFO ordering). A "lost"
    /// packet is delivered `retransmit` later instead of being dropped.
    pub fn schedule_stream(
        &self,
        sizes: impl Iterator<Item = usize>,
        now: Instant,
        retransmit: Duration,
    ) -> Vec<Instant> {
        let now_s = self.secs(now);
        let mut st = self.lock();
        st.backlog.expire(now_s);
        let mut out = Vec::new();
        for size in sizes {
            self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
            self.stats.bytes_in.fetch_add(size as u64, Ordering::Relaxed);
            let departure = st.shaper.depart(now_s, size);
            st.backlog.push(departure, size);
            let mut deliver = departure + self.propagation(&mut st.rng);
            if self.cfg.loss > 0.0 && Self::uniform(&mut st.rng) < self.cfg.loss {
                self.stats.retransmitted.fetch_add(1, Ordering::Relaxed);
                deliver += retransmit.as_secs_f64();
            }
            out.push(self.at(deliver));
        }
        out
    }

    /// Schedules one datagram that arrived at `now`: its delivery deadline,
    /// or `None` when it is lost or the queue is full.
    pub fn schedule_datagram(&self, size: usize, now: Instant) -> Option<Instant> {
        let now_s = self.secs(now);
        let mut st = self.lock();
        self.stats.packets_in.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_in.fetch_add(size as u64, Ordering::Relaxed);
        if self.cfg.loss > 0.0 && Self::uniform(&mut st.rng) < self.cfg.loss {
            self.stats.dropped_loss.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        st.backlog.expire(now_s);
        if st.backlog.bytes() > 0 && st.backlog.bytes() + size > self.cfg.queue_bytes {
            self.stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let departure = st.shaper.depart(now_s, size);
        st.backlog.push(departure, size);
        let deliver = departure + self.propagation(&mut st.rng);
        Some(self.at(deliver))
    }
}
