//! The `SplitGeneration` service: decoder sessions whose layers `K..N` run
//! here.
//!
//! One gRPC stream is one session. Its KV cache lives in a [`SessionCell`]
//! only the model's engine thread touches. The engine batches decode steps of
//! many sessions into one forward pass (the projections of all sessions as
//! one quantized matmul; [`offramp_common::decoder::model`]), never two steps
//! of one session in a batch, and answers each session in step order.
//! Sessions are bounded: how many, how long each may grow, how long one may
//! sit idle, and the memory their caches may reserve; over a limit the cloud
//! answers `ResourceExhausted` naming it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use offramp_common::codec::{self, echo};
use offramp_common::decoder::model::{rows, top1};
use offramp_common::decoder::sample::Sampling;
use offramp_common::decoder::speculative::{self, DraftToCheck, SparseDist};
use offramp_common::decoder::{DecoderBundle, DecoderModel, KvCache, SessionStep};
use offramp_proto as pb;
use pb::generate_request::Msg;
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::auth::Caller;

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
}

/// One session's state on the engine side.
struct SessionCell {
    id: u64,
    split: usize,
    cache: Mutex<KvCache>,
    /// A verify step's drafts were rejected: speculative steps sent after
    /// it are discarded until one that is not speculative arrives.
    discarding: AtomicBool,
}

struct Job {
    session: Arc<SessionCell>,
    request_id: u64,
    x: Vec<f32>,
    t: usize,
    pos: usize,
    want: pb::Want,
    temperature: f32,
    uniform: f32,
    /// WANT_VERIFY: one draft per position.
    drafts: Vec<DraftToCheck>,
    speculative: bool,
    enqueued: Instant,
    out: mpsc::UnboundedSender<Outcome>,
}

enum Outcome {
    Token(u64, pb::StepResult),
    /// The step was refused before it touched the cache; the session goes on.
    Refused(u64, Status),
    /// The step could not be applied; the session ends.
    Failed(u64, Status),
}

