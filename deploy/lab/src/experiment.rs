//! `offramp experiment`: a grid over split points, policies, link profiles,
//! transports, encodings and input counts. Each cell runs a real cloud, a link
//! emulator and an edge over loopback sockets and records every request.
//!
//! Output in `--out`: `results.csv` (one row per cell), `exit_shares.csv`
//! (one row per cell and exit), `records/<cell>.jsonl`
//! (every answer), `cells.json`, and SVG plots: latency CDF per cell, accuracy
//! vs mean latency with the Pareto front, tier and exit shares, bytes per
//! request. With `[adaptive]`, adaptive cells run beside the fixed-K ones:
//! the edge holds blocks `0..max_split` and re-plans its split and encoding
//! live (`--adaptive-split`); each writes `timeline-<cell>.csv` and
//! `timeline-<cell>.svg` (chosen K, estimated and trace bandwidth over time).
//!
//! An experiment whose `model` is a decoder bundle runs generation cells
//! instead ([`crate::generation_experiment`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use offramp_common::data::{Dataset, Subset};
use offramp_common::policy::Rule;
use offramp_common::stats::Summary;
use offramp_common::{codec, units, Bundle, Policy};
use offramp_edge::plan::{Objective, PlanConfig};
use offramp_edge::run::run_dataset;
use offramp_edge::transport::TransportKind;
use offramp_edge::{Answer, Tier};
use serde::{Deserialize, Serialize};

use offramp_common::paths;
use offramp_link::{DirectionConfig, LinkConfig, Trace, TraceFormat};

use crate::harness::{cloud_config, Topology};
use offramp_plot::{Plot, Series};

#[derive(Debug, Clone, clap::Args)]
pub struct ExperimentArgs {
    /// Experiment definition (TOML; see deploy/experiments/fixed-links.toml).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    #[serde(default = "default_model")]
    pub model: PathBuf,
    #[serde(default = "default_data")]
    pub data: PathBuf,
    #[serde(default = "default_subset")]
    pub subset: Subset,
    #[serde(default = "default_val")]
    pub val_size: usize,
    /// Split points; the baselines K = 0 and K = N are added.
    pub splits: Vec<usize>,
    /// Input counts.
    #[serde(default = "default_inputs")]
    pub inputs: Vec<usize>,
    #[serde(default = "default_transports")]
    pub transports: Vec<String>,
    #[serde(default = "default_encodings")]
    pub encodings: Vec<String>,
    /// Lossless compression on top of every cell's encoding (`none`, `lz4`;
    /// an adaptive edge's int8 routes use LZ4 whatever this says).
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default = "one")]
    pub concurrency: usize,
    /// Paced arrivals: one input every `interval` (`"100ms"`), one at a time
    /// (an input that takes longer delays the next), so every cell covers
    /// the same stretch of a time-varying link. Default: back to back, with
    /// `concurrency` in flight.
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default = "default_deadline")]
    pub deadline: String,
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicySpec>,
    #[serde(rename = "link")]
    pub links: Vec<LinkSpec>,
    #[serde(default)]
    pub seed: u64,
    /// Adaptive cells (the split re-planned live) beside the fixed ones.
    #[serde(default)]
    pub adaptive: Option<AdaptiveSpec>,
}

/// Adaptive cells: the deepest split the edge holds, and an optional
/// latency objective (`"50ms"`; default: the least expected latency).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveSpec {
    pub max_split: usize,
    #[serde(default)]
    pub latency_slo: Option<String>,
}

/// One sample of an adaptive cell's planner.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineRow {
    /// Seconds since the link started.
    pub t_s: f64,
    pub split: usize,
    pub encoding: &'static str,
    pub rtt_ms: Option<f64>,
    /// The planner's goodput estimate.
    pub estimated_mbit: Option<f64>,
    /// What the link's uplink carried over the last half second.
    pub link_up_mbit: Option<f64>,
}

