//! One decoder session on one cloud endpoint, over any transport: the
//! decoder handshake ([`super::handshake::check_decoder`]), the session's
//! stream (gRPC `Generate`, or a QUIC stream of the same messages), and the
//! answers routed back to the steps that asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use offramp_proto as pb;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tonic::Code;

use super::handshake::{decoder_handshake, SessionSpec};
use super::{Endpoint, LinkError};

/// An answer to a step: the cloud's token, or why there is none.
pub type StepReply = Result<pb::StepResult, LinkError>;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<StepReply>>>>;

/// A live session on one endpoint.
pub struct CloudSession {
    pub endpoint: String,
    /// What the cloud offers: most positions per step, truncated sampling.
    pub offer: super::handshake::CloudOffer,
    tx: mpsc::UnboundedSender<pb::GenerateRequest>,
    pending: Pending,
    broken: Arc<Mutex<Option<LinkError>>>,
    bytes_down: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for CloudSession {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl CloudSession {
    /// Handshake (the cloud must hold the expected layers `K..N` and accept
    /// the encoding), then opens a session. Bounded by `timeout`. A failed
    /// handshake check is [`LinkError::Incompatible`] (never heals).
    pub async fn open(ep: &Endpoint, spec: &SessionSpec, timeout: Duration) -> Result<Self, LinkError> {
        let url = ep.url.as_str();
        let work = async {
            let offer = decoder_handshake(ep, spec, timeout).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            tx.send(pb::GenerateRequest {
                msg: Some(pb::generate_request::Msg::Open(pb::OpenSession {
                    model_id: spec.model_id.clone(),
                    model_fingerprint: spec.cloud_fingerprint.clone(),
                    split: spec.split as u32,
                    max_positions: spec.max_positions as u32,
                    edge_id: spec.edge_id.clone(),
                })),
            })
            .expect("receiver alive");
            let mut inbound = ep.transport.generate(rx).await.map_err(|s| LinkError::from_status(url, &s))?;
            let closed = |reason: &str| LinkError::Closed { endpoint: url.to_string(), reason: reason.to_string() };
            match inbound.next().await {
                Some(Ok(pb::GenerateResponse { result: Some(pb::generate_response::Result::Opened(_)), .. })) => {}
                Some(Ok(pb::GenerateResponse { result: Some(pb::generate_response::Result::Error(e)), .. })) => {
                    return Err(refusal(url, &e))
                }
                Some(Ok(_)) | None => return Err(closed("the cloud closed the stream before opening the session")),
                Some(Err(s)) => return Err(LinkError::from_status(url, &s)),
            }
            Ok((tx, inbound, offer))
        };
        let (tx, inbound, offer) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r?,
            Err(_) => return Err(LinkError::Timeout { endpoint: url.to_string(), after: timeout }),
        };
        let pending: Pending = Default::default();
        let broken: Arc<Mutex<Option<LinkError>>> = Default::default();
        let bytes_down = Arc::new(AtomicU64::new(0));
        let reader =
            tokio::spawn(read_answers(url.to_string(), inbound, pending.clone(), broken.clone(), bytes_down.clone()));
        Ok(Self { endpoint: url.to_string(), offer, tx, pending, broken, bytes_down, reader })
    }

    /// Why the session broke, if it did.
    pub fn broken(&self) -> Option<LinkError> {
        self.broken.lock().expect("broken lock").clone()
    }

    /// Response bytes received so far.
    pub fn bytes_down(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }

    /// Sends a step; returns its encoded size and, when it wants a token,
    /// the receiver of the answer.
    pub fn send(&self, step: pb::DecodeStep) -> Result<(usize, Option<oneshot::Receiver<StepReply>>), LinkError> {
        if let Some(e) = self.broken() {
            return Err(e);
        }
        let rx = if step.want != pb::Want::None as i32 {
            let (tx, rx) = oneshot::channel();
            self.pending.lock().expect("pending lock").insert(step.request_id, tx);
            Some(rx)
        } else {
            None
        };
        let msg = pb::GenerateRequest { msg: Some(pb::generate_request::Msg::Step(step)) };
        let size = msg.encoded_len();
        self.tx.send(msg).map_err(|_| LinkError::Closed {
            endpoint: self.endpoint.clone(),
            reason: "the session's stream is closed".into(),
        })?;
        Ok((size, rx))
    }
}

/// The error an in-band refusal (`pb::Error` in a response) stands for.
fn refusal(url: &str, e: &pb::Error) -> LinkError {
    LinkError::from_status(url, &tonic::Status::new(Code::from_i32(e.code), e.message.clone()))
}

/// Routes the session's answers to the steps waiting for them until it ends;
/// then every waiting step gets why.
async fn read_answers(
    url: String,
    mut inbound: crate::transport::SessionAnswers,
    pending: Pending,
    broken: Arc<Mutex<Option<LinkError>>>,
    bytes_down: Arc<AtomicU64>,
) {
    let closed = |reason: &str| LinkError::Closed { endpoint: url.clone(), reason: reason.to_string() };
    let reason = loop {
        match inbound.next().await {
            Some(Ok(r)) => {
                bytes_down.fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
                let waiter = pending.lock().expect("pending lock").remove(&r.request_id);
                match (r.result, waiter) {
                    (Some(pb::generate_response::Result::Step(s)), Some(w)) => {
                        let _ = w.send(Ok(s));
                    }
                    (Some(pb::generate_response::Result::Error(e)), Some(w)) => {
                        let _ = w.send(Err(refusal(&url, &e)));
                    }
                    // A refused step nobody waits for: the cloud's cache now
                    // lacks those states.
                    (Some(pb::generate_response::Result::Error(e)), None) => break refusal(&url, &e),
                    _ => {}
                }
            }
            None => break closed("the cloud closed the session"),
            Some(Err(s)) => break LinkError::from_status(&url, &s),
        }
    };
    *broken.lock().expect("broken lock") = Some(reason.clone());
    for (_, w) in pending.lock().expect("pending lock").drain() {
        let _ = w.send(Err(reason.clone()));
    }
}
