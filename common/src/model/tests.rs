use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::arch::{init_weights, Arch};
use super::manifest::*;
use super::*;
use crate::policy::{Policy, Rule};
use crate::rng::SplitMix64;

fn tiny(seed: u64) -> Bundle {
    let m = Arch::Tiny.manifest("tiny");
    Bundle::from_parts(m.clone(), init_weights(&m, seed).unwrap()).unwrap()
}

fn inputs(n: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let v: Vec<f32> = (0..n * 784).map(|_| rng.next_f32()).collect();
    Tensor::from_vec(v, (n, 1, 28, 28), &Device::Cpu).unwrap()
}

fn t(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn conv2d_relu_pool_by_hand() {
    // 1 input channel 3x3, one 2x2 kernel, padding 0 -> 2x2, then ReLU, then pool 2 -> 1x1.
    let spec = LayerSpec::Conv2d {
        in_channels: 1,
        out_channels: 1,
        kernel: 2,
        stride: 1,
        padding: 0,
        relu: true,
        pool: Some(2),
    };
    let w = t(&[1.0, 0.0, 0.0, -1.0], &[1, 1, 2, 2]);
    let b = t(&[0.5], &[1]);
    let layer = Layer::new(&spec, |s| if s == "weight" { w.clone() } else { b.clone() }).unwrap();
    let x = t(&[1., 2., 3., 4., 5., 6., 7., 8., 10.], &[1, 1, 3, 3]);
    // conv: [1-5, 2-6; 4-8, 5-10] + 0.5 = [-3.5, -3.5; -3.5, -4.5] -> relu 0 -> pool 0
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.dims(), &[1, 1, 1, 1]);
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0]);
    // Without ReLU, the pool picks the max -3.5; with padding 1, the corner is 1*0 - 1*1 + 0.5.
    let spec = LayerSpec::Conv2d {
        in_channels: 1,
        out_channels: 1,
        kernel: 2,
        stride: 1,
        padding: 1,
        relu: false,
        pool: None,
    };
    let layer = Layer::new(&spec, |s| if s == "weight" { w.clone() } else { b.clone() }).unwrap();
    let y = layer.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y.len(), 16);
    assert_eq!(y[0], -0.5);
    assert_eq!(y[5], 1.0 - 5.0 + 0.5);
    assert_eq!(y[15], 10.0 + 0.5);
    assert_eq!(spec.output_shape(&[1, 3, 3]).unwrap(), vec![1, 4, 4]);
}

#[test]
fn unfold_conv_matches_candle_conv() {
    let mut rng = SplitMix64::new(7);
    let x: Vec<f32> = (0..2 * 3 * 9 * 9).map(|_| rng.next_f32() - 0.5).collect();
    let w: Vec<f32> = (0..4 * 3 * 3 * 3).map(|_| rng.next_f32() - 0.5).collect();
    let x = t(&x, &[2, 3, 9, 9]);
    let w = t(&w, &[4, 3, 3, 3]);
    for (pad, stride) in [(0, 1), (1, 1), (1, 2), (2, 3)] {
        let a = x.conv2d(&w, pad, stride, 1, 1).unwrap();
        let b = super::layer::unfold_conv2d(&x, &w, pad, stride).unwrap();
        assert_eq!(a.dims(), b.dims());
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "pad {pad} stride {stride}: {d}");
    }
}

#[test]
fn linear_and_flatten_by_hand() {
    let spec = LayerSpec::Linear { in_features: 3, out_features: 2, relu: true };
    let w = t(&[1., 2., 3., -1., -1., -1.], &[2, 3]);
    let b = t(&[0.5, 0.0], &[2]);
    let layer = Layer::new(&spec, |s| if s == "weight" { w.clone() } else { b.clone() }).unwrap();
    let y = layer.forward(&t(&[1., 1., 1., 2., 0., 0.], &[2, 3])).unwrap();
    assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![6.5, 0.0], vec![2.5, 0.0]]);
    let flat = Layer::Flatten.forward(&t(&[1., 2., 3., 4.], &[1, 1, 2, 2])).unwrap();
    assert_eq!(flat.to_vec2::<f32>().unwrap(), vec![vec![1., 2., 3., 4.]]);
    assert_eq!(LayerSpec::Flatten.output_shape(&[2, 3, 4]).unwrap(), vec![24]);
}

