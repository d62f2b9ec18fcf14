//! `--mode speculative`: the edge drafts, the cloud verifies.
//!
//! The edge runs layers `0..K` and its exit head token by token, drafting
//! the next token from the exit, and groups its drafts in blocks. A block's
//! layer-K states (the inputs of its positions: the last verified token,
//! then the drafts) go to the cloud in one `WANT_VERIFY` step with the
//! drafts; the cloud runs layers `K..N` over all of them in one pass and
//! answers how many drafts the whole model accepts and its own token at the
//! first rejection ([`offramp_common::decoder::speculative`]). Both sides
//! then drop the positions after the accepted prefix from their caches.
//! Every emitted token is therefore the whole model's (greedy: exactly its
//! argmax; sampled: drawn from its distribution).
//!
//! Round trips are hidden: while a block is being verified the edge keeps
//! drafting the next block as if every draft were accepted and sends it
//! marked `speculative` (at most `pipeline` blocks in flight); when a
//! verification rejects, the blocks after it are thrown away on both sides.
//! It stops drafting ahead once the chance that every verification in
//! flight accepts all its drafts (`a^rows`) falls below 10%.
//! The drafting adapts to a running estimate of the acceptance rate `a` per
//! draft, of the edge's time per draft `d` and of the wait for a
//! verification `w`. Pipelined (`--pipeline` > 1), every draft leaves as
//! soon as it is made (a block of one) and the edge drafts at most
//! `min(--draft, ceil(w / d) + 1)` tokens ahead of the last verified one:
//! enough to cover the round trip. Without pipelining it sends blocks of the
//! `n <= --draft` that maximises the expected tokens per block over its
//! time, `(1 + a + ... + a^(n-1)) / (n d + w)`, and waits for each.
//!
//! When the cloud is slow or gone the edge answers alone with its exit (tier
//! `fallback`, as in the other modes); once a cloud is back the states are
//! replayed into a new session and verification resumes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use offramp_common::decoder::model::top1;
use offramp_common::decoder::sample::Sampling;
use offramp_common::decoder::speculative::{position_uniforms, SparseDist, DRAFT_TOP_K};
use offramp_common::decoder::tokenizer::TextStream;
use offramp_common::decoder::KvCache;
use offramp_proto as pb;
use tokio::sync::oneshot;

use super::link::StepReply;
use super::{
    edge_layers, Ask, CloudState, DecoderEdge, GenOptions, GenerateError, Generated, Summary, Tier, TokenEvent,
};

/// Draft ahead of the verifications in flight only while the chance that
/// they all accept is at least this.
const AHEAD_MIN_SURVIVAL: f64 = 0.1;

/// A run of drafts verified together.
struct Block {
    /// Position of the block's first state (its input is verified).
    start: usize,
    /// Draft `i` is the token at position `start + i + 1`.
    drafts: Vec<pb::Draft>,
    /// The exit's probability of each draft.
    probs: Vec<f32>,
    rx: Option<oneshot::Receiver<StepReply>>,
    /// The answer, once awaited.
    ready: Option<StepReply>,
    sent_at: Option<Instant>,
    bytes_up: u64,
}

impl Block {
    fn rows(&self) -> usize {
        self.drafts.len()
    }
}

/// Running estimates behind the draft length.
struct DraftControl {
    max: usize,
    adapt: bool,
    /// Decayed counts of accepted and rejected drafts.
    accepted: f64,
    rejected: f64,
    /// Seconds per draft on the edge, and from sending a block to its answer.
    draft_s: Option<f64>,
    wait_s: Option<f64>,
}

impl DraftControl {
    fn new(max: usize, adapt: bool) -> Self {
        // A prior of one accept and one reject: a = 0.5 until measured.
        Self { max, adapt, accepted: 1.0, rejected: 1.0, draft_s: None, wait_s: None }
    }

    /// Pipelined: most drafts in flight unverified — enough to cover the
    /// wait for a verification, at most `max`.
    fn ahead(&self) -> usize {
        match (self.adapt, self.draft_s, self.wait_s) {
            (true, Some(d), Some(w)) if d > 0.0 => ((w / d).ceil() as usize + 1).clamp(1, self.max),
            (true, _, _) => self.max,
            (false, _, _) => usize::MAX,
        }
    }

    fn rate(&self) -> f64 {
        self.accepted / (self.accepted + self.rejected)
    }

