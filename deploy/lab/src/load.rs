//! `offramp load`: simulated edges sending real hidden states to a cloud with
//! open-loop (Poisson) arrivals, over unary gRPC, the offload stream or QUIC.
//! Reports goodput, latency percentiles of the answered requests and counts
//! per gRPC status; with `--cloud-pid`, the cloud process's CPU and memory
//! over the run. `--sweep 0.5,1,2,4,10` offers multiples of the cloud's
//! capacity (`--capacity`, or measured first) and writes the overload curve:
//! a CSV row per point and a plot of goodput against offered load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use offramp_common::model::SplitSide;
use offramp_common::rng::SplitMix64;
use offramp_common::stats::Summary;
use offramp_common::{codec, units};
use offramp_edge::throttle::K;
use offramp_edge::transport::{ConnectConfig, Credentials, Transport, TransportKind};
use offramp_proto as pb;
use offramp_transport::tls::ClientTls;
use offramp_transport::token::Secret;
use serde::Serialize;

use offramp_plot::{Plot, Series};

use crate::inputs::hidden_states;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Cloud URL.
    #[arg(long, env = "OFFRAMP_CLOUD")]
    pub cloud: String,
    /// Simulated edges (one connection each).
    #[arg(long, default_value_t = 8)]
    pub edges: usize,
    /// Total offered load, requests per second (Poisson arrivals).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to offer load.
    #[arg(long, default_value = "10s", value_parser = units::parse_duration)]
    pub duration: Duration,
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    #[arg(long, default_value = "f32", value_parser = codec::parse_encoding)]
    pub encoding: pb::Encoding,
    /// Per-request deadline.
    #[arg(long, default_value = "2s", value_parser = units::parse_duration)]
    pub deadline: Duration,
    /// Bearer token file for the cloud.
    #[arg(long, env = "OFFRAMP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: offramp_transport::tls::ClientTlsArgs,
    /// Transport: grpc (a unary call per request), grpc-stream (one
    /// persistent stream per edge) or quic (a quic:// URL; needs --ca).
    #[arg(long, value_enum, default_value = "grpc")]
    pub transport: TransportKind,
    /// The cloud's pid: sample its resident memory once a second and measure
    /// its CPU time over the window (all threads, from /proc).
    #[arg(long)]
    pub cloud_pid: Option<u32>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Turn off the simulated edges' client-side adaptive throttling (on in
    /// every edge: a cloud that refuses much of what an edge sends gets
    /// less of it), so that the cloud faces the whole offered load itself.
    #[arg(long)]
    pub no_client_throttle: bool,
    /// Offer these multiples of the cloud's capacity in turn, each for
    /// --duration (e.g. 0.5,1,2,4,10), and write the overload curve to --out.
    #[arg(long, value_delimiter = ',')]
    pub sweep: Vec<f64>,
    /// The capacity (completed requests/s) the --sweep multiples are of;
    /// without it, measured first: --rate, then 1.5x more each step for
    /// --probe-duration while at least 90% of what is offered completes,
    /// the most completed per second seen.
    #[arg(long)]
    pub capacity: Option<f64>,
    /// How long each capacity probe offers load.
    #[arg(long, default_value = "3s", value_parser = units::parse_duration)]
    pub probe_duration: Duration,
    /// Where --sweep writes overload.csv and overload.svg (created).
    #[arg(long, default_value = "load-sweep")]
    pub out: PathBuf,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub transport: TransportKind,
    pub offered_rate: f64,
    pub edges: usize,
    pub duration_s: f64,
    pub sent: u64,
    /// Requests per second actually sent (below `offered_rate` when the
    /// load generator itself could not keep up).
    pub sent_rate: f64,
    pub completed: u64,
    /// Completed (OK) requests per second of the offered-load window: the
    /// goodput.
    pub throughput: f64,
    /// Latency of the answered (OK) requests.
    pub latency_us: Summary,
    pub status_counts: BTreeMap<String, u64>,
    /// The first message seen for each status other than OK.
    pub status_examples: BTreeMap<String, String>,
    /// Cores of CPU the cloud used over the window (`--cloud-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_cpu_cores: Option<f64>,
    pub mean_batch_size: f64,
    /// Resident memory of `--cloud-pid` in KiB, sampled each second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cloud_rss_kib: Vec<u64>,
    /// The cloud's CPU time (all threads) per completed request, µs
    /// (`--cloud-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_cpu_us_per_request: Option<f64>,
    /// The cloud's own compute per completed request, µs: each answer's
    /// batch compute time divided by its batch size, averaged.
    pub cloud_compute_us_per_request: f64,
}

