//! The split point re-planned live (`--adaptive-split`).
//!
//! A [`Planner`] estimates, for every candidate route (a split point K the
//! edge holds, and an encoding: f32, or int8 + LZ4), the expected latency of
//! one input:
//!
//! ```text
//! E[latency](K, enc) = Σ_{b < K} edge_us(b) · P(reach b)
//!                    + P(reach K) · (rtt + bytes(K, enc) · transfer_per_byte + cloud_us(K))
//! ```
//!
//! - `edge_us(b)`: each block's compute on this device, profiled at start
//!   ([`Profile`]) and scaled live by the ratio of measured to profiled local
//!   compute of the inputs that ran all of `0..K`.
//! - `P(reach b)`: one minus the fraction of inputs answered at an exit
//!   placed before block `b`, counted over the last answers (edge exits from
//!   the edge's own answers, deeper exits from the exit index the cloud
//!   reports), so the rates of exits the edge does not run now are known too.
//! - `bytes(K, enc)`: the profiled request size, replaced by the measured
//!   size once that route has carried requests.
//! - `rtt` and `transfer_per_byte`: a small probe (the handshake call, sent
//!   every [`PlanConfig::ping_every`]) and every offload are two points of
//!   `network time = rtt + bytes · transfer_per_byte`; an offload's network
//!   time is its total less the cloud's queue and compute. The probe's time
//!   and the per-byte slope between the two are smoothed with change
//!   detection ([`Tracker`]): a jump that persists replaces the estimate at
//!   once instead of bleeding in. Goodput is `1 / transfer_per_byte`.
//! - `cloud_us(K)`: the queue and compute time the cloud reports in each
//!   response, per split; for a split not measured yet, the nearest measured
//!   one adjusted by the profiled cost of the blocks between them.
//!
//! The objective is the least expected latency, or with a latency objective
//! (`--latency-slo`) the least offloaded fraction among the routes expected
//! to meet it (the fastest if none does). Hysteresis keeps it from flapping:
//! a challenger must be better than the current route by
//! [`PlanConfig::hysteresis`] and win [`PlanConfig::confirm`] plans in a row;
//! a detected change in the link skips the confirmation.

use std::collections::VecDeque;
use std::time::Duration;

use offramp_proto as pb;
use serde::Serialize;

/// A way to offload: split point and encoding of the state that crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Route {
    pub split: usize,
    #[serde(serialize_with = "ser_encoding")]
    pub encoding: pb::Encoding,
}

fn ser_encoding<S: serde::Serializer>(e: &pb::Encoding, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(offramp_common::codec::encoding_name(*e))
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "K={} {}", self.split, offramp_common::codec::encoding_name(self.encoding))
    }
}

/// What the planner optimises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// The least expected latency.
    MinLatency,
    /// The least offloaded fraction among routes expected within this
    /// latency (the fastest route when none is).
    Slo(Duration),
}

/// The planner's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlanConfig {
    pub objective: Objective,
    /// How much better (a fraction of the current route's expected latency)
    /// a challenger must be.
    pub hysteresis: f64,
    /// Plans in a row a challenger must win before the edge switches.
    pub confirm: usize,
    /// Time between plans.
    pub plan_every: Duration,
    /// Time between round-trip probes.
    pub ping_every: Duration,
    /// Answers the exit rates are counted over.
    pub exit_window: usize,
    /// Offloads and probes the planner sees before its first switch (the
    /// first requests carry connection set-up and cold caches).
    pub warmup: usize,
}

impl PlanConfig {
    pub fn new(objective: Objective) -> Self {
        Self {
            objective,
            hysteresis: 0.1,
            confirm: 3,
            plan_every: Duration::from_millis(200),
            ping_every: Duration::from_secs(1),
            exit_window: 1000,
            warmup: 20,
        }
    }

