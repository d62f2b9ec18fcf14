//! The `SplitGeneration` service: decoder sessions whose layers `K..N` run
//! here.
//!
//! One gRPC stream (or QUIC stream) is one session ([`session`]): it opens
//! (model, split, fingerprint, length), is admitted against the limits, then
//! its steps are checked on arrival and queued. Its KV cache lives in a
//! [`engine::SessionCell`] only the model's engine thread touches. The
//! engine ([`engine`]) batches decode steps of many sessions into one
//! forward pass (the projections of all sessions as one quantized matmul;
//! [`offramp_common::decoder::model`]), never two steps of one session in a
//! batch, and answers each session in step order. Sessions are bounded: how
//! many, how long each may grow, how long one may sit idle, and the memory
//! their caches may reserve; over a limit the cloud answers
//! `ResourceExhausted` naming it. Every refusal is a [`SessionError`],
//! mapped to a status in one place ([`SessionError::code`]).

mod engine;
mod session;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use offramp_common::decoder::{DecoderBundle, DecoderModel};
use offramp_proto as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::auth::Caller;
pub use crate::error::{DraftError, SessionError};
use engine::Job;

/// Session bounds, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_sessions: usize,
    /// Positions (prompt + generated) one session may reach.
    pub max_tokens: usize,
    /// A session with no message for this long is closed.
    pub idle_ttl: Duration,
    /// Bytes all sessions' KV caches may reserve together.
    pub kv_budget: usize,
    /// Most decode steps (sessions) in one forward pass.
    pub max_batch: usize,
}

pub mod defaults {
    use std::time::Duration;
    pub const MAX_SESSIONS: usize = 64;
    pub const MAX_SESSION_TOKENS: usize = 2048;
    pub const SESSION_TTL: Duration = Duration::from_secs(60);
    pub const KV_BUDGET: &str = "2GiB";
    pub const MAX_DECODE_BATCH: usize = 16;
}

/// Decode steps the engine queue holds per session it admits (a pipelined
/// speculative edge keeps up to `--pipeline` verifications in flight, plus
/// replay chunks).
const STEPS_QUEUED_PER_SESSION: usize = 16;

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_sessions: defaults::MAX_SESSIONS,
            max_tokens: defaults::MAX_SESSION_TOKENS,
            idle_ttl: defaults::SESSION_TTL,
            kv_budget: offramp_common::units::parse_bytes(defaults::KV_BUDGET).expect("default parses"),
            max_batch: defaults::MAX_DECODE_BATCH,
        }
    }
}

impl SessionLimits {
    fn to_pb(self) -> pb::SessionLimits {
        pb::SessionLimits {
            max_sessions: self.max_sessions as u32,
            max_tokens_per_session: self.max_tokens as u32,
            idle_ttl_ms: self.idle_ttl.as_millis() as u64,
            kv_budget_bytes: self.kv_budget as u64,
        }
    }
}

/// A decoder the cloud holds (its layers `K..N` for some K, and the head).
pub struct DecoderSlot {
    pub id: String,
    pub bundle: DecoderBundle,
    pub model: Arc<DecoderModel>,
    /// Cloud fingerprint per servable split.
    pub fingerprints: BTreeMap<usize, String>,
}

impl DecoderSlot {
    pub fn load(bundle: DecoderBundle) -> Result<Self, offramp_common::decoder::DecoderError> {
        let model = Arc::new(bundle.model()?);
        let fingerprints = bundle.cloud_splits().map(|k| (k, bundle.cloud_fingerprint(k))).collect();
        Ok(Self { id: bundle.model_id().to_string(), bundle, model, fingerprints })
    }

    /// Whether a session at split `k` whose edge expects `fingerprint` can
    /// run here: the split is one this slot serves, with that fingerprint.
    fn check_split(&self, k: usize, fingerprint: &str) -> Result<(), SessionError> {
        let layers = self.bundle.config().layers;
        let held = self.bundle.holds();
        let expected = self.fingerprints.get(&k).ok_or_else(|| SessionError::SplitNotHeld {
            model: self.id.clone(),
            split: k,
            start: held.start,
            end: held.end,
            layers,
        })?;
        if fingerprint != expected {
            return Err(SessionError::FingerprintMismatch {
                model: self.id.clone(),
                split: k,
                expected: offramp_common::codec::echo::quoted(fingerprint),
                held: expected.get(..12).unwrap_or(expected).to_string(),
            });
        }
        Ok(())
    }
}

/// Sessions open and KV cache bytes reserved, against their limits.
#[derive(Debug, Default)]
struct Admission {
    max_sessions: usize,
    kv_budget: usize,
    live: AtomicUsize,
    reserved: AtomicUsize,
}

impl Admission {
    fn new(limits: &SessionLimits) -> Self {
        Self { max_sessions: limits.max_sessions, kv_budget: limits.kv_budget, ..Default::default() }
    }

    /// Admits a session whose cache needs `need` bytes, or names the limit
    /// it would pass.
    fn admit(&self, need: usize) -> Result<Admitted<'_>, SessionError> {
        let live = self.live.fetch_add(1, Ordering::AcqRel);
        if live >= self.max_sessions {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(SessionError::TooManySessions(self.max_sessions));
        }
        let before = self.reserved.fetch_add(need, Ordering::AcqRel);
        if before + need > self.kv_budget {
            self.reserved.fetch_sub(need, Ordering::AcqRel);
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(SessionError::KvBudget { need, reserved: before, budget: self.kv_budget });
        }
        self.gauges();
        Ok(Admitted { admission: self, bytes: need })
    }

    fn gauges(&self) {
        metrics::gauge!("offramp_cloud_sessions").set(self.live.load(Ordering::Relaxed) as f64);
        metrics::gauge!("offramp_cloud_kv_cache_bytes").set(self.reserved.load(Ordering::Relaxed) as f64);
    }
}

