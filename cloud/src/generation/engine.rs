//! The engine: one thread per decoder that takes decode steps in arrival
//! order, batches steps of different sessions at the same split, runs them
//! and answers. A batch goes through four steps: [`admit_steps`] (discard
//! or refuse steps that cannot apply to their cache), [`forward`] (layers
//! `K..N`), [`head`] (the LM head and each step's verdict) and [`answer`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use offramp_common::decoder::logits;
use offramp_common::decoder::model::{rows, top1};
use offramp_common::decoder::sample::Sampling;
use offramp_common::decoder::speculative::{self, Verdict};
use offramp_common::decoder::{DecoderError, DecoderModel, KvCache, SessionStep, Tensor};
use offramp_proto as pb;
use tokio::sync::mpsc;

use super::session::CheckedStep;
use super::SessionError;

/// One session's state on the engine side.
pub(super) struct SessionCell {
    pub id: u64,
    pub split: usize,
    cache: Mutex<KvCache>,
    /// A verify step's drafts were rejected: speculative steps sent after
    /// it are discarded until one that is not speculative arrives.
    discarding: AtomicBool,
}

impl SessionCell {
    pub fn new(id: u64, split: usize, cache: KvCache) -> Self {
        Self { id, split, cache: Mutex::new(cache), discarding: AtomicBool::new(false) }
    }

    fn cache(&self) -> MutexGuard<'_, KvCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A checked step on its way to the engine.
pub(super) struct Job {
    pub session: Arc<SessionCell>,
    pub step: CheckedStep,
    pub enqueued: Instant,
    pub out: mpsc::UnboundedSender<Outcome>,
}

/// The engine's answer to one step.
pub(super) enum Outcome {
    Token(u64, pb::StepResult),
    /// The step was refused before it touched the cache; the session goes on.
    Refused(u64, SessionError),
    /// The step could not be applied; the session ends.
    Failed(u64, SessionError),
}

impl Job {
    fn send(&self, outcome: Outcome) {
        // A session that ended no longer listens; nothing to do.
        let _ = self.out.send(outcome);
    }

    /// Rows the LM head runs on: the last, or every row of a verify step.
    fn head_rows(&self) -> usize {
        if self.step.want == pb::Want::Verify {
            self.step.t
        } else {
            1
        }
    }

    /// Positions of a verify step whose inputs its verdict found right (the
    /// step's first and those of the accepted drafts): the tokens it emits.
    fn kept(&self, v: &Verdict) -> usize {
        (v.accepted + 1).min(self.step.t)
    }

    /// Where the session's cache ends after this step's verdict.
    fn position_after(&self, v: &Verdict) -> usize {
        let s = &self.step;
        if s.want == pb::Want::Verify {
            s.pos + self.kept(v)
        } else {
            s.pos + s.t
        }
    }

