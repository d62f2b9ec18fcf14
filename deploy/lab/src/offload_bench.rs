//! `offramp bench offload`: the offload path on loopback (edge → gRPC →
//! cloud → edge) and its transport overhead = end-to-end latency − edge
//! compute − cloud compute, beside a bare gRPC round trip measured in the
//! same run.
//!
//! Build with `--release`. Numbers from one run on a shared machine are noisy;
//! compare ratios measured in the same run.

use std::time::Instant;

use anyhow::Result;
use offramp_common::policy::Rule;
use offramp_common::stats::Summary;
use offramp_common::Policy;
use offramp_edge::transport::{ConnectConfig, Transport, TransportKind};

use crate::harness::{cloud_config, Topology};

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    /// Requests (sequential, one in flight: latency, not throughput); they
    /// cycle through the sample inputs.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    #[arg(long)]
    pub json: bool,
}

fn line(name: &str, s: &Summary) -> String {
    format!("{name:<28} p50 {:>9.1} µs  p90 {:>9.1}  p99 {:>9.1}  mean {:>9.1}", s.p50, s.p90, s.p99, s.mean)
}

/// What `bench offload` measured (microseconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OffloadReport {
    pub split: usize,
    pub requests: usize,
    /// Distinct sample inputs the requests cycle through.
    pub distinct_inputs: usize,
    pub end_to_end_us: Summary,
    pub edge_us: Summary,
    pub cloud_compute_us: Summary,
    /// End to end − edge compute − cloud compute.
    pub overhead_us: Summary,
    /// The handshake RPC (no tensor, no compute) on a connection of its own.
    pub bare_grpc_round_trip_us: Summary,
}

impl OffloadReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "offload path on loopback, split K = {}, {} sequential requests over {} sample inputs:\n",
            self.split, self.requests, self.distinct_inputs
        );
        for (name, v) in [
            ("end to end", &self.end_to_end_us),
            ("edge compute", &self.edge_us),
            ("cloud compute", &self.cloud_compute_us),
            ("transport overhead", &self.overhead_us),
            ("bare gRPC round trip", &self.bare_grpc_round_trip_us),
        ] {
            s.push_str(&format!("  {}\n", line(name, v)));
        }
        s
    }
}

pub async fn offload(args: &OffloadArgs) -> Result<OffloadReport> {
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    let (_, bundle, data) = args.inputs.load(args.requests)?;
    let k = args.inputs.split_for(&bundle);
    // Every input goes to the cloud: exits before K never fire.
    let never = Policy::uniform(Rule::Never, bundle.num_exits());
    let (edge_b, cloud_b) = bundle.split(k)?;
    let topology = Topology::start(cloud_config(cloud_b, Some(&never)), false, None).await?;
    let mut cfg = topology.edge_config(edge_b, k, TransportKind::Grpc)?;
    cfg.policy = Some(never);
    let edge = topology.edge(cfg).await?;
    let (mut total, mut overhead, mut edge_us, mut cloud_us) = (vec![], vec![], vec![], vec![]);
    // A warm-up pass over the sample, then `requests` measured ones cycling
    // through it.
    let warm_up = data.len();
    for r in 0..warm_up + args.requests {
        let i = r % data.len();
        let a = edge.classify(None, data.image(i).to_vec()).await;
        anyhow::ensure!(a.tier == offramp_edge::Tier::Cloud, "input {i} was not offloaded: {:?}", a.error);
        if r < warm_up {
            continue;
        }
        total.push(a.latency_us as f64);
        edge_us.push(a.edge_us as f64);
        cloud_us.push(a.cloud_compute_us as f64);
        overhead.push(a.latency_us.saturating_sub(a.edge_us + a.cloud_compute_us) as f64);
    }
    // Baseline: a bare gRPC round trip (the handshake RPC: no tensor, no
    // compute thread) on a connection of its own.
    let probe = Transport::grpc(&topology.url(TransportKind::Grpc)?, &ConnectConfig::default(), &Default::default())?;
    let mut rtt = Vec::with_capacity(args.requests);
    for i in 0..args.requests + 100 {
        let t = Instant::now();
        probe.model_info(std::time::Duration::from_secs(5)).await?;
        if i >= 100 {
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(edge);
    topology.stop().await?;
    Ok(OffloadReport {
        split: k,
        requests: args.requests,
        distinct_inputs: data.len(),
        end_to_end_us: Summary::of(&total),
        edge_us: Summary::of(&edge_us),
        cloud_compute_us: Summary::of(&cloud_us),
        overhead_us: Summary::of(&overhead),
        bare_grpc_round_trip_us: Summary::of(&rtt),
    })
}
