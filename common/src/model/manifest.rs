//! The bundle manifest: a human-readable description of a multi-exit network.
//!
//! A block is one entry of a tagged list (`"kind": "conv2d"`); new kinds (a
//! transformer encoder layer, say) are new variants of [`LayerSpec`] and leave
//! the shape of the format unchanged. Exit heads are lists of the same layer
//! kinds, attached after a block, and end in class logits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Current manifest format version.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Default file name of the weights inside a bundle directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the bundle's own exit policy, when it ships one.
pub const POLICY_FILE: &str = "policy.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Stable identifier of the model, e.g. `b-lenet-mnist`.
    pub model_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub input: InputSpec,
    /// Class labels, in logit order.
    pub labels: Vec<String>,
    /// Weights file, relative to the bundle directory.
    #[serde(default = "default_weights")]
    pub weights: String,
    /// The backbone, in order. Split point K cuts between block K-1 and K.
    pub blocks: Vec<BlockSpec>,
    /// Exit heads, in the order they are reached.
    pub exits: Vec<ExitSpec>,
    /// Which blocks this bundle holds weights for (a split bundle holds only one
    /// side). Absent: the whole model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<BlockRange>,
    /// For a split bundle: the fingerprints of the other side, recorded when it
    /// was split, so an edge can check a cloud (and vice versa) without holding
    /// its weights. Keyed by split point.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub peer_fingerprints: BTreeMap<usize, String>,
}

fn default_weights() -> String {
    WEIGHTS_FILE.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockRange {
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Shape of one input, batch dimension excluded (e.g. `[1, 28, 28]`).
    /// For token inputs: `[max_tokens]`; a sample may be shorter.
    pub shape: Vec<usize>,
    /// Element type: `f32` (a tensor) or [`TOKEN_IDS`] (a variable-length
    /// sequence of token ids, made by the bundle's tokenizer).
    pub dtype: String,
    /// How raw inputs are turned into the model's input (documentation).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preprocess: String,
    /// The tokenizer that turns text into this model's token ids (token
    /// inputs only). Its digest is part of the manifest, so the edge
    /// fingerprint covers the tokenizer too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerSpec>,
}

/// `InputSpec::dtype` of models whose input is a sequence of token ids.
pub const TOKEN_IDS: &str = "token-ids";

impl InputSpec {
    /// Whether inputs are variable-length token sequences.
    pub fn is_tokens(&self) -> bool {
        self.dtype == TOKEN_IDS
    }
}

/// A tokenizer file inside the bundle (the `tokenizers` crate's
/// `tokenizer.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    /// File name, relative to the bundle directory.
    pub file: String,
    /// Hex SHA-256 of the file, checked at load.
    pub sha256: String,
}

/// Default file name of a bundle's tokenizer.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    pub name: String,
    #[serde(flatten)]
    pub layer: LayerSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitSpec {
    pub name: String,
    /// The exit reads the output of this block.
    pub after_block: usize,
    /// The head's layers; the last one produces `labels.len()` logits.
    pub layers: Vec<LayerSpec>,
}

/// One layer of a block or an exit head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LayerSpec {
    /// 2-D convolution over `[C, H, W]` with bias, then optional ReLU, then
    /// optional non-overlapping max-pool of size `pool`.
    Conv2d {
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        #[serde(default = "one")]
        stride: usize,
        #[serde(default)]
        padding: usize,
        #[serde(default)]
        relu: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pool: Option<usize>,
    },
    /// Fully connected layer over a flat vector, optional ReLU.
    Linear {
        in_features: usize,
        out_features: usize,
        #[serde(default)]
        relu: bool,
    },
    /// Flattens `[C, H, W]` (or any shape) into a vector.
    Flatten,
    /// BERT embeddings: word + position + token type 0, then LayerNorm.
    /// `[T]` token ids in, `[T, hidden]` out.
    BertEmbeddings { vocab_size: usize, hidden: usize, max_positions: usize, type_vocab_size: usize, eps: f64 },
    /// One BERT encoder layer (post-LN): multi-head self-attention over the
    /// sample's real tokens (padding is masked), then a GELU feed-forward
    /// network. `[T, hidden]` in and out.
    BertLayer { hidden: usize, heads: usize, intermediate: usize, eps: f64 },
    /// Pools a token sequence `[T, H]` into one vector `[H]`: the first
    /// token (`cls`) or the mean over the real tokens (`mean`).
    Pool { mode: PoolMode },
    /// Element-wise tanh (BERT's pooler is `linear` then `tanh`).
    Tanh,
    /// A subgraph of an imported ONNX model (`offramp import onnx`): the
    /// nodes that compute tensor `to` from tensor `from`, run by tract. The
    /// serialized subgraph is the layer's `graph` parameter, a `u8` tensor
    /// of `graph_bytes` bytes in the weights file.
    Onnx {
        /// The tensor it reads and the one it writes (names in the source graph).
        from: String,
        to: String,
        /// Per-sample shapes in and out (batch excluded).
        input: Vec<usize>,
        output: Vec<usize>,
        graph_bytes: usize,
        /// ONNX nodes computing on the input (constants copied in excluded).
        nodes: usize,
        /// Multiply-adds of one sample (Conv, Gemm, MatMul nodes).
        macs: u64,
        /// f32 parameters its nodes read.
        params: u64,
    },
}

