//! The Offramp operator's tool: train, evaluate and calibrate multi-exit
//! models, split bundles, run the demo, emulate links, run experiments and
//! generate load.

pub mod train;
