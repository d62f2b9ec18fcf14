use std::path::PathBuf;

/// Everything that can be wrong with a bundle or a forward pass.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("unsupported manifest format version {got} (this build reads {supported})")]
    FormatVersion { got: u32, supported: u32 },
    #[error("unsupported dtype {dtype:?} for {what} (supported: {supported})")]
    UnsupportedDtype { what: String, dtype: String, supported: &'static str },
    #[error("block {block} ({name}): {message}")]
    BlockShape { block: usize, name: String, message: String },
    #[error("exit {exit} ({name}): {message}")]
    ExitShape { exit: usize, name: String, message: String },
    #[error("exit {exit} ({name}) is attached after block {after_block}, but the model has only {num_blocks} blocks")]
    ExitAfterMissingBlock { exit: usize, name: String, after_block: usize, num_blocks: usize },
    #[error("exits must be listed in block order: exit {exit} ({name}) comes after block {after_block}, before the previous exit's block")]
    ExitOrder { exit: usize, name: String, after_block: usize },
    #[error("the model needs an exit after its last block ({last_block}) so every sample gets an answer")]
    NoFinalExit { last_block: usize },
    #[error("missing tensor {tensor:?} in {path}")]
    MissingTensor { tensor: String, path: PathBuf },
    #[error("tensor {tensor:?} has shape {got:?}, the manifest needs {expected:?}")]
    ShapeMismatch { tensor: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("unexpected tensor {tensor:?} in {path}: the manifest has no parameter of that name")]
    UnexpectedTensor { tensor: String, path: PathBuf },
    #[error("split point {split} out of range: the model has {num_blocks} blocks, so K must be in 0..={num_blocks}")]
    SplitOutOfRange { split: usize, num_blocks: usize },
    #[error("this bundle holds blocks {held_start}..{held_end}, but blocks {start}..{end} were asked for")]
    BlocksNotHeld { start: usize, end: usize, held_start: usize, held_end: usize },
    #[error("input has shape {got:?}, blocks from {block} expect [batch, {expected:?}]")]
    InputShape { block: usize, expected: Vec<usize>, got: Vec<usize> },
    #[error(
        "a sequence entering block {block} must hold 1 to {max_tokens} tokens of {per_token:?} values each; got {got} \
         values"
    )]
    SequenceShape { block: usize, max_tokens: usize, per_token: Vec<usize>, got: usize },
    #[error("token id at position {index} is {value}: ids must be integers in 0..{vocab}")]
    TokenId { index: usize, value: f32, vocab: usize },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("history and batch disagree: {histories} histories for {batch} samples")]
    HistoryLength { histories: usize, batch: usize },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
}