/// CPU time of every thread of `pid`, in ns (the first field of each
/// thread's schedstat).
fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for t in tasks.flatten() {
        let stat = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// What every run against one cloud shares: connected edges and the
/// requests they send.
struct Rig {
    edges: Vec<Transport>,
    model_id: String,
    fingerprint: String,
    split: usize,
    tensors: Vec<pb::Tensor>,
}

async fn rig(args: &LoadArgs) -> Result<Rig> {
    if args.edges == 0 || args.rate.is_nan() || args.rate <= 0.0 {
        bail!("--edges and --rate must be positive");
    }
    let (_, bundle, data) = args.inputs.load(256)?;
    let split = args.inputs.split_for(&bundle);
    let fingerprint = bundle.fingerprint(SplitSide::Cloud, split).context("model must hold every block")?;
    let tensors: Vec<pb::Tensor> =
        hidden_states(&bundle, split, &data)?.iter().map(|(h, shape)| codec::encode(h, shape, args.encoding)).collect();

    let creds = Credentials {
        tls: ClientTls::load(&args.tls)?,
        token: args.token_file.as_deref().map(Secret::from_file).transpose()?,
    };
    let connect =
        ConnectConfig { throttle: if args.no_client_throttle { None } else { Some(K) }, ..Default::default() };
    let edges: Vec<Transport> = (0..args.edges)
        .map(|_| Transport::new(args.transport, &args.cloud, &connect, &creds))
        .collect::<Result<_, _>>()?;
    // Connect every edge before the clock starts.
    for e in &edges {
        e.model_info(Duration::from_secs(5))
            .await
            .map_err(|s| anyhow::anyhow!("handshake with {}: {s}", args.cloud))?;
    }
    Ok(Rig { edges, model_id: bundle.model_id().to_string(), fingerprint, split, tensors })
}

/// One load run: `--rate` for `--duration`.
pub async fn run(args: &LoadArgs) -> Result<LoadReport> {
    if !args.sweep.is_empty() || args.capacity.is_some() {
        bail!("--sweep and --capacity belong to a sweep: run it with `offramp load --sweep ...`");
    }
    let rig = rig(args).await?;
    Ok(offer(&rig, args, args.rate, args.duration, args.seed).await)
}

/// What one load run's answers add up to.
#[derive(Default)]
struct Tally {
    latencies: Vec<f64>,
    status: BTreeMap<String, u64>,
    examples: BTreeMap<String, String>,
    batch_sum: u64,
    /// Σ compute_us / batch_size.
    compute_share_us: f64,
}

impl Tally {
    /// One answer, or a refusal's status code and message, that took `us`.
    fn record(&mut self, r: Result<pb::InferResponse, (String, String)>, us: f64) {
        match r {
            Ok(resp) => {
                self.latencies.push(us);
                self.batch_sum += resp.batch_size as u64;
                self.compute_share_us += resp.compute_us as f64 / resp.batch_size.max(1) as f64;
                *self.status.entry("Ok".into()).or_default() += 1;
            }
            Err((code, message)) => {
                self.examples.entry(code.clone()).or_insert_with(|| message.chars().take(200).collect());
                *self.status.entry(code).or_default() += 1;
            }
        }
    }
}

/// Samples the cloud's RSS once a second into `rss` until it exits.
fn sample_rss(pid: u32, rss: Arc<Mutex<Vec<u64>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            match rss_kib(pid) {
                Some(v) => rss.lock().expect("rss lock").push(v),
                None => break,
            }
        }
    })
}

