//! The edge's QUIC client: the protocol's messages framed as
//! [`offramp_transport::frame`] says, one bidirectional stream per request over
//! one long-lived connection per endpoint (TLS 1.3, rustls with ring).
//!
//! Failures are reported as gRPC statuses, like the gRPC transport's, so
//! deadlines, fallback, failover and the breaker work unchanged: a refused,
//! timed-out or lost connection is `Unavailable`, a deadline that passes is
//! `DeadlineExceeded`, and an error frame from the cloud becomes
//! `Status::new(code, message)`. Nothing is dialled until the first call; a
//! connection that has closed (idle timeout, cloud gone, cloud restarted) is
//! replaced on the next call.
//!
//! The server certificate is always verified against `--ca` (there is no
//! "accept any certificate" mode); the name checked is `--tls-domain` or the
//! URL's host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use offramp_proto as pb;
use offramp_transport::frame::{self as wire, Kind, WireError};
use offramp_transport::quic::{client_config, parse_url};
use offramp_transport::token::Secret;
use tonic::Status;

use crate::transport::{ConnectConfig, Credentials, TransportError};

/// A QUIC client for one cloud endpoint. Cheap to share (`Arc`).
pub struct QuicClient {
    url: String,
    host: String,
    port: u16,
    server_name: String,
    client_config: quinn::ClientConfig,
    token: Option<Secret>,
    connect_timeout: Duration,
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    endpoint: Option<quinn::Endpoint>,
    conn: Option<quinn::Connection>,
}

impl std::fmt::Debug for QuicClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicClient").field("url", &self.url).field("server_name", &self.server_name).finish()
    }
}

