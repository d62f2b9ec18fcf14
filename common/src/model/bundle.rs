//! Loading, validating, fingerprinting, splitting and saving model bundles.
//!
//! A bundle is a directory holding `manifest.json`, one `.safetensors` file and
//! optionally the model's own `policy.toml`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use super::error::ModelError;
use super::kernels::Kernels;
use super::layer::Layer;
use super::manifest::{
    block_tensor, exit_tensor, BlockRange, LayerSpec, Manifest, FORMAT_VERSION, MANIFEST_FILE, POLICY_FILE,
};
use super::tokenizer::TextEncoder;

/// Which side of a split point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitSide {
    /// Blocks `[0, K)` and their exits.
    Edge,
    /// Blocks `[K, N)` and their exits.
    Cloud,
}

/// A validated model (or one side of a split model) with its weights loaded.
#[derive(Clone)]
pub struct Bundle {
    manifest: Manifest,
    /// Directory it was loaded from, if any.
    dir: Option<PathBuf>,
    /// Parameter tensors by name (only those of held blocks and exits).
    tensors: BTreeMap<String, Tensor>,
    /// `shapes[k]` is the shape (batch excluded) entering block `k`;
    /// `shapes[N]` is the output of the last block. For token sequences the
    /// first dimension is the longest sequence allowed.
    shapes: Vec<Vec<usize>>,
    /// `sequence[k]`: whether the state entering block `k` is a token
    /// sequence (its first dimension varies per sample).
    sequence: Vec<bool>,
    /// The tokenizer's file contents, when the bundle holds block 0 of a
    /// token-input model and was given one.
    tokenizer: Option<Arc<TextEncoder>>,
    blocks: Vec<Option<Layer>>,
    exits: Vec<Option<Vec<Layer>>>,
    /// For each block, the index of the exit attached after it.
    exit_after: Vec<Option<usize>>,
    block_digests: Vec<Option<[u8; 32]>>,
    exit_digests: Vec<Option<[u8; 32]>>,
    held: Range<usize>,
}

/// Short: which model, where from, which blocks (not the weights).
impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("model_id", &self.manifest.model_id)
            .field("dir", &self.dir)
            .field("held", &self.held())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The most elements one sample's state may have at any block (2^31: 8 GiB
/// of f32, far beyond any model this runs, and well inside `usize`).
pub const MAX_SAMPLE_ELEMENTS: usize = 1 << 31;

