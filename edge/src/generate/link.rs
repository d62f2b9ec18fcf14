//! One generation session on one cloud endpoint: the `Generate` stream, its
//! handshake, and the answers routed back to the steps that asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offramp_proto as pb;
use offramp_proto::split_generation_client::SplitGenerationClient;
use offramp_transport::token::BearerInterceptor;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::transport::{grpc_channel, ConnectConfig, Credentials, TransportError, MAX_ANSWER_BYTES};

pub type GenerationClient = SplitGenerationClient<InterceptedService<Channel, BearerInterceptor>>;

/// A client for one endpoint (lazily connecting; re-dialled after a loss).
pub fn client(url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<GenerationClient, TransportError> {
    let (channel, interceptor) = grpc_channel(url, c, creds)?;
    Ok(SplitGenerationClient::with_interceptor(channel, interceptor).max_decoding_message_size(MAX_ANSWER_BYTES))
}

/// What the edge expects of a cloud for its session.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub model_id: String,
    pub split: usize,
    pub cloud_fingerprint: String,
    pub max_positions: usize,
    pub encoding: pb::Encoding,
    pub edge_id: String,
}

/// An answer to a step: the cloud's token, or why there is none.
pub type StepReply = Result<pb::StepResult, String>;

/// A live session on one endpoint.
pub struct CloudSession {
    pub endpoint: String,
    /// Most positions one step may carry (the cloud's payload limit).
    pub max_rows: usize,
    tx: mpsc::UnboundedSender<pb::GenerateRequest>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<StepReply>>>>,
    broken: Arc<Mutex<Option<String>>>,
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
    /// the encoding), then opens a session. Bounded by `timeout`.
    pub async fn open(
        endpoint: &str,
        client: &GenerationClient,
        spec: &SessionSpec,
        timeout: Duration,
    ) -> Result<Self, String> {
        let work = async {
            let info = client
                .clone()
                .get_decoder_info(pb::ModelInfoRequest {})
                .await
                .map_err(|s| format!("handshake: {}", s.message()))?
                .into_inner();
            if info.protocol_version != pb::PROTOCOL_VERSION {
                return Err(format!(
                    "the cloud speaks protocol {}, this edge {}",
                    info.protocol_version,
                    pb::PROTOCOL_VERSION
                ));
            }
            let model = info
                .models
                .iter()
                .find(|m| m.model_id == spec.model_id)
                .ok_or_else(|| format!("the cloud does not hold decoder {}", spec.model_id))?;
            let split = model
                .splits
                .iter()
                .find(|s| s.split as usize == spec.split)
                .ok_or_else(|| format!("the cloud does not serve split {} of {}", spec.split, spec.model_id))?;
            if split.cloud_fingerprint != spec.cloud_fingerprint {
                return Err(format!(
                    "fingerprint mismatch at split {}: the cloud holds {}, this edge expects {}",
                    spec.split,
                    &split.cloud_fingerprint[..split.cloud_fingerprint.len().min(12)],
                    &spec.cloud_fingerprint[..12]
                ));
            }
            if !info.encodings.contains(&(spec.encoding as i32)) {
                return Err(format!(
                    "the cloud does not accept {}",
                    offramp_common::codec::encoding_name(spec.encoding)
                ));
            }
            let width = model.hidden as usize * offramp_common::codec::element_size(spec.encoding);
            let max_rows = ((info.max_payload_bytes as usize).saturating_sub(1024) / width.max(1)).max(1);

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
            let mut inbound = client
                .clone()
                .generate(UnboundedReceiverStream::new(rx))
                .await
                .map_err(|s| format!("opening the session: {}", s.message()))?
                .into_inner();
            match inbound.message().await {
                Ok(Some(pb::GenerateResponse { result: Some(pb::generate_response::Result::Opened(_)), .. })) => {}
                Ok(Some(pb::GenerateResponse { result: Some(pb::generate_response::Result::Error(e)), .. })) => {
                    return Err(e.message)
                }
                Ok(_) => return Err("the cloud closed the stream before opening the session".into()),
                Err(s) => return Err(s.message().to_string()),
            }
            Ok((tx, inbound, max_rows))
        };
        let (tx, mut inbound, max_rows) = match tokio::time::timeout(timeout, work).await {
            Ok(r) => r?,
            Err(_) => return Err(format!("no session within {timeout:?}")),
        };
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<StepReply>>>> = Default::default();
        let broken: Arc<Mutex<Option<String>>> = Default::default();
        let bytes_down = Arc::new(AtomicU64::new(0));
        let reader = {
            let (pending, broken, bytes_down) = (pending.clone(), broken.clone(), bytes_down.clone());
            tokio::spawn(async move {
                let reason = loop {
                    match inbound.message().await {
                        Ok(Some(r)) => {
                            bytes_down.fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
                            let waiter = pending.lock().expect("pending lock").remove(&r.request_id);
                            match (r.result, waiter) {
                                (Some(pb::generate_response::Result::Step(s)), Some(w)) => {
                                    let _ = w.send(Ok(s));
                                }
                                (Some(pb::generate_response::Result::Error(e)), Some(w)) => {
                                    let _ = w.send(Err(e.message));
                                }
                                // A refused step nobody waits for: the cloud's
                                // cache now lacks those states.
                                (Some(pb::generate_response::Result::Error(e)), None) => break e.message,
                                _ => {}
                            }
                        }
                        Ok(None) => break "the cloud closed the session".to_string(),
                        Err(s) => break s.message().to_string(),
                    }
                };
                *broken.lock().expect("broken lock") = Some(reason.clone());
                for (_, w) in pending.lock().expect("pending lock").drain() {
                    let _ = w.send(Err(reason.clone()));
                }
            })
        };
        Ok(Self { endpoint: endpoint.to_string(), max_rows, tx, pending, broken, bytes_down, reader })
    }

    /// Why the session broke, if it did.
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().expect("broken lock").clone()
    }

    /// Response bytes received so far.
    pub fn bytes_down(&self) -> u64 {
        self.bytes_down.load(Ordering::Relaxed)
    }

    /// Sends a step; returns its encoded size and, when it wants a token,
    /// the receiver of the answer.
    pub fn send(&self, step: pb::DecodeStep) -> Result<(usize, Option<oneshot::Receiver<StepReply>>), String> {
        if let Some(reason) = self.broken() {
            return Err(reason);
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
        self.tx.send(msg).map_err(|_| "the session's stream is closed".to_string())?;
        Ok((size, rx))
    }
}
