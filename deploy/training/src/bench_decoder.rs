//! `offramp bench decoder`: CPU decode speed of a whole decoder bundle at
//! batch 1 (prompt of `--prompt-tokens`, then `--new-tokens` greedy
//! single-token steps, EOS ignored), beside llama.cpp on the same GGUF in
//! the same run (`deploy/scripts/llamacpp_decode.py` through
//! llama-cpp-python; `deploy/scripts/llamacpp_setup.sh` builds it).
//!
//! Threads: `--threads` sets `RAYON_NUM_THREADS` for candle's quantized
//! matmul before the model loads, and is passed to llama.cpp as
//! `n_threads`. Runs alternate between the two engines so both see the same
//! machine load.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use offramp_common::decoder::model::{last_row, rows, top1};
use offramp_common::decoder::{DecoderBundle, DecoderModel, KvCache, SessionStep};

/// The prompt text llama.cpp's side tokenizes too (the same constant as in
/// `llamacpp_decode.py`).
pub const PROMPT_TEXT: &str = "The history of the printing press begins in the fifteenth century, when \
Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a system that could \
produce books quickly and cheaply. Within a few decades, printing shops had spread to every major city in Europe, \
and the number of books in circulation grew from thousands to millions. Scholars could now share ideas faster than \
ever before, and ordinary people began to learn to read.";

