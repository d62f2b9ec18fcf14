//! Decoder bundles: `decoder.json` (what the model is, what this side holds,
//! digests of every layer), the weights as a GGUF file, and the tokenizer.
//!
//! `offramp import gguf` makes one from a GGUF file; `offramp split` cuts it
//! into an edge side (embeddings, layers `0..K`, the final norm and LM head
//! its exits use) and a cloud side (layers `K..N`, final norm, LM head).
//! Every side records the digests of all layers, so an edge can check a
//! cloud's fingerprint for split `K` without holding its weights.

use std::collections::HashMap;
use std::io::BufWriter;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::config::DecoderConfig;
use super::error::DecoderError;
use super::model::{layer_tensor, DecoderModel, EMBEDDINGS, LAYER_TENSORS, OUTPUT, OUTPUT_NORM};
use super::tokenizer::{json_from_gguf, DecoderTokenizer};
use crate::model::{hex, TokenizerSpec};

/// File name of a decoder bundle's manifest (a classifier bundle has
/// `manifest.json` instead).
pub const DECODER_MANIFEST: &str = "decoder.json";
/// File name of the weights inside a decoder bundle.
pub const DECODER_WEIGHTS: &str = "model.gguf";
const TOKENIZER_FILE: &str = "tokenizer.json";
const FORMAT_VERSION: u32 = 1;
/// The longest context a bundle allows by default (the KV cache of one
/// SmolLM2-135M session at 2,048 positions is 45 MiB).
pub const DEFAULT_CONTEXT: usize = 2048;

/// What a bundle side holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Holds {
    /// Layers `start..end`.
    pub start: usize,
    pub end: usize,
    /// The token embeddings (an edge side, or the whole model).
    pub embeddings: bool,
    /// The final norm and LM head (the cloud side, an edge with exits, or the
    /// whole model).
    pub head: bool,
}

/// An exit: the final norm and LM head applied to the state after `layer`
/// layers (split point `layer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitPoint {
    pub layer: usize,
    /// Top-1 probability above which the edge emits this exit's token in
    /// `early-exit` mode (set by `offramp calibrate-decoder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// How the threshold was chosen (target agreement, prompts, measured
    /// agreement and exit rate).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub calibration: String,
}

/// SHA-256 digests of the tensor groups, for the whole model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digests {
    pub embeddings: String,
    /// Final norm and LM head.
    pub head: String,
    pub layers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderManifest {
    pub format_version: u32,
    pub model_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub config: DecoderConfig,
    pub weights: String,
    pub tokenizer: TokenizerSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    pub exits: Vec<ExitPoint>,
    /// Trained exit adapters (`offramp train-exits`): a safetensors file with
    /// `exit.<layer>.a` and `exit.<layer>.b` per adapted exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapters: Option<TokenizerSpec>,
    pub holds: Holds,
    pub digests: Digests,
}

/// File name of a bundle's exit adapters.
pub const ADAPTERS_FILE: &str = "adapters.safetensors";

/// A decoder bundle on disk, its manifest read and checked; weights load
/// with [`DecoderBundle::model`].
#[derive(Debug, Clone)]
pub struct DecoderBundle {
    manifest: DecoderManifest,
    dir: PathBuf,
    tokenizer: Arc<DecoderTokenizer>,
}

impl DecoderBundle {
    /// Whether `dir` holds a decoder bundle.
    pub(crate) fn is_decoder(dir: &Path) -> bool {
        dir.join(DECODER_MANIFEST).is_file()
    }

