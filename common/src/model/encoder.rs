//! BERT-family encoder blocks: embeddings, the post-LN encoder layer, and
//! sequence pooling, on candle.
//!
//! Inputs are padded batches `[B, T, H]` with a [`SeqMask`] saying how many
//! tokens of each sample are real. Padding never influences a real token:
//! attention adds a large negative number to the scores of padded keys, and
//! mean pooling averages real tokens only. So a sample's real-token states
//! are the same whether it runs alone or padded in a batch, and only its real
//! tokens need to cross a split.
//!
//! The same code serves inference and training. At inference (weights that
//! track no gradients) a layer keeps its projections transposed and
//! contiguous once, with query, key and value fused into one matrix, so a
//! forward pass does no weight repacking; the GEMMs are candle's (gemm's
//! AVX-512 / AVX2 micro-kernels, blocked for these wide matrices), the
//! attention softmax, the feed-forward bias and GELU, and each bias,
//! residual and LayerNorm are the project's fused kernels (`kernels::rows`,
//! `kernels::activation`), on the caller's thread at batch 1. When weights
//! or inputs track gradients (fine-tuning) the differentiable compositions
//! run instead.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};

use super::kernels::{AddLayerNorm, BiasGelu, MaskedSoftmax};
use super::manifest::PoolMode;

/// Added to the attention scores of padded keys: far below any real score,
/// but finite, so a row never becomes NaN.
const MASKED_SCORE: f32 = -1e30;

/// Which tokens of a padded batch are real.
#[derive(Debug, Clone)]
pub struct SeqMask {
    /// Real tokens per sample (each at least 1 and at most `t`).
    lengths: Vec<usize>,
    /// Padded length.
    t: usize,
    /// `[B, 1, 1, T]`: 0 for real keys, [`MASKED_SCORE`] for padding; `None`
    /// when no sample is padded.
    additive: Option<Tensor>,
    /// `[B, T, 1]`: 1 for real tokens, 0 for padding.
    keep: Tensor,
}

impl SeqMask {
    /// The mask of a batch padded to `t` tokens whose samples hold `lengths`
    /// real tokens.
    pub fn new(lengths: Vec<usize>, t: usize, device: &Device) -> Result<Self> {
        let b = lengths.len();
        if let Some(&bad) = lengths.iter().find(|&&l| l == 0 || l > t) {
            candle_core::bail!("a sample of {bad} tokens in a batch padded to {t}");
        }
        let keep: Vec<f32> = lengths.iter().flat_map(|&l| (0..t).map(move |i| if i < l { 1.0 } else { 0.0 })).collect();
        let additive = if lengths.iter().all(|&l| l == t) {
            None
        } else {
            let add: Vec<f32> = keep.iter().map(|&k| if k > 0.0 { 0.0 } else { MASKED_SCORE }).collect();
            Some(Tensor::from_vec(add, (b, 1, 1, t), device)?)
        };
        Ok(Self { lengths, t, additive, keep: Tensor::from_vec(keep, (b, t, 1), device)? })
    }

    pub fn lengths(&self) -> &[usize] {
        &self.lengths
    }

    /// Padded length of the batch.
    pub fn padded_len(&self) -> usize {
        self.t
    }

    /// The mask of the samples `rows` (in that order), as after
    /// `index_select(rows, 0)` on the batch.
    pub fn select(&self, rows: &[usize], device: &Device) -> Result<Self> {
        Self::new(rows.iter().map(|&r| self.lengths[r]).collect(), self.t, device)
    }
}

/// Whether a forward pass must keep the autograd graph.
fn differentiable(x: &Tensor, weight: &Tensor) -> bool {
    x.track_op() || weight.track_op() || !x.device().is_cpu()
}

fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, grad: bool) -> Result<Tensor> {
    if grad {
        candle_nn::ops::layer_norm_slow(x, w, b, eps as f32)
    } else {
        candle_nn::ops::layer_norm(x, w, b, eps as f32)
    }
}

