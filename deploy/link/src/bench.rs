//! `offramp link bench`: how faithful is the emulator? Runs in-process over
//! loopback and compares against what the configured link should do:
//!
//! 1. a 1 MB transfer over 10 Mbit/s with 25 ms one-way delay
//!    (expected 0.8 s + 25 ms; target within 5%),
//! 2. ping-pong RTT with no delay (the proxy's own overhead) and with 25 ms
//!    each way (expected 50 ms; target within 1 ms for the median),
//! 3. replay of a Mahimahi trace and of a throughput trace with a saturating
//!    sender (delivered mean rate vs the trace's capacity over the same window;
//!    target within 3%).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use offramp_base::units;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::shaper::DirectionConfig;
use super::trace::{Trace, TraceFormat};
use super::{spawn_tcp_link, LinkConfig};

/// Options of the fidelity benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// How long each trace replay runs.
    #[arg(long, value_parser = units::parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Mahimahi trace to replay (down direction).
    /// (e.g. ../shared/data/traces/mahimahi/Verizon-LTE-short.down).
    #[arg(long, env = "OFFRAMP_LINK_BENCH_TRACE")]
    pub trace: PathBuf,
    /// Throughput trace to replay (down direction); `none` skips it.
    /// (e.g. ../shared/data/traces/throughput/oboe/oboe_trace_0.txt).
    #[arg(long, env = "OFFRAMP_LINK_BENCH_THROUGHPUT_TRACE")]
    pub throughput_trace: PathBuf,
    /// Number of pings (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub pings: usize,
    /// Print the report as JSON too.
    #[arg(long)]
    pub json: bool,
}

/// One measurement against its expectation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub measured: f64,
    pub expected: f64,
    pub unit: &'static str,
    /// `measured - expected` in `unit`, or in % when `relative`.
    pub error: f64,
    pub relative: bool,
    pub target: f64,
    pub pass: bool,
}

impl Check {
    fn new(name: String, measured: f64, expected: f64, unit: &'static str, relative: bool, target: f64) -> Self {
        let error = if relative { (measured - expected) / expected * 100.0 } else { measured - expected };
        Self { name, measured, expected, unit, error, relative, target, pass: error.abs() <= target }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (err_unit, target_unit) = if self.relative { ("%", "%") } else { (self.unit, self.unit) };
        write!(
            f,
            "{}: {:.4} {} (expected {:.4} {}, error {:+.3} {}; target ±{} {}: {})",
            self.name,
            self.measured,
            self.unit,
            self.expected,
            self.unit,
            self.error,
            err_unit,
            self.target,
            target_unit,
            if self.pass { "ok" } else { "MISSED" }
        )
    }
}

/// Runs every check and prints the results.
pub async fn run(args: &BenchArgs) -> Result<Vec<Check>> {
    let mut checks = Vec::new();
    let c = transfer(1_000_000, 10e6, Duration::from_millis(25)).await?;
    println!("{c}");
    checks.push(c);
    // The proxy's own overhead (loopback hops and wake-ups), then 25 ms each way.
    for delay in [Duration::ZERO, Duration::from_millis(25)] {
        let c = ping_pong(delay, args.pings).await?;
        println!("{c}");
        checks.push(c);
    }
    for path in [&args.trace, &args.throughput_trace] {
        if path.as_os_str() == "none" {
            continue;
        }
        let trace = Trace::load(path, TraceFormat::Auto)?;
        let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        println!("replaying {name} ({trace}) for {:.1} s ...", args.duration.as_secs_f64());
        let c = replay(&name, trace, args.duration).await?;
        println!("{c}");
        checks.push(c);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    }
    Ok(checks)
}

fn loopback() -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, 0).into()
}

