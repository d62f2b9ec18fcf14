//! Cloud-side errors and their one mapping to gRPC status codes.
//!
//! Every value a client chose (a model id, a shape, an edge id, a rule name)
//! enters a message bounded ([`offramp_common::codec::echo`]): a status whose
//! message repeats a 1 MiB model id exceeds a client's metadata limit, and the
//! client then sees a transport error instead of this one.

use offramp_common::codec::echo;
use offramp_common::codec::CodecError;
use offramp_common::model::Overflow;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The model id as the client sent it (bounded, [`echo::quoted`]) and
    /// the models this cloud serves.
    #[error("unknown model {0} (this cloud serves {1})")]
    UnknownModel(String, String),
    #[error("{0}")]
    FingerprintMismatch(String),
    #[error("split index {split} out of range: model {model} has {num_blocks} blocks, so the cloud serves K in 0..{num_blocks}")]
    SplitOutOfRange { model: String, split: usize, num_blocks: usize },
    #[error("this cloud holds blocks {start}..{end} of model {model}; split {split} needs blocks {split}..{end}")]
    SplitNotHeld { model: String, split: usize, start: usize, end: usize },
    #[error("request has no hidden-state tensor")]
    MissingTensor,
    /// `cancel` outside an `InferStream` (a unary call or QUIC stream is
    /// withdrawn by ending it).
    #[error("cancel is for InferStream requests; a unary call or QUIC stream is withdrawn by ending it")]
    CancelOutsideStream,
    #[error("hidden state: {0}")]
    Codec(#[from] CodecError),
    #[error("hidden state is encoded as {got}; this cloud accepts {accepted:?} (see its handshake)")]
    EncodingNotAccepted { got: &'static str, accepted: Vec<&'static str> },
    /// `expected` is the shape as written (`[392]`), or for a token
    /// sequence its bounds (`[1..=128 tokens, 384]`).
    #[error("hidden state has shape {got}, block {split} of model {model} expects {expected}")]
    Shape { model: String, split: usize, expected: String, got: echo::Shape },
    #[error("token id at position {index} is {value}: ids must be integers in 0..{vocab}")]
    TokenId { index: usize, value: f32, vocab: usize },
    #[error("exit history: {0}")]
    History(#[from] HistoryError),
    #[error("policy: {0}")]
    Policy(#[from] offramp_common::policy::PolicyError),
    /// The hidden state is finite but too large for the weights: somewhere in
    /// blocks `[split, N)` it overflowed, and the answer would have been NaN.
    #[error("hidden state at split {split} of model {model}: {overflow}")]
    Overflow { model: String, split: usize, overflow: Overflow },
    #[error("edge_id {claimed:?} does not match the edge this request's token belongs to ({authenticated:?})")]
    IdentityMismatch { claimed: String, authenticated: String },
    #[error("queue full ({0} requests waiting): try another endpoint or later")]
    Overloaded(usize),
    #[error("the cloud is {0}")]
    Unavailable(&'static str),
    #[error("compute failed: {0}")]
    Internal(String),
    /// A stream request's own deadline (`timeout_us`) passed before its
    /// answer was ready; it was dropped (before compute if still queued).
    #[error("deadline of {0} µs passed before the answer was ready")]
    DeadlineExceeded(u64),
}

/// Why a request's exit history (what the edge's exits said before the
/// split) cannot be true for this model and split. `entry` is the index in
/// the request's list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistoryError {
    #[error("{entries} entries, but only {edge_exits} exits (0..{edge_exits}) run before split {split}")]
    TooLong { entries: usize, edge_exits: usize, split: usize },
    #[error("entry {entry} names exit {exit}, impossible before split {split} (the edge's exits are 0..{edge_exits})")]
    NotBeforeSplit { entry: usize, exit: u32, split: usize, edge_exits: usize },
    #[error("entry {entry} names exit {exit} after exit {previous}: each exit appears once, in increasing order")]
    NotIncreasing { entry: usize, exit: u32, previous: u32 },
    #[error(
        "entry {entry} (exit {exit}) has confidence {confidence}: a top-1 probability is a finite value in [0, 1]"
    )]
    Confidence { entry: usize, exit: u32, confidence: f32 },
    #[error("entry {entry} (exit {exit}) predicts class {prediction}, but the model has {num_classes} classes (0..{num_classes})")]
    Prediction { entry: usize, exit: u32, prediction: u32, num_classes: usize },
}

impl CloudError {
    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            CloudError::UnknownModel(..) => Code::NotFound,
            CloudError::FingerprintMismatch(_) | CloudError::SplitNotHeld { .. } => Code::FailedPrecondition,
            CloudError::SplitOutOfRange { .. }
            | CloudError::MissingTensor
            | CloudError::CancelOutsideStream
            | CloudError::Codec(_)
            | CloudError::EncodingNotAccepted { .. }
            | CloudError::Shape { .. }
            | CloudError::TokenId { .. }
            | CloudError::History(_)
            | CloudError::Policy(_) => Code::InvalidArgument,
            // The input caused it, not the cloud: the same hidden state
            // overflows on every cloud holding these weights, so it is
            // `InvalidArgument` (the edge's reason `rejected`, never retried
            // elsewhere), not `Internal` (which the edge would retry).
            CloudError::Overflow { .. } => Code::InvalidArgument,
            CloudError::IdentityMismatch { .. } => Code::PermissionDenied,
            CloudError::Overloaded(_) => Code::ResourceExhausted,
            CloudError::Unavailable(_) => Code::Unavailable,
            CloudError::Internal(_) => Code::Internal,
            CloudError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }
}

impl From<CloudError> for Status {
    fn from(e: CloudError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}
