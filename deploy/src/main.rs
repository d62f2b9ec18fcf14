use anyhow::Result;
use clap::{Parser, Subcommand};
use offramp::{calibrate, eval};
use offramp::{demo, sample, split, train};
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
    /// Cut a bundle at K into an edge bundle (blocks 0..K) and a cloud bundle (K..N).
    Split(split::SplitArgs),
    /// Run a cloud and an edge on loopback with the bundled model and sample.
    Demo(demo::DemoArgs),
    /// Benchmarks: per-block forward time and executor overhead (`blocks`),
    /// transport overhead of the offload path on loopback (`offload`).
    Bench(offramp::bench::BenchArgs),
    /// Run a grid of split points x policies x links x transports x encodings,
    /// each cell a real cloud, link and edge; write CSV, records and plots.
    Experiment(offramp::experiment::ExperimentArgs),
    /// Load a cloud with simulated edges (open-loop Poisson arrivals).
    Load(offramp::load::LoadArgs),
    /// Write a small MNIST sample (at most 1,000 digits) for demos.
    ExportSample(sample::SampleArgs),
    /// Emulate a network link (rate or trace, delay, jitter, loss) in front of a
    /// TCP or UDP server; `offramp link bench` measures its fidelity.
    Link(offramp::link::LinkArgs),
    /// Evaluate a model: per-exit accuracy, a policy's accuracy, exit shares,
    /// relative compute and batch-1 wall time; `--sweep` for accuracy versus
    /// compute over thresholds (CSV + SVG).
    Eval(eval::EvalArgs),
    /// Choose per-exit thresholds within an accuracy budget on a validation
    /// split and write them as a policy file.
    Calibrate(calibrate::CalibrateArgs),
    /// Hidden-state encodings at split K: bytes per offloaded request,
    /// accuracy change against f32 and codec speed.
    CodecEval(offramp::codec_eval::CodecEvalArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The demo prints its own report; keep the logs to warnings unless asked.
    let default_filter = if matches!(cli.command, Command::Demo(_) | Command::Experiment(_)) { "warn" } else { "info" };
    telemetry::init_with_default(cli.log.log_format, default_filter);
    match cli.command {
        Command::Train(args) => {
            let report = train::run(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Split(args) => split::run(&args)?,
        Command::Bench(args) => {
            let json = match &args.what {
                offramp::bench::BenchWhat::Blocks(a) => (offramp::bench::blocks(a)?, a.json),
                offramp::bench::BenchWhat::Offload(a) => (runtime()?.block_on(offramp::bench::offload(a))?, a.json),
                offramp::bench::BenchWhat::Transport(a) => {
                    (runtime()?.block_on(offramp::bench_transport::run(a))?, a.json)
                }
            };
            if json.1 {
                println!("{}", serde_json::to_string_pretty(&json.0)?);
            }
        }
        Command::ExportSample(args) => sample::run(&args)?,
        Command::Experiment(args) => {
            let results = runtime()?.block_on(offramp::experiment::run(&args))?;
            println!("{} cells written to {}", results.len(), args.out.display());
            for r in &results {
                println!(
                    "{:<48} acc {:>6.2}%  edge {:>5.1}%  p50 {:>8.2} ms  p99 {:>8.2} ms  up {:>6.0} B  measured/bound {:.2}",
                    r.cell, r.accuracy * 100.0, r.share_edge * 100.0, r.p50_ms, r.p99_ms, r.bytes_up_per_req, r.measured_over_bound
                );
            }
        }
        Command::Load(args) => {
            let report = runtime()?.block_on(offramp::load::run(&args))?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", offramp::load::render(&report));
            }
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args))?,
        Command::Eval(args) => eval::run(&args)?,
        Command::Link(args) => offramp::link::run(&args)?,
        Command::Calibrate(args) => calibrate::run(&args)?,
        Command::CodecEval(args) => offramp::codec_eval::run(&args)?,
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
