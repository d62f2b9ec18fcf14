//! The Offramp edge runtime: runs blocks `[0, K)` of a multi-exit network on
//! the device, answers at the first confident exit, offloads the hidden state
//! to a cloud otherwise, and always answers (offline fallback); and for
//! decoders, generation split at layer K ([`generate`]).

pub mod adapt;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod generate;
pub mod grpc_stream;
pub mod http;
pub mod link;
pub mod metrics;
pub mod offload;
pub mod plan;
pub mod quic;
pub mod report;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod throttle;
pub mod transport;

pub use config::{EdgeArgs, EdgeConfig, FallbackMode};
pub use runtime::{Answer, Edge, EdgeError, Tier};
