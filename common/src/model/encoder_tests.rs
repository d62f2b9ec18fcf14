//! Encoder bundles: token inputs, masks, padding invariance, early exit out
//! of a padded batch, the packed inference path against candle's reference
//! ops, and the manifest's compatibility with the image models.

use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::arch::{init_weights, Arch};
use super::*;
use crate::policy::{Policy, Rule};
use crate::rng::SplitMix64;

use super::arch::{tiny_encoder as encoder, TINY_ENCODER_HIDDEN as HIDDEN, TINY_ENCODER_VOCAB as VOCAB};

fn ids(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..len).map(|_| rng.below(VOCAB) as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn image_manifests_serialize_as_before() {
    // New optional fields are skipped when absent, so B-LeNet's manifest
    // (and with it its fingerprints) stays byte for byte what it was.
    let json = serde_json::to_string(&Arch::BLenet.manifest("b").input).unwrap();
    assert_eq!(
        json,
        r#"{"shape":[1,28,28],"dtype":"f32","preprocess":"grayscale pixels as u8 / 255, no normalisation"}"#
    );
}

#[test]
fn a_sample_gives_the_same_states_alone_and_padded_in_a_batch() {
    let exec = Executor::new(Arc::new(encoder(1)));
    let rows: Vec<Vec<f32>> = [3, 12, 7, 1].iter().enumerate().map(|(i, &l)| ids(l, i as u64)).collect();
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let batch = exec.batch_of(0, &refs).unwrap();
    assert_eq!(batch.x.dims(), &[4, 12]);
    let never = Policy::never(2);
    let out = exec.run(&batch, 0..3, &never, vec![vec![]; 4]).unwrap();
    assert_eq!(out.hidden_lengths.as_deref(), Some(&[3, 12, 7, 1][..]));
    let all = exec.forward_exits(&batch, 0..4).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let alone = exec.run(exec.batch_of(0, &[row]).unwrap(), 0..3, &never, vec![vec![]]).unwrap();
        let (a, shape) = alone.hidden_row(0).unwrap();
        let (b, shape_b) = out.hidden_row(i).unwrap();
        assert_eq!(shape, vec![row.len(), HIDDEN]);
        assert_eq!(shape, shape_b);
        assert!(max_diff(&a, &b) < 1e-5, "sample {i}: {}", max_diff(&a, &b));
        // Every exit's logits too (mean pooling ignores padding).
        let one = exec.forward_exits(exec.batch_of(0, &[row]).unwrap(), 0..4).unwrap();
        for ((e, batched), (_, single)) in all.iter().zip(&one) {
            let b = batched.get(i).unwrap().to_vec1::<f32>().unwrap();
            let s = single.get(0).unwrap().to_vec1::<f32>().unwrap();
            assert!(max_diff(&b, &s) < 1e-5, "exit {e} sample {i}");
        }
    }
}

#[test]
fn split_anywhere_equals_the_whole_network() {
    let bundle = encoder(2);
    let exec = Executor::new(Arc::new(bundle.clone()));
    let rows = [ids(5, 10), ids(9, 11)];
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let never = Policy::never(2);
    let whole = exec.run(exec.batch_of(0, &refs).unwrap(), 0..4, &never, vec![vec![]; 2]).unwrap();
    for k in 0..=4 {
        let (edge, cloud) = bundle.split(k).unwrap();
        let (edge, cloud) = (Executor::new(Arc::new(edge)), Executor::new(Arc::new(cloud)));
        let e = edge.run(edge.batch_of(0, &refs).unwrap(), 0..k, &never, vec![vec![]; 2]).unwrap();
        if k == 4 {
            // All on the edge: the final exit answered there.
            for i in 0..2 {
                let (w, e) = (whole.exited[i].as_ref().unwrap(), e.exited[i].as_ref().unwrap());
                assert!(max_diff(&w.probabilities, &e.probabilities) < 1e-5);
            }
            continue;
        }
        // Only real tokens cross, each sample on its own.
        let crossed: Vec<(Vec<f32>, Vec<usize>)> = (0..2).map(|i| e.hidden_row(i).unwrap()).collect();
        let rows: Vec<&[f32]> = crossed.iter().map(|(v, _)| v.as_slice()).collect();
        let c = cloud.run(cloud.batch_of(k, &rows).unwrap(), k..4, &never, e.histories.clone()).unwrap();
        for i in 0..2 {
            let (w, c) = (whole.exited[i].as_ref().unwrap(), c.exited[i].as_ref().unwrap());
            assert_eq!(w.prediction, c.prediction, "K={k}");
            assert!(max_diff(&w.probabilities, &c.probabilities) < 1e-5, "K={k}");
        }
    }
}

