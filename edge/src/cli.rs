//! The `offramp-edge` command line (`main.rs` only calls [`main`]).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use offramp_common::telemetry::{self, LogArgs};
use offramp_common::threads::{Role, ThreadArgs};
use std::io::Write;

use offramp_common::data::Dataset;

use crate::config::Loaded;
use crate::{run, serve, Edge, EdgeConfig};

/// Offramp edge: runs the shallow blocks of a multi-exit model on the device,
/// answers when an exit is confident, offloads to the cloud otherwise, and
/// falls back locally when the cloud is slow or gone.
#[derive(Debug, Parser)]
#[command(name = "offramp-edge", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    threads: ThreadArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify a dataset through the split; print answers and a summary.
    Run(run::RunArgs),
    /// Serve the local API for applications on the device: Classify (gRPC)
    /// for a classifier, or with --http-listen the OpenAI-compatible HTTP
    /// API for a decoder.
    Serve(serve::ServeArgs),
    /// Generate text with a decoder bundle split at layer K (tokens stream
    /// as they come).
    Generate(crate::generate::args::GenerateArgs),
}

/// The `offramp-edge` binary: parse, set up logging, run; an error is printed
/// with its causes and gives a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread starts.
    let threads = cli.threads.apply(Role::Edge);
    telemetry::init(cli.log.log_format);
    let result = threads.runtime().context("starting tokio").and_then(|rt| {
        offramp_common::threads::run_as_task(&rt, run_command(cli.command)).context("the command panicked")?
    });
    telemetry::exit_code(result)
}

async fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Generate(args) => crate::generate::args::run(args).await?,
        Command::Run(args) => {
            let config = EdgeConfig::from_args(args.edge)?;
            crate::metrics::serve(config.metrics_listen)?;
            let mut data = Dataset::for_bundle(&args.data, args.subset, args.val_size, &config.bundle)
                .with_context(|| format!("reading {:?} from {}", args.subset, args.data.display()))?;
            if let Some(limit) = args.limit {
                data.truncate(limit);
            }
            let edge = Arc::new(Edge::start(config).await?);
            let json = args.json;
            let answers = run::run_dataset(edge.clone(), &data, args.concurrency, |a| {
                if json {
                    let mut out = std::io::stdout().lock();
                    let _ = serde_json::to_writer(&mut out, a);
                    let _ = out.write_all(b"\n");
                }
            })
            .await;
            let summary = run::summarize(&edge, &answers);
            if json {
                println!("{}", serde_json::json!({ "summary": summary }));
            } else {
                print!("{}", summary.render());
            }
        }
        Command::Serve(args) => serve(args).await?,
    }
    Ok(())
}

/// `serve`: the Classify API for a classifier, the OpenAI-compatible HTTP
/// API (`--http-listen`) for a decoder; a flag for the other one is refused.
async fn serve(args: serve::ServeArgs) -> Result<()> {
    let listen_given = args.listen_given();
    match crate::config::load(args.edge)? {
        Loaded::Classifier(config) => {
            let http = args.http.given();
            if args.http.http_listen.is_some() || !http.is_empty() {
                let mut flags: Vec<&str> = http;
                if args.http.http_listen.is_some() {
                    flags.insert(0, "http-listen");
                }
                anyhow::bail!(
                    "{} serves the HTTP API of a decoder; {} is a classifier, served over gRPC on --listen",
                    flags.iter().map(|f| format!("--{f}")).collect::<Vec<_>>().join(", "),
                    config.bundle.model_id()
                );
            }
            crate::metrics::serve(config.metrics_listen)?;
            // Secrets never print: tokens and keys have redacting Debug impls.
            tracing::info!(listen = %args.listen, ?config, "starting offramp-edge serve");
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            let edge = Arc::new(Edge::start(*config).await?);
            println!("classify listening on {}", listener.local_addr()?);
            serve::serve(edge, listener, offramp_common::net::shutdown_signal()).await?;
        }
        Loaded::Decoder(d) => {
            let Some(addr) = args.http.http_listen else {
                anyhow::bail!(
                    "{} is a decoder: serve it over HTTP with --http-listen [ADDR] (the Classify API on --listen is for classifiers)",
                    d.bundle.model_id()
                );
            };
            if listen_given {
                anyhow::bail!("--listen is the Classify API of a classifier; a decoder is served on --http-listen");
            }
            let defaults = args.http.defaults()?;
            crate::metrics::serve(d.metrics_listen)?;
            let d = *d;
            tracing::info!(listen = %addr, ?d.generate, model = d.bundle.model_id(), "starting offramp-edge serve (HTTP API)");
            let edge = crate::generate::DecoderEdge::new(d.bundle, d.generate)?;
            edge.connect().await?;
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            println!("OpenAI-compatible API listening on http://{}/v1", listener.local_addr()?);
            let state = crate::http::HttpState::new(edge, defaults);
            crate::http::serve(listener, state, offramp_common::net::shutdown_signal()).await?;
        }
    }
    Ok(())
}