/// All decoder sessions of a cloud.
#[derive(Default)]
pub struct Generation {
    slots: BTreeMap<String, Arc<DecoderSlot>>,
    engines: BTreeMap<String, mpsc::UnboundedSender<Job>>,
    limits: SessionLimits,
    max_payload: usize,
    encodings: Vec<pb::Encoding>,
    live: AtomicUsize,
    reserved: AtomicUsize,
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
            let (tx, rx) = mpsc::unbounded_channel();
            let model = slot.model.clone();
            std::thread::Builder::new()
                .name(format!("decode-{}", slot.id))
                .spawn(move || engine(model, rx, limits.max_batch))?;
            engines.insert(slot.id.clone(), tx);
            map.insert(slot.id.clone(), slot);
        }
        Ok(Self {
            slots: map,
            engines,
            limits,
            max_payload,
            encodings,
            live: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
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
        self.live.load(Ordering::Relaxed)
    }

    /// KV cache bytes reserved by open sessions.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    pub fn info(&self) -> pb::DecoderInfo {
        pb::DecoderInfo {
            protocol_version: pb::PROTOCOL_VERSION,
            models: self
                .slots
                .values()
                .map(|s| {
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
                })
                .collect(),
            encodings: self.encodings.iter().map(|&e| e as i32).collect(),
            max_payload_bytes: self.max_payload as u64,
            limits: Some(self.limits.to_pb()),
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
        if let Err(status) = self.session(&caller, inbound, &tx).await {
            tracing::debug!(edge = caller.label(), code = ?status.code(), message = status.message(), "generation session ended");
            let _ = tx.send(Err(status)).await;
        }
    }

    async fn session<S>(
        &self,
        caller: &Caller,
        mut inbound: S,
        tx: &mpsc::Sender<Result<pb::GenerateResponse, Status>>,
    ) -> Result<(), Status>
    where
        S: Stream<Item = Result<pb::GenerateRequest, Status>> + Unpin + Send,
    {
        let ttl = self.limits.idle_ttl;
        let open = match tokio::time::timeout(ttl, inbound.next()).await {
            Err(_) => return Err(idle(ttl)),
            Ok(None) => return Ok(()),
            Ok(Some(Err(status))) => return Err(status),
            Ok(Some(Ok(pb::GenerateRequest { msg: Some(Msg::Open(open)) }))) => open,
            Ok(Some(Ok(_))) => {
                return Err(Status::invalid_argument(
                    "the first message of a Generate stream must open a session (`open`)",
                ))
            }
        };
        let slot = self.slot(&open.model_id)?;
        let engine = self.engines.get(&slot.id).expect("one engine per slot").clone();
        let k = open.split as usize;
        let config = slot.bundle.config();
        let held = slot.bundle.holds();
        let expected = slot.fingerprints.get(&k).ok_or_else(|| {
            Status::failed_precondition(format!(
                "this cloud holds layers {}..{} of {}; split {k} needs layers {k}..{}",
                held.start, held.end, slot.id, config.layers
            ))
        })?;
        if &open.model_fingerprint != expected {
            return Err(Status::failed_precondition(format!(
                "fingerprint mismatch for {} at split {k}: the edge expects {}, this cloud holds {}",
                slot.id,
                echo::quoted(&open.model_fingerprint),
                &expected[..12]
            )));
        }
        let max_positions = match open.max_positions as usize {
            0 => self.limits.max_tokens.min(config.context),
            n => n,
        };
        if max_positions > config.context {
            return Err(Status::invalid_argument(format!(
                "the session asks for {max_positions} positions; {} has a context of {}",
                slot.id, config.context
            )));
        }
        if max_positions > self.limits.max_tokens {
            return Err(Status::resource_exhausted(format!(
                "the session asks for {max_positions} positions; the limit is {} tokens per session (--max-session-tokens)",
                self.limits.max_tokens
            )));
        }
        let cache = KvCache::new(config, k..config.layers);
        let need = cache.bytes_at(max_positions);
        let _admitted = self.admit(need)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cell = Arc::new(SessionCell { id, split: k, cache: Mutex::new(cache), discarding: AtomicBool::new(false) });
        tracing::info!(session = id, edge = caller.label(), model = %slot.id, split = k, max_positions, "session opened");
        let opened = pb::GenerateResponse {
            request_id: 0,
            result: Some(pb::generate_response::Result::Opened(pb::SessionOpened {
                session_id: format!("{id}"),
                limits: Some(self.limits.to_pb()),
            })),
        };
        tx.send(Ok(opened)).await.map_err(|_| Status::cancelled("the edge went away"))?;

        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outcome>();
        let forward = {
            let tx = tx.clone();
            async move {
                while let Some(outcome) = out_rx.recv().await {
                    let (request_id, result) = match outcome {
                        Outcome::Token(id, step) => (id, Ok(pb::generate_response::Result::Step(step))),
                        Outcome::Refused(id, status) => {
                            (id, Ok(error_response(id, &status).result.expect("error responses carry a result")))
                        }
                        Outcome::Failed(id, status) => (id, Err(status)),
                    };
                    match result {
                        Ok(r) => {
                            if tx.send(Ok(pb::GenerateResponse { request_id, result: Some(r) })).await.is_err() {
                                return Ok(());
                            }
                        }
                        Err(status) => {
                            let _ = tx.send(Ok(error_response(request_id, &status))).await;
                            return Err(status);
                        }
                    }
                }
                Ok(())
            }
        };
        let read = async {
            loop {
                let msg = match tokio::time::timeout(ttl, inbound.next()).await {
                    Err(_) => return Err(idle(ttl)),
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(status))) => return Err(status),
                    Ok(Some(Ok(m))) => m,
                };
                let step = match msg.msg {
                    Some(Msg::Step(step)) => step,
                    Some(Msg::Open(_)) => {
                        return Err(Status::invalid_argument(
                            "this stream's session is already open; one session per stream",
                        ))
                    }
                    None => return Err(Status::invalid_argument("an empty GenerateRequest (neither open nor step)")),
                };
                match self.validate(&step, max_positions, config.hidden, config.vocab) {
                    Ok((x, t, want, drafts)) => {
                        let job = Job {
                            session: cell.clone(),
                            request_id: step.request_id,
                            x,
                            t,
                            pos: step.position as usize,
                            want,
                            temperature: step.temperature,
                            uniform: step.uniform,
                            drafts,
                            speculative: step.speculative,
                            enqueued: Instant::now(),
                            out: out_tx.clone(),
                        };
                        if engine.send(job).is_err() {
                            return Err(Status::unavailable("the decode engine stopped"));
                        }
                    }
                    Err(status) => {
                        // Refused before it touched the cache: the session goes on.
                        tracing::debug!(
                            session = id,
                            request = step.request_id,
                            error = status.message(),
                            "step refused"
                        );
                        if tx.send(Ok(error_response(step.request_id, &status))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        };
        // Reading ends first (the edge closed, broke, idled, or misbehaved);
        // the answers to steps already queued are still delivered unless
        // reading ended in error.
        let forward = tokio::spawn(forward);
        let read_result = read.await;
        drop(out_tx);
        let forward_result = match &read_result {
            Ok(()) => forward.await.unwrap_or(Ok(())),
            Err(_) => {
                forward.abort();
                Ok(())
            }
        };
        tracing::info!(session = id, "session closed");
        read_result.and(forward_result)
    }

    fn slot(&self, id: &str) -> Result<&Arc<DecoderSlot>, Status> {
        if id.is_empty() && self.slots.len() == 1 {
            return Ok(self.slots.values().next().expect("one"));
        }
        self.slots.get(id).ok_or_else(|| {
            Status::not_found(format!(
                "unknown decoder {} (this cloud serves {})",
                echo::quoted(id),
                self.slots.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Checks a step before it is queued (its position against the cache
    /// is checked by the engine, which knows where verification left it).
    fn validate(
        &self,
        step: &pb::DecodeStep,
        max_positions: usize,
        hidden: usize,
        vocab: usize,
    ) -> Result<(Vec<f32>, usize, pb::Want, Vec<DraftToCheck>), Status> {
        let want = pb::Want::try_from(step.want)
            .map_err(|_| Status::invalid_argument(format!("unknown want {}", step.want)))?;
        if want == pb::Want::Sample && !(step.temperature > 0.0 && step.temperature.is_finite()) {
            return Err(Status::invalid_argument(format!(
                "WANT_SAMPLE needs a positive temperature (got {})",
                step.temperature
            )));
        }
        if !(step.temperature >= 0.0 && step.temperature.is_finite()) {
            return Err(Status::invalid_argument(format!(
                "temperature must be finite and non-negative (got {})",
                step.temperature
            )));
        }
        if !(0.0..=1.0).contains(&step.uniform) {
            return Err(Status::invalid_argument(format!("uniform must be in [0, 1] (got {})", step.uniform)));
        }
        if want != pb::Want::Verify && (!step.drafts.is_empty() || step.speculative) {
            return Err(Status::invalid_argument("drafts and `speculative` belong to WANT_VERIFY steps"));
        }
        let tensor =
            step.hidden.as_ref().ok_or_else(|| Status::invalid_argument("the step has no hidden-state tensor"))?;
        let encoding = pb::Encoding::try_from(tensor.encoding).unwrap_or(pb::Encoding::Unspecified);
        if !self.encodings.contains(&encoding) {
            return Err(Status::invalid_argument(format!(
                "hidden state is encoded as {}; this cloud accepts {:?}",
                codec::encoding_name(encoding),
                self.encodings.iter().map(|&e| codec::encoding_name(e)).collect::<Vec<_>>()
            )));
        }
        let (shape, values) = codec::decode(tensor, self.max_payload)
            .map_err(|e| Status::invalid_argument(format!("hidden state: {e}")))?;
        let t = match shape.as_slice() {
            [t, w] if *w == hidden && *t >= 1 => *t,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "hidden state has shape {}, the session expects [T >= 1, {hidden}]",
                    echo::Shape::of_usize(&shape)
                )))
            }
        };
        let start = step.position as usize;
        if start + t > max_positions {
            return Err(Status::resource_exhausted(format!(
                "positions {start}..{} run past the session's {max_positions} positions (max tokens per session)",
                start + t
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Status::invalid_argument("the hidden state holds a non-finite value"));
        }
        let drafts = if want == pb::Want::Verify { check_drafts(step, t, vocab)? } else { Vec::new() };
        Ok((values, t, want, drafts))
    }

    fn admit(&self, need: usize) -> Result<Admitted<'_>, Status> {
        let live = self.live.fetch_add(1, Ordering::AcqRel);
        if live >= self.limits.max_sessions {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "the cloud holds its maximum of {} sessions (--max-sessions)",
                self.limits.max_sessions
            )));
        }
        let before = self.reserved.fetch_add(need, Ordering::AcqRel);
        if before + need > self.limits.kv_budget {
            self.reserved.fetch_sub(need, Ordering::AcqRel);
            self.live.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "KV cache budget: the session needs {} KiB, {} of {} KiB are reserved (--kv-budget)",
                need / 1024,
                before / 1024,
                self.limits.kv_budget / 1024
            )));
        }
        self.gauges();
        Ok(Admitted { generation: self, bytes: need })
    }

    fn gauges(&self) {
        metrics::gauge!("offramp_cloud_sessions").set(self.live.load(Ordering::Relaxed) as f64);
        metrics::gauge!("offramp_cloud_kv_cache_bytes").set(self.reserved.load(Ordering::Relaxed) as f64);
    }
}

