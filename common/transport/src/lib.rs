//! The transport layer edge and cloud share, so that neither holds its own
//! copy of it:
//!
//! - [`tls`]: TLS flags and material, read once, for tonic and for rustls.
//! - [`quic`]: the quinn/rustls settings of both sides (ALPN, BBR, idle
//!   timeout, keep-alive) and `quic://` URLs.
//! - [`frame`]: the QUIC framing as pure encode/decode, with only the read
//!   loop async.
//! - [`token`]: bearer tokens (the secret, its file, its header, the
//!   server's table of identities).
//! - [`metrics`]: the Prometheus exporter installer.
//! - [`status`]: one mapping between gRPC codes, QUIC error frames and the
//!   edge's fallback reasons.
//! - [`grpc_rules`]: the tower layer both gRPC servers (the cloud's and the
//!   edge's local API) wear where tonic's defaults differ from gRPC's rules.

pub mod frame;
pub mod grpc_rules;
pub mod metrics;
pub mod quic;
pub mod status;
pub mod tls;
pub mod token;
