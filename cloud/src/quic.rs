//! The QUIC transport of the cloud, beside gRPC: the same protobuf messages,
//! one bidirectional stream per request, framed as [`offramp_transport::frame`]
//! says. TLS 1.3 (rustls, ring) with the gRPC certificate files
//! (`--tls-cert`, `--tls-key`, `--tls-client-ca` for mutual TLS) or, for local
//! runs and tests, a self-signed certificate made at start (`--self-signed`,
//! written with `--cert-out` for the edge's `--ca`); the settings themselves
//! are [`offramp_transport::quic`]'s, shared with the edge.
//!
//! Every request goes through [`CloudState::infer`], so validation, the
//! fingerprint check, size caps and the batcher are the gRPC service's own; a
//! bad frame or request gets an error frame on its stream and nothing else is
//! disturbed. Bearer tokens travel in an auth frame ahead of the request and
//! are checked with the same [`Auth`] as gRPC's interceptor. A client that
//! stops its stream before the answer withdraws the request (dropped before
//! compute if still queued), as a dropped unary call does over gRPC.
//!
//! A stream that starts with a `GenerateRequest` frame is a decoder session:
//! its frames feed [`crate::generation::Generation::serve`], the very code
//! behind the gRPC `Generate` stream, and its answers go back as
//! `GenerateResponse` frames (an error frame ends the session).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use offramp_proto as pb;
use offramp_transport::frame::{self as wire, error_frame, wire_status, Kind};
use tokio::sync::watch;
use tonic::Status;
use tracing::Instrument;

use crate::auth::{Auth, Caller};
use crate::error::CloudError;
use crate::service::CloudState;

/// How long a client may take to send its request on a stream.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cloud waits for the client to acknowledge an answer.
const ANSWER_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent request streams per connection (more wait for credit).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Idle timeout the cloud offers (edges ask for shorter ones and send keep-alives).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every stream handler needs.
pub struct StreamContext {
    pub loaded: Arc<OnceLock<Arc<CloudState>>>,
    pub auth: Auth,
    /// Largest request frame accepted.
    pub max_frame: usize,
    in_flight: AtomicUsize,
}

impl StreamContext {
    pub fn new(loaded: Arc<OnceLock<Arc<CloudState>>>, auth: Auth, max_frame: usize) -> Self {
        Self { loaded, auth, max_frame, in_flight: AtomicUsize::new(0) }
    }
}

/// Accepts connections until `stop` turns true, then refuses new ones, lets
/// open requests finish for up to `drain`, and closes every connection.
pub async fn run(endpoint: quinn::Endpoint, ctx: Arc<StreamContext>, mut stop: watch::Receiver<bool>, drain: Duration) {
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    tokio::spawn(connection(incoming, ctx.clone()));
                }
                None => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    endpoint.set_server_config(None);
    let started = tokio::time::Instant::now();
    while ctx.in_flight.load(Ordering::Acquire) > 0 && started.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let left = ctx.in_flight.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(left, timeout = ?drain, "QUIC drain timed out; dropping in-flight requests");
    }
    endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn connection(incoming: quinn::Incoming, ctx: Arc<StreamContext>) {
    let peer = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "QUIC handshake failed");
            return;
        }
    };
    tracing::debug!(%peer, "QUIC connection open");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                ctx.in_flight.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(stream(ctx.clone(), send, recv));
            }
            Err(e) => {
                tracing::debug!(%peer, reason = %e, "QUIC connection closed");
                return;
            }
        }
    }
}

/// A parsed request.
enum Request {
    Info,
    DecoderInfo,
    Infer(Box<pb::InferRequest>, Caller),
    /// The first message of a generation session; the rest follow on the stream.
    Generate(Box<pb::GenerateRequest>, Caller),
}

/// Decrements the in-flight count when a stream handler ends, however it ends.
struct InFlight(Arc<StreamContext>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn stream(ctx: Arc<StreamContext>, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let _guard = InFlight(ctx.clone());
    let request = match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_request(&mut recv, &ctx)).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!("no request within {REQUEST_READ_TIMEOUT:?}"))),
    };
    let answer = match request {
        Ok(Request::Info) => match crate::service::loaded(&ctx.loaded).and_then(|s| s.model_info()) {
            Ok(info) => wire::message(Kind::ModelInfo, &info),
            Err(e) => error_frame(&e.into()),
        },
        Ok(Request::DecoderInfo) => match crate::service::generation(&ctx.loaded) {
            Ok(g) => wire::message(Kind::DecoderInfo, &g.info()),
            Err(status) => error_frame(&status),
        },
        Ok(Request::Generate(first, caller)) => {
            session(&ctx, *first, caller, send, recv).await;
            return;
        }
        Ok(Request::Infer(req, caller)) => {
            let answer = async { crate::service::loaded(&ctx.loaded)?.infer(&req, &caller).await };
            // A client that goes away (its stream stopped or its connection
            // lost) withdraws the request: dropping it here drops it from
            // the batcher's queue before compute.
            let withdrawn = send.stopped();
            tokio::select! {
                biased;
                answer = answer.instrument(caller.span(&req, "quic")) => match answer {
                    Ok(r) => wire::message(Kind::InferResponse, &r),
                    Err(e) => error_frame(&e.into()),
                },
                _ = withdrawn => {
                    tracing::debug!(id = req.request_id, "QUIC request withdrawn by its client");
                    return;
                }
            }
        }
        Err(status) => {
            tracing::debug!(%status, "bad QUIC request stream");
            // Whatever else the client sends on this stream is not wanted.
            let _ = recv.stop(0u32.into());
            error_frame(&status)
        }
    };
    if send.write_chunk(answer).await.is_err() {
        return; // the client went away (deadline passed, connection lost)
    }
    let _ = send.finish();
    // Keep the stream (and the drain count) until the answer is acknowledged.
    let _ = tokio::time::timeout(ANSWER_ACK_TIMEOUT, send.stopped()).await;
}

