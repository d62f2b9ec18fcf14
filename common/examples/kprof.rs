// Throwaway profiling harness (not kept).
use candle_core::{Device, Tensor};
use offramp_common::Bundle;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let b = Bundle::load(&args[1]).unwrap();
    let which: usize = args[2].parse().unwrap();
    let iters: usize = args[3].parse().unwrap();
    let batch: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(1);
    let mut x = Tensor::rand(0f32, 1f32, (batch, 1, 28, 28), &Device::Cpu).unwrap();
    for i in 0..which {
        x = b.layer(i).unwrap().forward(&x).unwrap();
    }
    let exit = args.get(5).is_some();
    let mut v = vec![];
    for _ in 0..iters {
        let t = std::time::Instant::now();
        if exit {
            offramp_common::model::layer_forward_all(b.exit_layers(0).unwrap(), &x).unwrap();
        } else {
            b.layer(which).unwrap().forward(&x).unwrap();
        }
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("layer {which} exit {exit}: min {:.2} p10 {:.2} p50 {:.2} us", v[0], v[iters / 10], v[iters / 2]);
}
