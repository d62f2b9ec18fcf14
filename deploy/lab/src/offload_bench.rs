//! `offramp bench offload`: the offload path on loopback (edge → transport →
//! cloud → edge) over each transport (gRPC unary, the persistent gRPC
//! stream, QUIC), and its transport overhead = end-to-end latency − edge
//! compute − cloud compute, beside two baselines measured in the same run:
//! a bare gRPC round trip (the handshake call, no tensor, no compute) and the
//! floor, a request of the same size and a 64-byte answer over one plain
//! loopback TCP connection (blocking sockets, no framing), plus a memcpy of
//! the payload.
//!
//! Transports run interleaved, a third of the requests at a time, so that a
//! noisy neighbour hits them alike. Build with `--release`; compare the
//! ratios measured in one run.

use std::io::{Read, Write};
use std::num::NonZeroUsize;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::ValueEnum;
use offramp_common::policy::Rule;
use offramp_common::stats::Summary;
use offramp_common::Policy;
use offramp_edge::transport::{ConnectConfig, Transport, TransportKind};

use crate::harness::{cloud_config, Topology};

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    #[command(flatten)]
    pub inputs: crate::inputs::OffloadInputs,
    /// Requests per transport (sequential, one in flight: latency, not
    /// throughput); they cycle through the sample inputs.
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// Tokio worker threads of this process, which runs the edge and the
    /// cloud both (1: what `offramp-edge` and `offramp-cloud` each start
    /// with on a machine of up to 7 cores, see `--io-threads` there).
    #[arg(long, default_value_t = NonZeroUsize::MIN)]
    pub io_threads: NonZeroUsize,
    /// Transports to measure (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "grpc,grpc-stream,quic")]
    pub transports: Vec<TransportKind>,
    #[arg(long)]
    pub json: bool,
}

fn line(name: &str, s: &Summary) -> String {
    format!("{name:<34} p50 {:>9.1} µs  p90 {:>9.1}  p99 {:>9.1}  mean {:>9.1}", s.p50, s.p90, s.p99, s.mean)
}

/// One transport's measurements (microseconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathReport {
    pub transport: String,
    pub end_to_end_us: Summary,
    pub edge_us: Summary,
    pub cloud_compute_us: Summary,
    /// The cloud's queue wait: from the request's hand-off to the batcher
    /// to its compute starting (the compute thread's wake-up, at one
    /// request in flight). Part of the overhead.
    pub cloud_queue_us: Summary,
    /// End to end − edge compute − cloud compute.
    pub overhead_us: Summary,
    /// Overhead p50 ÷ (the floor's p50 + the payload's memcpy p50).
    pub overhead_over_floor: f64,
    /// Context switches of all this process's threads per request (the
    /// edge, the cloud and the transport between them share it here):
    /// each is a thread put to sleep and woken, the cost that dominates a
    /// small request on a machine whose idle cores must be woken. `None`
    /// where `/proc` has no per-thread counts.
    pub switches_per_request: Option<f64>,
}

/// What `bench offload` measured (microseconds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct OffloadReport {
    pub split: usize,
    /// Tokio worker threads the edge and the cloud shared.
    pub io_threads: usize,
    pub requests: usize,
    /// Distinct sample inputs the requests cycle through.
    pub distinct_inputs: usize,
    /// Mean size of an offload request (protobuf message).
    pub request_bytes: usize,
    pub paths: Vec<PathReport>,
    /// The handshake RPC (no tensor, no compute) on a connection of its own.
    pub bare_grpc_round_trip_us: Summary,
    /// `request_bytes` out and 64 bytes back over one loopback TCP connection.
    pub raw_tcp_floor_us: Summary,
    /// The floor's context switches per request (two threads, two wake-ups).
    pub raw_tcp_floor_switches: Option<f64>,
    /// Copying `request_bytes` once.
    pub memcpy_us: Summary,
}

