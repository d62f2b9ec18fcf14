//! Thresholds that hold an accuracy budget while serving (`--accuracy-budget`).
//!
//! Each edge exit answers when its top-1 probability reaches its threshold
//! (a max-prob rule). The controller keeps every threshold as low (loose) as
//! it can while the estimated disagreement with the full model, among the
//! inputs that exit there, stays within the budget. Since every input that
//! exits early is wrong against the full model at most as often as its exit
//! disagrees, holding each exit's disagreement rate within the budget holds
//! the whole stream's accuracy loss against the full model within it.
//!
//! Feedback needs no labels: the cloud's answer from the final exit is the
//! reference.
//! - Offloaded inputs feed it for free: every edge exit they passed (and did
//!   not answer at) is a sample at that exit's confidence.
//! - Inputs that exited on the device are seen through *shadow* requests: a
//!   fraction `shadow` of them is also sent to the cloud in the background
//!   ([`Controller::take_shadow`]); the answer has gone already, the shadow
//!   never delays it and is not an offload in any latency figure. At most
//!   [`BudgetConfig::max_shadows_in_flight`] are in flight; more are dropped
//!   (counted), which is how shadows give way first under overload, and a
//!   shadow has its own short deadline.
//!
//! Shadowed inputs are a `shadow` sample of the exited ones, so each of their
//! observations weighs `1 / shadow` (offloaded ones weigh 1): the weighted
//! window is an unbiased picture of every input that reached the exit.
//!
//! The rule, per exit, every [`BudgetConfig::update_every`] new samples:
//! over the last `window` samples, the target threshold is the lowest
//! confidence `t` at which the weighted disagreement rate of the samples at
//! or above `t`, raised to a one-sided Wilson upper bound (`z`, over the raw
//! count), is within the budget. The threshold then moves towards the target
//! by at most `max_step`. Below `min_samples` samples an exit keeps its
//! starting threshold. When the cloud is unreachable no feedback arrives and
//! the controller is frozen explicitly ([`Controller::set_reachable`]): the
//! thresholds stay at their last values, and fallback behaves as without it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use offramp_common::model::Observation;
use offramp_common::policy::Rule;
use offramp_common::Policy;
use serde::Serialize;

/// The controller's settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BudgetConfig {
    /// Largest accuracy loss against the full model (a fraction: 0.01 is 1%).
    pub budget: f64,
    /// Fraction of edge-exited inputs also sent to the cloud.
    pub shadow: f64,
    /// Samples per exit the estimate looks at (a sliding window).
    pub window: usize,
    /// Samples an exit needs before its threshold moves.
    pub min_samples: usize,
    /// New samples at an exit between updates of its threshold.
    pub update_every: usize,
    /// Largest change of a threshold per update.
    pub max_step: f32,
    /// Width of the one-sided upper bound on the disagreement rate (standard
    /// deviations; 0: the plain estimate).
    pub z: f64,
    /// Shadow requests in flight at once; more are dropped.
    pub max_shadows_in_flight: usize,
    /// Deadline of a shadow request.
    pub shadow_deadline: Duration,
}

impl BudgetConfig {
    /// The defaults around a budget.
    pub fn new(budget: f64) -> Self {
        Self {
            budget,
            shadow: 0.1,
            window: 2000,
            min_samples: 200,
            update_every: 25,
            max_step: 0.02,
            z: 1.0,
            max_shadows_in_flight: 2,
            shadow_deadline: Duration::from_secs(1),
        }
    }

    /// Checks the values a flag or a hand-built config could get wrong.
    pub fn validate(&self) -> Result<(), BudgetError> {
        if !(self.budget > 0.0 && self.budget < 1.0) {
            return Err(BudgetError::Budget(self.budget));
        }
        if !(self.shadow > 0.0 && self.shadow <= 1.0) {
            return Err(BudgetError::Shadow(self.shadow));
        }
        if self.window == 0 || self.update_every == 0 || self.min_samples > self.window {
            return Err(BudgetError::Window {
                window: self.window,
                min_samples: self.min_samples,
                update_every: self.update_every,
            });
        }
        if !(self.max_step > 0.0 && self.max_step <= 1.0) {
            return Err(BudgetError::MaxStep(self.max_step));
        }
        Ok(())
    }
}

