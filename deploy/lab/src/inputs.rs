//! `--model`, `--data`, `--split`: what the tools that send real hidden
//! states to a cloud (`bench offload`, `bench transport`, `load`) start from.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use offramp_common::data::{Dataset, Subset};
use offramp_common::{paths, Bundle};

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadInputs {
    /// Whole-model bundle: computes the hidden states (and the fingerprint).
    #[arg(long, default_value = "models/b-lenet-mnist")]
    pub model: PathBuf,
    /// Digits whose hidden states are sent (a directory with an MNIST sample).
    #[arg(long, default_value = "models/mnist-sample")]
    pub data: PathBuf,
    /// Split point K: the hidden states after blocks [0, K) are sent.
    #[arg(long, default_value_t = 1)]
    pub split: usize,
}

impl OffloadInputs {
    /// The bundle's directory (as found), the bundle, and at most `n` sample
    /// digits. The split must leave at least one block for the cloud.
    pub fn load(&self, n: usize) -> Result<(PathBuf, Bundle, Dataset)> {
        let model = paths::find(&self.model)?;
        let bundle = Bundle::load(&model).with_context(|| format!("loading --model {}", model.display()))?;
        bundle.check_split(self.split)?;
        if self.split >= bundle.num_blocks() {
            bail!("--split {} leaves nothing for the cloud: the model has {} blocks", self.split, bundle.num_blocks());
        }
        let data = paths::find(&self.data)?;
        let mut digits =
            Dataset::mnist(&data, Subset::Sample, 0).with_context(|| format!("reading --data {}", data.display()))?;
        digits.truncate(n);
        Ok((model, bundle, digits))
    }
}
