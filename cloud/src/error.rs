//! Cloud-side errors and their one mapping to gRPC status codes.
//!
//! Every value a client chose (a model id, a shape, an edge id, a rule name)
//! enters a message bounded ([`offramp_common::codec::echo`]): a status whose
//! message repeats a 1 MiB model id exceeds a client's metadata limit, and the
//! client then sees a transport error instead of this one.

use std::sync::Arc;
use std::time::Duration;

use offramp_common::codec::echo;
use offramp_common::codec::CodecError;
use offramp_common::decoder::speculative::SparseDistError;
use offramp_common::decoder::DecoderError;
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
    /// `--max-queue` requests are queued already (the hard bound behind
    /// [`CloudError::OverBudget`]).
    #[error("queue full ({0} requests waiting): try another endpoint or later")]
    Overloaded(usize),
    /// Refused on arrival: the cloud cannot be expected to answer within
    /// the request's budget ([`crate::admission`]).
    #[error("{}", overloaded(.0))]
    OverBudget(crate::admission::Refusal),
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
            CloudError::Overloaded(_) | CloudError::OverBudget(_) => Code::ResourceExhausted,
            CloudError::Unavailable(_) => Code::Unavailable,
            CloudError::Internal(_) => Code::Internal,
            CloudError::DeadlineExceeded(_) => Code::DeadlineExceeded,
        }
    }
}

impl CloudError {
    /// How long a refused caller should wait before trying this cloud again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::OverBudget(r) => Some(r.retry_after),
            _ => None,
        }
    }
}

/// The message of a request refused on arrival.
fn overloaded(r: &crate::admission::Refusal) -> String {
    format!(
        "overloaded: behind the {} requests in flight this one would wait about {:.1} ms, over its budget of {:.1} \
         ms (deadline or --max-queue-delay); retry in {} ms or try another endpoint",
        r.in_flight,
        r.expected.as_secs_f64() * 1e3,
        r.budget.as_secs_f64() * 1e3,
        r.retry_after.as_millis()
    )
}

/// Its status; overload refusals carry their retry hint
/// (`grpc-retry-pushback-ms`).
impl From<CloudError> for Status {
    fn from(e: CloudError) -> Self {
        let status = Status::new(e.code(), e.to_string());
        match e.retry_after() {
            Some(after) => offramp_transport::status::with_pushback(status, after.as_millis().max(1) as u64),
            None => status,
        }
    }
}

