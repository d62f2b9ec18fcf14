//! How a generation turns logits into tokens, on the edge and in what it
//! asks of the cloud: the sampling, truncation and logit bias the request
//! set, the grammar's mask at each position, and the log-probabilities it
//! wants reported. One per generation, shared by every mode, so the edge's
//! own choices (exits, drafts, fallbacks) and the cloud's are made from the
//! same shaped distribution.

use offramp_common::decoder::logits::{self, LogitBias, TokenMask};
use offramp_common::decoder::model::top1;
use offramp_common::decoder::sample::{Sampling, Truncation};
use offramp_proto as pb;

use super::grammar::Grammar;
use super::link::Ask;
use super::{DecoderEdge, GenOptions, GenerateError};

/// A choice the edge made from its own logits.
#[derive(Debug, Clone)]
pub(super) struct LocalChoice {
    pub token: u32,
    /// The token's probability (as [`Sampling::choose_within`] reports it).
    pub probability: f32,
    /// The shaped distribution's top-1 probability (the exit's confidence).
    pub p_top: f32,
    pub logprobs: Option<pb::TokenLogprobs>,
}

/// The settings a choice needs, cheap to move to a compute thread.
#[derive(Debug, Clone)]
pub(super) struct Shaping {
    pub sampling: Sampling,
    pub truncation: Truncation,
    pub bias: LogitBias,
    /// Alternatives to report with each token's log-probability (`None`:
    /// no log-probabilities).
    pub logprobs: Option<usize>,
}

impl Shaping {
    /// The edge's choice from its raw `logits` under `mask`, with the
    /// position's uniform number.
    pub fn choose(&self, mut logits: Vec<f32>, mask: Option<&TokenMask>, uniform: f32) -> LocalChoice {
        let reported = self.logprobs.map(|top| (top, logits.clone()));
        logits::shape(&mut logits, &self.bias, mask);
        let (_, p_top) = top1(&logits);
        let (token, probability) = self.sampling.choose_within(&logits, uniform, &self.truncation);
        let logprobs = reported.map(|(top, raw)| logits::logprobs(&raw, token, top));
        LocalChoice { token, probability, p_top, logprobs }
    }

    /// The log-probabilities of `token` under the raw `logits`, if wanted.
    pub fn report(&self, logits: &[f32], token: u32) -> Option<pb::TokenLogprobs> {
        self.logprobs.map(|top| logits::logprobs(logits, token, top))
    }

    /// The cloud's side of a step: this shaping, `mask` for a token step.
    pub fn ask(&self, want: pb::Want, uniform: f32, mask: Option<TokenMask>) -> Ask {
        let temperature = match self.sampling {
            Sampling::Temperature(t) => t,
            Sampling::Greedy => 0.0,
        };
        Ask {
            want,
            temperature,
            uniform,
            truncation: self.truncation,
            bias: self.bias.clone(),
            mask,
            logprobs: self.logprobs,
            drafts: Vec::new(),
            speculative: false,
        }
    }
}

/// A generation's chooser: its shaping and its grammar's state.
pub(super) struct Chooser {
    pub shaping: Shaping,
    grammar: Option<Grammar>,
}

impl Chooser {
    pub fn new(edge: &DecoderEdge, opts: &GenOptions) -> Result<Self, GenerateError> {
        let grammar = opts.constraint.as_ref().map(|c| edge.grammar(c)).transpose()?;
        Ok(Self {
            shaping: Shaping {
                sampling: opts.sampling,
                truncation: opts.truncation,
                bias: opts.logit_bias.clone(),
                logprobs: opts.logprobs,
            },
            grammar,
        })
    }

    /// The tokens allowed at the next position (`None`: any).
    pub fn mask(&mut self) -> Result<Option<TokenMask>, GenerateError> {
        Ok(self.grammar.as_mut().map(Grammar::mask).transpose()?)
    }

    /// Takes `token` as the next one (drafts in flight included).
    pub fn consume(&mut self, token: u32) -> Result<(), GenerateError> {
        if let Some(g) = &mut self.grammar {
            g.consume(token)?;
        }
        Ok(())
    }

    /// Forgets what came after the first `len` tokens (rejected drafts).
    pub fn truncate(&mut self, len: usize) -> Result<(), GenerateError> {
        if let Some(g) = &mut self.grammar {
            g.truncate(len)?;
        }
        Ok(())
    }
}