fn softmax_last(x: &Tensor, grad: bool) -> Result<Tensor> {
    if grad {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `x [M, in] @ w_t [in, out] + b`.
fn affine(x: &Tensor, w_t: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.matmul(w_t)?.broadcast_add(b)
}

/// BERT embeddings: word + position + token type 0, then LayerNorm.
#[derive(Debug, Clone)]
pub struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln_weight: Tensor,
    ln_bias: Tensor,
    eps: f64,
}

impl Embeddings {
    pub fn new(mut param: impl FnMut(&str) -> Tensor, eps: f64) -> Self {
        Self {
            word: param("word"),
            position: param("position"),
            token_type: param("token_type"),
            ln_weight: param("ln.weight"),
            ln_bias: param("ln.bias"),
            eps,
        }
    }

    /// `ids`: `[B, T]` token ids (as f32, checked by the executor to be
    /// integers below the vocabulary size) → `[B, T, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hidden = self.word.dim(1)?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let words = self.word.index_select(&flat, 0)?.reshape((b, t, hidden))?;
        let positions = self.position.narrow(0, 0, t)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let x = words.broadcast_add(&positions.broadcast_add(&token_type)?)?;
        let grad = differentiable(&x, &self.ln_weight);
        layer_norm(&x, &self.ln_weight, &self.ln_bias, self.eps, grad)
    }
}

/// One post-LN BERT encoder layer.
#[derive(Debug, Clone)]
pub struct EncoderLayer {
    query: (Tensor, Tensor),
    key: (Tensor, Tensor),
    value: (Tensor, Tensor),
    attn_out: (Tensor, Tensor),
    attn_ln: (Tensor, Tensor),
    ffn_in: (Tensor, Tensor),
    ffn_out: (Tensor, Tensor),
    ffn_ln: (Tensor, Tensor),
    heads: usize,
    eps: f64,
    /// Inference weights, transposed and contiguous once.
    packed: Option<Packed>,
}

#[derive(Debug, Clone)]
struct Packed {
    /// `[hidden, 3 * hidden]`: query, key and value side by side.
    qkv_t: Tensor,
    qkv_b: Tensor,
    attn_out_t: Tensor,
    /// Attention output bias + residual + LayerNorm.
    attn_ln: Arc<AddLayerNorm>,
    ffn_in_t: Tensor,
    /// The feed-forward bias fused with its GELU.
    ffn_in_gelu: Arc<BiasGelu>,
    ffn_out_t: Tensor,
    /// Feed-forward output bias + residual + LayerNorm.
    ffn_ln: Arc<AddLayerNorm>,
}

impl EncoderLayer {
    pub fn new(mut param: impl FnMut(&str) -> Tensor, heads: usize, eps: f64) -> Self {
        let mut pair = |name: &str| (param(&format!("{name}.weight")), param(&format!("{name}.bias")));
        Self {
            query: pair("query"),
            key: pair("key"),
            value: pair("value"),
            attn_out: pair("attn_out"),
            attn_ln: pair("attn_ln"),
            ffn_in: pair("ffn_in"),
            ffn_out: pair("ffn_out"),
            ffn_ln: pair("ffn_ln"),
            heads,
            eps,
            packed: None,
        }
    }

