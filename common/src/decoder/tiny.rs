//! A tiny llama-architecture GGUF from seeded weights, in the same format as
//! a real one (Q4_1 projections, Q8_0 tied embeddings, a byte-level BPE
//! vocabulary with ChatML control tokens): for tests and smoke runs, no
//! download.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::error::DecoderError;
use crate::rng::SplitMix64;

/// The shape of the tiny model.
#[derive(Debug, Clone, Copy)]
pub struct TinySpec {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub seed: u64,
    /// Scale of the layers' projections (larger: the layers move the
    /// residual stream further from the embedding, and shallow exits agree
    /// less with the last layer).
    pub layer_scale: f32,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self { layers: 6, hidden: 64, heads: 4, kv_heads: 2, ffn: 128, seed: 7, layer_scale: 1.0 }
    }
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 10] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("Ġt", "he"),
    ("Ġ", "s"),
    ("r", "e"),
];

/// GPT-2's byte-to-character table (printable bytes stand for themselves,
/// the rest are shifted past 255).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut pairs: Vec<(u32, u32)> = printable.into_iter().zip(chars).collect();
    pairs.sort();
    pairs.into_iter().map(|(_, c)| char::from_u32(c).expect("valid char")).collect()
}

/// Writes the tiny model to `path`.
pub fn write_tiny_gguf(path: &Path, spec: TinySpec) -> Result<(), DecoderError> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_chars().into_iter().map(String::from));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let types: Vec<Value> = (0..tokens.len()).map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 })).collect();
    let vocab = tokens.len();
    let dev = Device::Cpu;
    let mut rng = SplitMix64::new(spec.seed);
    let mut dense = |rows: usize, cols: usize, scale: f32| -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f32() * 2.0 - 1.0) * scale).collect();
        Tensor::from_vec(v, (rows, cols), &dev).expect("shape matches")
    };
    let q = |t: Tensor, dt: GgmlDType| QTensor::quantize(&t, dt).map_err(DecoderError::from);
    let ones = |n: usize| -> Result<QTensor, DecoderError> {
        Ok(QTensor::quantize(&Tensor::ones(n, candle_core::DType::F32, &dev)?, GgmlDType::F32)?)
    };
    let h = spec.hidden;
    let kvd = spec.kv_heads * (h / spec.heads);
    let s = spec.layer_scale / (h as f32).sqrt();
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), q(dense(vocab, h, 1.0), GgmlDType::Q8_0)?),
        ("output_norm.weight".into(), ones(h)?),
    ];
    for l in 0..spec.layers {
        let name = |w: &str| format!("blk.{l}.{w}.weight");
        tensors.push((name("attn_norm"), ones(h)?));
        tensors.push((name("attn_q"), q(dense(h, h, s), GgmlDType::Q4_1)?));
        tensors.push((name("attn_k"), q(dense(kvd, h, s), GgmlDType::Q4_1)?));
        tensors.push((name("attn_v"), q(dense(kvd, h, s), GgmlDType::Q4_1)?));
        tensors.push((name("attn_output"), q(dense(h, h, s), GgmlDType::Q4_1)?));
        tensors.push((name("ffn_norm"), ones(h)?));
        tensors.push((name("ffn_gate"), q(dense(spec.ffn, h, s), GgmlDType::Q4_1)?));
        tensors.push((name("ffn_up"), q(dense(spec.ffn, h, s), GgmlDType::Q4_1)?));
        tensors.push((
            name("ffn_down"),
            q(dense(h, spec.ffn, spec.layer_scale / (spec.ffn as f32).sqrt()), GgmlDType::Q4_1)?,
        ));
    }
    let template = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.basename", Value::String("tiny-llama".into())),
        ("llama.block_count", Value::U32(spec.layers as u32)),
        ("llama.context_length", Value::U32(512)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.feed_forward_length", Value::U32(spec.ffn as u32)),
        ("llama.attention.head_count", Value::U32(spec.heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(spec.kv_heads as u32)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.chat_template", Value::String(template.into())),
    ];
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DecoderError::io(parent, e))?;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| DecoderError::io(path, e))?);
    gguf_file::write(&mut f, &md_refs, &refs)
        .map_err(|e| DecoderError::Gguf { path: path.to_path_buf(), detail: e.to_string() })?;
    use std::io::Write;
    f.flush().map_err(|e| DecoderError::io(path, e))
}
