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

use offramp_common::decoder::logits::{self, TokenMask};
use offramp_common::decoder::model::top1;
use offramp_common::decoder::sample::{distribution, Sampling};
use offramp_common::decoder::speculative::{position_uniforms, SparseDist, DRAFT_TOP_K};
use offramp_proto as pb;
use tokio::sync::oneshot;

use super::choose::{Chooser, Shaping};
use super::emit::{Emitted, Emitter};
use super::link::{Ask, CloudLink, SyncRange};
use super::local::LocalDecoder;
use super::{DecoderEdge, GenOptions, GenerateError, Generated, Tier, TokenEvent};
use crate::link::session::StepReply;
use crate::link::LinkError;

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
    /// The exit's log-probabilities of each draft, when asked for (what a
    /// fallback reports).
    logprobs: Vec<Option<pb::TokenLogprobs>>,
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

/// What one edge step drafted.
struct Drafted {
    token: u32,
    /// The exit's probability of the token.
    probability: f32,
    q: Option<SparseDist>,
    logprobs: Option<pb::TokenLogprobs>,
}

/// What the speculative loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Draft a token (with `alone`: the cloud is away, the draft is the
    /// answer).
    Draft { alone: bool },
    /// Nothing worth drafting: wait for the oldest verification.
    WaitOldest,
    /// Nothing in flight and nothing left to draft.
    Stop,
}

/// What the policy sees of the loop.
#[derive(Debug, Clone, Copy)]
struct View {
    /// Blocks sent and not yet answered, and their drafts.
    in_flight: usize,
    unverified: usize,
    /// Drafts in the block being built.
    building: usize,
    /// Tokens emitted so far, and the most asked for.
    emitted: usize,
    max_tokens: usize,
    cloud_due: bool,
    pipeline: usize,
    /// Most drafts ahead of the last verified one, and the acceptance rate.
    ahead: usize,
    rate: f64,
}

impl View {
    /// Tokens that may still be drafted.
    fn budget(&self) -> usize {
        self.max_tokens.saturating_sub(self.emitted + self.unverified + self.building)
    }
}

/// The policy, free of I/O: draft while a draft can still be emitted and
/// either the pipeline has room and drafting ahead is likely to pay, or the
/// cloud is away (the edge answers alone); else wait for the oldest answer.
fn next(v: &View) -> Action {
    let alone = v.in_flight == 0 && v.building == 0 && !v.cloud_due;
    // Drafting ahead of verifications pays only while they are likely
    // to accept everything in flight; past that it burns the device's
    // CPU (and delays reading an answer by up to a draft).
    let worth_it =
        v.in_flight == 0 || (v.unverified < v.ahead && v.rate.powi(v.unverified as i32) >= AHEAD_MIN_SURVIVAL);
    if v.budget() > 0 && ((v.in_flight < v.pipeline && worth_it) || alone) {
        Action::Draft { alone }
    } else if v.in_flight > 0 {
        Action::WaitOldest
    } else {
        Action::Stop
    }
}

/// A speculative generation in progress.
struct Speculation<'e, F: FnMut(&TokenEvent)> {
    edge: &'e DecoderEdge,
    opts: &'e GenOptions,
    em: Emitter<'e, F>,
    ctl: DraftControl,
    deadline: Duration,
    /// The exit that drafts (what edge and fallback tokens name).
    exit: Option<usize>,
    local: LocalDecoder,
    cloud: CloudLink,
    /// The shaping of every choice, and the grammar's state over the
    /// emitted tokens and the drafts in flight.
    chooser: Chooser,
    /// The next input: the prompt, then one token at a time.
    input: Vec<u32>,
    /// Prompt positions no cloud has seen yet.
    unsent_prompt: usize,
    sent: VecDeque<Block>,
    current: Option<Block>,
    verified: usize,
    accepted: usize,
    verifications: usize,
    discarded: usize,
    down_seen: u64,
    go: bool,
}

pub(super) async fn generate(
    edge: &DecoderEdge,
    prompt: &[u32],
    opts: &GenOptions,
    on_token: impl FnMut(&TokenEvent),
) -> Result<Generated, GenerateError> {
    let mut s = Speculation::new(edge, prompt, opts, on_token)?;
    while s.go {
        s.take_answers()?;
        if !s.go {
            break;
        }
        match next(&s.view()) {
            Action::Draft { alone } => s.draft(alone).await?,
            Action::WaitOldest => s.wait_oldest().await,
            Action::Stop => break,
        }
    }
    s.finish()
}