fn default_model() -> PathBuf {
    "models/b-lenet-mnist".into()
}
fn default_data() -> PathBuf {
    "models/mnist-sample".into()
}
fn default_subset() -> Subset {
    Subset::Sample
}
fn default_val() -> usize {
    5000
}
fn default_inputs() -> Vec<usize> {
    vec![200]
}
fn default_transports() -> Vec<String> {
    vec!["grpc".into()]
}
fn default_encodings() -> Vec<String> {
    vec!["f32".into()]
}
fn one() -> usize {
    1
}
fn default_deadline() -> String {
    "5s".into()
}

/// A policy: a file, or one rule at every non-final exit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    pub file: Option<PathBuf>,
    pub rule: Option<String>,
    pub threshold: Option<f32>,
    pub patience: Option<usize>,
}

/// A link profile, the same in both directions unless `up_*`/`down_*` are given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub name: String,
    #[serde(default)]
    pub delay: Option<String>,
    #[serde(default)]
    pub jitter: Option<String>,
    #[serde(default)]
    pub rate: Option<String>,
    #[serde(default)]
    pub loss: Option<String>,
    #[serde(default)]
    pub up_trace: Option<PathBuf>,
    #[serde(default)]
    pub down_trace: Option<PathBuf>,
}

impl LinkSpec {
    pub fn build(&self, seed: u64) -> Result<LinkConfig> {
        let e = |m: &dyn std::fmt::Display| anyhow::anyhow!("link {:?}: {m}", self.name);
        let mut dir = DirectionConfig::default();
        if let Some(d) = &self.delay {
            dir = dir.with_delay(units::parse_duration(d).map_err(|x| e(&x))?);
        }
        if let Some(j) = &self.jitter {
            dir = dir.with_jitter(units::parse_duration(j).map_err(|x| e(&x))?);
        }
        if let Some(l) = &self.loss {
            dir = dir.with_loss(units::parse_ratio(l).map_err(|x| e(&x))?);
        }
        if let Some(r) = &self.rate {
            dir = dir.with_rate_bps(units::parse_rate(r).map_err(|x| e(&x))?);
        }
        let (mut up, mut down) = (dir.clone(), dir);
        if let Some(p) = &self.up_trace {
            up = up.with_trace(Trace::load(&paths::find(p).map_err(|x| e(&x))?, TraceFormat::Auto).map_err(|x| e(&x))?);
        }
        if let Some(p) = &self.down_trace {
            down = down
                .with_trace(Trace::load(&paths::find(p).map_err(|x| e(&x))?, TraceFormat::Auto).map_err(|x| e(&x))?);
        }
        Ok(LinkConfig { up, down, seed })
    }
}

/// One row of results.csv.
#[derive(Debug, Clone, Serialize)]
pub struct CellResult {
    pub cell: String,
    /// `fixed`, or `adaptive` (then `split` is the deepest it may take).
    pub mode: String,
    pub split: usize,
    pub policy: String,
    pub link: String,
    pub transport: String,
    pub encoding: String,
    pub n: usize,
    pub accuracy: f64,
    pub share_edge: f64,
    pub share_cloud: f64,
    pub share_fallback: f64,
    pub exit_shares: Vec<f64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub bytes_up_per_req: f64,
    pub bytes_down_per_req: f64,
    pub fallbacks: usize,
    /// Mean of the per-request physical bound: edge compute + (for offloads)
    /// RTT + bytes/rate each way + cloud compute.
    pub bound_mean_ms: f64,
    /// Measured mean latency / bound mean.
    pub measured_over_bound: f64,
    /// Route changes of an adaptive cell (0 for fixed ones).
    pub switches: u64,
}