/// Why a generation session, or one of its steps, was refused or ended.
///
/// A step refused on arrival or by the engine before it touched the cache
/// (the validation variants, [`SessionError::NotContiguous`]) is answered
/// with the step's request id and the session goes on; the others end the
/// session. [`SessionError::code`] follows [`CloudError::code`]'s table:
/// overload → `ResourceExhausted`, fingerprint / split not held →
/// `FailedPrecondition`, unknown model → `NotFound`, validation →
/// `InvalidArgument`, engine stopped → `Unavailable`, compute failure →
/// `Internal`.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    // The stream.
    #[error("the first message of a Generate stream must open a session (`open`)")]
    NotOpened,
    #[error("this stream's session is already open; one session per stream")]
    AlreadyOpen,
    #[error("an empty GenerateRequest (neither open nor step)")]
    EmptyMessage,
    #[error("the session was idle for more than {0:?} (--session-ttl)")]
    IdleTimeout(Duration),
    /// The edge's side of the stream failed; its status is passed on as is.
    #[error("{}", .0.message())]
    Inbound(Status),
    #[error("the edge went away")]
    EdgeGone,

    // Opening: which model, which split, how long.
    /// The model id as the edge sent it (bounded, [`echo::quoted`]) and the
    /// decoders this cloud serves.
    #[error("unknown decoder {model} (this cloud serves {serves})")]
    UnknownModel { model: String, serves: String },
    #[error("this cloud holds layers {start}..{end} of {model}; split {split} needs layers {split}..{layers}")]
    SplitNotHeld { model: String, split: usize, start: usize, end: usize, layers: usize },
    /// `expected`: the edge's (bounded, quoted); `held`: this cloud's, cut
    /// to 12 characters.
    #[error("fingerprint mismatch for {model} at split {split}: the edge expects {expected}, this cloud holds {held}")]
    FingerprintMismatch { model: String, split: usize, expected: String, held: String },
    #[error("the session asks for {asked} positions; {model} has a context of {context}")]
    ContextExceeded { asked: usize, model: String, context: usize },
    #[error("the session asks for {asked} positions; the limit is {limit} tokens per session (--max-session-tokens)")]
    SessionTokenLimit { asked: usize, limit: usize },

    // Admission.
    #[error("the cloud holds its maximum of {0} sessions (--max-sessions)")]
    TooManySessions(usize),
    /// Bytes: what the session needs, what is reserved already, the budget.
    #[error(
        "KV cache budget: the session needs {} KiB, {} of {} KiB are reserved (--kv-budget)",
        .need / 1024, .reserved / 1024, .budget / 1024
    )]
    KvBudget { need: usize, reserved: usize, budget: usize },

    // A step, checked on arrival.
    #[error("unknown want {0}")]
    UnknownWant(i32),
    #[error("WANT_SAMPLE needs a positive temperature (got {0})")]
    SampleNeedsTemperature(f32),
    #[error("temperature must be finite and non-negative (got {0})")]
    Temperature(f32),
    #[error("uniform must be in [0, 1] (got {0})")]
    Uniform(f32),
    #[error("sampling truncation: {0}")]
    Truncation(#[from] offramp_common::decoder::sample::TruncationError),
    #[error("drafts and `speculative` belong to WANT_VERIFY steps")]
    DraftsWithoutVerify,
    /// A mask, bias or log-probability request that is not one.
    #[error("{0}")]
    Logits(#[from] offramp_common::decoder::logits::LogitsError),
    #[error("a WANT_VERIFY step's masks go on its drafts (Draft.mask), not on the step")]
    MaskOnVerify,
    #[error("the step has no hidden-state tensor")]
    MissingTensor,
    #[error("hidden state is encoded as {got}; this cloud accepts {accepted:?}")]
    EncodingNotAccepted { got: &'static str, accepted: Vec<&'static str> },
    #[error("hidden state: {0}")]
    Codec(#[from] CodecError),
    #[error("hidden state has shape {got}, the session expects [T >= 1, {hidden}]")]
    Shape { got: echo::Shape, hidden: usize },
    #[error("positions {start}..{end} run past the session's {max_positions} positions (max tokens per session)")]
    PastSessionEnd { start: usize, end: usize, max_positions: usize },
    #[error("the hidden state holds a non-finite value")]
    NonFinite,
    #[error("WANT_VERIFY needs one draft per position: {drafts} drafts for {positions} positions")]
    DraftCount { drafts: usize, positions: usize },
    #[error("draft {index}: {error}")]
    BadDraft { index: usize, error: DraftError },

    // A step, checked by the engine against the session's cache.
    #[error("the step starts at position {position} but the session's cache holds {cached} positions (steps must be contiguous)")]
    NotContiguous { position: usize, cached: usize },

    // The engine.
    #[error("the decode engine stopped")]
    EngineStopped,
    /// Layers `K..N` failed on a batch (every step in it gets this error).
    #[error("decode step failed: {0}")]
    Compute(Arc<DecoderError>),
    #[error("LM head failed: {0}")]
    Head(Arc<DecoderError>),
    /// The step's hidden state was finite but overflowed in layers `K..N`:
    /// the input's fault, as [`CloudError::Overflow`].
    #[error("the logits are not finite (the hidden state overflowed in layers K..N)")]
    Overflow,
}

/// Why one draft of a WANT_VERIFY step cannot be checked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DraftError {
    #[error("token {token} is outside the vocabulary of {vocab}")]
    TokenOutsideVocab { token: u32, vocab: usize },
    #[error(transparent)]
    Distribution(#[from] SparseDistError),
    #[error("token {0} has no probability under its draft distribution")]
    NoProbability(u32),
    #[error("uniform numbers must be in [0, 1] (got {0})")]
    Uniform(f32),
}

impl SessionError {
    /// The gRPC code this error maps to (the same table as
    /// [`CloudError::code`]).
    pub fn code(&self) -> Code {
        use SessionError as E;
        match self {
            E::Inbound(status) => status.code(),
            E::EdgeGone => Code::Cancelled,
            E::UnknownModel { .. } => Code::NotFound,
            E::SplitNotHeld { .. } | E::FingerprintMismatch { .. } => Code::FailedPrecondition,
            E::IdleTimeout(_)
            | E::SessionTokenLimit { .. }
            | E::TooManySessions(_)
            | E::KvBudget { .. }
            | E::PastSessionEnd { .. } => Code::ResourceExhausted,
            E::NotOpened
            | E::AlreadyOpen
            | E::EmptyMessage
            | E::ContextExceeded { .. }
            | E::UnknownWant(_)
            | E::SampleNeedsTemperature(_)
            | E::Temperature(_)
            | E::Uniform(_)
            | E::Truncation(_)
            | E::DraftsWithoutVerify
            | E::Logits(_)
            | E::MaskOnVerify
            | E::MissingTensor
            | E::EncodingNotAccepted { .. }
            | E::Codec(_)
            | E::Shape { .. }
            | E::NonFinite
            | E::DraftCount { .. }
            | E::BadDraft { .. }
            | E::NotContiguous { .. } => Code::InvalidArgument,
            // The input caused it, as `CloudError::Overflow`.
            E::Overflow => Code::InvalidArgument,
            E::EngineStopped => Code::Unavailable,
            E::Compute(_) | E::Head(_) => Code::Internal,
        }
    }
}

impl From<SessionError> for Status {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Inbound(status) => status,
            e => Status::new(e.code(), e.to_string()),
        }
    }
}
