//! Labelled sentences, one `<label> <sentence>` per line (the format of
//! SST-2 `stsa.binary.*` and TREC `TREC.*` in `../shared/data/text`),
//! tokenized with the model's tokenizer.

use std::path::Path;

use super::{DataError, Dataset, Subset};
use crate::model::TextEncoder;

/// Reads `<label> <sentence>` lines; labels must be integers below
/// `num_classes`. Blank lines are skipped. A file that is not UTF-8 is read
/// as Latin-1 (every byte one character), as the older research releases
/// are written (TREC has a Latin-1 soft hyphen).
pub fn read_labelled_lines(path: &Path, num_classes: usize) -> Result<Vec<(u8, String)>, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    let text = String::from_utf8(bytes).unwrap_or_else(|e| e.into_bytes().iter().map(|&b| char::from(b)).collect());
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| DataError::TextLine { path: path.to_path_buf(), line: i + 1, message };
        let (label, sentence) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let label: u8 = label
            .parse()
            .ok()
            .filter(|&l: &u8| (l as usize) < num_classes)
            .ok_or_else(|| bad(format!("label {label:?} is not a class index below {num_classes}")))?;
        let sentence = sentence.trim();
        if sentence.is_empty() {
            return Err(bad("no sentence after the label".into()));
        }
        out.push((label, sentence.to_string()));
    }
    Ok(out)
}

impl Dataset {
    /// Reads `subset` of a text file and tokenizes every sentence.
    /// `Train`: all but the last `val_size` lines; `Val`: the last
    /// `val_size`; `All` and `Sample`: every line. A text file has no test
    /// split (test sets are held back; pass the file you mean with `All`).
    pub fn text(
        path: &Path,
        subset: Subset,
        val_size: usize,
        encoder: &TextEncoder,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let lines = read_labelled_lines(path, num_classes)?;
        let n = lines.len();
        let range = match subset {
            Subset::Train | Subset::Val if val_size >= n => {
                return Err(DataError::ValSplit { val: val_size, total: n })
            }
            Subset::Train => 0..n - val_size,
            Subset::Val => n - val_size..n,
            Subset::All | Subset::Sample => 0..n,
            Subset::Test => {
                return Err(DataError::TextSubset {
                    path: path.to_path_buf(),
                    subset: "test",
                    why: "pass the file to read with --subset all",
                })
            }
        };
        let mut data = Dataset {
            images: vec![],
            labels: vec![],
            shape: vec![encoder.max_tokens()],
            offset: range.start,
            offsets: Some(vec![0]),
            texts: vec![],
        };
        for (i, (label, sentence)) in lines[range.clone()].iter().enumerate() {
            let ids = encoder.encode(sentence).map_err(|e| DataError::TextLine {
                path: path.to_path_buf(),
                line: range.start + i + 1,
                message: e.to_string(),
            })?;
            data.images.extend_from_slice(&ids);
            data.offsets.as_mut().expect("set above").push(data.images.len());
            data.labels.push(*label);
            data.texts.push(sentence.clone());
        }
        Ok(data)
    }

    /// The dataset a model reads: text (tokenized with the bundle's own
    /// tokenizer) for a text model, else MNIST IDX files in `path`.
    pub fn for_bundle(path: &Path, subset: Subset, val_size: usize, bundle: &crate::Bundle) -> Result<Self, DataError> {
        match bundle.text_encoder() {
            Some(encoder) => Self::text(path, subset, val_size, encoder, bundle.num_classes()),
            None => Self::mnist(path, subset, val_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("offramp-text-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lines.txt");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_labels_and_sentences_in_utf8_and_latin1() {
        let utf8 = file("utf8", "1 café au lait\n\n0 plain\n".as_bytes());
        let lines = read_labelled_lines(&utf8, 2).unwrap();
        assert_eq!(lines, vec![(1, "café au lait".to_string()), (0, "plain".to_string())]);
        // TREC's line 66: a Latin-1 soft hyphen (0xAD) is not UTF-8.
        let latin1 = file("latin1", b"4 a sister\xadcity ?\n");
        assert_eq!(read_labelled_lines(&latin1, 6).unwrap(), vec![(4, "a sister\u{ad}city ?".to_string())]);
    }

    #[test]
    fn bad_lines_are_named() {
        let path = file("bad", b"0 fine\n7 too high\n");
        let e = read_labelled_lines(&path, 2).unwrap_err().to_string();
        assert!(e.contains("lines.txt:2:") && e.contains("label \"7\" is not a class index below 2"), "{e}");
        let path = file("empty", b"1\n");
        let e = read_labelled_lines(&path, 2).unwrap_err().to_string();
        assert!(e.contains("no sentence after the label"), "{e}");
    }
}
