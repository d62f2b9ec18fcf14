//! Admission: which classification requests the cloud takes on, decided the
//! moment a request arrives (on a unary call before its message is even
//! decoded, [`crate::early`]), the same way on every transport.
//!
//! **The rule.** A request is admitted when the cloud can be expected to
//! answer it within its *budget*: the smaller of its remaining deadline
//! (`grpc-timeout`, or `timeout_us` on the stream and QUIC) and
//! `--max-queue-delay`. Otherwise it is refused at once with
//! `ResourceExhausted` and a retry hint (`grpc-retry-pushback-ms`, gRPC's
//! retry design A6): how long until a request would fit.
//!
//! **The expected wait** of a new request is `(L + 1) · c`, with `L` the
//! requests admitted and not yet answered (every transport together) and `c`
//! the cloud's recent service time per request: an exponentially weighted
//! mean of `S / (L_a + 1)` over answered requests, `S` a request's time from
//! admission to answer and `L_a` the requests ahead of it when it was
//! admitted (Little's law read backwards: a request that found `L_a` ahead
//! and took `S` saw them drain at `(L_a + 1) / S` per second). `c` is
//! measured, not configured, and it is everything the cloud spends per
//! request — compute, batching, the hops to and from the compute thread,
//! waits for a runtime worker — so it follows the machine: a batch that
//! grows under load makes it smaller, CPU taken by a neighbour larger.
//!
//! **Why this rather than an adaptive concurrency limit** (Netflix's
//! gradient limiter, Envoy's adaptive concurrency filter): those infer
//! overload from latency rising over a probed minimum, converge over many
//! samples, must probe (Envoy periodically drops its limit to re-measure the
//! minimum) and know nothing of a request's deadline. This cloud has one
//! queue in front of a compute thread whose drain rate it can measure
//! directly, so the wait a new request would see is a prediction, not a
//! search: admitting on it keeps every admitted request's latency near the
//! target under any overload (what "Handling Overload" in Google's SRE book
//! asks: goodput held, excess refused early and cheaply), refuses at once a
//! request whose own deadline is too short to be met (no work for a caller
//! that will have gone away), and needs no tuning beyond the target itself.
//!
//! **The floor.** While fewer than `floor` requests (one batch per compute
//! worker) are in flight, every request is admitted whatever the estimate
//! says: the compute thread is never starved by a stale estimate. Before
//! the first answer there is no estimate, and only `--max-queue`, the hard
//! bound behind all this, applies.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::CloudError;

/// Weight of one answered request in the service-time estimate (at 8,000
/// answers a second, the estimate follows the last ~8 ms).
const WEIGHT: f64 = 1.0 / 64.0;

/// The admission state shared by every transport.
#[derive(Debug)]
pub struct Admission {
    max_delay: Duration,
    floor: usize,
    in_flight: AtomicUsize,
    /// Service time per request in ns, as `f64` bits; 0: not measured yet.
    per_request_ns: AtomicU64,
}

/// A refused request: why, and how long to wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Refusal {
    /// The expected wait.
    pub expected: Duration,
    pub budget: Duration,
    pub in_flight: usize,
    pub retry_after: Duration,
}

impl Admission {
    /// Admits on an expected wait of at most `max_delay` (and the request's
    /// deadline); always admits while fewer than `floor` are in flight.
    pub fn new(max_delay: Duration, floor: usize) -> Arc<Self> {
        Arc::new(Self {
            max_delay,
            floor: floor.max(1),
            in_flight: AtomicUsize::new(0),
            per_request_ns: AtomicU64::new(0),
        })
    }

    /// Requests admitted and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The measured service time per request (`None` before the first answer).
    pub fn per_request(&self) -> Option<Duration> {
        let ns = f64::from_bits(self.per_request_ns.load(Ordering::Relaxed));
        (ns > 0.0).then(|| Duration::from_nanos(ns as u64))
    }