// Long on purpose: one load run (edges, sending, report) whose parts share
// the clock and the counters.
async fn offer(rig: &Rig, args: &LoadArgs, rate: f64, duration: Duration, seed: u64) -> LoadReport {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let rss = Arc::new(Mutex::new(Vec::new()));
    let sampler = args.cloud_pid.map(|pid| sample_rss(pid, rss.clone()));

    let bar = indicatif::ProgressBar::new(duration.as_secs().max(1));
    if args.json || !args.sweep.is_empty() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut rng = SplitMix64::new(seed);
    let cpu_before = args.cloud_pid.and_then(cpu_ns);
    let start = Instant::now();
    let end = start + duration;
    let mut next = start;
    let mut sent = 0u64;
    let (mut throttled, mut throttled_example) = (0u64, None::<String>);
    let mut tasks = tokio::task::JoinSet::new();
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        // Send every arrival that is due (timer granularity is ~1 ms).
        let now = Instant::now();
        while next <= now && next < end {
            let edge = &rig.edges[(sent as usize) % rig.edges.len()];
            sent += 1;
            // Exponential inter-arrival time for a Poisson process.
            let u = (1.0 - rng.next_f32() as f64).max(1e-12);
            next += Duration::from_secs_f64(-u.ln() / rate);
            // What the edge's throttle refuses costs what it costs a real
            // edge: nothing is built, spawned or sent.
            if let Err(s) = edge.admit() {
                throttled += 1;
                throttled_example.get_or_insert_with(|| s.message().chars().take(200).collect());
                continue;
            }
            let edge = edge.clone();
            let id = sent - 1;
            let req = pb::InferRequest {
                request_id: id,
                model_id: rig.model_id.clone(),
                model_fingerprint: rig.fingerprint.clone(),
                split: rig.split as u32,
                hidden: Some(rig.tensors[(id as usize) % rig.tensors.len()].clone()),
                history: None,
                want_probabilities: false,
                edge_id: format!("load-{}", (id as usize) % args.edges),
                policy: vec![],
                timeout_us: 0,
                cancel: false,
            };
            let (tally, deadline) = (tally.clone(), args.deadline);
            tasks.spawn(async move {
                let t = Instant::now();
                let r = edge.infer_admitted(req, deadline).await;
                let us = t.elapsed().as_secs_f64() * 1e6;
                let r = r.map_err(|s| (format!("{:?}", s.code()), s.message().to_string()));
                tally.lock().expect("tally lock").record(r, us);
            });
        }
        bar.set_position(start.elapsed().as_secs());
        while tasks.try_join_next().is_some() {}
    }
    // Sending may have run late when the load generator was short of CPU.
    let send_window = start.elapsed().as_secs_f64().max(duration.as_secs_f64());
    while tasks.join_next().await.is_some() {}
    let window = start.elapsed().as_secs_f64().max(duration.as_secs_f64());
    let cpu_after = args.cloud_pid.and_then(cpu_ns);
    bar.finish_and_clear();
    if let Some(s) = sampler {
        s.abort();
    }
    let mut g = tally.lock().expect("tally lock");
    if throttled > 0 {
        *g.status.entry(THROTTLED.to_string()).or_default() += throttled;
        if let Some(e) = throttled_example {
            g.examples.insert(THROTTLED.to_string(), e);
        }
    }
    let rss = rss.lock().expect("rss lock").clone();
    let completed = g.latencies.len() as u64;
    let cloud_cpu_ns = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
        _ => None,
    };
    LoadReport {
        transport: args.transport,
        offered_rate: rate,
        edges: args.edges,
        duration_s: duration.as_secs_f64(),
        sent,
        sent_rate: sent as f64 / send_window,
        completed,
        throughput: completed as f64 / window,
        latency_us: Summary::of(&g.latencies),
        status_counts: g.status.clone(),
        status_examples: g.examples.clone(),
        cloud_cpu_cores: cloud_cpu_ns.map(|ns| ns / 1e9 / window),
        mean_batch_size: if completed == 0 { 0.0 } else { g.batch_sum as f64 / completed as f64 },
        cloud_rss_kib: rss,
        cloud_cpu_us_per_request: cloud_cpu_ns.filter(|_| completed > 0).map(|ns| ns / 1e3 / completed as f64),
        cloud_compute_us_per_request: if completed == 0 { 0.0 } else { g.compute_share_us / completed as f64 },
    }
}