    fn observe_block(&mut self, accepted: usize, rows: usize, wait: Duration) {
        const DECAY: f64 = 0.9;
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.rejected = self.rejected * DECAY + if accepted < rows { 1.0 } else { 0.0 };
        self.wait_s = Some(ewma(self.wait_s, wait.as_secs_f64()));
    }

    fn observe_draft(&mut self, took: Duration) {
        self.draft_s = Some(ewma(self.draft_s, took.as_secs_f64()));
    }

    /// Drafts in the next block. Pipelined and adaptive: one, so each
    /// draft leaves as soon as it is made and a rejection is seen one round
    /// trip after its draft (how far ahead to draft is [`Self::ahead`]).
    fn length(&self, pipelined: bool) -> usize {
        if self.adapt && pipelined {
            return 1;
        }
        let (Some(d), Some(w), true) = (self.draft_s, self.wait_s, self.adapt) else {
            return self.max;
        };
        let a = self.rate();
        let mut best = (1, 0.0);
        let mut expected = 0.0;
        for n in 1..=self.max {
            expected += a.powi(n as i32 - 1);
            let rate = expected / (n as f64 * d + w);
            if rate > best.1 {
                best = (n, rate);
            }
        }
        best.0
    }
}

fn ewma(old: Option<f64>, x: f64) -> f64 {
    old.map_or(x, |o| 0.8 * o + 0.2 * x)
}

/// Emitted tokens, their events and the summary's counters.
struct Emitter<'a, F: FnMut(&TokenEvent)> {
    edge: &'a DecoderEdge,
    on_token: F,
    text: TextStream,
    out: Vec<u32>,
    events: Vec<TokenEvent>,
    summary: Summary,
    started: Instant,
    last_at: Instant,
    first_token_at: Option<Duration>,
    max_tokens: usize,
    ignore_eos: bool,
}

impl<F: FnMut(&TokenEvent)> Emitter<'_, F> {
    /// Emits one token; false once generation should stop.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        position: usize,
        token: u32,
        probability: f32,
        tier: Tier,
        reason: Option<String>,
        bytes_up: u64,
        bytes_down: u64,
        cloud: &CloudState,
        cloud_batch: Option<u32>,
    ) -> bool {
        let edge = self.edge;
        self.summary.count(tier);
        // Bytes up are counted when sent (speculation thrown away included).
        self.summary.bytes_down_per_token += bytes_down as f64;
        let now = Instant::now();
        let event = TokenEvent {
            index: self.out.len(),
            position,
            token,
            text: self.text.push(edge.bundle.tokenizer(), token),
            tier,
            exit: (tier != Tier::Cloud).then(|| edge.exit.unwrap_or(edge.split)),
            probability,
            reason,
            latency_us: now.duration_since(self.last_at).as_micros() as u64,
            bytes_up,
            bytes_down,
            endpoint: if tier == Tier::Fallback { None } else { cloud.endpoint() },
            cloud_batch,
        };
        self.last_at = now;
        (self.on_token)(&event);
        self.events.push(event);
        self.out.push(token);
        self.first_token_at.get_or_insert_with(|| self.started.elapsed());
        let stop = edge.bundle.tokenizer().is_stop(token) && !self.ignore_eos;
        !stop && self.out.len() < self.max_tokens
    }
}

/// What one edge step drafted.
struct Drafted {
    state_k: Vec<f32>,
    token: u32,
    /// The exit's probability of the token.
    probability: f32,
    q: Option<SparseDist>,
}

