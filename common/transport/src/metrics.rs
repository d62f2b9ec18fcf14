//! The one Prometheus exporter installer (each binary passes its buckets).

use std::net::SocketAddr;

pub use metrics_exporter_prometheus::BuildError;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Installs the process-wide exporter serving `/metrics` on `addr`:
/// `seconds_buckets` for every histogram whose name ends in `seconds`, and
/// `extra` buckets for named histograms. One per process: a second call
/// fails.
pub fn install(addr: SocketAddr, seconds_buckets: &[f64], extra: &[(&str, &[f64])]) -> Result<(), BuildError> {
    let mut builder = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), seconds_buckets)?;
    for (name, buckets) in extra {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).into()), buckets)?;
    }
    builder.install()
}