    /// Checks the values a flag or a hand-built config could get wrong.
    pub fn validate(&self) -> Result<(), PlanConfigError> {
        if !(0.0..1.0).contains(&self.hysteresis) {
            return Err(PlanConfigError::Hysteresis(self.hysteresis));
        }
        if self.confirm == 0 {
            return Err(PlanConfigError::Confirm);
        }
        if self.exit_window == 0 {
            return Err(PlanConfigError::ExitWindow);
        }
        if self.plan_every.is_zero() {
            return Err(PlanConfigError::PlanInterval);
        }
        if self.ping_every.is_zero() {
            return Err(PlanConfigError::PingInterval);
        }
        if let Objective::Slo(d) = self.objective {
            if d.is_zero() {
                return Err(PlanConfigError::LatencyObjective);
            }
        }
        Ok(())
    }
}

/// A [`PlanConfig`] value out of its range, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanConfigError {
    #[error("hysteresis {0} must be in [0, 1)")]
    Hysteresis(f64),
    #[error("confirm (plans a challenger must win in a row) must be at least 1")]
    Confirm,
    #[error("exit window must be at least 1 answer")]
    ExitWindow,
    #[error("plan interval must be positive")]
    PlanInterval,
    #[error("ping interval must be positive")]
    PingInterval,
    #[error("latency objective must be positive")]
    LatencyObjective,
}

/// A smoothed estimate with change detection: a slow EWMA is the estimate,
/// a fast one follows recent samples; when the fast one stays more than
/// `jump` (relative) away from the slow one for `persist` samples in a row,
/// the link changed and the slow one is reset to the fast one. Until a
/// weight reaches `1 / count` both are plain means, so the first sample
/// (often an outlier: a connection being set up) does not linger.
#[derive(Debug, Clone)]
pub struct Tracker {
    slow: Option<f64>,
    fast: Option<f64>,
    alpha_slow: f64,
    alpha_fast: f64,
    jump: f64,
    persist: usize,
    run: usize,
    count: u64,
    pub changes: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Self {
            slow: None,
            fast: None,
            alpha_slow: 0.05,
            alpha_fast: 0.4,
            jump: 0.5,
            persist: 4,
            run: 0,
            count: 0,
            changes: 0,
        }
    }
}

impl Tracker {
    /// Adds a sample; `true` when it completed a detected change.
    pub fn update(&mut self, x: f64) -> bool {
        if !x.is_finite() {
            return false;
        }
        self.count += 1;
        let mean = 1.0 / self.count as f64;
        let (Some(slow), Some(fast)) = (self.slow, self.fast) else {
            self.slow = Some(x);
            self.fast = Some(x);
            return false;
        };
        let fast = fast + self.alpha_fast.max(mean) * (x - fast);
        let slow = slow + self.alpha_slow.max(mean) * (x - slow);
        self.fast = Some(fast);
        // Relative to the larger of the two, with a floor so that estimates
        // near zero (a per-byte time on a fast link) do not flap on noise.
        let scale = slow.abs().max(fast.abs()).max(1e-9);
        if (fast - slow).abs() / scale > self.jump / (1.0 + self.jump) {
            self.run += 1;
        } else {
            self.run = 0;
        }
        if self.run >= self.persist {
            self.run = 0;
            self.changes += 1;
            self.slow = Some(fast);
            return true;
        }
        self.slow = Some(slow);
        false
    }

    pub fn value(&self) -> Option<f64> {
        self.slow
    }
}

/// What the device measured at start: each block's compute time and the
/// size of a request at each candidate route.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    /// Compute of each block on this device, µs (batch 1), for every block
    /// the edge holds (`0..K_max`).
    pub block_us: Vec<f64>,
    /// The routes the edge may take and the bytes of one request on each.
    pub routes: Vec<(Route, f64)>,
    /// `after_block` of every exit of the model, in exit order.
    pub exits_after: Vec<usize>,
    /// Blocks in the whole model.
    pub num_blocks: usize,
}

/// The planner's view of one route, for metrics, logs and reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteEstimate {
    pub route: Route,
    /// Expected latency of one input, µs.
    pub expected_us: f64,
    /// Fraction of inputs that would be offloaded.
    pub offload_fraction: f64,
    pub bytes: f64,
    pub cloud_us: f64,
}

