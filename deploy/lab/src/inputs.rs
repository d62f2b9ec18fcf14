//! `--model`, `--data`, `--split`: what the tools that send real hidden
//! states to a cloud (`bench offload`, `bench transport`, `load`) start from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use offramp_common::data::{Dataset, Subset};
use offramp_common::{paths, Bundle, Executor};

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadInputs {
    /// Whole-model bundle: computes the hidden states (and the fingerprint).
    #[arg(long, default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    /// Inputs whose hidden states are sent: a directory with an MNIST sample
    /// for an image model (default models/mnist-sample), a file of
    /// `<label> <sentence>` lines for a text model (default
    /// models/sst2-sample/sentences.txt).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split point K: the hidden states after blocks [0, K) are sent
    /// (default: the first K that leaves an exit on the edge; 1 for B-LeNet).
    #[arg(long)]
    pub split: Option<usize>,
}

/// The first split point with an exit on the edge side (the block after
/// the first exit), leaving the cloud at least one block.
pub fn split_for_bundle(bundle: &Bundle) -> usize {
    let first_exit = bundle.manifest().exits.first().map_or(0, |e| e.after_block);
    (first_exit + 1).min(bundle.num_blocks().saturating_sub(1)).max(1)
}

impl OffloadInputs {
    /// `--split`, or the first split point with an exit on the edge side
    /// (the block after the first exit), leaving the cloud at least one
    /// block.
    pub fn split_for(&self, bundle: &Bundle) -> usize {
        self.split.unwrap_or_else(|| split_for_bundle(bundle))
    }

    /// The bundle's directory (as found), the bundle, and at most `n` sample
    /// digits. The split must leave at least one block for the cloud.
    pub fn load(&self, n: usize) -> Result<(PathBuf, Bundle, Dataset)> {
        let model = paths::find(&self.model)?;
        let bundle = Bundle::load(&model).with_context(|| format!("loading --model {}", model.display()))?;
        let split = self.split_for(&bundle);
        bundle.check_split(split)?;
        if split >= bundle.num_blocks() {
            bail!("--split {split} leaves nothing for the cloud: the model has {} blocks", bundle.num_blocks());
        }
        let mut data = sample_data(self.data.as_deref(), &bundle)?;
        data.truncate(n);
        Ok((model, bundle, data))
    }
}

/// The bundled sample a model's demo and benchmarks read, or `path`: MNIST
/// digits for an image model, labelled sentences (tokenized with the
/// bundle's tokenizer) for a text model.
pub fn sample_data(path: Option<&Path>, bundle: &Bundle) -> Result<Dataset> {
    let text = bundle.takes_tokens();
    let default = if text { "models/sst2-sample/sentences.txt" } else { "models/mnist-sample" };
    let path = paths::find(path.unwrap_or(Path::new(default)))?;
    let read = || -> Result<Dataset> {
        if text {
            Ok(Dataset::for_bundle(&path, Subset::All, 0, bundle)?)
        } else {
            let subset = if path.join("sample-images-idx3-ubyte.gz").exists() { Subset::Sample } else { Subset::Val };
            Ok(Dataset::mnist(&path, subset, 5000)?)
        }
    };
    let data = read().with_context(|| format!("reading --data {}", path.display()))?;
    if data.is_empty() {
        bail!("--data {} holds no samples", path.display());
    }
    Ok(data)
}

/// The hidden state at split `k` of every sample, computed at batch 1 as an
/// edge computes it, with its shape: `[C, H, W]`-like for an image model,
/// `[T, H]` with the sample's own length T for a text model.
pub fn hidden_states(bundle: &Bundle, k: usize, data: &Dataset) -> Result<Vec<(Vec<f32>, Vec<usize>)>> {
    let exec = Executor::new(Arc::new(bundle.clone()));
    (0..data.len())
        .map(|i| {
            let x = exec.batch_of(0, &[data.image(i)])?;
            let h = exec.forward_blocks(x, 0..k)?.get(0)?;
            let shape = h.dims().to_vec();
            Ok((h.flatten_all()?.to_vec1::<f32>()?, shape))
        })
        .collect()
}