impl Bundle {
    /// Loads and validates the bundle in `dir`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref();
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path).map_err(|e| ModelError::io(&manifest_path, e))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| ModelError::Manifest { path: manifest_path.clone(), message: e.to_string() })?;
        let weights_path = dir.join(&manifest.weights);
        if !weights_path.is_file() {
            return Err(ModelError::io(
                &weights_path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
            ));
        }
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)?;
        let spec = manifest.input.tokenizer.clone();
        let mut bundle = Self::from_parts_at(manifest, tensors, &weights_path)?;
        bundle.dir = Some(dir.to_path_buf());
        // The tokenizer belongs to the side that takes raw input (block 0).
        if let Some(spec) = spec.filter(|_| bundle.held.start == 0) {
            let path = dir.join(&spec.file);
            let json = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
            bundle = bundle.with_tokenizer_at(json, &path)?;
        }
        Ok(bundle)
    }

    /// Attaches the tokenizer (`tokenizer.json` contents) of a token-input
    /// model; its SHA-256 must be the one the manifest records.
    pub fn with_tokenizer(self, json: Vec<u8>) -> Result<Self, ModelError> {
        self.with_tokenizer_at(json, Path::new("<memory>"))
    }

    fn with_tokenizer_at(mut self, json: Vec<u8>, path: &Path) -> Result<Self, ModelError> {
        let bad = |message: String| ModelError::Tokenizer { path: path.to_path_buf(), message };
        let Some(spec) = &self.manifest.input.tokenizer else {
            return Err(bad("the manifest's input names no tokenizer".into()));
        };
        let digest = hex(&Sha256::digest(&json));
        if digest != spec.sha256 {
            return Err(bad(format!(
                "SHA-256 is {}, the manifest records {} (the tokenizer is not the one this model was built with)",
                &digest[..12],
                spec.sha256.chars().take(12).collect::<String>()
            )));
        }
        let max_tokens = self.manifest.input.shape[0];
        let encoder = TextEncoder::from_json(json, max_tokens).map_err(|e| bad(e.to_string()))?;
        self.tokenizer = Some(Arc::new(encoder));
        Ok(self)
    }

    /// The tokenizer of a token-input model, when this bundle holds one.
    pub fn text_encoder(&self) -> Option<&Arc<TextEncoder>> {
        self.tokenizer.as_ref()
    }

    /// Whether the model's input is text (token ids).
    pub fn takes_tokens(&self) -> bool {
        self.manifest.input.is_tokens()
    }

    /// Whether the state entering block `k` is a variable-length token
    /// sequence (`shape_at(k)[0]` is then its maximum length).
    pub fn is_sequence_at(&self, k: usize) -> bool {
        self.sequence.get(k).copied().unwrap_or(false)
    }

    /// Vocabulary size of a token-input model (its embedding table's rows).
    pub fn vocab_size(&self) -> Option<usize> {
        match self.manifest.blocks.first().map(|b| &b.layer) {
            Some(LayerSpec::BertEmbeddings { vocab_size, .. }) if self.takes_tokens() => Some(*vocab_size),
            _ => None,
        }
    }

    /// Builds a bundle from a manifest and tensors held in memory (training,
    /// tests). Validates exactly as [`Bundle::load`] does.
    pub fn from_parts(manifest: Manifest, tensors: HashMap<String, Tensor>) -> Result<Self, ModelError> {
        Self::from_parts_at(manifest, tensors, Path::new("<memory>"))
    }

    /// Checks the manifest in the order a bundle is validated (header and
    /// input, the backbone's shapes, the exits), then takes the held
    /// layers' tensors, each failure naming what is wrong.
    fn from_parts_at(
        manifest: Manifest,
        mut tensors: HashMap<String, Tensor>,
        weights_path: &Path,
    ) -> Result<Self, ModelError> {
        let held = check_header(&manifest)?;
        let (shapes, sequence) = backbone_shapes(&manifest)?;
        let exit_after = check_exits(&manifest, &shapes, &sequence)?;
        let (taken, blocks, exits) = take_layers(&manifest, &held, &mut tensors, weights_path)?;
        if let Some(name) = tensors.keys().min() {
            return Err(ModelError::UnexpectedTensor { tensor: name.clone(), path: weights_path.to_path_buf() });
        }
        let mut bundle = Bundle {
            manifest,
            dir: None,
            tensors: taken,
            shapes,
            sequence,
            tokenizer: None,
            blocks,
            exits,
            exit_after,
            block_digests: vec![],
            exit_digests: vec![],
            held,
        };
        bundle.compute_digests()?;
        Ok(bundle)
    }

    fn compute_digests(&mut self) -> Result<(), ModelError> {
        let digest_layers =
            |tag: String, specs: &[&LayerSpec], names: Vec<String>, tensors: &BTreeMap<String, Tensor>| {
                let mut h = Sha256::new();
                h.update(tag.as_bytes());
                for spec in specs {
                    h.update(serde_json::to_vec(spec).expect("layer specs serialize"));
                }
                for name in names {
                    let t = &tensors[&name];
                    h.update(name.as_bytes());
                    for d in t.dims() {
                        h.update((*d as u64).to_le_bytes());
                    }
                    if t.dtype() == DType::U8 {
                        h.update(t.flatten_all()?.to_vec1::<u8>()?);
                    } else {
                        for v in t.flatten_all()?.to_vec1::<f32>()? {
                            h.update(v.to_le_bytes());
                        }
                    }
                }
                Ok::<[u8; 32], candle_core::Error>(h.finalize().into())
            };
        let mut block_digests = Vec::new();
        for (i, block) in self.manifest.blocks.iter().enumerate() {
            if !self.held.contains(&i) {
                block_digests.push(None);
                continue;
            }
            let names = block.layer.parameters().into_iter().map(|(s, _)| block_tensor(i, s)).collect();
            block_digests.push(Some(digest_layers(format!("block {i}"), &[&block.layer], names, &self.tensors)?));
        }
        let mut exit_digests = Vec::new();
        for (e, exit) in self.manifest.exits.iter().enumerate() {
            if !self.held.contains(&exit.after_block) {
                exit_digests.push(None);
                continue;
            }
            let specs: Vec<&LayerSpec> = exit.layers.iter().collect();
            let names = exit
                .layers
                .iter()
                .enumerate()
                .flat_map(|(l, layer)| layer.parameters().into_iter().map(move |(s, _)| exit_tensor(e, l, s)))
                .collect();
            let tag = format!("exit {e} after {}", exit.after_block);
            exit_digests.push(Some(digest_layers(tag, &specs, names, &self.tensors)?));
        }
        self.block_digests = block_digests;
        self.exit_digests = exit_digests;
        Ok(())
    }

    /// Switches every conv layer to the im2col form whose backward pass is fast
    /// (training). Results equal the default path within float rounding.
    pub fn use_unfold_conv(&mut self, on: bool) {
        let layers = self.blocks.iter_mut().flatten().chain(self.exits.iter_mut().flatten().flatten());
        for layer in layers {
            if let Layer::Conv2d { unfold, .. } = layer {
                *unfold = on;
            }
        }
    }

    /// Chooses the kernels every held layer runs with (the default comes
    /// from `OFFRAMP_KERNELS`: the fast fused kernels unless it says `candle`).
    pub fn use_kernels(&mut self, kernels: Kernels) -> Result<(), ModelError> {
        let layers = self.blocks.iter_mut().flatten().chain(self.exits.iter_mut().flatten().flatten());
        for layer in layers {
            layer.set_kernels(kernels)?;
        }
        Ok(())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn model_id(&self) -> &str {
        &self.manifest.model_id
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The bundle's own policy file, when it ships one.
    pub fn policy_path(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(POLICY_FILE)).filter(|p| p.is_file())
    }

    /// Number of blocks of the whole model (N).
    pub fn num_blocks(&self) -> usize {
        self.manifest.blocks.len()
    }

    pub fn num_exits(&self) -> usize {
        self.manifest.exits.len()
    }

    pub fn num_classes(&self) -> usize {
        self.manifest.labels.len()
    }

    pub fn labels(&self) -> &[String] {
        &self.manifest.labels
    }

    /// Blocks whose weights this bundle holds.
    pub fn held(&self) -> Range<usize> {
        self.held.clone()
    }

    /// Shape entering block `k` (`k == N`: the backbone's output), batch excluded.
    pub fn shape_at(&self, k: usize) -> Result<&[usize], ModelError> {
        self.shapes
            .get(k)
            .map(Vec::as_slice)
            .ok_or(ModelError::SplitOutOfRange { split: k, num_blocks: self.num_blocks() })
    }

    /// Checks `0 <= k <= N`.
    pub fn check_split(&self, k: usize) -> Result<(), ModelError> {
        if k > self.num_blocks() {
            return Err(ModelError::SplitOutOfRange { split: k, num_blocks: self.num_blocks() });
        }
        Ok(())
    }

    /// Checks that blocks `range` (and their exits) are held.
    pub fn check_held(&self, range: &Range<usize>) -> Result<(), ModelError> {
        if range.end > self.num_blocks() {
            return Err(ModelError::SplitOutOfRange { split: range.end, num_blocks: self.num_blocks() });
        }
        if range.start < range.end && (range.start < self.held.start || range.end > self.held.end) {
            return Err(ModelError::BlocksNotHeld {
                start: range.start,
                end: range.end,
                held_start: self.held.start,
                held_end: self.held.end,
            });
        }
        Ok(())
    }

    /// Whether this bundle can serve the given side of split `k`.
    pub fn serves(&self, side: SplitSide, k: usize) -> bool {
        k <= self.num_blocks()
            && match side {
                SplitSide::Edge => self.held.start == 0 && self.held.end >= k,
                SplitSide::Cloud => self.held.start <= k && self.held.end == self.num_blocks(),
            }
    }

    /// Split points whose `side` this bundle can serve.
    pub fn splits(&self, side: SplitSide) -> Vec<usize> {
        (0..=self.num_blocks()).filter(|&k| self.serves(side, k)).collect()
    }

    /// Fingerprint of one side of split `k`: a SHA-256 over the input spec (edge)
    /// or labels (cloud), the layer specs and the weights of that side's blocks
    /// and exits. `None` if this bundle does not hold that side.
    pub fn fingerprint(&self, side: SplitSide, k: usize) -> Option<String> {
        if !self.serves(side, k) {
            return None;
        }
        let n = self.num_blocks();
        let mut h = Sha256::new();
        h.update(self.manifest.model_id.as_bytes());
        h.update((n as u64).to_le_bytes());
        h.update((k as u64).to_le_bytes());
        let blocks = match side {
            SplitSide::Edge => {
                h.update(b"edge");
                h.update(serde_json::to_vec(&self.manifest.input).expect("input spec serializes"));
                0..k
            }
            SplitSide::Cloud => {
                h.update(b"cloud");
                h.update(serde_json::to_vec(&self.manifest.labels).expect("labels serialize"));
                k..n
            }
        };
        for b in blocks.clone() {
            h.update(self.block_digests[b].expect("held block has a digest"));
        }
        for (e, exit) in self.manifest.exits.iter().enumerate() {
            if blocks.contains(&exit.after_block) {
                h.update(self.exit_digests[e].expect("held exit has a digest"));
            }
        }
        Some(hex(&h.finalize()))
    }

    /// The fingerprint this bundle expects of `side` at split `k`: computed when
    /// it holds that side, else as recorded when the bundle was split.
    pub fn expected_fingerprint(&self, side: SplitSide, k: usize) -> Option<String> {
        self.fingerprint(side, k).or_else(|| {
            let mine = match side {
                SplitSide::Edge => SplitSide::Cloud,
                SplitSide::Cloud => SplitSide::Edge,
            };
            self.serves(mine, k).then(|| self.manifest.peer_fingerprints.get(&k).cloned()).flatten()
        })
    }

    /// Index of the exit attached after block `b`, if any.
    pub fn exit_after(&self, b: usize) -> Option<usize> {
        self.exit_after.get(b).copied().flatten()
    }

    /// Index of the final exit (after the last block).
    pub fn final_exit(&self) -> usize {
        self.num_exits() - 1
    }

    /// Exits attached after blocks in `range`.
    pub fn exits_in(&self, range: Range<usize>) -> Vec<usize> {
        range.filter_map(|b| self.exit_after(b)).collect()
    }

    pub(crate) fn block(&self, b: usize) -> &Layer {
        self.blocks[b].as_ref().expect("caller checked the block is held")
    }

    pub(crate) fn exit_head(&self, e: usize) -> &[Layer] {
        self.exits[e].as_deref().expect("caller checked the exit is held")
    }

    /// Block `b`'s layer, if held (benchmarks, custom loops).
    pub fn layer(&self, b: usize) -> Option<&Layer> {
        self.blocks.get(b)?.as_ref()
    }

    /// Exit `e`'s head, if held.
    pub fn exit_layers(&self, e: usize) -> Option<&[Layer]> {
        self.exits.get(e)?.as_deref()
    }

    /// Multiply-adds of block `b` for one sample.
    pub fn block_macs(&self, b: usize) -> u64 {
        self.manifest.blocks[b].layer.macs(&self.shapes[b])
    }

    /// Multiply-adds of exit head `e` for one sample.
    pub fn exit_macs(&self, e: usize) -> u64 {
        let exit = &self.manifest.exits[e];
        let mut shape = self.shapes[exit.after_block + 1].clone();
        let mut total = 0;
        for layer in &exit.layers {
            total += layer.macs(&shape);
            shape = layer.output_shape(&shape).expect("validated at load");
        }
        total
    }

    /// Multiply-adds for one sample that leaves at exit `e`, having evaluated
    /// every exit before it.
    pub fn macs_to_exit(&self, e: usize) -> u64 {
        let last_block = self.manifest.exits[e].after_block;
        let blocks: u64 = (0..=last_block).map(|b| self.block_macs(b)).sum();
        let exits: u64 = (0..=e).map(|x| self.exit_macs(x)).sum();
        blocks + exits
    }

    /// Multiply-adds of the plain network: every block plus the final exit.
    pub fn full_macs(&self) -> u64 {
        (0..self.num_blocks()).map(|b| self.block_macs(b)).sum::<u64>() + self.exit_macs(self.final_exit())
    }

    /// Parameter tensors held, by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Writes the bundle (manifest + weights, and `policy` if given) to `dir`.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), ModelError> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(&self.manifest).expect("manifest serializes");
        std::fs::write(&manifest_path, json + "\n").map_err(|e| ModelError::io(&manifest_path, e))?;
        let weights_path = dir.join(&self.manifest.weights);
        let tensors: HashMap<String, Tensor> =
            self.tensors.iter().map(|(k, v)| Ok((k.clone(), v.contiguous()?))).collect::<candle_core::Result<_>>()?;
        candle_core::safetensors::save(&tensors, &weights_path)?;
        if let (Some(spec), Some(encoder)) = (&self.manifest.input.tokenizer, &self.tokenizer) {
            let path = dir.join(&spec.file);
            std::fs::write(&path, encoder.json()).map_err(|e| ModelError::io(&path, e))?;
        }
        Ok(())
    }

    /// Splits at `k` into an edge bundle holding blocks `[0, k)` (and their exits)
    /// and a cloud bundle holding `[k, N)`. Fingerprints are unchanged.
    pub fn split(&self, k: usize) -> Result<(Bundle, Bundle), ModelError> {
        self.check_split(k)?;
        self.check_held(&(0..self.num_blocks()))?;
        let n = self.num_blocks();
        let cloud_prints = (0..=k).filter_map(|j| Some((j, self.fingerprint(SplitSide::Cloud, j)?))).collect();
        let edge_prints = (k..=n).filter_map(|j| Some((j, self.fingerprint(SplitSide::Edge, j)?))).collect();
        Ok((self.restrict(0..k, cloud_prints)?, self.restrict(k..n, edge_prints)?))
    }

    fn restrict(&self, range: Range<usize>, peers: BTreeMap<usize, String>) -> Result<Bundle, ModelError> {
        let mut manifest = self.manifest.clone();
        manifest.holds = Some(BlockRange { start: range.start, end: range.end });
        manifest.peer_fingerprints = peers;
        let keep = |name: &str| {
            let mut parts = name.split('.');
            let (kind, index) = (parts.next(), parts.next().and_then(|i| i.parse::<usize>().ok()));
            match (kind, index) {
                (Some("blocks"), Some(b)) => range.contains(&b),
                (Some("exits"), Some(e)) => range.contains(&self.manifest.exits[e].after_block),
                _ => false,
            }
        };
        let tensors = self.tensors.iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut bundle = Bundle::from_parts(manifest, tensors)?;
        if range.start == 0 {
            bundle.tokenizer = self.tokenizer.clone();
        }
        Ok(bundle)
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A manifest error about `manifest.json` itself.
fn manifest_error(message: String) -> ModelError {
    ModelError::Manifest { path: PathBuf::from(MANIFEST_FILE), message }
}

/// Whether a state of `shape` is over what one sample may have.
fn too_large(shape: &[usize]) -> bool {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).is_none_or(|n| n > MAX_SAMPLE_ELEMENTS)
}

