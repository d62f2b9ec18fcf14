//! `offramp bench generation`: a decoder split at K through the link
//! emulator at several RTTs, for every mode (all-cloud, split, early-exit,
//! speculative with each draft length) and encoding: tokens/s, time to first
//! token, inter-token latency, round trips and bytes per token, acceptance
//! rate, early-exit agreement with the whole model. [`run_cells`] is also
//! what `offramp experiment` runs for a decoder ([`crate::generation_experiment`]).
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
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all-cloud,split,early-exit,speculative")]
    pub modes: Vec<Mode>,
    /// speculative: the most drafts ahead of the last verified token, one
    /// cell each.
    #[arg(long, value_delimiter = ',', default_value = "6")]
    pub drafts: Vec<usize>,
    /// speculative: always draft the full length (no adaptation).
    #[arg(long)]
    pub fixed_draft: bool,
    /// speculative: most verifications in flight (1: stop and wait).
    #[arg(long, default_value_t = 8)]
    pub pipeline: usize,
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
    pub link: String,
    pub rtt_ms: f64,
    pub mode: String,
    pub split: usize,
    /// speculative: the most drafts per verification.
    pub draft: Option<usize>,
    pub encoding: String,
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub ttft_ms_p50: f64,
    pub itl_ms_p50: f64,
    pub itl_ms_p99: f64,
    pub round_trips_per_token: f64,
    /// speculative: share of drafts the cloud accepted.
    pub acceptance_rate: Option<f64>,
    /// speculative: mean drafts per verification (after adaptation).
    pub mean_draft_length: Option<f64>,
    pub bytes_up_per_token: f64,
    pub bytes_down_per_token: f64,
    pub edge_share: f64,
    pub fallback_tokens: usize,
    /// Share of tokens equal to the whole model's choice: measured for
    /// early-exit; 1 for the modes whose tokens are the whole model's by
    /// construction (greedy split, all-cloud, speculative) when no token
    /// fell back; empty otherwise.
    pub agreement: Option<f64>,
    /// Inter-token latencies (ms), for the CDF plot (not in the CSV).
    #[serde(skip)]
    pub itl_ms: Vec<f64>,
}

impl Cell {
    pub fn name(&self) -> String {
        let draft = self.draft.map(|d| format!("-d{d}")).unwrap_or_default();
        format!("{}-{}{draft}-k{}-{}", self.link, self.mode, self.split, self.encoding)
    }
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
    /// At each RTT and draft length: speculative tokens/s ÷ split tokens/s
    /// (f32; both outputs are the whole model's).
    pub speculative_over_split: Vec<(f64, usize, f64)>,
}