/// Runs the experiment's cells in order and writes the results, records,
/// plots and provenance.
pub async fn run(args: &ExperimentArgs) -> Result<Vec<CellResult>> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let cfg: ExperimentConfig = toml::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    let model_dir = paths::find(&cfg.model)?;
    let bundle = Bundle::load(&model_dir).with_context(|| format!("loading {}", model_dir.display()))?;
    let n_blocks = bundle.num_blocks();
    let mut splits = cfg.splits.clone();
    splits.extend([0, n_blocks]);
    splits.sort_unstable();
    splits.dedup();
    for &k in &splits {
        bundle.check_split(k)?;
    }
    let Settings { interval, transports, encodings, deadline, compression, adaptive } = settings(&cfg, n_blocks)?;
    // Fixed split points, then the adaptive cells.
    let mut modes: Vec<Option<usize>> = splits.iter().copied().map(Some).collect();
    if adaptive.is_some() {
        modes.push(None);
    }
    let max_inputs = cfg.inputs.iter().copied().max().unwrap_or(0);
    let mut data = Dataset::for_bundle(&paths::find(&cfg.data)?, cfg.subset, cfg.val_size, &bundle)?;
    data.truncate(max_inputs);

    std::fs::create_dir_all(args.out.join("records"))?;
    write_provenance(&args.out, &args.config, &text, &bundle, &splits)?;
    let policies = policies(&cfg, &bundle, &args.out.join("policies"))?;

    let mut cells = Vec::new();
    for &k in &modes {
        for (pname, policy) in &policies {
            for link in &cfg.links {
                for &transport in &transports {
                    for &enc in &encodings {
                        for &n in &cfg.inputs {
                            cells.push((k, pname.clone(), policy.clone(), link.clone(), transport, enc, n));
                        }
                    }
                }
            }
        }
    }
    let bar = indicatif::ProgressBar::new(cells.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} cells, ETA {eta} {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix("experiment");
    let mut results = Vec::new();
    let mut csv = csv::Writer::from_path(args.out.join("results.csv"))?;
    let mut exit_csv = csv::Writer::from_path(args.out.join("exit_shares.csv"))?;
    let mut latencies: Vec<(String, Vec<f64>)> = Vec::new();
    for (i, (k, pname, policy, link, transport, enc, n)) in cells.into_iter().enumerate() {
        let tname = transport_name(transport);
        let kname = k.map_or("adaptive".to_string(), |k| format!("k{k}"));
        let name = format!("{kname}-{pname}-{}-{tname}-{}-n{n}", link.name, codec::encoding_name(enc));
        bar.set_message(name.clone());
        let mut subset = data.clone();
        subset.truncate(n);
        let built = link.build(cfg.seed.wrapping_add(i as u64))?;
        let adaptive_cell = if k.is_none() { adaptive } else { None };
        let split = k.or(adaptive_cell.map(|a| a.0)).expect("a fixed split or adaptive");
        let cell = Cell {
            bundle: &bundle,
            split,
            adaptive: adaptive_cell.map(|a| a.1),
            policy,
            link: &built,
            transport,
            encoding: enc,
            compression,
            deadline,
        };
        let (answers, timeline, switches) =
            run_cell(cell, cfg.concurrency, interval, &subset).await.with_context(|| format!("cell {name}"))?;
        if k.is_none() {
            write_timeline(&args.out, &name, &timeline)?;
        }
        write_records(&args.out, &name, &answers)?;
        let id = CellId { name: &name, split, policy: &pname, link: &link.name, transport: tname, encoding: enc };
        let mut r = cell_result(id, &answers, &built, bundle.num_exits());
        if k.is_none() {
            r.mode = "adaptive".into();
            r.switches = switches;
        }
        csv.serialize(CsvRow::from(&r))?;
        csv.flush()?;
        for (exit, &share) in r.exit_shares.iter().enumerate() {
            exit_csv.serialize(ExitShareRow { cell: &r.cell, exit, share })?;
        }
        exit_csv.flush()?;
        latencies.push((name, answers.iter().map(|a| a.latency_us as f64 / 1000.0).collect()));
        results.push(r);
        bar.inc(1);
    }
    bar.finish_and_clear();
    std::fs::write(args.out.join("cells.json"), serde_json::to_string_pretty(&results)?)?;
    plots(&args.out, &results, &latencies)?;
    Ok(results)
}

