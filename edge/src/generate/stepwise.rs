//! One token per step: `split`, `early-exit`, `all-cloud` and `all-edge`.
//!
//! Each step runs layers `0..K` here ([`Stepwise::edge_step`]), asks the
//! mode's policy where the token comes from ([`source`]: pure, no I/O, unit
//! tested), gets it ([`Stepwise::choose`]: the edge's head, or the cloud
//! through the link with a fallback to the edge), and emits it
//! ([`Stepwise::emit`]).

use std::time::Duration;

use offramp_common::decoder::logits::TokenMask;
use offramp_common::decoder::sample::Sampling;
use offramp_common::decoder::Tensor;
use offramp_common::rng::SplitMix64;
use offramp_proto as pb;
use tokio::sync::oneshot;

use super::choose::{Chooser, LocalChoice};
use super::emit::{Emitted, Emitter};
use super::link::{Ask, CloudLink, SyncRange};
use super::local::{LocalDecoder, Stepped};
use super::{await_reply, DecoderEdge, GenOptions, GenerateError, Generated, Mode};
use super::{Tier, TokenEvent};
use crate::link::session::StepReply;

/// Where a step's token comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The edge's own head: K = N, nothing to ask.
    Edge,
    /// The edge's exit was confident: its token, the state still sent to
    /// the cloud without waiting (its cache stays whole).
    ConfidentExit,
    /// The cloud's token (the edge answers only if it does not).
    Cloud,
}

/// The mode's policy for one step: `p_top` is the exit's top-1
/// probability (early-exit only), `threshold` the exit's.
pub(crate) fn source(mode: Mode, k: usize, n: usize, p_top: Option<f32>, threshold: Option<f32>) -> Source {
    if k == n {
        return Source::Edge;
    }
    match (mode, p_top) {
        (Mode::EarlyExit, Some(p)) if p >= threshold.unwrap_or(1.0) => Source::ConfidentExit,
        _ => Source::Cloud,
    }
}

/// A generation in progress, one token per step.
struct Stepwise<'e, F: FnMut(&TokenEvent)> {
    edge: &'e DecoderEdge,
    em: Emitter<'e, F>,
    opts: &'e GenOptions,
    mode: Mode,
    deadline: Duration,
    local: LocalDecoder,
    cloud: CloudLink,
    chooser: Chooser,
    input: Vec<u32>,
    rng: SplitMix64,
    /// Edge tokens whose cloud answer is awaited at the end (`--agreement`).
    checks: Vec<(u32, oneshot::Receiver<StepReply>)>,
}

/// Generates after `prompt` one token per step (the caller checked the
/// request).
pub(super) async fn generate(
    edge: &DecoderEdge,
    prompt: &[u32],
    opts: &GenOptions,
    mode: Mode,
    on_token: impl FnMut(&TokenEvent),
) -> Result<Generated, GenerateError> {
    let mut run = Stepwise::new(edge, prompt, opts, mode, on_token)?;
    loop {
        let step = run.edge_step().await?;
        let down_before = run.cloud.bytes_down();
        let chosen = run.choose(&step).await?;
        run.chooser.consume(chosen.token)?;
        if !run.emit(down_before, chosen) {
            break;
        }
    }
    run.finish().await
}

impl<'e, F: FnMut(&TokenEvent)> Stepwise<'e, F> {
    fn new(
        edge: &'e DecoderEdge,
        prompt: &[u32],
        opts: &'e GenOptions,
        mode: Mode,
        on_token: F,
    ) -> Result<Self, GenerateError> {
        let c = edge.bundle.config();
        let max_positions = prompt.len() + opts.max_tokens;
        let spec = edge.session_spec(max_positions);
        Ok(Self {
            edge,
            em: Emitter::new(edge, mode, prompt.len(), opts, on_token),
            opts,
            mode,
            deadline: opts.deadline.unwrap_or(edge.config.deadline),
            local: LocalDecoder::new(edge, max_positions),
            cloud: CloudLink::new(edge.endpoints.clone(), spec, c.hidden, edge.timing()),
            chooser: Chooser::new(edge, opts)?,
            input: prompt.to_vec(),
            rng: SplitMix64::new(opts.seed),
            checks: Vec::new(),
        })
    }

    /// Layers `0..K` over the step's input (the exit's state tapped on the
    /// way); the local decoder keeps the layer-K states.
    async fn edge_step(&mut self) -> Result<Stepped<()>, GenerateError> {
        self.local.step(std::mem::take(&mut self.input), |_, _, _| Ok(())).await
    }

    /// The edge head's choice at this step, under the position's mask.
    fn local(&self, tap: &Tensor, mask: Option<&TokenMask>, uniform: f32) -> Result<LocalChoice, GenerateError> {
        Ok(self.chooser.shaping.choose(self.edge.local_logits(tap)?, mask, uniform))
    }

