//! The tiny seeded decoder the decoder targets run on (6 layers, exits
//! after layers 2 and 4), imported once per process.

use std::path::PathBuf;

use offramp_common::decoder::tiny::{write_tiny_gguf, TinySpec};
use offramp_common::decoder::DecoderBundle;

/// The whole model with a context of `context` tokens, imported under a
/// folder of its own in the temp dir (returned with it).
pub fn decoder(target: &str, context: usize) -> (DecoderBundle, PathBuf) {
    let dir = std::env::temp_dir().join(format!("offramp-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_tiny_gguf(&dir.join("tiny.gguf"), TinySpec::default()).unwrap();
    (DecoderBundle::import(&dir.join("tiny.gguf"), &dir.join("whole"), None, &[2, 4], context).unwrap(), dir)
}
