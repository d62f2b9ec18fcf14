//! `offramp experiment`: a small real grid (cloud + link emulator + edge per
//! cell, over gRPC and over QUIC) writes results, per-exit shares, records
//! and plots.

use std::collections::{BTreeMap, BTreeSet};

use offramp_lab::experiment::{run, ExperimentArgs};
use offramp_plot::check_well_formed;

use crate::support::*;

/// The rows of a CSV file without quoting (these have none) as maps from
/// column name to value, and the header.
fn read_csv(path: &std::path::Path) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().expect("a header").split(',').map(str::to_string).collect();
    let rows = lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            assert_eq!(cells.len(), header.len(), "{}: {l}", path.display());
            header.iter().cloned().zip(cells.iter().map(|c| c.to_string())).collect()
        })
        .collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_grid_over_grpc_and_quic_writes_results_records_and_plots() {
    let dir = tmp("experiment");
    let model = default_model();
    let bundle = default_bundle();
    let (n_blocks, n_exits) = (bundle.num_blocks(), bundle.num_exits());
    let inputs = 40;
    let config = dir.join("exp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
model = "{}"
data = "{}"
subset = "sample"
splits = [1]
inputs = [{inputs}]
transports = ["grpc", "quic"]
[[policy]]
name = "p90"
rule = "max-prob"
threshold = 0.9
[[policy]]
name = "patient"
rule = "patience"
patience = 1
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
    // K = 1 plus the two baselines K = 0 and K = N, for each policy and transport.
    assert_eq!(results.len(), 3 * 2 * 2);
    for policy in ["p90", "patient"] {
        for transport in ["grpc", "quic"] {
            let splits: Vec<usize> =
                results.iter().filter(|r| r.policy == policy && r.transport == transport).map(|r| r.split).collect();
            assert_eq!(splits, vec![0, 1, n_blocks], "{policy} over {transport}");
        }
    }
    for r in &results {
        assert_eq!(r.n, inputs, "{}", r.cell);
        assert_eq!(r.fallbacks, 0, "{}", r.cell);
        assert!((r.share_edge + r.share_cloud - 1.0).abs() < 1e-9, "{}", r.cell);
        assert!((r.exit_shares.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{}: {:?}", r.cell, r.exit_shares);
        assert!(
            r.measured_over_bound >= 0.9,
            "{}: measured below the physical bound: {}",
            r.cell,
            r.measured_over_bound
        );
        match r.split {
            0 => {
                // Every K = 0 request goes to the cloud for real, over either
                // transport, and pays the 10 ms RTT.
                assert_eq!(r.share_cloud, 1.0, "{}: K = 0 is all cloud", r.cell);
                assert!(r.bytes_up_per_req > 0.0 && r.bytes_down_per_req > 0.0, "{}", r.cell);
                assert!(r.p50_ms >= 10.0, "{}: every K = 0 request pays the 10 ms RTT: {}", r.cell, r.p50_ms);
            }
            k if k == n_blocks => assert_eq!(r.share_edge, 1.0, "{}: K = N is all edge", r.cell),
            _ if r.policy == "patient" => {
                // Patience needs an earlier exit to agree with: the branch never exits.
                assert_eq!(r.exit_shares[0], 0.0, "{}", r.cell);
                assert_eq!(r.share_cloud, 1.0, "{}", r.cell);
            }
            _ => assert!(r.share_edge > 0.0 && r.share_cloud > 0.0, "{}: the branch answers some", r.cell),
        }
    }
    // The QUIC cells went over QUIC: their offloads name a quic:// endpoint.
    for r in results.iter().filter(|r| r.split == 0) {
        let records = std::fs::read_to_string(out.join("records").join(format!("{}.jsonl", r.cell))).unwrap();
        let scheme = format!("\"endpoint\":\"{}://", if r.transport == "quic" { "quic" } else { "http" });
        assert!(records.lines().all(|l| l.contains(&scheme)), "{}: {}", r.cell, records.lines().next().unwrap());
    }

    // results.csv: one row per cell, both transports, no per-exit columns.
    let (header, rows) = read_csv(&out.join("results.csv"));
    assert_eq!(rows.len(), results.len(), "one row per cell");
    assert!(header.iter().all(|c| !c.contains("exit")), "per-exit shares live in exit_shares.csv: {header:?}");
    let transports: BTreeSet<&str> = rows.iter().map(|r| r["transport"].as_str()).collect();
    assert_eq!(transports, BTreeSet::from(["grpc", "quic"]));
    for (row, r) in rows.iter().zip(&results) {
        assert_eq!((row["cell"].as_str(), row["transport"].as_str()), (r.cell.as_str(), r.transport.as_str()));
        assert_eq!(row["share_cloud"].parse::<f64>().unwrap(), r.share_cloud, "{}", r.cell);
    }
    // exit_shares.csv: one row per cell and exit, as the results say.
    let (header, rows) = read_csv(&out.join("exit_shares.csv"));
    assert_eq!(header, ["cell", "exit", "share"]);
    assert_eq!(rows.len(), results.len() * n_exits);
    for r in &results {
        let shares: Vec<f64> =
            rows.iter().filter(|row| row["cell"] == r.cell).map(|row| row["share"].parse().unwrap()).collect();
        assert_eq!(shares, r.exit_shares, "{}", r.cell);
    }

    for r in &results {
        let records = std::fs::read_to_string(out.join("records").join(format!("{}.jsonl", r.cell))).unwrap();
        assert_eq!(records.lines().count(), inputs, "{}", r.cell);
    }
    for plot in ["latency_cdf.svg", "accuracy_vs_latency.svg", "shares.svg", "bytes.svg"] {
        check_well_formed(&std::fs::read_to_string(out.join(plot)).unwrap()).unwrap();
    }
}

/// An experiment whose model is a decoder runs generation cells: modes ×
/// draft lengths × links, results.csv with the issue's columns, the ratio
/// of speculative to split, and both plots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_experiment_runs_generation_cells_and_writes_results_and_plots() {
    let dir = tmp("experiment-gen");
    let whole = tiny_decoder_with(
        &dir.join("model"),
        offramp_common::decoder::tiny::TinySpec { layer_scale: 1.5, ..Default::default() },
    );
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "0 what is the answer ?\n1 where are the cats ?\n2 how many were there ?\n").unwrap();
    let config = dir.join("gen.toml");
    let text = format!(
        r#"
model = "{}"
split = 3
modes = ["split", "speculative", "all-cloud"]
drafts = [1, 3]
prompts_file = "{}"
skip = 1
prompts = 2
max_tokens = 8

[[link]]
name = "near"

[[link]]
name = "far"
delay = "5ms"
"#,
        whole.display(),
        prompts.display()
    );
    std::fs::write(&config, &text).unwrap();
    assert!(offramp_lab::generation_experiment::is_generation(&text));
    let out = dir.join("out");
    let cells = offramp_lab::generation_experiment::run(&config, &text, &out).await.unwrap();
    // (split + speculative × 2 drafts + all-cloud) × 2 links.
    assert_eq!(cells.len(), 8);
    let (header, rows) = read_csv(&out.join("results.csv"));
    for col in [
        "link",
        "rtt_ms",
        "mode",
        "draft",
        "encoding",
        "tokens_per_s",
        "ttft_ms_p50",
        "itl_ms_p50",
        "itl_ms_p99",
        "round_trips_per_token",
        "acceptance_rate",
        "bytes_up_per_token",
        "agreement",
    ] {
        assert!(header.iter().any(|h| h == col), "{col} in {header:?}");
    }
    assert_eq!(rows.len(), 8);
    for r in &rows {
        assert_eq!(r["tokens"], "16", "2 prompts x 8 tokens: {r:?}");
        assert!(r["tokens_per_s"].parse::<f64>().unwrap() > 0.0);
        let rt: f64 = r["round_trips_per_token"].parse().unwrap();
        match r["mode"].as_str() {
            "speculative" => {
                assert!(!r["acceptance_rate"].is_empty());
                if r["draft"] == "1" {
                    assert!((rt - 1.0).abs() < 1e-9, "one draft: one round trip per token ({r:?})");
                }
            }
            _ => {
                assert!(r["acceptance_rate"].is_empty() && r["draft"].is_empty());
                assert!((rt - 1.0).abs() < 1e-9, "{r:?}");
            }
        }
        assert_eq!(r["agreement"], "1.0", "greedy exact modes agree with the whole model: {r:?}");
    }
    assert_eq!(rows.iter().filter(|r| r["link"] == "far").map(|r| r["rtt_ms"].as_str()).next(), Some("10.0"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["speculative_over_split"].as_array().unwrap().len(), 4, "{json}");
    for plot in ["tokens-per-s.svg", "itl-cdf.svg"] {
        check_well_formed(&std::fs::read_to_string(out.join(plot)).unwrap()).unwrap();
    }
    let rendered = offramp_lab::generation_experiment::render(&cells, &out);
    assert!(rendered.contains("speculative (draft <= 3)"), "{rendered}");
}
