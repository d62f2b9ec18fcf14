//! The `SplitInference` gRPC service.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use offramp_common::codec;
use offramp_proto as pb;
use offramp_proto::split_inference_server::SplitInference;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::auth::Caller;
use crate::batcher::Batcher;
use crate::error::CloudError;
use crate::models::Registry;

/// Shared state of a running cloud.
pub struct CloudState {
    pub registry: Registry,
    pub batcher: Batcher,
    pub max_payload_bytes: usize,
    /// Hidden-state encodings this cloud accepts (listed in the handshake).
    pub encodings: Vec<pb::Encoding>,
    /// Set on shutdown: new work is refused with `Unavailable`.
    pub draining: AtomicBool,
}

impl CloudState {
    /// The handshake answer: one model per answer, the first (clouds usually
    /// serve one).
    pub fn model_info(&self) -> Result<pb::ModelInfo, CloudError> {
        self.registry
            .info(self.max_payload_bytes, &self.encodings)
            .into_iter()
            .next()
            .ok_or(CloudError::Unavailable("holding no model"))
    }

    /// Validates, queues and computes one request from `caller`.
    pub async fn infer(&self, req: &pb::InferRequest, caller: &Caller) -> Result<pb::InferResponse, CloudError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(refused(CloudError::Unavailable("shutting down")));
        }
        let started = std::time::Instant::now();
        let result = match caller.check(req) {
            Ok(()) => self.compute(req).await,
            Err(e) => Err(e),
        };
        let (outcome, exit) = match &result {
            Ok(r) => ("ok".to_string(), r.exit.to_string()),
            Err(e) => (format!("{:?}", e.code()), "none".to_string()),
        };
        metrics::counter!("offramp_cloud_requests_total", "outcome" => outcome, "exit" => exit).increment(1);
        metrics::histogram!("offramp_cloud_request_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("offramp_cloud_queue_depth").set(self.batcher.in_flight() as f64);
        if let Some(t) = &req.hidden {
            metrics::counter!("offramp_cloud_bytes_received_total").increment(t.data.len() as u64);
        }
        if let Ok(r) = &result {
            metrics::counter!("offramp_cloud_bytes_sent_total").increment(prost::Message::encoded_len(r) as u64);
        }
        result.map_err(refused)
    }

    async fn compute(&self, req: &pb::InferRequest) -> Result<pb::InferResponse, CloudError> {
        if let Some(t) = &req.hidden {
            if let Ok(e) = pb::Encoding::try_from(t.encoding) {
                if e != pb::Encoding::Unspecified && !self.encodings.contains(&e) {
                    return Err(CloudError::EncodingNotAccepted {
                        got: codec::encoding_name(e),
                        accepted: self.encodings.iter().map(|&e| codec::encoding_name(e)).collect(),
                    });
                }
            }
        }
        let valid = self.registry.validate(req, self.max_payload_bytes)?;
        let done = self.batcher.submit(valid).await?;
        metrics::histogram!("offramp_cloud_queue_seconds").record(done.queue_us as f64 / 1e6);
        metrics::histogram!("offramp_cloud_compute_seconds").record(done.compute_us as f64 / 1e6);
        Ok(pb::InferResponse {
            request_id: req.request_id,
            prediction: done.result.prediction as u32,
            exit: done.result.exit as u32,
            confidence: done.result.confidence,
            probabilities: if req.want_probabilities { done.result.probabilities } else { vec![] },
            queue_us: done.queue_us,
            compute_us: done.compute_us,
            batch_size: done.batch_size as u32,
        })
    }
}

/// The gRPC service. Answers `Unavailable` until the models are loaded.
#[derive(Clone, Default)]
pub struct CloudService {
    pub loaded: Arc<std::sync::OnceLock<Arc<CloudState>>>,
}

impl CloudService {
    fn state(&self) -> Result<&Arc<CloudState>, Status> {
        Ok(loaded(&self.loaded)?)
    }
}

/// Every refused request is logged once, whichever server it came through.
fn refused(e: CloudError) -> CloudError {
    tracing::debug!(error = %e, "request refused");
    e
}

/// The loaded state; `Unavailable` while the models are still loading.
pub(crate) fn loaded(cell: &std::sync::OnceLock<Arc<CloudState>>) -> Result<&Arc<CloudState>, CloudError> {
    cell.get().ok_or(CloudError::Unavailable("loading its models"))
}

#[tonic::async_trait]
impl SplitInference for CloudService {
    async fn get_model_info(&self, request: Request<pb::ModelInfoRequest>) -> Result<Response<pb::ModelInfo>, Status> {
        let _ = request;
        Ok(Response::new(self.state()?.model_info()?))
    }

    async fn infer(&self, request: Request<pb::InferRequest>) -> Result<Response<pb::InferResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let span = caller.span(&req, "grpc");
        async { Ok(Response::new(self.state()?.infer(&req, &caller).await?)) }.instrument(span).await
    }

    type InferStreamStream = ReceiverStream<Result<pb::InferStreamResponse, Status>>;

    async fn infer_stream(
        &self,
        request: Request<Streaming<pb::InferRequest>>,
    ) -> Result<Response<Self::InferStreamStream>, Status> {
        let caller = Caller::of(&request);
        let mut incoming = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let state = self.state()?.clone();
        tokio::spawn(async move {
            let mut pending = futures::stream::FuturesUnordered::new();
            loop {
                tokio::select! {
                    msg = incoming.next() => match msg {
                        Some(Ok(req)) => {
                            let (state, caller) = (state.clone(), caller.clone());
                            let span = caller.span(&req, "grpc-stream");
                            pending.push(async move {
                                let id = req.request_id;
                                let result = match state.infer(&req, &caller).await {
                                    Ok(r) => pb::infer_stream_response::Result::Response(r),
                                    Err(e) => {
                                        let s: Status = e.into();
                                        pb::infer_stream_response::Result::Error(pb::Error { code: s.code() as i32, message: s.message().to_string() })
                                    }
                                };
                                pb::InferStreamResponse { request_id: id, result: Some(result) }
                            }.instrument(span));
                        }
                        Some(Err(status)) => {
                            tracing::debug!(%status, "stream broken by the client");
                            break;
                        }
                        None => break,
                    },
                    Some(resp) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            while let Some(resp) = pending.next().await {
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
