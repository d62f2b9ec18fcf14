use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::dispatch::{segments, Isa};
use super::*;
use crate::model::arch::{init_weights, Arch};
use crate::model::manifest::LayerSpec;
use crate::model::{Bundle, Executor, Layer};
use crate::rng::SplitMix64;

fn rand(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Weights `[o, fan_in...]` uniform in ±sqrt(6 / fan_in), as trained models start.
fn weights(shape: &[usize], rng: &mut SplitMix64) -> Tensor {
    let fan_in: usize = shape[1..].iter().product();
    (rand(shape, rng) * (6.0 / fan_in as f64).sqrt()).unwrap()
}

/// Max of |a − b| / max(1, |b|): absolute for small values, relative for large.
fn diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs() / y.abs().max(1.0)).fold(0.0, f32::max)
}

const TOL: f32 = 1e-5;

#[test]
fn kernels_parse() {
    assert_eq!("candle".parse::<Kernels>().unwrap(), Kernels::Candle);
    assert_eq!("FAST".parse::<Kernels>().unwrap(), Kernels::Fast);
    assert!("cuda".parse::<Kernels>().is_err());
}

#[test]
fn segments_split_rows_exactly() {
    for len in 1..40 {
        for mr in 1..=8 {
            let s: Vec<_> = segments(len, mr).collect();
            assert_eq!(s.iter().map(|&(_, l)| l).sum::<usize>(), len);
            assert!(s.iter().all(|&(_, l)| (1..=mr).contains(&l)), "{len} {mr} {s:?}");
            assert!(s.windows(2).all(|w| w[0].0 + w[0].1 == w[1].0));
        }
    }
    assert_eq!(segments(14, 8).collect::<Vec<_>>(), vec![(0, 7), (7, 7)]);
}

/// Every instruction set this CPU has, on convolutions of every stride,
/// padding and pool kind, with channel counts that do and do not fill
/// whole vectors, maps whose pooling floors, and batches 1, 3 and 32.
#[test]
fn fast_conv_matches_candle_on_odd_shapes() {
    let mut rng = SplitMix64::new(11);
    let mut worst = 0f32;
    // (c_in, c_out, kernel, stride, padding, pool, relu, h, w)
    let cases = [
        (1, 8, 5, 1, 2, Some(2), true, 28, 28),
        (8, 32, 5, 1, 2, Some(2), true, 14, 14),
        (32, 64, 3, 1, 1, Some(2), true, 7, 7),
        (8, 16, 3, 1, 1, Some(2), true, 14, 14),
        (3, 5, 3, 2, 1, None, false, 9, 11),
        (2, 10, 2, 2, 0, Some(2), true, 13, 10),
        (4, 17, 3, 1, 0, Some(3), false, 12, 17),
        (1, 1, 1, 1, 0, None, true, 5, 3),
        (5, 33, 4, 3, 2, Some(2), true, 15, 9),
        (6, 24, 5, 1, 2, Some(2), false, 9, 9),
        (3, 4, 3, 1, 0, None, true, 6, 3),
        (2, 3, 3, 2, 1, None, false, 4, 1),
        (4, 20, 3, 1, 1, Some(2), true, 3, 40),
    ];
    for isa in Isa::available() {
        for &(c, o, k, s, p, pool, relu, h, w) in &cases {
            let spec =
                LayerSpec::Conv2d { in_channels: c, out_channels: o, kernel: k, stride: s, padding: p, relu, pool };
            let (wt, b) = (weights(&[o, c, k, k], &mut rng), rand(&[o], &mut rng));
            let mut layer = Layer::new(&spec, |n| if n == "weight" { wt.clone() } else { b.clone() }).unwrap();
            layer.set_kernels(Kernels::Candle).unwrap();
            let fast = Conv2dKernel::with_isa(isa, &wt, &b, s, p, relu, pool).unwrap();
            for batch in [1, 3, 32] {
                let x = rand(&[batch, c, h, w], &mut rng);
                let want = layer.forward(&x).unwrap();
                let got = fast.forward(&x).unwrap();
                let d = diff(&got, &want);
                assert!(d <= TOL, "{isa:?} conv {c}->{o} k{k} s{s} p{p} pool {pool:?} {h}x{w} batch {batch}: {d}");
                worst = worst.max(d);
            }
        }
    }
    eprintln!("conv: worst difference {worst:e}");
}

