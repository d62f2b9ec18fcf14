//! `offramp bench transport`: gRPC against QUIC through the link emulator.
//!
//! Starts an in-process cloud serving gRPC and QUIC (a self-signed
//! certificate made at start), puts an emulated link in front of each (TCP
//! mode for gRPC, UDP mode for QUIC; the same delay, rate and loss, both
//! directions), and sends the same offload requests (real hidden states of
//! the sample digits at split K) one at a time over each transport,
//! alternating, for every loss rate. Reported per transport and loss: offload
//! latency percentiles (request sent → answer decoded; the cloud's compute is
//! included, well under a millisecond here), failures, and the bytes that
//! crossed the link per request in each direction (protocol and TLS overhead
//! included, keep-alives in between too). Then the protobuf request size per
//! encoding, with and without LZ4.
//!
//! What "loss" means differs by mode (see [`crate::link`]): in UDP mode each
//! datagram is dropped with that probability and QUIC recovers it itself; in
//! TCP mode no byte is dropped (that would corrupt the stream): each
//! 1500-byte packet is instead delivered one RTT late with that probability,
//! and everything behind it waits (an idealised fast retransmit with
//! head-of-line blocking, no congestion-window cut, no RTO).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use offramp_cloud::CloudConfig;
use offramp_common::model::SplitSide;
use offramp_common::stats::Summary;
use offramp_common::{codec, units, Bundle};
use offramp_edge::transport::{ConnectConfig, Transport, TransportKind};
use offramp_link::{DirectionConfig, LinkConfig, LinkStats};
use offramp_proto as pb;
use prost::Message;
use serde::Serialize;

use crate::harness::Topology;
use crate::inputs::hidden_states;

#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    /// Sequential requests per transport and loss rate (one in flight).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Loss rates to measure (per packet, each direction).
    #[arg(long, value_delimiter = ',', default_value = "0,0.01,0.05")]
    pub loss: Vec<f64>,
    /// One-way delay of the link (the RTT is twice this).
    #[arg(long, default_value = "25ms", value_parser = units::parse_duration)]
    pub delay: Duration,
    /// Link rate in Mbit/s each way (default: unlimited).
    #[arg(long)]
    pub rate_mbps: Option<f64>,
    /// Encoding of the timed requests.
    #[arg(long, default_value = "f32", value_parser = codec::parse_encoding)]
    pub encoding: pb::Encoding,
    /// Compression of the timed requests.
    #[arg(long, default_value = "none", value_parser = codec::parse_compression)]
    pub compression: pb::Compression,
    /// Deadline of each request (a miss counts as a failure).
    #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
    pub deadline: Duration,
    /// Seed of the links' loss draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TransportRow {
    pub transport: &'static str,
    pub loss: f64,
    /// Offload latency in milliseconds.
    pub latency_ms: Summary,
    pub failures: usize,
    /// Bytes into the link per request, edge → cloud and back.
    pub wire_up_bytes: f64,
    pub wire_down_bytes: f64,
    /// Packets the link dropped (UDP) or delayed by an RTT (TCP), both directions.
    pub lost_or_delayed_packets: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EncodingBytes {
    pub encoding: &'static str,
    pub compression: &'static str,
    /// Mean protobuf `InferRequest` size.
    pub request_bytes: f64,
    pub ratio_to_f32: f64,
}

/// One request per hidden state, encoded and compressed as asked.
fn requests(
    bundle: &Bundle,
    k: usize,
    hidden: &[(Vec<f32>, Vec<usize>)],
    enc: pb::Encoding,
    comp: pb::Compression,
) -> Result<Vec<pb::InferRequest>> {
    let fingerprint = bundle.fingerprint(SplitSide::Cloud, k).unwrap_or_default();
    Ok(hidden
        .iter()
        .enumerate()
        .map(|(i, (h, shape))| {
            let mut t = codec::encode(h, shape, enc);
            codec::compress(&mut t, comp);
            pb::InferRequest {
                request_id: i as u64,
                model_id: bundle.model_id().to_string(),
                model_fingerprint: fingerprint.clone(),
                split: k as u32,
                hidden: Some(t),
                history: None,
                want_probabilities: false,
                edge_id: "bench".into(),
                policy: vec![],
                timeout_us: 0,
                cancel: false,
            }
        })
        .collect())
}

fn lost(s: &LinkStats) -> u64 {
    s.up.dropped_loss + s.down.dropped_loss + s.up.retransmitted + s.down.retransmitted
}

