//! `offramp experiment`: a small real grid (cloud + link emulator + edge per
//! cell) writes results, records and plots.

use offramp_lab::experiment::{run, ExperimentArgs};
use offramp_plot::check_well_formed;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_grid_writes_results_records_and_plots() {
    let dir = tmp("experiment");
    let model = default_model();
    let n = offramp_common::Bundle::load(&model).unwrap().num_blocks();
    let config = dir.join("exp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
model = "{}"
data = "{}"
subset = "sample"
splits = [1]
inputs = [50]
[[policy]]
name = "p90"
rule = "max-prob"
threshold = 0.9
[[link]]
name = "wan"
delay = "5ms"
rate = "20mbit"
"#,
            model.display(),
            repo().join("models/mnist-sample").display()
        ),
    )
    .unwrap();
    let out = dir.join("out");
    let results = run(&ExperimentArgs { config, out: out.clone() }).await.unwrap();
    // K = 1 plus the two baselines K = 0 and K = N.
    let splits: Vec<usize> = results.iter().map(|r| r.split).collect();
    assert_eq!(splits, vec![0, 1, n]);
    for r in &results {
        assert_eq!(r.n, 50);
        assert_eq!(r.fallbacks, 0);
        assert!((r.share_edge + r.share_cloud - 1.0).abs() < 1e-9);
        assert!(
            r.measured_over_bound >= 0.9,
            "{}: measured below the physical bound: {}",
            r.cell,
            r.measured_over_bound
        );
    }
    assert_eq!(results[0].share_cloud, 1.0, "K = 0 is all cloud");
    assert_eq!(results[2].share_edge, 1.0, "K = N is all edge");
    assert!(results[0].p50_ms >= 10.0, "every K = 0 request pays the 10 ms RTT: {}", results[0].p50_ms);
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "header + 3 cells");
    for r in &results {
        let records = std::fs::read_to_string(out.join("records").join(format!("{}.jsonl", r.cell))).unwrap();
        assert_eq!(records.lines().count(), 50);
    }
    for plot in ["latency_cdf.svg", "accuracy_vs_latency.svg", "shares.svg", "bytes.svg"] {
        check_well_formed(&std::fs::read_to_string(out.join(plot)).unwrap()).unwrap();
    }
}