impl OffloadReport {
    pub fn render(&self) -> String {
        let mut s = format!(
            "offload path on loopback, split K = {}, {} sequential requests per transport over {} sample inputs, \
             {} bytes per request, {} I/O thread(s):\n",
            self.split, self.requests, self.distinct_inputs, self.request_bytes, self.io_threads
        );
        for p in &self.paths {
            for (name, v) in [
                ("end to end", &p.end_to_end_us),
                ("edge compute", &p.edge_us),
                ("cloud compute", &p.cloud_compute_us),
                ("transport overhead", &p.overhead_us),
                ("  of it, cloud queue", &p.cloud_queue_us),
            ] {
                s.push_str(&format!("  {}\n", line(&format!("{}: {name}", p.transport), v)));
            }
            s.push_str(&format!("  {:<34} {:.1}× the raw-TCP floor + memcpy (p50)", "", p.overhead_over_floor));
            if let Some(n) = p.switches_per_request {
                s.push_str(&format!("; {n:.1} context switches per request"));
            }
            s.push('\n');
        }
        for (name, v) in [
            ("bare gRPC round trip", &self.bare_grpc_round_trip_us),
            ("raw TCP floor (same bytes)", &self.raw_tcp_floor_us),
            ("memcpy of the payload", &self.memcpy_us),
        ] {
            s.push_str(&format!("  {}\n", line(name, v)));
        }
        if let Some(n) = self.raw_tcp_floor_switches {
            s.push_str(&format!("  {:<34} {n:.1} context switches per request\n", "raw TCP floor:"));
        }
        s
    }
}

/// The floor: `bytes` out and 64 bytes back, `n` times, over one loopback
/// TCP connection with blocking sockets (no framing, no protocol). Also the
/// context switches of both its threads (the server thread's own, counted
/// before it ends, `None` where not countable).
fn raw_tcp_floor(bytes: usize, n: usize) -> Result<(Vec<f64>, Option<u64>)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<Option<u64>> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let (mut buf, answer) = (vec![0u8; bytes], [7u8; 64]);
        let before = own_switches();
        loop {
            match s.read_exact(&mut buf) {
                Ok(()) => s.write_all(&answer)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(own_switches_since(before)),
                Err(e) => return Err(e),
            }
        }
    });
    let client_before = own_switches();
    let mut c = std::net::TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let (request, mut answer) = (vec![1u8; bytes], [0u8; 64]);
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 100 {
        let t = Instant::now();
        c.write_all(&request)?;
        c.read_exact(&mut answer)?;
        if i >= 100 {
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let client = own_switches_since(client_before);
    drop(c);
    let server = server.join().map_err(|_| anyhow::anyhow!("floor server panicked"))??;
    Ok((times, client.zip(server).map(|(c, s)| c + s)))
}

/// Context switches (voluntary and not) of every thread of this process so
/// far, from `/proc/self/task/*/status`; `None` where that is not readable.
fn context_switches() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        // A thread that ended meanwhile has no status left.
        total += thread_switches(task.ok()?.path().join("status")).unwrap_or(0);
    }
    Some(total)
}

/// The calling thread's context switches so far.
fn own_switches() -> Option<u64> {
    thread_switches("/proc/thread-self/status")
}

/// The calling thread's context switches since it counted `before`.
fn own_switches_since(before: Option<u64>) -> Option<u64> {
    before.zip(own_switches()).map(|(b, a)| a - b)
}

/// One thread's context switches from its `status` file.
fn thread_switches(status: impl AsRef<std::path::Path>) -> Option<u64> {
    let status = std::fs::read_to_string(status).ok()?;
    Some(
        status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum(),
    )
}

