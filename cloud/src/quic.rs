//! The QUIC transport of the cloud, beside gRPC: the same protobuf messages,
//! one bidirectional stream per request, framed as [`offramp_common::wire`]
//! says. TLS 1.3 (rustls, ring) with the gRPC certificate files
//! (`--tls-cert`, `--tls-key`, `--tls-client-ca` for mutual TLS) or, for local
//! runs and tests, a self-signed certificate made at start (`--self-signed`,
//! written with `--cert-out` for the edge's `--ca`).
//!
//! Every request goes through [`CloudState::infer`], so validation, the
//! fingerprint check, size caps and the batcher are the gRPC service's own; a
//! bad frame or request gets an error frame on its stream and nothing else is
//! disturbed. Bearer tokens travel in an auth frame ahead of the request and
//! are checked with the same [`Auth`] as gRPC's interceptor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use offramp_common::security::{read_file, ServerTlsArgs};
use offramp_common::wire::{self, Kind, WireError};
use offramp_proto as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::service::CloudState;
use crate::telemetry::Auth;

/// QUIC listener options (flattened into the cloud's [`crate::Config`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct QuicArgs {
    /// Also serve over QUIC on this UDP address (off by default; loopback
    /// recommended; port 0 picks a free port). Needs a certificate:
    /// --tls-cert/--tls-key, or --self-signed for local runs.
    #[arg(long, env = "OFFRAMP_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// Make a self-signed certificate for QUIC at start (SAN localhost,
    /// 127.0.0.1, ::1 and a non-loopback listen IP). For local runs and tests
    /// only: edges must be given it with --ca (see --cert-out).
    #[arg(long, env = "OFFRAMP_SELF_SIGNED", conflicts_with = "tls_cert", requires = "quic_listen")]
    pub self_signed: bool,
    /// Write the self-signed certificate (PEM, no key) to this file.
    #[arg(long, env = "OFFRAMP_CERT_OUT", requires = "self_signed")]
    pub cert_out: Option<PathBuf>,
}

/// How long a client may take to send its request on a stream.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the cloud waits for the client to acknowledge an answer.
const ANSWER_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent request streams per connection (more wait for credit).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Idle timeout the cloud offers (edges ask for shorter ones and send keep-alives).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate chain and its key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From PEM files (`--tls-cert`, `--tls-key`).
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self> {
        let pem = read_file(cert, "TLS certificate").map_err(anyhow::Error::msg)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("parsing TLS certificate {}", cert.display()))?;
        if chain.is_empty() {
            bail!("TLS certificate file {} holds no certificate", cert.display());
        }
        let pem = read_file(key, "TLS key").map_err(anyhow::Error::msg)?;
        let key = PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("parsing TLS key {}", key.display()))?;
        Ok(Self { chain, key })
    }

    /// A fresh self-signed certificate for `names` (DNS names or IPs).
    pub fn self_signed(names: Vec<String>) -> Result<(Self, String)> {
        let ck = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
        let pem = ck.cert.pem();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        Ok((Self { chain: vec![ck.cert.der().clone()], key }, pem))
    }
}

/// The certificate QUIC presents: the TLS files, else a self-signed one
/// (written to `--cert-out`).
pub fn identity(args: &QuicArgs, tls: &ServerTlsArgs, listen: SocketAddr) -> Result<Identity> {
    if let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) {
        return Identity::from_files(cert, key);
    }
    if !args.self_signed {
        bail!(
            "--quic-listen needs a certificate: --tls-cert and --tls-key, or --self-signed (with --cert-out FILE \
             for the edge's --ca) for local runs"
        );
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
        names.push(listen.ip().to_string());
    }
    let (identity, pem) = Identity::self_signed(names.clone())?;
    tracing::warn!(?names, "QUIC uses a self-signed certificate (local runs and tests only)");
    if let Some(out) = &args.cert_out {
        std::fs::write(out, pem).with_context(|| format!("writing the certificate to {}", out.display()))?;
        tracing::info!(path = %out.display(), "wrote the self-signed certificate (give it to edges with --ca)");
    }
    Ok(identity)
}

/// The QUIC server configuration: TLS 1.3 only, ALPN `offramp/1`, no 0-RTT,
/// client certificates required when `client_ca` is given.
pub fn server_config(identity: Identity, client_ca: Option<&Path>) -> Result<quinn::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with ring")?;
    let builder = match client_ca {
        Some(ca) => {
            let pem = read_file(ca, "client CA").map_err(anyhow::Error::msg)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.with_context(|| format!("parsing client CA {}", ca.display()))?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut tls = builder.with_single_cert(identity.chain, identity.key).context("TLS certificate and key")?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).context("QUIC TLS configuration")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(MAX_STREAMS_PER_CONNECTION.into())
        .max_concurrent_uni_streams(0u32.into())
        // BBR, as on the edge (`offramp_edge::quic::congestion` says why):
        // CUBIC's window collapses under random loss and answers wait.
        .congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()))
        .max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("idle timeout in range")));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

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

/// Binds the QUIC endpoint.
pub fn bind(listen: SocketAddr, config: quinn::ServerConfig) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(config, listen).with_context(|| format!("cannot listen for QUIC on {listen}"))
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
    Infer(Box<pb::InferRequest>),
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
        Ok(Request::Infer(req)) => {
            let answer = async { crate::service::loaded(&ctx.loaded)?.infer(&req).await };
            match answer.instrument(crate::service::span(&req, "quic")).await {
                Ok(r) => wire::message(Kind::InferResponse, &r),
                Err(e) => error_frame(&e.into()),
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

fn error_frame(status: &Status) -> bytes::Bytes {
    wire::error(status.code() as i32, status.message())
}

/// Reads an optional auth frame and one request frame.
async fn read_request(recv: &mut quinn::RecvStream, ctx: &StreamContext) -> Result<Request, Status> {
    let mut token: Option<String> = None;
    loop {
        let frame = wire::read_frame(recv, ctx.max_frame)
            .await
            .map_err(wire_status)?
            .ok_or_else(|| Status::invalid_argument("the stream ended before a request frame"))?;
        match frame.kind {
            Kind::Auth if token.is_none() => token = Some(frame.token().map_err(wire_status)?.to_string()),
            Kind::Auth => return Err(Status::invalid_argument("more than one auth frame on a stream")),
            Kind::ModelInfoRequest | Kind::InferRequest => {
                ctx.auth.check_token(token.as_deref())?;
                return if frame.kind == Kind::InferRequest {
                    Ok(Request::Infer(Box::new(frame.decode::<pb::InferRequest>().map_err(wire_status)?)))
                } else {
                    frame.decode::<pb::ModelInfoRequest>().map_err(wire_status)?;
                    Ok(Request::Info)
                };
            }
            other => return Err(Status::invalid_argument(format!("a client may not send a {other:?} frame"))),
        }
    }
}

fn wire_status(e: WireError) -> Status {
    let code = match &e {
        WireError::Io(_) => Code::Unavailable,
        _ => Code::InvalidArgument,
    };
    Status::new(code, format!("bad frame: {e}"))
}