fn size_message(shape: &[usize]) -> String {
    format!(
        "a state of shape {} is over the {MAX_SAMPLE_ELEMENTS} elements a sample may have",
        crate::codec::echo::Shape::of_usize(shape)
    )
}

/// The format version, the input, the labels, the blocks and what the
/// bundle holds of them.
fn check_header(manifest: &Manifest) -> Result<Range<usize>, ModelError> {
    if manifest.format_version != FORMAT_VERSION {
        return Err(ModelError::FormatVersion { got: manifest.format_version, supported: FORMAT_VERSION });
    }
    let bad = manifest_error;
    if manifest.input.dtype != "f32" && !manifest.input.is_tokens() {
        return Err(ModelError::UnsupportedDtype {
            what: "the input".into(),
            dtype: manifest.input.dtype.clone(),
            supported: "f32, token-ids",
        });
    }
    if manifest.input.shape.is_empty() || manifest.input.shape.contains(&0) {
        return Err(bad(format!("input shape {:?} must be non-empty with positive dimensions", manifest.input.shape)));
    }
    if manifest.labels.len() < 2 {
        return Err(bad(format!("a classifier needs at least 2 labels, got {}", manifest.labels.len())));
    }
    let n = manifest.blocks.len();
    if n == 0 {
        return Err(bad("the model has no blocks".into()));
    }
    let held = match manifest.holds {
        None => 0..n,
        Some(BlockRange { start, end }) if start <= end && end <= n => start..end,
        Some(BlockRange { start, end }) => {
            return Err(bad(format!("holds {start}..{end} is not a range inside 0..{n}")));
        }
    };
    if manifest.input.is_tokens() && manifest.input.shape.len() != 1 {
        return Err(bad(format!("a token-ids input has shape [max_tokens], not {:?}", manifest.input.shape)));
    }
    // Every state of one sample must be of a size this runtime can index.
    if too_large(&manifest.input.shape) {
        return Err(bad(format!("the input: {}", size_message(&manifest.input.shape))));
    }
    Ok(held)
}

