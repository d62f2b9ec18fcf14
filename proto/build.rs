//! Compiles `proto/*.proto` with protox (pure Rust, no `protoc` needed) and
//! generates prost messages plus tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/offramp.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".offramp.v1.Tensor.data").compile_fds(fds)?;
    Ok(())
}
