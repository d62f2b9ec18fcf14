//! ONNX graphs brought in from PyTorch (`tests/fixtures/onnx`, written by
//! deploy/scripts/onnx_fixtures.py): inspected, cut into blocks and exits,
//! split at every cut, checked against the whole graph and against what the
//! PyTorch module answered, refused by name when they cannot be cut, and
//! served by a real cloud and edge over gRPC.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::model::onnx::{self, ImportSpec};
use offramp_common::model::softmax_in_place;
use offramp_common::model::SplitSide;
use offramp_common::{Bundle, Executor, Policy};
use offramp_edge::{Edge, EdgeConfig, Tier};
use offramp_training::import_onnx::{self, ImportOnnxArgs, InspectOnnxArgs};

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/onnx").join(name)
}

/// Three inputs and the PyTorch module's outputs for them.
struct Io {
    input: Vec<f32>,
    batch: usize,
    outputs: Vec<(String, Vec<f32>)>,
}

fn io(model: &str) -> Io {
    let text = std::fs::read_to_string(fixture(&format!("{model}.io.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    let outputs = v["outputs"].as_object().unwrap().iter().map(|(k, x)| (k.clone(), floats(x))).collect();
    Io { input: floats(&v["input"]), batch: v["batch"].as_u64().unwrap() as usize, outputs }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn flat(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Imports `model` cut at every valid cut point, with its three outputs as exits.
fn import_all_cuts(model: &str, exits: &[&str]) -> Bundle {
    let bytes = std::fs::read(fixture(&format!("{model}.onnx"))).unwrap();
    let profile = onnx::inspect(&bytes, None).unwrap();
    let spec = ImportSpec {
        model_id: model.into(),
        description: String::new(),
        cuts: profile.cuts.iter().map(|c| c.tensor.clone()).collect(),
        exits: exits.iter().map(|e| e.to_string()).collect(),
        labels: None,
    };
    onnx::import(&bytes, &spec).unwrap()
}

#[test]
fn inspect_lists_the_cuts_and_never_one_inside_a_residual_block() {
    let args = InspectOnnxArgs { from: fixture("res_cnn.onnx"), final_output: None, json: false };
    let p = import_onnx::inspect(&args).unwrap();
    let cuts: Vec<&str> = p.cuts.iter().map(|c| c.tensor.as_str()).collect();
    for inside in ["/res1/Conv_output_0", "/Relu_1_output_0", "/res2/Conv_output_0"] {
        assert!(!cuts.contains(&inside), "{inside} is inside the residual block: {cuts:?}");
    }
    for (tensor, shape) in [("/MaxPool_output_0", vec![8, 14, 14]), ("/Relu_2_output_0", vec![8, 14, 14])] {
        let c = p.cuts.iter().find(|c| c.tensor == tensor).unwrap_or_else(|| panic!("{tensor} in {cuts:?}"));
        assert_eq!(c.shape, shape);
        assert_eq!(c.bytes, 4 * 8 * 14 * 14);
    }
    assert_eq!(cuts.last(), Some(&"/Relu_4_output_0"));
    // Multiply-adds along the backbone: the stem conv (28x28x8 outputs, 9
    // taps of 1 channel), two 8->8 convs at 14x14, the stride-2 8->16 conv
    // at 7x7, fc1 784->32 and fc2 32->10.
    let stem = 28 * 28 * 8 * 9;
    let res = 2 * 14 * 14 * 8 * 8 * 9;
    let down = 7 * 7 * 16 * 8 * 9;
    let fc = 784 * 32 + 32 * 10;
    assert_eq!(p.cuts[0].macs_before, stem as u64);
    assert_eq!(p.backbone_macs, (stem + res + down + fc) as u64);
    assert!(p
        .cuts
        .windows(2)
        .all(|w| w[0].macs_before <= w[1].macs_before && w[0].params_before <= w[1].params_before));
    assert_eq!(
        p.backbone_params,
        (8 * 9 + 8 + 2 * (8 * 8 * 9 + 8) + 16 * 8 * 9 + 16 + 784 * 32 + 32 + 32 * 10 + 10) as u64
    );
    let hangs: Vec<(&str, Option<&str>)> =
        p.outputs.iter().map(|o| (o.name.as_str(), o.hangs_off.as_deref())).collect();
    assert_eq!(
        hangs,
        [("exit_a", Some("/MaxPool_output_0")), ("exit_b", Some("/Flatten_1_output_0")), ("final", None)]
    );
    let text = import_onnx::render_profile(&p);
    assert!(text.contains("exit off cut \"/MaxPool_output_0\""), "{text}");
}

/// Edge then cloud, at every cut of both fixtures, equals the whole graph
/// run in one piece (within 1e-5), and every exit answers what the PyTorch
/// module did.
#[test]
fn split_at_every_cut_equals_the_whole_graph_and_the_exits_answer_like_pytorch() {
    for (model, exits) in [("res_cnn", ["exit_a", "exit_b", "final"]), ("tiny_vit", ["exit_1", "exit_2", "final"])] {
        let io = io(model);
        let full = import_all_cuts(model, &exits);
        let n = full.num_blocks();
        assert!(n >= 6, "{model}: {n} blocks");
        let bytes = std::fs::read(fixture(&format!("{model}.onnx"))).unwrap();
        let whole = onnx::run_graph(&bytes, full.shape_at(0).unwrap(), &io.input).unwrap();
        let reference = |name: &str| &whole.iter().find(|(o, _)| o == name).unwrap().1;
        let torch = |name: &str| &io.outputs.iter().find(|(o, _)| o == name).unwrap().1;
        // The exits of the whole bundle, against tract's whole graph and PyTorch.
        let exec = Executor::new(Arc::new(full.clone()));
        let x = exec.batch_at(0, &io.input, io.batch).unwrap();
        let logits = exec.forward_exits(&x, 0..n).unwrap();
        assert_eq!(logits.len(), 3);
        for (e, l) in &logits {
            let name = &full.manifest().exits[*e].name;
            assert!(max_diff(&flat(l), reference(name)) < 1e-5, "{model} {name}");
            assert!(max_diff(&flat(l), torch(name)) < 1e-4, "{model} {name} against PyTorch");
        }
        let dir = tmp(&format!("onnx-every-k-{model}"));
        for k in 0..=n {
            let (edge_b, cloud_b) = full.split(k).unwrap();
            edge_b.save(dir.join(format!("k{k}/edge"))).unwrap();
            cloud_b.save(dir.join(format!("k{k}/cloud"))).unwrap();
            let edge_b = Bundle::load(dir.join(format!("k{k}/edge"))).unwrap();
            let cloud_b = Bundle::load(dir.join(format!("k{k}/cloud"))).unwrap();
            assert_eq!(cloud_b.fingerprint(SplitSide::Cloud, k), full.fingerprint(SplitSide::Cloud, k));
            let (e, c) = (Executor::new(Arc::new(edge_b)), Executor::new(Arc::new(cloud_b)));
            let mut seen = e.forward_exits(&x, 0..k).unwrap();
            let hidden = e.forward_blocks(&x, 0..k).unwrap();
            seen.extend(c.forward_exits(&hidden, k..n).unwrap());
            assert_eq!(seen.len(), 3, "{model} K={k}: every exit on one side or the other");
            for (ex, l) in &seen {
                let name = &full.manifest().exits[*ex].name;
                assert!(max_diff(&flat(l), reference(name)) < 1e-5, "{model} K={k} {name}");
            }
        }
    }
}

/// An imported bundle's fingerprints cover its subgraphs: one changed bit
/// of one weight inside one block's graph changes the fingerprint of every
/// edge side holding that block, and of no other.
#[test]
fn the_fingerprints_cover_the_subgraphs() {
    let full = import_all_cuts("res_cnn", &["exit_a", "exit_b", "final"]);
    let dir = tmp("onnx-fingerprint");
    full.save(&dir).unwrap();
    // The block with the largest graph (fc1: its bytes are mostly weights).
    let b = (0..full.num_blocks())
        .max_by_key(|&b| match &full.manifest().blocks[b].layer {
            offramp_common::model::LayerSpec::Onnx { graph_bytes, .. } => *graph_bytes,
            _ => 0,
        })
        .unwrap();
    let weights = dir.join("model.safetensors");
    let name = format!("blocks.{b}.graph");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();
    let mut graph = tensors[&name].to_vec1::<u8>().unwrap();
    let middle = graph.len() / 2;
    graph[middle] ^= 1;
    tensors.insert(name, candle_core::Tensor::new(graph, &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let edited = Bundle::load(&dir).unwrap();
    for k in 0..=full.num_blocks() {
        let (was, is) = (full.fingerprint(SplitSide::Edge, k), edited.fingerprint(SplitSide::Edge, k));
        if k > b {
            assert_ne!(was, is, "K={k} holds the edited block {b}");
        } else {
            assert_eq!(was, is, "K={k} does not hold block {b}");
        }
    }
}

fn import_err(from: &str, cuts: &[&str], exits: &[&str]) -> String {
    let out = tmp(&format!("onnx-refused-{}", from.trim_end_matches(".onnx")));
    let args = ImportOnnxArgs {
        from: fixture(from),
        cuts: cuts.iter().map(|c| c.to_string()).collect(),
        exits: exits.iter().map(|e| e.to_string()).collect(),
        labels: vec![],
        model_id: None,
        out: out.join("bundle"),
    };
    let e = import_onnx::import(&args).map(|_| ()).unwrap_err();
    assert!(!out.join("bundle").exists(), "nothing is written for a refused graph");
    format!("{e:#}")
}

#[test]
fn graphs_that_cannot_be_cut_are_refused_by_name() {
    let exits = ["exit_a", "exit_b", "final"];
    // A cut inside the residual block.
    let e = import_err("res_cnn.onnx", &["/MaxPool_output_0", "/Relu_1_output_0"], &exits);
    assert!(e.contains("\"/Relu_1_output_0\" is not a valid cut"), "{e}");
    assert!(e.contains("go around it"), "{e}");
    assert!(e.contains("\"/Relu_2_output_0\""), "the valid cuts are listed: {e}");
    // An exit whose head reads two cuts.
    let e = import_err("two_cuts.onnx", &["/MaxPool_output_0", "/Relu_3_output_0", "/Flatten_2_output_0"], &exits);
    assert!(e.contains("exit \"exit_a\" is reachable from more than one cut"), "{e}");
    assert!(e.contains("/MaxPool_output_0") && e.contains("/Relu_3_output_0"), "{e}");
    // An op no engine here runs: the op and the node are named.
    let e = import_err("unsupported.onnx", &["/MaxPool_output_0"], &exits);
    assert!(e.contains("unsupported op com.example:Mystery at node \"/stem/mystery\""), "{e}");
    // A dynamic spatial dimension.
    let e = import_err("dynamic_hw.onnx", &["/MaxPool_output_0"], &exits);
    assert!(e.contains("dynamic dimension \"height\" at axis 2"), "{e}");
    // An exit off a tensor that is a valid cut but not among --cuts.
    let e = import_err("res_cnn.onnx", &["/Flatten_1_output_0"], &exits);
    assert!(
        e.contains("exit \"exit_a\" hangs off \"/MaxPool_output_0\", which is a valid cut missing from --cuts"),
        "{e}"
    );
    // A name that is no output.
    let e = import_err("res_cnn.onnx", &["/MaxPool_output_0"], &["exit_a", "logits"]);
    assert!(e.contains("\"logits\" is not an output of the graph (its outputs: exit_a, exit_b, final)"), "{e}");
    // An output left out of --exits leaves its head in no block.
    let e = import_err("res_cnn.onnx", &["/MaxPool_output_0"], &["exit_a", "final"]);
    assert!(e.contains("node \"/exit_b/Gemm\" (Gemm) is in no block or exit"), "{e}");
}

fn import_cli(dir: &Path) -> PathBuf {
    let args = ImportOnnxArgs {
        from: fixture("res_cnn.onnx"),
        cuts: vec!["/MaxPool_output_0".into(), "/Flatten_1_output_0".into()],
        exits: vec!["exit_a".into(), "exit_b".into(), "final".into()],
        labels: (0..10).map(|d| format!("digit-{d}")).collect(),
        model_id: None,
        out: dir.join("res-cnn"),
    };
    let report = import_onnx::import(&args).unwrap();
    assert_eq!(report.model_id, "res-cnn");
    assert_eq!(report.exits, [("exit_a".to_string(), 0), ("exit_b".to_string(), 1), ("final".to_string(), 2)]);
    assert_eq!(report.blocks.len(), 3);
    dir.join("res-cnn")
}

/// `import onnx` → `split` → a real cloud and edge over gRPC on loopback:
/// every answer is the whole graph's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_graph_is_served_by_a_real_edge_and_cloud() {
    let dir = tmp("onnx-offload");
    let full = Bundle::load(import_cli(&dir)).unwrap();
    let io = io("res_cnn");
    let final_logits = &io.outputs.iter().find(|(o, _)| o == "final").unwrap().1;
    let (edge_b, cloud_b) = full.split(1).unwrap();
    let cloud = CloudHandle::start(CloudConfig::new(cloud_b)).await.unwrap();
    let never = Policy::never(full.num_exits());
    let mut config = EdgeConfig::new(edge_b, Some(1), vec![cloud.url()]);
    config.policy = Some(never);
    config.probabilities = true;
    let edge = Edge::start(config).await.unwrap();
    let per = io.input.len() / io.batch;
    for i in 0..io.batch {
        let a =
            edge.classify_with_deadline(None, io.input[i * per..(i + 1) * per].to_vec(), Duration::from_secs(5)).await;
        let mut p = final_logits[i * 10..(i + 1) * 10].to_vec();
        softmax_in_place(&mut p);
        let best = (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        assert_eq!(a.tier, Tier::Cloud, "{a:?}");
        assert_eq!(a.prediction, Some(best as u32), "{a:?}");
        assert_eq!(a.class.as_deref(), Some(format!("digit-{best}").as_str()));
        assert!(max_diff(&a.probabilities, &p) < 1e-5, "{a:?}");
        assert!(a.bytes_up as usize >= 4 * 8 * 14 * 14, "the state at the cut crossed: {a:?}");
    }
    drop(edge);
    cloud.stop().await.unwrap();
}