/// The experiment's settings beyond its grid, parsed and checked.
struct Settings {
    /// Paced arrivals one at a time, this far apart.
    interval: Option<Duration>,
    transports: Vec<TransportKind>,
    encodings: Vec<offramp_proto::Encoding>,
    deadline: Duration,
    compression: offramp_proto::Compression,
    /// Adaptive cells: the deepest split and the planner's objective.
    adaptive: Option<(usize, Objective)>,
}

fn settings(cfg: &ExperimentConfig, n_blocks: usize) -> Result<Settings> {
    if cfg.links.is_empty() {
        bail!("the experiment needs at least one [[link]]");
    }
    if cfg.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    let interval = match &cfg.interval {
        Some(i) => Some(units::parse_duration(i).map_err(|e| anyhow::anyhow!("interval: {e}"))?),
        None => None,
    };
    if interval.is_some_and(|i| i.is_zero()) || (interval.is_some() && cfg.concurrency > 1) {
        bail!("interval must be positive, and paced arrivals run one at a time (concurrency = 1)");
    }
    let transports = cfg.transports.iter().map(|t| parse_transport(t)).collect::<Result<Vec<_>>>()?;
    let encodings =
        cfg.encodings.iter().map(|e| codec::parse_encoding(e).map_err(anyhow::Error::msg)).collect::<Result<_>>()?;
    let deadline = units::parse_duration(&cfg.deadline).map_err(anyhow::Error::msg)?;
    let compression = match &cfg.compression {
        Some(c) => codec::parse_compression(c).map_err(anyhow::Error::msg)?,
        None => offramp_proto::Compression::None,
    };
    let adaptive = match &cfg.adaptive {
        Some(a) => {
            if a.max_split == 0 || a.max_split > n_blocks {
                bail!("adaptive max_split must be in 1..={n_blocks} (the deepest split the edge holds)");
            }
            let objective = match &a.latency_slo {
                Some(s) => Objective::Slo(units::parse_duration(s).map_err(anyhow::Error::msg)?),
                None => Objective::MinLatency,
            };
            Some((a.max_split, objective))
        }
        None => None,
    };
    Ok(Settings { interval, transports, encodings, deadline, compression, adaptive })
}

/// One JSON record per answer of cell `name`, in `out/records/`.
fn write_records(out: &Path, name: &str, answers: &[Answer]) -> Result<()> {
    let mut rec = std::io::BufWriter::new(std::fs::File::create(out.join("records").join(format!("{name}.jsonl")))?);
    for a in answers {
        serde_json::to_writer(&mut rec, a)?;
        rec.write_all(b"\n")?;
    }
    rec.flush()?;
    Ok(())
}

/// One cell of the grid.
struct Cell<'a> {
    bundle: &'a Bundle,
    /// The split, or with `adaptive` the deepest the edge holds.
    split: usize,
    adaptive: Option<Objective>,
    policy: Policy,
    link: &'a LinkConfig,
    transport: TransportKind,
    encoding: offramp_proto::Encoding,
    compression: offramp_proto::Compression,
    deadline: Duration,
}

fn parse_transport(t: &str) -> Result<TransportKind> {
    match t {
        "grpc" => Ok(TransportKind::Grpc),
        "grpc-stream" => Ok(TransportKind::GrpcStream),
        "quic" => Ok(TransportKind::Quic),
        other => bail!("unknown transport {other:?} (expected grpc, grpc-stream or quic)"),
    }
}

fn transport_name(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Grpc => "grpc",
        TransportKind::GrpcStream => "grpc-stream",
        TransportKind::Quic => "quic",
    }
}

