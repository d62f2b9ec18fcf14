//! Bearer tokens and TLS file options shared by the binaries. Secrets never
//! appear in logs: [`Secret`] prints as `<redacted>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a one-token file (surrounding whitespace ignored).
pub fn read_token(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err(format!("token file {} must hold exactly one token", path.display()));
    }
    Ok(Secret::new(token))
}

/// Tokens accepted by a server: one `edge-id token` pair per line; `#` starts
/// a comment.
#[derive(Clone, Default)]
pub struct TokenTable {
    by_token: HashMap<String, String>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenTable({} edges, tokens redacted)", self.by_token.len())
    }
}

impl TokenTable {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(edge), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("line {}: expected `edge-id token`", i + 1));
            };
            if token.len() < 16 {
                return Err(format!("line {}: token for {edge} is shorter than 16 characters", i + 1));
            }
            if by_token.insert(token.to_string(), edge.to_string()).is_some() {
                return Err(format!("line {}: token reused", i + 1));
            }
        }
        if by_token.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Self { by_token })
    }

    /// The edge id owning `token`, comparing in constant time per entry.
    pub fn check(&self, token: &str) -> Option<&str> {
        let mut found = None;
        for (t, edge) in &self.by_token {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(edge.as_str());
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server TLS files.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain; with --tls-key turns TLS on for gRPC.
    #[arg(long, env = "OFFRAMP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "OFFRAMP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "OFFRAMP_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Client TLS files.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificate to trust for the cloud (use https:// URLs).
    #[arg(long, env = "OFFRAMP_CA")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (mutual TLS).
    #[arg(long, env = "OFFRAMP_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,
    #[arg(long, env = "OFFRAMP_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
    /// Server name to verify (default: the URL's host).
    #[arg(long, env = "OFFRAMP_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

pub fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table() {
        let t = TokenTable::parse("# edges\nedge-1 aaaaaaaaaaaaaaaaaaaa\nedge-2 bbbbbbbbbbbbbbbbbbbb # lab\n").unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa"), Some("edge-1"));
        assert_eq!(t.check("bbbbbbbbbbbbbbbbbbbb"), Some("edge-2"));
        assert_eq!(t.check("cccccccccccccccccccc"), None);
        assert!(!format!("{t:?}").contains("aaaa"));
        assert!(TokenTable::parse("edge-1 short").unwrap_err().contains("shorter"));
        assert!(TokenTable::parse("edge-1").unwrap_err().contains("expected"));
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