/// Why a layer cannot take an input shape: its kind and the reason (which
/// names the shapes involved).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct LayerShapeError {
    pub layer: &'static str,
    pub reason: String,
}

/// How [`LayerSpec::Pool`] reduces a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PoolMode {
    /// The first token (BERT's `[CLS]`).
    Cls,
    /// The mean over real tokens (padding excluded), as sentence-transformers.
    Mean,
}

fn one() -> usize {
    1
}

impl LayerSpec {
    /// Kind name as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            LayerSpec::Conv2d { .. } => "conv2d",
            LayerSpec::Linear { .. } => "linear",
            LayerSpec::Flatten => "flatten",
            LayerSpec::BertEmbeddings { .. } => "bert-embeddings",
            LayerSpec::BertLayer { .. } => "bert-layer",
            LayerSpec::Pool { .. } => "pool",
            LayerSpec::Tanh => "tanh",
            LayerSpec::Onnx { .. } => "onnx",
        }
    }

    /// Whether the layer maps a token sequence to a token sequence of the
    /// same length (its output's first dimension is the sequence length).
    pub fn keeps_sequence(&self) -> bool {
        matches!(self, LayerSpec::BertLayer { .. } | LayerSpec::Tanh)
    }

    /// Output shape for an input shape (batch excluded), or why it cannot apply.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, LayerShapeError> {
        let bad = |reason: String| LayerShapeError { layer: self.kind(), reason };
        match *self {
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, pool, .. } => {
                let [c, h, w] = input else {
                    return Err(bad(format!("conv2d needs a [C, H, W] input, got {input:?}")));
                };
                if *c != in_channels {
                    return Err(bad(format!("conv2d expects {in_channels} input channels, previous layer gives {c}")));
                }
                if kernel == 0 || stride == 0 || pool == Some(0) {
                    return Err(bad("conv2d kernel, stride and pool must be positive".into()));
                }
                let pad = |x: usize| padding.checked_mul(2).and_then(|p| x.checked_add(p));
                let (Some(hp), Some(wp)) = (pad(*h), pad(*w)) else {
                    return Err(bad(format!("conv2d padding {padding} overflows the {h}x{w} input's size")));
                };
                if hp < kernel || wp < kernel {
                    return Err(bad(format!("conv2d kernel {kernel} larger than padded input {hp}x{wp}")));
                }
                let (mut oh, mut ow) = ((hp - kernel) / stride + 1, (wp - kernel) / stride + 1);
                if let Some(p) = pool {
                    (oh, ow) = (oh / p, ow / p);
                    if oh == 0 || ow == 0 {
                        return Err(bad(format!("max-pool {p} leaves nothing of a {}x{} map", oh * p, ow * p)));
                    }
                }
                Ok(vec![out_channels, oh, ow])
            }
            LayerSpec::Linear { in_features, out_features, .. } => {
                if input != [in_features] {
                    return Err(bad(format!("linear expects a [{in_features}] input, previous layer gives {input:?}")));
                }
                Ok(vec![out_features])
            }
            LayerSpec::Flatten => {
                input.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).map(|n| vec![n]).ok_or_else(|| {
                    bad(format!(
                        "flatten: the element count of {} overflows",
                        crate::codec::echo::Shape::of_usize(input)
                    ))
                })
            }
            LayerSpec::BertEmbeddings { vocab_size, hidden, max_positions, type_vocab_size, eps } => {
                let [t] = input else {
                    return Err(bad(format!("bert-embeddings needs a [tokens] input of token ids, got {input:?}")));
                };
                if vocab_size == 0 || hidden == 0 || type_vocab_size == 0 || !(eps > 0.0 && eps.is_finite()) {
                    return Err(bad(
                        "bert-embeddings needs positive vocab_size, hidden, type_vocab_size and eps".into()
                    ));
                }
                if *t > max_positions {
                    return Err(bad(format!(
                        "the input allows {t} tokens, bert-embeddings has only {max_positions} positions"
                    )));
                }
                Ok(vec![*t, hidden])
            }
            LayerSpec::BertLayer { hidden, heads, intermediate, eps } => {
                let [t, h] = input else {
                    return Err(bad(format!("bert-layer needs a [tokens, {hidden}] input, got {input:?}")));
                };
                if *h != hidden {
                    return Err(bad(format!("bert-layer expects hidden size {hidden}, previous layer gives {h}")));
                }
                if heads == 0 || hidden % heads != 0 || intermediate == 0 || !(eps > 0.0 && eps.is_finite()) {
                    return Err(bad(format!(
                        "bert-layer needs hidden ({hidden}) divisible by heads ({heads}), a positive intermediate \
                         size and eps"
                    )));
                }
                Ok(vec![*t, hidden])
            }
            LayerSpec::Pool { .. } => match input {
                [_, h] => Ok(vec![*h]),
                _ => Err(bad(format!("pool needs a [tokens, hidden] input, got {input:?}"))),
            },
            LayerSpec::Tanh => Ok(input.to_vec()),
            LayerSpec::Onnx { ref from, input: ref expected, ref output, .. } => {
                if input != expected.as_slice() {
                    return Err(bad(format!(
                        "the ONNX subgraph from {from:?} expects a {expected:?} input, the previous block gives \
                         {input:?}"
                    )));
                }
                Ok(output.clone())
            }
        }
    }

    /// Parameter tensors this layer needs: `(suffix, shape)`.
    pub fn parameters(&self) -> Vec<(&'static str, Vec<usize>)> {
        match *self {
            LayerSpec::Conv2d { in_channels, out_channels, kernel, .. } => {
                vec![("weight", vec![out_channels, in_channels, kernel, kernel]), ("bias", vec![out_channels])]
            }
            LayerSpec::Linear { in_features, out_features, .. } => {
                vec![("weight", vec![out_features, in_features]), ("bias", vec![out_features])]
            }
            LayerSpec::Flatten | LayerSpec::Pool { .. } | LayerSpec::Tanh => vec![],
            LayerSpec::Onnx { graph_bytes, .. } => vec![(crate::model::onnx::GRAPH_PARAM, vec![graph_bytes])],
            LayerSpec::BertEmbeddings { vocab_size, hidden, max_positions, type_vocab_size, .. } => vec![
                ("word", vec![vocab_size, hidden]),
                ("position", vec![max_positions, hidden]),
                ("token_type", vec![type_vocab_size, hidden]),
                ("ln.weight", vec![hidden]),
                ("ln.bias", vec![hidden]),
            ],
            LayerSpec::BertLayer { hidden, intermediate, .. } => vec![
                ("query.weight", vec![hidden, hidden]),
                ("query.bias", vec![hidden]),
                ("key.weight", vec![hidden, hidden]),
                ("key.bias", vec![hidden]),
                ("value.weight", vec![hidden, hidden]),
                ("value.bias", vec![hidden]),
                ("attn_out.weight", vec![hidden, hidden]),
                ("attn_out.bias", vec![hidden]),
                ("attn_ln.weight", vec![hidden]),
                ("attn_ln.bias", vec![hidden]),
                ("ffn_in.weight", vec![intermediate, hidden]),
                ("ffn_in.bias", vec![intermediate]),
                ("ffn_out.weight", vec![hidden, intermediate]),
                ("ffn_out.bias", vec![hidden]),
                ("ffn_ln.weight", vec![hidden]),
                ("ffn_ln.bias", vec![hidden]),
            ],
        }
    }

    /// Whether the layer's parameters are bytes (an ONNX subgraph) rather
    /// than f32 weights.
    pub fn holds_graph(&self) -> bool {
        matches!(self, LayerSpec::Onnx { .. })
    }

    /// Multiply-adds of one forward pass on one input of shape `input`.
    pub fn macs(&self, input: &[usize]) -> u64 {
        match *self {
            LayerSpec::Onnx { macs, .. } => macs,
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
                let (h, w) = (input[1], input[2]);
                let oh = (h + 2 * padding - kernel) / stride + 1;
                let ow = (w + 2 * padding - kernel) / stride + 1;
                (oh * ow * out_channels * in_channels * kernel * kernel) as u64
            }
            LayerSpec::Linear { in_features, out_features, .. } => (in_features * out_features) as u64,
            LayerSpec::Flatten | LayerSpec::Pool { .. } | LayerSpec::Tanh | LayerSpec::BertEmbeddings { .. } => 0,
            // Four hidden x hidden projections and the two FFN matrices per
            // token, plus QK^T and attention x V over the sequence.
            LayerSpec::BertLayer { hidden, intermediate, .. } => {
                let t = input[0];
                (t * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * t * t * hidden) as u64
            }
        }
    }
}

/// Name of a block's parameter tensor in the weights file.
pub fn block_tensor(block: usize, suffix: &str) -> String {
    format!("blocks.{block}.{suffix}")
}

/// Name of an exit-head layer's parameter tensor in the weights file.
pub fn exit_tensor(exit: usize, layer: usize, suffix: &str) -> String {
    format!("exits.{exit}.{layer}.{suffix}")
}
