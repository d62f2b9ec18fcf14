//! The models a cloud serves: bundles, fingerprints per split, default policies,
//! and request validation against them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use offramp_common::model::{Observation, SplitSide};
use offramp_common::policy::{PolicyError, PolicyFile};
use offramp_common::{codec, Bundle, Executor, ModelError, Policy};
use offramp_proto as pb;

use crate::config::ModelSource;
use crate::error::CloudError;

/// Why the models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading model bundle {}: {source}", dir.display())]
    Bundle { dir: PathBuf, source: ModelError },
    #[error("model {model}: {source}")]
    Policy { model: String, source: PolicyError },
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

#[derive(Debug, Default)]
pub struct Registry {
    models: BTreeMap<String, Arc<ModelSlot>>,
}

impl Registry {
    /// Loads every model (bundle directories are read here); `policy`
    /// overrides the bundles' own policies.
    pub fn load(sources: &[ModelSource], policy: Option<&PolicyFile>) -> Result<Self, LoadError> {
        let mut models = BTreeMap::new();
        for source in sources {
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
        if models.is_empty() {
            return Err(LoadError::NoModel);
        }
        Ok(Self { models })
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
        self.models.get(id).ok_or_else(|| CloudError::UnknownModel(id.to_string(), self.names()))
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
                    })
                    .collect(),
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
        if shape != want {
            return Err(CloudError::Shape { model: model.id.clone(), split, expected: want.to_vec(), got: shape });
        }
        let first_cloud_exit = b.exits_in(split..n).first().copied().unwrap_or(b.num_exits());
        let mut history = Vec::with_capacity(req.history.as_ref().map_or(0, |h| h.exits.len()));
        for o in req.history.iter().flat_map(|h| &h.exits) {
            let (exit, prediction) = (o.exit as usize, o.prediction as usize);
            if exit >= first_cloud_exit || prediction >= b.num_classes() || !o.confidence.is_finite() {
                return Err(CloudError::History(format!(
                    "entry (exit {exit}, prediction {prediction}, confidence {}) is impossible before split {split} \
                     (edge exits are 0..{first_cloud_exit}, classes 0..{})",
                    o.confidence,
                    b.num_classes()
                )));
            }
            history.push(Observation { exit, prediction, confidence: o.confidence });
        }
        let policy = if req.policy.is_empty() {
            model.policy.clone()
        } else {
            Arc::new(Policy::with_wire(&model.policy, &req.policy)?)
        };
        Ok(ValidRequest { model: model.clone(), split, input, history, policy })
    }
}

/// First 12 hex digits of a fingerprint, for messages.
pub fn short(fp: &str) -> String {
    if fp.is_empty() {
        "<none>".into()
    } else {
        fp.chars().take(12).collect()
    }
}
