//! Integration tests: real gRPC servers on 127.0.0.1:0 and real processes.
//! One test binary for the whole workspace (each extra binary costs a link).

mod support;

mod adaptive;
mod cloud_ops;
mod docker;
mod docs;
mod encoder;
mod experiment;
mod fallback;
mod generation;
mod http_api;
mod one_runtime;
mod onnx;
mod openai_clients;
mod overload;
mod quic;
mod robustness;
mod speculative;
mod split_path;
mod structured_output;