/// An overload sweep: the capacity and one run per multiple of it.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    pub transport: TransportKind,
    /// Completed requests/s the multiples are of.
    pub capacity: f64,
    /// Whether `capacity` was measured here (else given with --capacity).
    pub capacity_measured: bool,
    pub points: Vec<(f64, LoadReport)>,
    pub csv: PathBuf,
    pub plot: PathBuf,
}

/// `offramp load --sweep`: the capacity (given or measured), then each
/// multiple of it in turn, written to `--out` as CSV and a plot.
pub async fn sweep(args: &LoadArgs) -> Result<SweepReport> {
    if args.sweep.iter().any(|m| !m.is_finite() || *m <= 0.0) {
        bail!("--sweep takes positive multiples of the capacity (e.g. 0.5,1,2,4,10)");
    }
    if args.capacity.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        bail!("--capacity must be a positive rate (completed requests/s)");
    }
    let rig = rig(args).await?;
    let (capacity, capacity_measured) = match args.capacity {
        Some(c) => (c, false),
        None => (probe_capacity(&rig, args).await?, true),
    };
    let mut points = Vec::new();
    for (i, &m) in args.sweep.iter().enumerate() {
        // A moment for the cloud to drain what the last point left.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = offer(&rig, args, capacity * m, args.duration, args.seed.wrapping_add(i as u64)).await;
        if !args.json {
            eprintln!("{m}x ({:.0}/s): {}", capacity * m, render(&r).lines().collect::<Vec<_>>().join(" | "));
        }
        points.push((m, r));
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let csv = args.out.join("overload.csv");
    std::fs::write(&csv, sweep_csv(capacity, &points)).with_context(|| format!("writing {}", csv.display()))?;
    let plot = args.out.join("overload.svg");
    sweep_plot(args.transport, capacity, &points).save(&plot).with_context(|| format!("writing {}", plot.display()))?;
    Ok(SweepReport { transport: args.transport, capacity, capacity_measured, points, csv, plot })
}

/// The most completed requests/s over rising offered rates (see `--capacity`).
async fn probe_capacity(rig: &Rig, args: &LoadArgs) -> Result<f64> {
    let mut rate = args.rate;
    let mut best: f64 = 0.0;
    for step in 0..12 {
        let r = offer(rig, args, rate, args.probe_duration, args.seed.wrapping_add(1000 + step)).await;
        if !args.json {
            eprintln!("capacity probe: offered {rate:.0}/s, completed {:.0}/s", r.throughput);
        }
        best = best.max(r.throughput);
        if r.throughput < 0.9 * rate {
            break;
        }
        rate *= 1.5;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if best <= 0.0 {
        bail!("the capacity probe completed nothing: is the cloud answering?");
    }
    Ok(best)
}

/// How the report counts a request the edge's throttle refused itself
/// (`ResourceExhausted`, never sent).
pub const THROTTLED: &str = "ResourceExhausted (throttled at the edge)";

/// The statuses a sweep's CSV has columns for (others are summed in `other`).
const STATUS_COLUMNS: [&str; 6] = ["Ok", "ResourceExhausted", THROTTLED, "DeadlineExceeded", "Cancelled", "Unknown"];

fn sweep_csv(capacity: f64, points: &[(f64, LoadReport)]) -> String {
    let mut s = String::from(
        "transport,multiple,offered_per_s,sent_per_s,goodput_per_s,goodput_over_capacity,ok,resource_exhausted,\
         throttled_at_edge,deadline_exceeded,cancelled,unknown,other,p50_ms,p99_ms,cloud_cpu_cores,cloud_rss_mib_first,\
         cloud_rss_mib_max,cloud_rss_mib_last\n",
    );
    for (m, r) in points {
        let count = |k: &str| r.status_counts.get(k).copied().unwrap_or(0);
        let other: u64 =
            r.status_counts.iter().filter(|(k, _)| !STATUS_COLUMNS.contains(&k.as_str())).map(|(_, v)| v).sum();
        let mib = |v: Option<&u64>| v.map_or(String::new(), |k| format!("{:.1}", *k as f64 / 1024.0));
        let counts: Vec<String> = STATUS_COLUMNS.iter().map(|k| count(k).to_string()).collect();
        s.push_str(&format!(
            "{},{m},{:.0},{:.0},{:.0},{:.3},{},{other},{:.3},{:.3},{},{},{},{}\n",
            transport_name(r.transport),
            r.offered_rate,
            r.sent_rate,
            r.throughput,
            r.throughput / capacity,
            counts.join(","),
            r.latency_us.p50 / 1e3,
            r.latency_us.p99 / 1e3,
            r.cloud_cpu_cores.map_or(String::new(), |c| format!("{c:.2}")),
            mib(r.cloud_rss_kib.first()),
            mib(r.cloud_rss_kib.iter().max()),
            mib(r.cloud_rss_kib.last()),
        ));
    }
    s
}

fn transport_name(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Grpc => "grpc",
        TransportKind::GrpcStream => "grpc-stream",
        TransportKind::Quic => "quic",
    }
}