/// A session's admission; released on drop.
struct Admitted<'a> {
    generation: &'a Generation,
    bytes: usize,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.generation.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
        self.generation.live.fetch_sub(1, Ordering::AcqRel);
        self.generation.gauges();
    }
}

/// The drafts of a WANT_VERIFY step: one per position, sampled ones with
/// their distribution when the step samples (temperature > 0).
fn check_drafts(step: &pb::DecodeStep, t: usize, vocab: usize) -> Result<Vec<DraftToCheck>, Status> {
    if step.drafts.len() != t {
        return Err(Status::invalid_argument(format!(
            "WANT_VERIFY needs one draft per position: {} drafts for {t} positions",
            step.drafts.len()
        )));
    }
    let sampled = step.temperature > 0.0;
    step.drafts
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let bad = |m: String| Status::invalid_argument(format!("draft {i}: {m}"));
            if d.token as usize >= vocab {
                return Err(bad(format!("token {} is outside the vocabulary of {vocab}", d.token)));
            }
            let q = if sampled {
                let q = SparseDist { tokens: d.q_tokens.clone(), probs: d.q_probs.clone() };
                q.check(vocab).map_err(|e| bad(e.to_string()))?;
                if q.prob(d.token) <= 0.0 {
                    return Err(bad(format!("token {} has no probability under its draft distribution", d.token)));
                }
                for u in [d.accept_uniform, d.residual_uniform] {
                    if !(0.0..=1.0).contains(&u) {
                        return Err(bad(format!("uniform numbers must be in [0, 1] (got {u})")));
                    }
                }
                Some(q)
            } else {
                None
            };
            Ok(DraftToCheck {
                token: d.token,
                q,
                accept_uniform: d.accept_uniform,
                residual_uniform: d.residual_uniform,
            })
        })
        .collect()
}