    /// Packs the inference weights (or drops them, `pack = false`). Weights
    /// that track gradients are never packed: the packed copy would go stale
    /// after an optimizer step.
    pub fn set_packed(&mut self, pack: bool) -> Result<()> {
        self.packed = if pack && !self.query.0.track_op() {
            let t = |w: &Tensor| w.t()?.contiguous();
            Some(Packed {
                qkv_t: Tensor::cat(&[&self.query.0, &self.key.0, &self.value.0], 0)?.t()?.contiguous()?,
                qkv_b: Tensor::cat(&[&self.query.1, &self.key.1, &self.value.1], 0)?,
                attn_out_t: t(&self.attn_out.0)?,
                attn_ln: Arc::new(AddLayerNorm::new(&self.attn_out.1, &self.attn_ln.0, &self.attn_ln.1, self.eps)?),
                ffn_in_t: t(&self.ffn_in.0)?,
                ffn_in_gelu: Arc::new(BiasGelu::new(&self.ffn_in.1)?),
                ffn_out_t: t(&self.ffn_out.0)?,
                ffn_ln: Arc::new(AddLayerNorm::new(&self.ffn_out.1, &self.ffn_ln.0, &self.ffn_ln.1, self.eps)?),
            })
        } else {
            None
        };
        Ok(())
    }

    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// `[B, T, hidden]` → `[B, T, hidden]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&SeqMask>) -> Result<Tensor> {
        let grad = differentiable(x, &self.query.0);
        match (&self.packed, grad) {
            (Some(p), false) => self.forward_packed(p, x, mask),
            _ => self.forward_reference(x, mask, grad),
        }
    }

    /// Inference on the packed weights: fused QKV projection, one copy to
    /// split heads, the masked softmax, bias + GELU and bias + residual +
    /// LayerNorm kernels; the GEMMs are candle's.
    fn forward_packed(&self, p: &Packed, x: &Tensor, mask: Option<&SeqMask>) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let (heads, d) = (self.heads, h / self.heads);
        let rows = x.reshape((b * t, h))?;
        // [B·T, 3H] → [3, B, heads, T, d]
        let qkv =
            affine(&rows, &p.qkv_t, &p.qkv_b)?.reshape((b, t, 3, heads, d))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = q.matmul(&k.t()?)?;
        let lengths = mask.map(|m| m.lengths());
        let probs = MaskedSoftmax { scale: 1.0 / (d as f32).sqrt(), lengths }.forward(&scores)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))?;
        // [B, T, H] into the LayerNorms, so they see the batch size (batch 1
        // stays on this thread).
        let attn = p.attn_ln.forward(&context.matmul(&p.attn_out_t)?.reshape((b, t, h))?, x)?;
        let f = p.ffn_in_gelu.forward(&attn.reshape((b * t, h))?.matmul(&p.ffn_in_t)?)?;
        p.ffn_ln.forward(&f.matmul(&p.ffn_out_t)?.reshape((b, t, h))?, &attn)
    }

    /// candle's ops throughout: the differentiable path for training, and
    /// the reference the packed path is tested against.
    fn forward_reference(&self, x: &Tensor, mask: Option<&SeqMask>, grad: bool) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let (heads, d) = (self.heads, h / self.heads);
        let rows = x.reshape((b * t, h))?;
        let split_heads = |y: Tensor| y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous();
        let lin = |x: &Tensor, (w, bias): &(Tensor, Tensor)| x.matmul(&w.t()?)?.broadcast_add(bias);
        let (q, k, v) = (lin(&rows, &self.query)?, lin(&rows, &self.key)?, lin(&rows, &self.value)?);
        let (q, k, v) = (split_heads(q)?, split_heads(k)?, split_heads(v)?);
        let mut scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
        if let Some(additive) = mask.and_then(|m| m.additive.as_ref()) {
            scores = scores.broadcast_add(additive)?;
        }
        let probs = softmax_last(&scores, grad)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * t, h))?;
        let attn = lin(&context, &self.attn_out)?;
        let attn = layer_norm(&(attn + &rows)?, &self.attn_ln.0, &self.attn_ln.1, self.eps, grad)?;
        let f = lin(&attn, &self.ffn_in)?.gelu_erf()?;
        let out = lin(&f, &self.ffn_out)?;
        let y = layer_norm(&(out + attn)?, &self.ffn_ln.0, &self.ffn_ln.1, self.eps, grad)?;
        y.reshape((b, t, h))
    }
}

/// `[B, T, H]` → `[B, H]`.
pub fn pool(x: &Tensor, mode: PoolMode, mask: Option<&SeqMask>) -> Result<Tensor> {
    match mode {
        PoolMode::Cls => x.narrow(1, 0, 1)?.squeeze(1),
        PoolMode::Mean => {
            let (b, t, _) = x.dims3()?;
            let Some(mask) = mask.filter(|m| m.lengths.len() == b && m.t == t) else {
                return x.mean(1);
            };
            let lengths: Vec<f32> = mask.lengths.iter().map(|&l| 1.0 / l as f32).collect();
            let inv = Tensor::from_vec(lengths, (b, 1), x.device())?;
            x.broadcast_mul(&mask.keep)?.sum(1)?.broadcast_mul(&inv)
        }
    }
}