pub(super) async fn generate(
    edge: &DecoderEdge,
    prompt: &[u32],
    opts: &GenOptions,
    on_token: impl FnMut(&TokenEvent),
) -> Result<Generated, GenerateError> {
    let c = edge.bundle.config().clone();
    let hidden = c.hidden;
    let k = edge.split;
    let spec = edge.session_spec(prompt.len() + opts.max_tokens);
    let temperature = match opts.sampling {
        Sampling::Temperature(t) => Some(t),
        Sampling::Greedy => None,
    };
    let mut em = Emitter {
        edge,
        on_token,
        text: TextStream::default(),
        out: Vec::with_capacity(opts.max_tokens),
        events: Vec::with_capacity(opts.max_tokens),
        summary: Summary {
            mode: super::Mode::Speculative.name().into(),
            split: k,
            encoding: offramp_common::codec::encoding_name(edge.config.encoding).into(),
            prompt_tokens: prompt.len(),
            ..Summary::default()
        },
        started: Instant::now(),
        last_at: Instant::now(),
        first_token_at: None,
        max_tokens: opts.max_tokens,
        ignore_eos: opts.ignore_eos,
    };
    let mut ctl = DraftControl::new(opts.draft.unwrap_or(edge.config.draft), edge.config.adapt_draft);
    let deadline = opts.deadline.unwrap_or(edge.config.deadline);
    let mut cache = Some(KvCache::new(&c, 0..k));
    let mut states: Vec<f32> = Vec::with_capacity(spec.max_positions * hidden);
    let mut cloud = CloudState::new(edge.clients.len());
    // The next input: the prompt, then one token at a time.
    let mut input: Vec<u32> = prompt.to_vec();
    // Prompt positions no cloud has seen yet.
    let mut unsent_prompt = prompt.len() - 1;
    let mut sent: VecDeque<Block> = VecDeque::new();
    let mut current: Option<Block> = None;
    let (mut verified, mut accepted_total, mut verifications, mut discarded) = (0usize, 0usize, 0usize, 0usize);
    let mut go = true;
    let mut down_seen = 0u64;
    while go {
        // Answers that are in, oldest first.
        while go {
            let Some(front) = sent.front_mut() else { break };
            let reply = match front.ready.take() {
                Some(r) => r,
                None => match front.rx.as_mut().expect("sent blocks wait for an answer").try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => Err("the session ended".to_string()),
                },
            };
            let block = sent.pop_front().expect("front exists");
            let reason = match reply {
                Ok(r) if !r.discarded => {
                    let a = (r.accepted as usize).min(block.rows());
                    tracing::debug!(
                        start = block.start,
                        rows = block.rows(),
                        accepted = a,
                        wait_ms = block.sent_at.expect("sent").elapsed().as_secs_f64() * 1e3,
                        cloud_compute_us = r.compute_us,
                        cloud_queue_us = r.queue_us,
                        in_flight = sent.len(),
                        "verified"
                    );
                    ctl.observe_block(a, block.rows(), block.sent_at.expect("sent").elapsed());
                    verified += block.rows();
                    accepted_total += a;
                    verifications += 1;
                    em.summary.round_trips_per_token += 1.0;
                    let mut up = block.bytes_up;
                    for i in 0..a {
                        let d = &block.drafts[i];
                        go = em.emit(
                            block.start + i + 1,
                            d.token,
                            block.probs[i],
                            Tier::Edge,
                            None,
                            up,
                            0,
                            &cloud,
                            None,
                        );
                        up = 0;
                        if !go {
                            break;
                        }
                    }
                    if go && a < block.rows() {
                        go = em.emit(
                            block.start + a + 1,
                            r.token,
                            r.probability,
                            Tier::Cloud,
                            None,
                            up,
                            0,
                            &cloud,
                            Some(r.batch_size),
                        );
                        // Roll back past the accepted prefix (the cloud did the
                        // same); what was drafted on top of it is void.
                        let keep = block.start + a + 1;
                        roll_back(&mut cache, &mut states, keep, hidden);
                        cloud.synced = cloud.synced.min(keep);
                        discarded += sent.iter().map(Block::rows).sum::<usize>()
                            + current.as_ref().map_or(0, Block::rows)
                            + (block.rows() - a - 1);
                        sent.clear();
                        current = None;
                        input = vec![r.token];
                    }
                    // Answers (discarded ones too) counted as they arrive.
                    let down = cloud.bytes_down();
                    em.summary.bytes_down_per_token += down.saturating_sub(down_seen) as f64;
                    down_seen = down;
                    continue;
                }
                Ok(_) => "the cloud discarded a verification the edge still waited for".to_string(),
                Err(reason) => reason,
            };
            fall_back(
                &mut em,
                &mut cloud,
                edge,
                block,
                &mut sent,
                &mut current,
                &mut cache,
                &mut states,
                &mut input,
                reason,
                &mut go,
            );
        }
        if !go {
            break;
        }
        let ahead = sent.iter().map(Block::rows).sum::<usize>() + current.as_ref().map_or(0, Block::rows);
        let budget = opts.max_tokens.saturating_sub(em.out.len() + ahead);
        let alone = sent.is_empty() && current.is_none() && !cloud.due();
        // Drafting ahead of verifications pays only while they are likely
        // to accept everything in flight; past that it burns the device's
        // CPU (and delays reading an answer by up to a draft).
        let unverified = sent.iter().map(Block::rows).sum::<usize>();
        let worth_it =
            sent.is_empty() || (unverified < ctl.ahead() && ctl.rate().powi(unverified as i32) >= AHEAD_MIN_SURVIVAL);
        if budget > 0 && ((sent.len() < edge.config.pipeline && worth_it) || alone) {
            // One edge step: layers 0..K over the input, then the exit.
            let pos = cache.as_ref().expect("cache returned each step").len();
            let t = input.len();
            let next = pos + t; // the position of the token drafted now
            let u = position_uniforms(opts.seed, next);
            let took = Instant::now();
            let (back, step) = {
                let model = edge.model.clone();
                let mut kv = cache.take().expect("cache returned each step");
                let ids = std::mem::take(&mut input);
                let head = edge.local_head();
                tokio::task::spawn_blocking(move || {
                    let r = edge_layers(&model, &mut kv, &ids, pos, head).and_then(|s| {
                        let logits = head.logits(&model, &s.tap)?;
                        Ok(draft(s.state_k, &logits, temperature, u[0]))
                    });
                    (kv, r)
                })
                .await
                .map_err(|e| GenerateError::Join(e.to_string()))?
            };
            cache = Some(back);
            let d = step?;
            ctl.observe_draft(took.elapsed());
            tracing::debug!(position = next, draft_ms = took.elapsed().as_secs_f64() * 1e3, "drafted");
            states.extend_from_slice(&d.state_k);
            input = vec![d.token];
            if alone {
                // The cloud is away: the exit's token is the answer.
                let reason = cloud.last_error.clone();
                go = em.emit(next, d.token, d.probability, Tier::Fallback, reason, 0, 0, &cloud, None);
                continue;
            }
            let block = current.get_or_insert_with(|| Block {
                start: next - 1,
                drafts: Vec::new(),
                probs: Vec::new(),
                rx: None,
                ready: None,
                sent_at: None,
                bytes_up: 0,
            });
            let (q_tokens, q_probs) = d.q.map(|q| (q.tokens, q.probs)).unwrap_or_default();
            block.drafts.push(pb::Draft {
                token: d.token,
                q_tokens,
                q_probs,
                accept_uniform: u[1],
                residual_uniform: u[2],
            });
            block.probs.push(d.probability);
            let length = ctl.length(edge.config.pipeline > 1);
            let full = block.rows() >= length.min(cloud.max_rows().unwrap_or(usize::MAX)) || budget == 1;
            if full {
                let mut block = current.take().expect("drafting a block");
                let end = block.start + block.rows();
                let ask = Ask {
                    want: pb::Want::Verify,
                    temperature: temperature.unwrap_or(0.0),
                    uniform: 0.0,
                    drafts: block.drafts.clone(),
                    speculative: !sent.is_empty(),
                };
                let fresh = block.rows() + unsent_prompt;
                match cloud.sync(edge, &spec, &states, end, block.rows(), fresh, ask).await {
                    Ok((bytes, Some(rx))) => {
                        unsent_prompt = 0;
                        em.summary.bytes_up_per_token += bytes as f64;
                        block.rx = Some(rx);
                        block.sent_at = Some(Instant::now());
                        block.bytes_up = bytes;
                        sent.push_back(block);
                    }
                    Ok((_, None)) => unreachable!("a verify step has a receiver"),
                    Err(reason) => {
                        // The oldest unverified block is where the edge goes on from.
                        let oldest = sent.pop_front().unwrap_or(block);
                        fall_back(
                            &mut em,
                            &mut cloud,
                            edge,
                            oldest,
                            &mut sent,
                            &mut current,
                            &mut cache,
                            &mut states,
                            &mut input,
                            reason,
                            &mut go,
                        );
                    }
                }
            }
        } else if let Some(front) = sent.front_mut() {
            // Nothing to draft: wait for the oldest verification.
            let left = deadline.saturating_sub(front.sent_at.expect("sent").elapsed());
            let rx = front.rx.as_mut().expect("sent blocks wait for an answer");
            front.ready = Some(match tokio::time::timeout(left, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the session ended".to_string()),
                Err(_) => Err(format!("no answer within the deadline of {deadline:?}")),
            });
        } else {
            break;
        }
    }
    let elapsed = em.started.elapsed();
    let tokens = em.out.len();
    let mut summary = em.summary;
    summary.finish(tokens, elapsed, em.first_token_at, &cloud);
    if verifications > 0 {
        summary.drafts_verified = Some(verified);
        summary.acceptance_rate = Some(accepted_total as f64 / verified.max(1) as f64);
        summary.mean_draft_length = Some(verified as f64 / verifications as f64);
    } else {
        summary.drafts_verified = Some(0);
        summary.acceptance_rate = Some(0.0);
        summary.mean_draft_length = Some(0.0);
    }
    summary.drafts_discarded = Some(discarded);
    let text = edge.bundle.tokenizer().decode(&em.out)?;
    Ok(Generated { tokens: em.out, text, events: em.events, summary })
}