fn idle(ttl: Duration) -> Status {
    Status::resource_exhausted(format!("the session was idle for more than {ttl:?} (--session-ttl)"))
}

fn error_response(request_id: u64, status: &Status) -> pb::GenerateResponse {
    pb::GenerateResponse {
        request_id,
        result: Some(pb::generate_response::Result::Error(pb::Error {
            code: status.code() as i32,
            message: status.message().to_string(),
        })),
    }
}

/// The engine: takes decode steps in arrival order, batches steps of
/// different sessions at the same split, runs them, answers.
fn engine(model: Arc<DecoderModel>, mut rx: mpsc::UnboundedReceiver<Job>, max_batch: usize) {
    let mut carried: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match carried.pop_front() {
            Some(j) => j,
            None => match rx.blocking_recv() {
                Some(j) => j,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        // Older carried steps first, then new arrivals; a session's second
        // step (or another split's) waits for the next pass, in order.
        loop {
            if batch.len() >= max_batch.max(1) {
                break;
            }
            let next = match carried.pop_front() {
                Some(j) => j,
                None => match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                },
            };
            let clash = next.session.split != batch[0].session.split
                || batch.iter().any(|b| b.session.id == next.session.id)
                || later.iter().any(|b: &Job| b.session.id == next.session.id);
            if clash {
                later.push_back(next);
            } else {
                batch.push(next);
            }
        }
        later.extend(carried.drain(..));
        carried = later;
        // Steps whose session already ended are dropped before compute.
        batch.retain(|j| !j.out.is_closed());
        if !batch.is_empty() {
            run_batch(&model, batch);
        }
    }
}

