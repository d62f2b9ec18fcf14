//! What happens to a row of logits before a token is chosen from it, the
//! same on every side of a split: a bias added (OpenAI's `logit_bias`), then
//! a mask (the tokens a grammar allows next) — and what is reported of a row
//! (log-probabilities).
//!
//! The edge and the cloud shape a row the same way before the temperature,
//! the truncation ([`super::sample::Truncation`]) and the choice, so greedy,
//! sampled and speculative runs stay exact under any bias or mask: a
//! speculative draft is drawn from the edge's shaped exit distribution and
//! verified against the whole model's shaped distribution.

use offramp_proto as pb;

/// The largest bias magnitude (OpenAI's range).
pub const MAX_BIAS: f32 = 100.0;

/// Most alternatives a log-probability report lists (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A set of tokens that may (`allow`) or may not be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMask {
    allow: bool,
    /// Ascending, distinct.
    tokens: Vec<u32>,
}

/// Why a mask or bias a peer sent is not one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LogitsError {
    #[error("token mask: token {token} is outside the vocabulary of {vocab}")]
    MaskToken { token: u32, vocab: usize },
    #[error("token mask: the ids must ascend (a delta of 0 after token {after})")]
    MaskOrder { after: u32 },
    #[error("token mask: it allows no token")]
    MaskEmpty,
    #[error("logit bias: {tokens} tokens but {values} values")]
    BiasLengths { tokens: usize, values: usize },
    #[error("logit bias: token {token} is outside the vocabulary of {vocab}")]
    BiasToken { token: u32, vocab: usize },
    #[error("logit bias: token {0} is listed twice")]
    BiasDuplicate(u32),
    #[error("logit bias: the value for token {token} must be finite and in [-100, 100] (got {value})")]
    BiasValue { token: u32, value: f32 },
    #[error("top_logprobs must be at most {MAX_TOP_LOGPROBS} (got {0})")]
    TopLogprobs(u32),
}

impl TokenMask {
    /// The mask that allows what `allows` says of each token of a
    /// vocabulary of `vocab`, in whichever form lists fewer ids.
    pub fn from_fn(vocab: usize, allows: impl Fn(u32) -> bool) -> Self {
        let allowed: Vec<u32> = (0..vocab as u32).filter(|&t| allows(t)).collect();
        if allowed.len() * 2 <= vocab {
            return Self { allow: true, tokens: allowed };
        }
        let mut banned = Vec::with_capacity(vocab - allowed.len());
        let mut next = allowed.iter().peekable();
        for t in 0..vocab as u32 {
            if next.peek() == Some(&&t) {
                next.next();
            } else {
                banned.push(t);
            }
        }
        Self { allow: false, tokens: banned }
    }

    /// Only these tokens.
    pub fn allowing(mut tokens: Vec<u32>) -> Self {
        tokens.sort_unstable();
        tokens.dedup();
        Self { allow: true, tokens }
    }

    pub fn allows(&self, token: u32) -> bool {
        self.tokens.binary_search(&token).is_ok() == self.allow
    }