fn load_err(m: Manifest, tensors: HashMap<String, Tensor>) -> String {
    Bundle::from_parts(m, tensors).unwrap_err().to_string()
}

/// Found by the manifest fuzzer: a flatten after an input of huge
/// dimensions overflowed its element count (a panic, or a wrapped shape in a
/// release build). Shapes that overflow or exceed what a sample may hold are
/// refused at load, naming the block.
#[test]
fn shapes_that_overflow_are_refused_at_load() {
    let mut m = Arch::Tiny.manifest("tiny");
    let w = init_weights(&m, 1).unwrap();
    m.input.shape = vec![1, 1 << 40, 1 << 40];
    let e = load_err(m.clone(), w.clone());
    assert!(e.contains("the input") && e.contains("elements a sample may have"), "{e}");
    let flatten = LayerSpec::Flatten.output_shape(&[1 << 40, 1 << 40, 1 << 40]).unwrap_err();
    assert_eq!(flatten.layer, "flatten");
    let flatten = flatten.to_string();
    assert!(
        flatten.contains("flatten: the element count of [1099511627776, 1099511627776, 1099511627776] overflows"),
        "{flatten}"
    );
    let conv = LayerSpec::Conv2d {
        in_channels: 1,
        out_channels: 1,
        kernel: 3,
        stride: 1,
        padding: usize::MAX,
        relu: false,
        pool: None,
    };
    assert!(conv.output_shape(&[1, 4, 4]).unwrap_err().to_string().contains("padding"), "conv padding overflow");
    // A block whose output is too large: a huge padding that does not overflow.
    let mut m = Arch::Tiny.manifest("tiny");
    if let LayerSpec::Conv2d { padding, .. } = &mut m.blocks[0].layer {
        *padding = 1 << 20;
    }
    let e = load_err(m, w);
    assert!(e.contains("block 0") && e.contains("elements a sample may have"), "{e}");
}

#[test]
fn manifest_errors_name_the_problem() {
    let m = Arch::Tiny.manifest("tiny");
    let w = init_weights(&m, 1).unwrap();

    let mut missing = w.clone();
    missing.remove("blocks.1.bias");
    assert!(load_err(m.clone(), missing).contains("missing tensor \"blocks.1.bias\""));

    let mut wrong = w.clone();
    wrong.insert("exits.0.1.weight".into(), Tensor::zeros((10, 7), DType::F32, &Device::Cpu).unwrap());
    let e = load_err(m.clone(), wrong);
    assert!(e.contains("\"exits.0.1.weight\" has shape [10, 7]") && e.contains("[10, 784]"), "{e}");

    let mut f64s = w.clone();
    f64s.insert("blocks.0.bias".into(), Tensor::zeros(4, DType::F64, &Device::Cpu).unwrap());
    assert!(load_err(m.clone(), f64s).contains("unsupported dtype \"f64\""));

    let mut extra = w.clone();
    extra.insert("blocks.9.weight".into(), Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap());
    assert!(load_err(m.clone(), extra).contains("unexpected tensor \"blocks.9.weight\""));

    let mut bad_exit = m.clone();
    bad_exit.exits[1].after_block = 7;
    assert!(load_err(bad_exit, w.clone()).contains("after block 7, but the model has only 4 blocks"));

    let mut no_final = m.clone();
    no_final.exits.pop();
    let e = load_err(no_final, w.clone());
    assert!(e.contains("exit after its last block"), "{e}");

    let mut bad_shape = m.clone();
    bad_shape.blocks[3].layer = LayerSpec::Linear { in_features: 100, out_features: 32, relu: true };
    let e = load_err(bad_shape, w.clone());
    assert!(e.contains("block 3 (fc1)") && e.contains("[100]"), "{e}");

    let mut dtype = m.clone();
    dtype.input.dtype = "u8".into();
    assert!(load_err(dtype, w.clone()).contains("unsupported dtype \"u8\" for the input"));

    let json = serde_json::to_string(&m).unwrap().replace("\"flatten\"", "\"transformer-encoder\"");
    let e = serde_json::from_str::<Manifest>(&json).unwrap_err().to_string();
    assert!(e.contains("unknown variant `transformer-encoder`"), "{e}");

    let b = Bundle::from_parts(m, w).unwrap();
    assert!(b.check_split(5).unwrap_err().to_string().contains("split point 5 out of range"));
    assert!(b.shape_at(9).is_err());
}

