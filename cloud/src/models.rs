//! The models a cloud serves: bundles, fingerprints per split, default policies,
//! and request validation against them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use offramp_common::codec::echo;
use offramp_common::decoder::DecoderBundle;
use offramp_common::model::{Observation, SplitSide};
use offramp_common::policy::{PolicyError, PolicyFile};
use offramp_common::{codec, Bundle, Executor, ModelError, Policy};
use offramp_proto as pb;

use crate::config::ModelSource;
use crate::error::{CloudError, HistoryError};

/// Why the models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading model bundle {}: {source}", dir.display())]
    Bundle { dir: PathBuf, source: ModelError },
    #[error("model {model}: {source}")]
    Policy { model: String, source: PolicyError },
    #[error("loading decoder bundle {}: {source}", dir.display())]
    Decoder { dir: PathBuf, source: offramp_common::decoder::DecoderError },
    #[error("model {0:?} given twice")]
    Duplicate(String),
    #[error("no model given: pass --model DIR")]
    NoModel,
}

/// One model held by the cloud (the whole model, or its cloud side).
#[derive(Debug)]
pub struct ModelSlot {
    pub id: String,
    pub bundle: Arc<Bundle>,
    pub exec: Executor,
    /// Policy for cloud-side exits when a request sends none.
    pub policy: Arc<Policy>,
    /// Cloud fingerprint per servable split.
    pub fingerprints: BTreeMap<usize, String>,
}

/// A request that passed validation, ready for compute.
#[derive(Debug)]
pub struct ValidRequest {
    pub model: Arc<ModelSlot>,
    pub split: usize,
    pub input: Vec<f32>,
    pub history: Vec<Observation>,
    pub policy: Arc<Policy>,
}

