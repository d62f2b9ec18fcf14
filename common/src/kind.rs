//! The model layer's one boundary: every bundle kind says what the split
//! needs through [`SplitModel`], and [`AnyBundle::open`] recognises a
//! bundle's kind once, here, from what its directory holds.
//!
//! Kinds today:
//!
//! | kind | module | recognised by | blocks are |
//! |---|---|---|---|
//! | [`ModelKind::Classifier`] (CNNs, MLPs, BERT encoders, imported ONNX graphs) | [`crate::model`] | `manifest.json` | the manifest's blocks |
//! | [`ModelKind::Decoder`] (llama-family GGUF) | [`crate::decoder`] | `decoder.json` | transformer layers |
//!
//! A new architecture of an existing kind is a block kind, not a model kind:
//! imported ONNX graphs ([`crate::model::onnx`]) are classifiers whose blocks
//! and exit heads are `onnx` layers (a variant of `LayerSpec` and of `Layer`),
//! so they needed nothing here, in the edge or in the cloud.
//!
//! A new kind is a module of the model layer, a variant here (with its
//! [`SplitModel`] impl and its marker file in [`AnyBundle::open`]), and one
//! arm at each side's dispatch point (`offramp_edge::config::load`,
//! `offramp_cloud::models`); see docs/src/architecture.md, "Adding a model kind".

use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::decoder::{DecoderBundle, DecoderError};
use crate::model::{Bundle, ModelError, SplitSide};

/// The kinds of model a bundle can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Multi-exit classifiers: one input, one answer (CNNs, MLPs, encoders).
    Classifier,
    /// Generative decoders: sessions of tokens.
    Decoder,
}

impl ModelKind {
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Classifier => "classifier",
            ModelKind::Decoder => "decoder",
        }
    }
}

/// What the split needs of a bundle, whatever its kind.
pub trait SplitModel {
    fn kind(&self) -> ModelKind;
    fn model_id(&self) -> &str;
    /// Blocks (classifiers) or layers (decoders) of the whole model: the
    /// split points are `0..=num_blocks()`.
    fn num_blocks(&self) -> usize;
    /// The blocks whose weights this bundle holds.
    fn held(&self) -> Range<usize>;
    /// Whether this bundle can act as `side` of split `k`.
    fn serves(&self, side: SplitSide, k: usize) -> bool;
    /// The fingerprint of `side` at split `k` that the two sides compare in
    /// their handshake (`None` where this bundle cannot compute it).
    fn fingerprint(&self, side: SplitSide, k: usize) -> Option<String>;
    /// The exits that hang off blocks in `range` (an exit after block or
    /// layer `b` runs on the side holding `b`), by the kind's own exit ids.
    fn exits_in(&self, range: Range<usize>) -> Vec<usize>;
}

impl SplitModel for Bundle {
    fn kind(&self) -> ModelKind {
        ModelKind::Classifier
    }
    fn model_id(&self) -> &str {
        Bundle::model_id(self)
    }
    fn num_blocks(&self) -> usize {
        Bundle::num_blocks(self)
    }
    fn held(&self) -> Range<usize> {
        Bundle::held(self)
    }
    fn serves(&self, side: SplitSide, k: usize) -> bool {
        Bundle::serves(self, side, k)
    }
    fn fingerprint(&self, side: SplitSide, k: usize) -> Option<String> {
        Bundle::expected_fingerprint(self, side, k)
    }
    fn exits_in(&self, range: Range<usize>) -> Vec<usize> {
        Bundle::exits_in(self, range)
    }
}

impl SplitModel for DecoderBundle {
    fn kind(&self) -> ModelKind {
        ModelKind::Decoder
    }
    fn model_id(&self) -> &str {
        DecoderBundle::model_id(self)
    }
    fn num_blocks(&self) -> usize {
        self.num_layers()
    }
    fn held(&self) -> Range<usize> {
        self.holds()
    }
    fn serves(&self, side: SplitSide, k: usize) -> bool {
        match side {
            SplitSide::Edge => self.serves_edge(k),
            SplitSide::Cloud => self.serves_cloud(k),
        }
    }
    fn fingerprint(&self, side: SplitSide, k: usize) -> Option<String> {
        (k <= self.num_layers()).then(|| match side {
            SplitSide::Edge => self.edge_fingerprint(k),
            SplitSide::Cloud => self.cloud_fingerprint(k),
        })
    }
    /// Decoder exits are named by the layer they read: the exit after layer
    /// `l` runs on the side holding layer `l - 1` (the edge at any K ≥ l).
    fn exits_in(&self, range: Range<usize>) -> Vec<usize> {
        let mut layers: Vec<usize> =
            self.manifest().exits.iter().map(|e| e.layer).filter(|&l| l > range.start && l <= range.end).collect();
        layers.sort_unstable();
        layers
    }
}

/// A bundle of any kind, opened.
#[derive(Debug, Clone)]
pub enum AnyBundle {
    Classifier(Bundle),
    Decoder(DecoderBundle),
}

/// Why a directory could not be opened as a bundle.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{} is not a model bundle: it holds neither manifest.json (a classifier) nor decoder.json (a decoder)", .0.display())]
    NotABundle(PathBuf),
    #[error("loading model bundle {}: {source}", dir.display())]
    Classifier { dir: PathBuf, source: ModelError },
    #[error("opening decoder bundle {}: {source}", dir.display())]
    Decoder { dir: PathBuf, source: DecoderError },
}

impl AnyBundle {
    /// The kind of bundle `dir` holds, from its marker file, without
    /// loading it.
    pub fn kind_of(dir: &Path) -> Option<ModelKind> {
        if DecoderBundle::is_decoder(dir) {
            Some(ModelKind::Decoder)
        } else if dir.join(crate::model::manifest::MANIFEST_FILE).is_file() {
            Some(ModelKind::Classifier)
        } else {
            None
        }
    }

    /// Opens the bundle in `dir`, whatever its kind (a classifier's weights
    /// load here; a decoder's when its model is built).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, OpenError> {
        let dir = dir.as_ref();
        match Self::kind_of(dir) {
            Some(ModelKind::Decoder) => DecoderBundle::open(dir)
                .map(AnyBundle::Decoder)
                .map_err(|source| OpenError::Decoder { dir: dir.to_path_buf(), source }),
            Some(ModelKind::Classifier) => Bundle::load(dir)
                .map(AnyBundle::Classifier)
                .map_err(|source| OpenError::Classifier { dir: dir.to_path_buf(), source }),
            None => Err(OpenError::NotABundle(dir.to_path_buf())),
        }
    }

    /// The split's view of this bundle.
    pub fn split_model(&self) -> &dyn SplitModel {
        match self {
            AnyBundle::Classifier(b) => b,
            AnyBundle::Decoder(b) => b,
        }
    }

    pub fn kind(&self) -> ModelKind {
        self.split_model().kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_is_recognised_once_from_the_directory() {
        let default = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/b-lenet-mnist");
        let b = AnyBundle::open(default).unwrap();
        assert_eq!(b.kind(), ModelKind::Classifier);
        let m = b.split_model();
        assert_eq!(m.held(), 0..m.num_blocks());
        assert!(m.serves(SplitSide::Edge, 1) && m.serves(SplitSide::Cloud, 1));
        assert!(m.fingerprint(SplitSide::Cloud, 1).is_some());
        let dir = std::env::temp_dir().join(format!("offramp-kind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = AnyBundle::open(&dir).unwrap_err();
        assert!(matches!(e, OpenError::NotABundle(_)), "{e}");
        assert!(e.to_string().contains("neither manifest.json"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