#[test]
fn fast_linear_matches_candle_on_odd_shapes() {
    let mut rng = SplitMix64::new(12);
    let mut worst = 0f32;
    for isa in Isa::available() {
        for &(i, o, relu) in &[(576, 128, true), (128, 10, false), (784, 10, false), (7, 3, true), (33, 17, false)] {
            let spec = LayerSpec::Linear { in_features: i, out_features: o, relu };
            let (wt, b) = (weights(&[o, i], &mut rng), rand(&[o], &mut rng));
            let mut layer = Layer::new(&spec, |n| if n == "weight" { wt.clone() } else { b.clone() }).unwrap();
            layer.set_kernels(Kernels::Candle).unwrap();
            let fast = LinearKernel::with_isa(isa, &wt, &b, relu).unwrap();
            for batch in [1, 3, 9, 32] {
                let x = rand(&[batch, i], &mut rng);
                let d = diff(&fast.forward(&x).unwrap(), &layer.forward(&x).unwrap());
                assert!(d <= TOL, "{isa:?} linear {i}->{o} batch {batch}: {d}");
                worst = worst.max(d);
            }
        }
    }
    eprintln!("linear: worst difference {worst:e}");
}

/// The default (fast) bundle against a candle-kernels copy, block by block
/// and exit by exit on real activations, and end to end.
#[test]
fn fast_path_matches_candle_on_every_block_and_exit() {
    let mut worst = 0f32;
    for arch in [Arch::BLenet, Arch::Tiny, Arch::WideMlp] {
        let m = arch.manifest("m");
        let mut fast = Bundle::from_parts(m.clone(), init_weights(&m, 5).unwrap()).unwrap();
        fast.use_kernels(Kernels::Fast).unwrap();
        let mut plain = fast.clone();
        plain.use_kernels(Kernels::Candle).unwrap();
        let n = fast.num_blocks();
        for b in 0..n {
            let wide = matches!(m.blocks[b].layer,
                LayerSpec::Linear { in_features, out_features, .. } if !LinearKernel::suits(out_features, in_features));
            if wide {
                // Wide layers keep candle's blocked gemm even with fast kernels.
                assert_eq!(fast.layer(b).unwrap().kernels(), Kernels::Candle);
            } else if !matches!(m.blocks[b].layer, LayerSpec::Flatten) {
                assert_eq!(fast.layer(b).unwrap().kernels(), Kernels::Fast);
                assert_eq!(plain.layer(b).unwrap().kernels(), Kernels::Candle);
            }
        }
        let mut rng = SplitMix64::new(3);
        for batch in [1, 3, 32] {
            let v: Vec<f32> = (0..batch * 784).map(|_| rng.next_f32()).collect();
            let input = Tensor::from_vec(v, (batch, 1, 28, 28), &Device::Cpu).unwrap();
            let mut x = input.clone();
            for b in 0..n {
                let want = plain.layer(b).unwrap().forward(&x).unwrap();
                let got = fast.layer(b).unwrap().forward(&x).unwrap();
                let d = diff(&got, &want);
                assert!(d <= TOL, "{arch:?} block {b} batch {batch}: {d}");
                worst = worst.max(d);
                x = want;
                if let Some(e) = fast.exit_after(b) {
                    let want = super::super::layer_forward_all(plain.exit_layers(e).unwrap(), &x).unwrap();
                    let got = super::super::layer_forward_all(fast.exit_layers(e).unwrap(), &x).unwrap();
                    let d = diff(&got, &want);
                    assert!(d <= TOL, "{arch:?} exit {e} batch {batch}: {d}");
                    worst = worst.max(d);
                }
            }
            let want = Executor::new(Arc::new(plain.clone())).forward_exits(&input, 0..n).unwrap();
            let got = Executor::new(Arc::new(fast.clone())).forward_exits(&input, 0..n).unwrap();
            for ((e, a), (_, b)) in got.iter().zip(&want) {
                let d = diff(a, b);
                assert!(d <= TOL, "{arch:?} end to end, exit {e}, batch {batch}: {d}");
                worst = worst.max(d);
            }
        }
    }
    eprintln!("blocks and exits: worst difference {worst:e}");
}