/// The cloud did not verify `block` (timeout, loss, refusal): the edge
/// keeps the block's first position (its input was verified), answers that
/// position with its own draft (tier `fallback`) and forgets everything
/// drafted after it.
#[allow(clippy::too_many_arguments)]
fn fall_back<F: FnMut(&TokenEvent)>(
    em: &mut Emitter<'_, F>,
    cloud: &mut CloudState,
    edge: &DecoderEdge,
    block: Block,
    sent: &mut VecDeque<Block>,
    current: &mut Option<Block>,
    cache: &mut Option<KvCache>,
    states: &mut Vec<f32>,
    input: &mut Vec<u32>,
    reason: String,
    go: &mut bool,
) {
    cloud.lost(&reason, edge.config.retry_every);
    let keep = block.start + 1;
    roll_back(cache, states, keep, edge.bundle.config().hidden);
    sent.clear();
    *current = None;
    let first = &block.drafts[0];
    *input = vec![first.token];
    *go = em.emit(keep, first.token, block.probs[0], Tier::Fallback, Some(reason), block.bytes_up, 0, cloud, None);
}

fn roll_back(cache: &mut Option<KvCache>, states: &mut Vec<f32>, keep: usize, hidden: usize) {
    cache.as_mut().expect("cache returned each step").truncate(keep);
    states.truncate(keep * hidden);
}

