//! What an endpoint must hold for this edge, checked on its handshake
//! answer: the same rules (protocol version, model, split, fingerprints,
//! encodings) for classifiers ([`check_handshake`]) and decoders
//! ([`check_decoder`]). A failed check is a [`HandshakeError`], which never
//! heals: the endpoint is not tried again.

use offramp_proto as pb;

/// What an endpoint must hold for this edge.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub model_id: String,
    /// Every split this edge may offload at (one, or with
    /// `--adaptive-split` every candidate), with its fingerprints.
    pub splits: Vec<SplitExpectation>,
    /// The hidden-state encodings this edge may send, each with the
    /// lossless compression on top (`None`: none); the cloud must list them.
    pub encodings: Vec<(pb::Encoding, pb::Compression)>,
}

/// The fingerprints of one split point.
#[derive(Debug, Clone)]
pub struct SplitExpectation {
    pub split: usize,
    /// Cloud-side fingerprint this edge expects at `split`.
    pub cloud_fingerprint: String,
    /// This edge's own fingerprint of blocks `[0, split)`.
    pub edge_fingerprint: String,
}

/// Why an edge cannot use a cloud endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The cloud holds another model, split, protocol or encodings; the
    /// message says which and what to do.
    #[error("{0}")]
    Incompatible(String),
    #[error("cloud {url} refused this edge's credentials: {message}")]
    Credentials { url: String, message: String },
}

/// Both sides speak this edge's protocol version.
fn check_protocol(url: &str, version: u32) -> Result<(), HandshakeError> {
    if version == pb::PROTOCOL_VERSION {
        return Ok(());
    }
    Err(HandshakeError::Incompatible(format!(
        "cloud {url} speaks protocol version {version}, this edge speaks {}",
        pb::PROTOCOL_VERSION
    )))
}

/// Checks a classifier handshake answer against what this edge holds.
pub fn check_handshake(url: &str, info: &pb::ModelInfo, expect: &Expectation) -> Result<(), HandshakeError> {
    let incompatible = HandshakeError::Incompatible;
    check_protocol(url, info.protocol_version)?;
    let short = |s: &str| if s.is_empty() { "<none>".to_string() } else { s.chars().take(12).collect() };
    for want in &expect.splits {
        let Some(split) = info.splits.iter().find(|s| s.split as usize == want.split) else {
            let held: Vec<u32> = info.splits.iter().map(|s| s.split).collect();
            return Err(incompatible(format!(
                "cloud {url} holds model {:?} and serves splits {held:?}, not split {} that this edge uses",
                info.model_id, want.split
            )));
        };
        if info.model_id != expect.model_id || split.cloud_fingerprint != want.cloud_fingerprint {
            return Err(incompatible(format!(
                "cloud {url} holds model {:?} with cloud-side fingerprint {} at split {}, but this edge holds model \
                 {:?} expecting cloud-side fingerprint {} (edge side {}): edge and cloud were built from different \
                 weights",
                info.model_id,
                short(&split.cloud_fingerprint),
                want.split,
                expect.model_id,
                short(&want.cloud_fingerprint),
                short(&want.edge_fingerprint),
            )));
        }
        if !split.edge_fingerprint.is_empty() && split.edge_fingerprint != want.edge_fingerprint {
            return Err(incompatible(format!(
                "cloud {url} expects edge-side fingerprint {} at split {}, this edge holds {}: the edge's weights differ",
                short(&split.edge_fingerprint),
                want.split,
                short(&want.edge_fingerprint)
            )));
        }
    }
    for &(encoding, compression) in &expect.encodings {
        check_encoding(url, info, encoding, compression)?;
    }
    Ok(())
}

fn check_encoding(
    url: &str,
    info: &pb::ModelInfo,
    encoding: pb::Encoding,
    compression: pb::Compression,
) -> Result<(), HandshakeError> {
    let incompatible = HandshakeError::Incompatible;
    if !info.encodings.contains(&(encoding as i32)) {
        let names: Vec<&str> = info
            .encodings
            .iter()
            .map(|&e| pb::Encoding::try_from(e).map_or("unknown", offramp_common::codec::encoding_name))
            .collect();
        return Err(incompatible(format!(
            "cloud {url} accepts hidden-state encodings {names:?}, this edge sends {}: pick one of them with --encoding",
            offramp_common::codec::encoding_name(encoding)
        )));
    }
    if compression != pb::Compression::None && !info.compressions.contains(&(compression as i32)) {
        return Err(incompatible(format!(
            "cloud {url} does not accept {}-compressed hidden states (it lists {:?}): use --compression none",
            offramp_common::codec::compression_name(compression),
            info.compressions
        )));
    }
    Ok(())
}

