//! Constrained decoding: the tokens a grammar allows next (any JSON object,
//! a JSON schema, a tool call), computed by `llguidance` — the engine
//! behind llama.cpp's and vLLM's structured output — on the edge.
//!
//! The edge holds the grammar's state for the tokens emitted so far plus
//! the drafts in flight. Before it chooses or drafts a token it computes the
//! position's mask, applies it to its own logits and sends it with the step
//! (or the draft), and the cloud applies the same mask before it chooses or
//! verifies ([`offramp_common::decoder::logits`]). Every mode therefore
//! chooses from the same masked distribution: split, speculative and
//! all-cloud runs stay identical for a seed, and every answer follows the
//! grammar. When drafts are rejected the grammar rolls back with the caches.
//! Once the grammar is complete the only token allowed is the end of the
//! turn, so a generation that fits its `max_tokens` ends with text that
//! parses.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use offramp_common::decoder::logits::TokenMask;
use offramp_common::decoder::DecoderTokenizer;

/// What a generation's output must follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `response_format: json_object`).
    JsonObject,
    /// A value valid against a JSON schema (`json_schema`, tool arguments).
    JsonSchema(serde_json::Value),
}

/// Why a grammar could not be built or followed.
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    /// The schema is not one the engine takes (the caller's to fix).
    #[error("the JSON schema cannot be used for constrained decoding: {0}")]
    Schema(String),
    #[error("the tokenizer cannot be used for constrained decoding: {0}")]
    Tokenizer(String),
    /// The engine failed while following a grammar it accepted.
    #[error("constrained decoding failed: {0}")]
    Engine(String),
}

/// The model's tokenizer as the grammar engine sees it: every token's
/// bytes in a trie, and the tokenizer itself for text.
struct TokenSpace {
    trie: TokTrie,
    tokenizer: Arc<DecoderTokenizer>,
}

impl TokenizerEnv for TokenSpace {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer.encode(&String::from_utf8_lossy(s)).unwrap_or_else(|_| self.trie.greedy_tokenize(s))
    }
}

/// Builds grammars for one model (its token trie is built once).
pub struct Grammars {
    factory: ParserFactory,
    vocab: usize,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars").field("vocab", &self.vocab).finish()
    }
}

impl Grammars {
    /// For a model with `vocab` logits and this tokenizer. The grammar's
    /// end token is the one that ends a turn (`<|im_end|>` for a chat
    /// model, else EOS).
    pub fn new(tokenizer: Arc<DecoderTokenizer>, vocab: usize) -> Result<Self, GrammarError> {
        let json = tokenizer.to_json().map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        let mut words =
            llguidance::token_bytes_from_tokenizer_json(&json).map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        // Ids past the tokenizer's (padding in the logits) are never text.
        words.resize_with(vocab.max(words.len()), || vec![TokTrie::SPECIAL_TOKEN_MARKER]);
        words.truncate(vocab);
        let end = *tokenizer.stops().last().unwrap_or(&tokenizer.eos());
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, end), &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(TokenSpace { trie, tokenizer });
        let factory = ParserFactory::new_simple(&env).map_err(|e| GrammarError::Tokenizer(e.to_string()))?;
        Ok(Self { factory, vocab })
    }

    /// A fresh grammar state for `c`.
    pub fn start(&self, c: &Constraint) -> Result<Grammar, GrammarError> {
        let mut schema = match c {
            Constraint::JsonObject => serde_json::json!({"type": "object"}),
            Constraint::JsonSchema(schema) => schema.clone(),
        };
        // JSON as Python's json.dumps writes it: one space after `,` and
        // `:`, no other whitespace (the engine's default lets a model pad
        // with whitespace without end).
        if let Some(o) = schema.as_object_mut() {
            o.entry("x-guidance").or_insert_with(
                || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
            );
        }
        let top = TopLevelGrammar::from_json_schema(schema);
        let parser = self.factory.create_parser(top).map_err(|e| GrammarError::Schema(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GrammarError::Schema(e));
        }
        Ok(Grammar { matcher, vocab: self.vocab, fed: Vec::new() })
    }
}

/// A grammar's state over the tokens consumed so far.
pub struct Grammar {
    matcher: Matcher,
    vocab: usize,
    /// Per token consumed: whether the engine took it (once the grammar
    /// has ended — its end token taken — later tokens, drafted past the
    /// end, are only counted).
    fed: Vec<bool>,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").field("len", &self.fed.len()).finish()
    }
}

impl Grammar {
    /// The tokens allowed next (only the end token once the grammar is
    /// complete).
    pub fn mask(&mut self) -> Result<TokenMask, GrammarError> {
        let vob = self.matcher.compute_mask_or_eos().map_err(|e| GrammarError::Engine(e.to_string()))?;
        Ok(TokenMask::from_fn(self.vocab, |t| vob.is_allowed(t)))
    }

    /// Takes `token` as the next one.
    pub fn consume(&mut self, token: u32) -> Result<(), GrammarError> {
        if self.matcher.is_stopped() {
            self.fed.push(false);
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| GrammarError::Engine(e.to_string()))?;
        self.fed.push(true);
        Ok(())
    }

    /// Tokens consumed.
    pub fn len(&self) -> usize {
        self.fed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fed.is_empty()
    }

    /// Forgets the tokens after the first `len`.
    pub fn truncate(&mut self, len: usize) -> Result<(), GrammarError> {
        if len < self.fed.len() {
            let taken = self.fed[len..].iter().filter(|&&f| f).count();
            if taken > 0 {
                self.matcher.rollback(taken).map_err(|e| GrammarError::Engine(e.to_string()))?;
            }
            self.fed.truncate(len);
        }
        Ok(())
    }
}
