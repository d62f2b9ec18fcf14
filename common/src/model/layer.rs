//! The forward pass of one layer, on a batch, with candle.

use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::encoder::{self, Embeddings, EncoderLayer, SeqMask};
use super::kernels::{Conv2dKernel, Kernels, LinearKernel};
use super::manifest::{LayerSpec, PoolMode};
use super::onnx::OnnxBlock;

/// A layer with its weights, ready to run. The same code serves inference and
/// training (weights may be `Var`s, and the ops are differentiable).
///
/// Inference runs the fused CPU kernels of [`super::kernels`] (`fast`), built
/// when the layer is (linear layers only up to [`LinearKernel::MAX_WEIGHTS`]
/// weights; wider ones run candle's gemm). Plain candle ops run when
/// [`Kernels::Candle`] is chosen (`OFFRAMP_KERNELS=candle`,
/// [`Layer::set_kernels`]) and whenever the weights or the input track
/// gradients, since the fused ops have no backward pass.
#[derive(Debug, Clone)]
pub enum Layer {
    Conv2d {
        weight: Tensor,
        /// Bias shaped `[1, C, 1, 1]` for broadcasting.
        bias: Tensor,
        stride: usize,
        padding: usize,
        relu: bool,
        pool: Option<usize>,
        /// Compute as explicit im2col (narrow + stack) and a batched matmul:
        /// candle's conv2d backward is an order of magnitude slower than its
        /// forward on CPU, so training uses this differentiable form.
        unfold: bool,
        /// The fused inference kernel, when the fast kernels are in use.
        fast: Option<Arc<Conv2dKernel>>,
    },
    Linear {
        weight: Tensor,
        bias: Tensor,
        relu: bool,
        /// The fused inference kernel, when the fast kernels are in use.
        fast: Option<Arc<LinearKernel>>,
    },
    Flatten,
    /// BERT embeddings (token ids in).
    BertEmbeddings(Arc<Embeddings>),
    /// A BERT encoder layer; masked by the batch's [`SeqMask`].
    BertLayer(Arc<EncoderLayer>),
    Pool(PoolMode),
    Tanh,
    /// A subgraph of an imported ONNX model, run by tract (inference only).
    Onnx(Arc<OnnxBlock>),
}

impl Layer {
    /// Builds a layer from its spec; `param` fetches a parameter tensor by
    /// suffix (`weight`, `bias`), already checked for shape. Uses the kernels
    /// chosen by `OFFRAMP_KERNELS` (fast by default).
    pub fn new(spec: &LayerSpec, mut param: impl FnMut(&str) -> Tensor) -> Result<Self> {
        let mut layer = match *spec {
            LayerSpec::Conv2d { out_channels, stride, padding, relu, pool, .. } => Layer::Conv2d {
                weight: param("weight"),
                bias: param("bias").reshape((1, out_channels, 1, 1))?,
                stride,
                padding,
                relu,
                pool,
                unfold: false,
                fast: None,
            },
            LayerSpec::Linear { relu, .. } => {
                Layer::Linear { weight: param("weight"), bias: param("bias"), relu, fast: None }
            }
            LayerSpec::Flatten => Layer::Flatten,
            LayerSpec::BertEmbeddings { eps, .. } => Layer::BertEmbeddings(Arc::new(Embeddings::new(param, eps))),
            LayerSpec::BertLayer { heads, eps, .. } => Layer::BertLayer(Arc::new(EncoderLayer::new(param, heads, eps))),
            LayerSpec::Pool { mode } => Layer::Pool(mode),
            LayerSpec::Tanh => Layer::Tanh,
            LayerSpec::Onnx { ref from, ref input, ref output, .. } => {
                let graph = param(super::onnx::GRAPH_PARAM).to_vec1::<u8>()?;
                let block = OnnxBlock::new(&graph, input, output)
                    .map_err(|e| candle_core::Error::Msg(format!("the ONNX subgraph from {from:?}: {e}")))?;
                Layer::Onnx(Arc::new(block))
            }
        };
        layer.set_kernels(Kernels::from_env())?;
        Ok(layer)
    }

    /// Chooses the kernels this layer runs with. The fast kernels pack the
    /// weights as they are now; weights that track gradients (training)
    /// always run candle's differentiable ops, and get no packed copy.
    pub fn set_kernels(&mut self, kernels: Kernels) -> Result<()> {
        let fast = kernels == Kernels::Fast;
        match self {
            Layer::Conv2d { weight, bias, stride, padding, relu, pool, fast: slot, .. } => {
                *slot = if fast && !weight.track_op() && !bias.track_op() {
                    Some(Arc::new(Conv2dKernel::new(weight, bias, *stride, *padding, *relu, *pool)?))
                } else {
                    None
                };
            }
            Layer::Linear { weight, bias, relu, fast: slot } => {
                let (o, i) = weight.dims2()?;
                *slot = if fast && LinearKernel::suits(o, i) && !weight.track_op() && !bias.track_op() {
                    Some(Arc::new(LinearKernel::new(weight, bias, *relu)?))
                } else {
                    None
                };
            }
            Layer::BertLayer(l) => {
                let mut layer = (**l).clone();
                layer.set_packed(fast)?;
                *l = Arc::new(layer);
            }
            Layer::Flatten | Layer::BertEmbeddings(_) | Layer::Pool(_) | Layer::Tanh | Layer::Onnx(_) => {}
        }
        Ok(())
    }

