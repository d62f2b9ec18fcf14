use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use offramp_common::telemetry::{self, LogArgs};
use offramp_edge::{run, serve, Edge};

/// Offramp edge: runs the shallow blocks of a multi-exit model on the device,
/// answers when an exit is confident, offloads to the cloud otherwise, and
/// falls back locally when the cloud is slow or gone.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify a dataset through the split; print answers and a summary.
    Run(run::RunArgs),
    /// Serve the local Classify API for applications on the device.
    Serve(serve::ServeArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match cli.command {
        Command::Run(args) => {
            run::run(args).await?;
        }
        Command::Serve(args) => {
            tracing::info!(config = ?args, "starting offramp-edge serve");
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let edge = Arc::new(Edge::start(args.edge).await?);
            println!("classify listening on {}", listener.local_addr()?);
            serve::serve(edge, listener, offramp_common::net::shutdown_signal()).await?;
        }
    }
    Ok(())
}