/// A real cloud, link and edge for one cell (both sides hold the whole
/// model, so K = 0 and K = N run like any other split; an adaptive edge
/// holds blocks `0..split`). The answers, an adaptive cell's planner
/// timeline (sampled every 250 ms) and its route changes.
async fn run_cell(
    cell: Cell<'_>,
    concurrency: usize,
    interval: Option<Duration>,
    data: &Dataset,
) -> Result<(Vec<Answer>, Vec<TimelineRow>, u64)> {
    let quic = cell.transport == TransportKind::Quic;
    let cloud = cloud_config(cell.bundle.clone(), Some(&cell.policy));
    let topology = Topology::start(cloud, quic, Some(cell.link)).await?;
    let edge_bundle = match cell.adaptive {
        Some(_) => cell.bundle.split(cell.split)?.0,
        None => cell.bundle.clone(),
    };
    let mut cfg = topology.edge_config(edge_bundle, cell.split, cell.transport)?;
    cfg.policy = Some(cell.policy);
    cfg.encoding = cell.encoding;
    cfg.compression = cell.compression;
    cfg.deadline = cell.deadline;
    cfg.adaptive_split = cell.adaptive.map(PlanConfig::new);
    let edge = topology.edge(cfg).await?;
    let link = if quic { topology.quic_link.as_ref() } else { topology.grpc_link.as_ref() };
    let (epoch, up) = match link {
        Some(l) => (l.epoch(), Some(l.config().0.rate.clone())),
        None => (std::time::Instant::now(), None),
    };
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = cell.adaptive.map(|_| {
        let edge = edge.clone();
        tokio::spawn(async move {
            let mut rows = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let t = epoch.elapsed().as_secs_f64();
                let route = edge.route();
                let (rtt, goodput) = match edge.planner() {
                    Some(p) => {
                        let p = p.lock().expect("planner lock");
                        (p.rtt_us(), p.goodput_bps())
                    }
                    None => (None, None),
                };
                rows.push(TimelineRow {
                    t_s: t,
                    split: route.split,
                    encoding: codec::encoding_name(route.encoding),
                    rtt_ms: rtt.map(|r| r / 1e3),
                    estimated_mbit: goodput.filter(|g| g.is_finite()).map(|g| g * 8.0 / 1e6),
                    link_up_mbit: up
                        .as_ref()
                        .and_then(|r| r.capacity_bytes((t - 0.5).max(0.0), t.max(0.5)))
                        .map(|b| b * 8.0 / 0.5 / 1e6),
                });
            }
            rows
        })
    });
    let answers = match interval {
        None => run_dataset(edge.clone(), data, concurrency, |_| {}).await,
        Some(interval) => {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut answers = Vec::with_capacity(data.len());
            for i in 0..data.len() {
                tick.tick().await;
                let mut a = edge.classify(Some((data.offset + i) as u64), data.image(i).to_vec()).await;
                a.label = Some(data.labels[i] as u32);
                answers.push(a);
            }
            answers
        }
    };
    let _ = stop.send(());
    let timeline = match sampler {
        Some(s) => s.await.context("timeline sampler")?,
        None => vec![],
    };
    let switches = edge.planner().map_or(0, |p| p.lock().expect("planner lock").switches);
    drop(edge);
    topology.stop().await?;
    Ok((answers, timeline, switches))
}

/// An adaptive cell's timeline: CSV and a plot of the chosen K and the
/// estimated against the trace's bandwidth over time.
fn write_timeline(out: &Path, name: &str, rows: &[TimelineRow]) -> Result<()> {
    let mut w = csv::Writer::from_path(out.join(format!("timeline-{name}.csv")))?;
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    let series = |f: &dyn Fn(&TimelineRow) -> Option<f64>| {
        rows.iter().filter_map(|r| f(r).map(|v| (r.t_s, v))).collect::<Vec<_>>()
    };
    Plot::new(format!("{name}: bandwidth and chosen split over time"), "seconds since the link started", "Mbit/s, K")
        .series(Series::line("link uplink (trace, Mbit/s)", series(&|r| r.link_up_mbit)))
        .series(Series::line("planner's estimate (Mbit/s)", series(&|r| r.estimated_mbit)))
        .series(Series::line_points("chosen K", series(&|r| Some(r.split as f64))))
        .series(Series::points("int8 route (K)", series(&|r| (r.encoding == "int8").then_some(r.split as f64))))
        .y_log(false)
        .save(out.join(format!("timeline-{name}.svg")))?;
    Ok(())
}

