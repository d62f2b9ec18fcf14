//! `offramp bench generation`: a decoder split at K through the link
//! emulator at several RTTs, for every mode (all-cloud, split, early-exit)
//! and encoding: tokens/s, time to first token, inter-token latency, round
//! trips and bytes per token, early-exit agreement with the whole model.
//!
//! Each RTT gets a real cloud (in-process, holding the whole model, so it
//! serves every K) behind an emulated link (half the RTT each way); each
//! cell generates greedy answers to the same chat prompts (TREC training
//! questions after the ones `offramp calibrate-decoder` uses). Edge and
//! cloud share this machine: `RAYON_NUM_THREADS` (default 1 here) gives
//! each side that many compute threads.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::decoder::{ChatMessage, DecoderBundle};
use offramp_common::{codec, units};
use offramp_edge::generate::{DecoderEdge, GenOptions, GenerateConfig, Mode};
use offramp_link::{spawn_tcp_link, DirectionConfig, LinkConfig};
use offramp_plot::{Plot, Series};

#[derive(Debug, Clone, clap::Args)]
pub struct GenerationBenchArgs {
    /// Whole-model decoder bundle (calibrated, for early-exit).
    #[arg(long)]
    pub model: PathBuf,
    /// Split point K.
    #[arg(long, default_value_t = 18)]
    pub split: usize,
    /// Round-trip times to emulate.
    #[arg(long, value_delimiter = ',', value_parser = units::parse_duration, default_value = "0ms,20ms,50ms,150ms")]
    pub rtts: Vec<Duration>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all-cloud,split,early-exit")]
    pub modes: Vec<Mode>,
    #[arg(long, value_delimiter = ',', value_parser = codec::parse_encoding, default_value = "f32")]
    pub encodings: Vec<offramp_proto::Encoding>,
    /// Link rate each way (0: unlimited).
    #[arg(long, value_parser = units::parse_rate, default_value = "100Mbit")]
    pub rate: f64,
    /// Question file; prompts are taken after the first `--skip`.
    #[arg(long, default_value = "../shared/data/text/TREC.train.all")]
    pub prompts_file: PathBuf,
    #[arg(long, default_value_t = 48)]
    pub skip: usize,
    #[arg(long, default_value_t = 6)]
    pub prompts: usize,
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    /// Early-exit threshold (default: the bundle's calibrated one).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Write cells.csv, results.json and tokens-per-s.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub rtt_ms: f64,
    pub mode: String,
    pub split: usize,
    pub encoding: String,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub ttft_ms_p50: f64,
    pub itl_ms_p50: f64,
    pub itl_ms_p99: f64,
    pub round_trips_per_token: f64,
    pub bytes_up_per_token: f64,
    pub bytes_down_per_token: f64,
    pub edge_share: f64,
    pub fallback_tokens: usize,
    /// Share of tokens equal to the whole model's choice (early-exit; empty
    /// in the CSV for the other modes, whose tokens are the whole model's).
    pub agreement: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerationBenchReport {
    pub model_id: String,
    pub threads_per_side: String,
    pub rate_bps: f64,
    pub prompts: usize,
    pub max_tokens: usize,
    pub threshold: Option<f32>,
    pub cells: Vec<Cell>,
    /// At each RTT: early-exit tokens/s ÷ split tokens/s (f32).
    pub early_exit_over_split: Vec<(f64, f64)>,
}

impl GenerationBenchReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}: {} prompts, up to {} tokens each, link {:.0} Mbit/s, compute threads per side {}, early-exit threshold {}\n\
             {:>6} {:<10} {:>2} {:<4} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>8} {:>7} {:>6} {:>6}\n",
            self.model_id,
            self.prompts,
            self.max_tokens,
            self.rate_bps / 1e6,
            self.threads_per_side,
            self.threshold.map(|t| format!("{t:.3}")).unwrap_or_else(|| "-".into()),
            "RTT",
            "mode",
            "K",
            "enc",
            "tok/s",
            "TTFT p50",
            "ITL p50",
            "ITL p99",
            "RT/tok",
            "up B",
            "down B",
            "edge",
            "fallbk",
            "agree"
        );
        for c in &self.cells {
            s.push_str(&format!(
                "{:>4.0}ms {:<10} {:>2} {:<4} {:>7.1} {:>6.0}ms {:>6.1}ms {:>6.1}ms {:>8.2} {:>6.0} {:>8.0} {:>6.0}% {:>6} {:>6}\n",
                c.rtt_ms,
                c.mode,
                c.split,
                c.encoding,
                c.tokens_per_s,
                c.ttft_ms_p50,
                c.itl_ms_p50,
                c.itl_ms_p99,
                c.round_trips_per_token,
                c.bytes_up_per_token,
                c.bytes_down_per_token,
                c.edge_share * 100.0,
                c.fallback_tokens,
                c.agreement.map(|a| format!("{:.1}%", a * 100.0)).unwrap_or_else(|| "-".into())
            ));
        }
        for (rtt, r) in &self.early_exit_over_split {
            s.push_str(&format!("RTT {rtt:.0} ms: early-exit {r:.2}x the tokens/s of split\n"));
        }
        s
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    offramp_common::stats::percentile_sorted(v, p)
}

