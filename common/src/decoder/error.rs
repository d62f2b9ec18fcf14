use std::path::PathBuf;

/// What went wrong with a decoder bundle, its GGUF file or a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    /// The I/O error is part of the message, not a separate source (an
    /// error chain would print it twice).
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error("{}: not a readable GGUF file: {detail}", path.display())]
    Gguf { path: PathBuf, detail: String },
    #[error("GGUF metadata {key:?}: {detail}")]
    Metadata { key: String, detail: String },
    #[error("architecture {0:?} is not supported (supported: llama)")]
    Architecture(String),
    #[error("tensor {name:?}: {detail}")]
    Tensor { name: String, detail: String },
    #[error("decoder bundle {}: {detail}", dir.display())]
    Bundle { dir: PathBuf, detail: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("split {split}: {detail}")]
    Split { split: usize, detail: String },
    #[error("this side holds layers {start}..{end}; {detail}")]
    NotHeld { start: usize, end: usize, detail: String },
    #[error("positions {start}..{end} run past the model's context of {context} tokens")]
    Context { start: usize, end: usize, context: usize },
    #[error("the state has {got} values per position; the model's hidden size is {hidden}")]
    Width { got: usize, hidden: usize },
    #[error("token id {token} is outside the vocabulary of {vocab}")]
    Token { token: u32, vocab: usize },
    #[error("a step starts at position {got} but the KV cache holds {cached} positions")]
    Position { got: usize, cached: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl DecoderError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io { path: path.into(), error }
    }

    pub(crate) fn meta(key: &str, detail: impl std::fmt::Display) -> Self {
        Self::Metadata { key: key.to_string(), detail: detail.to_string() }
    }
}
