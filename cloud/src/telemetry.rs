//! Prometheus metrics (names prefixed `offramp_cloud_`) and request
//! authentication.

use std::net::SocketAddr;
use std::sync::Arc;

use offramp_common::security::TokenTable;
use tonic::{Request, Status};

/// Installs the Prometheus exporter on `addr` (once per process).
pub fn install_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    let buckets = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("seconds".into()), &buckets)?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("offramp_cloud_batch_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        )?
        .install()?;
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
}

/// Checks `authorization: Bearer <token>` against the token table. Disabled
/// (everyone admitted) when no table is configured.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<TokenTable>>,
}

/// The authenticated edge, put in request extensions.
#[derive(Clone, Debug)]
pub struct EdgeIdentity(pub String);

impl Auth {
    pub fn new(tokens: Option<TokenTable>) -> Self {
        Self { tokens: tokens.map(Arc::new) }
    }

    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if self.tokens.is_none() {
            return Ok(req);
        }
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))?
            .to_str()
            .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
        let token = header.strip_prefix("Bearer ").ok_or_else(|| Status::unauthenticated("expected a bearer token"))?;
        if let Some(edge) = self.check_token(Some(token))? {
            req.extensions_mut().insert(edge);
        }
        Ok(req)
    }

    /// Checks a bare token (QUIC carries it in an auth frame). `Ok(None)`:
    /// authentication is off.
    pub fn check_token(&self, token: Option<&str>) -> Result<Option<EdgeIdentity>, Status> {
        let Some(tokens) = &self.tokens else { return Ok(None) };
        let token = token.ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let edge = tokens.check(token.trim()).ok_or_else(|| Status::unauthenticated("invalid token"))?;
        Ok(Some(EdgeIdentity(edge.to_string())))
    }
}
