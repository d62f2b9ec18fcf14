//! The Offramp operator's tool: train, evaluate and calibrate multi-exit
//! models, split bundles, run the demo, emulate links, run experiments and
//! generate load.

pub mod bench;
pub mod bench_transport;
pub mod calibrate;
pub mod codec_eval;
pub mod demo;
pub mod eval;
pub mod experiment;
pub mod inputs;
pub mod link;
pub mod load;
pub mod plot;
pub mod sample;
pub mod split;
pub mod train;
