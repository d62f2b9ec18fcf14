//! An ONNX graph as `import onnx` sees it: one input, nodes in topological
//! order, which of them compute on the input (the rest only fold constants),
//! the shape of every tensor at batch 1 and 2 (from tract's analysis), the
//! backbone's cut points, and the subgraph between two tensors written back
//! as an ONNX model.

use std::collections::{BTreeSet, HashMap, HashSet};

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;
use tract_onnx::prelude::*;

use super::OnnxError;

/// ONNX's element type code of f32.
const FLOAT: i32 = 1;

/// The name of the batch dimension in the subgraphs `import onnx` writes.
pub const BATCH: &str = "batch";

/// One node, as much of it as the analysis needs.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name, or `#index` when the graph leaves it empty.
    pub name: String,
    pub op: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Whether the node computes only from initializers and constants (a
    /// `Constant`, an `Identity` of a shared weight): such nodes are copied
    /// into every part that reads them.
    pub constant: bool,
}

/// A parsed, checked ONNX graph.
#[derive(Debug, Clone)]
pub struct Graph {
    pub model: pb::ModelProto,
    /// The one graph input that is not an initializer.
    pub input: String,
    /// Its shape without the batch dimension.
    pub input_shape: Vec<usize>,
    pub nodes: Vec<Node>,
    /// The graph outputs, in order.
    pub outputs: Vec<String>,
    /// Which node writes each tensor.
    producer: HashMap<String, usize>,
    /// Initializers by name (their dims and element type).
    initializers: HashMap<String, (Vec<usize>, i32)>,
    /// Per-sample shapes (batch dimension dropped) of the f32 tensors whose
    /// first axis is the batch, from tract's analysis at batch 1 and 2.
    batched: HashMap<String, Vec<usize>>,
    /// Shapes at batch 1 of every tensor tract named (for the FLOP count).
    shapes: HashMap<String, Vec<usize>>,
}

