//! TLS material, loaded once and used by both stacks: tonic (gRPC over
//! HTTP/2) takes the PEM text, rustls (QUIC) the parsed certificates. Both
//! sides' flags live here too, so edge and cloud spell them the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What is wrong with TLS files or settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {}: {detail}", path.display())]
    Parse { what: &'static str, path: PathBuf, detail: String },
    #[error("{what} file {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{0} needs --ca (the server's certificate or its CA)")]
    NeedsCa(&'static str),
    #[error("{given} needs {missing} too")]
    Incomplete { given: &'static str, missing: &'static str },
    #[error(
        "QUIC always uses TLS: pass --ca FILE with the cloud's certificate or its CA (for local runs, \
         `offramp-cloud --self-signed --cert-out FILE` writes one)"
    )]
    QuicNeedsCa,
    #[error("generating a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Server TLS files.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerTlsArgs {
    /// PEM certificate chain; with --tls-key turns TLS on for gRPC.
    #[arg(long, env = "OFFRAMP_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "OFFRAMP_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "OFFRAMP_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Client TLS files.
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientTlsArgs {
    /// PEM CA certificate to trust for the cloud (use https:// URLs).
    #[arg(long, env = "OFFRAMP_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, env = "OFFRAMP_TLS_CLIENT_CERT")]
    pub tls_client_cert: Option<PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "OFFRAMP_TLS_CLIENT_KEY")]
    pub tls_client_key: Option<PathBuf>,
    /// Server name to verify (default: the URL's host).
    #[arg(long, env = "OFFRAMP_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Certificates of a PEM file (at least one).
fn certificates(pem: &[u8], what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Parse {
        what,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// A certificate chain and its private key, as PEM (for tonic) and parsed
/// (for rustls).
pub struct Identity {
    chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain_pem: self.chain_pem.clone(),
            key_pem: self.key_pem.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({} certificates, key redacted)", self.chain.len())
    }
}

impl Identity {
    /// Reads and parses a PEM chain and key; `role` names them in errors
    /// ("TLS" for a server, "client" for mutual TLS).
    pub fn load(cert: &Path, key: &Path, client: bool) -> Result<Self, TlsError> {
        let (cert_what, key_what) =
            if client { ("client certificate", "client key") } else { ("TLS certificate", "TLS key") };
        let chain_pem = read(cert, cert_what)?;
        let chain = certificates(&chain_pem, cert_what, cert)?;
        let key_pem = read(key, key_what)?;
        let parsed = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Parse {
            what: key_what,
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
        Ok(Self { chain_pem, key_pem, chain, key: parsed })
    }

    /// A fresh self-signed certificate for `names` (DNS names or IPs).
    pub fn self_signed(names: Vec<String>) -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(names)?;
        Ok(Self {
            chain_pem: ck.cert.pem().into_bytes(),
            key_pem: ck.signing_key.serialize_pem().into_bytes(),
            chain: vec![ck.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
        })
    }

    /// The certificate chain as PEM (what a peer's `--ca` can hold for a
    /// self-signed certificate).
    pub fn certificate_pem(&self) -> &[u8] {
        &self.chain_pem
    }

    fn tonic(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.chain_pem, &self.key_pem)
    }
}

/// Trusted roots: PEM text and the parsed store.
#[derive(Clone)]
struct Roots {
    pem: Vec<u8>,
    store: Arc<rustls::RootCertStore>,
}

impl Roots {
    fn load(path: &Path, what: &'static str) -> Result<Self, TlsError> {
        let pem = read(path, what)?;
        let mut store = rustls::RootCertStore::empty();
        for cert in certificates(&pem, what, path)? {
            store.add(cert).map_err(|e| TlsError::Parse { what, path: path.to_path_buf(), detail: e.to_string() })?;
        }
        Ok(Self { pem, store: Arc::new(store) })
    }
}

/// What a client trusts and presents.
#[derive(Clone)]
pub struct ClientTls {
    roots: Roots,
    identity: Option<Identity>,
    /// Server name to verify instead of the URL's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("roots", &self.roots.store.len())
            .field("identity", &self.identity)
            .field("domain", &self.domain)
            .finish()
    }
}

impl ClientTls {
    /// Loads the files named by the flags; `None` without `--ca`.
    pub fn load(args: &ClientTlsArgs) -> Result<Option<Self>, TlsError> {
        let Some(ca) = &args.ca else {
            if args.tls_client_cert.is_some() || args.tls_client_key.is_some() {
                return Err(TlsError::NeedsCa("--tls-client-cert"));
            }
            return Ok(None);
        };
        let identity = match (&args.tls_client_cert, &args.tls_client_key) {
            (Some(cert), Some(key)) => Some(Identity::load(cert, key, true)?),
            (Some(_), None) => {
                return Err(TlsError::Incomplete { given: "--tls-client-cert", missing: "--tls-client-key" })
            }
            (None, Some(_)) => {
                return Err(TlsError::Incomplete { given: "--tls-client-key", missing: "--tls-client-cert" })
            }
            (None, None) => None,
        };
        Ok(Some(Self { roots: Roots::load(ca, "CA certificate")?, identity, domain: args.tls_domain.clone() }))
    }

