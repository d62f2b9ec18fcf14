//! The one in-process topology every lab tool starts: a real cloud, link
//! emulators in front of it (TCP for gRPC, UDP for QUIC), and edges that
//! reach it through them. Nothing is written to disk: configs are values.

use std::sync::Arc;

use anyhow::{Context, Result};
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::{Bundle, Policy};
use offramp_edge::transport::{Credentials, TransportKind};
use offramp_edge::{Edge, EdgeConfig};
use offramp_link::{spawn_tcp_link, spawn_udp_link, LinkConfig, LinkHandle};
use offramp_transport::tls::ClientTls;

/// A running cloud with optional links in front.
pub struct Topology {
    pub cloud: CloudHandle,
    /// In front of gRPC (TCP), when a link was asked for.
    pub grpc_link: Option<LinkHandle>,
    /// In front of QUIC (UDP), when a link was asked for and QUIC is on.
    pub quic_link: Option<LinkHandle>,
    /// Trusts the cloud's self-signed QUIC certificate.
    credentials: Credentials,
    /// Round trip the link adds (zero without a link).
    rtt: std::time::Duration,
}

/// A cloud config for `bundle` whose cloud-side exits run `policy` when a
/// request carries none.
pub fn cloud_config(bundle: Bundle, policy: Option<&Policy>) -> CloudConfig {
    let mut config = CloudConfig::new(bundle);
    config.policy = policy.map(Policy::to_file);
    config
}

impl Topology {
    /// Starts the cloud (adding QUIC with a self-signed certificate when
    /// `quic`) and, with `link`, one emulated link per transport in front of it.
    pub async fn start(mut cloud: CloudConfig, quic: bool, link: Option<&LinkConfig>) -> Result<Self> {
        let mut credentials = Credentials::default();
        if quic {
            let pem = cloud.with_self_signed_quic()?;
            credentials.tls = Some(ClientTls::trusting(&pem)?);
        }
        let cloud = CloudHandle::start(cloud).await.context("starting the cloud")?;
        let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        let (mut grpc_link, mut quic_link) = (None, None);
        if let Some(link) = link {
            grpc_link = Some(spawn_tcp_link(any, cloud.addr, link.clone()).await.context("starting the TCP link")?);
            if let Some(q) = cloud.quic_addr {
                quic_link = Some(spawn_udp_link(any, q, link.clone()).await.context("starting the UDP link")?);
            }
        }
        let rtt = link.map(LinkConfig::rtt).unwrap_or_default();
        Ok(Self { cloud, grpc_link, quic_link, credentials, rtt })
    }

    /// The URL an edge uses for `kind`, through the link when there is one.
    pub fn url(&self, kind: TransportKind) -> Result<String> {
        Ok(match kind {
            TransportKind::Grpc | TransportKind::GrpcStream => {
                format!("http://{}", self.grpc_link.as_ref().map_or(self.cloud.addr, LinkHandle::local_addr))
            }
            TransportKind::Quic => {
                let direct = self.cloud.quic_addr.context("this topology was started without QUIC")?;
                format!("quic://{}", self.quic_link.as_ref().map_or(direct, LinkHandle::local_addr))
            }
        })
    }

    /// Credentials that trust this cloud.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// An edge config for `bundle` at `split` pointed at this cloud over
    /// `kind`, with a connect timeout that allows for the link's RTT.
    pub fn edge_config(&self, bundle: Bundle, split: usize, kind: TransportKind) -> Result<EdgeConfig> {
        let mut config = EdgeConfig::new(bundle, Some(split), vec![self.url(kind)?]);
        config.transport = kind;
        // The self-signed certificate is the QUIC listener's; gRPC here is
        // plain HTTP/2.
        if kind == TransportKind::Quic {
            config.credentials = self.credentials.clone();
        }
        config.connect_timeout = config.connect_timeout.max(self.rtt * 4);
        Ok(config)
    }

    /// Starts an edge with `config`.
    pub async fn edge(&self, config: EdgeConfig) -> Result<Arc<Edge>> {
        Ok(Arc::new(Edge::start(config).await.context("starting the edge")?))
    }

    /// Stops the links, then the cloud (draining it).
    pub async fn stop(self) -> Result<()> {
        for link in [self.grpc_link, self.quic_link].into_iter().flatten() {
            link.shutdown().await;
        }
        self.cloud.stop().await.context("stopping the cloud")?;
        Ok(())
    }
}