    /// Reads `decoder.json` and the tokenizer, and checks them.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, DecoderError> {
        let dir = dir.as_ref().to_path_buf();
        let bad = |detail: String| DecoderError::Bundle { dir: dir.clone(), detail };
        let path = dir.join(DECODER_MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(|e| DecoderError::io(&path, e))?;
        let manifest: DecoderManifest =
            serde_json::from_str(&text).map_err(|e| bad(format!("{DECODER_MANIFEST}: {e}")))?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(bad(format!("format version {} (this build reads {FORMAT_VERSION})", manifest.format_version)));
        }
        manifest.config.check()?;
        let n = manifest.config.layers;
        let h = &manifest.holds;
        if h.start > h.end || h.end > n {
            return Err(bad(format!("holds layers {}..{} of a {n}-layer model", h.start, h.end)));
        }
        if manifest.digests.layers.len() != n {
            return Err(bad(format!("{} layer digests for {n} layers", manifest.digests.layers.len())));
        }
        for e in &manifest.exits {
            if e.layer == 0 || e.layer >= n {
                return Err(bad(format!("an exit after layer {} (exits sit after layers 1..{})", e.layer, n - 1)));
            }
        }
        let tok_path = dir.join(&manifest.tokenizer.file);
        let json = std::fs::read(&tok_path).map_err(|e| DecoderError::io(&tok_path, e))?;
        let digest = hex(&Sha256::digest(&json));
        if digest != manifest.tokenizer.sha256 {
            return Err(bad(format!(
                "{} has digest {digest}, the manifest says {}",
                manifest.tokenizer.file, manifest.tokenizer.sha256
            )));
        }
        let tokenizer =
            Arc::new(DecoderTokenizer::from_json(&json, manifest.chat_template.as_deref(), manifest.config.eos)?);
        Ok(Self { manifest, dir, tokenizer })
    }

    /// Loads the weights this side holds, checking each group against its
    /// digest.
    pub fn model(&self) -> Result<DecoderModel, DecoderError> {
        let path = self.weights_path();
        let h = &self.manifest.holds;
        self.verify(&path)?;
        let mut model = DecoderModel::load(&path, &self.manifest.config, h.start..h.end, h.embeddings, h.head)?;
        if let (Some(spec), true) = (&self.manifest.adapters, h.head) {
            let file = self.dir.join(&spec.file);
            let bytes = std::fs::read(&file).map_err(|e| DecoderError::io(&file, e))?;
            if hex(&Sha256::digest(&bytes)) != spec.sha256 {
                return Err(DecoderError::Bundle {
                    dir: self.dir.clone(),
                    detail: format!("{} does not match its digest", spec.file),
                });
            }
            let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
            for e in &self.manifest.exits {
                if let (Some(a), Some(b)) =
                    (tensors.get(&format!("exit.{}.a", e.layer)), tensors.get(&format!("exit.{}.b", e.layer)))
                {
                    model.set_adapter(e.layer, a.clone(), b.clone())?;
                }
            }
        }
        Ok(model)
    }

    /// Writes trained exit adapters (`layer → (A, B)`) into the bundle.
    pub fn save_adapters(
        &mut self,
        adapters: &[(usize, candle_core::Tensor, candle_core::Tensor)],
    ) -> Result<(), DecoderError> {
        let mut map = HashMap::new();
        for (layer, a, b) in adapters {
            map.insert(format!("exit.{layer}.a"), a.clone());
            map.insert(format!("exit.{layer}.b"), b.clone());
        }
        let file = self.dir.join(ADAPTERS_FILE);
        candle_core::safetensors::save(&map, &file)?;
        let bytes = std::fs::read(&file).map_err(|e| DecoderError::io(&file, e))?;
        self.manifest.adapters =
            Some(TokenizerSpec { file: ADAPTERS_FILE.into(), sha256: hex(&Sha256::digest(&bytes)) });
        self.write_manifest()
    }

    fn write_manifest(&self) -> Result<(), DecoderError> {
        let path = self.dir.join(DECODER_MANIFEST);
        let text = serde_json::to_string_pretty(&self.manifest).expect("manifest serializes");
        std::fs::write(&path, text + "\n").map_err(|e| DecoderError::io(&path, e))
    }

    fn verify(&self, path: &Path) -> Result<(), DecoderError> {
        let (content, mut file) = read_content(path)?;
        let h = &self.manifest.holds;
        let d = &self.manifest.digests;
        let mut check = |what: &str, names: &[String], want: &str| -> Result<(), DecoderError> {
            let got = group_digest(&content, &mut file, names)?;
            if got != want {
                return Err(DecoderError::Bundle {
                    dir: self.dir.clone(),
                    detail: format!(
                        "{what} in {} do not match the manifest's digest (corrupt or mixed bundle)",
                        path.display()
                    ),
                });
            }
            Ok(())
        };
        for l in h.start..h.end {
            check(&format!("layer {l}'s weights"), &layer_names(l), &d.layers[l])?;
        }
        if h.embeddings {
            check("the token embeddings", &[EMBEDDINGS.to_string()], &d.embeddings)?;
        }
        if h.head {
            check("the final norm and LM head", &head_names(&content), &d.head)?;
        }
        Ok(())
    }

    pub fn manifest(&self) -> &DecoderManifest {
        &self.manifest
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.manifest.config
    }

    pub fn model_id(&self) -> &str {
        &self.manifest.model_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tokenizer(&self) -> &Arc<DecoderTokenizer> {
        &self.tokenizer
    }

    pub fn holds(&self) -> Range<usize> {
        self.manifest.holds.start..self.manifest.holds.end
    }

    pub fn num_layers(&self) -> usize {
        self.manifest.config.layers
    }

    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(&self.manifest.weights)
    }

    /// The exits an edge holding layers `0..k` can evaluate (layer ≤ k),
    /// shallow first.
    pub fn exits_within(&self, k: usize) -> Vec<ExitPoint> {
        let mut v: Vec<ExitPoint> = self.manifest.exits.iter().filter(|e| e.layer <= k).cloned().collect();
        v.sort_by_key(|e| e.layer);
        v
    }

    /// Whether this side can act as the edge of split `k` (embeddings and
    /// layers `0..k`; the head too when `k` is the whole model).
    pub fn serves_edge(&self, k: usize) -> bool {
        let h = &self.manifest.holds;
        h.embeddings && h.start == 0 && k <= h.end && (k < self.num_layers() || h.head)
    }

    /// Whether this side can act as the cloud of split `k` (layers `k..N`
    /// and the head).
    pub fn serves_cloud(&self, k: usize) -> bool {
        let h = &self.manifest.holds;
        h.head && h.end == self.num_layers() && h.start <= k && k < self.num_layers()
    }

    /// The splits this side can serve as the cloud.
    pub fn cloud_splits(&self) -> Range<usize> {
        let h = &self.manifest.holds;
        if h.head && h.end == self.num_layers() {
            h.start..self.num_layers()
        } else {
            0..0
        }
    }

    /// Fingerprint of the cloud side of split `k`: the model's identity and
    /// shape, the LM head and layers `k..N`. Both sides compute it from the
    /// manifest's digests.
    pub fn cloud_fingerprint(&self, k: usize) -> String {
        let m = &self.manifest;
        let mut h = Sha256::new();
        h.update(b"offramp-decoder-cloud\0");
        h.update(m.model_id.as_bytes());
        h.update(serde_json::to_vec(&m.config).expect("config serializes"));
        h.update((k as u64).to_le_bytes());
        h.update(m.digests.head.as_bytes());
        for d in &m.digests.layers[k.min(m.config.layers)..] {
            h.update(d.as_bytes());
        }
        hex(&h.finalize())
    }

    /// Fingerprint of the edge side of split `k`: tokenizer, embeddings and
    /// layers `0..k`.
    pub fn edge_fingerprint(&self, k: usize) -> String {
        let m = &self.manifest;
        let mut h = Sha256::new();
        h.update(b"offramp-decoder-edge\0");
        h.update(m.model_id.as_bytes());
        h.update(serde_json::to_vec(&m.config).expect("config serializes"));
        h.update((k as u64).to_le_bytes());
        h.update(m.tokenizer.sha256.as_bytes());
        h.update(m.digests.embeddings.as_bytes());
        if let Some(a) = &m.adapters {
            h.update(a.sha256.as_bytes());
        }
        for d in &m.digests.layers[..k.min(m.config.layers)] {
            h.update(d.as_bytes());
        }
        hex(&h.finalize())
    }

    /// Imports a llama-architecture GGUF file as a bundle in `out`, with exits
    /// after `exits` layers.
    pub fn import(
        gguf: &Path,
        out: &Path,
        model_id: Option<&str>,
        exits: &[usize],
        context: usize,
    ) -> Result<Self, DecoderError> {
        let (content, mut file) = read_content(gguf)?;
        let config = DecoderConfig::from_gguf(&content.metadata, context)?;
        let n = config.layers;
        let mut exit_points = Vec::new();
        for &e in exits {
            if e == 0 || e >= n {
                return Err(DecoderError::Split {
                    split: e,
                    detail: format!("an exit must sit after layers 1..{} of this {n}-layer model", n - 1),
                });
            }
            if !exit_points.iter().any(|x: &ExitPoint| x.layer == e) {
                exit_points.push(ExitPoint { layer: e, threshold: None, calibration: String::new() });
            }
        }
        exit_points.sort_by_key(|e| e.layer);
        let tokenizer_json = json_from_gguf(&content.metadata)?;
        let chat_template = content.metadata.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
        let digests = Digests {
            embeddings: group_digest(&content, &mut file, &[EMBEDDINGS.to_string()])?,
            head: group_digest(&content, &mut file, &head_names(&content))?,
            layers: (0..n).map(|l| group_digest(&content, &mut file, &layer_names(l))).collect::<Result<_, _>>()?,
        };
        let model_id = match model_id {
            Some(id) => id.to_string(),
            None => default_model_id(&content.metadata, gguf),
        };
        let description = format!(
            "imported from {} ({} layers, hidden {}, {} heads / {} KV heads, vocab {})",
            gguf.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(),
            n,
            config.hidden,
            config.heads,
            config.kv_heads,
            config.vocab
        );
        std::fs::create_dir_all(out).map_err(|e| DecoderError::io(out, e))?;
        let weights = out.join(DECODER_WEIGHTS);
        std::fs::copy(gguf, &weights).map_err(|e| DecoderError::io(&weights, e))?;
        let manifest = DecoderManifest {
            format_version: FORMAT_VERSION,
            model_id,
            description,
            config,
            weights: DECODER_WEIGHTS.into(),
            tokenizer: TokenizerSpec { file: TOKENIZER_FILE.into(), sha256: hex(&Sha256::digest(&tokenizer_json)) },
            chat_template,
            exits: exit_points,
            adapters: None,
            holds: Holds { start: 0, end: n, embeddings: true, head: true },
            digests,
        };
        write_side(out, &manifest, &tokenizer_json)?;
        Self::open(out)
    }

    /// Writes the edge side (`edge_out`) and, for `k < N`, the cloud side
    /// (`cloud_out`) of split `k`. Needs the whole model.
    pub fn split(&self, k: usize, edge_out: &Path, cloud_out: Option<&Path>) -> Result<(), DecoderError> {
        let n = self.num_layers();
        let h = &self.manifest.holds;
        if !(h.start == 0 && h.end == n && h.embeddings && h.head) {
            return Err(DecoderError::Split { split: k, detail: "only a whole-model bundle can be split".into() });
        }
        if k > n {
            return Err(DecoderError::Split {
                split: k,
                detail: format!("the model has {n} layers (K must be 0..={n})"),
            });
        }
        let (content, mut file) = read_content(&self.weights_path())?;
        let json =
            std::fs::read(self.dir.join(&self.manifest.tokenizer.file)).map_err(|e| DecoderError::io(&self.dir, e))?;
        let edge_names: Vec<String> = std::iter::once(EMBEDDINGS.to_string())
            .chain(head_names(&content))
            .chain((0..k).flat_map(layer_names))
            .collect();
        let mut edge = self.manifest.clone();
        edge.holds = Holds { start: 0, end: k, embeddings: true, head: true };
        write_gguf(&content, &mut file, &edge_out.join(DECODER_WEIGHTS), &edge_names)?;
        write_side(edge_out, &edge, &json)?;
        if let Some(a) = &self.manifest.adapters {
            let to = edge_out.join(&a.file);
            std::fs::copy(self.dir.join(&a.file), &to).map_err(|e| DecoderError::io(&to, e))?;
        }
        if k < n {
            let out = cloud_out
                .ok_or_else(|| DecoderError::Split { split: k, detail: "no folder given for the cloud side".into() })?;
            let mut names: Vec<String> = head_names(&content);
            names.extend((k..n).flat_map(layer_names));
            let mut cloud = self.manifest.clone();
            // The cloud answers with the whole model; exit adapters stay on the edge.
            cloud.adapters = None;
            cloud.holds = Holds { start: k, end: n, embeddings: false, head: true };
            write_gguf(&content, &mut file, &out.join(DECODER_WEIGHTS), &names)?;
            write_side(out, &cloud, &json)?;
        }
        Ok(())
    }

    /// Rewrites `decoder.json` with new exit thresholds.
    pub fn save_exits(&mut self, exits: Vec<ExitPoint>) -> Result<(), DecoderError> {
        self.manifest.exits = exits;
        self.write_manifest()
    }
}