/// Goodput against offered load, both as multiples of the capacity, with
/// the ideal curve (all of it up to capacity, then capacity).
fn sweep_plot(transport: TransportKind, capacity: f64, points: &[(f64, LoadReport)]) -> Plot {
    let max = points.iter().map(|(m, _)| *m).fold(1.0, f64::max);
    Plot::new(
        format!("Goodput under overload ({}, capacity {capacity:.0}/s)", transport_name(transport)),
        "offered load (x capacity)",
        "goodput (x capacity)",
    )
    .series(Series::line("ideal", vec![(0.0, 0.0), (1.0, 1.0), (max, 1.0)]))
    .series(Series::line_points("measured", points.iter().map(|(m, r)| (*m, r.throughput / capacity)).collect()))
    .y_range(0.0, 1.2)
}

pub fn render_sweep(r: &SweepReport) -> String {
    let mut s = format!(
        "{} capacity {:.0}/s ({})\n{:>8} {:>10} {:>10} {:>8} {:>9} {:>9}  statuses\n",
        transport_name(r.transport),
        r.capacity,
        if r.capacity_measured { "measured" } else { "given" },
        "offered",
        "rate/s",
        "goodput/s",
        "ratio",
        "p50 ms",
        "p99 ms"
    );
    for (m, p) in &r.points {
        s.push_str(&format!(
            "{:>7}x {:>10.0} {:>10.0} {:>8.2} {:>9.2} {:>9.2}  {}\n",
            m,
            p.offered_rate,
            p.throughput,
            p.throughput / r.capacity,
            p.latency_us.p50 / 1e3,
            p.latency_us.p99 / 1e3,
            p.status_counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
        ));
    }
    s.push_str(&format!("wrote {} and {}\n", r.csv.display(), r.plot.display()));
    s
}

pub fn render(r: &LoadReport) -> String {
    let mut s = format!(
        "offered {:.0} req/s from {} edges for {:.0} s: sent {}, completed {}\nthroughput {:.1} req/s, mean batch {:.1}\n\
         latency µs: p50 {:.0}  p99 {:.0}  p999 {:.0}  max {:.0}\nstatus: {}\n",
        r.offered_rate,
        r.edges,
        r.duration_s,
        r.sent,
        r.completed,
        r.throughput,
        r.mean_batch_size,
        r.latency_us.p50,
        r.latency_us.p99,
        r.latency_us.p999,
        r.latency_us.max,
        r.status_counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    if let (Some(first), Some(last), Some(max)) =
        (r.cloud_rss_kib.first(), r.cloud_rss_kib.last(), r.cloud_rss_kib.iter().max())
    {
        s.push_str(&format!("cloud RSS KiB: first {first}, last {last}, max {max}\n"));
    }
    for (code, message) in &r.status_examples {
        s.push_str(&format!("  e.g. {code}: {message}\n"));
    }
    if let Some(cores) = r.cloud_cpu_cores {
        s.push_str(&format!("cloud CPU {cores:.2} cores over the window\n"));
    }
    match r.cloud_cpu_us_per_request {
        Some(cpu) => s.push_str(&format!(
            "cloud CPU per request {cpu:.1} µs, its compute per request {:.1} µs: {:.2}× compute\n",
            r.cloud_compute_us_per_request,
            cpu / r.cloud_compute_us_per_request.max(1e-9)
        )),
        None => s.push_str(&format!("cloud compute per request {:.1} µs\n", r.cloud_compute_us_per_request)),
    }
    s
}