#[derive(Default)]
pub struct Registry {
    models: BTreeMap<String, Arc<ModelSlot>>,
    /// Decoder bundles (generation sessions; [`crate::generation`]),
    /// handed to the generation engine at start.
    pub decoders: Vec<crate::generation::DecoderSlot>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("decoders", &self.decoders.iter().map(|d| &d.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// Loads every model (bundle directories are read here); `policy`
    /// overrides the bundles' own policies.
    pub fn load(sources: &[ModelSource], policy: Option<&PolicyFile>) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        let mut decoders: Vec<crate::generation::DecoderSlot> = Vec::new();
        for source in sources {
            if let ModelSource::Dir(dir) = source {
                // The cloud's one dispatch point between model kinds.
                if offramp_common::AnyBundle::kind_of(dir) == Some(offramp_common::ModelKind::Decoder) {
                    let load = || crate::generation::DecoderSlot::load(DecoderBundle::open(dir)?);
                    let slot = load().map_err(|source| LoadError::Decoder { dir: dir.clone(), source })?;
                    tracing::info!(model = %slot.id, from = %dir.display(), held = ?slot.bundle.holds(), "loaded decoder");
                    if decoders.iter().any(|d| d.id == slot.id) {
                        return Err(LoadError::Duplicate(slot.id));
                    }
                    decoders.push(slot);
                    continue;
                }
            }
            let (bundle, origin) = match source {
                ModelSource::Dir(dir) => (
                    Arc::new(Bundle::load(dir).map_err(|source| LoadError::Bundle { dir: dir.clone(), source })?),
                    dir.display().to_string(),
                ),
                ModelSource::Loaded(b) => (b.clone(), "in memory".to_string()),
            };
            let id = bundle.model_id().to_string();
            let (policy, policy_origin) = match policy {
                Some(file) => (Policy::from_file(file, bundle.num_exits()), "--policy".to_string()),
                None => match Policy::for_bundle(None, &bundle) {
                    Ok((p, path)) => (
                        Ok(p),
                        path.map(|p| p.display().to_string()).unwrap_or_else(|| "none (final exit only)".into()),
                    ),
                    Err(e) => (Err(e), String::new()),
                },
            };
            let policy = policy.map_err(|source| LoadError::Policy { model: id.clone(), source })?;
            let fingerprints = bundle
                .splits(SplitSide::Cloud)
                .into_iter()
                .filter(|&k| k < bundle.num_blocks())
                .filter_map(|k| Some((k, bundle.fingerprint(SplitSide::Cloud, k)?)))
                .collect();
            tracing::info!(model = %id, from = %origin, held = ?bundle.held(), policy = %policy_origin, "loaded model");
            let slot = ModelSlot {
                id: id.clone(),
                exec: Executor::new(bundle.clone()),
                bundle,
                policy: Arc::new(policy),
                fingerprints,
            };
            if models.insert(id.clone(), Arc::new(slot)).is_some() {
                return Err(LoadError::Duplicate(id));
            }
        }
        if models.is_empty() && decoders.is_empty() {
            return Err(LoadError::NoModel);
        }
        Ok(Self { models, decoders })
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<ModelSlot>> {
        self.models.values()
    }

    fn names(&self) -> String {
        self.models.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    /// Looks a model up; an empty id means "the only model".
    pub fn get(&self, id: &str) -> Result<&Arc<ModelSlot>, CloudError> {
        if id.is_empty() && self.models.len() == 1 {
            return Ok(self.models.values().next().expect("one model"));
        }
        self.models.get(id).ok_or_else(|| CloudError::UnknownModel(echo::quoted(id), self.names()))
    }

    /// The handshake answer, listing the encodings this cloud accepts.
    pub fn info(&self, max_payload_bytes: usize, encodings: &[pb::Encoding]) -> Vec<pb::ModelInfo> {
        self.models
            .values()
            .map(|m| pb::ModelInfo {
                protocol_version: pb::PROTOCOL_VERSION,
                model_id: m.id.clone(),
                splits: m
                    .fingerprints
                    .iter()
                    .map(|(&k, fp)| pb::SplitFingerprint {
                        split: k as u32,
                        cloud_fingerprint: fp.clone(),
                        edge_fingerprint: m.bundle.expected_fingerprint(SplitSide::Edge, k).unwrap_or_default(),
                        input_shape: m
                            .bundle
                            .shape_at(k)
                            .map(|s| s.iter().map(|&d| d as u32).collect())
                            .unwrap_or_default(),
                        sequence: m.bundle.is_sequence_at(k),
                    })
                    .collect(),
                features: vec![pb::FEATURE_TOKEN_SEQUENCES.to_string()],
                encodings: encodings.iter().map(|&e| e as i32).collect(),
                compressions: codec::COMPRESSIONS.iter().map(|&c| c as i32).collect(),
                num_blocks: m.bundle.num_blocks() as u32,
                labels: m.bundle.labels().to_vec(),
                max_payload_bytes: max_payload_bytes as u64,
            })
            .collect()
    }

    /// Checks everything about a request before it may take a queue slot.
    pub fn validate(&self, req: &pb::InferRequest, max_payload_bytes: usize) -> Result<ValidRequest, CloudError> {
        let model = self.get(&req.model_id)?;
        let b = &model.bundle;
        let (split, n) = (req.split as usize, b.num_blocks());
        if split >= n {
            return Err(CloudError::SplitOutOfRange { model: model.id.clone(), split, num_blocks: n });
        }
        let Some(expected) = model.fingerprints.get(&split) else {
            return Err(CloudError::SplitNotHeld {
                model: model.id.clone(),
                split,
                start: b.held().start,
                end: b.held().end,
            });
        };
        if &req.model_fingerprint != expected {
            return Err(CloudError::FingerprintMismatch(format!(
                "model fingerprint mismatch at split {split}: the request expects cloud side {}, this cloud holds model {} \
                 with cloud side {} (edge and cloud were built from different weights)",
                short(&req.model_fingerprint),
                model.id,
                short(expected)
            )));
        }
        let tensor = req.hidden.as_ref().ok_or(CloudError::MissingTensor)?;
        let (shape, input) = codec::decode(tensor, max_payload_bytes)?;
        let want = b.shape_at(split).map_err(|e| CloudError::Internal(e.to_string()))?;
        // A token sequence carries its real tokens only: [T, rest] with
        // 1 <= T <= the longest sequence.
        let fits = if b.is_sequence_at(split) {
            shape.len() == want.len() && (1..=want[0]).contains(&shape[0]) && shape[1..] == want[1..]
        } else {
            shape == want
        };
        if split == 0 && b.takes_tokens() {
            let vocab = b.vocab_size().unwrap_or(usize::MAX);
            if let Some(index) = input.iter().position(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as usize) < vocab)) {
                return Err(CloudError::TokenId { index, value: input[index], vocab });
            }
        }
        if !fits {
            let expected = if b.is_sequence_at(split) {
                let rest: Vec<String> = want[1..].iter().map(|d| format!(", {d}")).collect();
                format!("[1..={} tokens{}]", want[0], rest.concat())
            } else {
                format!("{want:?}")
            };
            return Err(CloudError::Shape {
                model: model.id.clone(),
                split,
                expected,
                got: echo::Shape::of_usize(&shape),
            });
        }
        // Exits are listed in block order: those before the split are 0..edge_exits.
        let edge_exits = b.exits_in(split..n).first().copied().unwrap_or(b.num_exits());
        let history = validate_history(req.history.as_ref(), split, edge_exits, b.num_classes())?;
        let policy = if req.policy.is_empty() {
            model.policy.clone()
        } else {
            Arc::new(Policy::with_wire(&model.policy, &req.policy, edge_exits..b.num_exits())?)
        };
        Ok(ValidRequest { model: model.clone(), split, input, history, policy })
    }
}

/// Checks an exit history against the model and the split: at most one
/// entry per exit before the split (the bound is checked before anything is
/// allocated), exits before the split in strictly increasing order,
/// confidences finite and in `[0, 1]`, predictions among the model's classes.
pub fn validate_history(
    history: Option<&pb::ExitHistory>,
    split: usize,
    edge_exits: usize,
    num_classes: usize,
) -> Result<Vec<Observation>, HistoryError> {
    let entries = history.map_or(&[][..], |h| h.exits.as_slice());
    if entries.len() > edge_exits {
        return Err(HistoryError::TooLong { entries: entries.len(), edge_exits, split });
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut previous: Option<u32> = None;
    for (entry, o) in entries.iter().enumerate() {
        let exit = o.exit;
        if exit as usize >= edge_exits {
            return Err(HistoryError::NotBeforeSplit { entry, exit, split, edge_exits });
        }
        if let Some(previous) = previous.filter(|&p| exit <= p) {
            return Err(HistoryError::NotIncreasing { entry, exit, previous });
        }
        if !(0.0..=1.0).contains(&o.confidence) {
            return Err(HistoryError::Confidence { entry, exit, confidence: o.confidence });
        }
        if o.prediction as usize >= num_classes {
            return Err(HistoryError::Prediction { entry, exit, prediction: o.prediction, num_classes });
        }
        previous = Some(exit);
        out.push(Observation { exit: exit as usize, prediction: o.prediction as usize, confidence: o.confidence });
    }
    Ok(out)
}

/// First 12 hex digits of a fingerprint, for messages.
pub fn short(fp: &str) -> String {
    if fp.is_empty() {
        "<none>".into()
    } else {
        fp.chars().take(12).collect()
    }
}

/// Tiny seeded models and requests for the crate's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use offramp_common::model::arch::{init_weights, Arch};
    use offramp_common::model::SplitSide;
    use offramp_common::{codec, Bundle};
    use offramp_proto as pb;

    use super::Registry;
    use crate::batcher::Batcher;
    use crate::config::{BatchConfig, ModelSource};
    use crate::service::CloudState;

    /// The tiny 3-exit network (blocks conv1, conv2, flatten, fc1; exits
    /// after blocks 0, 2 and 3), seeded.
    pub fn tiny() -> Bundle {
        let m = Arch::Tiny.manifest("tiny");
        Bundle::from_parts(m.clone(), init_weights(&m, 3).unwrap()).unwrap()
    }

    pub fn registry() -> Registry {
        Registry::load(&[ModelSource::Loaded(Arc::new(tiny()))], None).unwrap()
    }

    pub fn state() -> CloudState {
        CloudState {
            registry: registry(),
            batcher: Batcher::start(BatchConfig::default()).unwrap(),
            admission: crate::admission::Admission::new(
                crate::config::defaults::MAX_QUEUE_DELAY,
                crate::config::defaults::MAX_BATCH,
            ),
            max_payload_bytes: 1 << 20,
            encodings: codec::ENCODINGS.to_vec(),
            draining: false.into(),
            generation: Default::default(),
        }
    }

    /// A well-formed request at `split` carrying `values` (the hidden state,
    /// flat) with an empty history.
    pub fn request(split: usize, values: &[f32]) -> pb::InferRequest {
        let b = tiny();
        let shape = b.shape_at(split).unwrap().to_vec();
        pb::InferRequest {
            request_id: 1,
            model_id: "tiny".into(),
            model_fingerprint: b.fingerprint(SplitSide::Cloud, split).unwrap(),
            split: split as u32,
            hidden: Some(codec::encode(values, &shape, pb::Encoding::F32)),
            want_probabilities: true,
            ..Default::default()
        }
    }

    pub fn observation(exit: u32, prediction: u32, confidence: f32) -> pb::ExitObservation {
        pb::ExitObservation { exit, prediction, confidence }
    }
}

#[cfg(test)]
mod tests {
    use offramp_common::policy::PolicyError;
    use offramp_proto as pb;
    use tonic::Code;