/// What a decoder edge expects of a cloud for its sessions.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub model_id: String,
    pub split: usize,
    pub cloud_fingerprint: String,
    pub max_positions: usize,
    pub encoding: pb::Encoding,
    pub edge_id: String,
}

/// What a cloud that passed the decoder handshake offers a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloudOffer {
    /// Most positions one step may carry (its payload limit over a state's size).
    pub max_rows: usize,
    /// It applies `top_k` / `top_p` / `min_p` (older clouds ignore them).
    pub truncated_sampling: bool,
    /// It applies token masks (constrained decoding).
    pub token_masks: bool,
    /// It applies a logit bias.
    pub logit_bias: bool,
    /// It reports log-probabilities.
    pub logprobs: bool,
}

/// Checks a decoder handshake answer against `spec`, and what the cloud offers.
pub fn check_decoder(url: &str, info: &pb::DecoderInfo, spec: &SessionSpec) -> Result<CloudOffer, HandshakeError> {
    let incompatible = HandshakeError::Incompatible;
    check_protocol(url, info.protocol_version)?;
    let Some(model) = info.models.iter().find(|m| m.model_id == spec.model_id) else {
        let held: Vec<&str> = info.models.iter().map(|m| m.model_id.as_str()).collect();
        return Err(incompatible(format!("cloud {url} does not hold decoder {} (it holds {held:?})", spec.model_id)));
    };
    let Some(split) = model.splits.iter().find(|s| s.split as usize == spec.split) else {
        let held: Vec<u32> = model.splits.iter().map(|s| s.split).collect();
        return Err(incompatible(format!(
            "cloud {url} serves splits {held:?} of {}, not split {} that this edge uses",
            spec.model_id, spec.split
        )));
    };
    if split.cloud_fingerprint != spec.cloud_fingerprint {
        let short = |s: &str| s.chars().take(12).collect::<String>();
        return Err(incompatible(format!(
            "fingerprint mismatch at split {} of {}: cloud {url} holds {}, this edge expects {}: edge and cloud were \
             built from different weights",
            spec.split,
            spec.model_id,
            short(&split.cloud_fingerprint),
            short(&spec.cloud_fingerprint)
        )));
    }
    if !info.encodings.contains(&(spec.encoding as i32)) {
        return Err(incompatible(format!(
            "cloud {url} does not accept {} hidden states: pick another with --encoding",
            offramp_common::codec::encoding_name(spec.encoding)
        )));
    }
    let width = model.hidden as usize * offramp_common::codec::element_size(spec.encoding);
    let offers = |feature: &str| info.features.iter().any(|f| f == feature);
    Ok(CloudOffer {
        max_rows: ((info.max_payload_bytes as usize).saturating_sub(1024) / width.max(1)).max(1),
        truncated_sampling: offers(pb::FEATURE_TRUNCATED_SAMPLING),
        token_masks: offers(pb::FEATURE_TOKEN_MASKS),
        logit_bias: offers(pb::FEATURE_LOGIT_BIAS),
        logprobs: offers(pb::FEATURE_LOGPROBS),
    })
}

/// A handshake call that failed: refused credentials never heal; anything
/// else is the call's own error.
pub fn handshake_failure(url: &str, status: &tonic::Status) -> super::LinkError {
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            HandshakeError::Credentials { url: url.to_string(), message: status.message().to_string() }.into()
        }
        _ => super::LinkError::from_status(url, status),
    }
}

/// The decoder handshake with one endpoint within `timeout`: what it offers,
/// or why not ([`super::LinkError::Incompatible`] when it never will).
pub async fn decoder_handshake(
    ep: &super::Endpoint,
    spec: &SessionSpec,
    timeout: std::time::Duration,
) -> Result<CloudOffer, super::LinkError> {
    let info = ep.transport.decoder_info(timeout).await.map_err(|s| handshake_failure(&ep.url, &s))?;
    Ok(check_decoder(&ep.url, &info, spec)?)
}
