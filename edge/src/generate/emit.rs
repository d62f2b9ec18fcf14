//! The one token emitter of every mode: each token becomes a
//! [`TokenEvent`] for the caller, its text (whole characters only), the
//! summary's counters and the output.

use std::time::{Duration, Instant};

use offramp_common::codec;
use offramp_common::decoder::tokenizer::TextStream;
use offramp_proto as pb;

use super::link::CloudLink;
use super::stop::StopMatcher;
use super::{DecoderEdge, Finish, GenOptions, GenerateError, Generated, Mode, Summary, Tier, TokenEvent};

/// A token as a mode hands it to the emitter.
pub(super) struct Emitted {
    pub position: usize,
    pub token: u32,
    pub probability: f32,
    pub tier: Tier,
    /// The exit layer that answered (edge and fallback tokens).
    pub exit: Option<usize>,
    pub reason: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub endpoint: Option<String>,
    pub cloud_batch: Option<u32>,
    /// When asked for: the token's log-probabilities.
    pub logprobs: Option<pb::TokenLogprobs>,
}

impl Emitted {
    /// A token of `tier` with no cloud details yet.
    pub fn new(position: usize, token: u32, probability: f32, tier: Tier, exit: Option<usize>) -> Self {
        Self {
            position,
            token,
            probability,
            tier,
            exit,
            reason: None,
            bytes_up: 0,
            bytes_down: 0,
            endpoint: None,
            cloud_batch: None,
            logprobs: None,
        }
    }
}

/// Emitted tokens, their events and the summary.
pub(super) struct Emitter<'a, F: FnMut(&TokenEvent)> {
    edge: &'a DecoderEdge,
    on_token: F,
    text: TextStream,
    /// Stop sequences, when the generation has any.
    stop: Option<StopMatcher>,
    pub out: Vec<u32>,
    events: Vec<TokenEvent>,
    pub summary: Summary,
    pub started: Instant,
    last_at: Instant,
    first_token_at: Option<Duration>,
    max_tokens: usize,
    ignore_eos: bool,
}

impl<'a, F: FnMut(&TokenEvent)> Emitter<'a, F> {
    pub fn new(edge: &'a DecoderEdge, mode: Mode, prompt: usize, opts: &GenOptions, on_token: F) -> Self {
        let now = Instant::now();
        Self {
            edge,
            on_token,
            text: TextStream::default(),
            stop: (!opts.stop.is_empty()).then(|| StopMatcher::new(opts.stop.clone())),
            out: Vec::with_capacity(opts.max_tokens),
            events: Vec::with_capacity(opts.max_tokens),
            summary: Summary {
                mode: mode.name().into(),
                split: edge.split,
                encoding: codec::encoding_name(edge.config.encoding).into(),
                prompt_tokens: prompt,
                ..Summary::default()
            },
            started: now,
            last_at: now,
            first_token_at: None,
            max_tokens: opts.max_tokens,
            ignore_eos: opts.ignore_eos,
        }
    }

    /// Emits one token; false once generation should stop (end of turn,
    /// or the most tokens asked for). Bytes up are the caller's to count
    /// when sent (speculation thrown away included); bytes down count here.
    pub fn emit(&mut self, e: Emitted) -> bool {
        let tokenizer = self.edge.bundle.tokenizer();
        self.summary.count(e.tier);
        self.summary.bytes_down_per_token += e.bytes_down as f64;
        let now = Instant::now();
        let mut text = self.text.push(tokenizer, e.token);
        let mut stopped = false;
        if let Some(m) = &mut self.stop {
            // End-of-turn tokens show no text of their own.
            let piece = if tokenizer.is_stop(e.token) { "" } else { text.as_str() };
            (text, stopped) = m.push(piece);
        }
        let event = TokenEvent {
            index: self.out.len(),
            position: e.position,
            token: e.token,
            text,
            tier: e.tier,
            exit: e.exit,
            probability: e.probability,
            reason: e.reason,
            latency_us: now.duration_since(self.last_at).as_micros() as u64,
            bytes_up: e.bytes_up,
            bytes_down: e.bytes_down,
            endpoint: e.endpoint,
            cloud_batch: e.cloud_batch,
            logprobs: e.logprobs.map(Into::into),
        };
        self.last_at = now;
        (self.on_token)(&event);
        self.events.push(event);
        self.out.push(e.token);
        self.first_token_at.get_or_insert_with(|| self.started.elapsed());
        let stop = stopped || (tokenizer.is_stop(e.token) && !self.ignore_eos);
        !stop && self.out.len() < self.max_tokens
    }

    /// The generation's output: the summary's rates and the text.
    pub fn finish(self, cloud: &CloudLink) -> Result<Generated, GenerateError> {
        let mut summary = self.summary;
        summary.finish(self.out.len(), self.started.elapsed(), self.first_token_at, cloud);
        let tokenizer = self.edge.bundle.tokenizer();
        let ended_turn = self.out.last().is_some_and(|&t| tokenizer.is_stop(t));
        let (text, finish) = match &self.stop {
            Some(m) => (m.text().to_string(), if m.hit() || ended_turn { Finish::Stop } else { Finish::Length }),
            None => (tokenizer.decode(&self.out)?, if ended_turn { Finish::Stop } else { Finish::Length }),
        };
        Ok(Generated { tokens: self.out, text, events: self.events, summary, finish })
    }
}
