//! `offramp-edge run`: classify a dataset through the split and report
//! (also what the lab runs its edges with).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::StreamExt;
use offramp_common::data::{Dataset, Subset};

use crate::config::EdgeArgs;
use crate::report::Summary;
use crate::runtime::{Answer, Edge};

/// Classify a dataset through the split.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub edge: EdgeArgs,
    /// The inputs: an MNIST-style directory (IDX files) for an image model,
    /// or a text file of `<label> <sentence>` lines for a text model (e.g.
    /// ../shared/data/text/stsa.binary.dev with `--subset all`).
    #[arg(long, env = "OFFRAMP_DATA")]
    pub data: PathBuf,
    /// Which part of the data to run (for a text file: `train` is all but
    /// the last --val-size lines, `val` those lines, `all` every line).
    #[arg(long, value_enum, default_value = "val")]
    pub subset: Subset,
    /// Samples held out as the validation split (end of the training data).
    #[arg(long, default_value_t = 5000)]
    pub val_size: usize,
    /// Run the first N inputs only.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Inputs in flight at once (at least 1).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub concurrency: usize,
    /// One JSON object per input, then {"summary": ...}.
    #[arg(long)]
    pub json: bool,
}

/// Runs every input; calls `on_answer` as answers complete (in completion order).
pub async fn run_dataset(
    edge: Arc<Edge>,
    data: &Dataset,
    concurrency: usize,
    mut on_answer: impl FnMut(&Answer),
) -> Vec<Answer> {
    let mut answers = Vec::with_capacity(data.len());
    let mut stream = futures::stream::iter(0..data.len())
        .map(|i| {
            let edge = edge.clone();
            let input = data.image(i).to_vec();
            let (id, label) = ((data.offset + i) as u64, data.labels[i] as u32);
            async move {
                let mut a = edge.classify(Some(id), input).await;
                a.label = Some(label);
                a
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(a) = stream.next().await {
        on_answer(&a);
        answers.push(a);
    }
    answers
}

/// Summary with the edge's counters.
pub fn summarize(edge: &Edge, answers: &[Answer]) -> Summary {
    let (retries, transitions) = edge
        .offloader()
        .map(|o| (o.stats().retries.load(Ordering::Relaxed), o.stats().breaker_transitions.load(Ordering::Relaxed)))
        .unwrap_or((0, 0));
    Summary::of(answers, edge.bundle().num_exits(), retries, transitions)
}
