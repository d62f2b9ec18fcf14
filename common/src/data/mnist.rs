//! MNIST in IDX format (gzip or raw).
//!
//! Files are looked up by their standard names: `train-images-idx3-ubyte[.gz]`,
//! `train-labels-idx1-ubyte[.gz]`, `t10k-…` for the test set, and `sample-…` for
//! the small sample shipped with the default model. Pixels become `f32` in
//! `[0, 1]` (`u8 / 255`), shape `[1, 28, 28]`.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subset {
    /// The training files minus the validation split.
    Train,
    /// The last `val_size` digits of the training files (never trained on).
    Val,
    /// The `t10k-*` files.
    Test,
    /// All of the training files.
    All,
    /// The `sample-*` files (the small sample shipped for the demo).
    Sample,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no {what} file in {dir}: looked for {names}")]
    NotFound { what: String, dir: PathBuf, names: String },
    #[error("{path}: bad magic number {got:#010x}, expected {expected:#010x} ({what})")]
    Magic { path: PathBuf, got: u32, expected: u32, what: &'static str },
    #[error("{path}: truncated: header promises {expected} bytes of data, file has {got}")]
    Truncated { path: PathBuf, expected: usize, got: usize },
    #[error("{images} holds {n_images} images but {labels} holds {n_labels} labels")]
    CountMismatch { images: PathBuf, n_images: usize, labels: PathBuf, n_labels: usize },
    #[error("validation split of {val} digits leaves nothing of {total} to train on")]
    ValSplit { val: usize, total: usize },
    #[error("{path}: label {label} at index {index} is not a digit 0-9")]
    BadLabel { path: PathBuf, index: usize, label: u8 },
    #[error("{path}:{line}: {message}")]
    TextLine { path: PathBuf, line: usize, message: String },
    #[error("{path}: {subset} does not exist for a text file ({why})")]
    TextSubset { path: PathBuf, subset: &'static str, why: &'static str },
}

impl Dataset {
    /// Reads `subset` from an MNIST directory. `val_size` is the number of
    /// training digits held out (taken from the end).
    pub fn mnist(dir: &Path, subset: Subset, val_size: usize) -> Result<Self, DataError> {
        let prefix = match subset {
            Subset::Train | Subset::Val | Subset::All => "train",
            Subset::Test => "t10k",
            Subset::Sample => "sample",
        };
        let images_path = find(dir, prefix, "images-idx3-ubyte")?;
        let labels_path = find(dir, prefix, "labels-idx1-ubyte")?;
        let (shape, pixels) = read_idx_images(&images_path)?;
        let labels = read_idx_labels(&labels_path)?;
        let n = labels.len();
        if pixels.len() / (shape[1] * shape[2]) != n {
            return Err(DataError::CountMismatch {
                images: images_path,
                n_images: pixels.len() / (shape[1] * shape[2]),
                labels: labels_path,
                n_labels: n,
            });
        }
        let range = match subset {
            Subset::Train | Subset::Val if val_size >= n => {
                return Err(DataError::ValSplit { val: val_size, total: n })
            }
            Subset::Train => 0..n - val_size,
            Subset::Val => n - val_size..n,
            _ => 0..n,
        };
        let per = shape[1] * shape[2];
        let images = pixels[range.start * per..range.end * per].iter().map(|&p| p as f32 / 255.0).collect();
        Ok(Dataset {
            images,
            labels: labels[range.clone()].to_vec(),
            shape: shape.to_vec(),
            offset: range.start,
            offsets: None,
            texts: vec![],
        })
    }
}

fn find(dir: &Path, prefix: &str, stem: &str) -> Result<PathBuf, DataError> {
    let names = [format!("{prefix}-{stem}.gz"), format!("{prefix}-{stem}")];
    for name in &names {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::NotFound { what: format!("{prefix} {stem}"), dir: dir.to_path_buf(), names: names.join(" or ") })
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io { path: path.to_path_buf(), source };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(path: &Path, data: &[u8], words: usize) -> Result<Vec<u32>, DataError> {
    if data.len() < words * 4 {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected: words * 4, got: data.len() });
    }
    Ok((0..words).map(|i| u32::from_be_bytes(data[i * 4..i * 4 + 4].try_into().expect("4 bytes"))).collect())
}