/// The draft from the exit's logits: the argmax (greedy), or a draw from
/// its top entries (sampled, with the position's draft uniform).
fn draft(state_k: Vec<f32>, logits: &[f32], temperature: Option<f32>, uniform: f32) -> Drafted {
    match temperature {
        None => {
            let (token, probability) = top1(logits);
            Drafted { state_k, token, probability, q: None }
        }
        Some(t) => {
            let q = SparseDist::top_k(logits, t, DRAFT_TOP_K);
            let token = q.sample(uniform);
            Drafted { state_k, token, probability: q.prob(token), q: Some(q) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_length_grows_with_acceptance_and_wait() {
        let mut c = DraftControl::new(8, true);
        assert_eq!(c.length(false), 8, "no measurements yet: the most");
        assert_eq!(c.length(true), 1, "pipelined: each draft leaves at once");
        assert_eq!(c.ahead(), 8);
        c.observe_draft(Duration::from_millis(20));
        c.observe_block(0, 4, Duration::from_millis(5));
        c.observe_block(0, 4, Duration::from_millis(5));
        c.observe_block(0, 4, Duration::from_millis(5));
        let short = c.length(false);
        assert_eq!(short, 1, "drafts that are always rejected and a near link: one at a time");
        for _ in 0..20 {
            c.observe_block(4, 4, Duration::from_millis(200));
        }
        assert!(c.length(false) >= 6, "accepted drafts and a far link: long blocks (got {})", c.length(false));
        assert_eq!(c.ahead(), 8, "a 200 ms wait covers 10 drafts of 20 ms; at most --draft");
        let mut near = DraftControl::new(8, true);
        near.observe_draft(Duration::from_millis(20));
        near.observe_block(1, 1, Duration::from_millis(50));
        assert_eq!(near.ahead(), 4, "ceil(50 / 20) + 1");
        let fixed = DraftControl { adapt: false, ..DraftControl::new(3, false) };
        assert_eq!(fixed.length(true), 3);
    }
}
