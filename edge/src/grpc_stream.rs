//! Offloads over one persistent `InferStream` per endpoint
//! (`--transport grpc-stream`): no HTTP/2 stream is opened per request.
//!
//! Requests from every caller share the stream; each gets a wire id of this
//! client's own (callers' ids may repeat) and waits on its own reply slot,
//! filled by one reader task that routes answers by id. The cloud answers a
//! stream's requests concurrently, in any order.
//!
//! - **Deadlines.** Each request carries `timeout_us`: past it the cloud
//!   drops the request (before compute if it is still queued) and answers
//!   `DeadlineExceeded`; the edge stops waiting at the same moment.
//! - **A caller that goes away** (its future dropped: a local client hung
//!   up, a shadow request given up) withdraws its request with a `cancel`
//!   message, so the cloud drops it before compute if it is still queued.
//! - **A bad request** fails only its own answer (the cloud's per-request
//!   error becomes that request's status).
//! - **A broken stream** (the cloud gone, the connection reset, the stream
//!   ended) fails every request waiting on it with the stream's status
//!   (`Unavailable` when it just ended), so each caller's offloader fails
//!   over at once, within its deadline; the next request opens a new stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offramp_proto as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::transport::GrpcClient;

/// Requests queued towards the stream before senders wait.
const QUEUE: usize = 256;

type Reply = oneshot::Sender<Result<pb::InferResponse, Status>>;

/// One open stream.
struct Live {
    tx: mpsc::Sender<pb::InferRequest>,
    pending: Mutex<HashMap<u64, Reply>>,
    broken: AtomicBool,
}

impl Live {
    /// Marks the stream broken and fails everything waiting on it.
    fn break_with(&self, status: &Status) {
        self.broken.store(true, Ordering::Release);
        let waiting: Vec<Reply> = self.pending.lock().expect("pending lock").drain().map(|(_, r)| r).collect();
        for reply in waiting {
            let _ = reply.send(Err(Status::new(status.code(), status.message().to_string())));
        }
    }
}

/// A persistent `InferStream` to one endpoint, opened on first use and
/// reopened after it breaks.
pub struct StreamClient {
    client: GrpcClient,
    live: tokio::sync::Mutex<Option<Arc<Live>>>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for StreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamClient").finish_non_exhaustive()
    }
}

impl StreamClient {
    pub fn new(client: GrpcClient) -> Self {
        Self { client, live: tokio::sync::Mutex::new(None), next_id: AtomicU64::new(1) }
    }

    /// The open stream, or a new one (waiting at most until `deadline`).
    async fn live(&self, deadline: Instant) -> Result<Arc<Live>, Status> {
        // Another caller may be opening the stream: wait for it only as long
        // as this request's own deadline allows.
        let mut current = tokio::time::timeout_at(deadline.into(), self.live.lock())
            .await
            .map_err(|_| Status::deadline_exceeded("offload deadline passed waiting for the stream to open"))?;
        if let Some(live) = current.as_ref().filter(|l| !l.broken.load(Ordering::Acquire)) {
            return Ok(live.clone());
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut client = self.client.clone();
        let open = client.infer_stream(tonic::Request::new(ReceiverStream::new(rx)));
        let response = match tokio::time::timeout_at(deadline.into(), open).await {
            Ok(r) => r?,
            Err(_) => return Err(Status::deadline_exceeded("offload deadline passed opening the stream")),
        };
        let live = Arc::new(Live { tx, pending: Mutex::new(HashMap::new()), broken: AtomicBool::new(false) });
        tokio::spawn(read_answers(response.into_inner(), Arc::downgrade(&live)));
        *current = Some(live.clone());
        Ok(live)
    }

    /// One request over the stream, answered by `timeout` from now.
    pub async fn infer(&self, mut req: pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        let deadline = Instant::now() + timeout;
        let live = self.live(deadline).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let caller_id = std::mem::replace(&mut req.request_id, id);
        req.timeout_us = deadline.saturating_duration_since(Instant::now()).as_micros().max(1) as u64;
        let (reply, answer) = oneshot::channel();
        live.pending.lock().expect("pending lock").insert(id, reply);
        // The stream may have broken since it was handed out: its reader
        // drained the waiters already and would never answer this one.
        if live.broken.load(Ordering::Acquire) {
            live.pending.lock().expect("pending lock").remove(&id);
            return Err(Status::unavailable("the offload stream broke"));
        }
        // From here until the answer, a caller that goes away withdraws it
        // (a cancel for a request that never left is ignored by the cloud).
        let mut withdraw = Withdraw { live: &live, id, armed: true };
        // A request that cannot be queued because the stream's writer is
        // gone: the stream is broken. A full queue (HTTP/2 flow control
        // holding the writer back) is waited on within the deadline.
        match tokio::time::timeout_at(deadline.into(), live.tx.send(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                withdraw.armed = false;
                let status = Status::unavailable("the offload stream closed");
                live.break_with(&status);
                return Err(status);
            }
            Err(_) => {
                withdraw.armed = false;
                live.pending.lock().expect("pending lock").remove(&id);
                return Err(Status::deadline_exceeded("offload deadline passed queueing on the stream"));
            }
        }
        let answer = tokio::time::timeout_at(deadline.into(), answer).await;
        // Answered, failed or past its deadline (which the cloud keeps too):
        // nothing to withdraw.
        withdraw.armed = false;
        match answer {
            Ok(Ok(Ok(mut r))) => {
                r.request_id = caller_id;
                Ok(r)
            }
            Ok(Ok(Err(status))) => Err(status),
            Ok(Err(_)) => Err(Status::unavailable("the offload stream broke")),
            Err(_) => {
                live.pending.lock().expect("pending lock").remove(&id);
                Err(Status::deadline_exceeded("offload deadline passed"))
            }
        }
    }
}

/// Withdraws a request whose caller went away before its answer: forgets
/// its reply slot and tells the cloud (if the queue towards the stream has
/// room; if not, the cloud still drops it at its deadline).
struct Withdraw<'a> {
    live: &'a Live,
    id: u64,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.live.pending.lock().expect("pending lock").remove(&self.id);
        let cancel = pb::InferRequest { request_id: self.id, cancel: true, ..Default::default() };
        if self.live.tx.try_send(cancel).is_err() {
            tracing::debug!(id = self.id, "offload stream full or closed: the withdrawn request ends at its deadline");
        }
    }
}

/// Routes the stream's answers to their callers until it ends, then fails
/// whatever still waits.
async fn read_answers(mut inbound: tonic::Streaming<pb::InferStreamResponse>, live: std::sync::Weak<Live>) {
    let status = loop {
        let msg = inbound.message().await;
        let Some(live) = live.upgrade() else { return };
        match msg {
            Ok(Some(m)) => {
                let Some(reply) = live.pending.lock().expect("pending lock").remove(&m.request_id) else {
                    // Its caller gave up (deadline): nobody to tell.
                    continue;
                };
                let result = match m.result {
                    Some(pb::infer_stream_response::Result::Response(r)) => Ok(r),
                    // With its retry hint, as a unary call's trailers carry it.
                    Some(pb::infer_stream_response::Result::Error(e)) => Err(offramp_transport::status::from_error(e)),
                    None => Err(Status::internal("the cloud's stream answer carried no result")),
                };
                let _ = reply.send(result);
            }
            Ok(None) => break Status::unavailable("the cloud ended the offload stream"),
            Err(status) => break status,
        }
    };
    tracing::debug!(%status, "offload stream broken");
    if let Some(live) = live.upgrade() {
        live.break_with(&status);
    }
}