/// Runs `[0, k)` then `[k, N)` and checks it against `[0, N)`.
fn assert_split_invariance(full: &Bundle, edge: &Executor, cloud: &Executor, k: usize, policy: &Policy, x: &Tensor) {
    let n = full.num_blocks();
    let batch = x.dim(0).unwrap();
    let mono = Executor::new(Arc::new(full.clone())).run(x, 0..n, policy, vec![vec![]; batch]).unwrap();
    assert!(mono.remaining.is_empty(), "the final exit answers for everyone");
    let first = edge.run(x, 0..k, policy, vec![vec![]; batch]).unwrap();
    let mut answers = first.exited.clone();
    if let Some(hidden) = &first.hidden {
        // Hidden states at k equal a plain forward through the blocks.
        let rows = x
            .index_select(
                &Tensor::new(first.remaining.iter().map(|&i| i as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap(),
                0,
            )
            .unwrap();
        let plain = Executor::new(Arc::new(full.clone())).forward_blocks(&rows, 0..k).unwrap();
        let d =
            (hidden - plain).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(d <= 1e-6, "K={k}: hidden state differs by {d}");
        let histories = first.remaining.iter().map(|&i| first.histories[i].clone()).collect();
        let second = cloud.run(hidden, k..n, policy, histories).unwrap();
        assert!(second.remaining.is_empty());
        for (j, &i) in first.remaining.iter().enumerate() {
            answers[i] = second.exited[j].clone();
        }
    } else {
        assert!(first.remaining.is_empty());
    }
    assert_eq!(answers.len(), batch);
    for (i, (a, b)) in mono.exited.iter().zip(&answers).enumerate() {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        assert_eq!((a.exit, a.prediction), (b.exit, b.prediction), "K={k} sample {i}");
        assert!((a.confidence - b.confidence).abs() < 1e-6);
    }
}

#[test]
fn split_invariance_at_every_split_point() {
    let x = inputs(24, 3);
    for arch in [Arch::Tiny, Arch::BLenet, Arch::WideMlp] {
        let m = arch.manifest("m");
        let full = Bundle::from_parts(m.clone(), init_weights(&m, 11).unwrap()).unwrap();
        // Random weights give near-uniform outputs: pick thresholds that split the batch.
        let probs = Executor::new(Arc::new(full.clone())).forward_exits(&x, 0..full.num_blocks()).unwrap();
        let p0 = candle_nn::ops::softmax_last_dim(&probs[0].1).unwrap().max(1).unwrap().to_vec1::<f32>().unwrap();
        let mut sorted = p0.clone();
        sorted.sort_by(f32::total_cmp);
        let median = sorted[sorted.len() / 2];
        let policies = [
            Policy::uniform(Rule::MaxProb { threshold: median }, full.num_exits()),
            Policy::uniform(Rule::Patience { patience: 1 }, full.num_exits()),
            Policy::never(full.num_exits()),
            Policy::uniform(Rule::Always, full.num_exits()),
        ];
        for k in 0..=full.num_blocks() {
            let (edge, cloud) = full.split(k).unwrap();
            assert_eq!(edge.fingerprint(SplitSide::Edge, k), full.fingerprint(SplitSide::Edge, k));
            assert_eq!(cloud.fingerprint(SplitSide::Cloud, k), full.fingerprint(SplitSide::Cloud, k));
            let (edge, cloud) = (Executor::new(Arc::new(edge)), Executor::new(Arc::new(cloud)));
            for policy in &policies {
                assert_split_invariance(&full, &edge, &cloud, k, policy, &x);
            }
        }
    }
}

#[test]
fn samples_leave_the_batch_at_their_exit() {
    let b = tiny(5);
    let exec = Executor::new(Arc::new(b));
    let x = inputs(10, 9);
    let out = exec.run(&x, 0..4, &Policy::uniform(Rule::Always, 3), vec![vec![]; 10]).unwrap();
    assert!(out.exited.iter().all(|e| e.as_ref().unwrap().exit == 0));
    assert!(out.hidden.is_none() && out.remaining.is_empty());
    let out = exec.run(&x, 0..2, &Policy::never(3), vec![vec![]; 10]).unwrap();
    assert_eq!(out.remaining, (0..10).collect::<Vec<_>>());
    assert_eq!(out.hidden.unwrap().dims(), &[10, 8, 7, 7]);
    assert!(out.histories.iter().all(|h| h.len() == 1 && h[0].exit == 0));
    let e = exec.run(&x, 1..4, &Policy::never(3), vec![vec![]; 10]).unwrap_err();
    assert!(e.to_string().contains("blocks from 1 expect"), "{e}");
}

#[test]
fn split_bundles_hold_only_their_side_and_round_trip() {
    let full = tiny(21);
    let dir = std::env::temp_dir().join(format!("offramp-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    full.save(dir.join("full")).unwrap();
    let (edge, cloud) = full.split(2).unwrap();
    edge.save(dir.join("edge")).unwrap();
    cloud.save(dir.join("cloud")).unwrap();
    let (edge, cloud) = (Bundle::load(dir.join("edge")).unwrap(), Bundle::load(dir.join("cloud")).unwrap());
    let reloaded = Bundle::load(dir.join("full")).unwrap();
    assert_eq!(edge.held(), 0..2);
    assert_eq!(cloud.held(), 2..4);
    assert!(edge
        .tensors()
        .keys()
        .all(|k| k.starts_with("blocks.0") || k.starts_with("blocks.1") || k.starts_with("exits.0")));
    assert!(cloud.tensors().keys().all(|k| !k.starts_with("blocks.0") && !k.starts_with("exits.0")));
    assert_eq!(edge.splits(SplitSide::Edge), vec![0, 1, 2]);
    assert_eq!(cloud.splits(SplitSide::Cloud), vec![2, 3, 4]);
    for k in 0..=4 {
        assert_eq!(reloaded.fingerprint(SplitSide::Edge, k), full.fingerprint(SplitSide::Edge, k));
        assert_eq!(reloaded.fingerprint(SplitSide::Cloud, k), full.fingerprint(SplitSide::Cloud, k));
    }
    assert_eq!(cloud.fingerprint(SplitSide::Cloud, 2), full.fingerprint(SplitSide::Cloud, 2));
    assert_eq!(cloud.fingerprint(SplitSide::Cloud, 1), None);
    for k in 0..=2 {
        assert_eq!(edge.expected_fingerprint(SplitSide::Cloud, k), full.fingerprint(SplitSide::Cloud, k));
    }
    for k in 2..=4 {
        assert_eq!(cloud.expected_fingerprint(SplitSide::Edge, k), full.fingerprint(SplitSide::Edge, k));
    }
    assert_eq!(edge.expected_fingerprint(SplitSide::Cloud, 3), None);
    let e = Executor::new(Arc::new(edge)).run(inputs(1, 1), 0..3, &Policy::never(3), vec![vec![]]).unwrap_err();
    assert!(e.to_string().contains("holds blocks 0..2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fingerprints_see_every_weight() {
    let a = tiny(1);
    let m = Arch::Tiny.manifest("tiny");
    let mut w = init_weights(&m, 1).unwrap();
    let bias = w["blocks.3.bias"].to_vec1::<f32>().unwrap();
    let mut changed = bias.clone();
    changed[0] += 1e-3;
    w.insert("blocks.3.bias".into(), Tensor::new(changed, &Device::Cpu).unwrap());
    let b = Bundle::from_parts(m, w).unwrap();
    for k in 0..=3 {
        assert_eq!(a.fingerprint(SplitSide::Edge, k), b.fingerprint(SplitSide::Edge, k), "edge side of {k} unchanged");
        assert_ne!(a.fingerprint(SplitSide::Cloud, k), b.fingerprint(SplitSide::Cloud, k), "cloud side of {k} changed");
    }
    assert_ne!(a.fingerprint(SplitSide::Edge, 4), b.fingerprint(SplitSide::Edge, 4));
    assert_ne!(a.fingerprint(SplitSide::Edge, 2), a.fingerprint(SplitSide::Cloud, 2));
}

#[test]
fn macs_follow_the_manifest() {
    let b =
        Bundle::from_parts(Arch::BLenet.manifest("b"), init_weights(&Arch::BLenet.manifest("b"), 1).unwrap()).unwrap();
    assert_eq!(b.block_macs(0), 28 * 28 * 8 * 25);
    assert_eq!(b.block_macs(3), 0);
    assert_eq!(b.block_macs(4), 576 * 128);
    assert_eq!(b.exit_macs(1), 1280);
    assert_eq!(b.full_macs(), (0..5).map(|i| b.block_macs(i)).sum::<u64>() + 1280);
    assert!(b.macs_to_exit(0) * 5 < b.full_macs(), "the branch is cheap");
}