fn memcpy(bytes: usize, n: usize) -> Vec<f64> {
    let src = vec![3u8; bytes];
    let mut dst = vec![0u8; bytes];
    (0..n)
        .map(|_| {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

#[derive(Default)]
struct Samples {
    total: Vec<f64>,
    edge: Vec<f64>,
    cloud: Vec<f64>,
    queue: Vec<f64>,
    overhead: Vec<f64>,
    bytes: Vec<u64>,
    /// Context switches over the requests measured (`None` once one
    /// count could not be read).
    switches: Option<u64>,
}

pub async fn offload(args: &OffloadArgs) -> Result<OffloadReport> {
    anyhow::ensure!(args.requests > 0, "--requests must be at least 1");
    anyhow::ensure!(!args.transports.is_empty(), "--transports names none");
    let (_, bundle, data) = args.inputs.load(args.requests)?;
    let k = args.inputs.split_for(&bundle);
    // Every input goes to the cloud: exits before K never fire.
    let never = Policy::uniform(Rule::Never, bundle.num_exits());
    let (edge_b, cloud_b) = bundle.split(k)?;
    let quic = args.transports.contains(&TransportKind::Quic);
    let topology = Topology::start(cloud_config(cloud_b, Some(&never)), quic, None).await?;
    let mut edges = Vec::new();
    for &t in &args.transports {
        let mut cfg = topology.edge_config(edge_b.clone(), k, t)?;
        cfg.policy = Some(never.clone());
        cfg.transport = t;
        let edge = topology.edge(cfg).await.with_context(|| format!("edge over {t:?}"))?;
        // A warm-up pass over the sample.
        for i in 0..data.len() {
            edge.classify(None, data.image(i).to_vec()).await;
        }
        edges.push(edge);
    }
    let mut samples: Vec<Samples> =
        args.transports.iter().map(|_| Samples { switches: Some(0), ..Samples::default() }).collect();
    let rounds = 3.min(args.requests);
    let mut r = 0;
    for round in 0..rounds {
        let share = args.requests / rounds + usize::from(round < args.requests % rounds);
        for (edge, s) in edges.iter().zip(samples.iter_mut()) {
            let before = context_switches();
            for j in 0..share {
                let i = (r + j) % data.len();
                let a = edge.classify(None, data.image(i).to_vec()).await;
                anyhow::ensure!(a.tier == offramp_edge::Tier::Cloud, "input {i} was not offloaded: {:?}", a.error);
                s.total.push(a.latency_us as f64);
                s.edge.push(a.edge_us as f64);
                s.cloud.push(a.cloud_compute_us as f64);
                s.queue.push(a.cloud_queue_us as f64);
                s.overhead.push(a.latency_us.saturating_sub(a.edge_us + a.cloud_compute_us) as f64);
                s.bytes.push(a.bytes_up);
            }
            s.switches = s.switches.zip(before.zip(context_switches())).map(|(n, (b, a))| n + a - b);
        }
        r += share;
    }
    let bytes = samples.iter().flat_map(|s| s.bytes.iter()).sum::<u64>() as usize
        / samples.iter().map(|s| s.bytes.len()).sum::<usize>().max(1);
    // Baselines: a bare gRPC round trip on a connection of its own, the raw
    // TCP floor for the same bytes, a memcpy of them.
    let probe = Transport::grpc(&topology.url(TransportKind::Grpc)?, &ConnectConfig::default(), &Default::default())?;
    let mut rtt = Vec::with_capacity(args.requests);
    for i in 0..args.requests + 100 {
        let t = Instant::now();
        probe.model_info(std::time::Duration::from_secs(5)).await?;
        if i >= 100 {
            rtt.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let n = args.requests;
    let (floor, floor_switches) = tokio::task::spawn_blocking(move || raw_tcp_floor(bytes, n)).await??;
    let floor_switches = floor_switches.map(|s| s as f64 / (n + 100) as f64);
    let floor = Summary::of(&floor);
    let memcpy = Summary::of(&memcpy(bytes, args.requests));
    drop(edges);
    topology.stop().await?;
    let paths = args
        .transports
        .iter()
        .zip(samples)
        .map(|(t, s)| {
            let overhead = Summary::of(&s.overhead);
            let requests = s.total.len() as f64;
            PathReport {
                transport: t.to_possible_value().map_or("?".into(), |v| v.get_name().to_string()),
                end_to_end_us: Summary::of(&s.total),
                edge_us: Summary::of(&s.edge),
                cloud_compute_us: Summary::of(&s.cloud),
                cloud_queue_us: Summary::of(&s.queue),
                overhead_over_floor: overhead.p50 / (floor.p50 + memcpy.p50).max(1e-9),
                overhead_us: overhead,
                switches_per_request: s.switches.map(|n| n as f64 / requests),
            }
        })
        .collect();
    Ok(OffloadReport {
        split: k,
        io_threads: args.io_threads.get(),
        requests: args.requests,
        distinct_inputs: data.len(),
        request_bytes: bytes,
        paths,
        bare_grpc_round_trip_us: Summary::of(&rtt),
        raw_tcp_floor_us: floor,
        raw_tcp_floor_switches: floor_switches,
        memcpy_us: memcpy,
    })
}
