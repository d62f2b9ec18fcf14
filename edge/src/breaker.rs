//! A circuit breaker per cloud endpoint: closed → open after repeated failures
//! → half-open (one probe) after a backoff that doubles on each failed probe.
//! Keeps a dead cloud from costing every request a full timeout.

use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// First open period.
    pub base_backoff: Duration,
    /// Longest open period.
    pub max_backoff: Duration,
    /// A probe that has not reported after this long is presumed lost.
    pub probe_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, backoff: Duration },
    HalfOpen { since: Instant, backoff: Duration },
}

/// Whether a request may go to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the half-open probe.
    Probe,
    No,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// State changes, in order (for reports).
    pub transitions: Vec<(BreakerState, BreakerState)>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, state: State::Closed { failures: 0 }, transitions: Vec::new() }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn set(&mut self, next: State) {
        let before = self.state();
        self.state = next;
        let after = self.state();
        if before != after {
            tracing::info!(from = ?before, to = ?after, "circuit breaker");
            self.transitions.push((before, after));
        }
    }

    pub fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            State::Closed { .. } => Admit::Yes,
            State::Open { until, backoff } if now >= until => {
                self.set(State::HalfOpen { since: now, backoff });
                Admit::Probe
            }
            State::Open { .. } => Admit::No,
            State::HalfOpen { since, backoff } if now.duration_since(since) >= self.config.probe_timeout => {
                self.state = State::HalfOpen { since: now, backoff };
                Admit::Probe
            }
            State::HalfOpen { .. } => Admit::No,
        }
    }

    pub fn success(&mut self) {
        self.set(State::Closed { failures: 0 });
    }

    pub fn failure(&mut self, now: Instant) {
        let c = self.config;
        match self.state {
            State::Closed { failures } if failures + 1 >= c.failure_threshold => {
                self.set(State::Open { until: now + c.base_backoff, backoff: c.base_backoff })
            }
            State::Closed { failures } => self.state = State::Closed { failures: failures + 1 },
            State::HalfOpen { backoff, .. } | State::Open { backoff, .. } => {
                let backoff = (backoff * 2).min(c.max_backoff);
                self.set(State::Open { until: now + backoff, backoff });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_probes_and_closes() {
        let cfg = BreakerConfig {
            failure_threshold: 2,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            probe_timeout: Duration::from_secs(1),
        };
        let mut b = Breaker::new(cfg);
        let t0 = Instant::now();
        assert_eq!(b.admit(t0), Admit::Yes);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure(t0);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t0 + Duration::from_millis(50)), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_millis(100)), Admit::Probe);
        assert_eq!(b.admit(t0 + Duration::from_millis(101)), Admit::No, "one probe at a time");
        // Failed probe: open again for twice as long.
        let t1 = t0 + Duration::from_millis(110);
        b.failure(t1);
        assert_eq!(b.admit(t1 + Duration::from_millis(150)), Admit::No);
        assert_eq!(b.admit(t1 + Duration::from_millis(200)), Admit::Probe);
        let t2 = t1 + Duration::from_millis(210);
        b.failure(t2);
        // Capped at max_backoff.
        assert_eq!(b.admit(t2 + Duration::from_millis(300)), Admit::Probe);
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(t2 + Duration::from_millis(301)), Admit::Yes);
        assert_eq!(b.transitions.first(), Some(&(BreakerState::Closed, BreakerState::Open)));
        assert_eq!(b.transitions.last(), Some(&(BreakerState::HalfOpen, BreakerState::Closed)));
    }

    #[test]
    fn lost_probe_is_replaced() {
        let mut b = Breaker::new(BreakerConfig { failure_threshold: 1, ..Default::default() });
        let t0 = Instant::now();
        b.failure(t0);
        assert_eq!(b.admit(t0 + Duration::from_millis(100)), Admit::Probe);
        assert_eq!(b.admit(t0 + Duration::from_millis(200)), Admit::No);
        assert_eq!(b.admit(t0 + Duration::from_millis(2100)), Admit::Probe);
    }
}
