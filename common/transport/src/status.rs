//! One mapping between the gRPC codes a cloud answers (over gRPC, or in a
//! QUIC error frame: the same codes) and the reasons an edge falls back.
//!
//! | code from the cloud | edge's reason | retried on another endpoint |
//! |---|---|---|
//! | `Unavailable`, `Unknown`, `Internal`, `Aborted`, `Cancelled` | `unavailable` | yes |
//! | `DeadlineExceeded` | `timeout` | yes, while the deadline allows |
//! | `ResourceExhausted` | `overloaded` | yes |
//! | anything else (`InvalidArgument`, `FailedPrecondition`, `NotFound`, `Unauthenticated`, `PermissionDenied`, …) | `rejected` | no: the request itself is wrong |
//!
//! The edge adds `circuit-open` (every endpoint's breaker is open) and
//! `no-cloud` (none configured), which no code produces.

use tonic::Code;

/// Why the cloud did not answer an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// The deadline passed.
    Timeout,
    /// The endpoint could not be reached or failed.
    Unavailable,
    /// Every endpoint's breaker is open.
    CircuitOpen,
    /// The cloud refused the request as bad (not retried).
    Rejected,
    /// The cloud's queue is full.
    Overloaded,
    /// No cloud endpoint is configured.
    NoCloud,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Timeout => "timeout",
            Reason::Unavailable => "unavailable",
            Reason::CircuitOpen => "circuit-open",
            Reason::Rejected => "rejected",
            Reason::Overloaded => "overloaded",
            Reason::NoCloud => "no-cloud",
        }
    }

    /// The reason for a failed call with `code` (see the module's table).
    pub fn for_code(code: Code) -> Reason {
        match code {
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Aborted | Code::Cancelled => Reason::Unavailable,
            Code::DeadlineExceeded => Reason::Timeout,
            Code::ResourceExhausted => Reason::Overloaded,
            _ => Reason::Rejected,
        }
    }

    /// Whether another endpoint (or a later try) may succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Reason::Rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_reasons() {
        assert_eq!(Reason::for_code(Code::Unavailable), Reason::Unavailable);
        assert_eq!(Reason::for_code(Code::Internal), Reason::Unavailable);
        assert_eq!(Reason::for_code(Code::DeadlineExceeded), Reason::Timeout);
        assert_eq!(Reason::for_code(Code::ResourceExhausted), Reason::Overloaded);
        for code in [Code::InvalidArgument, Code::FailedPrecondition, Code::NotFound, Code::PermissionDenied] {
            assert_eq!(Reason::for_code(code), Reason::Rejected);
            assert!(!Reason::for_code(code).is_retryable());
        }
        assert!(Reason::Overloaded.is_retryable());
    }
}
