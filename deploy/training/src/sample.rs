//! `offramp export-sample`: write a small MNIST sample (IDX, gzip) for demos.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use offramp_common::data::{write_idx, Dataset, Subset};

#[derive(Debug, Clone, clap::Args)]
pub struct SampleArgs {
    /// MNIST directory (IDX files, gz or raw), e.g. ../shared/data/mnist.
    #[arg(long, env = "OFFRAMP_DATA")]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "val")]
    pub subset: Subset,
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Digits to take from the start of the subset (at most 1000: MNIST's
    /// licence allows shipping a small attributed sample).
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    #[arg(long)]
    pub out: PathBuf,
}

/// What `offramp export-sample` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SampleReport {
    pub digits: usize,
    pub subset: Subset,
    /// Index of the first digit in the source files.
    pub offset: usize,
    pub out: PathBuf,
}

impl SampleReport {
    pub fn render(&self) -> String {
        format!(
            "wrote {} digits ({:?} split, from index {}) to {}\n",
            self.digits,
            self.subset,
            self.offset,
            self.out.display()
        )
    }
}

pub fn run(args: &SampleArgs) -> Result<SampleReport> {
    if args.n == 0 || args.n > 1000 {
        bail!("--n must be in 1..=1000");
    }
    let mut data = Dataset::mnist(&args.data, args.subset, args.val_size)?;
    data.truncate(args.n);
    let pixels: Vec<u8> = data.images.iter().map(|&p| (p * 255.0).round() as u8).collect();
    let [_, rows, cols] = data.shape[..] else { bail!("a sample is written as IDX images, not {:?}", data.shape) };
    write_idx(&args.out, "sample", rows, cols, &pixels, &data.labels)
        .with_context(|| format!("writing {}", args.out.display()))?;
    Ok(SampleReport { digits: data.len(), subset: args.subset, offset: data.offset, out: args.out.clone() })
}