fn default_model_id(md: &HashMap<String, Value>, path: &Path) -> String {
    let name = md
        .get("general.basename")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .or_else(|| path.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let size = md.get("general.size_label").and_then(|v| v.to_string().ok()).cloned();
    let tune = md.get("general.finetune").and_then(|v| v.to_string().ok()).cloned();
    let mut id = name.unwrap_or_else(|| "decoder".into()).to_lowercase();
    if let Some(s) = size {
        id = format!("{id}-{}", s.to_lowercase());
    }
    if tune.is_some_and(|t| t.to_lowercase().contains("instruct"))
        || path.to_string_lossy().to_lowercase().contains("instruct")
    {
        id.push_str("-instruct");
    }
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect()
}

fn layer_names(l: usize) -> Vec<String> {
    LAYER_TENSORS.iter().map(|w| layer_tensor(l, w)).collect()
}

/// The final norm and the LM head (`output.weight`, or the tied embeddings).
fn head_names(content: &Content) -> Vec<String> {
    let head = if content.tensor_infos.contains_key(OUTPUT) { OUTPUT } else { EMBEDDINGS };
    vec![OUTPUT_NORM.to_string(), head.to_string()]
}

fn read_content(path: &Path) -> Result<(Content, std::fs::File), DecoderError> {
    let mut file = std::fs::File::open(path).map_err(|e| DecoderError::io(path, e))?;
    let content =
        Content::read(&mut file).map_err(|e| DecoderError::Gguf { path: path.to_path_buf(), detail: e.to_string() })?;
    Ok((content, file))
}

fn read_tensor(content: &Content, file: &mut std::fs::File, name: &str) -> Result<QTensor, DecoderError> {
    if !content.tensor_infos.contains_key(name) {
        return Err(DecoderError::Tensor { name: name.into(), detail: "missing from the GGUF file".into() });
    }
    content
        .tensor(file, name, &Device::Cpu)
        .map_err(|e| DecoderError::Tensor { name: name.into(), detail: e.to_string() })
}

/// SHA-256 over each tensor's name, storage type, shape and bytes.
fn group_digest(content: &Content, file: &mut std::fs::File, names: &[String]) -> Result<String, DecoderError> {
    let mut h = Sha256::new();
    for name in names {
        let t = read_tensor(content, file, name)?;
        h.update(name.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.shape().dims()).as_bytes());
        h.update(&*t.data()?);
    }
    Ok(hex(&h.finalize()))
}

