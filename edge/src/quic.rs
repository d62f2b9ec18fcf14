//! The edge's QUIC client: the protocol's messages framed as
//! [`offramp_common::wire`] says, one bidirectional stream per request over
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
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use offramp_common::security::{read_file, ClientTlsArgs, Secret};
use offramp_common::wire::{self, Kind, WireError};
use offramp_proto as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::{Code, Status};

use crate::transport::ConnectConfig;

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

/// Splits `quic://host:port` (or `host:port`; IPv6 hosts in brackets).
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(format!("{url:?} is a gRPC URL; QUIC endpoints look like quic://127.0.0.1:4433"));
    }
    let rest = url.strip_prefix("quic://").unwrap_or(url).trim_end_matches('/');
    let bad = || format!("bad QUIC URL {url:?}: expected quic://host:port");
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The rustls/quinn client configuration: TLS 1.3 only, ALPN `offramp/1`,
/// the server verified against `--ca`, a client certificate when given;
/// keep-alives a quarter of the keep-alive interval apart and an idle timeout
/// of (interval + timeout) / 2 (1.5 s by default: three missed keep-alives), so a dead cloud is noticed about
/// as fast as over gRPC; BBR congestion control (see [`congestion`]).
pub fn client_config(tls: &ClientTlsArgs, c: &ConnectConfig) -> Result<quinn::ClientConfig, String> {
    let ca = tls.ca.as_ref().ok_or_else(|| {
        "QUIC always uses TLS: pass --ca FILE with the cloud's certificate or its CA (for local runs, \
         `offramp-cloud --self-signed --cert-out FILE` writes one)"
            .to_string()
    })?;
    let pem = read_file(ca, "CA certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("CA certificate {}: {e}", ca.display()))?;
        roots.add(cert).map_err(|e| format!("CA certificate {}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("CA certificate file {} holds no certificate", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS 1.3: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (&tls.tls_client_cert, &tls.tls_client_key) {
        (Some(cert), Some(key)) => {
            let pem = read_file(cert, "client certificate")?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("client certificate {}: {e}", cert.display()))?;
            let key_pem = read_file(key, "client key")?;
            let key =
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("client key {}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| format!("QUIC TLS: {e}"))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = (c.keepalive_interval + c.keepalive_timeout) / 2;
    transport
        .congestion_controller_factory(congestion())
        .keep_alive_interval(Some((c.keepalive_interval / 4).max(Duration::from_millis(100))))
        .max_idle_timeout(Some(idle.try_into().map_err(|_| format!("idle timeout {idle:?} out of range"))?));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// BBR instead of quinn's default CUBIC, on both sides. An offload is a few
/// packets once in a while; on a link with random loss, CUBIC reads every loss
/// as congestion and shrinks its window towards its two-packet floor, so a
/// 6 KB request then takes several round trips. Measured with `offramp bench
/// transport` (50 ms RTT, 5% datagram loss, B-LeNet K = 1, f32, 500
/// requests): median 101 ms with CUBIC, 51 ms (one RTT) with BBR; mean 92 → 75 ms.
pub fn congestion() -> Arc<quinn::congestion::BbrConfig> {
    Arc::new(quinn::congestion::BbrConfig::default())
}

impl QuicClient {
    /// A lazily connecting client for `url` (`quic://host:port`).
    pub fn new(url: &str, c: &ConnectConfig, tls: &ClientTlsArgs, token: Option<Secret>) -> Result<Self, String> {
        let (host, port) = parse_url(url)?;
        let server_name = tls.tls_domain.clone().unwrap_or_else(|| host.clone());
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            server_name,
            client_config: client_config(tls, c)?,
            token,
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
            let endpoint = quinn::Endpoint::client(SocketAddr::new(local, 0))
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
            Kind::Error => Err(error_status(&frame, &self.url)),
            other => Err(Status::internal(format!("{} answered with a {other:?} frame", self.url))),
        }
    }

    pub async fn model_info(&self, timeout: Duration) -> Result<pb::ModelInfo, Status> {
        self.call(Kind::ModelInfoRequest, &pb::ModelInfoRequest {}, timeout, "handshake timed out").await
    }

    pub async fn infer(&self, req: &pb::InferRequest, timeout: Duration) -> Result<pb::InferResponse, Status> {
        self.call(Kind::InferRequest, req, timeout, "offload deadline passed").await
    }

    /// Closes the connection (it is re-opened on the next call).
    pub async fn close(&self) {
        if let Some(c) = self.state.lock().await.conn.take() {
            c.close(0u32.into(), b"closed by the edge");
        }
    }
}

/// The status an error frame carries.
pub fn error_status(frame: &wire::Frame, url: &str) -> Status {
    match frame.decode::<pb::Error>() {
        Ok(e) => Status::new(Code::from_i32(e.code), e.message),
        Err(e) => Status::internal(format!("bad error frame from {url}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("quic://127.0.0.1:4433").unwrap(), ("127.0.0.1".into(), 4433));
        assert_eq!(parse_url("quic://[::1]:4433/").unwrap(), ("::1".into(), 4433));
        assert_eq!(parse_url("localhost:9").unwrap(), ("localhost".into(), 9));
        assert!(parse_url("http://127.0.0.1:50051").unwrap_err().contains("gRPC URL"));
        assert!(parse_url("quic://127.0.0.1").is_err());
        assert!(parse_url("quic://:80").is_err());
        assert!(parse_url("quic://h:0").is_err());
    }

    #[test]
    fn quic_needs_a_ca() {
        let e = client_config(&ClientTlsArgs::default(), &ConnectConfig::default()).unwrap_err();
        assert!(e.contains("--ca"), "{e}");
    }
}
