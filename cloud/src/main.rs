use anyhow::{Context, Result};
use clap::Parser;
use offramp_common::telemetry::{self, LogArgs};

/// Offramp cloud: finishes early-exit inference for edges. Serves blocks K..N
/// of a multi-exit model and their exits over gRPC (and QUIC with --quic-listen).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: offramp_cloud::Config,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    tracing::info!(config = ?cli.config, "starting offramp-cloud");
    let listener = tokio::net::TcpListener::bind(cli.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.config.listen))?;
    offramp_cloud::serve(cli.config, listener, offramp_cloud::shutdown_signal(), |l| {
        println!("grpc listening on {}", l.grpc);
        if let Some(q) = l.quic {
            println!("quic listening on {q}");
        }
    })
    .await
}
