//! Datasets.

mod mnist;

pub use mnist::{read_idx_images, read_idx_labels, write_idx, DataError, Dataset, Subset};