impl<'e, F: FnMut(&TokenEvent)> Speculation<'e, F> {
    fn new(edge: &'e DecoderEdge, prompt: &[u32], opts: &'e GenOptions, on_token: F) -> Result<Self, GenerateError> {
        let c = edge.bundle.config();
        let spec = edge.session_spec(prompt.len() + opts.max_tokens);
        Ok(Self {
            edge,
            opts,
            em: Emitter::new(edge, super::Mode::Speculative, prompt.len(), opts, on_token),
            ctl: DraftControl::new(opts.draft.unwrap_or(edge.config.draft), edge.config.adapt_draft),
            deadline: opts.deadline.unwrap_or(edge.config.deadline),
            exit: Some(edge.exit.unwrap_or(edge.split)),
            local: LocalDecoder::new(edge, spec.max_positions),
            cloud: CloudLink::new(edge.endpoints.clone(), spec, c.hidden, edge.timing()),
            chooser: Chooser::new(edge, opts)?,
            input: prompt.to_vec(),
            unsent_prompt: prompt.len() - 1,
            sent: VecDeque::new(),
            current: None,
            verified: 0,
            accepted: 0,
            verifications: 0,
            discarded: 0,
            down_seen: 0,
            go: true,
        })
    }

    fn view(&self) -> View {
        View {
            in_flight: self.sent.len(),
            unverified: self.sent.iter().map(Block::rows).sum(),
            building: self.current.as_ref().map_or(0, Block::rows),
            emitted: self.em.out.len(),
            max_tokens: self.opts.max_tokens,
            cloud_due: self.cloud.due(),
            pipeline: self.edge.config.pipeline,
            ahead: self.ctl.ahead(),
            rate: self.ctl.rate(),
        }
    }

    fn closed(&self, reason: &str) -> LinkError {
        LinkError::Closed { endpoint: self.cloud.endpoint().unwrap_or_default(), reason: reason.into() }
    }