    /// The step's token, where the mode's policy says it comes from.
    async fn choose(&mut self, step: &Stepped<()>) -> Result<Emitted, GenerateError> {
        let uniform = self.rng.next_f32();
        let mask = self.chooser.mask()?;
        let (k, n) = (self.edge.split, self.edge.bundle.num_layers());
        let local = match (k == n, self.mode) {
            (true, _) | (false, Mode::EarlyExit) => Some(self.local(&step.tap, mask.as_ref(), uniform)?),
            _ => None,
        };
        let source = source(self.mode, k, n, local.as_ref().map(|l| l.p_top), self.edge.threshold);
        let want = match self.opts.sampling {
            Sampling::Greedy => pb::Want::Argmax,
            Sampling::Temperature(_) => pb::Want::Sample,
        };
        let (t, pos) = (step.rows, self.local.len());
        let range = SyncRange { pos, tail: t, fresh: t };
        let edge_token = |l: LocalChoice, tier, exit| Emitted {
            logprobs: l.logprobs,
            ..Emitted::new(pos, l.token, l.probability, tier, exit)
        };
        match source {
            Source::Edge => Ok(edge_token(local.expect("computed at K = N"), Tier::Edge, Some(n))),
            Source::ConfidentExit => {
                let mut chosen = edge_token(local.expect("computed for early exit"), Tier::Edge, self.edge.exit);
                // Keep the cloud's cache whole without waiting for it.
                let ask = if self.opts.agreement {
                    Ask { logprobs: None, ..self.chooser.shaping.ask(want, uniform, mask) }
                } else {
                    Ask::none()
                };
                if let Ok((sent, rx)) = self.cloud.sync(self.local.states(), range, ask).await {
                    chosen.bytes_up = sent;
                    if let Some(rx) = rx {
                        self.checks.push((chosen.token, rx));
                    }
                }
                Ok(chosen)
            }
            Source::Cloud => {
                let ask = self.chooser.shaping.ask(want, uniform, mask.clone());
                let (answer, bytes_up) = match self.cloud.sync(self.local.states(), range, ask).await {
                    Ok((sent, Some(rx))) => {
                        self.em.summary.round_trips_per_token += 1.0;
                        (await_reply(rx, self.deadline, self.cloud.endpoint()).await, sent)
                    }
                    Ok((_, None)) => unreachable!("a step that wants a token has a receiver"),
                    Err(e) => (Err(e), 0),
                };
                match answer {
                    Ok(r) => Ok(Emitted {
                        bytes_up,
                        endpoint: self.cloud.endpoint(),
                        cloud_batch: Some(r.batch_size),
                        logprobs: r.logprobs.into_iter().next(),
                        ..Emitted::new(pos, r.token, r.probability, Tier::Cloud, None)
                    }),
                    Err(e) => {
                        let reason = e.to_string();
                        self.cloud.lost(e);
                        let l = match local {
                            Some(l) => l,
                            None => self.local(&step.tap, mask.as_ref(), uniform)?,
                        };
                        let exit = Some(self.edge.exit.unwrap_or(k));
                        Ok(Emitted { reason: Some(reason), bytes_up, ..edge_token(l, Tier::Fallback, exit) })
                    }
                }
            }
        }
    }

    /// Emits the chosen token; false once generation should stop.
    fn emit(&mut self, down_before: u64, mut e: Emitted) -> bool {
        self.em.summary.bytes_up_per_token += e.bytes_up as f64;
        e.bytes_down = self.cloud.bytes_down().saturating_sub(down_before);
        self.input = vec![e.token];
        self.em.emit(e)
    }

    /// Agreement (from the answers awaited for edge tokens) and the summary.
    async fn finish(mut self) -> Result<Generated, GenerateError> {
        let tokens = self.em.out.len();
        if !self.checks.is_empty() || (self.opts.agreement && self.mode != Mode::AllEdge) {
            let (mut agree, mut answered) = (0usize, 0usize);
            for (token, rx) in std::mem::take(&mut self.checks) {
                if let Ok(Ok(Ok(r))) = tokio::time::timeout(self.deadline, rx).await {
                    answered += 1;
                    agree += usize::from(r.token == token);
                }
            }
            let s = &mut self.em.summary;
            s.edge_agreement = Some(if answered > 0 { agree as f64 / answered as f64 } else { 1.0 });
            let disagree = answered - agree;
            s.agreement = Some(if tokens > 0 { 1.0 - disagree as f64 / tokens as f64 } else { 1.0 });
        }
        self.em.finish(&self.cloud)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_picks_the_source_of_each_token() {
        // K = N: always the edge, whatever the mode.
        assert_eq!(source(Mode::AllEdge, 6, 6, None, None), Source::Edge);
        assert_eq!(source(Mode::EarlyExit, 6, 6, Some(0.1), Some(0.9)), Source::Edge);
        // Split and all-cloud: always the cloud.
        assert_eq!(source(Mode::Split, 3, 6, None, None), Source::Cloud);
        assert_eq!(source(Mode::AllCloud, 0, 6, None, None), Source::Cloud);
        // Early exit: the exit when at or over its threshold.
        assert_eq!(source(Mode::EarlyExit, 3, 6, Some(0.95), Some(0.9)), Source::ConfidentExit);
        assert_eq!(source(Mode::EarlyExit, 3, 6, Some(0.9), Some(0.9)), Source::ConfidentExit);
        assert_eq!(source(Mode::EarlyExit, 3, 6, Some(0.89), Some(0.9)), Source::Cloud);
        // No threshold: never confident short of certainty.
        assert_eq!(source(Mode::EarlyExit, 3, 6, Some(0.99), None), Source::Cloud);
    }
}