    /// Sets the logits of the tokens it does not allow to `-inf`.
    pub fn apply(&self, logits: &mut [f32]) {
        if self.allow {
            let mut next = self.tokens.iter().peekable();
            for (t, v) in logits.iter_mut().enumerate() {
                if next.peek() == Some(&&(t as u32)) {
                    next.next();
                } else {
                    *v = f32::NEG_INFINITY;
                }
            }
        } else {
            for &t in &self.tokens {
                if let Some(v) = logits.get_mut(t as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// The wire form (ids delta-encoded).
    pub fn to_pb(&self) -> pb::TokenMask {
        let mut prev = 0;
        let deltas = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let d = if i == 0 { t } else { t - prev };
                prev = t;
                d
            })
            .collect();
        pb::TokenMask { allow: self.allow, deltas }
    }

    /// Reads a peer's mask for a vocabulary of `vocab`.
    pub fn from_pb(m: &pb::TokenMask, vocab: usize) -> Result<Self, LogitsError> {
        let mut tokens = Vec::with_capacity(m.deltas.len());
        let mut prev: u64 = 0;
        for (i, &d) in m.deltas.iter().enumerate() {
            if i > 0 && d == 0 {
                return Err(LogitsError::MaskOrder { after: prev as u32 });
            }
            let t = if i == 0 { d as u64 } else { prev + d as u64 };
            if t >= vocab as u64 {
                return Err(LogitsError::MaskToken { token: t.min(u32::MAX as u64) as u32, vocab });
            }
            tokens.push(t as u32);
            prev = t;
        }
        let allowed = if m.allow { tokens.len() } else { vocab - tokens.len() };
        if allowed == 0 {
            return Err(LogitsError::MaskEmpty);
        }
        Ok(Self { allow: m.allow, tokens })
    }
}

/// Biases added to some tokens' logits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogitBias {
    /// Ascending by token.
    entries: Vec<(u32, f32)>,
}

impl LogitBias {
    /// Checks and keeps `entries` for a vocabulary of `vocab`.
    pub fn new(mut entries: Vec<(u32, f32)>, vocab: usize) -> Result<Self, LogitsError> {
        entries.sort_unstable_by_key(|e| e.0);
        for (i, &(token, value)) in entries.iter().enumerate() {
            if token as usize >= vocab {
                return Err(LogitsError::BiasToken { token, vocab });
            }
            if i > 0 && entries[i - 1].0 == token {
                return Err(LogitsError::BiasDuplicate(token));
            }
            if !(value.is_finite() && value.abs() <= MAX_BIAS) {
                return Err(LogitsError::BiasValue { token, value });
            }
        }
        Ok(Self { entries })
    }

    /// Reads the bias of a step.
    pub fn from_pb(step: &pb::DecodeStep, vocab: usize) -> Result<Self, LogitsError> {
        if step.bias_tokens.len() != step.bias_values.len() {
            return Err(LogitsError::BiasLengths { tokens: step.bias_tokens.len(), values: step.bias_values.len() });
        }
        Self::new(step.bias_tokens.iter().copied().zip(step.bias_values.iter().copied()).collect(), vocab)
    }

    /// Writes the bias into a step.
    pub fn write(&self, step: &mut pb::DecodeStep) {
        step.bias_tokens = self.entries.iter().map(|e| e.0).collect();
        step.bias_values = self.entries.iter().map(|e| e.1).collect();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn apply(&self, logits: &mut [f32]) {
        for &(t, b) in &self.entries {
            if let Some(v) = logits.get_mut(t as usize) {
                *v += b;
            }
        }
    }
}

/// A row as the choice sees it: `bias` added, then what `mask` forbids set
/// to `-inf`.
pub fn shape(logits: &mut [f32], bias: &LogitBias, mask: Option<&TokenMask>) {
    bias.apply(logits);
    if let Some(m) = mask {
        m.apply(logits);
    }
}

/// The log-probability of `token` under `softmax(logits)` (temperature 1)
/// and the `top` most likely tokens with theirs (ties by id).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> pb::TokenLogprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + logits.iter().map(|&v| (v - max).exp()).sum::<f32>().ln();
    let mut top_tokens: Vec<u32> = Vec::new();
    if top > 0 {
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let k = top.min(order.len());
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]).then(a.cmp(b));
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
        order.sort_unstable_by(by_logit);
        top_tokens = order;
    }
    pb::TokenLogprobs {
        token,
        logprob: logits[token as usize] - log_z,
        top_logprobs: top_tokens.iter().map(|&t| logits[t as usize] - log_z).collect(),
        top_tokens,
    }
}