/// The experiment's policies by name, each also written to `policy_dir` so
/// a cell can be rerun by hand.
fn policies(cfg: &ExperimentConfig, bundle: &Bundle, policy_dir: &Path) -> Result<Vec<(String, Policy)>> {
    std::fs::create_dir_all(policy_dir)?;
    let mut policies = Vec::new();
    let specs = if cfg.policies.is_empty() {
        vec![PolicySpec {
            name: "bundle".into(),
            file: bundle.policy_path(),
            rule: None,
            threshold: None,
            patience: None,
        }]
    } else {
        cfg.policies.clone()
    };
    for p in &specs {
        let policy = match (&p.file, &p.rule) {
            (Some(f), None) => Policy::load(&paths::find(f)?, bundle.num_exits())?,
            (None, Some(rule)) => {
                let r = Rule::named(rule, p.threshold.unwrap_or(0.0), p.patience.unwrap_or(0), 0)
                    .with_context(|| format!("policy {:?}", p.name))?;
                Policy::from_rules(vec![r; bundle.num_exits()]).with_context(|| format!("policy {:?}", p.name))?
            }
            (None, None) if p.name == "bundle" => Policy::never(bundle.num_exits()),
            _ => bail!("policy {:?}: give either `file` or `rule` (+ `threshold` or `patience`)", p.name),
        };
        // Written beside the results, so a cell can be rerun by hand.
        std::fs::write(policy_dir.join(format!("{}.toml", p.name)), policy.to_toml())?;
        policies.push((p.name.clone(), policy));
    }
    Ok(policies)
}

#[allow(clippy::too_many_arguments)]
/// What names a cell: its settings.
struct CellId<'a> {
    name: &'a str,
    split: usize,
    policy: &'a str,
    link: &'a str,
    transport: &'a str,
    encoding: offramp_proto::Encoding,
}

fn cell_result(id: CellId<'_>, answers: &[Answer], built: &LinkConfig, num_exits: usize) -> CellResult {
    let CellId { name, split: k, policy, link, transport, encoding: enc } = id;
    let n = answers.len().max(1) as f64;
    let share = |t: Tier| answers.iter().filter(|a| a.tier == t).count() as f64 / n;
    let mut exits = vec![0.0; num_exits];
    for a in answers {
        if let Some(e) = a.exit {
            exits[e as usize] += 1.0 / n;
        }
    }
    let lat: Vec<f64> = answers.iter().map(|a| a.latency_us as f64 / 1000.0).collect();
    let s = Summary::of(&lat);
    // The physical bound of an offload: RTT, serialization at the mean rates, cloud compute.
    let (rtt_us, up_bps, down_bps) =
        (built.rtt().as_secs_f64() * 1e6, built.up.rate.mean_bps(), built.down.rate.mean_bps());
    let bound: Vec<f64> = answers
        .iter()
        .map(|a| {
            let mut us = a.edge_us as f64;
            if a.tier == Tier::Cloud {
                us += rtt_us + a.cloud_compute_us as f64;
                if let Some(bps) = up_bps {
                    us += a.bytes_up as f64 * 8.0 / bps * 1e6;
                }
                if let Some(bps) = down_bps {
                    us += a.bytes_down as f64 * 8.0 / bps * 1e6;
                }
            }
            us / 1000.0
        })
        .collect();
    let bound_mean = Summary::of(&bound).mean;
    let correct = answers.iter().filter(|a| a.label.is_some() && a.prediction == a.label).count();
    CellResult {
        cell: name.to_string(),
        mode: "fixed".into(),
        split: k,
        policy: policy.to_string(),
        link: link.to_string(),
        transport: transport.to_string(),
        encoding: codec::encoding_name(enc).to_string(),
        n: answers.len(),
        accuracy: correct as f64 / n,
        share_edge: share(Tier::Edge),
        share_cloud: share(Tier::Cloud),
        share_fallback: share(Tier::Fallback),
        exit_shares: exits,
        p50_ms: s.p50,
        p90_ms: s.p90,
        p99_ms: s.p99,
        mean_ms: s.mean,
        bytes_up_per_req: answers.iter().map(|a| a.bytes_up as f64).sum::<f64>() / n,
        bytes_down_per_req: answers.iter().map(|a| a.bytes_down as f64).sum::<f64>() / n,
        fallbacks: answers.iter().filter(|a| a.tier == Tier::Fallback).count(),
        bound_mean_ms: bound_mean,
        measured_over_bound: if bound_mean > 0.0 { s.mean / bound_mean } else { 0.0 },
        switches: 0,
    }
}

