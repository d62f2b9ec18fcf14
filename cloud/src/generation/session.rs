//! One session's life on its stream: open and admit, then read and check
//! steps (queued for the engine) while the engine's answers are forwarded,
//! until the edge closes the stream or something ends the session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use offramp_common::codec;
use offramp_common::decoder::logits::{check_top_logprobs, LogitBias, TokenMask};
use offramp_common::decoder::sample::Truncation;
use offramp_common::decoder::speculative::{DraftToCheck, SparseDist};
use offramp_common::decoder::KvCache;
use offramp_proto as pb;
use pb::generate_request::Msg;
use tokio::sync::mpsc;
use tonic::Status;

use super::engine::{Job, Outcome, SessionCell};
use super::{error_response, Admitted, DecoderSlot, DraftError, Generation, SessionError};
use crate::auth::Caller;

type Responses = mpsc::Sender<Result<pb::GenerateResponse, Status>>;

/// An open, admitted session: what its steps are checked against and where
/// they go. Its admission is released when it is dropped.
struct Open<'a> {
    slot: &'a DecoderSlot,
    cell: Arc<SessionCell>,
    engine: mpsc::Sender<Job>,
    rules: StepRules<'a>,
    _admitted: Admitted<'a>,
}

impl Generation {
    /// The session on one stream: the first message opens it, the rest are
    /// its steps. Reading ends first (the edge closed, broke, idled, or
    /// misbehaved); the answers to steps already queued are still delivered
    /// unless reading ended in error.
    pub(super) async fn session<S>(&self, caller: &Caller, mut inbound: S, tx: &Responses) -> Result<(), SessionError>
    where
        S: Stream<Item = Result<pb::GenerateRequest, Status>> + Unpin + Send,
    {
        let request = match next_message(&mut inbound, self.limits.idle_ttl).await? {
            None => return Ok(()),
            Some(pb::GenerateRequest { msg: Some(Msg::Open(request)) }) => request,
            Some(_) => return Err(SessionError::NotOpened),
        };
        let open = self.open(&request)?;
        let id = open.cell.id;
        tracing::info!(session = id, edge = caller.label(), model = %open.slot.id, split = open.cell.split, max_positions = open.rules.max_positions, "session opened");
        tx.send(Ok(self.opened(id))).await.map_err(|_| SessionError::EdgeGone)?;

        let (out_tx, out_rx) = mpsc::unbounded_channel::<Outcome>();
        let forward = tokio::spawn(forward(out_rx, tx.clone()));
        let read_result = self.read(&open, inbound, &out_tx, tx).await;
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

    /// Opens a session as `request` asks: the decoder, the split and its
    /// fingerprint, the positions, then admission of its cache.
    fn open(&self, request: &pb::OpenSession) -> Result<Open<'_>, SessionError> {
        let slot = self.slot(&request.model_id)?;
        let engine = self.engines.get(&slot.id).expect("one engine per slot").clone();
        let k = request.split as usize;
        slot.check_split(k, &request.model_fingerprint)?;
        let config = slot.bundle.config();
        let max_positions = session_positions(request.max_positions, &slot.id, config.context, self.limits.max_tokens)?;
        let cache = KvCache::new(config, k..config.layers);
        let admitted = self.admission.admit(cache.bytes_at(max_positions))?;
        let id = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let rules = StepRules {
            max_positions,
            hidden: config.hidden,
            vocab: config.vocab,
            encodings: &self.encodings,
            max_payload: self.max_payload,
        };
        Ok(Open { slot, cell: Arc::new(SessionCell::new(id, k, cache)), engine, rules, _admitted: admitted })
    }

    fn opened(&self, id: u64) -> pb::GenerateResponse {
        pb::GenerateResponse {
            request_id: 0,
            result: Some(pb::generate_response::Result::Opened(pb::SessionOpened {
                session_id: format!("{id}"),
                limits: Some(self.limits.to_pb()),
            })),
        }
    }

