//! `offramp link`: run the emulator in front of an upstream, or benchmark it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use offramp_base::units;

use super::bench::BenchArgs;
use super::shaper::{DirectionConfig, RateModel};
use super::trace::{Trace, TraceFormat};
use super::{spawn_tcp_link, spawn_udp_link, LinkConfig};

/// Emulate a network link: a TCP (or, with --udp, UDP) proxy from --listen to
/// --upstream that shapes each direction. "Up" is client → upstream (edge →
/// cloud), "down" is upstream → client. The --up-*/--down-* flags override the
/// shared ones for one direction.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct LinkArgs {
    #[command(subcommand)]
    pub command: Option<LinkCommand>,
    /// Address to listen on (port 0: any free port; the real one is printed).
    #[arg(long, env = "OFFRAMP_LINK_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Upstream server (host:port). TCP: a host name is resolved again for
    /// every connection (a restarted upstream may come back elsewhere); UDP:
    /// resolved once at start.
    #[arg(long, env = "OFFRAMP_LINK_UPSTREAM", required = true)]
    pub upstream: Option<String>,
    /// UDP datagram proxy (for QUIC) instead of TCP.
    #[arg(long, env = "OFFRAMP_LINK_UDP")]
    pub udp: bool,
    /// One-way propagation delay, both directions (e.g. 25ms, 1.5s).
    #[arg(long, env = "OFFRAMP_LINK_DELAY", value_parser = units::parse_duration, default_value = "0ms")]
    pub delay: Duration,
    /// Delay jitter: each packet's delay is delay ± U(0, jitter). TCP keeps byte order.
    #[arg(long, env = "OFFRAMP_LINK_JITTER", value_parser = units::parse_duration, default_value = "0ms")]
    pub jitter: Duration,
    /// Rate, both directions (10mbit, 500kbit, 2.5Mbit/s, 1gbit, unlimited).
    #[arg(long, env = "OFFRAMP_LINK_RATE", value_parser = parse_rate, default_value = "unlimited")]
    pub rate: Rate,
    /// Loss probability (1% or 0.01). UDP drops datagrams; TCP delays the
    /// affected packet by one RTT (a retransmission) instead.
    #[arg(long, env = "OFFRAMP_LINK_LOSS", value_parser = units::parse_ratio, default_value = "0")]
    pub loss: f64,
    /// Serialization queue limit per direction (UDP: drop tail; TCP: stop reading).
    #[arg(long, env = "OFFRAMP_LINK_QUEUE", value_parser = units::parse_bytes, default_value = "256KiB")]
    pub queue: usize,
    #[arg(long, env = "OFFRAMP_LINK_UP_DELAY", value_parser = units::parse_duration)]
    pub up_delay: Option<Duration>,
    #[arg(long, env = "OFFRAMP_LINK_DOWN_DELAY", value_parser = units::parse_duration)]
    pub down_delay: Option<Duration>,
    #[arg(long, env = "OFFRAMP_LINK_UP_JITTER", value_parser = units::parse_duration)]
    pub up_jitter: Option<Duration>,
    #[arg(long, env = "OFFRAMP_LINK_DOWN_JITTER", value_parser = units::parse_duration)]
    pub down_jitter: Option<Duration>,
    #[arg(long, env = "OFFRAMP_LINK_UP_RATE", value_parser = parse_rate)]
    pub up_rate: Option<Rate>,
    #[arg(long, env = "OFFRAMP_LINK_DOWN_RATE", value_parser = parse_rate)]
    pub down_rate: Option<Rate>,
    #[arg(long, env = "OFFRAMP_LINK_UP_LOSS", value_parser = units::parse_ratio)]
    pub up_loss: Option<f64>,
    #[arg(long, env = "OFFRAMP_LINK_DOWN_LOSS", value_parser = units::parse_ratio)]
    pub down_loss: Option<f64>,
    /// Trace replayed client → upstream (replaces the rate; Mahimahi,
    /// throughput or `second,bytes` CSV format).
    #[arg(long, env = "OFFRAMP_LINK_UP_TRACE")]
    pub up_trace: Option<PathBuf>,
    /// Trace replayed upstream → client (replaces the rate).
    #[arg(long, env = "OFFRAMP_LINK_DOWN_TRACE")]
    pub down_trace: Option<PathBuf>,
    /// Trace file format.
    #[arg(long, env = "OFFRAMP_LINK_TRACE_FORMAT", value_enum, default_value_t = TraceFormat::Auto)]
    pub trace_format: TraceFormat,
    /// Interval of a `second,bytes` trace in seconds (default: detected, the
    /// smallest step between timestamps).
    #[arg(long, env = "OFFRAMP_LINK_TRACE_INTERVAL")]
    pub trace_interval: Option<f64>,
    /// Seed of the loss and jitter draws.
    #[arg(long, env = "OFFRAMP_LINK_SEED", default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, clap::Subcommand)]