/// A row of results.csv: [`CellResult`] without the per-exit shares, which
/// go to exit_shares.csv in long form ([`ExitShareRow`]), one row per cell
/// and exit, so the columns do not depend on the model.
#[derive(Debug, Serialize)]
struct CsvRow<'a> {
    cell: &'a str,
    mode: &'a str,
    split: usize,
    policy: &'a str,
    link: &'a str,
    transport: &'a str,
    encoding: &'a str,
    n: usize,
    accuracy: f64,
    share_edge: f64,
    share_cloud: f64,
    share_fallback: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    bytes_up_per_req: f64,
    bytes_down_per_req: f64,
    fallbacks: usize,
    bound_mean_ms: f64,
    measured_over_bound: f64,
    switches: u64,
}

/// A row of exit_shares.csv.
#[derive(Debug, Serialize)]
struct ExitShareRow<'a> {
    cell: &'a str,
    exit: usize,
    share: f64,
}

impl<'a> From<&'a CellResult> for CsvRow<'a> {
    fn from(r: &'a CellResult) -> Self {
        Self {
            cell: &r.cell,
            mode: &r.mode,
            split: r.split,
            policy: &r.policy,
            link: &r.link,
            transport: &r.transport,
            encoding: &r.encoding,
            n: r.n,
            accuracy: r.accuracy,
            share_edge: r.share_edge,
            share_cloud: r.share_cloud,
            share_fallback: r.share_fallback,
            p50_ms: r.p50_ms,
            p90_ms: r.p90_ms,
            p99_ms: r.p99_ms,
            mean_ms: r.mean_ms,
            bytes_up_per_req: r.bytes_up_per_req,
            bytes_down_per_req: r.bytes_down_per_req,
            fallbacks: r.fallbacks,
            bound_mean_ms: r.bound_mean_ms,
            measured_over_bound: r.measured_over_bound,
            switches: r.switches,
        }
    }
}

/// Records what produced the results: the commit of the checkout the
/// experiment runs in (if any), the model's fingerprints, the config as given.
fn write_provenance(out: &Path, config_path: &Path, config: &str, bundle: &Bundle, splits: &[usize]) -> Result<()> {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    use offramp_common::model::SplitSide;
    let fingerprints: BTreeMap<String, serde_json::Value> = splits
        .iter()
        .map(|&k| {
            (
                k.to_string(),
                serde_json::json!({
                    "edge": bundle.fingerprint(SplitSide::Edge, k),
                    "cloud": bundle.fingerprint(SplitSide::Cloud, k),
                }),
            )
        })
        .collect();
    let p = serde_json::json!({
        "offramp_version": env!("CARGO_PKG_VERSION"),
        "commit": commit,
        "uncommitted_changes": dirty,
        "model_id": bundle.model_id(),
        "fingerprints": fingerprints,
        "config_file": config_path.display().to_string(),
        "config": config,
    });
    std::fs::write(out.join("provenance.json"), serde_json::to_string_pretty(&p)?)?;
    Ok(())
}