/// Shapes through the backbone (entering each block, and its output), and
/// where they are token sequences.
fn backbone_shapes(manifest: &Manifest) -> Result<(Vec<Vec<usize>>, Vec<bool>), ModelError> {
    let mut shapes = vec![manifest.input.shape.clone()];
    let mut sequence = vec![manifest.input.is_tokens()];
    for (i, block) in manifest.blocks.iter().enumerate() {
        let shape_error = |message: String| ModelError::BlockShape { block: i, name: block.name.clone(), message };
        let seq = sequence_after(&block.layer, sequence[i]).map_err(|e| shape_error(e.to_string()))?;
        let next = block.layer.output_shape(&shapes[i]).map_err(|e| shape_error(e.to_string()))?;
        if too_large(&next) {
            return Err(shape_error(size_message(&next)));
        }
        shapes.push(next);
        sequence.push(seq);
    }
    Ok((shapes, sequence))
}

/// Exits: in block order, attached to existing blocks, ending in logits;
/// the exit after each block.
fn check_exits(
    manifest: &Manifest,
    shapes: &[Vec<usize>],
    sequence: &[bool],
) -> Result<Vec<Option<usize>>, ModelError> {
    let n = manifest.blocks.len();
    let mut exit_after = vec![None; n];
    let mut previous: Option<usize> = None;
    for (e, exit) in manifest.exits.iter().enumerate() {
        if exit.after_block >= n {
            return Err(ModelError::ExitAfterMissingBlock {
                exit: e,
                name: exit.name.clone(),
                after_block: exit.after_block,
                num_blocks: n,
            });
        }
        if previous.is_some_and(|p| p >= exit.after_block) {
            return Err(ModelError::ExitOrder { exit: e, name: exit.name.clone(), after_block: exit.after_block });
        }
        previous = Some(exit.after_block);
        exit_after[exit.after_block] = Some(e);
        let shape_error = |message: String| ModelError::ExitShape { exit: e, name: exit.name.clone(), message };
        let mut shape = shapes[exit.after_block + 1].clone();
        let mut seq = sequence[exit.after_block + 1];
        for layer in &exit.layers {
            seq = sequence_after(layer, seq).map_err(|e| shape_error(e.to_string()))?;
            shape = layer.output_shape(&shape).map_err(|e| shape_error(e.to_string()))?;
            if too_large(&shape) {
                return Err(shape_error(size_message(&shape)));
            }
        }
        if seq {
            return Err(shape_error("ends on a token sequence: pool it (a `pool` layer) before the classifier".into()));
        }
        if shape != [manifest.labels.len()] {
            return Err(shape_error(format!("produces shape {shape:?}, not {} class logits", manifest.labels.len())));
        }
    }
    if exit_after[n - 1].is_none() {
        return Err(ModelError::NoFinalExit { last_block: n - 1 });
    }
    Ok(exit_after)
}

