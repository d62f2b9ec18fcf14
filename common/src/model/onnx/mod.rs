//! ONNX graphs as multi-exit classifiers (`offramp inspect onnx`,
//! `offramp import onnx`).
//!
//! An imported graph becomes an ordinary classifier bundle whose blocks and
//! exit heads are `onnx` layers ([`super::LayerSpec::Onnx`]): each holds one
//! subgraph, serialized as ONNX and stored as a `u8` tensor in the bundle's
//! weights file (`blocks.{b}.graph`, `exits.{e}.0.graph`), so the bundle's
//! fingerprints cover the subgraphs byte for byte, and splitting, saving,
//! policies, calibration, offload and the planner work on it unchanged. The
//! subgraphs run on [tract](https://github.com/sonos/tract) (pure Rust).
//!
//! Cutting: the backbone is what computes the final exit (the last name of
//! `--exits`) from the input. Its valid cut points are the tensors every path
//! from the input to that output passes through (its dominators), so a
//! residual block is never cut in its middle. Cuts `T1..Tk` make blocks
//! `input→T1, T1→T2, …, Tk→final`; each other exit's head (the nodes it needs
//! that the backbone does not) must read exactly one cut tensor, and hangs
//! after the block that writes it. Every node that computes on the input
//! lands in exactly one block or exit; constant nodes (`Constant`, an
//! `Identity` of a shared weight) are copied into each part that reads them.

mod block;
mod graph;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use candle_core::{Device, Tensor};
use serde::Serialize;

pub use block::{run_graph, OnnxBlock};
use graph::Graph;

use super::manifest::{block_tensor, exit_tensor, BlockSpec, ExitSpec, InputSpec, LayerSpec, Manifest, FORMAT_VERSION};
use super::{Bundle, ModelError};

/// What the bundle records as the input's preprocessing: pixels as Offramp's
/// loaders give them. A model that normalizes does so in its own `forward`,
/// which the export puts in block 0.
pub const PREPROCESS: &str =
    "pixels as u8 / 255 (as Offramp's loaders give them); any normalisation is the graph's own";

/// Name of the parameter holding a subgraph (`blocks.{b}.graph`).
pub const GRAPH_PARAM: &str = "graph";