    use super::testing::{observation, registry, request};
    use super::*;

    fn with_history(exits: Vec<pb::ExitObservation>) -> pb::InferRequest {
        let mut r = request(3, &[0.5; 392]);
        r.history = Some(pb::ExitHistory { exits });
        r
    }

    fn history_error(r: &Registry, req: &pb::InferRequest) -> HistoryError {
        match r.validate(req, 1 << 20) {
            Err(CloudError::History(e)) => e,
            other => panic!("expected a history error, got {other:?}"),
        }
    }

    #[test]
    fn exit_histories_are_checked_against_the_model_and_the_split() {
        let r = registry();
        // At split 3 the edge ran exits 0 and 1 (after blocks 0 and 2).
        let ok = r.validate(&with_history(vec![observation(0, 3, 0.4), observation(1, 3, 1.0)]), 1 << 20).unwrap();
        assert_eq!(ok.history.len(), 2);
        r.validate(&with_history(vec![observation(1, 9, 0.0)]), 1 << 20).unwrap();
        r.validate(&with_history(vec![]), 1 << 20).unwrap();

        let e = history_error(&r, &with_history(vec![observation(0, 1, 0.5); 3]));
        assert_eq!(e, HistoryError::TooLong { entries: 3, edge_exits: 2, split: 3 });
        // The bound holds whatever the size.
        let e = history_error(&r, &with_history(vec![observation(0, 1, 0.5); 100_000]));
        assert!(matches!(e, HistoryError::TooLong { entries: 100_000, .. }), "{e:?}");
        let e = history_error(&r, &with_history(vec![observation(2, 1, 0.5)]));
        assert_eq!(e, HistoryError::NotBeforeSplit { entry: 0, exit: 2, split: 3, edge_exits: 2 });
        assert!(e.to_string().contains("impossible before split 3"), "{e}");
        let e = history_error(&r, &with_history(vec![observation(1, 1, 0.5), observation(0, 1, 0.5)]));
        assert_eq!(e, HistoryError::NotIncreasing { entry: 1, exit: 0, previous: 1 });
        let e = history_error(&r, &with_history(vec![observation(0, 1, 0.5), observation(0, 1, 0.5)]));
        assert!(matches!(e, HistoryError::NotIncreasing { entry: 1, .. }), "{e:?}");
        for confidence in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.01, 1.01] {
            let e = history_error(&r, &with_history(vec![observation(0, 1, confidence)]));
            assert!(matches!(e, HistoryError::Confidence { entry: 0, exit: 0, .. }), "{confidence}: {e:?}");
            assert!(e.to_string().contains("[0, 1]"), "{e}");
        }
        let e = history_error(&r, &with_history(vec![observation(0, 10, 0.5)]));
        assert_eq!(e, HistoryError::Prediction { entry: 0, exit: 0, prediction: 10, num_classes: 10 });
        // At split 1 only exit 0 runs before.
        let mut at1 = request(1, &[0.5; 4 * 14 * 14]);
        at1.history = Some(pb::ExitHistory { exits: vec![observation(1, 0, 0.5)] });
        assert!(matches!(history_error(&r, &at1), HistoryError::NotBeforeSplit { exit: 1, edge_exits: 1, .. }));
        // At split 0 no exit runs before: any entry is too many.
        let mut at0 = request(0, &[0.5; 784]);
        at0.history = Some(pb::ExitHistory { exits: vec![observation(0, 0, 0.5)] });
        assert!(matches!(history_error(&r, &at0), HistoryError::TooLong { edge_exits: 0, .. }));
        assert_eq!(CloudError::from(history_error(&r, &at0)).code(), Code::InvalidArgument);
    }