/// A session's admission; released on drop.
struct Admitted<'a> {
    admission: &'a Admission,
    bytes: usize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.admission.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
        self.admission.live.fetch_sub(1, Ordering::AcqRel);
        self.admission.gauges();
    }
}

/// All decoder sessions of a cloud.
#[derive(Default)]
pub struct Generation {
    slots: BTreeMap<String, Arc<DecoderSlot>>,
    engines: BTreeMap<String, mpsc::Sender<Job>>,
    limits: SessionLimits,
    max_payload: usize,
    encodings: Vec<pb::Encoding>,
    admission: Admission,
    next_id: AtomicU64,
}

impl Generation {
    /// Starts one engine thread per decoder.
    pub fn start(
        slots: Vec<DecoderSlot>,
        limits: SessionLimits,
        max_payload: usize,
        encodings: Vec<pb::Encoding>,
    ) -> std::io::Result<Self> {
        let mut map = BTreeMap::new();
        let mut engines = BTreeMap::new();
        for slot in slots {
            let slot = Arc::new(slot);
            // Bounded: a session whose steps find the queue full waits
            // (its stream stops being read, and HTTP/2 flow control holds
            // the edge back) instead of memory growing with the backlog.
            let (tx, rx) = mpsc::channel(STEPS_QUEUED_PER_SESSION * limits.max_sessions.max(1));
            let model = slot.model.clone();
            std::thread::Builder::new()
                .name(format!("decode-{}", slot.id))
                .spawn(move || engine::engine(model, rx, limits.max_batch))?;
            engines.insert(slot.id.clone(), tx);
            map.insert(slot.id.clone(), slot);
        }
        Ok(Self {
            slots: map,
            engines,
            limits,
            max_payload,
            encodings,
            admission: Admission::new(&limits),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.slots.keys()
    }

    /// Sessions open now.
    pub fn live_sessions(&self) -> usize {
        self.admission.live.load(Ordering::Relaxed)
    }

    /// KV cache bytes reserved by open sessions.
    pub fn reserved_bytes(&self) -> usize {
        self.admission.reserved.load(Ordering::Relaxed)
    }

    pub fn info(&self) -> pb::DecoderInfo {
        pb::DecoderInfo {
            protocol_version: pb::PROTOCOL_VERSION,
            models: self.slots.values().map(|s| model_info(s)).collect(),
            encodings: self.encodings.iter().map(|&e| e as i32).collect(),
            max_payload_bytes: self.max_payload as u64,
            limits: Some(self.limits.to_pb()),
            features: [
                pb::FEATURE_TRUNCATED_SAMPLING,
                pb::FEATURE_TOKEN_MASKS,
                pb::FEATURE_LOGIT_BIAS,
                pb::FEATURE_LOGPROBS,
            ]
            .map(String::from)
            .to_vec(),
        }
    }

    /// Serves one `Generate` stream to its end; the outcome goes to `tx` (a
    /// final `Err` status when the session ended for a reason other than
    /// the edge closing it).
    pub async fn serve<S>(
        self: Arc<Self>,
        caller: Caller,
        inbound: S,
        tx: mpsc::Sender<Result<pb::GenerateResponse, Status>>,
    ) where
        S: Stream<Item = Result<pb::GenerateRequest, Status>> + Unpin + Send,
    {
        if let Err(e) = self.session(&caller, inbound, &tx).await {
            let status = Status::from(e);
            tracing::debug!(edge = caller.label(), code = ?status.code(), message = status.message(), "generation session ended");
            let _ = tx.send(Err(status)).await;
        }
    }

    /// The decoder a session names; an empty id names the only one.
    fn slot(&self, id: &str) -> Result<&Arc<DecoderSlot>, SessionError> {
        if id.is_empty() && self.slots.len() == 1 {
            return Ok(self.slots.values().next().expect("one"));
        }
        self.slots.get(id).ok_or_else(|| SessionError::UnknownModel {
            model: offramp_common::codec::echo::quoted(id),
            serves: self.slots.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

fn model_info(s: &DecoderSlot) -> pb::DecoderModelInfo {
    let c = s.bundle.config();
    pb::DecoderModelInfo {
        model_id: s.id.clone(),
        num_layers: c.layers as u32,
        hidden: c.hidden as u32,
        vocab: c.vocab as u32,
        context: c.context as u32,
        splits: s
            .fingerprints
            .iter()
            .map(|(&k, fp)| pb::SplitFingerprint {
                split: k as u32,
                cloud_fingerprint: fp.clone(),
                edge_fingerprint: String::new(),
                input_shape: vec![c.context as u32, c.hidden as u32],
                sequence: true,
            })
            .collect(),
    }
}

/// A step's refusal or failure as the answer to that step.
fn error_response(request_id: u64, e: &SessionError) -> pb::GenerateResponse {
    pb::GenerateResponse {
        request_id,
        result: Some(pb::generate_response::Result::Error(pb::Error {
            code: e.code() as i32,
            message: e.to_string(),
            retry_pushback_ms: 0,
        })),
    }
}