/// A [`BudgetConfig`] value out of its range, named with the value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    #[error("accuracy budget {0} must be in (0, 1)")]
    Budget(f64),
    #[error("shadow fraction {0} must be in (0, 1]")]
    Shadow(f64),
    #[error("window {window} must be positive and hold min-samples {min_samples} (update every {update_every} > 0)")]
    Window { window: usize, min_samples: usize, update_every: usize },
    #[error("max threshold step {0} must be in (0, 1]")]
    MaxStep(f32),
}

/// One piece of feedback at an exit.
#[derive(Debug, Clone, Copy)]
struct Sample {
    confidence: f32,
    agree: bool,
    weight: f32,
}

#[derive(Debug, Default)]
struct ExitState {
    window: VecDeque<Sample>,
    since_update: usize,
    /// Total samples ever seen (for reports).
    seen: u64,
}

/// A snapshot of what the controller believes, for metrics, logs and reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Threshold of each edge exit.
    pub thresholds: Vec<f32>,
    /// Estimated disagreement rate (weighted, no bound) of each edge exit at
    /// its current threshold; `None` before it has samples there.
    pub disagreement: Vec<Option<f64>>,
    /// Samples in each exit's window.
    pub samples: Vec<usize>,
    pub frozen: bool,
    pub updates: u64,
    pub shadows_sent: u64,
    pub shadows_dropped: u64,
}

struct State {
    exits: Vec<ExitState>,
    thresholds: Vec<f32>,
    frozen: bool,
    updates: u64,
    /// Exited inputs since the last shadow (a deterministic 1-in-n choice).
    since_shadow: f64,
    shadows_sent: u64,
    shadows_dropped: u64,
}

/// The controller of one edge. The edge reads [`Controller::policy`] for
/// every input; feedback comes in through [`Controller::observe`].
pub struct Controller {
    pub config: BudgetConfig,
    /// The rules of the exits the controller does not own (cloud-side exits
    /// keep the configured ones).
    base: Vec<Rule>,
    /// Edge exits: `0..edge_exits`.
    edge_exits: usize,
    state: Mutex<State>,
    policy: RwLock<Arc<Policy>>,
    in_flight: AtomicUsize,
}

impl Controller {
    /// A controller for the edge exits `0..edge_exits` of `policy`. An exit
    /// whose configured rule is max-prob starts at that threshold (the
    /// calibrated one); any other rule is replaced by max-prob 1.0, the
    /// safest start (everything offloads until feedback loosens it).
    pub fn new(config: BudgetConfig, policy: &Policy, edge_exits: usize) -> Self {
        let base = policy.rules().to_vec();
        let thresholds = (0..edge_exits)
            .map(|e| match base.get(e) {
                Some(Rule::MaxProb { threshold }) => *threshold,
                _ => 1.0,
            })
            .collect();
        let state = State {
            exits: (0..edge_exits).map(|_| ExitState::default()).collect(),
            thresholds,
            frozen: false,
            updates: 0,
            since_shadow: 0.0,
            shadows_sent: 0,
            shadows_dropped: 0,
        };
        for (e, t) in state.thresholds.iter().enumerate() {
            metrics::gauge!("offramp_edge_threshold", "exit" => e.to_string()).set(*t as f64);
        }
        let policy = Arc::new(Self::policy_of(&base, &state.thresholds));
        Self { config, base, edge_exits, state: Mutex::new(state), policy: RwLock::new(policy), in_flight: 0.into() }
    }

    fn policy_of(base: &[Rule], thresholds: &[f32]) -> Policy {
        let rules = base
            .iter()
            .enumerate()
            .map(|(e, r)| match thresholds.get(e) {
                Some(&threshold) => Rule::MaxProb { threshold },
                None => *r,
            })
            .collect();
        Policy::from_rules(rules).expect("thresholds stay in [0, 1]")
    }

