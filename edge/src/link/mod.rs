//! The edge's one link layer to its clouds, shared by classification
//! offloads ([`crate::offload`]) and decoder sessions
//! ([`crate::generate`]):
//!
//! - [`Endpoints`]: the cloud endpoints in the order given, each with its
//!   transport ([`crate::transport`]: gRPC, the gRPC stream or QUIC), its
//!   circuit breaker and the verdicts of its handshakes;
//! - [`handshake`]: what an endpoint must hold for this edge (model,
//!   splits, fingerprints, encodings), checked for classifiers and decoders
//!   by the same rules;
//! - [`session`]: one decoder session on one endpoint;
//! - [`LinkError`]: why the cloud did not answer, with the one code ↔
//!   reason table ([`Reason`]) and whether trying again can help
//!   ([`LinkError::heals`]). A refusal that cannot heal (another model, a
//!   fingerprint mismatch, a split the cloud does not hold, bad
//!   credentials) is remembered per endpoint and never retried.

pub mod handshake;
pub mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

use crate::breaker::{Admit, Breaker, BreakerConfig, BreakerState};
use crate::transport::Transport;
pub use handshake::HandshakeError;
pub use offramp_transport::status::Reason;

/// Why a cloud did not answer the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("no cloud endpoint configured")]
    NoCloud,
    /// The deadline passed before an answer.
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// The session or connection ended under a request.
    #[error("{endpoint}: {reason}")]
    Closed { endpoint: String, reason: String },
    /// The cloud answered with an error status.
    #[error("{endpoint} refused: {message} ({code:?})")]
    Refused { endpoint: String, code: Code, message: String },
    /// The endpoint could not be reached (connect, handshake, transport).
    #[error("{endpoint} unreachable: {message}")]
    Unreachable { endpoint: String, message: String },
    /// The endpoint holds something this edge cannot use (never heals).
    #[error(transparent)]
    Incompatible(#[from] HandshakeError),
}

impl LinkError {
    /// The error for a failed call to `endpoint` answered with `status`.
    pub fn from_status(endpoint: &str, status: &Status) -> Self {
        let endpoint = endpoint.to_string();
        let message = status.message().to_string();
        match status.code() {
            Code::DeadlineExceeded => LinkError::Timeout { endpoint, after: Duration::ZERO },
            Code::Unavailable | Code::Unknown => LinkError::Unreachable { endpoint, message },
            Code::Cancelled | Code::Aborted => LinkError::Closed { endpoint, reason: message },
            code => LinkError::Refused { endpoint, code, message },
        }
    }

    /// The reason an edge reports for this error (the one code ↔ reason table).
    pub fn reason(&self) -> Reason {
        match self {
            LinkError::NoCloud => Reason::NoCloud,
            LinkError::Timeout { .. } => Reason::Timeout,
            LinkError::Closed { .. } | LinkError::Unreachable { .. } => Reason::Unavailable,
            LinkError::Refused { code, .. } => Reason::for_code(*code),
            LinkError::Incompatible(_) => Reason::Rejected,
        }
    }

    /// Whether trying the same endpoint again later can succeed: not for an
    /// endpoint that holds another model or refuses the edge's credentials,
    /// nor for a request the cloud refused as wrong.
    pub fn heals(&self) -> bool {
        match self {
            LinkError::Incompatible(_) | LinkError::NoCloud => false,
            LinkError::Refused { code, .. } => Reason::for_code(*code).is_retryable(),
            _ => true,
        }
    }
}

/// One cloud endpoint: its transport, breaker and handshake verdicts.
pub struct Endpoint {
    pub url: String,
    pub transport: Transport,
    breaker: Mutex<Breaker>,
    /// The classifier handshake's verdict, once it succeeded or failed for good.
    pub(crate) verified: OnceLock<Result<(), HandshakeError>>,
    /// The decoder handshake's verdict, once it failed for good.
    refused: OnceLock<HandshakeError>,
}

impl Endpoint {
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().expect("breaker lock").state()
    }

    /// The handshake refused this endpoint for good (not retried).
    pub fn refusal(&self) -> Option<&HandshakeError> {
        self.refused.get().or_else(|| self.verified.get().and_then(|v| v.as_ref().err()))
    }

    /// Remembers a refusal that cannot heal (the first one stays); whether
    /// this was the first, for the caller to say it once.
    pub fn refuse(&self, e: HandshakeError) -> bool {
        self.refused.set(e).is_ok()
    }
}

