//! The `offramp-cloud` command line (`main.rs` only calls [`main`]).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use offramp_common::telemetry::{self, LogArgs};

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
}

/// The `offramp-cloud` binary: parse, set up logging, build the config,
/// serve; an error is printed with its causes and gives a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    telemetry::exit_code(run(cli.args))
}

fn run(args: CloudArgs) -> Result<()> {
    let config = CloudConfig::from_args(args)?;
    // Secrets never print: tokens and keys have redacting Debug impls.
    tracing::info!(?config, "starting offramp-cloud");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
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