/// A plan: the route to use and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub route: Route,
    /// Whether this plan switched routes.
    pub switched: bool,
    pub rtt_us: Option<f64>,
    /// Estimated goodput, bytes per second (`None` before any offload).
    pub goodput_bps: Option<f64>,
    pub estimates: Vec<RouteEstimate>,
}

/// The live estimates and the current choice.
#[derive(Debug)]
pub struct Planner {
    pub config: PlanConfig,
    profile: Profile,
    current: Route,
    /// Challenger and how many plans in a row it won.
    challenger: Option<(Route, usize)>,
    /// Measured / profiled local compute.
    edge_scale: Tracker,
    /// Round trip of the probe, and the size of its answer.
    ping: Tracker,
    ping_bytes: f64,
    per_byte: Tracker,
    /// A link change was detected since the last plan.
    changed: bool,
    /// Queue + compute reported by the cloud, per split.
    cloud: Vec<Option<Tracker>>,
    /// Measured request bytes per route.
    bytes: Vec<Option<Tracker>>,
    /// Offloads (and shadows) and probes seen, for the warm-up.
    offloads_seen: usize,
    pings_seen: usize,
    /// Exit index of the last answers (`None`: none answered, an error).
    answers: VecDeque<usize>,
    exit_counts: Vec<usize>,
    pub switches: u64,
}

impl Planner {
    /// A planner starting on `start` (one of the profile's routes).
    pub fn new(config: PlanConfig, profile: Profile, start: Route) -> Self {
        let n_routes = profile.routes.len();
        let exits = profile.exits_after.len();
        let blocks = profile.num_blocks;
        Self {
            config,
            current: start,
            challenger: None,
            edge_scale: Tracker::default(),
            ping: Tracker::default(),
            ping_bytes: 0.0,
            per_byte: Tracker::default(),
            changed: false,
            cloud: vec![None; blocks + 1],
            bytes: vec![None; n_routes],
            offloads_seen: 0,
            pings_seen: 0,
            answers: VecDeque::new(),
            exit_counts: vec![0; exits],
            switches: 0,
            profile,
        }
    }