    /// Tokens this step's verdict emits.
    fn emitted(&self, v: &Verdict) -> usize {
        if self.step.want == pb::Want::Verify {
            self.kept(v)
        } else {
            1
        }
    }
}

/// A step's verdict and, when asked for, the log-probabilities of the
/// tokens it commits.
struct Answered {
    verdict: Verdict,
    logprobs: Vec<pb::TokenLogprobs>,
}

/// Runs batches until every session's sender is gone.
pub(super) fn engine(model: Arc<DecoderModel>, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    let mut carried: VecDeque<Job> = VecDeque::new();
    while let Some(mut batch) = next_batch(&mut carried, &mut rx, max_batch) {
        // Steps whose session already ended are dropped before compute.
        batch.retain(|j| !j.out.is_closed());
        if !batch.is_empty() {
            run_batch(&model, batch);
        }
    }
}

/// The next batch: older carried steps first, then new arrivals; a
/// session's second step (or another split's) waits for the next pass, in
/// order. `None` when no step is left and every sender is gone.
fn next_batch(carried: &mut VecDeque<Job>, rx: &mut mpsc::Receiver<Job>, max_batch: usize) -> Option<Vec<Job>> {
    let first = match carried.pop_front() {
        Some(j) => j,
        None => rx.blocking_recv()?,
    };
    let mut batch = vec![first];
    let mut later = VecDeque::new();
    while batch.len() < max_batch.max(1) {
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
    *carried = later;
    Some(batch)
}

fn run_batch(model: &DecoderModel, batch: Vec<Job>) {
    let started = Instant::now();
    let batch = admit_steps(batch);
    if batch.is_empty() {
        return;
    }
    let mut caches: Vec<_> = batch.iter().map(|j| j.session.cache()).collect();
    let outs = match forward(model, &batch, &mut caches) {
        Ok(outs) => outs,
        Err(e) => {
            let e = Arc::new(e);
            for job in &batch {
                job.send(Outcome::Failed(job.step.request_id, SessionError::Compute(e.clone())));
            }
            return;
        }
    };
    let verdicts = head(model, &batch, &outs, &mut caches);
    let cached: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    drop(caches);
    answer(&batch, verdicts, &cached, started);
}

/// Before compute: speculative steps on rejected drafts are discarded
/// (answered as such), steps that do not start where their session's cache
/// ends are refused.
fn admit_steps(batch: Vec<Job>) -> Vec<Job> {
    batch
        .into_iter()
        .filter(|job| {
            let (cell, step) = (&job.session, &job.step);
            let cached = cell.cache().len();
            if step.want == pb::Want::Verify && step.speculative && cell.discarding.load(Ordering::Relaxed) {
                let discarded = pb::StepResult {
                    position: step.pos as u32,
                    cached: cached as u32,
                    discarded: true,
                    ..Default::default()
                };
                job.send(Outcome::Token(step.request_id, discarded));
                return false;
            }
            cell.discarding.store(false, Ordering::Relaxed);
            if step.pos != cached {
                job.send(Outcome::Refused(step.request_id, SessionError::NotContiguous { position: step.pos, cached }));
                return false;
            }
            true
        })
        .collect()
}

/// Layers `K..N` over every step of the batch at once; each step's output
/// states.
fn forward(
    model: &DecoderModel,
    batch: &[Job],
    caches: &mut [MutexGuard<'_, KvCache>],
) -> Result<Vec<Tensor>, DecoderError> {
    let k = batch[0].session.split;
    let n = model.config().layers;
    let mut steps: Vec<SessionStep<'_>> = Vec::with_capacity(batch.len());
    for (job, cache) in batch.iter().zip(caches.iter_mut()) {
        steps.push(SessionStep { cache, x: model.states(&job.step.x, job.step.t)?, pos: job.step.pos });
    }
    model.run(k..n, &mut steps, &[])?;
    Ok(steps.into_iter().map(|s| s.x).collect())
}

/// The LM head for the steps that want a token (none for WANT_NONE), in one
/// pass, and each one's verdict; a verify step's cache is cut back to what
/// its verdict kept.
fn head(
    model: &DecoderModel,
    batch: &[Job],
    outs: &[Tensor],
    caches: &mut [MutexGuard<'_, KvCache>],
) -> Vec<Option<Result<Answered, SessionError>>> {
    let mut verdicts: Vec<Option<Result<Answered, SessionError>>> = batch.iter().map(|_| None).collect();
    let wanted: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].step.want != pb::Want::None).collect();
    if wanted.is_empty() {
        return verdicts;
    }
    match head_logits(model, batch, outs, &wanted) {
        Ok(logits) => {
            let mut logits = logits.into_iter();
            for &i in &wanted {
                let job_rows: Vec<Vec<f32>> = logits.by_ref().take(batch[i].head_rows()).collect();
                verdicts[i] = Some(verdict(&batch[i], &job_rows, &mut caches[i]));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for &i in &wanted {
                verdicts[i] = Some(Err(SessionError::Head(e.clone())));
            }
        }
    }
    verdicts
}

/// The logits rows of the `wanted` steps, in order ([`Job::head_rows`] each).
fn head_logits(
    model: &DecoderModel,
    batch: &[Job],
    outs: &[Tensor],
    wanted: &[usize],
) -> Result<Vec<Vec<f32>>, DecoderError> {
    let last = wanted
        .iter()
        .map(|&i| {
            let rows = batch[i].head_rows();
            outs[i].narrow(0, batch[i].step.t - rows, rows)
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| Tensor::cat(&v, 0))?;
    rows(&model.logits(&last)?)
}

/// One step's token (or verdict on its drafts) from its logits rows,
/// shaped (bias, then the position's mask) as the edge shaped its own.
fn verdict(job: &Job, logits: &[Vec<f32>], cache: &mut KvCache) -> Result<Answered, SessionError> {
    if logits.iter().flatten().any(|v| !v.is_finite()) {
        return Err(SessionError::Overflow);
    }
    let step = &job.step;
    let shaped: Vec<Vec<f32>>;
    let rows = if step.bias.is_empty() && step.masks.iter().all(Option::is_none) {
        logits
    } else {
        shaped = logits
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let mut row = row.clone();
                logits::shape(&mut row, &step.bias, step.masks.get(i).and_then(Option::as_ref));
                row
            })
            .collect();
        shaped.as_slice()
    };
    let verdict = match step.want {
        pb::Want::Verify => {
            let t = (step.temperature > 0.0).then_some(step.temperature);
            speculative::verify(rows, &step.drafts, t, &step.truncation)
        }
        want => {
            let (token, probability) = match want {
                pb::Want::Sample => {
                    Sampling::Temperature(step.temperature).choose_within(&rows[0], step.uniform, &step.truncation)
                }
                _ => top1(&rows[0]),
            };
            Verdict { accepted: 0, token, probability }
        }
    };
    if step.want == pb::Want::Verify {
        // Keep the positions whose inputs were right: the step's first and
        // those of the accepted drafts.
        cache.truncate(job.position_after(&verdict));
        if verdict.accepted < step.t {
            job.session.discarding.store(true, Ordering::Relaxed);
        }
    }
    let logprobs = match step.logprobs {
        None => Vec::new(),
        // Row i judged draft i; the token at the first rejection comes
        // from that draft's row.
        Some(top) => committed(step, &verdict)
            .into_iter()
            .enumerate()
            .map(|(i, token)| logits::logprobs(&logits[i], token, top))
            .collect(),
    };
    Ok(Answered { verdict, logprobs })
}

/// The tokens a step's verdict commits, in order.
fn committed(step: &CheckedStep, v: &Verdict) -> Vec<u32> {
    if step.want != pb::Want::Verify {
        return vec![v.token];
    }
    let mut tokens: Vec<u32> = step.drafts.iter().take(v.accepted).map(|d| d.token).collect();
    if v.accepted < step.t {
        tokens.push(v.token);
    }
    tokens
}

/// Metrics for the batch, then each step's answer (a token, or the failure
/// that ends its session; WANT_NONE steps get none).
fn answer(batch: &[Job], verdicts: Vec<Option<Result<Answered, SessionError>>>, cached: &[usize], started: Instant) {
    let compute_us = started.elapsed().as_micros() as u64;
    let size = batch.len();
    metrics::histogram!("offramp_cloud_decode_batch_size").record(size as f64);
    metrics::histogram!("offramp_cloud_decode_seconds").record(started.elapsed().as_secs_f64());
    let emitted: usize = batch
        .iter()
        .zip(&verdicts)
        .filter_map(|(job, v)| match v {
            Some(Ok(a)) => Some(job.emitted(&a.verdict)),
            _ => None,
        })
        .sum();
    metrics::counter!("offramp_cloud_generated_tokens_total").increment(emitted as u64);
    for ((job, verdict), &cached) in batch.iter().zip(verdicts).zip(cached) {
        let request_id = job.step.request_id;
        match verdict {
            None => {}
            Some(Err(e)) => job.send(Outcome::Failed(request_id, e)),
            Some(Ok(Answered { verdict: v, logprobs })) => job.send(Outcome::Token(
                request_id,
                pb::StepResult {
                    position: job.position_after(&v) as u32,
                    token: v.token,
                    probability: v.probability,
                    queue_us: started.duration_since(job.enqueued).as_micros() as u64,
                    compute_us,
                    batch_size: size as u32,
                    cached: cached as u32,
                    accepted: v.accepted as u32,
                    discarded: false,
                    logprobs,
                },
            )),
        }
    }
}
