//! The llama forward pass over any range of layers, for one session or many
//! at once.
//!
//! A batch of [`SessionStep`]s (each: a session's KV cache, its new positions'
//! states, where they start) goes through a layer together: the norms and
//! every projection (Q, K, V, output, gate, up, down) run as one quantized
//! matmul over the rows of all sessions; only RoPE, the cache append and the
//! attention itself run per session. Quantized matmul treats rows
//! independently, so a batched answer equals the unbatched one.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use super::cache::KvCache;
use super::config::DecoderConfig;
use super::error::DecoderError;

/// One session's part of a batched forward pass: its cache, the states of
/// its new positions (`[t, hidden]`, replaced by the states after the
/// layers run) and the position of the first of them.
pub struct SessionStep<'a> {
    pub cache: &'a mut KvCache,
    pub x: Tensor,
    pub pos: usize,
}

struct LayerWeights {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A projection: Q4_1 and Q8_0 through [`super::q4`], other storage types
/// through candle's `QMatMul`.
enum Linear {
    Q41(super::q4::Q41Matrix),
    Q80(super::q4::Q80Matrix),
    Candle(QMatMul),
}

impl Linear {
    fn new(t: QTensor) -> Result<Self, DecoderError> {
        if let Some(m) = super::q4::Q41Matrix::from_qtensor(&t)? {
            return Ok(Self::Q41(m));
        }
        if let Some(m) = super::q4::Q80Matrix::from_qtensor(&t)? {
            return Ok(Self::Q80(m));
        }
        Ok(Self::Candle(QMatMul::from_qtensor(t)?))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor, DecoderError> {
        match self {
            Self::Q41(m) => m.forward(x),
            Self::Q80(m) => m.forward(x),
            Self::Candle(m) => Ok(m.forward(x)?),
        }
    }
}

/// Token embeddings: rows dequantized on lookup (the table stays as the GGUF
/// stores it, shared with the tied LM head).
struct Embeddings {
    table: Arc<QTensor>,
    /// The dequantized table, for storage types without a row decoder.
    dense: Option<Tensor>,
}

/// The layers (and embeddings, final norm, LM head) one side holds.
pub struct DecoderModel {
    config: DecoderConfig,
    holds: Range<usize>,
    layers: Vec<Option<LayerWeights>>,
    embeddings: Option<Embeddings>,
    norm: Option<Tensor>,
    head: Option<Linear>,
    /// Exit adapters by layer: `h + (h·A)·B` before the final norm and head.
    adapters: std::collections::BTreeMap<usize, (Tensor, Tensor)>,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel")
            .field("holds", &self.holds)
            .field("embeddings", &self.embeddings.is_some())
            .field("head", &self.head.is_some())
            .finish()
    }
}

/// Name of layer `i`'s tensor `what` in a GGUF file.
pub(crate) fn layer_tensor(i: usize, what: &str) -> String {
    format!("blk.{i}.{what}.weight")
}

/// The tensor names of one llama layer, in file order.
pub(crate) const LAYER_TENSORS: [&str; 9] =
    ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"];
pub(crate) const EMBEDDINGS: &str = "token_embd.weight";
pub(crate) const OUTPUT_NORM: &str = "output_norm.weight";
pub(crate) const OUTPUT: &str = "output.weight";

impl DecoderModel {
    /// Loads layers `holds` (and the embeddings and/or the final norm + LM
    /// head when asked) from a GGUF file.
    // Long on purpose: the GGUF tensors read in layer order, each checked
    // against the config where it is read.
    pub fn load(
        path: &Path,
        config: &DecoderConfig,
        holds: Range<usize>,
        embeddings: bool,
        head: bool,
    ) -> Result<Self, DecoderError> {
        let mut file = std::fs::File::open(path).map_err(|e| DecoderError::io(path, e))?;
        let content = Content::read(&mut file)
            .map_err(|e| DecoderError::Gguf { path: path.to_path_buf(), detail: e.to_string() })?;
        let device = Device::Cpu;
        let mut read = |name: &str| -> Result<QTensor, DecoderError> {
            if !content.tensor_infos.contains_key(name) {
                return Err(DecoderError::Tensor {
                    name: name.into(),
                    detail: format!("missing from {}", path.display()),
                });
            }
            content
                .tensor(&mut file, name, &device)
                .map_err(|e| DecoderError::Tensor { name: name.into(), detail: e.to_string() })
        };
        let (h, kvd, ffn) = (config.hidden, config.kv_heads * config.head_dim(), config.ffn);
        let expect = |name: &str, t: &QTensor, dims: &[usize]| -> Result<(), DecoderError> {
            if t.shape().dims() != dims {
                return Err(DecoderError::Tensor {
                    name: name.into(),
                    detail: format!("shape {:?}, the config needs {dims:?}", t.shape().dims()),
                });
            }
            Ok(())
        };
        let mut layers: Vec<Option<LayerWeights>> = (0..config.layers).map(|_| None).collect();
        for i in holds.clone() {
            let mut get = |what: &str, dims: &[usize]| -> Result<QTensor, DecoderError> {
                let name = layer_tensor(i, what);
                let t = read(&name)?;
                expect(&name, &t, dims)?;
                Ok(t)
            };
            let norm = |t: QTensor| t.dequantize(&device);
            let mm = Linear::new;
            layers[i] = Some(LayerWeights {
                attn_norm: norm(get("attn_norm", &[h])?)?,
                wq: mm(get("attn_q", &[h, h])?)?,
                wk: mm(get("attn_k", &[kvd, h])?)?,
                wv: mm(get("attn_v", &[kvd, h])?)?,
                wo: mm(get("attn_output", &[h, h])?)?,
                ffn_norm: norm(get("ffn_norm", &[h])?)?,
                gate: mm(get("ffn_gate", &[ffn, h])?)?,
                up: mm(get("ffn_up", &[ffn, h])?)?,
                down: mm(get("ffn_down", &[h, ffn])?)?,
            });
        }
        let table = if embeddings || (head && !content.tensor_infos.contains_key(OUTPUT)) {
            let t = read(EMBEDDINGS)?;
            expect(EMBEDDINGS, &t, &[config.vocab, h])?;
            Some(Arc::new(t))
        } else {
            None
        };
        let (norm, head) = if head {
            let n = read(OUTPUT_NORM)?;
            expect(OUTPUT_NORM, &n, &[h])?;
            let head = if content.tensor_infos.contains_key(OUTPUT) {
                let o = read(OUTPUT)?;
                expect(OUTPUT, &o, &[config.vocab, h])?;
                Linear::new(o)?
            } else {
                let table = table.clone().expect("read above");
                match super::q4::Q80Matrix::from_qtensor(&table)? {
                    Some(m) => Linear::Q80(m),
                    None => Linear::Candle(QMatMul::from_arc(table)?),
                }
            };
            (Some(n.dequantize(&device)?), Some(head))
        } else {
            (None, None)
        };
        let embeddings = match (embeddings, table) {
            (true, Some(table)) => {
                let dense = match table.dtype() {
                    GgmlDType::Q8_0 | GgmlDType::F32 | GgmlDType::F16 => None,
                    _ => Some(table.dequantize(&device)?),
                };
                Some(Embeddings { table, dense })
            }
            _ => None,
        };
        let (cos, sin) = rope_tables(config, &device)?;
        Ok(Self {
            config: config.clone(),
            holds,
            layers,
            embeddings,
            norm,
            head,
            adapters: Default::default(),
            cos,
            sin,
            device,
        })
    }