/// One line per cell, after where they were written.
pub fn render(results: &[CellResult], out: &Path) -> String {
    let mut s = format!("{} cells written to {}\n", results.len(), out.display());
    for r in results {
        s.push_str(&format!(
            "{:<48} acc {:>6.2}%  edge {:>5.1}%  p50 {:>8.2} ms  p99 {:>8.2} ms  up {:>6.0} B  measured/bound {:.2}\n",
            r.cell,
            r.accuracy * 100.0,
            r.share_edge * 100.0,
            r.p50_ms,
            r.p99_ms,
            r.bytes_up_per_req,
            r.measured_over_bound
        ));
    }
    s
}

/// Indices of the Pareto-optimal cells: no other cell is at least as accurate
/// and at least as fast, and strictly better in one.
pub fn pareto(points: &[(f64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let (li, ai) = points[i];
            !points.iter().any(|&(l, a)| l <= li && a >= ai && (l < li || a > ai))
        })
        .collect()
}

fn plots(out: &Path, results: &[CellResult], latencies: &[(String, Vec<f64>)]) -> Result<()> {
    // Latency CDF per cell.
    let mut cdf = Plot::new("Latency CDF per cell", "latency (ms)", "fraction of requests").x_log(true);
    for (name, lat) in latencies {
        let mut v = lat.clone();
        v.sort_by(f64::total_cmp);
        let m = v.len().max(1) as f64;
        cdf = cdf
            .series(Series::line(name.clone(), v.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 / m)).collect()));
    }
    cdf.save(out.join("latency_cdf.svg"))?;
    // Accuracy vs mean latency with the Pareto front.
    let pts: Vec<(f64, f64)> = results.iter().map(|r| (r.mean_ms, r.accuracy * 100.0)).collect();
    let front = pareto(&pts);
    let mut front_pts: Vec<(f64, f64)> = front.iter().map(|&i| pts[i]).collect();
    front_pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut acc = Plot::new("Accuracy vs mean latency", "mean latency (ms)", "accuracy (%)")
        .series(Series::points("cells", pts.clone()))
        .series(Series::line("Pareto front", front_pts))
        .marks_name("Pareto-optimal");
    for &i in &front {
        acc = acc.mark(results[i].cell.clone(), pts[i].0, pts[i].1);
    }
    acc.save(out.join("accuracy_vs_latency.svg"))?;
    // Tier and exit shares per cell (x = cell index).
    let idx =
        |f: &dyn Fn(&CellResult) -> f64| results.iter().enumerate().map(|(i, r)| (i as f64, f(r))).collect::<Vec<_>>();
    let mut shares = Plot::new("Tier and exit shares per cell (see results.csv for the cell index)", "cell", "share")
        .series(Series::line_points("edge", idx(&|r| r.share_edge)))
        .series(Series::line_points("cloud", idx(&|r| r.share_cloud)))
        .series(Series::line_points("fallback", idx(&|r| r.share_fallback)));
    let exits = results.first().map_or(0, |r| r.exit_shares.len());
    for e in 0..exits {
        shares = shares.series(Series::line_points(format!("exit {e}"), idx(&|r| r.exit_shares[e])));
    }
    shares.save(out.join("shares.svg"))?;
    Plot::new("Bytes per request per cell", "cell", "bytes")
        .series(Series::line_points("up", idx(&|r| r.bytes_up_per_req)))
        .series(Series::line_points("down", idx(&|r| r.bytes_down_per_req)))
        .save(out.join("bytes.svg"))?;
    let mut index = String::from("index,cell\n");
    for (i, r) in results.iter().enumerate() {
        index.push_str(&format!("{i},{}\n", r.cell));
    }
    std::fs::write(out.join("cell_index.csv"), index)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_front() {
        let pts = [(10.0, 90.0), (20.0, 95.0), (15.0, 89.0), (30.0, 95.0), (5.0, 80.0)];
        assert_eq!(pareto(&pts), vec![0, 1, 4]);
    }
}
