use anyhow::Result;
use clap::{Parser, Subcommand};
use offramp::train;
use offramp_common::telemetry::{self, LogArgs};

/// Offramp: split-computing early-exit inference. The operator's tool.
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
    /// Train a multi-exit network (all exits jointly) and save it as a bundle.
    Train(train::TrainArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match cli.command {
        Command::Train(args) => {
            let report = train::run(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
    }
    Ok(())
}
