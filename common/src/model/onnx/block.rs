//! One imported subgraph (a block or an exit head), compiled once by tract
//! with a symbolic batch and run on candle tensors.

use candle_core::{Device, Tensor};
use tract_onnx::prelude::*;

use super::graph::BATCH;
use super::OnnxError;

type Plan = TypedSimplePlan;

/// A compiled ONNX subgraph: `[B, input...]` in, `[B, output...]` out.
#[derive(Clone)]
pub struct OnnxBlock {
    plan: Arc<Plan>,
    input: Vec<usize>,
    output: Vec<usize>,
}

impl std::fmt::Debug for OnnxBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxBlock").field("input", &self.input).field("output", &self.output).finish()
    }
}

impl OnnxBlock {
    /// Compiles a serialized ONNX model (one input, one output) for inputs
    /// of per-sample shape `input`, checking that it answers `output`.
    pub fn new(graph: &[u8], input: &[usize], output: &[usize]) -> Result<Self, OnnxError> {
        let compile = |e: TractError| OnnxError::Compile(format!("{e:#}"));
        let mut model = tract_onnx::onnx().model_for_read(&mut &graph[..]).map_err(compile)?;
        let batch = model.sym(BATCH);
        let mut dims: Vec<TDim> = vec![batch.into()];
        dims.extend(input.iter().map(|&d| TDim::from(d)));
        model.set_input_fact(0, f32::fact(&dims).into()).map_err(compile)?;
        let typed = model.into_optimized().map_err(compile)?;
        let fact = typed.output_fact(0).map_err(compile)?;
        let got: Vec<String> = fact.shape.iter().skip(1).map(|d| d.to_string()).collect();
        let want: Vec<String> = output.iter().map(|d| d.to_string()).collect();
        if got != want {
            return Err(OnnxError::Compile(format!(
                "the subgraph answers [batch, {}], the manifest says [batch, {}]",
                got.join(", "),
                want.join(", ")
            )));
        }
        let plan = typed.into_runnable().map_err(compile)?;
        Ok(Self { plan, input: input.to_vec(), output: output.to_vec() })
    }

    /// Runs the subgraph on a batch `[B, input...]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims();
        if dims.len() != self.input.len() + 1 || dims[1..] != self.input[..] {
            candle_core::bail!("an ONNX block expects [batch, {:?}], got {dims:?}", self.input);
        }
        if x.track_op() {
            candle_core::bail!("ONNX blocks run inference only (they have no backward pass)");
        }
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let run = |e: TractError| candle_core::Error::Msg(format!("ONNX block: {e:#}"));
        let input = tract_ndarray::ArrayD::from_shape_vec(dims, values)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .into_tensor();
        let out = self.plan.run(tvec!(input.into_tvalue())).map_err(run)?;
        let out = out[0].to_plain_array_view::<f32>().map_err(run)?;
        let mut shape = vec![dims[0]];
        shape.extend_from_slice(&self.output);
        if out.shape() != shape.as_slice() {
            candle_core::bail!("an ONNX block answered {:?}, not {shape:?}", out.shape());
        }
        let values: Vec<f32> = out.iter().copied().collect();
        Tensor::from_vec(values, shape, &Device::Cpu)
    }
}

/// Runs a whole ONNX graph (one input, any outputs) on a batch of flat
/// inputs of per-sample shape `input`: every output by name, flat. The
/// reference the imported blocks are checked and measured against.
pub fn run_graph(graph: &[u8], input: &[usize], rows: &[f32]) -> Result<Vec<(String, Vec<f32>)>, OnnxError> {
    let compile = |e: TractError| OnnxError::Compile(format!("{e:#}"));
    let per: usize = input.iter().product();
    let batch = rows.len().checked_div(per).unwrap_or(0);
    let mut dims = vec![batch];
    dims.extend_from_slice(input);
    let model = super::graph::engine()
        .model_for_read(&mut &graph[..])
        .and_then(|m| m.with_input_fact(0, f32::fact(&dims).into()))
        .and_then(|m| m.into_optimized())
        .map_err(compile)?;
    let names: Vec<String> = model
        .output_outlets()
        .map_err(compile)?
        .iter()
        .map(|o| model.outlet_label(*o).map_or_else(|| model.node(o.node).name.clone(), str::to_string))
        .collect();
    let plan = model.into_runnable().map_err(compile)?;
    let x = tract_ndarray::ArrayD::from_shape_vec(dims, rows.to_vec())
        .map_err(|e| OnnxError::Compile(e.to_string()))?
        .into_tensor();
    let out = plan.run(tvec!(x.into_tvalue())).map_err(compile)?;
    names
        .into_iter()
        .zip(out.iter())
        .map(|(name, t)| Ok((name, t.to_plain_array_view::<f32>().map_err(compile)?.iter().copied().collect())))
        .collect()
}