#[test]
fn samples_that_exit_leave_a_padded_batch() {
    let exec = Executor::new(Arc::new(encoder(3)));
    let rows: Vec<Vec<f32>> = (0..6).map(|i| ids(2 + 2 * i, 20 + i as u64)).collect();
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    // A max-prob threshold between the exit-0 confidences: some samples
    // leave after layer 0, the rest go on in a smaller, re-masked batch.
    let first = exec.forward_exits(exec.batch_of(0, &refs).unwrap(), 0..2).unwrap();
    let mut conf: Vec<f32> = first[0]
        .1
        .to_vec2::<f32>()
        .unwrap()
        .into_iter()
        .map(|mut row| {
            softmax_in_place(&mut row);
            argmax(&row).1
        })
        .collect();
    conf.sort_by(f32::total_cmp);
    let threshold = (conf[2] + conf[3]) / 2.0;
    let policy = Policy::from_rules(vec![Rule::MaxProb { threshold }, Rule::Never]).unwrap();
    let out = exec.run(exec.batch_of(0, &refs).unwrap(), 0..4, &policy, vec![vec![]; 6]).unwrap();
    let early = out.exited.iter().filter(|e| e.as_ref().unwrap().exit == 0).count();
    assert_eq!(early, 3, "{:?}", out.exited);
    for (i, row) in refs.iter().enumerate() {
        let alone = exec.run(exec.batch_of(0, &[row]).unwrap(), 0..4, &policy, vec![vec![]]).unwrap();
        let (a, b) = (alone.exited[0].as_ref().unwrap(), out.exited[i].as_ref().unwrap());
        assert_eq!(a.exit, b.exit, "sample {i}");
        assert!(max_diff(&a.probabilities, &b.probabilities) < 1e-5, "sample {i}");
    }
}

#[test]
fn packed_layers_equal_candle_reference_ops() {
    let mut fast = encoder(4);
    let mut reference = fast.clone();
    fast.use_kernels(Kernels::Fast).unwrap();
    reference.use_kernels(Kernels::Candle).unwrap();
    assert_eq!(fast.layer(1).unwrap().kernels(), Kernels::Fast);
    assert_eq!(reference.layer(1).unwrap().kernels(), Kernels::Candle);
    let rows = [ids(12, 30), ids(6, 31)];
    let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    let (f, r) = (Executor::new(Arc::new(fast)), Executor::new(Arc::new(reference)));
    let a = f.forward_blocks(f.batch_of(0, &refs).unwrap(), 0..4).unwrap();
    let b = r.forward_blocks(r.batch_of(0, &refs).unwrap(), 0..4).unwrap();
    let d = max_diff(&a.flatten_all().unwrap().to_vec1().unwrap(), &b.flatten_all().unwrap().to_vec1().unwrap());
    assert!(d < 1e-4, "{d}");
}

#[test]
fn bad_token_inputs_are_named() {
    let exec = Executor::new(Arc::new(encoder(5)));
    let e = exec.batch_of(0, &[&[1.0, 2.5]]).unwrap_err();
    assert!(matches!(e, ModelError::TokenId { index: 1, .. }), "{e}");
    let e = exec.batch_of(0, &[&[1.0, VOCAB as f32]]).unwrap_err();
    assert!(e.to_string().contains("integers in 0..50"), "{e}");
    let e = exec.batch_of(0, &[&[-1.0]]).unwrap_err();
    assert!(matches!(e, ModelError::TokenId { index: 0, .. }));
    let e = exec.batch_of(0, &[&[]]).unwrap_err();
    assert!(matches!(e, ModelError::SequenceShape { max_tokens: 12, .. }), "{e}");
    let e = exec.batch_of(0, &[&[1.0; 13]]).unwrap_err();
    assert!(matches!(e, ModelError::SequenceShape { got: 13, .. }), "{e}");
    // Hidden states: whole tokens of 16 values.
    let e = exec.batch_of(2, &[&[0.5; 20]]).unwrap_err();
    assert!(e.to_string().contains("1 to 12 tokens of [16] values"), "{e}");
    exec.batch_of(2, &[&[0.5; 32], &[0.5; 16]]).unwrap();
    // A bare tensor of full-length rows needs no mask.
    let x = Tensor::from_vec(ids(24, 1), (2, 12), &Device::Cpu).unwrap();
    exec.run(&x, 0..4, &Policy::never(2), vec![vec![]; 2]).unwrap();
}

#[test]
fn sequences_must_be_pooled_before_a_classifier() {
    let mut m = encoder(6).manifest().clone();
    m.exits[0].layers.remove(0);
    let w = init_weights(&m, 1).unwrap();
    let e = Bundle::from_parts(m, w).unwrap_err();
    assert!(e.to_string().contains("must be pooled first"), "{e}");
}