fn run_batch(model: &DecoderModel, batch: Vec<Job>) {
    let started = Instant::now();
    // Before compute: speculative steps on rejected drafts are discarded,
    // steps that do not start where their session's cache ends are refused.
    let batch: Vec<Job> = batch
        .into_iter()
        .filter(|job| {
            let cell = &job.session;
            let cached = cell.cache.lock().unwrap_or_else(|e| e.into_inner()).len();
            if job.want == pb::Want::Verify && job.speculative && cell.discarding.load(Ordering::Relaxed) {
                let _ = job.out.send(Outcome::Token(
                    job.request_id,
                    pb::StepResult { position: job.pos as u32, cached: cached as u32, discarded: true, ..Default::default() },
                ));
                return false;
            }
            cell.discarding.store(false, Ordering::Relaxed);
            if job.pos != cached {
                let _ = job.out.send(Outcome::Refused(
                    job.request_id,
                    Status::invalid_argument(format!(
                        "the step starts at position {} but the session's cache holds {cached} positions (steps must be contiguous)",
                        job.pos
                    )),
                ));
                return false;
            }
            true
        })
        .collect();
    if batch.is_empty() {
        return;
    }
    let k = batch[0].session.split;
    let n = model.config().layers;
    let size = batch.len();
    let mut guards: Vec<_> = batch.iter().map(|j| j.session.cache.lock().unwrap_or_else(|e| e.into_inner())).collect();
    let result = (|| -> Result<Vec<offramp_common::decoder::Tensor>, offramp_common::decoder::DecoderError> {
        let mut steps: Vec<SessionStep<'_>> = Vec::with_capacity(size);
        for (job, cache) in batch.iter().zip(guards.iter_mut()) {
            steps.push(SessionStep { cache, x: model.states(&job.x, job.t)?, pos: job.pos });
        }
        model.run(k..n, &mut steps, &[])?;
        Ok(steps.into_iter().map(|s| s.x).collect())
    })();
    let outs = match result {
        Ok(outs) => outs,
        Err(e) => {
            for job in &batch {
                let _ =
                    job.out.send(Outcome::Failed(job.request_id, Status::internal(format!("decode step failed: {e}"))));
            }
            return;
        }
    };
    // The head runs only for steps that want a token: on their last rows,
    // or on every row of a verify step.
    let wanted: Vec<usize> = (0..size).filter(|&i| batch[i].want != pb::Want::None).collect();
    let head_rows = |i: usize| if batch[i].want == pb::Want::Verify { batch[i].t } else { 1 };
    let mut answers: BTreeMap<usize, speculative::Verdict> = BTreeMap::new();
    let mut failed: BTreeMap<usize, String> = BTreeMap::new();
    if !wanted.is_empty() {
        let last = wanted
            .iter()
            .map(|&i| outs[i].narrow(0, batch[i].t - head_rows(i), head_rows(i)))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|v| offramp_common::decoder::Tensor::cat(&v, 0));
        match last.map_err(Into::into).and_then(|x| model.logits(&x)).and_then(|l| rows(&l)) {
            Ok(logits) => {
                let mut logits = logits.into_iter();
                for &i in &wanted {
                    let job = &batch[i];
                    let job_rows: Vec<Vec<f32>> = logits.by_ref().take(head_rows(i)).collect();
                    if job_rows.iter().flatten().any(|v| !v.is_finite()) {
                        failed
                            .insert(i, "the logits are not finite (the hidden state overflowed in layers K..N)".into());
                        continue;
                    }
                    let verdict = match job.want {
                        pb::Want::Verify => {
                            let t = (job.temperature > 0.0).then_some(job.temperature);
                            speculative::verify(&job_rows, &job.drafts, t)
                        }
                        want => {
                            let (token, probability) = match want {
                                pb::Want::Sample => {
                                    Sampling::Temperature(job.temperature).choose(&job_rows[0], job.uniform)
                                }
                                _ => top1(&job_rows[0]),
                            };
                            speculative::Verdict { accepted: 0, token, probability }
                        }
                    };
                    if job.want == pb::Want::Verify {
                        // Keep the positions whose inputs were right: the
                        // step's first and those of the accepted drafts.
                        let keep = job.pos + (verdict.accepted + 1).min(job.t);
                        guards[i].truncate(keep);
                        if verdict.accepted < job.t {
                            job.session.discarding.store(true, Ordering::Relaxed);
                        }
                    }
                    answers.insert(i, verdict);
                }
            }
            Err(e) => {
                for &i in &wanted {
                    failed.insert(i, format!("LM head failed: {e}"));
                }
            }
        }
    }
    let cached: Vec<usize> = guards.iter().map(|g| g.len()).collect();
    drop(guards);
    let compute_us = started.elapsed().as_micros() as u64;
    metrics::histogram!("offramp_cloud_decode_batch_size").record(size as f64);
    metrics::histogram!("offramp_cloud_decode_seconds").record(started.elapsed().as_secs_f64());
    let emitted: usize = answers
        .iter()
        .map(|(&i, v)| if batch[i].want == pb::Want::Verify { (v.accepted + 1).min(batch[i].t) } else { 1 })
        .sum();
    metrics::counter!("offramp_cloud_generated_tokens_total").increment(emitted as u64);
    for (i, job) in batch.iter().enumerate() {
        if let Some(reason) = failed.remove(&i) {
            let _ = job.out.send(Outcome::Failed(job.request_id, Status::new(Code::InvalidArgument, reason)));
        } else if let Some(v) = answers.get(&i) {
            let queue_us = started.duration_since(job.enqueued).as_micros() as u64;
            let position =
                if job.want == pb::Want::Verify { job.pos + (v.accepted + 1).min(job.t) } else { job.pos + job.t };
            let _ = job.out.send(Outcome::Token(
                job.request_id,
                pb::StepResult {
                    position: position as u32,
                    token: v.token,
                    probability: v.probability,
                    queue_us,
                    compute_us,
                    batch_size: size as u32,
                    cached: cached[i] as u32,
                    accepted: v.accepted as u32,
                    discarded: false,
                },
            ));
        }
    }
}
