//! Built-in architectures and seeded weight initialisation.

use crate::rng::SplitMix64;
use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::manifest::{
    block_tensor, exit_tensor, BlockSpec, ExitSpec, InputSpec, LayerSpec, Manifest, FORMAT_VERSION, WEIGHTS_FILE,
};

/// Architectures `offramp train --arch` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// B-LeNet (BranchyNet): a LeNet-style backbone on 28x28 digits with a
    /// cheap side branch after the first conv block and the final exit.
    BLenet,
    /// A tiny 3-exit network for tests and smoke runs.
    Tiny,
    /// A wide multi-layer perceptron (784 -> 3 x 2048 -> 10, 10.5 M weights,
    /// exits after the first and the last hidden layer). Its deep side is
    /// weight-bandwidth bound at batch 1, the regime where the cloud's
    /// batching pays; `deploy/bench/load_batching.sh` measures it beside B-LeNet.
    WideMlp,
}

fn conv(i: usize, o: usize, k: usize, pad: usize, pool: Option<usize>) -> LayerSpec {
    LayerSpec::Conv2d { in_channels: i, out_channels: o, kernel: k, stride: 1, padding: pad, relu: true, pool }
}

fn linear(i: usize, o: usize, relu: bool) -> LayerSpec {
    LayerSpec::Linear { in_features: i, out_features: o, relu }
}

fn block(name: &str, layer: LayerSpec) -> BlockSpec {
    BlockSpec { name: name.into(), layer }
}

fn mnist_input() -> InputSpec {
    InputSpec {
        shape: vec![1, 28, 28],
        dtype: "f32".into(),
        preprocess: "grayscale pixels as u8 / 255, no normalisation".into(),
        tokenizer: None,
    }
}

fn digits() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

impl Arch {
    pub fn manifest(self, model_id: &str) -> Manifest {
        match self {
            Arch::BLenet => Manifest {
                format_version: FORMAT_VERSION,
                model_id: model_id.into(),
                description: "B-LeNet (BranchyNet, Teerapittayanon et al. 2016): LeNet-style backbone with one \
                              side branch after the first conv block"
                    .into(),
                input: mnist_input(),
                labels: digits(),
                weights: WEIGHTS_FILE.into(),
                blocks: vec![
                    block("conv1", conv(1, 8, 5, 2, Some(2))),   // 8x14x14
                    block("conv2", conv(8, 32, 5, 2, Some(2))),  // 32x7x7
                    block("conv3", conv(32, 64, 3, 1, Some(2))), // 64x3x3
                    block("flatten", LayerSpec::Flatten),        // 576
                    block("fc1", linear(576, 128, true)),        // 128
                ],
                exits: vec![
                    ExitSpec {
                        name: "branch1".into(),
                        after_block: 0,
                        layers: vec![conv(8, 16, 3, 1, Some(2)), LayerSpec::Flatten, linear(16 * 7 * 7, 10, false)],
                    },
                    ExitSpec { name: "final".into(), after_block: 4, layers: vec![linear(128, 10, false)] },
                ],
                holds: None,
                peer_fingerprints: Default::default(),
            },
            Arch::Tiny => Manifest {
                format_version: FORMAT_VERSION,
                model_id: model_id.into(),
                description: "tiny 3-exit test network".into(),
                input: mnist_input(),
                labels: digits(),
                weights: WEIGHTS_FILE.into(),
                blocks: vec![
                    block("conv1", conv(1, 4, 3, 1, Some(2))), // 4x14x14
                    block("conv2", conv(4, 8, 3, 1, Some(2))), // 8x7x7
                    block("flatten", LayerSpec::Flatten),      // 392
                    block("fc1", linear(392, 32, true)),
                ],
                exits: vec![
                    ExitSpec {
                        name: "early".into(),
                        after_block: 0,
                        layers: vec![LayerSpec::Flatten, linear(4 * 14 * 14, 10, false)],
                    },
                    ExitSpec { name: "middle".into(), after_block: 2, layers: vec![linear(392, 10, false)] },
                    ExitSpec { name: "final".into(), after_block: 3, layers: vec![linear(32, 10, false)] },
                ],
                holds: None,
                peer_fingerprints: Default::default(),
            },
            Arch::WideMlp => Manifest {
                format_version: FORMAT_VERSION,
                model_id: model_id.into(),
                description: "wide MLP: 784 -> 2048 -> 2048 -> 2048 with exits after the first and last hidden \
                              layers"
                    .into(),
                input: mnist_input(),
                labels: digits(),
                weights: WEIGHTS_FILE.into(),
                blocks: vec![
                    block("flatten", LayerSpec::Flatten),   // 784
                    block("fc1", linear(784, 2048, true)),  // 2048
                    block("fc2", linear(2048, 2048, true)), // 2048
                    block("fc3", linear(2048, 2048, true)), // 2048
                ],
                exits: vec![
                    ExitSpec { name: "early".into(), after_block: 1, layers: vec![linear(2048, 10, false)] },
                    ExitSpec { name: "final".into(), after_block: 3, layers: vec![linear(2048, 10, false)] },
                ],
                holds: None,
                peer_fingerprints: Default::default(),
            },
        }
    }
}