pub enum LinkCommand {
    /// Measure the emulator's fidelity in-process: transfer time, RTT and trace replay.
    Bench(BenchArgs),
}

/// A rate in bit/s; infinite = unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

/// Parses `10mbit`, `2.5Mbit/s`, `500kbit`, `1gbit` or `unlimited`.
pub fn parse_rate(s: &str) -> Result<Rate, units::UnitError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "unlimited" | "inf" | "none" => Ok(Rate(f64::INFINITY)),
        _ => units::parse_rate(s).map(Rate),
    }
}

impl LinkArgs {
    /// The link configuration the flags describe (reads trace files).
    pub fn link_config(&self) -> Result<LinkConfig> {
        let direction = |name: &str,
                         delay: Option<Duration>,
                         jitter: Option<Duration>,
                         rate: Option<Rate>,
                         loss: Option<f64>,
                         trace: &Option<PathBuf>|
         -> Result<DirectionConfig> {
            let rate_model = match trace {
                Some(path) => {
                    if rate.is_some() || self.rate.0.is_finite() {
                        tracing::warn!("link: --{name}-trace replaces the {name} rate");
                    }
                    let trace = Trace::load_with(path, self.trace_format, self.trace_interval)?;
                    RateModel::Trace(trace)
                }
                None => match rate.unwrap_or(self.rate).0 {
                    bps if bps.is_finite() => RateModel::Fixed { bps },
                    _ => RateModel::Unlimited,
                },
            };
            Ok(DirectionConfig {
                rate: rate_model,
                delay: delay.unwrap_or(self.delay),
                jitter: jitter.unwrap_or(self.jitter),
                loss: loss.unwrap_or(self.loss),
                queue_bytes: self.queue,
            })
        };
        let up = direction("up", self.up_delay, self.up_jitter, self.up_rate, self.up_loss, &self.up_trace)?;
        let down =
            direction("down", self.down_delay, self.down_jitter, self.down_rate, self.down_loss, &self.down_trace)?;
        if self.queue == 0 {
            bail!("--queue must be positive");
        }
        Ok(LinkConfig { up, down, seed: self.seed })
    }
}

/// Runs `offramp link` (or `offramp link bench`) on its own tokio runtime.
pub fn run(args: &LinkArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    match &args.command {
        Some(LinkCommand::Bench(bench)) => runtime.block_on(super::bench::run(bench)).map(|_| ()),
        None => runtime.block_on(serve(args)),
    }
}

async fn serve(args: &LinkArgs) -> Result<()> {
    let cfg = args.link_config()?;
    let name = args.upstream.as_deref().context("--upstream is required")?;
    let upstream = tokio::net::lookup_host(name)
        .await
        .with_context(|| format!("resolving --upstream {name}"))?
        .next()
        .with_context(|| format!("--upstream {name} resolves to no address"))?;
    for (dir, d) in [("up", &cfg.up), ("down", &cfg.down)] {
        tracing::info!(
            direction = dir,
            rate = %d.rate,
            delay_ms = d.delay.as_secs_f64() * 1e3,
            jitter_ms = d.jitter.as_secs_f64() * 1e3,
            loss = d.loss,
            queue_bytes = d.queue_bytes,
            "link config"
        );
    }
    if !args.udp && (cfg.up.loss > 0.0 || cfg.down.loss > 0.0) {
        tracing::info!("link: TCP mode models loss as a one-RTT retransmission delay, not as dropped bytes");
    }
    let handle = if args.udp {
        spawn_udp_link(args.listen, upstream, cfg).await
    } else {
        spawn_tcp_link(args.listen, super::Upstream::parse(name), cfg).await
    }
    .with_context(|| format!("listening on {}", args.listen))?;
    let kind = if args.udp { "link-udp" } else { "link" };
    println!("{kind} listening on {} -> {name} ({upstream})", handle.local_addr());
    std::io::stdout().flush()?;
    offramp_base::net::shutdown_signal().await;
    tracing::info!(stats = ?handle.stats(), "link: shutting down");
    handle.shutdown().await;
    Ok(())
}

/// `offramp-link`'s command line: the link's flags plus logging.
#[derive(Debug, clap::Parser)]
#[command(name = "offramp-link", version, about = "Emulate a network link in front of a TCP or UDP server")]
struct LinkCli {
    #[command(flatten)]
    log: offramp_base::telemetry::LogArgs,
    #[command(flatten)]
    link: LinkArgs,
}

/// The `offramp-link` binary: parse, set up logging, run; errors are printed
/// with their causes and give a non-zero exit.
pub fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    let cli = LinkCli::parse();
    offramp_base::telemetry::init(cli.log.log_format);
    offramp_base::telemetry::exit_code(run(&cli.link))
}
