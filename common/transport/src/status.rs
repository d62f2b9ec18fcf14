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

use offramp_proto as pb;
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// The metadata key (a trailer of a unary call) by which a server tells a
/// client how long to wait before retrying, in milliseconds, as gRPC's retry
/// design (A6) defines it; over the offload stream and QUIC the same value
/// travels in [`pb::Error::retry_pushback_ms`].
pub const RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";

/// `status` with a retry hint of `ms` milliseconds.
pub fn with_pushback(status: Status, ms: u64) -> Status {
    let mut metadata = status.metadata().clone();
    metadata.insert(RETRY_PUSHBACK_MS, MetadataValue::from(ms));
    Status::with_metadata(status.code(), status.message().to_string(), metadata)
}

/// The retry hint a status carries, in milliseconds (`None`: no hint, or
/// one that is not a non-negative integer, as gRPC says to treat it).
pub fn pushback_ms(status: &Status) -> Option<u64> {
    status.metadata().get(RETRY_PUSHBACK_MS)?.to_str().ok()?.parse().ok()
}

/// A status as the error message of the offload stream and of QUIC error
/// frames: its code, message and retry hint.
pub fn to_error(status: &Status) -> pb::Error {
    pb::Error {
        code: status.code() as i32,
        message: status.message().to_string(),
        retry_pushback_ms: pushback_ms(status).map_or(0, |ms| ms.min(u32::MAX as u64) as u32),
    }
}

/// The status an error message stands for (the inverse of [`to_error`]).
pub fn from_error(e: pb::Error) -> Status {
    let status = Status::new(Code::from_i32(e.code), e.message);
    match e.retry_pushback_ms {
        0 => status,
        ms => with_pushback(status, ms as u64),
    }
}

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

    #[test]
    fn retry_hints_survive_the_error_message() {
        let s = with_pushback(Status::resource_exhausted("busy"), 25);
        assert_eq!(pushback_ms(&s), Some(25));
        let e = to_error(&s);
        assert_eq!((e.code, e.retry_pushback_ms), (Code::ResourceExhausted as i32, 25));
        let back = from_error(e);
        assert_eq!((back.code(), back.message(), pushback_ms(&back)), (Code::ResourceExhausted, "busy", Some(25)));
        // No hint stays no hint; a malformed one is none.
        assert_eq!(pushback_ms(&from_error(to_error(&Status::unavailable("x")))), None);
        let mut bad = Status::resource_exhausted("x");
        bad.metadata_mut().insert(RETRY_PUSHBACK_MS, MetadataValue::from_static("-3"));
        assert_eq!(pushback_ms(&bad), None);
    }
}