/// Reads an IDX3 image file: returns `[1, rows, cols]` and the raw pixels.
pub fn read_idx_images(path: &Path) -> Result<([usize; 3], Vec<u8>), DataError> {
    let data = read_maybe_gz(path)?;
    let h = header(path, &data, 4)?;
    if h[0] != 0x0000_0803 {
        return Err(DataError::Magic { path: path.to_path_buf(), got: h[0], expected: 0x803, what: "IDX3 u8 images" });
    }
    let (n, rows, cols) = (h[1] as usize, h[2] as usize, h[3] as usize);
    let expected = n * rows * cols;
    if data.len() - 16 < expected {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected, got: data.len() - 16 });
    }
    Ok(([1, rows, cols], data[16..16 + expected].to_vec()))
}

/// Reads an IDX1 label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let data = read_maybe_gz(path)?;
    let h = header(path, &data, 2)?;
    if h[0] != 0x0000_0801 {
        return Err(DataError::Magic { path: path.to_path_buf(), got: h[0], expected: 0x801, what: "IDX1 u8 labels" });
    }
    let n = h[1] as usize;
    if data.len() - 8 < n {
        return Err(DataError::Truncated { path: path.to_path_buf(), expected: n, got: data.len() - 8 });
    }
    let labels = data[8..8 + n].to_vec();
    if let Some(index) = labels.iter().position(|&l| l > 9) {
        return Err(DataError::BadLabel { path: path.to_path_buf(), index, label: labels[index] });
    }
    Ok(labels)
}

/// Writes images (`u8` pixels) and labels as gzip IDX files with `prefix`.
pub fn write_idx(
    dir: &Path,
    prefix: &str,
    rows: usize,
    cols: usize,
    pixels: &[u8],
    labels: &[u8],
) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let gz = |name: String, header: Vec<u32>, body: &[u8]| -> std::io::Result<()> {
        let f = std::fs::File::create(dir.join(name))?;
        let mut w = flate2::write::GzEncoder::new(f, flate2::Compression::best());
        for v in header {
            w.write_all(&v.to_be_bytes())?;
        }
        w.write_all(body)?;
        w.finish()?;
        Ok(())
    };
    let n = labels.len() as u32;
    gz(format!("{prefix}-images-idx3-ubyte.gz"), vec![0x803, n, rows as u32, cols as u32], pixels)?;
    gz(format!("{prefix}-labels-idx1-ubyte.gz"), vec![0x801, n], labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("offramp-mnist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn round_trip_and_splits() {
        let d = tmp("rt");
        let pixels: Vec<u8> = (0..10 * 4).map(|i| (i * 6) as u8).collect();
        let labels: Vec<u8> = (0..10).map(|i| (i % 10) as u8).collect();
        write_idx(&d, "train", 2, 2, &pixels, &labels).unwrap();
        let train = Dataset::mnist(&d, Subset::Train, 3).unwrap();
        let val = Dataset::mnist(&d, Subset::Val, 3).unwrap();
        assert_eq!((train.len(), val.len(), val.offset), (7, 3, 7));
        assert_eq!(val.labels, vec![7, 8, 9]);
        assert_eq!(val.image(0), &[168.0 / 255.0, 174.0 / 255.0, 180.0 / 255.0, 186.0 / 255.0]);
        assert!(matches!(Dataset::mnist(&d, Subset::Val, 10), Err(DataError::ValSplit { .. })));
        assert!(matches!(Dataset::mnist(&d, Subset::Test, 3), Err(DataError::NotFound { .. })));
    }

    #[test]
    fn bad_magic_and_truncation() {
        let d = tmp("bad");
        std::fs::write(d.join("train-images-idx3-ubyte"), [0, 0, 8, 1, 0, 0, 0, 1]).unwrap();
        std::fs::write(d.join("train-labels-idx1-ubyte"), [0, 0, 8, 1, 0, 0, 0, 1, 3]).unwrap();
        let e = Dataset::mnist(&d, Subset::All, 0).unwrap_err();
        assert!(matches!(e, DataError::Magic { .. } | DataError::Truncated { .. }), "{e}");
        std::fs::write(d.join("train-images-idx3-ubyte"), [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2, 1, 2])
            .unwrap();
        let e = Dataset::mnist(&d, Subset::All, 0).unwrap_err();
        assert!(matches!(e, DataError::Truncated { expected: 8, got: 2, .. }), "{e}");
    }
}