    /// Trusts the certificates in `pem` (e.g. a cloud's self-signed one,
    /// for in-process runs); no client certificate.
    pub fn trusting(pem: &[u8]) -> Result<Self, TlsError> {
        let path = Path::new("<in memory>");
        let mut store = rustls::RootCertStore::empty();
        for cert in certificates(pem, "CA certificate", path)? {
            store.add(cert).map_err(|e| TlsError::Parse {
                what: "CA certificate",
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        }
        Ok(Self { roots: Roots { pem: pem.to_vec(), store: Arc::new(store) }, identity: None, domain: None })
    }

    /// tonic's client TLS settings.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.roots.pem));
        if let Some(id) = &self.identity {
            tls = tls.identity(id.tonic());
        }
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        tls
    }

    /// rustls's client settings: TLS 1.3 only, ring, `alpn`.
    pub fn rustls(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.store.clone());
        let mut config = match &self.identity {
            Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

/// What a server presents and which client certificates it requires.
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    client_ca: Option<Roots>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("identity", &self.identity)
            .field("mutual", &self.client_ca.is_some())
            .finish()
    }
}

impl ServerTls {
    /// Loads the files named by the flags; `None` without `--tls-cert`.
    pub fn load(args: &ServerTlsArgs) -> Result<Option<Self>, TlsError> {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => return Err(TlsError::Incomplete { given: "--tls-cert", missing: "--tls-key" }),
            (None, Some(_)) => return Err(TlsError::Incomplete { given: "--tls-key", missing: "--tls-cert" }),
            (None, None) if args.tls_client_ca.is_some() => {
                return Err(TlsError::Incomplete { given: "--tls-client-ca", missing: "--tls-cert and --tls-key" })
            }
            (None, None) => return Ok(None),
        };
        let client_ca = args.tls_client_ca.as_deref().map(|ca| Roots::load(ca, "client CA")).transpose()?;
        Ok(Some(Self { identity: Identity::load(cert, key, false)?, client_ca }))
    }

    /// A server identity without client certificates.
    pub fn new(identity: Identity) -> Self {
        Self { identity, client_ca: None }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Whether client certificates are required.
    pub fn is_mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// tonic's server TLS settings.
    pub fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(self.identity.tonic());
        if let Some(ca) = &self.client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(&ca.pem));
        }
        tls
    }

    /// rustls's server settings: TLS 1.3 only, ring, `alpn`, no 0-RTT,
    /// client certificates verified when a client CA is set.
    pub fn rustls(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_ca {
            Some(ca) => builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(ca.store.clone(), provider).build()?,
            ),
            None => builder.with_no_client_auth(),
        };
        let mut tls = builder.with_single_cert(self.identity.chain.clone(), self.identity.key.clone_key())?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        tls.max_early_data_size = 0;
        Ok(tls)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_once_and_errors_name_them() {
        let dir = std::env::temp_dir().join(format!("offramp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let id = Identity::self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key, junk) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("junk.pem"));
        std::fs::write(&cert, id.certificate_pem()).unwrap();
        std::fs::write(&key, &id.key_pem).unwrap();
        std::fs::write(&junk, "not a certificate").unwrap();

        let server =
            ServerTls::load(&ServerTlsArgs { tls_cert: Some(cert.clone()), tls_key: Some(key), tls_client_ca: None })
                .unwrap()
                .unwrap();
        server.rustls(b"x").unwrap();
        let client = ClientTls::load(&ClientTlsArgs { ca: Some(cert), ..Default::default() }).unwrap().unwrap();
        assert_eq!(client.rustls(b"x").unwrap().alpn_protocols, vec![b"x".to_vec()]);

        let e = ClientTls::load(&ClientTlsArgs { ca: Some(junk.clone()), ..Default::default() }).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }) && e.to_string().contains("junk.pem"), "{e}");
        let e =
            ClientTls::load(&ClientTlsArgs { ca: Some(dir.join("missing.pem")), ..Default::default() }).unwrap_err();
        assert!(matches!(e, TlsError::Read { what: "CA certificate", .. }), "{e}");
        let e = ClientTls::load(&ClientTlsArgs { tls_client_cert: Some(junk), ..Default::default() }).unwrap_err();
        assert!(matches!(e, TlsError::NeedsCa(_)), "{e}");
        assert!(ClientTls::load(&ClientTlsArgs::default()).unwrap().is_none());
        let half = ServerTlsArgs { tls_cert: Some(dir.join("cert.pem")), ..Default::default() };
        assert!(matches!(ServerTls::load(&half), Err(TlsError::Incomplete { missing: "--tls-key", .. })));
        let mutual_only = ServerTlsArgs { tls_client_ca: Some(dir.join("cert.pem")), ..Default::default() };
        assert!(matches!(ServerTls::load(&mutual_only), Err(TlsError::Incomplete { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
