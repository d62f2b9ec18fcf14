//! Text to token ids with the tokenizer a checkpoint was made for (the
//! `tokenizers` crate reading the checkpoint's own `tokenizer.json`).

use tokenizers::{Tokenizer, TruncationParams};

/// A bundle's tokenizer: text in, token ids out (as the f32 rows the
/// executor takes), at most the model's maximum length.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    json: Vec<u8>,
    max_tokens: usize,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder").field("max_tokens", &self.max_tokens).finish()
    }
}

impl TextEncoder {
    /// Parses `tokenizer.json`. Padding is turned off (the executor pads a
    /// batch only as far as its longest sample) and truncation set to
    /// `max_tokens`, whatever the file says.
    pub fn from_json(json: Vec<u8>, max_tokens: usize) -> Result<Self, TokenizerError> {
        let mut tokenizer = Tokenizer::from_bytes(&json).map_err(|e| TokenizerError::Parse(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|e| TokenizerError::Truncation { max_tokens, message: e.to_string() })?;
        Ok(Self { tokenizer, json, max_tokens })
    }

    /// The file contents, as loaded.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Token ids of `text` with the model's special tokens (`[CLS] ... [SEP]`
    /// for BERT), truncated to the maximum length.
    pub fn encode(&self, text: &str) -> Result<Vec<f32>, TokenizeError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| TokenizeError(e.to_string()))?;
        let ids: Vec<f32> = encoding.get_ids().iter().map(|&id| id as f32).collect();
        if ids.is_empty() {
            return Err(TokenizeError("the text produced no tokens".into()));
        }
        Ok(ids)
    }

    /// The tokens of `text` as strings (for inspection and tests).
    pub fn tokens(&self, text: &str) -> Result<Vec<String>, TokenizeError> {
        let encoding = self.tokenizer.encode(text, true).map_err(|e| TokenizeError(e.to_string()))?;
        Ok(encoding.get_tokens().to_vec())
    }
}

/// Why a `tokenizer.json` cannot serve as a bundle's tokenizer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenizerError {
    /// The `tokenizers` crate could not read it.
    #[error("not a tokenizer.json: {0}")]
    Parse(String),
    #[error("cannot truncate to {max_tokens} tokens: {message}")]
    Truncation { max_tokens: usize, message: String },
}

/// Why a text could not be tokenized.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot tokenize the text: {0}")]
pub struct TokenizeError(pub String);