/// Time for `bytes` to cross a `bps`, `delay` link, from the first write to
/// the last byte's arrival.
pub async fn transfer(bytes: usize, bps: f64, delay: Duration) -> Result<Check> {
    let sink = TcpListener::bind(loopback()).await?;
    let sink_addr = sink.local_addr()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let Ok((mut s, _)) = sink.accept().await else { return };
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        while got < bytes {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
        let _ = done_tx.send(Instant::now());
    });
    let dir = DirectionConfig::default().with_rate_bps(bps).with_delay(delay);
    let link = spawn_tcp_link(loopback(), sink_addr, LinkConfig::symmetric(dir)).await?;
    let mut client = TcpStream::connect(link.local_addr()).await?;
    client.set_nodelay(true)?;
    tokio::time::sleep(Duration::from_millis(50)).await; // let the link reach the sink
    let payload = vec![0x5a_u8; bytes];
    let start = Instant::now();
    client.write_all(&payload).await?;
    let end = done_rx.await.context("the sink did not receive everything")?;
    let measured = (end - start).as_secs_f64();
    let expected = (bytes * 8) as f64 / bps + delay.as_secs_f64();
    let name =
        format!("transfer {} kB at {} Mbit/s, {} ms one-way", bytes / 1000, bps / 1e6, delay.as_secs_f64() * 1e3);
    Ok(Check::new(name, measured, expected, "s", true, 5.0))
}

/// Median RTT of `pings` 64-byte echoes over an unlimited link with `delay` each way.
pub async fn ping_pong(delay: Duration, pings: usize) -> Result<Check> {
    let echo = TcpListener::bind(loopback()).await?;
    let echo_addr = echo.local_addr()?;
    tokio::spawn(async move {
        let Ok((mut s, _)) = echo.accept().await else { return };
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let link =
        spawn_tcp_link(loopback(), echo_addr, LinkConfig::symmetric(DirectionConfig::default().with_delay(delay)))
            .await?;
    let mut client = TcpStream::connect(link.local_addr()).await?;
    client.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    let mut rtts = Vec::with_capacity(pings);
    for i in 0..=pings {
        buf[0] = i as u8;
        let start = Instant::now();
        client.write_all(&buf).await?;
        client.read_exact(&mut buf).await?;
        if i > 0 {
            rtts.push((Instant::now() - start).as_secs_f64() * 1e3); // the first one warms up
        }
    }
    rtts.sort_by(f64::total_cmp);
    let median = rtts[rtts.len() / 2];
    let name = format!(
        "ping-pong RTT, {} ms each way, median of {} (min {:.3}, max {:.3} ms)",
        delay.as_secs_f64() * 1e3,
        pings,
        rtts[0],
        rtts[rtts.len() - 1]
    );
    Ok(Check::new(name, median, 2.0 * delay.as_secs_f64() * 1e3, "ms", false, 1.0))
}

/// Mean delivered rate with a saturating upstream sender over `window`,
/// against the trace's capacity over the same window of link time.
pub async fn replay(name: &str, trace: std::sync::Arc<Trace>, window: Duration) -> Result<Check> {
    let source = TcpListener::bind(loopback()).await?;
    let source_addr = source.local_addr()?;
    tokio::spawn(async move {
        let Ok((mut s, _)) = source.accept().await else { return };
        let buf = vec![0xa5_u8; 64 * 1024];
        while s.write_all(&buf).await.is_ok() {}
    });
    let cfg = LinkConfig { down: DirectionConfig::default().with_trace(trace.clone()), ..LinkConfig::default() };
    let link = spawn_tcp_link(loopback(), source_addr, cfg).await?;
    let mut client = TcpStream::connect(link.local_addr()).await?;
    let start = Instant::now();
    let end = start + window;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0usize;
    loop {
        tokio::select! {
            r = client.read(&mut buf) => match r? {
                0 => anyhow::bail!("the source closed during the replay"),
                n => {
                    if Instant::now() > end { break }
                    got += n;
                }
            },
            _ = tokio::time::sleep_until(end.into()) => break,
        }
    }
    let from = (start - link.epoch()).as_secs_f64();
    let secs = window.as_secs_f64();
    let expected = trace.capacity_bytes(from, from + secs) * 8.0 / secs / 1e6;
    let measured = got as f64 * 8.0 / secs / 1e6;
    let name = format!("trace {name}, {secs:.1} s, saturating sender: delivered rate");
    Ok(Check::new(name, measured, expected, "Mbit/s", true, 3.0))
}