/// Counters for reports.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub retries: AtomicU64,
    pub breaker_transitions: AtomicU64,
}

impl std::ops::Index<usize> for Endpoints {
    type Output = Endpoint;
    fn index(&self, i: usize) -> &Endpoint {
        &self.endpoints[i]
    }
}

/// The cloud endpoints of an edge, in the order given (failover order).
pub struct Endpoints {
    endpoints: Vec<Endpoint>,
    pub stats: LinkStats,
}

impl Endpoints {
    pub fn new(endpoints: Vec<(String, Transport)>, breaker: BreakerConfig) -> Self {
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|(url, transport)| Endpoint {
                    url,
                    transport,
                    breaker: Mutex::new(Breaker::new(breaker)),
                    verified: OnceLock::new(),
                    refused: OnceLock::new(),
                })
                .collect(),
            stats: LinkStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn get(&self, i: usize) -> &Endpoint {
        &self.endpoints[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.iter()
    }

    /// Whether every endpoint refused this edge for good (and there is one).
    pub fn all_refused(&self) -> Option<&HandshakeError> {
        let mut last = None;
        for ep in &self.endpoints {
            last = Some(ep.refusal()?);
        }
        last
    }

    /// Whether `ep`'s breaker lets a request through now.
    pub fn admit(&self, ep: &Endpoint) -> Admit {
        self.with_breaker(ep, |b| b.admit(Instant::now()))
    }

    /// Records an outcome on `ep`'s breaker: success, or a failure at `now`.
    pub fn record(&self, ep: &Endpoint, failed_at: Option<Instant>) {
        self.with_breaker(ep, |b| match failed_at {
            None => b.success(),
            Some(now) => b.failure(now),
        })
    }

    fn with_breaker<T>(&self, ep: &Endpoint, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut b = ep.breaker.lock().expect("breaker lock");
        let before = b.transitions.len();
        let out = f(&mut b);
        let changed = b.transitions.len() - before;
        if changed > 0 {
            self.stats.breaker_transitions.fetch_add(changed as u64, Ordering::Relaxed);
            crate::metrics::breaker_state(&ep.url, b.state());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_through_the_one_table() {
        let e = LinkError::from_status("u", &Status::failed_precondition("fingerprint mismatch"));
        assert_eq!(e.reason(), Reason::Rejected);
        assert!(!e.heals(), "a fingerprint mismatch does not heal");
        let e = LinkError::from_status("u", &Status::resource_exhausted("full"));
        assert_eq!(e.reason(), Reason::Overloaded);
        assert!(e.heals());
        let e = LinkError::from_status("u", &Status::unavailable("down"));
        assert_eq!((e.reason(), e.heals()), (Reason::Unavailable, true));
        let e = LinkError::from_status("u", &Status::deadline_exceeded("late"));
        assert_eq!(e.reason(), Reason::Timeout);
        let e = LinkError::from(HandshakeError::Incompatible("other model".into()));
        assert_eq!((e.reason(), e.heals()), (Reason::Rejected, false));
        assert_eq!(e.to_string(), "other model");
    }

    #[test]
    fn refusals_are_remembered_per_endpoint() {
        let c = crate::transport::ConnectConfig::default();
        let creds = crate::transport::Credentials::default();
        let t = |u: &str| (u.to_string(), Transport::grpc(u, &c, &creds).unwrap());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let eps = Endpoints::new(vec![t("http://127.0.0.1:1"), t("http://127.0.0.1:2")], BreakerConfig::default());
        assert!(eps.all_refused().is_none());
        eps.get(0).refuse(HandshakeError::Incompatible("a".into()));
        assert!(eps.all_refused().is_none(), "one endpoint is still usable");
        assert!(eps.get(1).refuse(HandshakeError::Incompatible("b".into())), "the first refusal");
        assert!(!eps.get(1).refuse(HandshakeError::Incompatible("c".into())), "already refused");
        assert_eq!(eps.all_refused(), Some(&HandshakeError::Incompatible("b".into())), "the first verdict stays");
    }
}