impl QuicClient {
    /// A lazily connecting client for `url` (`quic://host:port`).
    pub fn new(url: &str, c: &ConnectConfig, creds: &Credentials) -> Result<Self, TransportError> {
        let (host, port) = parse_url(url)?;
        let server_name = creds.tls.as_ref().and_then(|t| t.domain.clone()).unwrap_or_else(|| host.clone());
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            server_name,
            client_config: client_config(creds.tls.as_ref(), c.keepalive_interval, c.keepalive_timeout)?,
            token: creds.token.clone(),
            connect_timeout: c.connect_timeout,
            state: Default::default(),
        })
    }

    async fn resolve(&self) -> Result<SocketAddr, Status> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        let mut addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Status::unavailable(format!("cannot resolve {}: {e}", self.host)))?;
        addrs.next().ok_or_else(|| Status::unavailable(format!("{} resolves to no address", self.host)))
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<quinn::Connection, Status> {
        let mut state = self.state.lock().await;
        if let Some(c) = &state.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            tracing::debug!(endpoint = %self.url, reason = ?c.close_reason(), "QUIC connection closed; reconnecting");
        }
        state.conn = None;
        let addr = self.resolve().await?;
        let family_ok = |e: &quinn::Endpoint| e.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4());
        if !state.endpoint.as_ref().is_some_and(family_ok) {
            let local: IpAddr =
                if addr.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
            let endpoint = offramp_transport::quic::endpoint(SocketAddr::new(local, 0), None)
                .map_err(|e| Status::unavailable(format!("cannot open a UDP socket: {e}")))?;
            state.endpoint = Some(endpoint);
        }
        let endpoint = state.endpoint.as_ref().expect("set above");
        let connecting = endpoint
            .connect_with(self.client_config.clone(), addr, &self.server_name)
            .map_err(|e| Status::unavailable(format!("cannot connect to {}: {e}", self.url)))?;
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Status::unavailable(format!("QUIC handshake with {} failed: {e}", self.url))),
            Err(_) => {
                return Err(Status::unavailable(format!(
                    "QUIC connect to {} timed out after {:?}",
                    self.url, self.connect_timeout
                )))
            }
        };
        tracing::debug!(endpoint = %self.url, remote = %addr, "QUIC connection open");
        state.conn = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `request` (raw bytes: frames or anything else) on a new stream
    /// and reads the one answer frame, whatever its kind. For tests and tools;
    /// [`Self::infer`] and [`Self::model_info`] frame their requests themselves.
    pub async fn send_raw(&self, request: Bytes) -> Result<wire::Frame, Status> {
        let conn = self.connection().await?;
        let lost = |e: &dyn std::fmt::Display| Status::unavailable(format!("QUIC connection to {}: {e}", self.url));
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        // write_chunk hands the buffer to quinn without copying it.
        match send.write_chunk(request).await {
            Ok(()) => {
                let _ = send.finish();
            }
            // The cloud stopped reading (a refused frame): its answer says why.
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => return Err(lost(&e)),
        }
        match wire::read_frame(&mut recv, crate::transport::MAX_ANSWER_BYTES).await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(lost(&"the stream ended without an answer")),
            Err(WireError::Io(e)) => Err(lost(&e)),
            Err(e) => Err(Status::internal(format!("bad answer from {}: {e}", self.url))),
        }
    }

    /// Id of the open connection (`None` before the first call), to tell
    /// whether a connection survived something.
    pub async fn connection_id(&self) -> Option<usize> {
        self.state.lock().await.conn.as_ref().filter(|c| c.close_reason().is_none()).map(|c| c.stable_id())
    }

    /// Sends one request frame of `kind` (after the auth frame, when a token
    /// is set) within `timeout` and decodes the answer; an error frame
    /// becomes its status.
    async fn call<M: prost::Message + Default>(
        &self,
        kind: Kind,
        msg: &impl prost::Message,
        timeout: Duration,
        late: &'static str,
    ) -> Result<M, Status> {
        let mut buf = BytesMut::new();
        if let Some(t) = &self.token {
            wire::put_raw(&mut buf, Kind::Auth, t.expose().as_bytes());
        }
        wire::put_message(&mut buf, kind, msg);
        let frame = match tokio::time::timeout(timeout, self.send_raw(buf.freeze())).await {
            Ok(frame) => frame?,
            Err(_) => return Err(Status::deadline_exceeded(late)),
        };
        match frame.kind {
            k if Some(k) == kind.answer() => {
                frame.decode().map_err(|e| Status::internal(format!("bad answer from {}: {e}", self.url)))
            }
            Kind::Error => Err(wire::frame_status(&frame, &self.url)),
            other => Err(Status::internal(format!("{} answered with a {other:?} frame", self.url))),
        }
    }

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::ModelInfo, Status> {
        self.call(Kind::ModelInfoRequest, &pb::ModelInfoRequest {}, timeout, "handshake timed out").await
    }

    pub async fn infer(&self, req: &pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        self.call(Kind::InferRequest, req, timeout, "offload deadline passed").await
    }

    pub async fn decoder_info(&self, timeout: Duration) -> Result<pb::DecoderInfo, Status> {
        self.call(Kind::DecoderInfoRequest, &pb::ModelInfoRequest {}, timeout, "decoder handshake timed out").await
    }

    /// A generation session on a new stream: every message of `outbound`
    /// goes out as a `GenerateRequest` frame (after the auth frame) until it
    /// is dropped, which finishes the edge's half; the cloud's frames come
    /// back as the answers, an error frame as the last one.
    pub async fn generate(
        &self,
        mut outbound: tokio::sync::mpsc::UnboundedReceiver<pb::GenerateRequest>,
    ) -> Result<crate::transport::SessionAnswers, Status> {
        let conn = self.connection().await?;
        let url = self.url.clone();
        let lost = move |e: &dyn std::fmt::Display| Status::unavailable(format!("QUIC session with {url}: {e}"));
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let token = self.token.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::new();
            if let Some(t) = &token {
                wire::put_raw(&mut buf, Kind::Auth, t.expose().as_bytes());
            }
            while let Some(msg) = outbound.recv().await {
                wire::put_message(&mut buf, Kind::GenerateRequest, &msg);
                if send.write_chunk(buf.split().freeze()).await.is_err() {
                    return; // the cloud stopped reading: its answer stream says why
                }
            }
            let _ = send.finish();
        });
        let url = self.url.clone();
        let answers = futures::stream::unfold(Some(recv), move |recv| {
            let url = url.clone();
            async move {
                let mut recv = recv?;
                let lost = |e: &dyn std::fmt::Display| Status::unavailable(format!("QUIC session with {url}: {e}"));
                let item = match wire::read_frame(&mut recv, crate::transport::MAX_ANSWER_BYTES).await {
                    Ok(None) => return None,
                    Ok(Some(f)) if f.kind == Kind::GenerateResponse => {
                        let r = f.decode().map_err(|e| Status::internal(format!("bad answer from {url}: {e}")));
                        return Some((r, Some(recv)));
                    }
                    Ok(Some(f)) if f.kind == Kind::Error => wire::frame_status(&f, &url),
                    Ok(Some(f)) => Status::internal(format!("{url} answered a session with a {:?} frame", f.kind)),
                    Err(WireError::Io(e)) => lost(&e),
                    Err(e) => Status::internal(format!("bad answer from {url}: {e}")),
                };
                Some((Err(item), None))
            }
        });
        Ok(Box::pin(answers))
    }
}
