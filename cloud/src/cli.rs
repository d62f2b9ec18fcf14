//! The `offramp-cloud` command line (`main.rs` only calls [`main`]).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use offramp_common::telemetry::{self, LogArgs};
use offramp_common::threads::{Role, ThreadArgs};

use crate::{CloudArgs, CloudConfig};

/// Offramp cloud: finishes early-exit inference for edges. Serves blocks K..N
/// of a multi-exit model and their exits over gRPC (and QUIC with --quic-listen).
#[derive(Debug, Parser)]
#[command(name = "offramp-cloud", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    args: CloudArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    threads: ThreadArgs,
}

/// The `offramp-cloud` binary: parse, set up logging, build the config,
/// serve; an error is printed with its causes and gives a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts.
    let threads = cli.threads.apply(Role::Cloud);
    telemetry::init(cli.log.log_format);
    telemetry::exit_code(run(cli.args, threads))
}

fn run(args: CloudArgs, threads: offramp_common::threads::Threads) -> Result<()> {
    let config = CloudConfig::from_args(args)?;
    // Secrets never print: tokens and keys have redacting Debug impls.
    tracing::info!(?config, io_threads = threads.io, compute_threads = threads.compute, "starting offramp-cloud");
    let runtime = threads.runtime().context("starting tokio")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        crate::serve(config, listener, crate::shutdown_signal(), |l| {
            println!("grpc listening on {}", l.grpc);
            if let Some(q) = l.quic {
                println!("quic listening on {q}");
            }
        })
        .await?;
        Ok(())
    })
}
