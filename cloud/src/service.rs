//! The `SplitInference` gRPC service.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::future::{AbortHandle, Abortable};
use futures::StreamExt;
use offramp_common::codec;
use offramp_common::codec::echo;
use offramp_proto as pb;
use offramp_proto::split_inference_server::SplitInference;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::admission::{Admission, Ticket};
use crate::auth::Caller;
use crate::batcher::Batcher;
use crate::error::CloudError;
use crate::generation::Generation;
use crate::models::Registry;

/// Shared state of a running cloud.
pub struct CloudState {
    pub registry: Registry,
    pub batcher: Batcher,
    /// Which requests are taken on ([`crate::admission`]); shared with the
    /// early check in front of unary calls.
    pub admission: Arc<Admission>,
    pub max_payload_bytes: usize,
    /// Hidden-state encodings this cloud accepts (listed in the handshake).
    pub encodings: Vec<pb::Encoding>,
    /// Set on shutdown: new work is refused with `Unavailable`.
    pub draining: AtomicBool,
    /// Decoder sessions (empty when the cloud holds no decoder).
    pub generation: Arc<Generation>,
}

impl CloudState {
    /// The handshake answer: one model per answer, the first (clouds usually
    /// serve one).
    pub fn model_info(&self) -> Result<pb::ModelInfo, CloudError> {
        let mut info = self
            .registry
            .info(self.max_payload_bytes, &self.encodings)
            .into_iter()
            .next()
            .ok_or(CloudError::Unavailable("holding no classifier (its decoders answer GetDecoderInfo)"))?;
        if !self.generation.is_empty() {
            info.features.push(pb::FEATURE_GENERATION.to_string());
        }
        Ok(info)
    }

    /// Admits, validates, queues and computes one request from `caller`,
    /// within its own deadline (`timeout_us`) when it has one.
    pub async fn infer(&self, req: &pb::InferRequest, caller: &Caller) -> Result<pb::InferResponse, CloudError> {
        let deadline = (req.timeout_us > 0).then(|| Duration::from_micros(req.timeout_us));
        self.infer_admitted(req, caller, deadline, None).await
    }