    /// Takes the answers that are in, oldest first.
    fn take_answers(&mut self) -> Result<(), GenerateError> {
        while self.go {
            let Some(front) = self.sent.front_mut() else { break };
            let reply = match front.ready.take() {
                Some(r) => r,
                None => match front.rx.as_mut().expect("sent blocks wait for an answer").try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => Err(self.closed("the session ended")),
                },
            };
            let block = self.sent.pop_front().expect("front exists");
            match reply {
                Ok(r) if !r.discarded => self.verified_block(block, r)?,
                Ok(_) => {
                    let e = self.closed("the cloud discarded a verification the edge still waited for");
                    self.fall_back(block, e)?;
                }
                Err(e) => self.fall_back(block, e)?,
            }
        }
        Ok(())
    }

    /// A block's verification: its accepted drafts and the whole model's
    /// token at the first rejection are emitted; both sides roll back past
    /// the accepted prefix.
    fn verified_block(&mut self, block: Block, r: pb::StepResult) -> Result<(), GenerateError> {
        let a = (r.accepted as usize).min(block.rows());
        let waited = block.sent_at.expect("sent").elapsed();
        tracing::debug!(
            start = block.start,
            rows = block.rows(),
            accepted = a,
            wait_ms = waited.as_secs_f64() * 1e3,
            cloud_compute_us = r.compute_us,
            cloud_queue_us = r.queue_us,
            in_flight = self.sent.len(),
            "verified"
        );
        self.ctl.observe_block(a, block.rows(), waited);
        self.verified += block.rows();
        self.accepted += a;
        self.verifications += 1;
        self.em.summary.round_trips_per_token += 1.0;
        let mut up = block.bytes_up;
        let mut logprobs = r.logprobs.into_iter();
        for (i, d) in block.drafts.iter().enumerate().take(a) {
            self.go = self.em.emit(Emitted {
                bytes_up: up,
                endpoint: self.cloud.endpoint(),
                logprobs: logprobs.next(),
                ..Emitted::new(block.start + i + 1, d.token, block.probs[i], Tier::Edge, self.exit)
            });
            up = 0;
            if !self.go {
                break;
            }
        }
        if self.go && a < block.rows() {
            // The grammar forgets the rejected drafts and takes the whole
            // model's token instead.
            self.chooser.truncate(self.em.out.len())?;
            self.chooser.consume(r.token)?;
            self.go = self.em.emit(Emitted {
                bytes_up: up,
                endpoint: self.cloud.endpoint(),
                cloud_batch: Some(r.batch_size),
                logprobs: logprobs.next(),
                ..Emitted::new(block.start + a + 1, r.token, r.probability, Tier::Cloud, None)
            });
            // Roll back past the accepted prefix (the cloud did the same);
            // what was drafted on top of it is void.
            let keep = block.start + a + 1;
            self.roll_back(keep);
            self.discarded += self.sent.iter().map(Block::rows).sum::<usize>()
                + self.current.as_ref().map_or(0, Block::rows)
                + (block.rows() - a - 1);
            self.sent.clear();
            self.current = None;
            self.input = vec![r.token];
        }
        // Answers (discarded ones too) counted as they arrive.
        let down = self.cloud.bytes_down();
        self.em.summary.bytes_down_per_token += down.saturating_sub(self.down_seen) as f64;
        self.down_seen = down;
        Ok(())
    }

    /// Both sides drop the positions from `keep` on.
    fn roll_back(&mut self, keep: usize) {
        self.local.truncate(keep);
        self.cloud.truncate(keep);
    }

    /// One edge step: layers 0..K over the input, then the exit's draft;
    /// `alone`: the cloud is away and the draft is the answer.
    async fn draft(&mut self, alone: bool) -> Result<(), GenerateError> {
        let next = self.local.len() + self.input.len(); // the position of the token drafted now
        let u = position_uniforms(self.opts.seed, next);
        let took = Instant::now();
        let mask = self.chooser.mask()?;
        let (shaping, m) = (self.chooser.shaping.clone(), mask.clone());
        let ids = std::mem::take(&mut self.input);
        let d = self
            .local
            .step(ids, move |model, head, tap| Ok(draft(head.logits(model, tap)?, &shaping, m.as_ref(), u[0])))
            .await?
            .then;
        self.chooser.consume(d.token)?;
        self.ctl.observe_draft(took.elapsed());
        tracing::debug!(position = next, draft_ms = took.elapsed().as_secs_f64() * 1e3, "drafted");
        self.input = vec![d.token];
        if alone {
            // The cloud is away: the exit's token is the answer.
            let reason = self.cloud.cause().map(LinkError::to_string);
            self.go = self.em.emit(Emitted {
                reason,
                logprobs: d.logprobs,
                ..Emitted::new(next, d.token, d.probability, Tier::Fallback, self.exit)
            });
            return Ok(());
        }
        let budget = self.view().budget();
        let block = self.current.get_or_insert_with(|| Block::at(next - 1));
        let (q_tokens, q_probs) = d.q.map(|q| (q.tokens, q.probs)).unwrap_or_default();
        block.drafts.push(pb::Draft {
            token: d.token,
            q_tokens,
            q_probs,
            accept_uniform: u[1],
            residual_uniform: u[2],
            mask: mask.as_ref().map(TokenMask::to_pb),
        });
        block.probs.push(d.probability);
        block.logprobs.push(d.logprobs);
        let length = self.ctl.length(self.edge.config.pipeline > 1);
        // `budget` was counted before this draft: it was the last one.
        if block.rows() >= length.min(self.cloud.max_rows().unwrap_or(usize::MAX)) || budget == 1 {
            self.send_block().await?;
        }
        Ok(())
    }

    /// Sends the block being built for verification.
    async fn send_block(&mut self) -> Result<(), GenerateError> {
        let mut block = self.current.take().expect("drafting a block");
        let end = block.start + block.rows();
        let ask = Ask {
            drafts: block.drafts.clone(),
            speculative: !self.sent.is_empty(),
            ..self.chooser.shaping.ask(pb::Want::Verify, 0.0, None)
        };
        let fresh = block.rows() + self.unsent_prompt;
        match self.cloud.sync(self.local.states(), SyncRange { pos: end, tail: block.rows(), fresh }, ask).await {
            Ok((bytes, Some(rx))) => {
                self.unsent_prompt = 0;
                self.em.summary.bytes_up_per_token += bytes as f64;
                block.rx = Some(rx);
                block.sent_at = Some(Instant::now());
                block.bytes_up = bytes;
                self.sent.push_back(block);
            }
            Ok((_, None)) => unreachable!("a verify step has a receiver"),
            Err(e) => {
                // The oldest unverified block is where the edge goes on from.
                let oldest = self.sent.pop_front().unwrap_or(block);
                self.fall_back(oldest, e)?;
            }
        }
        Ok(())
    }

    /// Waits for the oldest verification, up to the deadline.
    async fn wait_oldest(&mut self) {
        let endpoint = self.cloud.endpoint().unwrap_or_default();
        let deadline = self.deadline;
        let Some(front) = self.sent.front_mut() else { return };
        let left = deadline.saturating_sub(front.sent_at.expect("sent").elapsed());
        let rx = front.rx.as_mut().expect("sent blocks wait for an answer");
        front.ready = Some(match tokio::time::timeout(left, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(LinkError::Closed { endpoint, reason: "the session ended".into() }),
            Err(_) => Err(LinkError::Timeout { endpoint, after: deadline }),
        });
    }

    /// The cloud did not verify `block` (timeout, loss, refusal): the edge
    /// keeps the block's first position (its input was verified), answers
    /// that position with its own draft (tier `fallback`) and forgets
    /// everything drafted after it.
    fn fall_back(&mut self, mut block: Block, cause: LinkError) -> Result<(), GenerateError> {
        let reason = cause.to_string();
        self.cloud.lost(cause);
        let keep = block.start + 1;
        self.roll_back(keep);
        self.sent.clear();
        self.current = None;
        // The block's first draft is the token after the emitted ones.
        self.chooser.truncate(self.em.out.len() + 1)?;
        let first = &block.drafts[0];
        self.input = vec![first.token];
        self.go = self.em.emit(Emitted {
            reason: Some(reason),
            bytes_up: block.bytes_up,
            logprobs: block.logprobs.swap_remove(0),
            ..Emitted::new(keep, first.token, block.probs[0], Tier::Fallback, self.exit)
        });
        Ok(())
    }

    fn finish(mut self) -> Result<Generated, GenerateError> {
        let s = &mut self.em.summary;
        s.drafts_verified = Some(self.verified);
        s.acceptance_rate =
            Some(if self.verifications > 0 { self.accepted as f64 / self.verified.max(1) as f64 } else { 0.0 });
        s.mean_draft_length =
            Some(if self.verifications > 0 { self.verified as f64 / self.verifications as f64 } else { 0.0 });
        s.drafts_discarded = Some(self.discarded);
        self.em.finish(&self.cloud)
    }
}

