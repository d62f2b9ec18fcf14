//! The Offramp wire protocol.
//!
//! The messages and services are defined in `proto/offramp.proto` and compiled
//! at build time with `protox` (no `protoc` needed). Everything else in the
//! workspace imports these re-exported types.

/// Generated code for package `offramp.v1`.
#[allow(clippy::all, missing_docs, rust_2018_idioms)]
pub mod v1 {
    tonic::include_proto!("offramp.v1");
}

pub use v1::*;

/// Version of the wire protocol this build speaks. Bumped on any incompatible
/// change; the edge refuses a cloud with a different version.
pub const PROTOCOL_VERSION: u32 = 1;

/// `ModelInfo.features` entry: the server takes variable-length token
/// sequences at the splits marked `SplitFingerprint.sequence`.
pub const FEATURE_TOKEN_SEQUENCES: &str = "token-sequences";

/// `ModelInfo.features` entry: the server also serves `SplitGeneration`
/// (decoder sessions).
pub const FEATURE_GENERATION: &str = "generation";

/// `DecoderInfo.features` entry: the cloud applies `DecodeStep`'s `top_k`,
/// `top_p` and `min_p` (an older cloud would ignore them, so an edge sends
/// them only to a cloud listing this).
pub const FEATURE_TRUNCATED_SAMPLING: &str = "truncated-sampling";

/// `DecoderInfo.features` entry: the cloud applies `DecodeStep.mask` and
/// `Draft.mask` (constrained decoding: a grammar's allowed tokens).
pub const FEATURE_TOKEN_MASKS: &str = "token-masks";

/// `DecoderInfo.features` entry: the cloud applies `DecodeStep`'s
/// `bias_tokens` / `bias_values` (OpenAI's `logit_bias`).
pub const FEATURE_LOGIT_BIAS: &str = "logit-bias";

/// `DecoderInfo.features` entry: the cloud answers `DecodeStep.logprobs`.
pub const FEATURE_LOGPROBS: &str = "logprobs";

/// Default gRPC port of the cloud service.
pub const DEFAULT_CLOUD_PORT: u16 = 50051;
