//! Cloud-side errors and their one mapping to gRPC status codes.

use offramp_common::codec::CodecError;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    #[error("unknown model {0:?} (this cloud serves {1})")]
    UnknownModel(String, String),
    #[error("{0}")]
    FingerprintMismatch(String),
    #[error("split index {split} out of range: model {model} has {num_blocks} blocks, so the cloud serves K in 0..{num_blocks}")]
    SplitOutOfRange { model: String, split: usize, num_blocks: usize },
    #[error("this cloud holds blocks {start}..{end} of model {model}; split {split} needs blocks {split}..{end}")]
    SplitNotHeld { model: String, split: usize, start: usize, end: usize },
    #[error("request has no hidden-state tensor")]
    MissingTensor,
    #[error("hidden state: {0}")]
    Codec(#[from] CodecError),
    #[error("hidden state is encoded as {got}; this cloud accepts {accepted:?} (see its handshake)")]
    EncodingNotAccepted { got: &'static str, accepted: Vec<&'static str> },
    #[error("hidden state has shape {got:?}, block {split} of model {model} expects {expected:?}")]
    Shape { model: String, split: usize, expected: Vec<usize>, got: Vec<usize> },
    #[error("exit history: {0}")]
    History(String),
    #[error("policy: {0}")]
    Policy(#[from] offramp_common::policy::PolicyError),
    #[error("edge_id {claimed:?} does not match the edge this request's token belongs to ({authenticated:?})")]
    IdentityMismatch { claimed: String, authenticated: String },
    #[error("queue full ({0} requests waiting): try another endpoint or later")]
    Overloaded(usize),
    #[error("the cloud is {0}")]
    Unavailable(&'static str),
    #[error("compute failed: {0}")]
    Internal(String),
}

impl CloudError {
    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            CloudError::UnknownModel(..) => Code::NotFound,
            CloudError::FingerprintMismatch(_) | CloudError::SplitNotHeld { .. } => Code::FailedPrecondition,
            CloudError::SplitOutOfRange { .. }
            | CloudError::MissingTensor
            | CloudError::Codec(_)
            | CloudError::EncodingNotAccepted { .. }
            | CloudError::Shape { .. }
            | CloudError::History(_)
            | CloudError::Policy(_) => Code::InvalidArgument,
            CloudError::IdentityMismatch { .. } => Code::PermissionDenied,
            CloudError::Overloaded(_) => Code::ResourceExhausted,
            CloudError::Unavailable(_) => Code::Unavailable,
            CloudError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CloudError> for Status {
    fn from(e: CloudError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