    /// The policy to decide the next input with.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().expect("policy lock").clone()
    }

    /// Current thresholds of the edge exits.
    pub fn thresholds(&self) -> Vec<f32> {
        self.state.lock().expect("controller lock").thresholds.clone()
    }

    /// Whether the input that just exited on the device should also go to
    /// the cloud as a shadow. `Some(guard)`: send it, and drop the guard when
    /// it is done (it holds one of the in-flight places). Counts drops.
    pub fn take_shadow(self: &Arc<Self>) -> Option<ShadowGuard> {
        let mut s = self.state.lock().expect("controller lock");
        if s.frozen {
            return None;
        }
        s.since_shadow += self.config.shadow;
        if s.since_shadow < 1.0 {
            return None;
        }
        s.since_shadow -= 1.0;
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if n >= self.config.max_shadows_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            s.shadows_dropped += 1;
            metrics::counter!("offramp_edge_shadow_requests_total", "outcome" => "dropped").increment(1);
            return None;
        }
        s.shadows_sent += 1;
        Some(ShadowGuard(self.clone()))
    }

    /// Feedback from the cloud's final answer `reference` for an input whose
    /// edge exits said `history` (every exit evaluated on the device, the one
    /// that answered last if it exited). `shadow`: it came from a shadow
    /// request (an exited input), so it weighs `1 / shadow`.
    pub fn observe(&self, history: &[Observation], reference: usize, shadow: bool) {
        let weight = if shadow { (1.0 / self.config.shadow) as f32 } else { 1.0 };
        let mut s = self.state.lock().expect("controller lock");
        if s.frozen {
            return;
        }
        let mut changed = false;
        for o in history.iter().filter(|o| o.exit < self.edge_exits && o.confidence.is_finite()) {
            let e = &mut s.exits[o.exit];
            e.window.push_back(Sample { confidence: o.confidence, agree: o.prediction == reference, weight });
            if e.window.len() > self.config.window {
                e.window.pop_front();
            }
            e.seen += 1;
            e.since_update += 1;
            if e.since_update >= self.config.update_every && e.window.len() >= self.config.min_samples {
                e.since_update = 0;
                let target = target_threshold(&e.window, self.config.budget, self.config.z);
                let old = s.thresholds[o.exit];
                let step = self.config.max_step;
                let new = target.clamp(old - step, old + step).clamp(0.0, 1.0);
                if new != old {
                    s.thresholds[o.exit] = new;
                    changed = true;
                    tracing::info!(exit = o.exit, from = old, to = new, target, "threshold moved");
                    metrics::gauge!("offramp_edge_threshold", "exit" => o.exit.to_string()).set(new as f64);
                }
            }
        }
        if changed {
            s.updates += 1;
            *self.policy.write().expect("policy lock") = Arc::new(Self::policy_of(&self.base, &s.thresholds));
        }
    }

    /// The cloud answered (`true`) or could not be reached (`false`): while
    /// it is unreachable the thresholds freeze at their last values.
    pub fn set_reachable(&self, reachable: bool) {
        let mut s = self.state.lock().expect("controller lock");
        if s.frozen == reachable {
            s.frozen = !reachable;
            tracing::info!(frozen = s.frozen, thresholds = ?s.thresholds, "threshold controller");
        }
    }

    /// What the controller believes now.
    pub fn snapshot(&self) -> Snapshot {
        let s = self.state.lock().expect("controller lock");
        Snapshot {
            disagreement: s
                .exits
                .iter()
                .zip(&s.thresholds)
                .map(|(e, &t)| disagreement_at(&e.window, t).map(|(rate, _)| rate))
                .collect(),
            samples: s.exits.iter().map(|e| e.window.len()).collect(),
            thresholds: s.thresholds.clone(),
            frozen: s.frozen,
            updates: s.updates,
            shadows_sent: s.shadows_sent,
            shadows_dropped: s.shadows_dropped,
        }
    }
}

