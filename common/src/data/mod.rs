//! Datasets: MNIST digits (IDX files) and labelled sentences (text files of
//! `<label> <sentence>` lines, tokenized with a model's own tokenizer).
//!
//! Either way a sample is a flat row of f32 values: pixels, or token ids.
//! Images all have one shape; token rows have their own lengths.

mod mnist;
mod text;

pub use mnist::{read_idx_images, read_idx_labels, write_idx, DataError, Subset};
pub use text::read_labelled_lines;

/// Samples and labels in memory.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Every sample's values, one after the other (pixels in `[0, 1]`, or
    /// token ids).
    pub images: Vec<f32>,
    pub labels: Vec<u8>,
    /// Shape of one sample (`[1, rows, cols]`); for token rows `[max tokens]`.
    pub shape: Vec<usize>,
    /// Index of the first sample in the file it came from (for ids).
    pub offset: usize,
    /// Where each sample starts in `images` (`len() + 1` entries) when rows
    /// have their own lengths; `None`: every row has `shape`'s size.
    pub offsets: Option<Vec<usize>>,
    /// The sentences of a text dataset, in sample order (empty otherwise).
    pub texts: Vec<String>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Elements per sample when every sample has the full shape.
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether samples have their own lengths (token rows).
    pub fn is_ragged(&self) -> bool {
        self.offsets.is_some()
    }

    /// Sample `i`'s values.
    pub fn image(&self, i: usize) -> &[f32] {
        match &self.offsets {
            Some(o) => &self.images[o[i]..o[i + 1]],
            None => {
                let n = self.image_len();
                &self.images[i * n..(i + 1) * n]
            }
        }
    }

    /// Samples `range`, one slice each.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Vec<&[f32]> {
        range.map(|i| self.image(i)).collect()
    }

    /// Keeps the first `limit` samples.
    pub fn truncate(&mut self, limit: usize) {
        if limit < self.len() {
            self.labels.truncate(limit);
            self.texts.truncate(limit);
            match &mut self.offsets {
                Some(o) => {
                    o.truncate(limit + 1);
                    self.images.truncate(o[limit]);
                }
                None => self.images.truncate(limit * self.image_len()),
            }
        }
    }

    /// Samples `indices`, in that order, as a new dataset.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut out = Dataset {
            images: vec![],
            labels: vec![],
            shape: self.shape.clone(),
            offset: 0,
            offsets: self.offsets.as_ref().map(|_| vec![0]),
            texts: vec![],
        };
        for &i in indices {
            out.images.extend_from_slice(self.image(i));
            out.labels.push(self.labels[i]);
            if let Some(t) = self.texts.get(i) {
                out.texts.push(t.clone());
            }
            if let Some(o) = &mut out.offsets {
                o.push(out.images.len());
            }
        }
        out
    }
}