/// Weights that track gradients (training) run candle's differentiable ops.
#[test]
fn trainable_weights_keep_the_differentiable_path() {
    let spec = LayerSpec::Linear { in_features: 4, out_features: 2, relu: false };
    let w = candle_core::Var::new(&[[1f32, 2., 3., 4.], [0., 1., 0., 1.]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
    let layer = Layer::new(&spec, |n| if n == "weight" { w.as_tensor().clone() } else { b.clone() }).unwrap();
    assert_eq!(layer.kernels(), Kernels::Candle);
    let x = Tensor::new(&[[1f32, 1., 1., 1.]], &Device::Cpu).unwrap();
    let grads = layer.forward(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(grads.get(w.as_tensor()).is_some());
}

#[test]
fn bias_gelu_equals_candle_gelu_erf() {
    let mut rng = SplitMix64::new(11);
    // Rows spanning the clamp (|x| up to 12) and the odd sizes that leave a
    // vector tail.
    for (rows, n) in [(1, 1), (3, 17), (32, 1536), (5, 384)] {
        let x = (rand(&[rows, n], &mut rng) * 12.0).unwrap();
        let b = rand(&[n], &mut rng);
        let fused = BiasGelu::new(&b).unwrap().forward(&x).unwrap();
        let reference = x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        let d = diff(&fused, &reference);
        assert!(d < 1e-6, "{rows}x{n}: {d}");
    }
    let err = BiasGelu::new(&rand(&[4], &mut rng)).unwrap().forward(&rand(&[2, 5], &mut rng)).unwrap_err();
    assert!(err.to_string().contains("rows of 5 features, the bias has 4"), "{err}");
}

#[test]
fn erf_matches_libm_everywhere() {
    let mut worst = 0f32;
    for i in -8000..=8000 {
        let x = i as f32 / 1000.0;
        worst = worst.max((super::activation::erf(x) - libm_erf(x)).abs());
    }
    assert!(worst < 1e-6, "{worst}");
}

/// candle's own erf (libm's), as the reference.
fn libm_erf(x: f32) -> f32 {
    Tensor::new(&[x], &Device::Cpu).unwrap().erf().unwrap().to_vec1::<f32>().unwrap()[0]
}

#[test]
fn masked_softmax_equals_candle_with_an_additive_mask() {
    let mut rng = SplitMix64::new(12);
    // The last case is large enough to be split over threads (a cloud batch).
    let big = Some(vec![40, 1, 17, 40, 39, 2, 40, 25]);
    for (b, heads, t, lengths) in
        [(1, 2, 5, None), (3, 4, 7, Some(vec![7, 3, 1])), (2, 12, 33, Some(vec![20, 33])), (8, 12, 40, big)]
    {
        let scores = (rand(&[b, heads, t, t], &mut rng) * 40.0).unwrap();
        let scale = 0.17f32;
        let fused = MaskedSoftmax { scale, lengths: lengths.as_deref() }.forward(&scores).unwrap();
        let mut additive = vec![0f32; b * t];
        for (i, &l) in lengths.iter().flatten().enumerate() {
            additive[i * t + l..(i + 1) * t].iter_mut().for_each(|v| *v = -1e30);
        }
        let additive = Tensor::from_vec(additive, (b, 1, 1, t), &Device::Cpu).unwrap();
        let reference =
            candle_nn::ops::softmax_last_dim(&(scores * f64::from(scale)).unwrap().broadcast_add(&additive).unwrap())
                .unwrap();
        let d = diff(&fused, &reference);
        assert!(d < 1e-6, "{b}x{heads}x{t}: {d}");
    }
    let err = MaskedSoftmax { scale: 1.0, lengths: Some(&[4]) }.forward(&rand(&[1, 1, 2, 3], &mut rng)).unwrap_err();
    assert!(err.to_string().contains("lengths [4] for a batch of 1 with 3 keys"), "{err}");
}

#[test]
fn add_layer_norm_equals_candle() {
    let mut rng = SplitMix64::new(13);
    // [batch, rows, h]; the last is large enough to be split over threads.
    for (batch, rows, h) in [(1, 1, 3), (1, 7, 32), (2, 40, 384), (4, 100, 384)] {
        let x = (rand(&[batch, rows, h], &mut rng) * 5.0).unwrap();
        let r = rand(&[batch, rows, h], &mut rng);
        let (db, w, b) = (rand(&[h], &mut rng), rand(&[h], &mut rng), rand(&[h], &mut rng));
        let fused = AddLayerNorm::new(&db, &w, &b, 1e-12).unwrap().forward(&x, &r).unwrap();
        let sum = (x.broadcast_add(&db).unwrap() + &r).unwrap();
        let reference = candle_nn::ops::layer_norm(&sum, &w, &b, 1e-12).unwrap();
        let d = diff(&fused, &reference);
        assert!(d < 1e-5, "{batch}x{rows}x{h}: {d}");
    }
    let ln = AddLayerNorm::new(&rand(&[4], &mut rng), &rand(&[4], &mut rng), &rand(&[4], &mut rng), 1e-5).unwrap();
    let err = ln.forward(&rand(&[2, 5], &mut rng), &rand(&[2, 5], &mut rng)).unwrap_err();
    assert!(err.to_string().contains("rows of 4 expected"), "{err}");
}

#[test]
fn fast_exp_is_within_a_few_ulp() {
    let mut worst = 0f32;
    for i in -87_000..=88_000 {
        let x = i as f32 / 1000.0;
        worst = worst.max((super::rows::exp(x) - x.exp()).abs() / x.exp());
    }
    assert!(worst < 5e-7, "{worst}");
}