/// Why an ONNX graph cannot be inspected, cut or run.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    #[error("not an ONNX model: {0}")]
    Decode(String),
    #[error("the ONNX model holds no graph")]
    NoGraph,
    #[error("the graph must have exactly one input (besides its initializers), it has {count}: {names:?}", count = .0.len(), names = .0)]
    Inputs(Vec<String>),
    #[error("the graph input {input:?} must be an f32 tensor, it is {got}")]
    InputType { input: String, got: String },
    #[error("the graph input {input:?} has rank {rank}: it needs a batch dimension and at least one more")]
    InputRank { input: String, rank: usize },
    #[error(
        "the graph input {input:?} has a dynamic dimension {dim} at axis {axis}: only the batch (axis 0) may be \
         dynamic; export with a fixed input size (dynamic_axes on axis 0 only)"
    )]
    DynamicDim { input: String, axis: usize, dim: String },
    #[error("unsupported op {op} at node {node:?}: {why}")]
    UnsupportedOp { op: String, node: String, why: &'static str },
    #[error("node {node:?} reads {tensor:?} before any node writes it (nodes must be in topological order)")]
    NotSorted { node: String, tensor: String },
    #[error(
        "tract cannot analyse the graph at batch {batch} (a reshape that bakes in the export's batch size? export \
         with dynamic_axes on the batch): {message}"
    )]
    Analysis { batch: usize, message: String },
    #[error("compiling an ONNX subgraph: {0}")]
    Compile(String),
    #[error("{name:?} is not an output of the graph (its outputs: {})", .outputs.join(", "))]
    UnknownOutput { name: String, outputs: Vec<String> },
    #[error("name at least one exit (--exits): the last one is the final output")]
    NoExits,
    #[error("{0:?} is named twice")]
    Duplicate(String),
    #[error("{tensor:?} is not a valid cut: {why} (valid cuts, in order: {})", list(.valid))]
    InvalidCut { tensor: String, why: &'static str, valid: Vec<String> },
    #[error("exit {exit:?} is computed by the backbone itself: it has no head of its own to hang off a cut")]
    ExitOnBackbone { exit: String },
    #[error("exit {exit:?} reads the graph input directly: an exit must hang off a cut after a block")]
    ExitOffInput { exit: String },
    #[error("exit {exit:?} is reachable from more than one cut: its head reads {}", .tensors.join(" and "))]
    ExitFromTwoCuts { exit: String, tensors: Vec<String> },
    #[error("exit {exit:?} hangs off {tensor:?}, which is {why}")]
    ExitOffNonCut { exit: String, tensor: String, why: String },
    #[error("exits {first:?} and {second:?} both hang off {cut:?}: a bundle has at most one exit per block")]
    TwoExitsOneCut { first: String, second: String, cut: String },
    #[error("node {node:?} is in the heads of both exits {first:?} and {second:?}")]
    NodeInTwoExits { node: String, first: String, second: String },
    #[error("node {node:?} ({op}) is in no block or exit: it computes only outputs --exits does not name")]
    NodeInNoPart { node: String, op: String },
    #[error("exit {exit:?} answers shape {shape:?} per sample: an exit must give one vector of class logits")]
    ExitShape { exit: String, shape: Vec<usize> },
    #[error("exit {exit:?} gives {classes} logits, the final output gives {expected}")]
    ClassMismatch { exit: String, classes: usize, expected: usize },
    #[error("{labels} labels given for {classes} classes")]
    LabelCount { labels: usize, classes: usize },
    #[error(transparent)]
    Bundle(#[from] ModelError),
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    let mut s = names.iter().take(12).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    if names.len() > 12 {
        s.push_str(&format!(", … ({} in all)", names.len()));
    }
    s
}

/// One valid cut point of the backbone.
#[derive(Debug, Clone, Serialize)]
pub struct CutPoint {
    pub tensor: String,
    /// The node that writes it, and its op.
    pub node: String,
    pub op: String,
    /// Per-sample shape (batch excluded).
    pub shape: Vec<usize>,
    /// Bytes of one sample in f32 (what the split sends uncompressed).
    pub bytes: usize,
    /// Multiply-adds (Conv, Gemm, MatMul) of one sample up to this tensor.
    pub macs_before: u64,
    /// f32 parameters the nodes up to this tensor read.
    pub params_before: u64,
}

/// A graph output, and the cut its head hangs off when it is a clean exit.
#[derive(Debug, Clone, Serialize)]
pub struct OutputInfo {
    pub name: String,
    pub shape: Option<Vec<usize>>,
    /// `None` for the final output (the backbone's end), or an output whose
    /// head does not start from one cut.
    pub hangs_off: Option<String>,
}

/// What `offramp inspect onnx` reports: a Neurosurgeon-style profile.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub input: String,
    pub input_shape: Vec<usize>,
    pub nodes: usize,
    /// The output whose dominators are the cuts (the last graph output
    /// unless chosen).
    pub final_output: String,
    pub cuts: Vec<CutPoint>,
    pub outputs: Vec<OutputInfo>,
    /// Multiply-adds and parameters of the whole backbone.
    pub backbone_macs: u64,
    pub backbone_params: u64,
}

/// Profiles a graph: its valid cut points for the backbone that ends in
/// `final_output` (default: the last graph output) and its outputs.
pub fn inspect(bytes: &[u8], final_output: Option<&str>) -> Result<Profile, OnnxError> {
    let g = Graph::parse(bytes)?;
    let final_output = match final_output {
        Some(f) => known_output(&g, f)?.to_string(),
        None => g.outputs.last().cloned().ok_or(OnnxError::NoExits)?,
    };
    let backbone = g.ancestors(&final_output);
    let cut_names = g.cut_points(&final_output);
    let cuts = cut_names
        .iter()
        .map(|t| {
            let node = &g.nodes[g.node_index(t).expect("cuts are written by nodes")];
            let shape = g.batched_shape(t).expect("cuts have shapes").to_vec();
            let before = g.ancestors(t);
            CutPoint {
                tensor: t.clone(),
                node: node.name.clone(),
                op: node.op.clone(),
                bytes: 4 * shape.iter().product::<usize>(),
                shape,
                macs_before: g.macs(&before),
                params_before: g.params(&before),
            }
        })
        .collect();
    let outputs = g
        .outputs
        .iter()
        .map(|o| {
            let hangs_off = (*o != final_output)
                .then(|| {
                    let head: BTreeSet<usize> = g.ancestors(o).difference(&backbone).copied().collect();
                    let ext = g.external_inputs(&head);
                    (ext.len() == 1).then(|| ext.into_iter().next()).flatten().filter(|t| cut_names.contains(t))
                })
                .flatten();
            OutputInfo { name: o.clone(), shape: g.batched_shape(o).map(<[usize]>::to_vec), hangs_off }
        })
        .collect();
    Ok(Profile {
        input: g.input.clone(),
        input_shape: g.input_shape.clone(),
        nodes: g.nodes.len(),
        final_output,
        cuts,
        outputs,
        backbone_macs: g.macs(&backbone),
        backbone_params: g.params(&backbone),
    })
}

