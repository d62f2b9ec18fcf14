//! `offramp bench encoder`: the speed of a transformer encoder bundle on this
//! machine, against ONNX Runtime on the same weights in the same run.
//!
//! Rust side, through the executor as the edge and cloud run it: the full
//! encoder (embeddings and every layer, no exit head, as the ONNX graph) and
//! one encoder layer at batch 1 for each sequence length, and the full
//! encoder on a batch of `--batch` sequences of 32 tokens (throughput).
//! Random token ids (seeded) and random hidden states: the cost of a dense
//! encoder does not depend on the values.
//!
//! Peer: with `--ort-model DIR` (the Hugging Face checkpoint the bundle was
//! imported from) the command runs `deploy/scripts/ort_encoder_bench.py`
//! with the same lengths, batch and thread count and prints the ratio
//! Rust p50 / ORT p50 per row (below 1.0: Rust is faster). Threads: candle's
//! matmul uses `RAYON_NUM_THREADS` (all cores when unset); the ORT session
//! gets the same count, so `RAYON_NUM_THREADS=1` compares single-threaded.
//!
//! Build with `--release`; a shared machine is noisy, so compare the ratios
//! of one run rather than absolute numbers across runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use offramp_common::rng::SplitMix64;
use offramp_common::stats::Summary;
use offramp_common::{paths, Bundle, Executor};
use serde::Serialize;

use crate::bench::time_us;

#[derive(Debug, Clone, clap::Args)]
pub struct EncoderArgs {
    /// Encoder bundle (from `offramp import hf`, or trained from one).
    #[arg(long)]
    pub model: PathBuf,
    /// Sequence lengths timed at batch 1.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    pub lengths: Vec<usize>,
    /// Batch size of the throughput row (sequences of 32 tokens).
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Timed runs per batch-1 row.
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Timed runs of the throughput row.
    #[arg(long, default_value_t = 20)]
    pub batch_iters: usize,
    /// Hugging Face checkpoint directory for the ONNX Runtime peer (the one
    /// the bundle was imported from); omit to time Rust only.
    #[arg(long)]
    pub ort_model: Option<PathBuf>,
    /// Python with onnx and onnxruntime (`deploy/scripts/ort_env.sh` makes it).
    #[arg(long, default_value = "target/ort-venv/bin/python")]
    pub ort_python: PathBuf,
    #[arg(long)]
    pub json: bool,
}

/// One timed row: Rust, and ORT where the peer ran.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub batch: usize,
    pub tokens: usize,
    pub rust_us: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ort_p50_us: Option<f64>,
    /// Rust p50 / ORT p50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncoderReport {
    pub model: String,
    pub layers: usize,
    pub hidden: usize,
    pub threads: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ort_version: Option<String>,
    pub rows: Vec<Row>,
    /// Sequences per second of the batch row, Rust and ORT.
    pub rust_seq_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ort_seq_per_s: Option<f64>,
}

pub fn run(args: &EncoderArgs) -> Result<EncoderReport> {
    if args.lengths.is_empty() || args.lengths.contains(&0) {
        bail!("--lengths needs one or more lengths above 0");
    }
    if args.batch == 0 || args.iters == 0 || args.batch_iters == 0 {
        bail!("--batch, --iters and --batch-iters must be at least 1");
    }
    let dir = paths::find(&args.model)?;
    let bundle = Bundle::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
    let Some(vocab) = bundle.vocab_size() else {
        bail!(
            "{} is not a token-sequence model (no tokenizer or embeddings); `bench blocks` times image models",
            dir.display()
        );
    };
    let n = bundle.num_blocks();
    if n < 2 || !bundle.is_sequence_at(1) {
        bail!("{} has no encoder layer after its embeddings", dir.display());
    }
    let max_tokens = bundle.shape_at(0)?[0];
    let hidden = bundle.shape_at(1)?[1];
    if let Some(&t) = args.lengths.iter().chain([&32]).find(|&&t| t > max_tokens) {
        bail!("length {t} exceeds the model's maximum of {max_tokens} tokens");
    }
    let exec = Executor::new(Arc::new(bundle));
    let mut rng = SplitMix64::new(7);
    let mut values = SplitMix64::new(8);
    // Ids from the ordinary-word part of a BERT vocabulary (above the
    // special and unused tokens), as a real sentence would use.
    let low = 1000.min(vocab - 1);
    let mut ids = |t: usize| -> Vec<f32> { (0..t).map(|_| (low + rng.below(vocab - low)) as f32).collect() };

    let threads = candle_core::utils::get_num_threads();
    eprintln!("timing {} ({} layers, hidden {hidden}) on {threads} thread(s)", dir.display(), n - 1);
    let mut rows = Vec::new();
    for &t in &args.lengths {
        let x = exec.batch_of(0, &[&ids(t)])?;
        let full = time_us(args.iters, || Ok(exec.forward_blocks(&x, 0..n).map(drop)?))?;
        rows.push(Row { what: "full".into(), batch: 1, tokens: t, rust_us: full, ort_p50_us: None, ratio: None });
        let h: Vec<f32> = (0..t * hidden).map(|_| values.next_f32() * 2.0 - 1.0).collect();
        let x = exec.batch_of(1, &[&h])?;
        let layer = time_us(args.iters, || Ok(exec.forward_blocks(&x, 1..2).map(drop)?))?;
        rows.push(Row { what: "layer".into(), batch: 1, tokens: t, rust_us: layer, ort_p50_us: None, ratio: None });
    }
    let seqs: Vec<Vec<f32>> = (0..args.batch).map(|_| ids(32)).collect();
    let refs: Vec<&[f32]> = seqs.iter().map(Vec::as_slice).collect();
    let x = exec.batch_of(0, &refs)?;
    let batch = time_us(args.batch_iters, || Ok(exec.forward_blocks(&x, 0..n).map(drop)?))?;
    let rust_seq_per_s = args.batch as f64 / (batch.p50 / 1e6);
    rows.push(Row {
        what: "full".into(),
        batch: args.batch,
        tokens: 32,
        rust_us: batch,
        ort_p50_us: None,
        ratio: None,
    });

    let mut report = EncoderReport {
        model: dir.display().to_string(),
        layers: n - 1,
        hidden,
        threads,
        ort_version: None,
        rows,
        rust_seq_per_s,
        ort_seq_per_s: None,
    };
    if let Some(hf) = &args.ort_model {
        let ort = run_ort(args, hf, threads)?;
        attach_ort(&mut report, &ort, args.batch)?;
    }
    Ok(report)
}

