//! Bearer tokens: one type for the secret ([`Secret`], never printed), its
//! file, its `authorization: Bearer …` header (parsed and written here only)
//! and the server's table of accepted tokens ([`TokenTable`]), which maps a
//! token to the edge identity it proves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Shortest token a [`TokenTable`] accepts.
pub const MIN_TOKEN_LEN: usize = 16;

/// What is wrong with a token, a token file or an `authorization` header.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("token file {} must hold exactly one token", path.display())]
    NotOneToken { path: PathBuf },
    #[error("{}: line {line}: expected `edge-id token`", path.display())]
    BadLine { path: PathBuf, line: usize },
    #[error("{}: line {line}: token for {edge} is shorter than {MIN_TOKEN_LEN} characters", path.display())]
    TooShort { path: PathBuf, line: usize, edge: String },
    #[error("{}: line {line}: token reused", path.display())]
    Reused { path: PathBuf, line: usize },
    #[error("{}: no tokens", path.display())]
    Empty { path: PathBuf },
    #[error("the token is not valid header text")]
    NotHeaderText,
}

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

    /// Whether `given` is this secret (compared in constant time).
    pub fn matches(&self, given: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), given.as_bytes())
    }

    /// Reads a one-token file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_path_buf(), source })?;
        let token = text.trim();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(TokenError::NotOneToken { path: path.to_path_buf() });
        }
        Ok(Self::new(token))
    }

    /// The `authorization` header value, marked sensitive (hpack never
    /// indexes it, and tonic's debug output hides it).
    pub fn header(&self) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, TokenError> {
        let mut v: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", self.0).parse().map_err(|_| TokenError::NotHeaderText)?;
        v.set_sensitive(true);
        Ok(v)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a request's credentials were refused (each becomes `Unauthenticated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("malformed authorization header")]
    Malformed,
    #[error("expected a bearer token")]
    NotBearer,
    #[error("invalid token")]
    Invalid,
}

/// The token of an `authorization` header value (`Bearer <token>`).
pub fn parse_bearer(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?;
    let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
    header.strip_prefix("Bearer ").map(str::trim).ok_or(AuthError::NotBearer)
}

/// A tonic client interceptor adding `authorization: Bearer <token>` when a
/// token is set.
#[derive(Clone, Default)]
pub struct BearerInterceptor(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl BearerInterceptor {
    pub fn new(token: Option<&Secret>) -> Result<Self, TokenError> {
        Ok(Self(token.map(Secret::header).transpose()?))
    }
}

impl tonic::service::Interceptor for BearerInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
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
    pub fn load(path: &Path) -> Result<Self, TokenError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses the table's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, TokenError> {
        let path = || path.to_path_buf();
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(edge), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenError::BadLine { path: path(), line: line_no });
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(TokenError::TooShort { path: path(), line: line_no, edge: edge.to_string() });
            }
            if by_token.insert(token.to_string(), edge.to_string()).is_some() {
                return Err(TokenError::Reused { path: path(), line: line_no });
            }
        }
        if by_token.is_empty() {
            return Err(TokenError::Empty { path: path() });
        }
        Ok(Self { by_token })
    }

    /// The edge id owning `token`, comparing in constant time per entry.
    pub fn check(&self, token: &str) -> Result<&str, AuthError> {
        let mut found = None;
        for (t, edge) in &self.by_token {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(edge.as_str());
            }
        }
        found.ok_or(AuthError::Invalid)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table() {
        let p = Path::new("tokens.txt");
        let t =
            TokenTable::parse("# edges\nedge-1 aaaaaaaaaaaaaaaaaaaa\nedge-2 bbbbbbbbbbbbbbbbbbbb # lab\n", p).unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa"), Ok("edge-1"));
        assert_eq!(t.check("bbbbbbbbbbbbbbbbbbbb"), Ok("edge-2"));
        assert_eq!(t.check("cccccccccccccccccccc"), Err(AuthError::Invalid));
        assert!(!format!("{t:?}").contains("aaaa"));
        let short = TokenTable::parse("edge-1 short", p).unwrap_err();
        assert!(matches!(short, TokenError::TooShort { line: 1, .. }), "{short}");
        assert!(short.to_string().contains("tokens.txt: line 1"), "{short}");
        assert!(matches!(TokenTable::parse("edge-1", p), Err(TokenError::BadLine { line: 1, .. })));
        let dup = "a aaaaaaaaaaaaaaaaaaaa\nb aaaaaaaaaaaaaaaaaaaa";
        assert!(matches!(TokenTable::parse(dup, p), Err(TokenError::Reused { line: 2, .. })));
        assert!(matches!(TokenTable::parse("# nothing\n", p), Err(TokenError::Empty { .. })));
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(parse_bearer(Some(b"Bearer abc ")), Ok("abc"));
        assert_eq!(parse_bearer(None), Err(AuthError::Missing));
        assert_eq!(parse_bearer(Some(b"Basic abc")), Err(AuthError::NotBearer));
        assert_eq!(parse_bearer(Some(&[0xff, 0xfe])), Err(AuthError::Malformed));
        let h = Secret::new("tok").header().unwrap();
        assert!(h.is_sensitive());
        assert_eq!(parse_bearer(Some(h.as_bytes())), Ok("tok"));
        assert!(matches!(Secret::new("line\nbreak").header(), Err(TokenError::NotHeaderText)));
    }
}