#[derive(Debug, Clone, clap::Args)]
pub struct DecoderBenchArgs {
    /// Whole-model decoder bundle.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    pub new_tokens: usize,
    /// Timed runs per engine (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Compute threads for both engines.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Python with llama-cpp-python installed (e.g. /work/venv-llama/bin/python);
    /// without it only Offramp is measured.
    #[arg(long, env = "OFFRAMP_LLAMA_CPP_PYTHON")]
    pub llama_cpp_python: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineRuns {
    pub engine: String,
    pub decode_tokens_per_s: Vec<f64>,
    pub prefill_tokens_per_s: Vec<f64>,
    pub decode_tokens_per_s_median: f64,
    pub prefill_tokens_per_s_median: f64,
    /// The first 32 greedy tokens after the prompt.
    pub greedy_ids: Vec<u32>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecoderBenchReport {
    pub model_id: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub offramp: EngineRuns,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llama_cpp: Option<EngineRuns>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub llama_cpp_version: Option<String>,
    /// Offramp's decode tokens/s ÷ llama.cpp's (medians, same run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decode_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefill_ratio: Option<f64>,
    /// Leading greedy tokens the two engines agree on (of 32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub greedy_ids_agree: Option<usize>,
}

impl DecoderBenchReport {
    pub fn render(&self) -> String {
        let line = |e: &EngineRuns| {
            let min = e.decode_tokens_per_s.iter().copied().fold(f64::INFINITY, f64::min);
            let max = e.decode_tokens_per_s.iter().copied().fold(0.0, f64::max);
            format!(
                "{:<10} decode {:>7.1} tok/s (median of {}; min {:.1}, max {:.1})  prefill {:>7.1} tok/s\n",
                e.engine,
                e.decode_tokens_per_s_median,
                e.decode_tokens_per_s.len(),
                min,
                max,
                e.prefill_tokens_per_s_median
            )
        };
        let mut s = format!(
            "{}: batch 1, prompt {} tokens, {} new tokens, {} thread(s)\n",
            self.model_id, self.prompt_tokens, self.new_tokens, self.threads
        );
        s.push_str(&line(&self.offramp));
        if let Some(l) = &self.llama_cpp {
            s.push_str(&line(l));
            s.push_str(&format!(
                "ratio      decode {:.2}x, prefill {:.2}x of llama.cpp ({}); greedy tokens agree on the first {} of 32\n",
                self.decode_ratio.unwrap_or(0.0),
                self.prefill_ratio.unwrap_or(0.0),
                self.llama_cpp_version.as_deref().unwrap_or("?"),
                self.greedy_ids_agree.unwrap_or(0)
            ));
        }
        s
    }
}

/// One timed run: (prefill tok/s, decode tok/s, generated ids).
fn one_run(model: &DecoderModel, prompt: &[u32], new_tokens: usize) -> Result<(f64, f64, Vec<u32>)> {
    let mut cache = KvCache::new(model.config(), model.holds());
    let t0 = Instant::now();
    let mut steps = [SessionStep { cache: &mut cache, x: model.embed(prompt)?, pos: 0 }];
    model.run(model.holds(), &mut steps, &[])?;
    let [s] = steps;
    let mut token = top1(&rows(&model.logits(&last_row(&s.x)?)?)?[0]).0;
    let prefill = t0.elapsed().as_secs_f64();
    let mut out = vec![token];
    let t1 = Instant::now();
    for pos in prompt.len()..prompt.len() + new_tokens {
        let mut steps = [SessionStep { cache: &mut cache, x: model.embed(&[token])?, pos }];
        model.run(model.holds(), &mut steps, &[])?;
        let [s] = steps;
        token = top1(&rows(&model.logits(&s.x)?)?[0]).0;
        out.push(token);
    }
    let decode = t1.elapsed().as_secs_f64();
    Ok((prompt.len() as f64 / prefill, new_tokens as f64 / decode, out))
}

fn median(v: &[f64]) -> f64 {
    offramp_common::stats::percentile(v, 50.0).unwrap_or(0.0)
}

pub fn run(args: &DecoderBenchArgs) -> Result<DecoderBenchReport> {
    anyhow::ensure!(
        args.threads >= 1 && args.runs >= 1 && args.prompt_tokens >= 1,
        "--threads, --runs and --prompt-tokens must be at least 1"
    );
    // candle's CPU pool reads this once, when it is first used.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let bundle = DecoderBundle::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    anyhow::ensure!(bundle.holds() == (0..bundle.num_layers()), "the benchmark needs the whole model");
    let model = bundle.model()?;
    // The prompt text's tokens, repeated to the length asked for.
    let base = bundle.tokenizer().encode(PROMPT_TEXT)?;
    let prompt: Vec<u32> = base.iter().copied().cycle().take(args.prompt_tokens).collect();
    let llama = |runs: usize| -> Result<serde_json::Value> {
        let python = args.llama_cpp_python.as_ref().expect("checked");
        let script = offramp_common::paths::find(std::path::Path::new("deploy/scripts/llamacpp_decode.py"))?;
        let out = Command::new(python)
            .arg(script)
            .args(["--model", &bundle.weights_path().display().to_string()])
            .args(["--threads", &args.threads.to_string()])
            .args(["--prompt-tokens", &args.prompt_tokens.to_string()])
            .args(["--new-tokens", &args.new_tokens.to_string()])
            .args(["--runs", &runs.to_string(), "--warmup", "0", "--json"])
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        anyhow::ensure!(out.status.success(), "llama.cpp run failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).context("llama.cpp's JSON")
    };
    // Warm-up (both), then alternate one timed run each.
    one_run(&model, &prompt, args.new_tokens.min(16))?;
    let mut ours = (Vec::new(), Vec::new(), Vec::new());
    let mut theirs = (Vec::new(), Vec::new(), Vec::new(), String::new());
    if args.llama_cpp_python.is_some() {
        llama(1)?;
    }
    for _ in 0..args.runs {
        let (p, d, ids) = one_run(&model, &prompt, args.new_tokens)?;
        ours.0.push(p);
        ours.1.push(d);
        ours.2 = ids;
        if args.llama_cpp_python.is_some() {
            let j = llama(1)?;
            let r = &j["runs"][0];
            theirs.0.push(r["prefill_tokens_per_s"].as_f64().unwrap_or(0.0));
            theirs.1.push(r["decode_tokens_per_s"].as_f64().unwrap_or(0.0));
            theirs.2 = j["greedy_ids"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
                .unwrap_or_default();
            theirs.3 = j["llama_cpp_python"].as_str().unwrap_or("?").to_string();
            if j["prompt_ids"].as_array().map(|a| a.len()) != Some(prompt.len())
                || j["prompt_ids"]
                    .as_array()
                    .is_some_and(|a| a.iter().zip(&prompt).any(|(x, y)| x.as_u64() != Some(*y as u64)))
            {
                tracing::warn!("llama.cpp tokenized the prompt differently; speeds still compare, greedy ids may not");
            }
        }
    }
    let engine = |name: &str, prefill: &[f64], decode: &[f64], ids: &[u32]| EngineRuns {
        engine: name.to_string(),
        decode_tokens_per_s: decode.to_vec(),
        prefill_tokens_per_s: prefill.to_vec(),
        decode_tokens_per_s_median: median(decode),
        prefill_tokens_per_s_median: median(prefill),
        greedy_ids: ids.iter().take(32).copied().collect(),
    };
    let offramp = engine("offramp", &ours.0, &ours.1, &ours.2);
    let llama_cpp = args.llama_cpp_python.as_ref().map(|_| engine("llama.cpp", &theirs.0, &theirs.1, &theirs.2));
    let decode_ratio = llama_cpp.as_ref().map(|l| offramp.decode_tokens_per_s_median / l.decode_tokens_per_s_median);
    let prefill_ratio = llama_cpp.as_ref().map(|l| offramp.prefill_tokens_per_s_median / l.prefill_tokens_per_s_median);
    let greedy_ids_agree =
        llama_cpp.as_ref().map(|l| offramp.greedy_ids.iter().zip(&l.greedy_ids).take_while(|(a, b)| a == b).count());
    Ok(DecoderBenchReport {
        model_id: bundle.model_id().to_string(),
        threads: args.threads,
        prompt_tokens: prompt.len(),
        new_tokens: args.new_tokens,
        offramp,
        llama_cpp,
        llama_cpp_version: args.llama_cpp_python.as_ref().map(|_| theirs.3.clone()),
        decode_ratio,
        prefill_ratio,
        greedy_ids_agree,
    })
}