pub async fn run(args: &TransportArgs) -> Result<TransportReport> {
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    let (_, bundle, data) = args.inputs.load(args.requests)?;
    let k = args.inputs.split_for(&bundle);
    let hidden = hidden_states(&bundle, k, &data)?;
    let timed = requests(&bundle, k, &hidden, args.encoding, args.compression)?;

    let mut by_encoding = Vec::new();
    for enc in codec::ENCODINGS {
        for comp in [pb::Compression::None, pb::Compression::Lz4] {
            let r = requests(&bundle, k, &hidden, enc, comp)?;
            let mean = r.iter().map(|r| r.encoded_len() as f64).sum::<f64>() / r.len() as f64;
            by_encoding.push((enc, comp, mean));
        }
    }
    let f32_bytes = by_encoding[0].2;
    let by_encoding: Vec<EncodingBytes> = by_encoding
        .into_iter()
        .map(|(e, c, b)| EncodingBytes {
            encoding: codec::encoding_name(e),
            compression: codec::compression_name(c),
            request_bytes: b,
            ratio_to_f32: b / f32_bytes,
        })
        .collect();

    let connect = ConnectConfig { connect_timeout: Duration::from_secs(5), ..Default::default() };
    let mut rows = Vec::new();
    for &loss in &args.loss {
        let mut dir_cfg = DirectionConfig::default().with_delay(args.delay).with_loss(loss);
        if let Some(r) = args.rate_mbps {
            dir_cfg = dir_cfg.with_rate_bps(r * 1e6);
        }
        let link = LinkConfig::symmetric(dir_cfg).with_seed(args.seed);
        let topology = Topology::start(CloudConfig::new(bundle.clone()), true, Some(&link)).await?;
        let creds = topology.credentials();
        let transports = [
            ("grpc", Transport::grpc(&topology.url(TransportKind::Grpc)?, &connect, creds)?),
            ("quic", Transport::quic(&topology.url(TransportKind::Quic)?, &connect, creds)?),
        ];
        let links =
            [topology.grpc_link.as_ref().context("TCP link")?, topology.quic_link.as_ref().context("UDP link")?];
        // Connect and warm up (not timed).
        for (name, t) in &transports {
            t.model_info(Duration::from_secs(10)).await.map_err(|s| anyhow::anyhow!("{name} handshake: {s}"))?;
            for r in timed.iter().take(5) {
                t.infer(r.clone(), args.deadline).await.map_err(|s| anyhow::anyhow!("{name} warm-up: {s}"))?;
            }
        }
        let before = [links[0].stats(), links[1].stats()];
        let mut lat = [Vec::new(), Vec::new()];
        let mut failures = [0usize; 2];
        for r in &timed {
            for (i, (_, t)) in transports.iter().enumerate() {
                let started = Instant::now();
                match t.infer(r.clone(), args.deadline).await {
                    Ok(_) => lat[i].push(started.elapsed().as_secs_f64() * 1e3),
                    Err(_) => failures[i] += 1,
                }
            }
        }
        let after = [links[0].stats(), links[1].stats()];
        for i in 0..2 {
            let n = timed.len() as f64;
            let (b, a) = (&before[i], &after[i]);
            rows.push(TransportRow {
                transport: transports[i].0,
                loss,
                latency_ms: Summary::of(&lat[i]),
                failures: failures[i],
                wire_up_bytes: (a.up.bytes_in - b.up.bytes_in) as f64 / n,
                wire_down_bytes: (a.down.bytes_in - b.down.bytes_in) as f64 / n,
                lost_or_delayed_packets: lost(a) - lost(b),
            });
        }
        drop(transports);
        topology.stop().await?;
    }

    Ok(TransportReport {
        model: bundle.model_id().to_string(),
        split: k,
        hidden_shape: bundle.shape_at(k)?.to_vec(),
        requests: timed.len(),
        delay_ms_each_way: args.delay.as_secs_f64() * 1e3,
        rate_mbps: args.rate_mbps,
        encoding: codec::encoding_name(args.encoding),
        compression: codec::compression_name(args.compression),
        rows,
        request_bytes_by_encoding: by_encoding,
    })
}

/// What `bench transport` measured.
#[derive(Debug, Clone, Serialize)]
pub struct TransportReport {
    pub model: String,
    pub split: usize,
    pub hidden_shape: Vec<usize>,
    pub requests: usize,
    pub delay_ms_each_way: f64,
    pub rate_mbps: Option<f64>,
    pub encoding: &'static str,
    pub compression: &'static str,
    pub rows: Vec<TransportRow>,
    pub request_bytes_by_encoding: Vec<EncodingBytes>,
}

impl TransportReport {
    pub fn render(&self) -> String {
        render(self)
    }
}

fn render(r: &TransportReport) -> String {
    use std::fmt::Write as _;
    let (rows, by_encoding) = (&r.rows, &r.request_bytes_by_encoding);
    let delay = Duration::from_secs_f64(r.delay_ms_each_way / 1e3);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "gRPC (TCP link) vs QUIC (UDP link): model {}, K = {}, {} sequential {} requests per row, {:?} each way \
         (RTT {:?}), rate {}",
        r.model,
        r.split,
        rows.first().map_or(0, |r| r.latency_ms.n + r.failures),
        r.encoding,
        delay,
        delay * 2,
        r.rate_mbps.map_or("unlimited".to_string(), |r| format!("{r} Mbit/s"))
    );
    let _ = writeln!(
        s,
        "\n{:<6} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>10} {:>10} {:>8}",
        "", "loss", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms", "fail", "B up/req", "B down/req", "lost pk"
    );
    for r in rows {
        let l = &r.latency_ms;
        let _ = writeln!(
            s,
            "{:<6} {:>5.1}% {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>10.0} {:>10.0} {:>8}",
            r.transport,
            r.loss * 100.0,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            l.mean,
            r.failures,
            r.wire_up_bytes,
            r.wire_down_bytes,
            r.lost_or_delayed_packets
        );
    }
    let _ = writeln!(
        s,
        "\nloss: QUIC (UDP link) loses that share of datagrams each way and recovers them itself; the TCP link \
         drops nothing but delivers that share of 1500-byte packets one RTT late (idealised fast retransmit, \
         head-of-line blocking). lost pk: datagrams dropped (UDP) or packets delayed (TCP). B up/down: bytes \
         into the link per request, framing, TLS and keep-alives included."
    );
    let _ = writeln!(s, "\nprotobuf InferRequest bytes per offloaded request, K = {}:", r.split);
    for e in by_encoding {
        let _ = writeln!(
            s,
            "  {:<5} {:<5} {:>8.1} B  {:.3}× f32",
            e.encoding, e.compression, e.request_bytes, e.ratio_to_f32
        );
    }
    s
}