/// The tensors taken, and the held blocks' and exits' layers.
type HeldLayers = (BTreeMap<String, Tensor>, Vec<Option<Layer>>, Vec<Option<Vec<Layer>>>);

/// The held blocks' and exits' layers from `tensors`: every parameter
/// present, f32, of the right shape (what is taken leaves `tensors`).
fn take_layers(
    manifest: &Manifest,
    held: &Range<usize>,
    tensors: &mut HashMap<String, Tensor>,
    weights_path: &Path,
) -> Result<HeldLayers, ModelError> {
    let mut taken = BTreeMap::new();
    // An ONNX subgraph is bytes; every other parameter is f32.
    let mut take = |name: String, shape: Vec<usize>, graph: bool| -> Result<Tensor, ModelError> {
        let t = tensors
            .remove(&name)
            .ok_or_else(|| ModelError::MissingTensor { tensor: name.clone(), path: weights_path.to_path_buf() })?;
        let (dtype, supported) = if graph { (DType::U8, "u8 (an ONNX subgraph)") } else { (DType::F32, "f32") };
        if t.dtype() != dtype {
            return Err(ModelError::UnsupportedDtype {
                what: format!("tensor {name:?}"),
                dtype: format!("{:?}", t.dtype()).to_lowercase(),
                supported,
            });
        }
        if t.dims() != shape.as_slice() {
            return Err(ModelError::ShapeMismatch { tensor: name, expected: shape, got: t.dims().to_vec() });
        }
        taken.insert(name, t.clone());
        Ok(t)
    };
    let mut blocks = Vec::with_capacity(manifest.blocks.len());
    for (i, block) in manifest.blocks.iter().enumerate() {
        if !held.contains(&i) {
            blocks.push(None);
            continue;
        }
        let mut params = HashMap::new();
        for (suffix, shape) in block.layer.parameters() {
            params.insert(suffix, take(block_tensor(i, suffix), shape, block.layer.holds_graph())?);
        }
        blocks.push(Some(Layer::new(&block.layer, |s| params[s].clone())?));
    }
    let mut exits = Vec::with_capacity(manifest.exits.len());
    for (e, exit) in manifest.exits.iter().enumerate() {
        if !held.contains(&exit.after_block) {
            exits.push(None);
            continue;
        }
        let mut layers = Vec::with_capacity(exit.layers.len());
        for (l, layer) in exit.layers.iter().enumerate() {
            let mut params = HashMap::new();
            for (suffix, shape) in layer.parameters() {
                params.insert(suffix, take(exit_tensor(e, l, suffix), shape, layer.holds_graph())?);
            }
            layers.push(Layer::new(layer, |s| params[s].clone())?);
        }
        exits.push(Some(layers));
    }
    Ok((taken, blocks, exits))
}