/// Runs the ONNX Runtime script and returns its JSON report.
fn run_ort(args: &EncoderArgs, hf: &Path, threads: usize) -> Result<serde_json::Value> {
    let script = paths::find(Path::new("deploy/scripts/ort_encoder_bench.py"))?;
    let lengths = args.lengths.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(",");
    eprintln!("running the ONNX Runtime peer ({})", args.ort_python.display());
    let out = Command::new(&args.ort_python)
        .arg(&script)
        .args(["--model", &hf.display().to_string(), "--threads", &threads.to_string(), "--lengths", &lengths])
        .args(["--batch", &args.batch.to_string(), "--reps", &args.iters.to_string()])
        .args(["--batch-reps", &args.batch_iters.to_string(), "--json"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| {
            format!(
                "starting {} (make it with deploy/scripts/ort_env.sh, or pass --ort-python)",
                args.ort_python.display()
            )
        })?;
    if !out.status.success() {
        bail!("the ONNX Runtime peer failed ({}); its messages are above", out.status);
    }
    serde_json::from_slice(&out.stdout).context("reading the ONNX Runtime peer's JSON")
}

fn attach_ort(report: &mut EncoderReport, ort: &serde_json::Value, batch: usize) -> Result<()> {
    let p50 = |v: &serde_json::Value| v.get("p50_us").and_then(serde_json::Value::as_f64);
    for row in &mut report.rows {
        let theirs = match (row.what.as_str(), row.batch) {
            ("full", 1) => ort["full_b1"].get(row.tokens.to_string()),
            ("layer", 1) => ort["layer_b1"].get(row.tokens.to_string()),
            _ => ort.get(format!("full_b{batch}_t32")),
        };
        row.ort_p50_us = theirs.and_then(p50);
        row.ratio = row.ort_p50_us.map(|o| row.rust_us.p50 / o);
    }
    report.ort_version = ort["ort_version"].as_str().map(str::to_string);
    report.ort_seq_per_s = ort.get(format!("full_b{batch}_t32")).and_then(|v| v["seq_per_s"].as_f64());
    if report.rows.iter().any(|r| r.ort_p50_us.is_none()) {
        bail!("the ONNX Runtime peer's report lacks some rows: {ort}");
    }
    Ok(())
}

impl EncoderReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}: {} layers, hidden {}; {} thread(s){}\n",
            self.model,
            self.layers,
            self.hidden,
            self.threads,
            self.ort_version.as_ref().map(|v| format!("; ONNX Runtime {v} on as many")).unwrap_or_default()
        );
        s += &format!(
            "{:<6} {:>5} {:>6} | {:>10} {:>10} {:>10} | {:>10} {:>7}\n",
            "what", "batch", "tokens", "p50 µs", "p90", "p99", "ORT p50", "ratio"
        );
        for r in &self.rows {
            let (ort, ratio) = match (r.ort_p50_us, r.ratio) {
                (Some(o), Some(x)) => (format!("{o:.1}"), format!("{x:.2}×")),
                _ => ("-".into(), "-".into()),
            };
            s += &format!(
                "{:<6} {:>5} {:>6} | {:>10.1} {:>10.1} {:>10.1} | {:>10} {:>7}\n",
                r.what, r.batch, r.tokens, r.rust_us.p50, r.rust_us.p90, r.rust_us.p99, ort, ratio
            );
        }
        s += &format!(
            "throughput at batch {}: {:.1} seq/s",
            self.rows.last().map_or(0, |r| r.batch),
            self.rust_seq_per_s
        );
        if let Some(o) = self.ort_seq_per_s {
            s += &format!(" (ORT {o:.1} seq/s)");
        }
        s + "\nratio = Rust p50 / ORT p50 (below 1: Rust faster)\n"
    }
}