    /// Adds the exit adapter for `layer` (`a`: `[hidden, r]`, `b`: `[r, hidden]`).
    pub fn set_adapter(&mut self, layer: usize, a: Tensor, b: Tensor) -> Result<(), DecoderError> {
        let h = self.config.hidden;
        let (ah, r) = a.dims2()?;
        let (br, bh) = b.dims2()?;
        if ah != h || bh != h || br != r {
            return Err(DecoderError::Tensor {
                name: format!("exit {layer} adapter"),
                detail: format!("A {:?} and B {:?} do not make a rank-r map of width {h}", a.dims(), b.dims()),
            });
        }
        self.adapters.insert(layer, (a, b));
        Ok(())
    }

    /// Whether the exit after `layer` has an adapter.
    pub fn has_adapter(&self, layer: usize) -> bool {
        self.adapters.contains_key(&layer)
    }

    /// Logits of the exit after `layer` over states at that layer: its
    /// adapter (if trained), then the final norm and LM head.
    pub fn exit_logits(&self, layer: usize, x: &Tensor) -> Result<Tensor, DecoderError> {
        match self.adapters.get(&layer) {
            Some((a, b)) => {
                let x = x.contiguous()?;
                self.logits(&(&x + x.matmul(a)?.matmul(b)?)?)
            }
            None => self.logits(x),
        }
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// The layers held.
    pub fn holds(&self) -> Range<usize> {
        self.holds.clone()
    }

    pub fn has_embeddings(&self) -> bool {
        self.embeddings.is_some()
    }

    /// Whether this side holds the final norm and LM head (needed for exits
    /// and for the last layer's token).
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A tensor of `t` states from row-major values.
    pub fn states(&self, values: &[f32], t: usize) -> Result<Tensor, DecoderError> {
        if values.len() != t * self.config.hidden {
            return Err(DecoderError::Width { got: values.len() / t.max(1), hidden: self.config.hidden });
        }
        Ok(Tensor::from_slice(values, (t, self.config.hidden), &self.device)?)
    }

    /// The states of `ids` at layer 0 (`[t, hidden]`).
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor, DecoderError> {
        let emb = self.embeddings.as_ref().ok_or_else(|| self.not_held("token embeddings"))?;
        let h = self.config.hidden;
        for &id in ids {
            if id as usize >= self.config.vocab {
                return Err(DecoderError::Token { token: id, vocab: self.config.vocab });
            }
        }
        if let Some(dense) = &emb.dense {
            let idx = Tensor::from_slice(ids, ids.len(), &self.device)?;
            return Ok(dense.index_select(&idx, 0)?);
        }
        let data = emb.table.data()?;
        let mut out = Vec::with_capacity(ids.len() * h);
        for &id in ids {
            let id = id as usize;
            match emb.table.dtype() {
                GgmlDType::Q8_0 => {
                    // Blocks of 32: an f16 scale, then 32 signed bytes.
                    let row_bytes = h / 32 * 34;
                    let row = &data[id * row_bytes..(id + 1) * row_bytes];
                    for block in row.chunks_exact(34) {
                        let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                        out.extend(block[2..].iter().map(|&q| d * (q as i8) as f32));
                    }
                }
                GgmlDType::F32 => out.extend(
                    data[id * h * 4..(id + 1) * h * 4]
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                GgmlDType::F16 => out.extend(
                    data[id * h * 2..(id + 1) * h * 2]
                        .chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                other => unreachable!("{other:?} embeddings are dequantized at load"),
            }
        }
        Ok(Tensor::from_vec(out, (ids.len(), h), &self.device)?)
    }

    /// Logits (`[rows, vocab]`) of states (`[rows, hidden]`): the final norm
    /// and the LM head. An exit is this over a shallower layer's state.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor, DecoderError> {
        let (norm, head) = match (&self.norm, &self.head) {
            (Some(n), Some(h)) => (n, h),
            _ => return Err(self.not_held("the final norm and LM head")),
        };
        let x = candle_nn::ops::rms_norm(&x.contiguous()?, norm, self.config.rms_eps)?;
        head.forward(&x)
    }

    /// Runs layers `layers` over every step (batched across sessions) and
    /// appends their keys and values to each session's cache; `taps` names
    /// split points (layer counts inside `layers.start..=layers.end`) whose
    /// states are returned too, per step, in `taps` order. Each cache's
    /// length advances by its step's positions.
    pub fn run(
        &self,
        layers: Range<usize>,
        steps: &mut [SessionStep<'_>],
        taps: &[usize],
    ) -> Result<Vec<Vec<Tensor>>, DecoderError> {
        if layers.start < self.holds.start || layers.end > self.holds.end {
            return Err(self.not_held(&format!("layers {}..{} were asked for", layers.start, layers.end)));
        }
        for s in steps.iter() {
            let (t, w) = s.x.dims2()?;
            if w != self.config.hidden {
                return Err(DecoderError::Width { got: w, hidden: self.config.hidden });
            }
            if s.pos != s.cache.len() {
                return Err(DecoderError::Position { got: s.pos, cached: s.cache.len() });
            }
            if s.pos + t > self.config.context {
                return Err(DecoderError::Context { start: s.pos, end: s.pos + t, context: self.config.context });
            }
        }
        let mut tapped: Vec<Vec<Tensor>> = steps.iter().map(|_| Vec::with_capacity(taps.len())).collect();
        let mut tap = |at: usize, steps: &[SessionStep<'_>]| {
            if taps.contains(&at) {
                for (out, s) in tapped.iter_mut().zip(steps) {
                    out.push(s.x.clone());
                }
            }
        };
        tap(layers.start, steps);
        if !steps.is_empty() {
            for l in layers.clone() {
                self.layer(l, steps)?;
                tap(l + 1, steps);
            }
        }
        for s in steps.iter_mut() {
            let t = s.x.dim(0)?;
            s.cache.advance(t);
        }
        Ok(tapped)
    }

    fn layer(&self, l: usize, steps: &mut [SessionStep<'_>]) -> Result<(), DecoderError> {
        let w = self.layers[l].as_ref().ok_or_else(|| self.not_held(&format!("layer {l} was asked for")))?;
        let c = &self.config;
        let (nh, nkv, hd) = (c.heads, c.kv_heads, c.head_dim());
        let rep = nh / nkv;
        let x = if steps.len() == 1 {
            steps[0].x.clone()
        } else {
            Tensor::cat(&steps.iter().map(|s| &s.x).collect::<Vec<_>>(), 0)?
        };
        let h = candle_nn::ops::rms_norm(&x, &w.attn_norm, c.rms_eps)?;
        let (q, k, v) = (w.wq.forward(&h)?, w.wk.forward(&h)?, w.wv.forward(&h)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(steps.len());
        let mut off = 0;
        for s in steps.iter_mut() {
            let t = s.x.dim(0)?;
            let heads = |m: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                m.narrow(0, off, t)?.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()
            };
            let cos = self.cos.narrow(0, s.pos, t)?;
            let sin = self.sin.narrow(0, s.pos, t)?;
            let qs = candle_nn::rotary_emb::rope_i(&heads(&q, nh)?.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let ks = candle_nn::rotary_emb::rope_i(&heads(&k, nkv)?.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?;
            let vs = heads(&v, nkv)?;
            let (keys, values) = s.cache.append(l, &ks, &vs)?;
            let len = s.pos + t;
            // Query head h reads KV head h / rep: group the rep query heads
            // of each KV head as rows of one matrix.
            let q3 = qs.reshape((nkv, rep * t, hd))?;
            let mut att = (q3.matmul(&keys.t()?)? * scale)?;
            if t > 1 {
                let pos = s.pos;
                let mask: Vec<f32> = (0..t)
                    .flat_map(|i| (0..len).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                let mask = Tensor::from_vec(mask, (t, len), &self.device)?;
                att = att.reshape((nkv, rep, t, len))?.broadcast_add(&mask)?.reshape((nkv, rep * t, len))?;
            }
            let p = candle_nn::ops::softmax_last_dim(&att)?;
            let o = p.matmul(&values.contiguous()?)?;
            outs.push(o.reshape((nh, t, hd))?.transpose(0, 1)?.reshape((t, nh * hd))?);
            off += t;
        }
        let attn = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? };
        let x = (x + w.wo.forward(&attn)?)?;
        let h = candle_nn::ops::rms_norm(&x, &w.ffn_norm, c.rms_eps)?;
        let ff = (candle_nn::ops::silu(&w.gate.forward(&h)?)? * w.up.forward(&h)?)?;
        let x = (x + w.down.forward(&ff)?)?;
        let mut off = 0;
        for s in steps.iter_mut() {
            let t = s.x.dim(0)?;
            s.x = if off == 0 && t == x.dim(0)? { x.clone() } else { x.narrow(0, off, t)? };
            off += t;
        }
        Ok(())
    }

    fn not_held(&self, detail: &str) -> DecoderError {
        DecoderError::NotHeld { start: self.holds.start, end: self.holds.end, detail: detail.to_string() }
    }
}

/// `cos` and `sin` of RoPE's rotation angles, `[context, head_dim / 2]`.
fn rope_tables(c: &DecoderConfig, device: &Device) -> Result<(Tensor, Tensor), DecoderError> {
    let hd = c.head_dim();
    let inv: Vec<f32> = (0..hd / 2).map(|i| 1.0 / c.rope_base.powf(2.0 * i as f32 / hd as f32)).collect();
    let inv = Tensor::from_vec(inv, (1, hd / 2), device)?;
    let pos = Tensor::arange(0u32, c.context as u32, device)?.to_dtype(DType::F32)?.reshape((c.context, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// The largest value's index and its softmax probability.
pub fn top1(logits: &[f32]) -> (u32, f32) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > max {
            (best, max) = (i, v);
        }
    }
    let sum: f32 = logits.iter().map(|&v| (v - max).exp()).sum();
    (best as u32, 1.0 / sum)
}

/// Rows of a `[rows, vocab]` logits tensor as vectors.
pub fn rows(logits: &Tensor) -> Result<Vec<Vec<f32>>, DecoderError> {
    Ok(logits.to_dtype(DType::F32)?.to_vec2()?)
}

/// The last row of `x` (`[t, hidden]` → `[1, hidden]`).
pub fn last_row(x: &Tensor) -> Result<Tensor, DecoderError> {
    let t = x.dim(0)?;
    Ok(x.narrow(0, t - 1, 1)?)
}

impl DecoderModel {
    /// Greedy decoding on this side alone (it must hold the whole model):
    /// the prompt in one pass, then one token per step. Returns the new
    /// tokens (at most `new_tokens`, fewer if `stop` says so).
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        new_tokens: usize,
        stop: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, DecoderError> {
        let mut cache = KvCache::new(&self.config, self.holds());
        let mut out = Vec::with_capacity(new_tokens);
        let mut x = self.embed(prompt)?;
        let mut pos = 0;
        while out.len() < new_tokens {
            let t = x.dim(0)?;
            let mut steps = [SessionStep { cache: &mut cache, x, pos }];
            self.run(self.holds(), &mut steps, &[])?;
            let [step] = steps;
            let logits = rows(&self.logits(&last_row(&step.x)?)?)?;
            let (token, _) = top1(&logits[0]);
            out.push(token);
            pos += t;
            if stop(token) {
                break;
            }
            x = self.embed(&[token])?;
        }
        Ok(out)
    }
}
