//! Who is calling: bearer tokens checked against the token table, and the
//! identity they prove.
//!
//! Identity comes from credentials only. With a token table, every request
//! must carry a token, its edge is the one the table names, and a request
//! whose `edge_id` field names another edge is refused with
//! `PermissionDenied` (an empty field is fine). Logs carry the authenticated
//! identity. Without a table nobody is authenticated: logs say
//! `edge="unauthenticated"` and show the client's own claim separately as
//! `claimed_edge`, so it is never mistaken for a proven identity.

use std::sync::Arc;

use offramp_proto as pb;
use offramp_transport::token::{parse_bearer, AuthError, TokenTable};
use tonic::{Request, Status};

use crate::error::CloudError;

/// Checks `authorization: Bearer <token>` against the token table. Disabled
/// (everyone admitted, nobody identified) when no table is configured.
#[derive(Clone, Default, Debug)]
pub struct Auth {
    tokens: Option<Arc<TokenTable>>,
}

/// The authenticated edge, put in request extensions by [`Auth::check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeIdentity(pub String);

/// Who sent a request, as far as the cloud can tell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller(Option<EdgeIdentity>);

impl Caller {
    pub fn new(identity: Option<EdgeIdentity>) -> Self {
        Self(identity)
    }

    /// The caller of a gRPC request (identity put there by [`Auth::check`]).
    pub fn of<T>(req: &Request<T>) -> Self {
        Self(req.extensions().get::<EdgeIdentity>().cloned())
    }

    /// The authenticated edge id, or `unauthenticated`.
    pub fn label(&self) -> &str {
        self.0.as_ref().map_or("unauthenticated", |id| id.0.as_str())
    }

    /// Refuses a request that claims to come from another edge than the one
    /// its token proves.
    pub fn check(&self, req: &pb::InferRequest) -> Result<(), CloudError> {
        match &self.0 {
            Some(id) if !req.edge_id.is_empty() && req.edge_id != id.0 => {
                Err(CloudError::IdentityMismatch { claimed: bounded(&req.edge_id), authenticated: id.0.clone() })
            }
            _ => Ok(()),
        }
    }

    /// The span of one request on any server: the authenticated identity,
    /// and the client's claim only when nobody is authenticated.
    pub fn span(&self, req: &pb::InferRequest, transport: &'static str) -> tracing::Span {
        let claimed = if self.0.is_none() { bounded(&req.edge_id) } else { String::new() };
        tracing::info_span!(
            "infer",
            request_id = req.request_id,
            edge = %self.label(),
            claimed_edge = %claimed,
            split = req.split,
            transport
        )
    }
}

/// At most 64 characters of a client-supplied string, for logs and errors.
fn bounded(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} bytes)", &s[..cut], s.len()),
        None => s.to_string(),
    }
}

impl Auth {
    pub fn new(tokens: Option<TokenTable>) -> Self {
        Self { tokens: tokens.map(Arc::new) }
    }

    /// Whether requests must carry a token.
    pub fn is_on(&self) -> bool {
        self.tokens.is_some()
    }

    /// The gRPC interceptor: checks the header and puts the identity in the
    /// request's extensions.
    pub fn check(&self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if self.tokens.is_none() {
            return Ok(req);
        }
        let header = req.metadata().get("authorization").map(|v| v.as_bytes());
        let token = parse_bearer(header).map_err(unauthenticated)?;
        if let Some(edge) = self.check_token(Some(token))? {
            req.extensions_mut().insert(edge);
        }
        Ok(req)
    }

    /// Checks a bare token (QUIC carries it in an auth frame). `Ok(None)`:
    /// authentication is off.
    pub fn check_token(&self, token: Option<&str>) -> Result<Option<EdgeIdentity>, Status> {
        let Some(tokens) = &self.tokens else { return Ok(None) };
        let token = token.ok_or(AuthError::Missing).map_err(unauthenticated)?;
        let edge = tokens.check(token.trim()).map_err(unauthenticated)?;
        Ok(Some(EdgeIdentity(edge.to_string())))
    }
}

fn unauthenticated(e: AuthError) -> Status {
    Status::unauthenticated(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_comes_from_the_token() {
        let table = TokenTable::parse("edge-1 aaaaaaaaaaaaaaaaaaaa\n", std::path::Path::new("t")).unwrap();
        let auth = Auth::new(Some(table));
        let id = auth.check_token(Some("aaaaaaaaaaaaaaaaaaaa")).unwrap();
        let caller = Caller::new(id);
        assert_eq!(caller.label(), "edge-1");
        let mut req = pb::InferRequest { edge_id: "edge-1".into(), ..Default::default() };
        caller.check(&req).unwrap();
        req.edge_id.clear();
        caller.check(&req).unwrap();
        req.edge_id = "edge-2".into();
        let e = caller.check(&req).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.to_string().contains("edge-2") && e.to_string().contains("edge-1"), "{e}");
        req.edge_id = "x".repeat(100_000);
        assert!(caller.check(&req).unwrap_err().to_string().len() < 300, "echo is bounded");
        assert_eq!(auth.check_token(None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(auth.check_token(Some("bbbbbbbbbbbbbbbbbbbb")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(Caller::default().label(), "unauthenticated");
        assert!(Auth::default().check_token(None).unwrap().is_none());
    }
}