    /// The kernels this layer runs with on inputs that track no gradients.
    pub fn kernels(&self) -> Kernels {
        match self {
            Layer::Conv2d { fast: Some(_), unfold: false, .. } | Layer::Linear { fast: Some(_), .. } => Kernels::Fast,
            Layer::Conv2d { .. } | Layer::Linear { .. } => Kernels::Candle,
            Layer::BertLayer(l) if !l.is_packed() => Kernels::Candle,
            Layer::Flatten
            | Layer::BertEmbeddings(_)
            | Layer::BertLayer(_)
            | Layer::Pool(_)
            | Layer::Tanh
            | Layer::Onnx(_) => Kernels::Fast,
        }
    }

    /// Runs the layer on a batch (`[B, ...]`) whose samples are all real
    /// (no padding).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None)
    }

    /// Runs the layer on a batch; `mask` says which tokens of a padded
    /// sequence batch are real (`None`: every one).
    pub fn forward_masked(&self, x: &Tensor, mask: Option<&SeqMask>) -> Result<Tensor> {
        let plain = x.track_op() || !x.device().is_cpu();
        match self {
            Layer::BertEmbeddings(e) => return e.forward(x),
            Layer::BertLayer(l) => return l.forward(x, mask),
            Layer::Pool(mode) => return encoder::pool(x, *mode, mask),
            Layer::Tanh => return x.tanh(),
            Layer::Onnx(g) => return g.forward(x),
            _ => {}
        }
        match self {
            Layer::Conv2d { fast: Some(k), unfold: false, .. } if x.rank() == 4 && !plain => k.forward(x),
            Layer::Linear { fast: Some(k), .. } if x.rank() == 2 && !plain => k.forward(x),
            _ => self.forward_candle(x),
        }
    }

    /// Runs the layer with plain candle ops (differentiable).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Layer::Conv2d { weight, bias, stride, padding, relu, pool, unfold, .. } => {
                let y = if *unfold {
                    unfold_conv2d(x, weight, *padding, *stride)?
                } else {
                    x.conv2d(weight, *padding, *stride, 1, 1)?
                };
                let mut y = y.broadcast_add(bias)?;
                if *relu {
                    y = y.relu()?;
                }
                if let Some(p) = pool {
                    y = y.max_pool2d(*p)?;
                }
                Ok(y)
            }
            Layer::Linear { weight, bias, relu, .. } => {
                let y = x.matmul(&weight.t()?)?.broadcast_add(bias)?;
                if *relu {
                    y.relu()
                } else {
                    Ok(y)
                }
            }
            Layer::Flatten => x.flatten_from(1),
            Layer::BertEmbeddings(_) | Layer::BertLayer(_) | Layer::Pool(_) | Layer::Tanh | Layer::Onnx(_) => {
                self.forward_masked(x, None)
            }
        }
    }
}

/// Runs a list of layers in order.
pub fn forward_all(layers: &[Layer], x: &Tensor) -> Result<Tensor> {
    forward_all_masked(layers, x, None)
}

/// Runs a list of layers in order over a (possibly padded) batch.
pub fn forward_all_masked(layers: &[Layer], x: &Tensor, mask: Option<&SeqMask>) -> Result<Tensor> {
    let mut y = x.clone();
    for layer in layers {
        y = layer.forward_masked(&y, mask)?;
    }
    Ok(y)
}

/// Convolution as im2col (one strided view per kernel offset, stacked) and a
/// batched matmul, built from differentiable candle ops only.
pub fn unfold_conv2d(x: &Tensor, w: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let (o, _, k, _) = w.dims4()?;
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?.pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let (oh, ow) = ((h + 2 * padding - k) / stride + 1, (wd + 2 * padding - k) / stride + 1);
    let mut cols = Vec::with_capacity(k * k);
    for i in 0..k {
        for j in 0..k {
            let mut v = xp.narrow(2, i, (oh - 1) * stride + 1)?.narrow(3, j, (ow - 1) * stride + 1)?;
            if stride > 1 {
                let rows: Vec<u32> = (0..oh).map(|r| (r * stride) as u32).collect();
                let cols: Vec<u32> = (0..ow).map(|c| (c * stride) as u32).collect();
                v = v
                    .contiguous()?
                    .index_select(&Tensor::new(rows, x.device())?, 2)?
                    .contiguous()?
                    .index_select(&Tensor::new(cols, x.device())?, 3)?;
            }
            cols.push(v);
        }
    }
    let cols = Tensor::stack(&cols, 2)?.reshape((b, c * k * k, oh * ow))?;
    w.reshape((o, c * k * k))?.broadcast_matmul(&cols)?.reshape((b, o, oh, ow))
}