/// One shadow request's place in flight; released on drop.
pub struct ShadowGuard(Arc<Controller>);

impl Drop for ShadowGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The weighted disagreement rate of the samples at or above `t`, and their
/// raw count; `None` when there are none.
fn disagreement_at(window: &VecDeque<Sample>, t: f32) -> Option<(f64, usize)> {
    let (mut w, mut d, mut n) = (0.0f64, 0.0f64, 0usize);
    for s in window.iter().filter(|s| s.confidence >= t) {
        w += s.weight as f64;
        d += if s.agree { 0.0 } else { s.weight as f64 };
        n += 1;
    }
    (n > 0).then(|| (d / w, n))
}

/// One-sided Wilson upper bound of a rate `p` seen over `n` samples.
fn wilson_upper(p: f64, n: usize, z: f64) -> f64 {
    if z == 0.0 {
        return p;
    }
    let n = n as f64;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// The lowest threshold (a sample's confidence, or 1.0) at which the bounded
/// disagreement rate of the samples at or above it is within `budget`. (Few
/// samples at the top give a loose bound, so the sweep does not stop at the
/// first threshold over the budget.)
fn target_threshold(window: &VecDeque<Sample>, budget: f64, z: f64) -> f32 {
    let mut sorted: Vec<Sample> = window.iter().copied().collect();
    // Descending confidence: sweep the threshold down, accumulating.
    sorted.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    let (mut w, mut d, mut n) = (0.0f64, 0.0f64, 0usize);
    let mut best = 1.0f32;
    let mut i = 0;
    while i < sorted.len() {
        // Every sample at this confidence exits together.
        let c = sorted[i].confidence;
        while i < sorted.len() && sorted[i].confidence == c {
            let s = sorted[i];
            w += s.weight as f64;
            d += if s.agree { 0.0 } else { s.weight as f64 };
            n += 1;
            i += 1;
        }
        // The samples at or above `c` are what exits at threshold `c`:
        // the loss is their disagreement, whatever lies between.
        if wilson_upper(d / w, n, z) <= budget {
            best = c;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(exit: usize, prediction: usize, confidence: f32) -> Observation {
        Observation { exit, prediction, confidence }
    }

    fn config(budget: f64) -> BudgetConfig {
        BudgetConfig { min_samples: 50, update_every: 10, window: 1000, max_step: 0.05, ..BudgetConfig::new(budget) }
    }

    /// A stream where confidence c agrees with the reference with
    /// probability `agree(c)`, deterministic.
    fn feed(c: &Controller, n: usize, agree: impl Fn(f32) -> f32) {
        let mut rng = offramp_common::rng::SplitMix64::new(7);
        for _ in 0..n {
            let conf = 0.5 + 0.5 * rng.next_f32();
            let right = rng.next_f32() < agree(conf);
            c.observe(&[obs(0, if right { 3 } else { 4 }, conf)], 3, false);
        }
    }

    #[test]
    fn thresholds_loosen_when_exits_agree_and_tighten_when_they_do_not() {
        let policy = Policy::from_rules(vec![Rule::MaxProb { threshold: 0.95 }, Rule::Never]).unwrap();
        let c = Controller::new(config(0.01), &policy, 1);
        assert_eq!(c.thresholds(), vec![0.95]);
        // Always right: the threshold falls, at most max_step per update.
        feed(&c, 2000, |_| 1.0);
        let t = c.thresholds()[0];
        assert!(t < 0.6, "loosened to {t}");
        assert_eq!(c.policy().rules()[0], Rule::MaxProb { threshold: t });
        assert_eq!(c.policy().rules()[1], Rule::Never, "cloud-side rules kept");
        // Drift: below 0.9 the exit is now wrong a third of the time.
        // (With the window of 1,000, the ~200 samples above 0.9 bound the
        // rate there under 1%.)
        feed(&c, 3000, |conf| if conf < 0.9 { 0.66 } else { 1.0 });
        let t = c.thresholds()[0];
        assert!((0.88..=0.95).contains(&t), "tightened to {t}");
        let snap = c.snapshot();
        assert!(snap.disagreement[0].unwrap() <= 0.01, "{snap:?}");
    }

    #[test]
    fn an_unreachable_cloud_freezes_the_thresholds_and_stops_shadows() {
        let policy = Policy::from_rules(vec![Rule::MaxProb { threshold: 0.9 }, Rule::Never]).unwrap();
        let c = Arc::new(Controller::new(BudgetConfig { shadow: 1.0, ..config(0.01) }, &policy, 1));
        c.set_reachable(false);
        feed(&c, 1000, |_| 1.0);
        assert_eq!(c.thresholds(), vec![0.9]);
        assert!(c.take_shadow().is_none());
        c.set_reachable(true);
        assert!(c.take_shadow().is_some());
        feed(&c, 1000, |_| 1.0);
        assert!(c.thresholds()[0] < 0.9);
    }

    #[test]
    fn shadows_are_a_fraction_and_bounded_in_flight() {
        let policy = Policy::from_rules(vec![Rule::MaxProb { threshold: 0.9 }, Rule::Never]).unwrap();
        let c = Arc::new(Controller::new(BudgetConfig { shadow: 0.25, ..config(0.01) }, &policy, 1));
        let mut held = Vec::new();
        let mut chosen = 0;
        for _ in 0..40 {
            if let Some(g) = c.take_shadow() {
                chosen += 1;
                held.push(g);
            }
        }
        // 10 chosen (1 in 4), 2 in flight at most: 8 dropped.
        let s = c.snapshot();
        assert_eq!((chosen, s.shadows_sent, s.shadows_dropped), (2, 2, 8));
        held.clear();
        for _ in 0..4 {
            if let Some(g) = c.take_shadow() {
                drop(g);
                chosen += 1;
            }
        }
        assert_eq!(chosen, 3, "places come back when shadows finish");
    }

    #[test]
    fn shadow_samples_weigh_for_the_inputs_they_stand_for() {
        // One disagreeing shadow at 0.99 among 100 agreeing offloads there:
        // with weight 10 it is a 9% disagreement rate, well over 1%.
        let mut w: VecDeque<Sample> = (0..100).map(|_| Sample { confidence: 0.99, agree: true, weight: 1.0 }).collect();
        assert_eq!(target_threshold(&w, 0.01, 0.0), 0.99);
        w.push_back(Sample { confidence: 0.99, agree: false, weight: 10.0 });
        assert_eq!(target_threshold(&w, 0.01, 0.0), 1.0);
        let (rate, n) = disagreement_at(&w, 0.99).unwrap();
        assert!((rate - 10.0 / 110.0).abs() < 1e-9 && n == 101);
    }

    #[test]
    fn the_upper_bound_is_conservative() {
        assert_eq!(wilson_upper(0.0, 100, 0.0), 0.0);
        let u = wilson_upper(0.0, 100, 1.0);
        assert!(u > 0.0 && u < 0.02, "{u}");
        assert!(wilson_upper(0.05, 20, 1.0) > wilson_upper(0.05, 2000, 1.0));
        assert_eq!(BudgetConfig::new(0.0).validate(), Err(BudgetError::Budget(0.0)));
        assert_eq!(BudgetConfig { shadow: 0.0, ..BudgetConfig::new(0.01) }.validate(), Err(BudgetError::Shadow(0.0)));
        let e = BudgetConfig { min_samples: 5000, ..BudgetConfig::new(0.01) }.validate().unwrap_err();
        assert!(matches!(e, BudgetError::Window { window: 2000, min_samples: 5000, .. }), "{e}");
        assert_eq!(
            BudgetConfig { max_step: 0.0, ..BudgetConfig::new(0.01) }.validate(),
            Err(BudgetError::MaxStep(0.0))
        );
        assert_eq!(BudgetConfig::new(0.0).validate().unwrap_err().to_string(), "accuracy budget 0 must be in (0, 1)");
        assert!(BudgetConfig::new(0.01).validate().is_ok());
    }
}
