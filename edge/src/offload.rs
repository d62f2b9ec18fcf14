//! Offloading to the cloud: endpoints with a handshake, a breaker each, and
//! failover between them within a request's deadline.
//!
//! Errors that mean "your request is bad" (`InvalidArgument`,
//! `FailedPrecondition`, `NotFound`, `Unauthenticated`, ...) are never retried
//! elsewhere; errors that mean "I am unavailable / overloaded" move on to the
//! next endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use offramp_proto as pb;
use tonic::Code;

use crate::breaker::{Admit, BreakerConfig};
pub use crate::link::handshake::{check_handshake, Expectation, HandshakeError, SplitExpectation};
use crate::link::{Endpoint, Endpoints};
use crate::transport::Transport;

pub use offramp_transport::status::Reason;

/// A failed offload: the reason and the last status seen.
#[derive(Debug, Clone)]
pub struct OffloadError {
    pub reason: Reason,
    pub message: String,
    pub retries: u32,
}

/// A successful offload.
#[derive(Debug, Clone)]
pub struct Offloaded {
    pub response: pb::InferResponse,
    pub endpoint: usize,
    pub retries: u32,
    pub bytes_down: u64,
}

/// Counters for reports (the link layer's).
pub type OffloadStats = crate::link::LinkStats;

pub struct Offloader {
    endpoints: Endpoints,
    expect: Expectation,
    next: AtomicUsize,
}

/// The reason for a failed call, `None` when another endpoint will not do
/// better (the request itself was refused).
fn retryable(code: Code) -> Option<Reason> {
    Some(Reason::for_code(code)).filter(|r| r.is_retryable())
}

/// Whether `deadline` has passed (within a millisecond of timer slack).
fn past(deadline: Instant) -> bool {
    Instant::now() + Duration::from_millis(1) >= deadline
}

impl Offloader {
    pub fn new(endpoints: Vec<(String, Transport)>, expect: Expectation, breaker: BreakerConfig) -> Self {
        Self { endpoints: Endpoints::new(endpoints, breaker), expect, next: AtomicUsize::new(0) }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    pub fn stats(&self) -> &OffloadStats {
        &self.endpoints.stats
    }

    /// Handshakes with every endpoint now. A reachable endpoint holding the
    /// wrong model is an error; an unreachable one is checked on first use.
    pub async fn handshake_all(&self, timeout: Duration) -> Result<usize, HandshakeError> {
        let mut ok = 0;
        for ep in self.endpoints.iter() {
            match ep.transport.model_info(timeout).await {
                Ok(info) => {
                    let verdict = check_handshake(&ep.url, &info, &self.expect);
                    let _ = ep.verified.set(verdict.clone());
                    verdict?;
                    ok += 1;
                }
                Err(status) if matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                    return Err(HandshakeError::Credentials {
                        url: ep.url.clone(),
                        message: status.message().to_string(),
                    });
                }
                Err(status) => {
                    tracing::warn!(endpoint = %ep.url, %status, "cloud unreachable at start; will fall back until it answers");
                }
            }
        }
        Ok(ok)
    }

    async fn verify(&self, ep: &Endpoint, timeout: Duration) -> Result<(), OffloadError> {
        if let Some(v) = ep.verified.get() {
            return v.clone().map_err(|e| OffloadError {
                reason: Reason::Rejected,
                message: e.to_string(),
                retries: 0,
            });
        }
        match ep.transport.model_info(timeout).await {
            Ok(info) => {
                let verdict = check_handshake(&ep.url, &info, &self.expect);
                if let Err(e) = &verdict {
                    tracing::error!(endpoint = %ep.url, error = %e, "cloud holds another model; not using it");
                }
                let _ = ep.verified.set(verdict.clone());
                verdict.map_err(|e| OffloadError { reason: Reason::Rejected, message: e.to_string(), retries: 0 })
            }
            Err(status) => Err(OffloadError {
                reason: retryable(status.code()).unwrap_or(Reason::Unavailable),
                message: format!("handshake with {}: {}", ep.url, status.message()),
                retries: 0,
            }),
        }
    }

    fn record(&self, ep: &Endpoint, outcome: Option<Instant>) {
        self.endpoints.record(ep, outcome)
    }

    fn admit(&self, ep: &Endpoint) -> Admit {
        self.endpoints.admit(ep)
    }

    /// Times a handshake call to the first usable endpoint (verified, breaker
    /// not open): the planner's round-trip probe. The elapsed time and the
    /// size of the answer, `None` when no endpoint answered in `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Option<(Duration, usize)> {
        for ep in self.endpoints.iter() {
            if !matches!(ep.verified.get(), Some(Ok(()))) || ep.breaker_state() == crate::breaker::BreakerState::Open {
                continue;
            }
            let t = Instant::now();
            if let Ok(info) = ep.transport.model_info(timeout).await {
                return Some((t.elapsed(), prost::Message::encoded_len(&info)));
            }
        }
        None
    }

    /// Sends `req` to the first endpoint that answers before `deadline`,
    /// starting round-robin and skipping endpoints whose breaker is open.
    pub async fn offload(&self, req: pb::InferRequest, deadline: Instant) -> Result<Offloaded, OffloadError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(OffloadError {
                reason: Reason::NoCloud,
                message: "no cloud endpoint configured".into(),
                retries: 0,
            });
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut last: Option<OffloadError> = None;
        let mut attempts = 0u32;
        for i in 0..n {
            let (index, ep) = ((start + i) % n, self.endpoints.get((start + i) % n));
            if matches!(ep.verified.get(), Some(Err(_))) {
                continue;
            }
            if self.admit(ep) == Admit::No {
                last.get_or_insert(OffloadError {
                    reason: Reason::CircuitOpen,
                    message: format!("circuit open for {}", ep.url),
                    retries: 0,
                });
                continue;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
                last = Some(OffloadError { reason: Reason::Timeout, message: "deadline passed".into(), retries: 0 });
                break;
            };
            if attempts > 0 {
                self.endpoints.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            attempts += 1;
            if let Err(mut e) = self.verify(ep, left).await {
                if e.reason != Reason::Rejected && past(deadline) {
                    e.reason = Reason::Timeout;
                }
                if e.reason != Reason::Rejected {
                    self.record(ep, Some(Instant::now()));
                }
                last = Some(e);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_micros(1));
            match ep.transport.infer(req.clone(), left).await {
                Ok(response) => {
                    self.record(ep, None);
                    let bytes_down = prost::Message::encoded_len(&response) as u64;
                    return Ok(Offloaded { response, endpoint: index, retries: attempts - 1, bytes_down });
                }
                Err(status) => {
                    // tonic reports its own request timeout as `Cancelled`: what
                    // matters is that the deadline passed.
                    let reason = if past(deadline) { Some(Reason::Timeout) } else { retryable(status.code()) };
                    match reason {
                        // The server answered: it is alive. Don't count it against the breaker.
                        None | Some(Reason::Overloaded) => self.record(ep, None),
                        Some(_) => self.record(ep, Some(Instant::now())),
                    }
                    let e = OffloadError {
                        reason: reason.unwrap_or(Reason::Rejected),
                        message: format!("{}: {:?}: {}", ep.url, status.code(), status.message()),
                        retries: attempts - 1,
                    };
                    tracing::debug!(endpoint = %ep.url, code = ?status.code(), "offload failed");
                    if reason.is_none() {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        let mut e = last.unwrap_or(OffloadError {
            reason: Reason::Unavailable,
            message: "no usable cloud endpoint (all hold another model)".into(),
            retries: 0,
        });
        e.retries = attempts.saturating_sub(1);
        Err(e)
    }
}
