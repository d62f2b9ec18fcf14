//! Offramp's lab: a real cloud, link emulator and edge started in-process,
//! and what is measured with them.
//!
//! - [`inputs`]: the `--model`/`--data`/`--split` group of the tools that send
//!   real hidden states.
//! - [`harness`]: the in-process cloud + links + edges all of them start.
//! - [`demo`]: `offramp demo`, the bundled model through the split.
//! - [`drift`]: `offramp drift`, the accuracy-budget controller against the
//!   static policy on a stream that drifts.
//! - [`experiment`]: `offramp experiment`, a grid of split points × policies
//!   × links × transports × encodings, with CSV, records and plots.
//! - [`load`]: `offramp load`, simulated edges against a cloud.
//! - [`offload_bench`]: `offramp bench offload`, the offload path's overhead.
//! - [`transport_bench`]: `offramp bench transport`, gRPC against QUIC
//!   through the link emulator.

pub mod demo;
pub mod demo_decoder;
pub mod drift;
pub mod experiment;
pub mod generation_bench;
pub mod generation_experiment;
pub mod harness;
pub mod inputs;
pub mod load;
pub mod offload_bench;
pub mod transport_bench;