/// Whether a layer's output is a token sequence, given whether its input is;
/// or why the layer cannot take that input.
fn sequence_after(layer: &LayerSpec, sequence: bool) -> Result<bool, LayerInputError> {
    let kind = layer.kind();
    match layer {
        LayerSpec::BertEmbeddings { .. } if sequence => Ok(true),
        LayerSpec::BertEmbeddings { .. } => Err(LayerInputError::TokenIds { kind }),
        LayerSpec::BertLayer { .. } | LayerSpec::Pool { .. } if !sequence => Err(LayerInputError::Sequence { kind }),
        LayerSpec::BertLayer { .. } => Ok(true),
        LayerSpec::Pool { .. } => Ok(false),
        LayerSpec::Tanh => Ok(sequence),
        LayerSpec::Conv2d { .. } | LayerSpec::Linear { .. } | LayerSpec::Flatten | LayerSpec::Onnx { .. }
            if sequence =>
        {
            Err(LayerInputError::FixedShape { kind })
        }
        LayerSpec::Conv2d { .. } | LayerSpec::Linear { .. } | LayerSpec::Flatten | LayerSpec::Onnx { .. } => Ok(false),
    }
}

/// A layer given an input of a kind it cannot take (`kind`: the layer's
/// manifest name); each variant names what the layer needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum LayerInputError {
    #[error("{kind} needs token ids (a token-ids input)")]
    TokenIds { kind: &'static str },
    #[error("{kind} needs a token sequence")]
    Sequence { kind: &'static str },
    #[error("{kind} needs a fixed-shape input; a token sequence must be pooled first")]
    FixedShape { kind: &'static str },
}

#[cfg(test)]
mod sequence_tests {
    use super::*;
    use crate::model::manifest::PoolMode;

    #[test]
    fn a_layer_given_the_wrong_kind_of_input_is_named() {
        let pool = LayerSpec::Pool { mode: PoolMode::Mean };
        assert_eq!(sequence_after(&pool, true), Ok(false));
        assert_eq!(sequence_after(&pool, false), Err(LayerInputError::Sequence { kind: "pool" }));
        assert_eq!(sequence_after(&LayerSpec::Tanh, true), Ok(true));
        assert_eq!(
            sequence_after(&LayerSpec::Flatten, true).unwrap_err().to_string(),
            "flatten needs a fixed-shape input; a token sequence must be pooled first"
        );
    }
}