pub async fn run(args: &GenerationBenchArgs) -> Result<GenerationBenchReport> {
    let bundle = DecoderBundle::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let n = bundle.num_layers();
    anyhow::ensure!(bundle.holds() == (0..n), "the benchmark needs a whole-model bundle (the cloud holds it all)");
    let questions = offramp_common::data::read_labelled_lines(&args.prompts_file, 6)
        .with_context(|| format!("reading {}", args.prompts_file.display()))?;
    anyhow::ensure!(questions.len() >= args.skip + args.prompts, "{} has too few lines", args.prompts_file.display());
    let tok = bundle.tokenizer().clone();
    let prompts: Vec<Vec<u32>> = questions[args.skip..args.skip + args.prompts]
        .iter()
        .map(|(_, q)| tok.encode_chat(&[ChatMessage { role: "user".into(), content: q.clone() }]))
        .collect::<Result<_, _>>()?;
    let mut cells = Vec::new();
    let mut threshold = args.threshold;
    for &rtt in &args.rtts {
        let cloud =
            CloudHandle::start(CloudConfig::from_dirs(vec![args.model.clone()])).await.context("starting the cloud")?;
        let mut dir = DirectionConfig { delay: rtt / 2, ..DirectionConfig::default() };
        if args.rate > 0.0 {
            dir = dir.with_rate_bps(args.rate);
        }
        let link = spawn_tcp_link(([127, 0, 0, 1], 0).into(), cloud.addr, LinkConfig::symmetric(dir)).await?;
        let url = format!("http://{}", link.local_addr());
        for &mode in &args.modes {
            for &encoding in &args.encodings {
                let mut config = GenerateConfig::new(mode, args.split, vec![url.clone()]);
                config.encoding = encoding;
                config.threshold = args.threshold;
                config.deadline = Duration::from_secs(5) + rtt * 4;
                config.connect.connect_timeout = config.connect.connect_timeout.max(rtt * 4);
                let edge = DecoderEdge::new(DecoderBundle::open(&args.model)?, config)?;
                if mode == Mode::EarlyExit {
                    threshold = edge.threshold();
                }
                let opts = GenOptions {
                    max_tokens: args.max_tokens,
                    agreement: mode == Mode::EarlyExit,
                    ..GenOptions::default()
                };
                let (mut tokens, mut secs, mut rt, mut up, mut down, mut edge_n, mut fallback) =
                    (0, 0.0, 0.0, 0.0, 0.0, 0, 0);
                let (mut ttft, mut itl, mut agree_w) = (Vec::new(), Vec::new(), (0.0, 0usize));
                for p in &prompts {
                    let g = edge.generate(p, &opts, |_| {}).await?;
                    let s = &g.summary;
                    tokens += s.tokens;
                    secs += s.elapsed_s;
                    rt += s.round_trips_per_token * s.tokens as f64;
                    up += s.bytes_up_per_token * s.tokens as f64;
                    down += s.bytes_down_per_token * s.tokens as f64;
                    edge_n += s.edge_tokens;
                    fallback += s.fallback_tokens;
                    ttft.push(s.time_to_first_token_ms);
                    itl.extend(g.events.iter().skip(1).map(|e| e.latency_us as f64 / 1e3));
                    if let Some(a) = s.agreement {
                        agree_w.0 += a * s.tokens as f64;
                        agree_w.1 += s.tokens;
                    }
                }
                let t = tokens.max(1) as f64;
                let cell = Cell {
                    rtt_ms: rtt.as_secs_f64() * 1e3,
                    mode: mode.name().into(),
                    split: edge.split(),
                    encoding: codec::encoding_name(encoding).into(),
                    tokens,
                    tokens_per_s: tokens as f64 / secs.max(1e-9),
                    ttft_ms_p50: pct(&mut ttft, 50.0),
                    itl_ms_p50: pct(&mut itl, 50.0),
                    itl_ms_p99: pct(&mut itl, 99.0),
                    round_trips_per_token: rt / t,
                    bytes_up_per_token: up / t,
                    bytes_down_per_token: down / t,
                    edge_share: edge_n as f64 / t,
                    fallback_tokens: fallback,
                    agreement: (agree_w.1 > 0).then(|| agree_w.0 / agree_w.1 as f64),
                };
                eprintln!(
                    "RTT {:>3.0} ms {:<10} {:<4}: {:.1} tok/s, TTFT {:.0} ms",
                    cell.rtt_ms, cell.mode, cell.encoding, cell.tokens_per_s, cell.ttft_ms_p50
                );
                cells.push(cell);
            }
        }
        link.shutdown().await;
        cloud.stop().await?;
    }
    let early_exit_over_split = args
        .rtts
        .iter()
        .filter_map(|rtt| {
            let ms = rtt.as_secs_f64() * 1e3;
            let find = |m: &str| cells.iter().find(|c| c.rtt_ms == ms && c.mode == m && c.encoding == "f32");
            Some((ms, find("early-exit")?.tokens_per_s / find("split")?.tokens_per_s))
        })
        .collect();
    let report = GenerationBenchReport {
        model_id: bundle.model_id().to_string(),
        threads_per_side: std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into()),
        rate_bps: args.rate,
        prompts: prompts.len(),
        max_tokens: args.max_tokens,
        threshold,
        cells,
        early_exit_over_split,
    };
    if let Some(out) = &args.out {
        write(out, &report)?;
    }
    Ok(report)
}

fn write(out: &std::path::Path, r: &GenerationBenchReport) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = csv::Writer::from_path(out.join("cells.csv"))?;
    for c in &r.cells {
        w.serialize(c)?;
    }
    w.flush()?;
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    let mut plot = Plot::new(format!("{}: tokens/s against RTT", r.model_id), "RTT (ms)", "tokens/s");
    let mut keys: Vec<(String, String)> = r.cells.iter().map(|c| (c.mode.clone(), c.encoding.clone())).collect();
    keys.dedup();
    keys.sort();
    keys.dedup();
    for (mode, enc) in keys {
        let pts = r
            .cells
            .iter()
            .filter(|c| c.mode == mode && c.encoding == enc)
            .map(|c| (c.rtt_ms, c.tokens_per_s))
            .collect();
        plot = plot.series(Series::line_points(format!("{mode} ({enc})"), pts));
    }
    plot.save(out.join("tokens-per-s.svg"))?;
    Ok(())
}