/// Seeded He-uniform weights (PyTorch's default bound 1/sqrt(fan_in) for
/// biases) for every parameter of `manifest`.
pub fn init_weights(manifest: &Manifest, seed: u64) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut rng = SplitMix64::new(seed);
    let mut out = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, fan_in: usize, rng: &mut SplitMix64| -> candle_core::Result<()> {
        let is_bias = shape.len() == 1;
        let bound = if is_bias { 1.0 / (fan_in as f32).sqrt() } else { (6.0 / fan_in as f32).sqrt() };
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| (rng.next_f32() * 2.0 - 1.0) * bound).collect();
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
        Ok(())
    };
    let fan_in = |spec: &LayerSpec| match *spec {
        LayerSpec::Conv2d { in_channels, kernel, .. } => in_channels * kernel * kernel,
        LayerSpec::Linear { in_features, .. } => in_features,
        LayerSpec::BertLayer { hidden, .. } | LayerSpec::BertEmbeddings { hidden, .. } => hidden,
        LayerSpec::Flatten | LayerSpec::Pool { .. } | LayerSpec::Tanh | LayerSpec::Onnx { .. } => 1,
    };
    for (b, block) in manifest.blocks.iter().enumerate() {
        for (suffix, shape) in block.layer.parameters() {
            add(block_tensor(b, suffix), shape, fan_in(&block.layer), &mut rng)?;
        }
    }
    for (e, exit) in manifest.exits.iter().enumerate() {
        for (l, layer) in exit.layers.iter().enumerate() {
            for (suffix, shape) in layer.parameters() {
                add(exit_tensor(e, l, suffix), shape, fan_in(layer), &mut rng)?;
            }
        }
    }
    Ok(out)
}

/// Vocabulary, hidden width and longest sequence of [`tiny_encoder`].
pub const TINY_ENCODER_VOCAB: usize = 50;
pub const TINY_ENCODER_HIDDEN: usize = 16;
pub const TINY_ENCODER_MAX_TOKENS: usize = 12;

/// A seeded 3-layer BERT-style encoder (hidden 16, 4 heads, token ids below
/// 50, at most 12 tokens, no tokenizer) with exits after layers 1 (mean
/// pooling) and 3 (CLS + tanh pooler), 3 classes: for tests and fuzzing.
/// LayerNorm weights are near 1, as a trained model's.
pub fn tiny_encoder(seed: u64) -> super::Bundle {
    use super::manifest::{
        BlockSpec, ExitSpec, InputSpec, LayerSpec, Manifest, PoolMode, FORMAT_VERSION, TOKEN_IDS, WEIGHTS_FILE,
    };
    let hidden = TINY_ENCODER_HIDDEN;
    let layer = LayerSpec::BertLayer { hidden, heads: 4, intermediate: 32, eps: 1e-12 };
    let m = Manifest {
        format_version: FORMAT_VERSION,
        model_id: "enc".into(),
        description: String::new(),
        input: InputSpec {
            shape: vec![TINY_ENCODER_MAX_TOKENS],
            dtype: TOKEN_IDS.into(),
            preprocess: String::new(),
            tokenizer: None,
        },
        labels: vec!["neg".into(), "pos".into(), "neutral".into()],
        weights: WEIGHTS_FILE.into(),
        blocks: vec![
            BlockSpec {
                name: "embeddings".into(),
                layer: LayerSpec::BertEmbeddings {
                    vocab_size: TINY_ENCODER_VOCAB,
                    hidden,
                    max_positions: 16,
                    type_vocab_size: 2,
                    eps: 1e-12,
                },
            },
            BlockSpec { name: "layer0".into(), layer: layer.clone() },
            BlockSpec { name: "layer1".into(), layer: layer.clone() },
            BlockSpec { name: "layer2".into(), layer },
        ],
        exits: vec![
            ExitSpec {
                name: "early".into(),
                after_block: 1,
                layers: vec![
                    LayerSpec::Pool { mode: PoolMode::Mean },
                    LayerSpec::Linear { in_features: hidden, out_features: 3, relu: false },
                ],
            },
            ExitSpec {
                name: "final".into(),
                after_block: 3,
                layers: vec![
                    LayerSpec::Pool { mode: PoolMode::Cls },
                    LayerSpec::Linear { in_features: hidden, out_features: hidden, relu: false },
                    LayerSpec::Tanh,
                    LayerSpec::Linear { in_features: hidden, out_features: 3, relu: false },
                ],
            },
        ],
        holds: None,
        peer_fingerprints: Default::default(),
    };
    let mut w = init_weights(&m, seed).expect("the tiny encoder's weights");
    for (name, t) in w.iter_mut() {
        if name.contains("ln.weight") {
            *t = t.affine(0.1, 1.0).expect("scaling a LayerNorm weight");
        } else if name.contains("ln.bias") {
            *t = t.affine(0.1, 0.0).expect("scaling a LayerNorm bias");
        }
    }
    super::Bundle::from_parts(m, w).expect("the tiny encoder is a valid bundle")
}