    /// Reads steps until the stream ends: each is checked and queued for
    /// the engine, or refused (answered here; the session goes on).
    async fn read<S>(
        &self,
        open: &Open<'_>,
        mut inbound: S,
        out: &mpsc::UnboundedSender<Outcome>,
        tx: &Responses,
    ) -> Result<(), SessionError>
    where
        S: Stream<Item = Result<pb::GenerateRequest, Status>> + Unpin + Send,
    {
        while let Some(msg) = next_message(&mut inbound, self.limits.idle_ttl).await? {
            let step = match msg.msg {
                Some(Msg::Step(step)) => step,
                Some(Msg::Open(_)) => return Err(SessionError::AlreadyOpen),
                None => return Err(SessionError::EmptyMessage),
            };
            match open.rules.check(&step) {
                Ok(step) => {
                    let job = Job { session: open.cell.clone(), step, enqueued: Instant::now(), out: out.clone() };
                    open.engine.send(job).await.map_err(|_| SessionError::EngineStopped)?;
                }
                Err(e) => {
                    // Refused before it touched the cache: the session goes on.
                    tracing::debug!(session = open.cell.id, request = step.request_id, error = %e, "step refused");
                    if tx.send(Ok(error_response(step.request_id, &e))).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The next message, `None` when the edge closed the stream.
async fn next_message<S>(inbound: &mut S, ttl: Duration) -> Result<Option<pb::GenerateRequest>, SessionError>
where
    S: Stream<Item = Result<pb::GenerateRequest, Status>> + Unpin + Send,
{
    match tokio::time::timeout(ttl, inbound.next()).await {
        Err(_) => Err(SessionError::IdleTimeout(ttl)),
        Ok(None) => Ok(None),
        Ok(Some(Err(status))) => Err(SessionError::Inbound(status)),
        Ok(Some(Ok(m))) => Ok(Some(m)),
    }
}

/// Sends the engine's answers to the edge, in the order they come. A failed
/// step ends the session (its error is answered first); an edge that went
/// away ends it quietly.
async fn forward(mut outcomes: mpsc::UnboundedReceiver<Outcome>, tx: Responses) -> Result<(), SessionError> {
    while let Some(outcome) = outcomes.recv().await {
        let response = match outcome {
            Outcome::Token(request_id, step) => {
                pb::GenerateResponse { request_id, result: Some(pb::generate_response::Result::Step(step)) }
            }
            Outcome::Refused(request_id, e) => error_response(request_id, &e),
            Outcome::Failed(request_id, e) => {
                let _ = tx.send(Ok(error_response(request_id, &e))).await;
                return Err(e);
            }
        };
        if tx.send(Ok(response)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// The positions a session may reach: as asked (0: the per-session limit,
/// within the model's context), within the context and the limit.
pub(super) fn session_positions(
    asked: u32,
    model: &str,
    context: usize,
    max_tokens: usize,
) -> Result<usize, SessionError> {
    let asked = match asked as usize {
        0 => max_tokens.min(context),
        n => n,
    };
    if asked > context {
        return Err(SessionError::ContextExceeded { asked, model: model.to_string(), context });
    }
    if asked > max_tokens {
        return Err(SessionError::SessionTokenLimit { asked, limit: max_tokens });
    }
    Ok(asked)
}

/// What a session's steps are checked against on arrival (their position
/// against the cache is checked by the engine, which knows where
/// verification left it).
#[derive(Debug, Clone, Copy)]
pub(super) struct StepRules<'a> {
    pub max_positions: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub encodings: &'a [pb::Encoding],
    pub max_payload: usize,
}

/// A step that passed [`StepRules::check`], as the engine runs it.
#[derive(Debug)]
pub(super) struct CheckedStep {
    pub request_id: u64,
    /// The hidden state, `t` rows of the model's width.
    pub x: Vec<f32>,
    pub t: usize,
    pub pos: usize,
    pub want: pb::Want,
    pub temperature: f32,
    pub uniform: f32,
    /// Truncation of the sampling distribution (off by default).
    pub truncation: Truncation,
    /// Added to the logits before anything else.
    pub bias: LogitBias,
    /// The tokens each chosen position allows (the token step's one, or
    /// one per draft; `None`: any).
    pub masks: Vec<Option<TokenMask>>,
    /// Report log-probabilities of committed tokens with this many
    /// alternatives.
    pub logprobs: Option<usize>,
    /// WANT_VERIFY: one draft per position.
    pub drafts: Vec<DraftToCheck>,
    pub speculative: bool,
}

impl StepRules<'_> {
    pub(super) fn check(&self, step: &pb::DecodeStep) -> Result<CheckedStep, SessionError> {
        let want = check_want(step)?;
        let (x, t) = self.hidden_state(step)?;
        let start = step.position as usize;
        if start + t > self.max_positions {
            return Err(SessionError::PastSessionEnd { start, end: start + t, max_positions: self.max_positions });
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(SessionError::NonFinite);
        }
        let drafts = if want == pb::Want::Verify { check_drafts(step, t, self.vocab)? } else { Vec::new() };
        let truncation = Truncation { top_k: step.top_k, top_p: step.top_p, min_p: step.min_p };
        truncation.check()?;
        let mask = |m: &Option<pb::TokenMask>| m.as_ref().map(|m| TokenMask::from_pb(m, self.vocab)).transpose();
        let masks = if want == pb::Want::Verify {
            if step.mask.is_some() {
                return Err(SessionError::MaskOnVerify);
            }
            step.drafts.iter().map(|d| mask(&d.mask)).collect::<Result<_, _>>()?
        } else {
            vec![mask(&step.mask)?]
        };
        let bias = LogitBias::from_pb(step, self.vocab)?;
        let logprobs = step.logprobs.then(|| check_top_logprobs(step.top_logprobs)).transpose()?;
        Ok(CheckedStep {
            request_id: step.request_id,
            x,
            t,
            pos: start,
            want,
            temperature: step.temperature,
            uniform: step.uniform,
            truncation,
            bias,
            masks,
            logprobs,
            drafts,
            speculative: step.speculative,
        })
    }

    /// The step's hidden state (`[T >= 1, hidden]`) and its `T`.
    fn hidden_state(&self, step: &pb::DecodeStep) -> Result<(Vec<f32>, usize), SessionError> {
        let tensor = step.hidden.as_ref().ok_or(SessionError::MissingTensor)?;
        let encoding = pb::Encoding::try_from(tensor.encoding).unwrap_or(pb::Encoding::Unspecified);
        if !self.encodings.contains(&encoding) {
            return Err(SessionError::EncodingNotAccepted {
                got: codec::encoding_name(encoding),
                accepted: self.encodings.iter().map(|&e| codec::encoding_name(e)).collect(),
            });
        }
        let (shape, values) = codec::decode(tensor, self.max_payload)?;
        match shape.as_slice() {
            [t, w] if *w == self.hidden && *t >= 1 => Ok((values, *t)),
            _ => Err(SessionError::Shape { got: codec::echo::Shape::of_usize(&shape), hidden: self.hidden }),
        }
    }
}

/// What the step wants, with the settings that go with it.
fn check_want(step: &pb::DecodeStep) -> Result<pb::Want, SessionError> {
    let want = pb::Want::try_from(step.want).map_err(|_| SessionError::UnknownWant(step.want))?;
    if want == pb::Want::Sample && !(step.temperature > 0.0 && step.temperature.is_finite()) {
        return Err(SessionError::SampleNeedsTemperature(step.temperature));
    }
    if !(step.temperature >= 0.0 && step.temperature.is_finite()) {
        return Err(SessionError::Temperature(step.temperature));
    }
    if !(0.0..=1.0).contains(&step.uniform) {
        return Err(SessionError::Uniform(step.uniform));
    }
    if want != pb::Want::Verify && (!step.drafts.is_empty() || step.speculative) {
        return Err(SessionError::DraftsWithoutVerify);
    }
    Ok(want)
}

/// The drafts of a WANT_VERIFY step: one per position, sampled ones with
/// their distribution when the step samples (temperature > 0).
pub(super) fn check_drafts(step: &pb::DecodeStep, t: usize, vocab: usize) -> Result<Vec<DraftToCheck>, SessionError> {
    if step.drafts.len() != t {
        return Err(SessionError::DraftCount { drafts: step.drafts.len(), positions: t });
    }
    let sampled = step.temperature > 0.0;
    step.drafts
        .iter()
        .enumerate()
        .map(|(index, d)| check_draft(d, sampled, vocab).map_err(|error| SessionError::BadDraft { index, error }))
        .collect()
}

fn check_draft(d: &pb::Draft, sampled: bool, vocab: usize) -> Result<DraftToCheck, DraftError> {
    if d.token as usize >= vocab {
        return Err(DraftError::TokenOutsideVocab { token: d.token, vocab });
    }
    let q = if sampled {
        let q = SparseDist { tokens: d.q_tokens.clone(), probs: d.q_probs.clone() };
        q.check(vocab)?;
        if q.prob(d.token) <= 0.0 {
            return Err(DraftError::NoProbability(d.token));
        }
        if let Some(u) = [d.accept_uniform, d.residual_uniform].into_iter().find(|u| !(0.0..=1.0).contains(u)) {
            return Err(DraftError::Uniform(u));
        }
        Some(q)
    } else {
        None
    };
    Ok(DraftToCheck { token: d.token, q, accept_uniform: d.accept_uniform, residual_uniform: d.residual_uniform })
}