    /// [`Self::infer`] for a request whose transport read its deadline
    /// itself (`grpc-timeout`) and may have admitted it already, before its
    /// message was decoded (`ticket`, [`crate::early`]).
    pub async fn infer_admitted(
        &self,
        req: &pb::InferRequest,
        caller: &Caller,
        deadline: Option<Duration>,
        ticket: Option<Ticket>,
    ) -> Result<pb::InferResponse, CloudError> {
        if self.draining.load(Ordering::Relaxed) {
            return Err(refused(CloudError::Unavailable("shutting down")));
        }
        if req.cancel {
            return Err(refused(CloudError::CancelOutsideStream));
        }
        let started = std::time::Instant::now();
        let ticket = match ticket {
            Some(t) => t,
            None => self.admission.admit(deadline).map_err(count_refusal)?,
        };
        let until = deadline.map(|d| (started + d, d.as_micros() as u64));
        let work = async {
            caller.check(req)?;
            self.compute(req, until).await
        };
        // A deadline the request carries itself (the stream, QUIC) is kept
        // here; a unary call's `grpc-timeout` by the gRPC rules layer in
        // front of every call (no second timer).
        let result = match until.filter(|_| req.timeout_us > 0) {
            Some((at, us)) => {
                tokio::time::timeout_at(at.into(), work).await.unwrap_or(Err(CloudError::DeadlineExceeded(us)))
            }
            None => work.await,
        };
        if !matches!(result, Err(CloudError::DeadlineExceeded(_))) {
            ticket.answered();
        }
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

    async fn compute(
        &self,
        req: &pb::InferRequest,
        deadline: Option<(std::time::Instant, u64)>,
    ) -> Result<pb::InferResponse, CloudError> {
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
        let done = self.batcher.submit(valid, deadline).await?;
        // The batcher refuses non-finite answers (as an overflow); this is the
        // last line: a NaN or infinite confidence never leaves the cloud.
        if !done.result.is_finite() {
            return Err(CloudError::Internal("the answer is not finite".into()));
        }
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

/// A request refused on arrival (before it was admitted): counted as its
/// outcome, logged at most at debug level (under overload there are many).
pub(crate) fn count_refusal(e: CloudError) -> CloudError {
    metrics::counter!("offramp_cloud_requests_total", "outcome" => format!("{:?}", e.code()), "exit" => "none")
        .increment(1);
    refused(e)
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

    async fn infer(&self, mut request: Request<pb::InferRequest>) -> Result<Response<pb::InferResponse>, Status> {
        let caller = Caller::of(&request);
        // Admitted (or not) with its deadline before its message was
        // decoded; without the early layer (a server built otherwise) it is
        // admitted here.
        let early = request.extensions_mut().remove::<crate::early::Admitted>();
        let deadline = early.as_ref().and_then(|a| a.deadline);
        let ticket = early.and_then(|a| a.take());
        let req = request.into_inner();
        let span = caller.span(&req, "grpc");
        async { Ok(Response::new(self.state()?.infer_admitted(&req, &caller, deadline, ticket).await?)) }
            .instrument(span)
            .await
    }

    type InferStreamStream = AnswerStream<Streaming<pb::InferRequest>>;

    async fn infer_stream(
        &self,
        request: Request<Streaming<pb::InferRequest>>,
    ) -> Result<Response<Self::InferStreamStream>, Status> {
        let caller = Caller::of(&request);
        let state = self.state()?.clone();
        Ok(Response::new(AnswerStream::new(state, caller, request.into_inner())))
    }
}

/// The `SplitGeneration` service (decoder sessions).
#[derive(Clone, Default)]
pub struct GenerationService {
    pub loaded: Arc<std::sync::OnceLock<Arc<CloudState>>>,
}

impl GenerationService {
    fn generation(&self) -> Result<Arc<Generation>, Status> {
        generation(&self.loaded)
    }
}

/// The decoder sessions of a loaded cloud that is not draining (gRPC and
/// QUIC alike).
pub fn generation(loaded_state: &std::sync::OnceLock<Arc<CloudState>>) -> Result<Arc<Generation>, Status> {
    let state = loaded(loaded_state)?;
    if state.draining.load(Ordering::Relaxed) {
        return Err(CloudError::Unavailable("shutting down").into());
    }
    if state.generation.is_empty() {
        return Err(Status::unimplemented("this cloud holds no decoder (start it with --model <decoder bundle>)"));
    }
    Ok(state.generation.clone())
}

#[tonic::async_trait]
impl pb::split_generation_server::SplitGeneration for GenerationService {
    async fn get_decoder_info(
        &self,
        _request: Request<pb::ModelInfoRequest>,
    ) -> Result<Response<pb::DecoderInfo>, Status> {
        Ok(Response::new(self.generation()?.info()))
    }

    type GenerateStream = ReceiverStream<Result<pb::GenerateResponse, Status>>;

    async fn generate(
        &self,
        request: Request<Streaming<pb::GenerateRequest>>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let caller = Caller::of(&request);
        let generation = self.generation()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(generation.serve(caller, request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Answers every request of an `InferStream` call, each in its own response
/// (a bad request fails only its own). When the inbound stream itself breaks
/// (a message that cannot be decoded, one over the size limit), no message
/// boundary is left to carry on from: reading stops, every request received
/// before is still answered, and the response stream then ends with the
/// status saying why ([`broken_stream`]), never with OK.
///
/// It is the response body itself: the HTTP/2 stream's own task polls it,
/// reading requests and driving their answers in one place, so an answer
/// goes from the compute thread's wake-up straight to HTTP/2 with no task
/// or channel between (a spawned reader and a response channel cost a task
/// wake-up per answer, on a 2-core machine tens of microseconds). When the
/// client stops reading, HTTP/2 flow control stops polling it, and reading
/// requests stops with it.
///
/// A `cancel` message withdraws the pending request with its id: dropping
/// its future drops it from the batcher's queue before compute, and neither
/// it nor the cancel is answered. (Ids should be unique among a stream's
/// requests in flight, as the edge's are; with a repeated id a cancel may
/// miss.)
pub struct AnswerStream<S> {
    state: Arc<CloudState>,
    caller: Caller,
    /// `None` once the inbound stream ended or broke.
    incoming: Option<S>,
    /// Each pending answer with its request id; `None` when withdrawn.
    pending: futures::stream::FuturesUnordered<Pending>,
    /// What withdraws each pending request, by id.
    withdraw: HashMap<u64, AbortHandle>,
    received: usize,
    /// Why the inbound stream broke, sent once everything before is answered.
    broken: Option<Status>,
}

impl<S> AnswerStream<S> {
    pub fn new(state: Arc<CloudState>, caller: Caller, incoming: S) -> Self {
        Self {
            state,
            caller,
            incoming: Some(incoming),
            pending: futures::stream::FuturesUnordered::new(),
            withdraw: HashMap::new(),
            received: 0,
            broken: None,
        }
    }
}

impl<S> futures::Stream for AnswerStream<S>
where
    S: futures::Stream<Item = Result<pb::InferRequest, Status>> + Unpin,
{
    type Item = Result<pb::InferStreamResponse, Status>;

    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // Take in every request that has arrived.
        while let Some(incoming) = this.incoming.as_mut() {
            match incoming.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(req))) if req.cancel => {
                    if let Some(handle) = this.withdraw.remove(&req.request_id) {
                        handle.abort();
                    }
                }
                Poll::Ready(Some(Ok(req))) => {
                    this.received += 1;
                    let id = req.request_id;
                    let (handle, registration) = AbortHandle::new_pair();
                    this.withdraw.insert(id, handle);
                    let answer = Abortable::new(answer_one(this.state.clone(), this.caller.clone(), req), registration);
                    this.pending.push(Box::pin(async move { (id, answer.await.ok()) }));
                }
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(%status, received = this.received, "request stream broken by the client");
                    this.broken = Some(broken_stream(&status, this.received));
                    this.incoming = None;
                }
                Poll::Ready(None) => this.incoming = None,
                Poll::Pending => break,
            }
        }
        loop {
            return match this.pending.poll_next_unpin(cx) {
                Poll::Ready(Some((id, answer))) => {
                    this.withdraw.remove(&id);
                    match answer {
                        Some(answer) => Poll::Ready(Some(Ok(answer))),
                        None => continue, // withdrawn
                    }
                }
                // Nothing pending and nothing more to read: the end (with
                // the reason, if reading broke).
                Poll::Ready(None) if this.incoming.is_none() => Poll::Ready(this.broken.take().map(Err)),
                Poll::Ready(None) | Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// A stream request's answer with its id (`None`: withdrawn by a cancel).
type Pending = futures::future::BoxFuture<'static, (u64, Option<pb::InferStreamResponse>)>;

/// One request of a stream, answered in its own response.
async fn answer_one(state: Arc<CloudState>, caller: Caller, req: pb::InferRequest) -> pb::InferStreamResponse {
    let span = caller.span(&req, "grpc-stream");
    async move {
        let id = req.request_id;
        // Within the request's own deadline (`timeout_us`): past it the
        // caller has stopped waiting, and the request is dropped from the
        // batcher's queue before compute.
        let result = match state.infer(&req, &caller).await {
            Ok(r) => pb::infer_stream_response::Result::Response(r),
            Err(e) => pb::infer_stream_response::Result::Error(offramp_transport::status::to_error(&e.into())),
        };
        pb::InferStreamResponse { request_id: id, result: Some(result) }
    }
    .instrument(span)
    .await
}

/// The status that ends a response stream whose inbound side broke after
/// `received` good requests (all answered before it).
///
/// What the client sent wrong is `InvalidArgument`, as for every other bad
/// request here: a message over the size limit (tonic says `OutOfRange`; the
/// README promises `InvalidArgument` for oversized payloads) and one that
/// cannot be decoded (tonic says `Internal`, which an edge would read as "the
/// cloud failed" and retry elsewhere). Anything else (the connection failing)
/// keeps its code.
pub fn broken_stream(status: &Status, received: usize) -> Status {
    let (code, what) = match status.code() {
        Code::OutOfRange => (Code::InvalidArgument, "is over the size limit"),
        Code::Internal => (Code::InvalidArgument, "cannot be decoded"),
        code => (code, "could not be read"),
    };
    Status::new(
        code,
        format!(
            "request stream broken: message {} {what} ({}); the {received} requests before it were answered, \
             nothing after it was read",
            received + 1,
            echo::text_within(status.message(), 256)
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt;
    use offramp_proto::split_inference_client::SplitInferenceClient;

    use super::*;
    use crate::config::BatchConfig;
    use crate::models::testing::{request, state, tiny};
    use crate::{CloudConfig, CloudHandle};

    /// A hidden state at split 3 (the input of fc1, 392 values).
    fn at3(value: f32) -> pb::InferRequest {
        request(3, &[value; 392])
    }

    #[tokio::test]
    async fn an_overflowing_hidden_state_is_refused_naming_the_block() {
        let state = state();
        let caller = Caller::default();
        // Large but harmless: a finite answer.
        let ok = state.infer(&at3(1e30), &caller).await.unwrap();
        assert!(ok.confidence.is_finite() && ok.probabilities.iter().all(|p| p.is_finite()), "{ok:?}");
        // Finite, but too large for fc1's weights: the answer would be NaN.
        let e = state.infer(&at3(f32::MAX), &caller).await.unwrap_err();
        assert!(matches!(e, CloudError::Overflow { split: 3, .. }), "{e:?}");
        let s = Status::from(e);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("overflowed the network at block 3 (fc1)"), "{}", s.message());
        // The cloud still answers.
        assert_eq!(state.infer(&at3(0.5), &caller).await.unwrap().exit, 2);
    }

    #[tokio::test]
    async fn an_overflow_fails_only_its_own_request_in_a_batch() {
        let mut state = state();
        state.batcher = Batcher::start(BatchConfig::try_new(8, Duration::from_millis(50), 64, 1).unwrap()).unwrap();
        let caller = Caller::default();
        let (bad, good) = (at3(f32::MAX), at3(0.5));
        let (bad, good) = tokio::join!(state.infer(&bad, &caller), state.infer(&good, &caller));
        assert!(matches!(bad, Err(CloudError::Overflow { .. })), "{bad:?}");
        let good = good.unwrap();
        assert_eq!(good.batch_size, 2, "computed in one batch");
        assert!(good.confidence.is_finite());
    }

    #[tokio::test]
    async fn a_request_whose_deadline_passes_in_the_queue_is_not_computed() {
        let mut state = state();
        // A batch waits 100 ms for company: the first request's 20 ms pass
        // in the queue.
        state.batcher = Batcher::start(BatchConfig::try_new(8, Duration::from_millis(100), 64, 1).unwrap()).unwrap();
        let caller = Caller::default();
        let mut late = at3(0.5);
        late.timeout_us = 20_000;
        let on_time = at3(0.5);
        let (late, on_time) = tokio::join!(state.infer(&late, &caller), state.infer(&on_time, &caller));
        assert!(matches!(late, Err(CloudError::DeadlineExceeded(20_000))), "{late:?}");
        assert_eq!(on_time.unwrap().batch_size, 1, "computed without the late one");
        assert_eq!(state.admission.in_flight(), 0, "both places given back");
    }

    #[tokio::test]
    async fn a_broken_request_stream_answers_what_it_received_then_ends_with_the_reason() {
        let cloud = Arc::new(state());
        let mut bad = at3(0.5);
        bad.request_id = 2;
        bad.split = 42;
        let mut good = at3(0.5);
        good.request_id = 3;
        let mut never = at3(0.5);
        never.request_id = 4;
        let incoming = futures::stream::iter(vec![
            Ok(at3(0.5)),
            Ok(bad),
            Ok(good),
            Err(Status::internal("failed to decode Protobuf message: invalid wire type")),
            Ok(never),
        ]);
        let mut answers = AnswerStream::new(cloud.clone(), Caller::default(), incoming);
        let mut answered = Vec::new();
        let mut end = None;
        while let Some(item) = answers.next().await {
            match item {
                Ok(r) => {
                    assert!(end.is_none(), "an answer after the final status");
                    answered
                        .push((r.request_id, matches!(r.result, Some(pb::infer_stream_response::Result::Response(_)))));
                }
                Err(s) => end = Some(s),
            }
        }
        answered.sort();
        assert_eq!(answered, vec![(1, true), (2, false), (3, true)], "every request received before is answered");
        let end = end.expect("the stream ends with a status, not OK");
        assert_eq!(end.code(), Code::InvalidArgument);
        assert!(end.message().contains("message 4 cannot be decoded"), "{}", end.message());
        assert!(end.message().contains("the 3 requests before it were answered"), "{}", end.message());

        // A clean end is still OK (no status item).
        let incoming = futures::stream::iter(vec![Ok(at3(0.5))]);
        let mut answers = AnswerStream::new(cloud, Caller::default(), incoming);
        assert!(answers.next().await.unwrap().is_ok());
        assert!(answers.next().await.is_none());
    }

    #[test]
    fn broken_stream_statuses_are_precise() {
        let s = broken_stream(
            &Status::out_of_range(
                "Error, decoded message length too large: found 99999 bytes, the limit is: 100 bytes",
            ),
            2,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("message 3 is over the size limit") && s.message().contains("found 99999"));
        let s = broken_stream(&Status::unavailable("connection reset"), 0);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(broken_stream(&Status::internal("x".repeat(1 << 20)), 0).message().len() < 600);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_oversized_stream_message_ends_the_stream_with_invalid_argument_after_the_answers() {
        let mut config = CloudConfig::new(tiny());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.max_payload = 4096;
        let cloud = CloudHandle::start(config).await.unwrap();
        let mut client = SplitInferenceClient::connect(cloud.url()).await.unwrap();
        let mut first = at3(0.5);
        first.request_id = 1;
        let mut second = at3(0.5);
        second.request_id = 2;
        // Over the message limit (max payload + 64 KiB).
        let mut huge = at3(0.5);
        huge.request_id = 3;
        huge.model_id = "x".repeat(200 << 10);
        let mut responses =
            client.infer_stream(futures::stream::iter(vec![first, second, huge])).await.unwrap().into_inner();
        let mut ids = Vec::new();
        let mut end = None;
        while let Some(item) = responses.next().await {
            match item {
                Ok(r) => ids.push(r.request_id),
                Err(s) => {
                    end = Some(s);
                    break;
                }
            }
        }
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
        let end = end.expect("a non-OK status ends the stream");
        assert_eq!(end.code(), Code::InvalidArgument, "{end:?}");
        assert!(end.message().contains("message 3 is over the size limit"), "{}", end.message());
        // The cloud serves on.
        assert_eq!(client.infer(at3(0.5)).await.unwrap().into_inner().exit, 2);
        cloud.stop().await.unwrap();
    }
}