/// A GGUF file with the source's metadata and the named tensors.
fn write_gguf(content: &Content, file: &mut std::fs::File, out: &Path, names: &[String]) -> Result<(), DecoderError> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| DecoderError::io(parent, e))?;
    }
    let tensors: Vec<(String, QTensor)> =
        names.iter().map(|n| Ok((n.clone(), read_tensor(content, file, n)?))).collect::<Result<_, DecoderError>>()?;
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    let metadata: Vec<(&str, &Value)> = keys.iter().map(|k| (k.as_str(), &content.metadata[*k])).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let f = std::fs::File::create(out).map_err(|e| DecoderError::io(out, e))?;
    let mut w = BufWriter::new(f);
    gguf_file::write(&mut w, &metadata, &refs)
        .map_err(|e| DecoderError::Gguf { path: out.to_path_buf(), detail: e.to_string() })?;
    use std::io::Write;
    w.flush().map_err(|e| DecoderError::io(out, e))
}

fn write_side(dir: &Path, manifest: &DecoderManifest, tokenizer_json: &[u8]) -> Result<(), DecoderError> {
    std::fs::create_dir_all(dir).map_err(|e| DecoderError::io(dir, e))?;
    let tok = dir.join(&manifest.tokenizer.file);
    std::fs::write(&tok, tokenizer_json).map_err(|e| DecoderError::io(&tok, e))?;
    let path = dir.join(DECODER_MANIFEST);
    let text = serde_json::to_string_pretty(manifest).expect("manifest serializes");
    std::fs::write(&path, text + "\n").map_err(|e| DecoderError::io(&path, e))
}
