//! Prometheus metrics of the edge (names prefixed `offramp_edge_`).

use std::net::SocketAddr;

use crate::runtime::Answer;

/// Serves the exporter on `addr` when one is given: every edge command calls
/// this once at start, whatever the bundle's kind.
pub fn serve(addr: Option<SocketAddr>) -> Result<(), offramp_transport::metrics::BuildError> {
    match addr {
        Some(addr) => install(addr),
        None => Ok(()),
    }
}

pub fn install(addr: SocketAddr) -> Result<(), offramp_transport::metrics::BuildError> {
    let buckets = [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
    offramp_transport::metrics::install(addr, &buckets, &[])?;
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("offramp_edge_requests_total", "Answers by tier (edge, cloud, fallback, error) and exit");
    describe_counter!("offramp_edge_generated_tokens_total", "Generated tokens by tier (edge, cloud, fallback)");
    describe_counter!("offramp_edge_cloud_sessions_total", "Decoder sessions opened with a cloud (replays included)");
    describe_histogram!("offramp_edge_latency_seconds", Unit::Seconds, "End-to-end latency per input, by tier");
    describe_histogram!("offramp_edge_compute_seconds", Unit::Seconds, "Local compute per input");
    describe_counter!("offramp_edge_bytes_up_total", Unit::Bytes, "Bytes offloaded to the cloud");
    describe_counter!("offramp_edge_bytes_down_total", Unit::Bytes, "Bytes received from the cloud");
    describe_counter!("offramp_edge_fallbacks_total", "Fallback answers by reason");
    describe_gauge!("offramp_edge_breaker_state", "Breaker state per endpoint: 0 closed, 1 half-open, 2 open");
    describe_gauge!("offramp_edge_split", "Split point inputs take now (with --adaptive-split: the planner's choice)");
    describe_gauge!("offramp_edge_route_int8", "1 when the planner's route sends int8 + LZ4, 0 for f32");
    describe_counter!("offramp_edge_split_switches_total", "Routes the planner switched to");
    describe_gauge!("offramp_edge_rtt_seconds", Unit::Seconds, "The planner's round-trip estimate to the cloud");
    describe_gauge!("offramp_edge_goodput_bytes_per_second", "The planner's goodput estimate to the cloud");
    describe_gauge!("offramp_edge_expected_latency_seconds", Unit::Seconds, "Planner's expected latency per route");
    describe_gauge!("offramp_edge_threshold", "Threshold of each edge exit (with --accuracy-budget: the controller's)");
    describe_counter!("offramp_edge_shadow_requests_total", "Shadow requests by outcome (answered, dropped, failed)");
    tracing::info!(%addr, "metrics listening");
    Ok(())
}

pub fn record_answer(a: &Answer) {
    let tier = a.tier.as_str();
    let exit = a.exit.map(|e| e.to_string()).unwrap_or_else(|| "none".into());
    metrics::counter!("offramp_edge_requests_total", "tier" => tier, "exit" => exit).increment(1);
    metrics::histogram!("offramp_edge_latency_seconds", "tier" => tier).record(a.latency_us as f64 / 1e6);
    metrics::histogram!("offramp_edge_compute_seconds").record(a.edge_us as f64 / 1e6);
    metrics::counter!("offramp_edge_bytes_up_total").increment(a.bytes_up);
    metrics::counter!("offramp_edge_bytes_down_total").increment(a.bytes_down);
    if let Some(r) = a.reason {
        metrics::counter!("offramp_edge_fallbacks_total", "reason" => r.as_str()).increment(1);
    }
}

/// The planner's latest plan.
pub fn record_plan(plan: &crate::plan::Plan) {
    metrics::gauge!("offramp_edge_split").set(plan.route.split as f64);
    metrics::gauge!("offramp_edge_route_int8").set(f64::from(plan.route.encoding == offramp_proto::Encoding::Int8));
    if plan.switched {
        metrics::counter!("offramp_edge_split_switches_total").increment(1);
    }
    if let Some(rtt) = plan.rtt_us {
        metrics::gauge!("offramp_edge_rtt_seconds").set(rtt / 1e6);
    }
    if let Some(g) = plan.goodput_bps.filter(|g| g.is_finite()) {
        metrics::gauge!("offramp_edge_goodput_bytes_per_second").set(g);
    }
    for e in &plan.estimates {
        metrics::gauge!("offramp_edge_expected_latency_seconds", "route" => e.route.to_string())
            .set(e.expected_us / 1e6);
    }
}

pub fn breaker_state(endpoint: &str, state: crate::breaker::BreakerState) {
    let v = match state {
        crate::breaker::BreakerState::Closed => 0.0,
        crate::breaker::BreakerState::HalfOpen => 1.0,
        crate::breaker::BreakerState::Open => 2.0,
    };
    metrics::gauge!("offramp_edge_breaker_state", "endpoint" => endpoint.to_string()).set(v);
}