fn known_output<'a>(g: &Graph, name: &'a str) -> Result<&'a str, OnnxError> {
    if g.outputs.iter().any(|o| o == name) {
        Ok(name)
    } else {
        Err(OnnxError::UnknownOutput { name: name.to_string(), outputs: g.outputs.clone() })
    }
}

/// How to cut a graph into a bundle.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub model_id: String,
    pub description: String,
    /// Tensors to cut at (any order; blocks follow the graph).
    pub cuts: Vec<String>,
    /// Graph outputs that are exits; the last is the final output.
    pub exits: Vec<String>,
    /// Class labels (default: `0..classes`).
    pub labels: Option<Vec<String>>,
}

/// A part of the graph: the nodes that compute `to` from `from`.
struct Part {
    name: String,
    from: String,
    to: String,
    nodes: BTreeSet<usize>,
}

/// Cuts a graph into blocks and exit heads and builds the bundle (every
/// subgraph compiled once, so a graph tract cannot run fails here).
pub fn import(bytes: &[u8], spec: &ImportSpec) -> Result<Bundle, OnnxError> {
    let g = Graph::parse(bytes)?;
    let (final_output, side) = spec.exits.split_last().ok_or(OnnxError::NoExits)?;
    let mut seen = BTreeSet::new();
    for name in spec.exits.iter().chain(&spec.cuts) {
        if !seen.insert(name) {
            return Err(OnnxError::Duplicate(name.clone()));
        }
    }
    for e in &spec.exits {
        known_output(&g, e)?;
    }
    let valid = g.cut_points(final_output);
    let blocks = backbone(&g, &spec.cuts, final_output, &valid)?;
    let exits = exit_heads(&g, side, &blocks, &valid)?;
    let classes = logits(&g, final_output)?;
    for (_, e) in &exits {
        let c = logits(&g, &e.to)?;
        if c != classes {
            return Err(OnnxError::ClassMismatch { exit: e.to.clone(), classes: c, expected: classes });
        }
    }
    let labels = match &spec.labels {
        Some(l) if l.len() != classes => return Err(OnnxError::LabelCount { labels: l.len(), classes }),
        Some(l) => l.clone(),
        None => (0..classes).map(|c| c.to_string()).collect(),
    };
    bundle(&g, spec, labels, &blocks, &exits)
}

/// The backbone's blocks: `input→T1, …, Tk→final` for the valid cuts
/// `cuts` (in graph order), each with the nodes it adds.
fn backbone(g: &Graph, cuts: &[String], final_output: &str, valid: &[String]) -> Result<Vec<Part>, OnnxError> {
    for c in cuts {
        if !valid.contains(c) {
            let why = if g.node_index(c).is_none() && *c != g.input {
                "no node of the graph writes it"
            } else if *c == g.input || c == final_output {
                "the input and the final output are the ends of the backbone, not cuts"
            } else if g.batched_shape(c).is_none() {
                "it is not an f32 tensor with the batch on its first axis"
            } else if !g.ancestors(final_output).contains(&g.node_index(c).expect("checked")) {
                "the final output does not depend on it"
            } else {
                "paths from the input to the final output go around it (it is inside a residual block or a branch)"
            };
            return Err(OnnxError::InvalidCut { tensor: c.clone(), why, valid: valid.to_vec() });
        }
    }
    let mut bounds: Vec<&str> = vec![g.input.as_str()];
    bounds.extend(valid.iter().filter(|c| cuts.contains(c)).map(String::as_str));
    bounds.push(final_output);
    let mut blocks = Vec::with_capacity(bounds.len() - 1);
    let mut before = BTreeSet::new();
    for (b, pair) in bounds.windows(2).enumerate() {
        let upto = g.ancestors(pair[1]);
        let nodes: BTreeSet<usize> = upto.difference(&before).copied().collect();
        let name = g.nodes[g.node_index(pair[1]).expect("block ends are written by nodes")].name.clone();
        blocks.push(Part { name: format!("b{b} {name}"), from: pair[0].into(), to: pair[1].into(), nodes });
        before = upto;
    }
    Ok(blocks)
}

