//! Prometheus metrics (names prefixed `offramp_cloud_`).

use std::net::SocketAddr;

/// Installs the Prometheus exporter on `addr` (once per process).
pub fn install_metrics(addr: SocketAddr) -> Result<(), offramp_transport::metrics::BuildError> {
    let buckets = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    let batch: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    offramp_transport::metrics::install(addr, &buckets, &[("offramp_cloud_batch_size", batch)])?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("offramp_cloud_requests_total", "Requests by outcome (ok or gRPC code) and exit");
    describe_histogram!("offramp_cloud_queue_seconds", Unit::Seconds, "Time from admission to the start of compute");
    describe_histogram!("offramp_cloud_compute_seconds", Unit::Seconds, "Compute time of the batch a request ran in");
    describe_histogram!("offramp_cloud_request_seconds", Unit::Seconds, "Time in the cloud, validation to answer");
    describe_histogram!("offramp_cloud_batch_size", "Requests per computed batch");
    describe_counter!("offramp_cloud_bytes_received_total", Unit::Bytes, "Hidden-state payload bytes received");
    describe_counter!("offramp_cloud_bytes_sent_total", Unit::Bytes, "Response bytes sent");
    describe_gauge!("offramp_cloud_queue_depth", "Requests queued or computing");
    describe_gauge!("offramp_cloud_sessions", "Generation sessions open");
    describe_gauge!("offramp_cloud_kv_cache_bytes", Unit::Bytes, "KV cache bytes reserved by open sessions");
    describe_counter!("offramp_cloud_generated_tokens_total", "Tokens the cloud chose for edges");
    describe_histogram!("offramp_cloud_decode_batch_size", "Decode steps (sessions) per forward pass");
    describe_histogram!("offramp_cloud_decode_seconds", Unit::Seconds, "Time of a batched decode forward pass");
}
