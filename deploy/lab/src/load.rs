//! `offramp load`: simulated edges sending real hidden states to a cloud with
//! open-loop (Poisson) arrivals. Reports throughput, latency percentiles and
//! counts per gRPC status; optionally the cloud process's memory over time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use offramp_common::model::SplitSide;
use offramp_common::rng::SplitMix64;
use offramp_common::stats::Summary;
use offramp_common::{codec, units};
use offramp_edge::transport::{ConnectConfig, Credentials, Transport, TransportKind};
use offramp_proto as pb;
use offramp_transport::tls::ClientTls;
use offramp_transport::token::Secret;
use serde::Serialize;

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
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub offered_rate: f64,
    pub edges: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub completed: u64,
    /// Completed (OK) requests per second of the offered-load window.
    pub throughput: f64,
    pub latency_us: Summary,
    pub status_counts: BTreeMap<String, u64>,
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

// Long on purpose: one load run (cloud process, edges, sampler, report)
// whose parts share the clock and the counters.
pub async fn run(args: &LoadArgs) -> Result<LoadReport> {
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
    let edges: Vec<Transport> = (0..args.edges)
        .map(|_| Transport::new(args.transport, &args.cloud, &ConnectConfig::default(), &creds))
        .collect::<Result<_, _>>()?;
    // Connect every edge before the clock starts.
    for e in &edges {
        e.model_info(Duration::from_secs(5))
            .await
            .map_err(|s| anyhow::anyhow!("handshake with {}: {s}", args.cloud))?;
    }

    #[derive(Default)]
    struct Tally {
        latencies: Vec<f64>,
        status: BTreeMap<String, u64>,
        batch_sum: u64,
        /// Σ compute_us / batch_size.
        compute_share_us: f64,
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let rss = Arc::new(Mutex::new(Vec::new()));
    let sampler = args.cloud_pid.map(|pid| {
        let rss = rss.clone();
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
    });

    let bar = indicatif::ProgressBar::new(args.duration.as_secs().max(1));
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut rng = SplitMix64::new(args.seed);
    let cpu_before = args.cloud_pid.and_then(cpu_ns);
    let start = Instant::now();
    let end = start + args.duration;
    let mut next = start;
    let mut sent = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        // Send every arrival that is due (timer granularity is ~1 ms).
        let now = Instant::now();
        while next <= now && next < end {
            let edge = edges[(sent as usize) % edges.len()].clone();
            let req = pb::InferRequest {
                request_id: sent,
                model_id: bundle.model_id().to_string(),
                model_fingerprint: fingerprint.clone(),
                split: split as u32,
                hidden: Some(tensors[(sent as usize) % tensors.len()].clone()),
                history: None,
                want_probabilities: false,
                edge_id: format!("load-{}", (sent as usize) % args.edges),
                policy: vec![],
                timeout_us: 0,
                cancel: false,
            };
            let (tally, deadline) = (tally.clone(), args.deadline);
            tasks.spawn(async move {
                let t = Instant::now();
                let r = edge.infer(req, deadline).await;
                let us = t.elapsed().as_secs_f64() * 1e6;
                let mut g = tally.lock().expect("tally lock");
                match r {
                    Ok(resp) => {
                        g.latencies.push(us);
                        g.batch_sum += resp.batch_size as u64;
                        g.compute_share_us += resp.compute_us as f64 / resp.batch_size.max(1) as f64;
                        *g.status.entry("Ok".into()).or_default() += 1;
                    }
                    Err(s) => *g.status.entry(format!("{:?}", s.code())).or_default() += 1,
                }
            });
            sent += 1;
            // Exponential inter-arrival time for a Poisson process.
            let u = (1.0 - rng.next_f32() as f64).max(1e-12);
            next += Duration::from_secs_f64(-u.ln() / args.rate);
        }
        bar.set_position(start.elapsed().as_secs());
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let cpu_after = args.cloud_pid.and_then(cpu_ns);
    bar.finish_and_clear();
    if let Some(s) = sampler {
        s.abort();
    }
    let window = args.duration.as_secs_f64();
    let g = tally.lock().expect("tally lock");
    let completed = g.latencies.len() as u64;
    let report = LoadReport {
        offered_rate: args.rate,
        edges: args.edges,
        duration_s: window,
        sent,
        completed,
        throughput: completed as f64 / window,
        latency_us: Summary::of(&g.latencies),
        status_counts: g.status.clone(),
        mean_batch_size: if completed == 0 { 0.0 } else { g.batch_sum as f64 / completed as f64 },
        cloud_rss_kib: rss.lock().expect("rss lock").clone(),
        cloud_cpu_us_per_request: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if completed > 0 => Some(b.saturating_sub(a) as f64 / 1e3 / completed as f64),
            _ => None,
        },
        cloud_compute_us_per_request: if completed == 0 { 0.0 } else { g.compute_share_us / completed as f64 },
    };
    Ok(report)
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