/// The side exits' heads (the nodes each needs beyond the backbone), each
/// off one cut, with the block it hangs after, in block order; and the check
/// that every node computing on the input is in one block or one head.
fn exit_heads(g: &Graph, side: &[String], blocks: &[Part], valid: &[String]) -> Result<Vec<(usize, Part)>, OnnxError> {
    let backbone: BTreeSet<usize> = blocks.iter().flat_map(|b| b.nodes.iter().copied()).collect();
    let mut exits: Vec<(usize, Part)> = Vec::with_capacity(side.len());
    let mut owner: HashMap<usize, &str> = HashMap::new();
    for e in side {
        let head: BTreeSet<usize> = g.ancestors(e).difference(&backbone).copied().collect();
        if head.is_empty() {
            return Err(OnnxError::ExitOnBackbone { exit: e.clone() });
        }
        for &n in &head {
            if let Some(first) = owner.insert(n, e) {
                return Err(OnnxError::NodeInTwoExits {
                    node: g.nodes[n].name.clone(),
                    first: first.to_string(),
                    second: e.clone(),
                });
            }
        }
        let reads: Vec<String> = g.external_inputs(&head).into_iter().collect();
        let [from] = reads.as_slice() else {
            return Err(OnnxError::ExitFromTwoCuts { exit: e.clone(), tensors: reads });
        };
        if *from == g.input {
            return Err(OnnxError::ExitOffInput { exit: e.clone() });
        }
        // The block that writes the cut (the last block writes the final output).
        let Some(after) = blocks[..blocks.len() - 1].iter().position(|b| b.to == *from) else {
            let why = if valid.contains(from) {
                "a valid cut missing from --cuts: add it".to_string()
            } else {
                format!("not a valid cut point (valid: {})", list(valid))
            };
            return Err(OnnxError::ExitOffNonCut { exit: e.clone(), tensor: from.clone(), why });
        };
        if let Some((_, other)) = exits.iter().find(|(a, _)| *a == after) {
            return Err(OnnxError::TwoExitsOneCut { first: other.name.clone(), second: e.clone(), cut: from.clone() });
        }
        exits.push((after, Part { name: e.clone(), from: from.clone(), to: e.clone(), nodes: head }));
    }
    let stray = (0..g.nodes.len()).find(|n| !g.nodes[*n].constant && !backbone.contains(n) && !owner.contains_key(n));
    if let Some(n) = stray {
        return Err(OnnxError::NodeInNoPart { node: g.nodes[n].name.clone(), op: g.nodes[n].op.clone() });
    }
    exits.sort_by_key(|(after, _)| *after);
    Ok(exits)
}

/// The manifest and the subgraphs (`u8` tensors) of the cut graph, as a
/// validated bundle; the final exit is the last block's own output (an
/// empty head).
fn bundle(
    g: &Graph,
    spec: &ImportSpec,
    labels: Vec<String>,
    blocks: &[Part],
    exits: &[(usize, Part)],
) -> Result<Bundle, OnnxError> {
    let mut tensors = HashMap::new();
    let mut layer = |part: &Part, tensor: String| -> Result<LayerSpec, OnnxError> {
        let graph = g.extract(&part.name, &part.from, &part.to, &part.nodes);
        let spec = LayerSpec::Onnx {
            from: part.from.clone(),
            to: part.to.clone(),
            input: g.batched_shape(&part.from).expect("cuts have shapes").to_vec(),
            output: g.batched_shape(&part.to).expect("exits have shapes").to_vec(),
            graph_bytes: graph.len(),
            nodes: part.nodes.len(),
            macs: g.macs(&part.nodes),
            params: g.params(&part.nodes),
        };
        let len = graph.len();
        tensors.insert(tensor, Tensor::from_vec(graph, len, &Device::Cpu).map_err(ModelError::from)?);
        Ok(spec)
    };
    let mut block_specs = Vec::with_capacity(blocks.len());
    for (b, part) in blocks.iter().enumerate() {
        block_specs.push(BlockSpec { name: part.name.clone(), layer: layer(part, block_tensor(b, GRAPH_PARAM))? });
    }
    let mut exit_specs = Vec::with_capacity(exits.len() + 1);
    for (e, (after, part)) in exits.iter().enumerate() {
        let head = layer(part, exit_tensor(e, 0, GRAPH_PARAM))?;
        exit_specs.push(ExitSpec { name: part.name.clone(), after_block: *after, layers: vec![head] });
    }
    let last = blocks.last().expect("a backbone has a block");
    exit_specs.push(ExitSpec { name: last.to.clone(), after_block: blocks.len() - 1, layers: vec![] });
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        model_id: spec.model_id.clone(),
        description: spec.description.clone(),
        input: InputSpec {
            shape: g.input_shape.clone(),
            dtype: "f32".into(),
            preprocess: PREPROCESS.into(),
            tokenizer: None,
        },
        labels,
        weights: super::manifest::WEIGHTS_FILE.into(),
        blocks: block_specs,
        exits: exit_specs,
        holds: None,
        peer_fingerprints: BTreeMap::new(),
    };
    Ok(Bundle::from_parts(manifest, tensors)?)
}

/// The number of classes an exit output gives (its per-sample shape must
/// be one vector).
fn logits(g: &Graph, exit: &str) -> Result<usize, OnnxError> {
    match g.batched_shape(exit) {
        Some([c]) => Ok(*c),
        other => Err(OnnxError::ExitShape {
            exit: exit.to_string(),
            shape: other.map(<[usize]>::to_vec).unwrap_or_default(),
        }),
    }
}