impl Block {
    /// An empty block whose first state is at `start`.
    fn at(start: usize) -> Self {
        Self {
            start,
            drafts: Vec::new(),
            probs: Vec::new(),
            logprobs: Vec::new(),
            rx: None,
            ready: None,
            sent_at: None,
            bytes_up: 0,
        }
    }
}

/// The draft from the exit's raw logits, shaped as every choice is (bias,
/// then the grammar's `mask`): the argmax (greedy), or a draw from its top
/// entries (sampled, with the position's draft uniform). The draft
/// distribution is the exit's shaped and truncated the way the whole
/// model's will be (any draft distribution keeps the output exact; this one
/// wastes no drafts on tokens the whole model cannot choose).
fn draft(mut logits: Vec<f32>, shaping: &Shaping, mask: Option<&TokenMask>, uniform: f32) -> Drafted {
    let raw = shaping.logprobs.is_some().then(|| logits.clone());
    logits::shape(&mut logits, &shaping.bias, mask);
    let (token, probability, q) = match shaping.sampling {
        Sampling::Greedy => {
            let (token, probability) = top1(&logits);
            (token, probability, None)
        }
        Sampling::Temperature(t) => {
            let q = SparseDist::from_probs(&distribution(&logits, t, &shaping.truncation), DRAFT_TOP_K);
            let token = q.sample(uniform);
            (token, q.prob(token), Some(q))
        }
    };
    let logprobs = raw.and_then(|raw| shaping.report(&raw, token));
    Drafted { token, probability, q, logprobs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> View {
        View {
            in_flight: 0,
            unverified: 0,
            building: 0,
            emitted: 0,
            max_tokens: 10,
            cloud_due: true,
            pipeline: 8,
            ahead: 4,
            rate: 0.5,
        }
    }

    #[test]
    fn the_policy_drafts_waits_or_stops() {
        assert_eq!(next(&view()), Action::Draft { alone: false }, "nothing in flight: draft");
        // The cloud is away and nothing is in flight: the edge answers alone.
        assert_eq!(next(&View { cloud_due: false, ..view() }), Action::Draft { alone: true });
        // Drafting ahead stops where all in flight are unlikely to be
        // accepted (0.5^4 < 10%), and at the ahead limit.
        let v = View { in_flight: 3, unverified: 3, ..view() };
        assert_eq!(next(&v), Action::Draft { alone: false }, "0.5^3 = 12.5%");
        let v = View { in_flight: 4, unverified: 4, ahead: 8, ..view() };
        assert_eq!(next(&v), Action::WaitOldest, "0.5^4 = 6%");
        let v = View { in_flight: 2, unverified: 4, rate: 0.9, ..view() };
        assert_eq!(next(&v), Action::WaitOldest, "at the ahead limit");
        // A full pipeline waits; so does a spent budget.
        let v = View { in_flight: 8, unverified: 1, rate: 1.0, ahead: 100, ..view() };
        assert_eq!(next(&v), Action::WaitOldest);
        let v = View { in_flight: 1, unverified: 2, emitted: 8, ..view() };
        assert_eq!(next(&v), Action::WaitOldest, "every token left is drafted");
        assert_eq!(next(&View { emitted: 10, ..view() }), Action::Stop);
        // A block being built counts against the budget.
        assert_eq!(next(&View { building: 10, ..view() }), Action::Stop);
    }

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
