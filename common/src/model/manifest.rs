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
    pub shape: Vec<usize>,
    /// Element type; only `f32` is supported.
    pub dtype: String,
    /// How raw inputs are turned into the model's input (documentation).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub preprocess: String,
}

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
        }
    }

    /// Output shape for an input shape (batch excluded), or why it cannot apply.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        match *self {
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, pool, .. } => {
                let [c, h, w] = input else {
                    return Err(format!("conv2d needs a [C, H, W] input, got {input:?}"));
                };
                if *c != in_channels {
                    return Err(format!("conv2d expects {in_channels} input channels, previous layer gives {c}"));
                }
                if kernel == 0 || stride == 0 || pool == Some(0) {
                    return Err("conv2d kernel, stride and pool must be positive".into());
                }
                let (hp, wp) = (h + 2 * padding, w + 2 * padding);
                if hp < kernel || wp < kernel {
                    return Err(format!("conv2d kernel {kernel} larger than padded input {hp}x{wp}"));
                }
                let (mut oh, mut ow) = ((hp - kernel) / stride + 1, (wp - kernel) / stride + 1);
                if let Some(p) = pool {
                    (oh, ow) = (oh / p, ow / p);
                    if oh == 0 || ow == 0 {
                        return Err(format!("max-pool {p} leaves nothing of a {}x{} map", oh * p, ow * p));
                    }
                }
                Ok(vec![out_channels, oh, ow])
            }
            LayerSpec::Linear { in_features, out_features, .. } => {
                if input != [in_features] {
                    return Err(format!("linear expects a [{in_features}] input, previous layer gives {input:?}"));
                }
                Ok(vec![out_features])
            }
            LayerSpec::Flatten => Ok(vec![input.iter().product()]),
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
            LayerSpec::Flatten => vec![],
        }
    }

    /// Multiply-adds of one forward pass on one input of shape `input`.
    pub fn macs(&self, input: &[usize]) -> u64 {
        match *self {
            LayerSpec::Conv2d { in_channels, out_channels, kernel, stride, padding, .. } => {
                let (h, w) = (input[1], input[2]);
                let oh = (h + 2 * padding - kernel) / stride + 1;
                let ow = (w + 2 * padding - kernel) / stride + 1;
                (oh * ow * out_channels * in_channels * kernel * kernel) as u64
            }
            LayerSpec::Linear { in_features, out_features, .. } => (in_features * out_features) as u64,
            LayerSpec::Flatten => 0,
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
