//! QUIC settings used by both sides: TLS 1.3 with ALPN [`ALPN`], BBR
//! congestion control, idle timeouts and keep-alives, UDP socket buffers,
//! and `quic://` URLs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::tls::{ClientTls, ServerTls, TlsError};

/// ALPN protocol id of the QUIC transport (bumped with the framing).
pub const ALPN: &[u8] = b"offramp/1";

/// A `quic://host:port` URL that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{0:?} is a gRPC URL; QUIC endpoints look like quic://127.0.0.1:4433")]
    Grpc(String),
    #[error("bad QUIC URL {0:?}: expected quic://host:port")]
    Malformed(String),
}

/// Splits `quic://host:port` (or `host:port`; IPv6 hosts in brackets).
pub fn parse_url(url: &str) -> Result<(String, u16), UrlError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(UrlError::Grpc(url.to_string()));
    }
    let rest = url.strip_prefix("quic://").unwrap_or(url).trim_end_matches('/');
    let bad = || UrlError::Malformed(url.to_string());
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// BBR instead of quinn's default CUBIC, on both sides. An offload is a few
/// packets once in a while; on a link with random loss, CUBIC reads every loss
/// as congestion and shrinks its window towards its two-packet floor, so a
/// 6 KB request then takes several round trips. Measured with `offramp bench
/// transport` (50 ms RTT, 5% datagram loss, B-LeNet K = 1, f32, 500
/// requests): median 101 ms with CUBIC, 51 ms (one RTT) with BBR; mean 92 → 75 ms.
fn congestion() -> Arc<quinn::congestion::BbrConfig> {
    Arc::new(quinn::congestion::BbrConfig::default())
}

/// UDP socket buffers asked for on both sides (the kernel caps them at
/// `net.core.rmem_max` / `wmem_max`). A 200 KB hidden state is ~150
/// datagrams sent in one burst; the usual 208 KiB default receive buffer
/// (which also pays each datagram's kernel overhead) overflows on it, and
/// each drop costs a loss-detection delay: measured with `offramp bench
/// offload` (MiniLM at 128 tokens, loopback), a p99 of 28 ms over a p50 of
/// 1.4 ms, with the kernel's UDP "receive buffer errors" counting up.
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// A QUIC endpoint on `addr` (a server when `server` is given) whose UDP
/// socket has [`UDP_BUFFER_BYTES`] buffers, as far as the kernel allows.
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    for (what, set) in [
        ("receive", state.set_recv_buffer_size((&socket).into(), UDP_BUFFER_BYTES)),
        ("send", state.set_send_buffer_size((&socket).into(), UDP_BUFFER_BYTES)),
    ] {
        if let Err(e) = set {
            tracing::debug!(error = %e, "could not enlarge the QUIC socket's {what} buffer");
        }
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC (start it inside tokio)"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
}

/// The client side: the server verified against `tls`'s roots, a client
/// certificate when given; keep-alives a quarter of `keepalive_interval`
/// apart and an idle timeout of (interval + timeout) / 2 (1.5 s with the
/// edge's defaults: three missed keep-alives), so a dead cloud is noticed
/// about as fast as over gRPC.
pub fn client_config(
    tls: Option<&ClientTls>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = tls.ok_or(TlsError::QuicNeedsCa)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.rustls(ALPN)?)
        .map_err(|_| TlsError::Rustls(rustls::Error::General("no TLS 1.3 cipher suite for QUIC".into())))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let idle = (keepalive_interval + keepalive_timeout) / 2;
    transport
        .congestion_controller_factory(congestion())
        .keep_alive_interval(Some((keepalive_interval / 4).max(Duration::from_millis(100))))
        .max_idle_timeout(Some(idle.min(Duration::from_secs(3600)).try_into().expect("an hour fits a QUIC varint")));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// The server side: at most `max_streams` concurrent request streams per
/// connection (more wait for credit), no unidirectional streams, and the
/// idle timeout the server offers (clients ask for shorter ones and send
/// keep-alives).
pub fn server_config(tls: &ServerTls, max_streams: u32, idle: Duration) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.rustls(ALPN)?)
        .map_err(|_| TlsError::Rustls(rustls::Error::General("no TLS 1.3 cipher suite for QUIC".into())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .congestion_controller_factory(congestion())
        .max_idle_timeout(Some(idle.min(Duration::from_secs(3600)).try_into().expect("an hour fits a QUIC varint")));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(parse_url("quic://127.0.0.1:4433").unwrap(), ("127.0.0.1".into(), 4433));
        assert_eq!(parse_url("quic://[::1]:4433/").unwrap(), ("::1".into(), 4433));
        assert_eq!(parse_url("localhost:9").unwrap(), ("localhost".into(), 9));
        assert!(matches!(parse_url("http://127.0.0.1:50051"), Err(UrlError::Grpc(_))));
        assert!(parse_url("quic://127.0.0.1").is_err());
        assert!(parse_url("quic://:80").is_err());
        assert!(parse_url("quic://h:0").is_err());
    }

    #[test]
    fn quic_needs_a_ca() {
        let e = client_config(None, Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("--ca"), "{e}");
    }
}