/// Reads an optional auth frame and one request frame.
async fn read_request(recv: &mut quinn::RecvStream, ctx: &StreamContext) -> Result<Request, Status> {
    let mut token: Option<String> = None;
    loop {
        let frame = wire::read_frame(recv, ctx.max_frame)
            .await
            .map_err(|e| wire_status(&e))?
            .ok_or_else(|| Status::invalid_argument("the stream ended before a request frame"))?;
        match frame.kind {
            Kind::Auth if token.is_none() => token = Some(frame.token().map_err(|e| wire_status(&e))?.to_string()),
            Kind::Auth => return Err(Status::invalid_argument("more than one auth frame on a stream")),
            Kind::ModelInfoRequest | Kind::InferRequest | Kind::DecoderInfoRequest | Kind::GenerateRequest => {
                let caller = Caller::new(ctx.auth.check_token(token.as_deref())?);
                let bad = |e: wire::WireError| wire_status(&e);
                return match frame.kind {
                    Kind::InferRequest => {
                        // Refused before its message is decoded when the
                        // cloud is past its admission target already.
                        if let Some(state) = ctx.loaded.get() {
                            if let Err(r) = state.admission.check(None) {
                                return Err(crate::service::count_refusal(CloudError::OverBudget(r)).into());
                            }
                        }
                        Ok(Request::Infer(Box::new(frame.decode().map_err(bad)?), caller))
                    }
                    Kind::GenerateRequest => Ok(Request::Generate(Box::new(frame.decode().map_err(bad)?), caller)),
                    Kind::DecoderInfoRequest => {
                        frame.decode::<pb::ModelInfoRequest>().map_err(bad)?;
                        Ok(Request::DecoderInfo)
                    }
                    _ => {
                        frame.decode::<pb::ModelInfoRequest>().map_err(bad)?;
                        Ok(Request::Info)
                    }
                };
            }
            other => return Err(Status::invalid_argument(format!("a client may not send a {other:?} frame"))),
        }
    }
}

/// One generation session on a QUIC stream: the frames after `first` are
/// the session's messages, the answers go back as frames, and the session
/// ends when either side finishes its half, the session fails (an error
/// frame says why), or the edge stops the stream.
async fn session(
    ctx: &StreamContext,
    first: pb::GenerateRequest,
    caller: Caller,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let generation = match crate::service::generation(&ctx.loaded) {
        Ok(g) => g,
        Err(status) => {
            let _ = send.write_chunk(error_frame(&status)).await;
            let _ = send.finish();
            return;
        }
    };
    let max_frame = ctx.max_frame;
    let rest = futures::stream::unfold(Some(recv), move |recv| async move {
        let mut recv = recv?;
        match wire::read_frame(&mut recv, max_frame).await {
            Ok(None) => None,
            Ok(Some(f)) if f.kind == Kind::GenerateRequest => {
                Some((f.decode::<pb::GenerateRequest>().map_err(|e| wire_status(&e)), Some(recv)))
            }
            Ok(Some(f)) => {
                let _ = recv.stop(0u32.into());
                let status = Status::invalid_argument(format!("a {:?} frame inside a generation session", f.kind));
                Some((Err(status), None))
            }
            Err(e) => {
                let _ = recv.stop(0u32.into());
                Some((Err(wire_status(&e)), None))
            }
        }
    });
    let inbound = Box::pin(futures::StreamExt::chain(futures::stream::once(async { Ok(first) }), rest));
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let serving = tokio::spawn(generation.serve(caller, inbound, tx));
    loop {
        tokio::select! {
            answer = rx.recv() => {
                let frame = match answer {
                    Some(Ok(r)) => wire::message(Kind::GenerateResponse, &r),
                    Some(Err(status)) => error_frame(&status),
                    None => break,
                };
                let last = frame.first() == Some(&(Kind::Error as u8));
                if send.write_chunk(frame).await.is_err() || last {
                    break;
                }
            }
            _ = send.stopped() => {
                tracing::debug!("QUIC generation session withdrawn by its edge");
                serving.abort();
                return;
            }
        }
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(ANSWER_ACK_TIMEOUT, send.stopped()).await;
}
