use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};

use super::error::DecoderError;

/// The shape of a llama-architecture decoder, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// `general.architecture` (only `llama` is supported).
    pub architecture: String,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub vocab: usize,
    /// The longest sequence (prompt + generated) a session may reach.
    pub context: usize,
    pub bos: u32,
    pub eos: u32,
}

impl DecoderConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Bytes of K and V for one position in one layer (f32).
    pub fn kv_bytes_per_position(&self) -> usize {
        2 * self.kv_heads * self.head_dim() * 4
    }

    pub(crate) fn from_gguf(md: &HashMap<String, Value>, max_context: usize) -> Result<Self, DecoderError> {
        let arch = string(md, "general.architecture")?;
        if arch != "llama" {
            return Err(DecoderError::Architecture(arch));
        }
        let u = |k: &str| -> Result<usize, DecoderError> { uint(md, &format!("llama.{k}")) };
        let layers = u("block_count")?;
        let hidden = u("embedding_length")?;
        let heads = u("attention.head_count")?;
        let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
        let rope_base = float(md, "llama.rope.freq_base").unwrap_or(10_000.0);
        let rms_eps = float(md, "llama.attention.layer_norm_rms_epsilon")?;
        let vocab = match md.get("llama.vocab_size") {
            Some(_) => u("vocab_size")?,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| DecoderError::meta("llama.vocab_size", "missing (and no tokenizer.ggml.tokens)"))?,
        };
        let config = Self {
            architecture: arch,
            layers,
            hidden,
            ffn: u("feed_forward_length")?,
            heads,
            kv_heads,
            rope_base,
            rms_eps,
            vocab,
            context: u("context_length")?.min(max_context),
            bos: uint(md, "tokenizer.ggml.bos_token_id")? as u32,
            eos: uint(md, "tokenizer.ggml.eos_token_id")? as u32,
        };
        config.check()?;
        Ok(config)
    }

    pub(crate) fn check(&self) -> Result<(), DecoderError> {
        let bad = |k: &str, d: String| Err(DecoderError::meta(k, d));
        if self.layers == 0 || self.hidden == 0 || self.heads == 0 || self.kv_heads == 0 || self.vocab == 0 {
            return bad("llama.*", format!("a zero size in {self:?}"));
        }
        if !self.hidden.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return bad(
                "llama.attention.head_count",
                format!("{} heads do not divide hidden {} evenly", self.heads, self.hidden),
            );
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad(
                "llama.attention.head_count_kv",
                format!("{} KV heads do not divide {} heads", self.kv_heads, self.heads),
            );
        }
        if !(self.rms_eps > 0.0 && self.rope_base > 0.0) {
            return bad("llama.rope.freq_base", "epsilon and RoPE base must be positive".into());
        }
        Ok(())
    }
}

fn get<'a>(md: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value, DecoderError> {
    md.get(key).ok_or_else(|| DecoderError::meta(key, "missing"))
}

pub(crate) fn string(md: &HashMap<String, Value>, key: &str) -> Result<String, DecoderError> {
    get(md, key)?.to_string().cloned().map_err(|e| DecoderError::meta(key, e))
}

pub(crate) fn uint(md: &HashMap<String, Value>, key: &str) -> Result<usize, DecoderError> {
    let v = get(md, key)?;
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => return Err(DecoderError::meta(key, format!("expected an unsigned integer, got {other:?}"))),
    };
    usize::try_from(n).map_err(|_| DecoderError::meta(key, format!("{n} does not fit")))
}

fn float(md: &HashMap<String, Value>, key: &str) -> Result<f32, DecoderError> {
    match get(md, key)? {
        Value::F32(x) => Ok(*x),
        Value::F64(x) => Ok(*x as f32),
        other => Err(DecoderError::meta(key, format!("expected a float, got {other:?}"))),
    }
}
