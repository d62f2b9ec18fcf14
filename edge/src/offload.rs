//! Offloading to the cloud: endpoints with a handshake, a breaker each, and
//! failover between them within a request's deadline.
//!
//! Errors that mean "your request is bad" (`InvalidArgument`,
//! `FailedPrecondition`, `NotFound`, `Unauthenticated`, ...) are never retried
//! elsewhere; errors that mean "I am unavailable / overloaded" move on to the
//! next endpoint.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use offramp_proto as pb;
use tokio::sync::OnceCell;
use tonic::Code;

use crate::breaker::{Admit, Breaker, BreakerConfig, BreakerState};
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

/// What an endpoint must hold for this edge.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub model_id: String,
    /// Every split this edge may offload at (one, or with
    /// `--adaptive-split` every candidate), with its fingerprints.
    pub splits: Vec<SplitExpectation>,
    /// The hidden-state encodings this edge may send, each with the
    /// lossless compression on top (`None`: none); the cloud must list them.
    pub encodings: Vec<(pb::Encoding, pb::Compression)>,
}

/// The fingerprints of one split point.
#[derive(Debug, Clone)]
pub struct SplitExpectation {
    pub split: usize,
    /// Cloud-side fingerprint this edge expects at `split`.
    pub cloud_fingerprint: String,
    /// This edge's own fingerprint of blocks `[0, split)`.
    pub edge_fingerprint: String,
}

pub struct Endpoint {
    pub url: String,
    transport: Transport,
    breaker: Mutex<Breaker>,
    /// Handshake result, once it succeeded or failed for good.
    verified: OnceCell<Result<(), HandshakeError>>,
}

impl Endpoint {
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.lock().expect("breaker lock").state()
    }
}

/// Counters for reports.
#[derive(Debug, Default)]
pub struct OffloadStats {
    pub retries: AtomicU64,
    pub breaker_transitions: AtomicU64,
}

pub struct Offloader {
    endpoints: Vec<Endpoint>,
    expect: Expectation,
    next: AtomicUsize,
    pub stats: OffloadStats,
}

/// Why an edge cannot use a cloud endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The cloud holds another model, split, protocol or encodings; the
    /// message says which and what to do.
    #[error("{0}")]
    Incompatible(String),
    #[error("cloud {url} refused this edge's credentials: {message}")]
    Credentials { url: String, message: String },
}

/// Checks a handshake answer against what this edge holds.
pub fn check_handshake(url: &str, info: &pb::ModelInfo, expect: &Expectation) -> Result<(), HandshakeError> {
    check(url, info, expect).map_err(HandshakeError::Incompatible)
}

fn check(url: &str, info: &pb::ModelInfo, expect: &Expectation) -> Result<(), String> {
    if info.protocol_version != pb::PROTOCOL_VERSION {
        return Err(format!(
            "cloud {url} speaks protocol version {}, this edge speaks {}",
            info.protocol_version,
            pb::PROTOCOL_VERSION
        ));
    }
    let short = |s: &str| if s.is_empty() { "<none>".to_string() } else { s.chars().take(12).collect() };
    for want in &expect.splits {
        let Some(split) = info.splits.iter().find(|s| s.split as usize == want.split) else {
            let held: Vec<u32> = info.splits.iter().map(|s| s.split).collect();
            return Err(format!(
                "cloud {url} holds model {:?} and serves splits {held:?}, not split {} that this edge uses",
                info.model_id, want.split
            ));
        };
        if info.model_id != expect.model_id || split.cloud_fingerprint != want.cloud_fingerprint {
            return Err(format!(
                "cloud {url} holds model {:?} with cloud-side fingerprint {} at split {}, but this edge holds model \
                 {:?} expecting cloud-side fingerprint {} (edge side {}): edge and cloud were built from different \
                 weights",
                info.model_id,
                short(&split.cloud_fingerprint),
                want.split,
                expect.model_id,
                short(&want.cloud_fingerprint),
                short(&want.edge_fingerprint),
            ));
        }
        if !split.edge_fingerprint.is_empty() && split.edge_fingerprint != want.edge_fingerprint {
            return Err(format!(
                "cloud {url} expects edge-side fingerprint {} at split {}, this edge holds {}: the edge's weights differ",
                short(&split.edge_fingerprint),
                want.split,
                short(&want.edge_fingerprint)
            ));
        }
    }
    for &(encoding, compression) in &expect.encodings {
        check_encoding(url, info, encoding, compression)?;
    }
    Ok(())
}

fn check_encoding(
    url: &str,
    info: &pb::ModelInfo,
    encoding: pb::Encoding,
    compression: pb::Compression,
) -> Result<(), String> {
    if !info.encodings.contains(&(encoding as i32)) {
        let names: Vec<&str> = info
            .encodings
            .iter()
            .map(|&e| pb::Encoding::try_from(e).map_or("unknown", offramp_common::codec::encoding_name))
            .collect();
        return Err(format!(
            "cloud {url} accepts hidden-state encodings {names:?}, this edge sends {}: pick one of them with --encoding",
            offramp_common::codec::encoding_name(encoding)
        ));
    }
    if compression != pb::Compression::None && !info.compressions.contains(&(compression as i32)) {
        return Err(format!(
            "cloud {url} does not accept {}-compressed hidden states (it lists {:?}): use --compression none",
            offramp_common::codec::compression_name(compression),
            info.compressions
        ));
    }
    Ok(())
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
        Self {
            endpoints: endpoints
                .into_iter()
                .map(|(url, transport)| Endpoint {
                    url,
                    transport,
                    breaker: Mutex::new(Breaker::new(breaker)),
                    verified: OnceCell::new(),
                })
                .collect(),
            expect,
            next: AtomicUsize::new(0),
            stats: OffloadStats::default(),
        }
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Handshakes with every endpoint now. A reachable endpoint holding the
    /// wrong model is an error; an unreachable one is checked on first use.
    pub async fn handshake_all(&self, timeout: Duration) -> Result<usize, HandshakeError> {
        let mut ok = 0;
        for ep in &self.endpoints {
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
        let mut b = ep.breaker.lock().expect("breaker lock");
        let before = b.transitions.len();
        match outcome {
            None => b.success(),
            Some(now) => b.failure(now),
        }
        self.stats.breaker_transitions.fetch_add((b.transitions.len() - before) as u64, Ordering::Relaxed);
        if b.transitions.len() > before {
            crate::metrics::breaker_state(&ep.url, b.state());
        }
    }

    fn admit(&self, ep: &Endpoint) -> Admit {
        let mut b = ep.breaker.lock().expect("breaker lock");
        let before = b.transitions.len();
        let a = b.admit(Instant::now());
        self.stats.breaker_transitions.fetch_add((b.transitions.len() - before) as u64, Ordering::Relaxed);
        if b.transitions.len() > before {
            crate::metrics::breaker_state(&ep.url, b.state());
        }
        a
    }

    /// Times a handshake call to the first usable endpoint (verified, breaker
    /// not open): the planner's round-trip probe. The elapsed time and the
    /// size of the answer, `None` when no endpoint answered in `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Option<(Duration, usize)> {
        for ep in &self.endpoints {
            if !matches!(ep.verified.get(), Some(Ok(()))) || ep.breaker_state() == BreakerState::Open {
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
            let (index, ep) = ((start + i) % n, &self.endpoints[(start + i) % n]);
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
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
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