/// Checks the number of alternatives asked for.
pub fn check_top_logprobs(n: u32) -> Result<usize, LogitsError> {
    if n as usize > MAX_TOP_LOGPROBS {
        return Err(LogitsError::TopLogprobs(n));
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_round_trips_in_its_shorter_form_and_masks_what_it_says() {
        let few = TokenMask::from_fn(10, |t| t == 2 || t == 7);
        assert!(few.allow && few.tokens == vec![2, 7]);
        let most = TokenMask::from_fn(10, |t| t != 4);
        assert!(!most.allow && most.tokens == vec![4]);
        for m in [&few, &most] {
            let back = TokenMask::from_pb(&m.to_pb(), 10).unwrap();
            assert_eq!(&back, m);
            let mut row = vec![0.0f32; 10];
            m.apply(&mut row);
            for t in 0..10u32 {
                assert_eq!(row[t as usize].is_finite(), m.allows(t), "token {t}");
            }
        }
        assert_eq!(few.to_pb().deltas, vec![2, 5]);
    }

    #[test]
    fn bad_masks_and_biases_are_refused_by_name() {
        let m = |allow, deltas: Vec<u32>| TokenMask::from_pb(&pb::TokenMask { allow, deltas }, 10);
        assert_eq!(m(true, vec![3, 0]), Err(LogitsError::MaskOrder { after: 3 }));
        assert_eq!(m(true, vec![3, 7]), Err(LogitsError::MaskToken { token: 10, vocab: 10 }));
        assert_eq!(
            m(true, vec![u32::MAX, u32::MAX]).unwrap_err(),
            LogitsError::MaskToken { token: u32::MAX, vocab: 10 }
        );
        assert_eq!(m(true, vec![]), Err(LogitsError::MaskEmpty));
        assert_eq!(m(false, (0..10).map(|i| u32::from(i > 0)).collect()), Err(LogitsError::MaskEmpty));
        assert!(m(false, vec![]).is_ok(), "bans nothing");
        assert_eq!(LogitBias::new(vec![(10, 1.0)], 10), Err(LogitsError::BiasToken { token: 10, vocab: 10 }));
        assert_eq!(LogitBias::new(vec![(3, 1.0), (3, 2.0)], 10), Err(LogitsError::BiasDuplicate(3)));
        assert_eq!(LogitBias::new(vec![(3, 101.0)], 10), Err(LogitsError::BiasValue { token: 3, value: 101.0 }));
        assert!(LogitBias::new(vec![(3, f32::NAN)], 10).is_err());
        let step = pb::DecodeStep { bias_tokens: vec![1], bias_values: vec![], ..Default::default() };
        assert_eq!(LogitBias::from_pb(&step, 10), Err(LogitsError::BiasLengths { tokens: 1, values: 0 }));
        assert_eq!(check_top_logprobs(21), Err(LogitsError::TopLogprobs(21)));
    }

    #[test]
    fn shaping_adds_the_bias_then_masks() {
        let bias = LogitBias::new(vec![(0, 5.0), (2, -100.0)], 4).unwrap();
        let mut row = vec![1.0f32, 2.0, 3.0, 0.0];
        shape(&mut row, &bias, Some(&TokenMask::allowing(vec![0, 2, 3])));
        assert_eq!(row, vec![6.0, f32::NEG_INFINITY, -97.0, 0.0]);
    }

    #[test]
    fn logprobs_are_the_log_softmax_and_its_top_entries() {
        let p = [0.1f32, 0.6, 0.3];
        let row: Vec<f32> = p.iter().map(|v| v.ln() + 7.0).collect();
        let l = logprobs(&row, 2, 2);
        assert!((l.logprob - 0.3f32.ln()).abs() < 1e-5);
        assert_eq!(l.top_tokens, vec![1, 2]);
        assert!((l.top_logprobs[0] - 0.6f32.ln()).abs() < 1e-5);
        assert!(logprobs(&row, 0, 0).top_tokens.is_empty());
    }
}