impl GenerationBenchReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "{}: {} prompts, up to {} tokens each, link {:.0} Mbit/s, compute threads per side {}, early-exit threshold {}\n\
             {:>6} {:<14} {:>2} {:<4} {:>7} {:>8} {:>8} {:>8} {:>8} {:>6} {:>6} {:>8} {:>7} {:>6} {:>6}\n",
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
            "accept",
            "up B",
            "down B",
            "edge",
            "fallbk",
            "agree"
        );
        for c in &self.cells {
            s.push_str(&format!(
                "{:>4.0}ms {:<14} {:>2} {:<4} {:>7.1} {:>6.0}ms {:>6.1}ms {:>6.1}ms {:>8.2} {:>6} {:>6.0} {:>8.0} {:>6.0}% {:>6} {:>6}\n",
                c.rtt_ms,
                match c.draft {
                    Some(d) => format!("{} d{d}", c.mode),
                    None => c.mode.clone(),
                },
                c.split,
                c.encoding,
                c.tokens_per_s,
                c.ttft_ms_p50,
                c.itl_ms_p50,
                c.itl_ms_p99,
                c.round_trips_per_token,
                c.acceptance_rate.map(|a| format!("{:.0}%", a * 100.0)).unwrap_or_else(|| "-".into()),
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
        for (rtt, d, r) in &self.speculative_over_split {
            s.push_str(&format!(
                "RTT {rtt:.0} ms: speculative (draft <= {d}) {r:.2}x the tokens/s of split, same tokens\n"
            ));
        }
        s
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    offramp_common::stats::percentile_sorted(v, p)
}

/// What every generation cell shares.
#[derive(Debug, Clone)]
pub struct CellPlan {
    pub model: PathBuf,
    pub split: usize,
    pub modes: Vec<Mode>,
    pub drafts: Vec<usize>,
    pub adapt_draft: bool,
    pub pipeline: usize,
    pub encodings: Vec<offramp_proto::Encoding>,
    pub threshold: Option<f32>,
    pub max_tokens: usize,
}

/// An emulated link for a run of cells.
#[derive(Debug, Clone)]
pub struct LinkCase {
    pub name: String,
    /// The link's base round trip (the plots' x axis).
    pub rtt: Duration,
    pub config: LinkConfig,
}

/// Runs every mode × draft × encoding over each link: a real cloud holding
/// the whole model behind the link emulator, one edge per cell, the same
/// prompts. Returns the cells and the early-exit threshold used.
pub async fn run_cells(
    plan: &CellPlan,
    links: &[LinkCase],
    prompts: &[Vec<u32>],
    mut progress: impl FnMut(&Cell),
) -> Result<(Vec<Cell>, Option<f32>)> {
    let mut cells = Vec::new();
    let mut threshold = plan.threshold;
    for link in links {
        let cloud =
            CloudHandle::start(CloudConfig::from_dirs(vec![plan.model.clone()])).await.context("starting the cloud")?;
        let proxy = spawn_tcp_link(([127, 0, 0, 1], 0).into(), cloud.addr, link.config.clone()).await?;
        let url = format!("http://{}", proxy.local_addr());
        let rtt = link.rtt;
        for &mode in &plan.modes {
            let drafts: Vec<Option<usize>> =
                if mode == Mode::Speculative { plan.drafts.iter().map(|&d| Some(d)).collect() } else { vec![None] };
            for draft in drafts {
                for &encoding in &plan.encodings {
                    let mut config = GenerateConfig::new(mode, plan.split, vec![url.clone()]);
                    config.encoding = encoding;
                    config.threshold = plan.threshold;
                    config.deadline = Duration::from_secs(5) + rtt * 4;
                    config.connect.connect_timeout = config.connect.connect_timeout.max(rtt * 4);
                    config.adapt_draft = plan.adapt_draft;
                    config.pipeline = plan.pipeline;
                    if let Some(d) = draft {
                        config.draft = d;
                    }
                    let edge = DecoderEdge::new(DecoderBundle::open(&plan.model)?, config)?;
                    if mode == Mode::EarlyExit {
                        threshold = edge.threshold();
                    }
                    let opts = GenOptions {
                        max_tokens: plan.max_tokens,
                        agreement: mode == Mode::EarlyExit,
                        ..GenOptions::default()
                    };
                    let mut cell = measure(&edge, prompts, &opts).await?;
                    cell.link = link.name.clone();
                    cell.rtt_ms = rtt.as_secs_f64() * 1e3;
                    cell.draft = draft;
                    cell.encoding = codec::encoding_name(encoding).into();
                    progress(&cell);
                    cells.push(cell);
                }
            }
        }
        proxy.shutdown().await;
        cloud.stop().await?;
    }
    Ok((cells, threshold))
}

/// Generates an answer to every prompt and sums what it took.
async fn measure(edge: &DecoderEdge, prompts: &[Vec<u32>], opts: &GenOptions) -> Result<Cell> {
    let (mut tokens, mut secs, mut rt, mut up, mut down, mut edge_n, mut fallback) = (0, 0.0, 0.0, 0.0, 0.0, 0, 0);
    let (mut ttft, mut itl, mut agree_w) = (Vec::new(), Vec::new(), (0.0, 0usize));
    let (mut verified, mut accepted, mut verifications) = (0usize, 0.0, 0.0);
    let mode = edge.mode();
    for p in prompts {
        let g = edge.generate(p, opts, |_| {}).await?;
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
        if let (Some(v), Some(a), Some(m)) = (s.drafts_verified, s.acceptance_rate, s.mean_draft_length) {
            verified += v;
            accepted += a * v as f64;
            if m > 0.0 {
                verifications += v as f64 / m;
            }
        }
    }
    let t = tokens.max(1) as f64;
    let exact = matches!(mode, Mode::Split | Mode::AllCloud | Mode::Speculative)
        && fallback == 0
        && opts.sampling == offramp_common::decoder::sample::Sampling::Greedy;
    let speculative = mode == Mode::Speculative;
    let (ttft_ms_p50, itl_ms_p50, itl_ms_p99) = (pct(&mut ttft, 50.0), pct(&mut itl, 50.0), pct(&mut itl, 99.0));
    Ok(Cell {
        link: String::new(),
        rtt_ms: 0.0,
        mode: mode.name().into(),
        split: edge.split(),
        draft: None,
        encoding: String::new(),
        tokens,
        tokens_per_s: tokens as f64 / secs.max(1e-9),
        ttft_ms_p50,
        itl_ms_p50,
        itl_ms_p99,
        round_trips_per_token: rt / t,
        acceptance_rate: speculative.then(|| accepted / verified.max(1) as f64),
        mean_draft_length: speculative.then(|| verified as f64 / verifications.max(1.0)),
        bytes_up_per_token: up / t,
        bytes_down_per_token: down / t,
        edge_share: edge_n as f64 / t,
        fallback_tokens: fallback,
        agreement: if agree_w.1 > 0 { Some(agree_w.0 / agree_w.1 as f64) } else { exact.then_some(1.0) },
        // Sorted by `pct`.
        itl_ms: itl,
    })
}

/// Chat prompts from a question file (label and question per line), the
/// `count` after the first `skip`.
pub fn chat_prompts(
    bundle: &DecoderBundle,
    file: &std::path::Path,
    skip: usize,
    count: usize,
) -> Result<Vec<Vec<u32>>> {
    let questions =
        offramp_common::data::read_labelled_lines(file, 6).with_context(|| format!("reading {}", file.display()))?;
    anyhow::ensure!(questions.len() >= skip + count, "{} has too few lines", file.display());
    let tok = bundle.tokenizer().clone();
    Ok(questions[skip..skip + count]
        .iter()
        .map(|(_, q)| tok.encode_chat(&[ChatMessage { role: "user".into(), content: q.clone() }]))
        .collect::<Result<_, _>>()?)
}

/// `mode` tokens/s ÷ split tokens/s at each RTT (f32 cells), with the
/// speculative cell's draft length.
pub fn ratios_to_split(cells: &[Cell], mode: &str) -> Vec<(f64, Option<usize>, f64)> {
    cells
        .iter()
        .filter(|c| c.mode == mode && c.encoding == "f32")
        .filter_map(|c| {
            let split = cells.iter().find(|s| s.link == c.link && s.mode == "split" && s.encoding == "f32")?;
            Some((c.rtt_ms, c.draft, c.tokens_per_s / split.tokens_per_s))
        })
        .collect()
}

pub async fn run(args: &GenerationBenchArgs) -> Result<GenerationBenchReport> {
    let bundle = DecoderBundle::open(&args.model).with_context(|| format!("opening {}", args.model.display()))?;
    let n = bundle.num_layers();
    anyhow::ensure!(bundle.holds() == (0..n), "the benchmark needs a whole-model bundle (the cloud holds it all)");
    let prompts = chat_prompts(&bundle, &args.prompts_file, args.skip, args.prompts)?;
    let links: Vec<LinkCase> = args
        .rtts
        .iter()
        .map(|&rtt| {
            let mut dir = DirectionConfig { delay: rtt / 2, ..DirectionConfig::default() };
            if args.rate > 0.0 {
                dir = dir.with_rate_bps(args.rate);
            }
            LinkCase { name: format!("rtt{}ms", rtt.as_millis()), rtt, config: LinkConfig::symmetric(dir) }
        })
        .collect();
    let plan = CellPlan {
        model: args.model.clone(),
        split: args.split,
        modes: args.modes.clone(),
        drafts: args.drafts.clone(),
        adapt_draft: !args.fixed_draft,
        pipeline: args.pipeline,
        encodings: args.encodings.clone(),
        threshold: args.threshold,
        max_tokens: args.max_tokens,
    };
    let (cells, threshold) = run_cells(&plan, &links, &prompts, |c| {
        eprintln!(
            "RTT {:>3.0} ms {:<10} {:<4}{}: {:.1} tok/s, TTFT {:.0} ms",
            c.rtt_ms,
            c.mode,
            c.encoding,
            c.draft.map(|d| format!(" draft {d}")).unwrap_or_default(),
            c.tokens_per_s,
            c.ttft_ms_p50
        )
    })
    .await?;
    let report = GenerationBenchReport {
        model_id: bundle.model_id().to_string(),
        threads_per_side: std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all cores".into()),
        rate_bps: args.rate,
        prompts: prompts.len(),
        max_tokens: args.max_tokens,
        threshold,
        early_exit_over_split: ratios_to_split(&cells, "early-exit").into_iter().map(|(r, _, x)| (r, x)).collect(),
        speculative_over_split: ratios_to_split(&cells, "speculative")
            .into_iter()
            .map(|(r, d, x)| (r, d.unwrap_or_default(), x))
            .collect(),
        cells,
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
    plots(out, &r.model_id, &r.cells)
}

/// tokens/s against RTT per mode (and draft length, encoding), and the CDF
/// of inter-token latency per cell.
pub fn plots(out: &std::path::Path, model_id: &str, cells: &[Cell]) -> Result<()> {
    let mut plot = Plot::new(format!("{model_id}: tokens/s against RTT"), "RTT (ms)", "tokens/s");
    let key = |c: &Cell| (c.mode.clone(), c.draft, c.encoding.clone());
    let mut keys: Vec<(String, Option<usize>, String)> = cells.iter().map(key).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let mut pts: Vec<(f64, f64)> =
            cells.iter().filter(|c| key(c) == k).map(|c| (c.rtt_ms, c.tokens_per_s)).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (mode, draft, enc) = k;
        let draft = draft.map(|d| format!(" d{d}")).unwrap_or_default();
        plot = plot.series(Series::line_points(format!("{mode}{draft} ({enc})"), pts));
    }
    plot.save(out.join("tokens-per-s.svg"))?;
    let mut cdf =
        Plot::new("Inter-token latency CDF per cell", "inter-token latency (ms)", "fraction of tokens").x_log(true);
    for c in cells.iter().filter(|c| !c.itl_ms.is_empty()) {
        let m = c.itl_ms.len() as f64;
        let pts = c.itl_ms.iter().enumerate().map(|(i, &x)| (x.max(1e-3), (i + 1) as f64 / m)).collect();
        cdf = cdf.series(Series::line(c.name(), pts));
    }
    cdf.save(out.join("itl-cdf.svg"))?;
    Ok(())
}