impl Graph {
    /// Parses and checks a graph: one f32 input whose dimensions other than
    /// the batch are fixed, ops tract runs, nodes in topological order, and
    /// tract's analysis of it at batch 1 and batch 2.
    pub fn parse(bytes: &[u8]) -> Result<Self, OnnxError> {
        let model = pb::ModelProto::decode(bytes).map_err(|e| OnnxError::Decode(e.to_string()))?;
        let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
        let initializers: HashMap<String, (Vec<usize>, i32)> = graph
            .initializer
            .iter()
            .map(|t| (t.name.clone(), (t.dims.iter().map(|&d| d.max(0) as usize).collect(), t.data_type)))
            .collect();
        let inputs: Vec<&pb::ValueInfoProto> =
            graph.input.iter().filter(|i| !initializers.contains_key(&i.name)).collect();
        let [input] = inputs.as_slice() else {
            return Err(OnnxError::Inputs(inputs.iter().map(|i| i.name.clone()).collect()));
        };
        let input_shape = input_shape(input)?;
        let register = tract_onnx::onnx().op_register;
        let mut nodes = Vec::with_capacity(graph.node.len());
        let mut producer = HashMap::new();
        let mut constant_tensors: HashSet<&str> = initializers.keys().map(String::as_str).collect();
        for (i, n) in graph.node.iter().enumerate() {
            let name = if n.name.is_empty() { format!("#{i}") } else { n.name.clone() };
            let op = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op_type.clone()
            } else {
                format!("{}:{}", n.domain, n.op_type)
            };
            if !register.0.contains_key(&op) {
                return Err(OnnxError::UnsupportedOp { op, node: name, why: "tract has no implementation of it" });
            }
            if n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
                return Err(OnnxError::UnsupportedOp {
                    op,
                    node: name,
                    why: "it holds a subgraph (control flow), which cannot be cut",
                });
            }
            for t in n.input.iter().filter(|t| !t.is_empty()) {
                if *t != input.name && !initializers.contains_key(t) && !producer.contains_key(t) {
                    return Err(OnnxError::NotSorted { node: name, tensor: t.clone() });
                }
            }
            let constant = n.input.iter().filter(|t| !t.is_empty()).all(|t| constant_tensors.contains(t.as_str()));
            if constant {
                constant_tensors.extend(n.output.iter().map(String::as_str));
            }
            for t in &n.output {
                producer.insert(t.clone(), i);
            }
            nodes.push(Node { name, op, inputs: n.input.clone(), outputs: n.output.clone(), constant });
        }
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let mut g = Graph {
            input: input.name.clone(),
            input_shape,
            nodes,
            outputs,
            producer,
            initializers,
            batched: HashMap::new(),
            shapes: HashMap::new(),
            model,
        };
        g.analyse()?;
        Ok(g)
    }

    /// Runs tract's analysis at batch 1 and 2: the shape of every tensor,
    /// and which f32 tensors carry the batch on their first axis (the only
    /// ones a split can send).
    fn analyse(&mut self) -> Result<(), OnnxError> {
        let one = self.tract_shapes(1)?;
        let two = self.tract_shapes(2)?;
        for (name, (shape, float)) in &one {
            let Some((shape2, _)) = two.get(name) else { continue };
            if *float && shape.first() == Some(&1) && shape2.first() == Some(&2) && shape[1..] == shape2[1..] {
                self.batched.insert(name.clone(), shape[1..].to_vec());
            }
        }
        self.shapes = one.into_iter().map(|(k, (s, _))| (k, s)).collect();
        self.batched.insert(self.input.clone(), self.input_shape.clone());
        Ok(())
    }

    /// Shapes (and whether f32) of the tensors tract's typed model names,
    /// with the input at batch `batch`.
    fn tract_shapes(&self, batch: usize) -> Result<HashMap<String, (Vec<usize>, bool)>, OnnxError> {
        let analysis = |e: TractError| OnnxError::Analysis { batch, message: format!("{e:#}") };
        let mut dims = vec![batch];
        dims.extend_from_slice(&self.input_shape);
        let model = engine()
            .model_for_proto_model(&self.model)
            .and_then(|m| m.with_input_fact(0, f32::fact(&dims).into()))
            .and_then(|m| m.into_typed())
            .map_err(analysis)?;
        let mut out = HashMap::new();
        for node in model.nodes() {
            for (slot, o) in node.outputs.iter().enumerate() {
                let Some(label) = model.outlet_label(OutletId::new(node.id, slot)) else { continue };
                if let Some(shape) = o.fact.shape.as_concrete() {
                    out.insert(label.to_string(), (shape.to_vec(), o.fact.datum_type == f32::datum_type()));
                }
            }
        }
        Ok(out)
    }

    pub fn node_index(&self, tensor: &str) -> Option<usize> {
        self.producer.get(tensor).copied()
    }

    /// Per-sample shape of a tensor with the batch first (f32).
    pub fn batched_shape(&self, tensor: &str) -> Option<&[usize]> {
        self.batched.get(tensor).map(Vec::as_slice)
    }

    /// Whether `tensor` is computed from the input (not a constant).
    fn is_dynamic(&self, tensor: &str) -> bool {
        tensor == self.input || self.node_index(tensor).is_some_and(|n| !self.nodes[n].constant)
    }

    /// The nodes computing on the input that `tensor` depends on
    /// (its producer included), in order.
    pub fn ancestors(&self, tensor: &str) -> BTreeSet<usize> {
        let mut needed: HashSet<&str> = HashSet::from([tensor]);
        let mut out = BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate().rev() {
            if n.constant || !n.outputs.iter().any(|o| needed.contains(o.as_str())) {
                continue;
            }
            out.insert(i);
            needed.extend(n.inputs.iter().map(String::as_str).filter(|t| self.is_dynamic(t)));
        }
        out
    }

    /// Whether `target` can be computed from the input without `skip`:
    /// false when every path from the input to `target` passes through
    /// `skip`.
    fn reachable_without(&self, target: &str, skip: &str) -> bool {
        let mut reached: HashSet<&str> = HashSet::new();
        if self.input != skip {
            reached.insert(&self.input);
        }
        for n in self.nodes.iter().filter(|n| !n.constant) {
            if n.inputs.iter().any(|t| reached.contains(t.as_str())) {
                reached.extend(n.outputs.iter().map(String::as_str).filter(|o| *o != skip));
            }
        }
        reached.contains(target)
    }

    /// The tensors every path from the input to `output` passes through
    /// (its dominators), f32 with the batch first, in topological order;
    /// the input and `output` themselves excluded.
    pub fn cut_points(&self, output: &str) -> Vec<String> {
        let mut cuts = Vec::new();
        for i in self.ancestors(output) {
            for t in &self.nodes[i].outputs {
                if t != output && self.batched.contains_key(t) && !self.reachable_without(output, t) {
                    cuts.push(t.clone());
                }
            }
        }
        cuts
    }

    /// The dynamic tensors `nodes` read that none of them writes.
    pub fn external_inputs(&self, nodes: &BTreeSet<usize>) -> BTreeSet<String> {
        let written: HashSet<&str> =
            nodes.iter().flat_map(|&i| self.nodes[i].outputs.iter().map(String::as_str)).collect();
        nodes
            .iter()
            .flat_map(|&i| self.nodes[i].inputs.iter())
            .filter(|t| !t.is_empty() && self.is_dynamic(t) && !written.contains(t.as_str()))
            .cloned()
            .collect()
    }

    /// The constant nodes `nodes` read, directly or through other constant
    /// nodes, and the initializers all of them read.
    fn constants_of(&self, nodes: &BTreeSet<usize>) -> (BTreeSet<usize>, BTreeSet<String>) {
        let mut consts = BTreeSet::new();
        let mut inits = BTreeSet::new();
        let mut stack: Vec<&str> =
            nodes.iter().flat_map(|&i| self.nodes[i].inputs.iter().map(String::as_str)).collect();
        while let Some(t) = stack.pop() {
            if self.initializers.contains_key(t) {
                inits.insert(t.to_string());
            } else if let Some(p) = self.node_index(t).filter(|&p| self.nodes[p].constant) {
                if consts.insert(p) {
                    stack.extend(self.nodes[p].inputs.iter().map(String::as_str));
                }
            }
        }
        (consts, inits)
    }

    /// Elements of the f32 initializers `nodes` read.
    pub fn params(&self, nodes: &BTreeSet<usize>) -> u64 {
        let (_, inits) = self.constants_of(nodes);
        inits
            .iter()
            .filter_map(|t| self.initializers.get(t))
            .filter(|(_, ty)| *ty == FLOAT)
            .map(|(dims, _)| dims.iter().product::<usize>() as u64)
            .sum()
    }

    /// Multiply-adds of one sample through `nodes`: Conv, Gemm and MatMul
    /// (the rest is element-wise or data movement, and not counted).
    pub fn macs(&self, nodes: &BTreeSet<usize>) -> u64 {
        nodes.iter().map(|&i| self.node_macs(i)).sum()
    }

    fn node_macs(&self, i: usize) -> u64 {
        let n = &self.nodes[i];
        // Shapes at batch 1: initializers, tract's analysis, the input.
        let dims = |t: &str| {
            self.initializers.get(t).map(|(d, _)| d.clone()).or_else(|| self.shapes.get(t).cloned()).or_else(|| {
                (t == self.input).then(|| std::iter::once(1).chain(self.input_shape.iter().copied()).collect())
            })
        };
        let Some(out) = n.outputs.first().and_then(|o| dims(o)) else { return 0 };
        let out: u64 = out.iter().product::<usize>() as u64;
        let a = || n.inputs.first().and_then(|t| dims(t));
        let reduced = match n.op.as_str() {
            "Conv" => n.inputs.get(1).and_then(|w| dims(w)).map(|w| w[1..].iter().product::<usize>()),
            "MatMul" => a().and_then(|a| a.last().copied()),
            "Gemm" => {
                let trans_a = self
                    .model
                    .graph
                    .as_ref()
                    .and_then(|g| g.node[i].attribute.iter().find(|at| at.name == "transA").map(|at| at.i != 0));
                a().and_then(|a| if trans_a == Some(true) { a.first().copied() } else { a.last().copied() })
            }
            _ => None,
        };
        reduced.map_or(0, |k| out * k as u64)
    }

    /// The part of the graph that computes `output` from `input`: `nodes`
    /// (dynamic, in order) with the constant nodes and initializers they
    /// read, as an ONNX model whose input and output have a dynamic batch.
    pub fn extract(&self, name: &str, input: &str, output: &str, nodes: &BTreeSet<usize>) -> Vec<u8> {
        let source = self.model.graph.as_ref().expect("parsed graphs have one");
        let (consts, inits) = self.constants_of(nodes);
        let keep: BTreeSet<usize> = nodes.union(&consts).copied().collect();
        let value = |tensor: &str| {
            let mut dim = vec![pb::tensor_shape_proto::Dimension {
                denotation: String::new(),
                value: Some(DimValue::DimParam(BATCH.into())),
            }];
            for &d in self.batched.get(tensor).map(Vec::as_slice).unwrap_or(&[]) {
                dim.push(pb::tensor_shape_proto::Dimension {
                    denotation: String::new(),
                    value: Some(DimValue::DimValue(d as i64)),
                });
            }
            pb::ValueInfoProto {
                name: tensor.to_string(),
                r#type: Some(pb::TypeProto {
                    denotation: String::new(),
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: FLOAT,
                        shape: Some(pb::TensorShapeProto { dim }),
                    })),
                }),
                doc_string: String::new(),
            }
        };
        let graph = pb::GraphProto {
            node: keep.iter().map(|&i| source.node[i].clone()).collect(),
            name: name.to_string(),
            initializer: source.initializer.iter().filter(|t| inits.contains(&t.name)).cloned().collect(),
            input: vec![value(input)],
            output: vec![value(output)],
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: self.model.ir_version,
            opset_import: self.model.opset_import.clone(),
            producer_name: "offramp import onnx".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(graph),
            functions: self.model.functions.clone(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

/// tract, reading only the graph's structure and the input fact it is
/// given: the annotations of a graph exported with a symbolic batch would
/// otherwise contradict the concrete batch of an analysis.
pub fn engine() -> tract_onnx::Onnx {
    tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_value_info(true)
}

/// The input's shape without its batch dimension: every other dimension
/// must be fixed.
fn input_shape(input: &pb::ValueInfoProto) -> Result<Vec<usize>, OnnxError> {
    let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => t,
        _ => return Err(OnnxError::InputType { input: input.name.clone(), got: "not a tensor".into() }),
    };
    if tensor.elem_type != FLOAT {
        return Err(OnnxError::InputType {
            input: input.name.clone(),
            got: format!("element type {}", tensor.elem_type),
        });
    }
    let dims = tensor.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    if dims.len() < 2 {
        return Err(OnnxError::InputRank { input: input.name.clone(), rank: dims.len() });
    }
    let mut shape = Vec::with_capacity(dims.len() - 1);
    for (axis, d) in dims.iter().enumerate().skip(1) {
        match &d.value {
            Some(DimValue::DimValue(v)) if *v > 0 => shape.push(*v as usize),
            other => {
                let dim = match other {
                    Some(DimValue::DimParam(p)) => format!("{p:?}"),
                    Some(DimValue::DimValue(v)) => v.to_string(),
                    None => "unknown".into(),
                };
                return Err(OnnxError::DynamicDim { input: input.name.clone(), axis, dim });
            }
        }
    }
    Ok(shape)
}