    /// The budget of a request with `deadline` left (`None`: no deadline).
    fn budget(&self, deadline: Option<Duration>) -> Duration {
        deadline.map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Would a request with `deadline` left be admitted now? For a check
    /// before decoding a message that [`Admission::admit`] repeats after.
    pub fn check(&self, deadline: Option<Duration>) -> Result<(), Refusal> {
        self.decide(self.in_flight(), deadline)
    }

    fn decide(&self, ahead: usize, deadline: Option<Duration>) -> Result<(), Refusal> {
        if ahead < self.floor {
            return Ok(());
        }
        // Nothing measured yet: nothing to predict from.
        let Some(c) = self.per_request() else { return Ok(()) };
        let budget = self.budget(deadline);
        let expected = c * (ahead.min(u32::MAX as usize - 1) as u32 + 1);
        if expected <= budget {
            return Ok(());
        }
        Err(Refusal {
            expected,
            budget,
            in_flight: ahead,
            // Until the excess has drained (at least a millisecond).
            retry_after: (expected - budget).max(Duration::from_millis(1)),
        })
    }

    /// Admits a request with `deadline` left, or refuses it (`OverBudget`).
    pub fn admit(self: &Arc<Self>, deadline: Option<Duration>) -> Result<Ticket, CloudError> {
        let ahead = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = Ticket { admission: self.clone(), admitted: Instant::now(), ahead };
        match self.decide(ahead, deadline) {
            Ok(()) => Ok(ticket),
            // Dropping the ticket undoes the count.
            Err(refusal) => Err(CloudError::OverBudget(refusal)),
        }
    }

    fn record(&self, sample_ns: f64) {
        let _ = self.per_request_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if old > 0.0 { old + WEIGHT * (sample_ns - old) } else { sample_ns };
            Some(new.max(1.0).to_bits())
        });
    }
}

/// An admitted request's place: counted in flight until dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    admitted: Instant,
    ahead: usize,
}

impl Ticket {
    /// The request was answered (well or with an error the cloud computed):
    /// its time feeds the service-time estimate. A request withdrawn or
    /// refused later is not a service time and is just dropped.
    pub fn answered(self) {
        let sojourn = self.admitted.elapsed().as_nanos() as f64;
        self.admission.record(sojourn / (self.ahead as f64 + 1.0));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn before_the_first_answer_nothing_is_refused_and_after_it_the_floor_always_admitted() {
        let a = Admission::new(ms(20), 2);
        let before: Vec<Ticket> = (0..100).map(|_| a.admit(None).unwrap()).collect();
        assert_eq!(a.in_flight(), 100);
        drop(before);
        // A service time of a second: past the floor, nothing fits 20 ms.
        a.record(1e9);
        let (t1, t2) = (a.admit(None).unwrap(), a.admit(None).unwrap());
        let e = a.admit(None).unwrap_err();
        assert!(matches!(e, CloudError::OverBudget(Refusal { in_flight: 2, .. })), "{e:?}");
        assert_eq!(a.in_flight(), 2, "a refusal leaves the count as it was");
        drop((t1, t2));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn the_expected_wait_is_held_to_the_smaller_of_target_and_deadline() {
        let a = Admission::new(ms(20), 1);
        // One answered request that found 3 ahead and took 40 ms: 10 ms each.
        a.record(10e6);
        assert_eq!(a.per_request(), Some(ms(10)));
        let first = a.admit(None).unwrap(); // the floor
                                            // One ahead: 2 x 10 ms = 20 ms fits the 20 ms target ...
        let second = a.admit(None).unwrap();
        // ... but not a deadline of 15 ms.
        let e = a.admit(Some(ms(15))).unwrap_err();
        let CloudError::OverBudget(r) = e else { panic!("{e:?}") };
        assert_eq!((r.expected, r.budget, r.retry_after), (ms(30), ms(15), ms(15)));
        // Two ahead: 30 ms is over the target.
        let e = a.admit(Some(ms(1000))).unwrap_err();
        let CloudError::OverBudget(r) = e else { panic!("{e:?}") };
        assert_eq!((r.budget, r.retry_after, r.in_flight), (ms(20), ms(10), 2));
        assert!(a.check(None).is_err());
        drop(second);
        assert!(a.check(None).is_ok());
        drop(first);
    }

    #[test]
    fn answers_move_the_estimate_towards_what_they_saw() {
        let a = Admission::new(ms(20), 1);
        a.record(1e6);
        for _ in 0..2000 {
            a.record(100e3);
        }
        let c = a.per_request().unwrap();
        assert!(c > Duration::from_micros(99) && c < Duration::from_micros(101), "{c:?}");
        // A ticket's own sample: its sojourn over the requests it found.
        let t = a.admit(None).unwrap();
        assert_eq!(t.ahead, 0);
        t.answered();
        assert_eq!(a.in_flight(), 0);
    }
}