    pub fn current(&self) -> Route {
        self.current
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The probe took `us`, its answer was `bytes` long.
    pub fn observe_ping(&mut self, us: f64, bytes: f64) {
        self.changed |= self.ping.update(us);
        self.ping_bytes = bytes;
        self.pings_seen += 1;
    }

    /// Round trip of an empty message: the probe's time less its bytes.
    pub fn rtt_us(&self) -> Option<f64> {
        let per_byte = self.per_byte.value().unwrap_or(0.0);
        self.ping.value().map(|p| (p - self.ping_bytes * per_byte).max(0.0))
    }

    /// Estimated goodput, bytes per second (`None` before any offload).
    pub fn goodput_bps(&self) -> Option<f64> {
        self.per_byte.value().map(|p| if p > 0.0 { 1e6 / p } else { f64::INFINITY })
    }

    /// An input ran blocks `0..split` on the device in `us`.
    pub fn observe_local(&mut self, split: usize, us: f64) {
        let profiled: f64 = self.profile.block_us[..split.min(self.profile.block_us.len())].iter().sum();
        if profiled > 0.0 {
            self.edge_scale.update(us / profiled);
        }
    }

    /// An offload on `route` of `bytes` took `total_us` from send to answer,
    /// `cloud_us` of which the cloud spent queued and computing.
    pub fn observe_offload(&mut self, route: Route, bytes: f64, total_us: f64, cloud_us: f64) {
        self.offloads_seen += 1;
        if let Some(t) = self.cloud.get_mut(route.split) {
            t.get_or_insert_with(Tracker::default).update(cloud_us);
        }
        if let Some(i) = self.route_index(route) {
            self.bytes[i].get_or_insert_with(Tracker::default).update(bytes);
        }
        let network = (total_us - cloud_us).max(0.0);
        // The slope between the probe and this offload (either may be the
        // larger); sizes too close to tell apart give no sample.
        if let Some(ping) = self.ping.value() {
            let extra = bytes - self.ping_bytes;
            if extra.abs() >= 256.0 {
                self.changed |= self.per_byte.update(((network - ping) / extra).max(0.0));
            }
        }
    }

    /// An answer came from exit `exit`.
    pub fn observe_answer(&mut self, exit: usize) {
        if exit >= self.exit_counts.len() {
            return;
        }
        self.answers.push_back(exit);
        self.exit_counts[exit] += 1;
        if self.answers.len() > self.config.exit_window {
            let old = self.answers.pop_front().expect("non-empty");
            self.exit_counts[old] -= 1;
        }
    }

    fn route_index(&self, route: Route) -> Option<usize> {
        self.profile.routes.iter().position(|(r, _)| *r == route)
    }

    /// Fraction of inputs that reach block `b` (none of the exits placed
    /// before it answered).
    fn reach(&self, b: usize) -> f64 {
        let total = self.answers.len();
        if total == 0 {
            return 1.0;
        }
        let exited: usize = self
            .profile
            .exits_after
            .iter()
            .zip(&self.exit_counts)
            .filter(|(&after, _)| after < b)
            .map(|(_, &c)| c)
            .sum();
        1.0 - exited as f64 / total as f64
    }

    /// The cloud's time for blocks `split..N`: measured there, or from the
    /// nearest measured split plus the profiled cost in between.
    fn cloud_us(&self, split: usize) -> f64 {
        if let Some(v) = self.cloud.get(split).and_then(|t| t.as_ref()).and_then(|t| t.value()) {
            return v;
        }
        let profiled = |a: usize, b: usize| -> f64 { self.profile.block_us.iter().take(b).skip(a).sum() };
        let nearest = (0..self.cloud.len())
            .filter_map(|k| self.cloud[k].as_ref().and_then(|t| t.value()).map(|v| (k, v)))
            .min_by_key(|(k, _)| k.abs_diff(split));
        match nearest {
            Some((k, v)) if k > split => v + profiled(split, k),
            Some((k, v)) => (v - profiled(k, split)).max(0.0),
            None => profiled(split, self.profile.num_blocks),
        }
    }

    /// Expected cost of every route under the current estimates.
    pub fn estimates(&self) -> Vec<RouteEstimate> {
        let scale = self.edge_scale.value().unwrap_or(1.0);
        let rtt = self.rtt_us().unwrap_or(0.0);
        let per_byte = self.per_byte.value().unwrap_or(0.0);
        let reach: Vec<f64> = (0..=self.profile.num_blocks).map(|b| self.reach(b)).collect();
        self.profile
            .routes
            .iter()
            .enumerate()
            .map(|(i, &(route, profiled_bytes))| {
                let k = route.split;
                let edge: f64 =
                    self.profile.block_us.iter().take(k).enumerate().map(|(b, us)| us * scale * reach[b]).sum();
                let bytes = self.bytes[i].as_ref().and_then(|t| t.value()).unwrap_or(profiled_bytes);
                let (offload_fraction, cloud_us) =
                    if k >= self.profile.num_blocks { (0.0, 0.0) } else { (reach[k], self.cloud_us(k)) };
                let expected_us = edge + offload_fraction * (rtt + bytes * per_byte + cloud_us);
                RouteEstimate { route, expected_us, offload_fraction, bytes, cloud_us }
            })
            .collect()
    }

    /// The route the objective prefers, among `estimates`.
    fn best(&self, estimates: &[RouteEstimate]) -> RouteEstimate {
        let fastest =
            || estimates.iter().min_by(|a, b| a.expected_us.total_cmp(&b.expected_us)).cloned().expect("routes");
        match self.config.objective {
            Objective::MinLatency => fastest(),
            Objective::Slo(slo) => {
                let slo = slo.as_secs_f64() * 1e6;
                estimates
                    .iter()
                    .filter(|e| e.expected_us <= slo)
                    .min_by(|a, b| {
                        a.offload_fraction.total_cmp(&b.offload_fraction).then(a.expected_us.total_cmp(&b.expected_us))
                    })
                    .cloned()
                    .unwrap_or_else(fastest)
            }
        }
    }

    /// Re-plans: the route to use from now on.
    pub fn plan(&mut self) -> Plan {
        let estimates = self.estimates();
        let best = self.best(&estimates);
        let current = estimates.iter().find(|e| e.route == self.current).cloned().expect("current route");
        let better = match self.config.objective {
            Objective::MinLatency => best.expected_us < current.expected_us * (1.0 - self.config.hysteresis),
            Objective::Slo(slo) => {
                let slo = slo.as_secs_f64() * 1e6;
                let current_meets = current.expected_us <= slo * (1.0 - self.config.hysteresis);
                if best.expected_us <= slo {
                    !current_meets
                        || best.offload_fraction < current.offload_fraction - 0.01
                        || (best.offload_fraction <= current.offload_fraction
                            && best.expected_us < current.expected_us * (1.0 - self.config.hysteresis))
                } else {
                    best.expected_us < current.expected_us * (1.0 - self.config.hysteresis)
                }
            }
        };
        let changed = std::mem::take(&mut self.changed);
        let warm = self.offloads_seen >= self.config.warmup && self.pings_seen >= 2;
        let mut switched = false;
        if best.route != self.current && better && warm {
            let wins = match self.challenger {
                Some((r, n)) if r == best.route => n + 1,
                _ => 1,
            };
            if wins >= self.config.confirm || changed {
                tracing::info!(
                    from = %self.current, to = %best.route,
                    expected_from_us = current.expected_us, expected_to_us = best.expected_us,
                    rtt_us = self.rtt_us(), goodput_bps = self.goodput_bps(),
                    link_change = changed, "split re-planned"
                );
                self.current = best.route;
                self.challenger = None;
                self.switches += 1;
                switched = true;
            } else {
                self.challenger = Some((best.route, wins));
            }
        } else {
            self.challenger = None;
        }
        Plan { route: self.current, switched, rtt_us: self.rtt_us(), goodput_bps: self.goodput_bps(), estimates }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F32: pb::Encoding = pb::Encoding::F32;
    const INT8: pb::Encoding = pb::Encoding::Int8;

    fn route(split: usize, encoding: pb::Encoding) -> Route {
        Route { split, encoding }
    }

    /// Four blocks of 100 µs on the edge, an exit after block 1 and the
    /// final one after block 3; states of 4,000 B at K = 0, 8,000 at 1 and 2,
    /// 1,000 at 3 (f32; int8 a quarter).
    fn profile() -> Profile {
        let sizes = [4000.0, 8000.0, 8000.0, 1000.0];
        let mut routes = vec![];
        for (k, &s) in sizes.iter().enumerate() {
            routes.push((route(k, F32), s));
            routes.push((route(k, INT8), s / 4.0));
        }
        Profile { block_us: vec![100.0; 4], routes, exits_after: vec![1, 3], num_blocks: 4 }
    }

    fn planner(objective: Objective) -> Planner {
        let mut c = PlanConfig::new(objective);
        c.confirm = 2;
        c.warmup = 5;
        Planner::new(c, profile(), route(0, F32))
    }

    /// Feeds the planner a link of `rtt_us` and `bytes_per_us`, with the
    /// cloud taking 50 µs for any split, on the current route.
    fn link(p: &mut Planner, rtt_us: f64, bytes_per_us: f64, n: usize) {
        for _ in 0..n {
            p.observe_ping(rtt_us, 0.0);
            let r = p.current();
            let bytes = p.profile.routes.iter().find(|(x, _)| *x == r).unwrap().1;
            p.observe_offload(r, bytes, rtt_us + bytes / bytes_per_us + 50.0, 50.0);
        }
    }

    fn settle(p: &mut Planner) -> Route {
        for _ in 0..10 {
            p.plan();
        }
        p.current()
    }

    #[test]
    fn the_best_route_for_known_costs() {
        // A fast link, nothing exits: sending the input (K = 0) costs 40 µs
        // of transfer, any edge block 100 µs. K = 0 int8 is the best.
        let mut p = planner(Objective::MinLatency);
        link(&mut p, 200.0, 100.0, 50);
        assert_eq!(settle(&mut p), route(0, INT8));
        let e = p.estimates();
        let k0 = e.iter().find(|e| e.route == route(0, INT8)).unwrap();
        // 200 rtt + 1000 B / 100 B/µs + 50 cloud.
        assert!((k0.expected_us - 260.0).abs() < 1.0, "{k0:?}");
        // A slow link (1 B/µs): K = 3 int8 (250 B) wins: 300 edge + 200
        // rtt + 250 (the cloud's 50 µs at K = 0, less the 300 µs of blocks
        // the edge now runs, is 0) = 750, against K = 0 int8 at 1,250.
        link(&mut p, 200.0, 1.0, 200);
        assert_eq!(settle(&mut p), route(3, INT8));
        let best = p.estimates().into_iter().min_by(|a, b| a.expected_us.total_cmp(&b.expected_us)).unwrap();
        assert!((best.expected_us - 750.0).abs() < 20.0, "{best:?}");
    }

    #[test]
    fn exit_rates_make_deeper_splits_cheaper() {
        // Half of the inputs exit after block 1: at K = 2 and 3 only half
        // offload and only half run block 2 on the edge.
        let mut p = planner(Objective::MinLatency);
        for i in 0..1000 {
            p.observe_answer(if i % 2 == 0 { 0 } else { 1 });
        }
        assert!((p.reach(1) - 1.0).abs() < 1e-9 && (p.reach(2) - 0.5).abs() < 1e-9);
        link(&mut p, 1000.0, 10.0, 50);
        let e = p.estimates();
        let k3 = e.iter().find(|e| e.route == route(3, INT8)).unwrap();
        // Edge: 100 + 100 + 50; offload half of (1000 rtt + 25 transfer +
        // 0 cloud, extrapolated from the 50 µs measured at K = 0).
        assert!((k3.expected_us - (250.0 + 0.5 * 1025.0)).abs() < 5.0, "{k3:?}");
        assert_eq!(settle(&mut p), route(3, INT8));
    }

    #[test]
    fn a_latency_objective_prefers_the_least_offload_that_meets_it() {
        let mut p = planner(Objective::Slo(Duration::from_micros(2000)));
        for i in 0..1000 {
            p.observe_answer(if i % 4 == 0 { 0 } else { 1 });
        }
        link(&mut p, 200.0, 100.0, 50);
        // Every route meets 2 ms; K >= 2 offloads 75%, K <= 1 all: one of
        // the former.
        let r = settle(&mut p);
        assert!(r.split >= 2, "{r}");
        // An impossible objective: the fastest route.
        let mut q = planner(Objective::Slo(Duration::from_micros(10)));
        link(&mut q, 200.0, 100.0, 50);
        assert_eq!(settle(&mut q), route(0, INT8));
    }

    #[test]
    fn hysteresis_keeps_a_nearly_as_good_route() {
        let mut p = planner(Objective::MinLatency);
        link(&mut p, 200.0, 100.0, 50);
        settle(&mut p);
        // K = 0 f32 costs 40 µs more than int8 out of ~300: 13% worse. With
        // hysteresis 20% it would not switch back from f32 to int8.
        let mut q = planner(Objective::MinLatency);
        q.config.hysteresis = 0.2;
        link(&mut q, 200.0, 100.0, 50);
        assert_eq!(settle(&mut q), route(0, F32), "within the hysteresis band: stays");
        // A challenger must win `confirm` plans in a row.
        let mut r = planner(Objective::MinLatency);
        link(&mut r, 200.0, 100.0, 50);
        let first = r.plan();
        assert!(!first.switched && r.current() == route(0, F32), "one win is not enough");
        assert!(r.plan().switched);
        assert_eq!(r.current(), route(0, INT8));
        // And it does not flap back on the same estimates.
        for _ in 0..20 {
            assert!(!r.plan().switched);
        }
    }

    #[test]
    fn a_link_change_is_detected_and_switches_at_once() {
        let mut t = Tracker::default();
        for _ in 0..100 {
            assert!(!t.update(1000.0));
        }
        // Noise around the level is not a change.
        for i in 0..100 {
            assert!(!t.update(if i % 2 == 0 { 1200.0 } else { 800.0 }));
        }
        // A persistent jump is, within a few samples, and the estimate follows.
        let n = (1..=10).find(|_| t.update(20_000.0)).expect("detected");
        assert!(n <= 6, "took {n} samples");
        assert!(t.value().unwrap() > 5000.0, "{:?}", t.value());
        assert_eq!(t.changes, 1);

        let mut p = planner(Objective::MinLatency);
        p.config.confirm = 1000;
        link(&mut p, 200.0, 100.0, 50);
        p.current = route(0, INT8);
        // The link drops to 1 B/µs: the change skips the confirmation.
        let mut switched = false;
        for _ in 0..20 {
            link(&mut p, 200.0, 1.0, 1);
            switched |= p.plan().switched;
        }
        assert!(switched && p.current() == route(3, INT8), "{}", p.current());
    }

    #[test]
    fn the_probe_and_offloads_separate_rtt_from_goodput() {
        // rtt 2 ms, 10 µs per byte; a 1,000-byte probe; offloads of 3,000
        // and of 500 bytes (smaller than the probe) both give the slope.
        for bytes in [3000.0, 500.0] {
            let mut p = planner(Objective::MinLatency);
            for _ in 0..30 {
                p.observe_ping(2000.0 + 1000.0 * 10.0, 1000.0);
                p.observe_offload(route(0, F32), bytes, 2000.0 + bytes * 10.0 + 300.0, 300.0);
            }
            assert!((p.rtt_us().unwrap() - 2000.0).abs() < 1.0, "{:?}", p.rtt_us());
            let g = p.plan().goodput_bps.unwrap();
            assert!((g - 1e5).abs() < 1.0, "{g}");
        }
    }

    #[test]
    fn unmeasured_cloud_splits_come_from_the_nearest_measured_one() {
        let mut p = planner(Objective::MinLatency);
        // Measured at K = 1: 300 µs. K = 3 saves blocks 1 and 2 (200 µs).
        p.observe_offload(route(1, F32), 8000.0, 1000.0, 300.0);
        assert!((p.cloud_us(1) - 300.0).abs() < 1e-9);
        assert!((p.cloud_us(3) - 100.0).abs() < 1e-9);
        assert!((p.cloud_us(0) - 400.0).abs() < 1e-9);
        // Live local compute twice the profile doubles the edge estimates.
        for _ in 0..10 {
            p.observe_local(2, 400.0);
        }
        let e = p.estimates();
        let k4 = e.iter().find(|e| e.route == route(3, F32)).unwrap();
        assert!(k4.expected_us >= 600.0, "{k4:?}");
        assert_eq!(PlanConfig::new(Objective::Slo(Duration::ZERO)).validate(), Err(PlanConfigError::LatencyObjective));
        assert!(PlanConfig::new(Objective::MinLatency).validate().is_ok());
        let bad = |c: PlanConfig| c.validate().unwrap_err();
        let ok = PlanConfig::new(Objective::MinLatency);
        assert_eq!(bad(PlanConfig { hysteresis: 1.0, ..ok }), PlanConfigError::Hysteresis(1.0));
        assert_eq!(bad(PlanConfig { confirm: 0, ..ok }), PlanConfigError::Confirm);
        assert_eq!(bad(PlanConfig { exit_window: 0, ..ok }), PlanConfigError::ExitWindow);
        assert_eq!(bad(PlanConfig { plan_every: Duration::ZERO, ..ok }), PlanConfigError::PlanInterval);
        assert_eq!(bad(PlanConfig { ping_every: Duration::ZERO, ..ok }), PlanConfigError::PingInterval);
        assert_eq!(bad(PlanConfig { hysteresis: 1.0, ..ok }).to_string(), "hysteresis 1 must be in [0, 1)");
    }
}
