//! The one certificate helper: a self-signed certificate for `localhost`
//! and `127.0.0.1` made with rcgen inside the test, written as PEM files
//! (processes take paths) and loaded the way the binaries load them.

use std::path::{Path, PathBuf};

use offramp_edge::transport::Credentials;
use offramp_transport::tls::{ClientTls, ClientTlsArgs, ServerTls, ServerTlsArgs};
use offramp_transport::token::Secret;

/// A self-signed certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate (PEM): also what a client trusts as its CA.
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// Makes a certificate for `localhost` and `127.0.0.1` and writes
/// `dir/cert.pem` and `dir/key.pem`.
pub fn self_signed(dir: &Path) -> SelfSigned {
    std::fs::create_dir_all(dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    SelfSigned { cert, key }
}

impl SelfSigned {
    /// The server side: what `--tls-cert`/`--tls-key` load.
    pub fn server_tls(&self) -> ServerTls {
        let args =
            ServerTlsArgs { tls_cert: Some(self.cert.clone()), tls_key: Some(self.key.clone()), ..Default::default() };
        ServerTls::load(&args).unwrap().expect("a certificate was given")
    }

    /// A client trusting this certificate: what `--ca` loads (with
    /// `--tls-domain` when `domain` is set).
    pub fn client_tls(&self, domain: Option<&str>) -> ClientTls {
        let args =
            ClientTlsArgs { ca: Some(self.cert.clone()), tls_domain: domain.map(str::to_string), ..Default::default() };
        ClientTls::load(&args).unwrap().expect("a CA was given")
    }

    /// An edge's credentials: trusting this certificate, with `token`.
    pub fn credentials(&self, token: Option<&str>) -> Credentials {
        Credentials { tls: Some(self.client_tls(None)), token: token.map(Secret::new) }
    }
}
