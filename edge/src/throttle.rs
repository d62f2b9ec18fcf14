//! Client-side adaptive throttling, as Google's SRE book describes it
//! ("Handling Overload"): an edge that sees a cloud refuse much of what it
//! sends stops sending that much, refusing the excess itself, locally, at no
//! cost to the cloud or the network.
//!
//! Each endpoint's client counts the requests it was asked to send and those
//! the cloud *accepted* (answered with anything but `ResourceExhausted`),
//! both decaying with a time constant of [`TIME_CONSTANT`], and refuses a new
//! request locally with probability
//!
//! ```text
//! max(0, (requests - K * accepts) / (requests + 1))
//! ```
//!
//! With `K` = 2 (the book's value) a cloud that refuses nothing is never
//! throttled, and one overloaded at any multiple of its capacity sees at most
//! about twice what it accepts: the refusals it must still send cost it
//! little, and the rest never leave the edge. A local refusal is
//! `ResourceExhausted` (the edge's reason `overloaded`, as the cloud's own).
//! Only `ResourceExhausted` counts against the cloud: a slow or unreachable
//! one is the deadline's and the breaker's business. A request sent is
//! counted when its answer comes (one refused here at once): a burst still
//! in flight is not mistaken for requests the cloud failed to accept.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use offramp_common::rng::SplitMix64;
use tonic::{Code, Status};

/// How every local refusal's message begins.
const REFUSED_HERE: &str = "throttled by this client";

/// Whether `status` is a throttle's local refusal (not the cloud's).
pub fn refused_here(status: &Status) -> bool {
    status.code() == Code::ResourceExhausted && status.message().starts_with(REFUSED_HERE)
}

/// How fast old requests stop counting (an exponential decay).
pub const TIME_CONSTANT: Duration = Duration::from_secs(1);

/// The book's multiplier: the cloud may see about `K` times what it accepts.
pub const K: f64 = 2.0;

/// One endpoint's throttle.
#[derive(Debug)]
pub struct Throttle {
    k: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    requests: f64,
    accepts: f64,
    at: Instant,
    rng: SplitMix64,
}

impl State {
    fn decay(&mut self, now: Instant) {
        let f = (-(now.saturating_duration_since(self.at).as_secs_f64()) / TIME_CONSTANT.as_secs_f64()).exp();
        self.requests *= f;
        self.accepts *= f;
        self.at = now;
    }
}

impl Throttle {
    /// A throttle letting the cloud see about `k` times what it accepts
    /// (`k` >= 1; [`K`] is the usual choice).
    pub fn new(k: f64, seed: u64) -> Self {
        Self {
            k: k.max(1.0),
            state: Mutex::new(State { requests: 0.0, accepts: 0.0, at: Instant::now(), rng: SplitMix64::new(seed) }),
        }
    }

    /// Whether to send a request; `Err`: refused here (`ResourceExhausted`,
    /// counted). A request sent is counted by [`Throttle::record`].
    pub fn admit(&self) -> Result<(), Status> {
        let Ok(mut s) = self.state.lock() else { return Ok(()) };
        s.decay(Instant::now());
        let p = ((s.requests - self.k * s.accepts) / (s.requests + 1.0)).max(0.0);
        if p > 0.0 && (s.rng.next_f32() as f64) < p {
            s.requests += 1.0;
            return Err(Status::resource_exhausted(format!(
                "{REFUSED_HERE}: the cloud accepted {:.0} of the last {:.0} requests (client-side adaptive \
                 throttling, K = {})",
                s.accepts, s.requests, self.k
            )));
        }
        Ok(())
    }

    /// Counts a request that was sent, with the cloud's answer.
    pub fn record(&self, answer: Result<(), Code>) {
        if let Ok(mut s) = self.state.lock() {
            s.decay(Instant::now());
            s.requests += 1.0;
            if answer != Err(Code::ResourceExhausted) {
                s.accepts += 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_that_accepts_everything_is_never_throttled() {
        let t = Throttle::new(K, 1);
        for _ in 0..10_000 {
            t.admit().unwrap();
            t.record(Ok(()));
        }
    }

    #[test]
    fn a_cloud_that_refuses_everything_sees_little_of_it() {
        let t = Throttle::new(K, 7);
        let mut sent = 0u32;
        for _ in 0..20_000u32 {
            match t.admit() {
                Ok(()) => {
                    sent += 1;
                    t.record(Err(Code::ResourceExhausted));
                }
                Err(s) => {
                    assert_eq!(s.code(), Code::ResourceExhausted);
                    assert!(refused_here(&s), "{s:?}");
                }
            }
        }
        assert!(sent < 1_000, "sent {sent} of 20,000");
        assert!(sent > 0, "a trickle still goes out, to notice recovery");
    }

    #[test]
    fn a_burst_in_flight_is_not_throttled() {
        let t = Throttle::new(K, 5);
        for _ in 0..1000 {
            t.admit().unwrap();
        }
    }

    #[test]
    fn only_resource_exhausted_counts_against_the_cloud() {
        let t = Throttle::new(K, 3);
        for _ in 0..1000 {
            t.admit().unwrap();
            t.record(Err(Code::DeadlineExceeded));
        }
    }
}