    fn rule(exit: u32, rule: &str, threshold: f32, patience: u32) -> pb::ExitRuleSpec {
        pb::ExitRuleSpec { exit, rule: rule.into(), threshold, patience }
    }

    fn policy_error(r: &Registry, split: usize, rules: Vec<pb::ExitRuleSpec>) -> PolicyError {
        let mut req = request(split, &vec![0.5; tiny_len(split)]);
        req.policy = rules;
        match r.validate(&req, 1 << 20) {
            Err(CloudError::Policy(e)) => e,
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    fn tiny_len(split: usize) -> usize {
        super::testing::tiny().shape_at(split).unwrap().iter().product()
    }

    #[test]
    fn policy_rules_in_a_request_are_validated_and_bounded() {
        let r = registry();
        // At split 1 the cloud evaluates exits 1 and 2.
        let mut req = request(1, &vec![0.5; tiny_len(1)]);
        req.policy = vec![rule(1, "max-prob", 0.9, 0), rule(2, "never", 0.0, 0)];
        r.validate(&req, 1 << 20).unwrap();

        let e = policy_error(&r, 1, vec![rule(1, "max-prob", 0.9, 0), rule(1, "entropy", 0.1, 0)]);
        assert!(matches!(e, PolicyError::Duplicate { index: 1 }), "{e:?}");
        let e = policy_error(&r, 1, (0..4).map(|_| rule(2, "never", 0.0, 0)).collect());
        assert!(matches!(e, PolicyError::TooManyRules { got: 4, num_exits: 3 }), "{e:?}");
        let e = policy_error(&r, 1, vec![rule(0, "always", 0.0, 0)]);
        assert!(matches!(e, PolicyError::NotCloudSide { index: 0, first: 1, end: 3 }), "{e:?}");
        let e = policy_error(&r, 3, vec![rule(1, "always", 0.0, 0)]);
        assert!(matches!(e, PolicyError::NotCloudSide { index: 1, first: 2, end: 3 }), "{e:?}");
        let e = policy_error(&r, 1, vec![rule(7, "always", 0.0, 0)]);
        assert!(matches!(e, PolicyError::ExitOutOfRange { index: 7, num_exits: 3 }), "{e:?}");
        let e = policy_error(&r, 1, vec![rule(1, "margin", f32::NAN, 0)]);
        assert!(matches!(e, PolicyError::Threshold { index: 1, rule: "margin", .. }), "{e:?}");
        let e = policy_error(&r, 1, vec![rule(2, "max-prob", 2.0, 0)]);
        assert!(matches!(e, PolicyError::Threshold { index: 2, .. }), "{e:?}");
        let e = policy_error(&r, 1, vec![rule(1, "patience", 0.0, 0)]);
        assert!(matches!(e, PolicyError::Patience { index: 1 }), "{e:?}");
        assert_eq!(CloudError::from(e).code(), Code::InvalidArgument);
    }

    #[test]
    fn echoed_client_values_are_bounded() {
        let r = registry();
        let long = "m".repeat(1 << 20);
        let mut req = request(3, &[0.5; 392]);
        req.model_id = long.clone();
        let e = r.validate(&req, 1 << 20).unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let msg = e.to_string();
        assert!(msg.len() < 200 && msg.contains("(1048576 bytes)") && msg.contains("tiny"), "{msg}");
        // A shape with 100,000 dimensions (one element: it decodes).
        let mut req = request(3, &[0.5; 392]);
        let t = req.hidden.as_mut().unwrap();
        t.shape = vec![1; 100_000];
        t.data = t.data.slice(0..4);
        let e = r.validate(&req, 1 << 20).unwrap_err();
        assert!(matches!(e, CloudError::Shape { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.len() < 200 && msg.contains("(100000 dims)") && msg.contains("expects [392]"), "{msg}");
        // ... and one the codec refuses.
        req.hidden.as_mut().unwrap().data = bytes::Bytes::from_static(&[0; 8]);
        let msg = r.validate(&req, 1 << 20).unwrap_err().to_string();
        assert!(msg.len() < 200 && msg.contains("(100000 dims)"), "{msg}");
        // A policy rule's name.
        let mut req = request(3, &[0.5; 392]);
        req.policy = vec![rule(2, &long, 0.5, 0)];
        let msg = r.validate(&req, 1 << 20).unwrap_err().to_string();
        assert!(msg.len() < 300 && msg.contains("(1048576 bytes)"), "{msg}");
    }
}
