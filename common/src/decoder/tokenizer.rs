//! The decoder's tokenizer: the GGUF's byte-level BPE vocabulary and merges
//! (`tokenizer.ggml.*`) written out as a `tokenizer.json` and run by the
//! `tokenizers` crate, plus the chat template.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::config::string;
use super::error::DecoderError;

/// `tokenizer.ggml.token_type` of control tokens (`<|im_start|>`, ...): they
/// are matched whole in text and never split by BPE.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Builds the `tokenizer.json` for a GGUF whose `tokenizer.ggml.model` is
/// `gpt2` (byte-level BPE). `tokenizer.ggml.pre` picks the pre-tokenizer:
/// `smollm` (and the others llama.cpp maps to it) split digits one by one
/// before the GPT-2 byte-level split.
pub(crate) fn json_from_gguf(md: &HashMap<String, Value>) -> Result<Vec<u8>, DecoderError> {
    let model = string(md, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(DecoderError::meta(
            "tokenizer.ggml.model",
            format!("{model:?} is not supported (supported: gpt2, the byte-level BPE of GPT-2, SmolLM and Qwen)"),
        ));
    }
    let strings = |key: &str| -> Result<Vec<String>, DecoderError> {
        let v = md.get(key).ok_or_else(|| DecoderError::meta(key, "missing"))?;
        v.to_vec()
            .map_err(|e| DecoderError::meta(key, e))?
            .iter()
            .map(|x| x.to_string().cloned().map_err(|e| DecoderError::meta(key, e)))
            .collect()
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| DecoderError::meta("tokenizer.ggml.token_type", e))?
            .iter()
            .map(|x| match x {
                Value::I32(t) => Ok(*t),
                Value::U32(t) => Ok(*t as i32),
                other => Err(DecoderError::meta("tokenizer.ggml.token_type", format!("not an integer: {other:?}"))),
            })
            .collect::<Result<_, _>>()?,
        None => vec![1; tokens.len()],
    };
    let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).map(String::as_str).unwrap_or("default");
    let byte_level =
        serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre_tokenizer = match pre {
        "smollm" | "qwen2" | "deepseek-llm" | "starcoder" => serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}),
        "default" | "gpt2" | "gpt-2" => byte_level,
        other => {
            return Err(DecoderError::meta(
                "tokenizer.ggml.pre",
                format!("pre-tokenizer {other:?} is not supported (supported: smollm, qwen2, starcoder, gpt2)"),
            ))
        }
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::Value::from(i as u32))).collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
        .map(|(i, t)| {
            serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": types[i] == CONTROL})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    Ok(serde_json::to_vec(&json).expect("JSON values serialize"))
}

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// The chat format a bundle's template describes. Only ChatML
/// (`<|im_start|>role\ncontent<|im_end|>\n`) is recognised; the template's
/// default system message is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatFormat {
    /// Inserted when a conversation does not start with a system message.
    pub default_system: Option<String>,
}

impl ChatFormat {
    /// Recognises a Jinja chat template; `None` when it is not ChatML.
    pub fn from_template(template: &str) -> Option<Self> {
        if !template.contains("<|im_start|>") {
            return None;
        }
        let marker = "<|im_start|>system\n";
        let default_system = template.find(marker).and_then(|at| {
            let rest = &template[at + marker.len()..];
            rest.find("<|im_end|>").map(|end| rest[..end].to_string())
        });
        Some(Self { default_system })
    }

    /// The prompt text for `messages`, ending with the assistant's turn open.
    pub fn render(&self, messages: &[ChatMessage]) -> String {
        let mut out = String::new();
        if messages.first().is_none_or(|m| m.role != "system") {
            if let Some(system) = &self.default_system {
                out.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
            }
        }
        for m in messages {
            out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
        }
        out.push_str("<|im_start|>assistant\n");
        out
    }
}

/// Text to token ids and back, for a decoder.
pub struct DecoderTokenizer {
    tokenizer: Tokenizer,
    chat: Option<ChatFormat>,
    eos: u32,
    /// Token ids that end a turn (EOS and `<|im_end|>` for ChatML).
    stops: Vec<u32>,
    /// Bytes of the longest token as the vocabulary writes it: no token
    /// covers more text than that.
    max_token_bytes: usize,
}

impl std::fmt::Debug for DecoderTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderTokenizer").field("chat", &self.chat).field("stops", &self.stops).finish()
    }
}

impl DecoderTokenizer {
    pub fn from_json(json: &[u8], chat_template: Option<&str>, eos: u32) -> Result<Self, DecoderError> {
        let tokenizer =
            Tokenizer::from_bytes(json).map_err(|e| DecoderError::Tokenizer(format!("not a tokenizer.json: {e}")))?;
        let chat = chat_template.and_then(ChatFormat::from_template);
        let mut stops = vec![eos];
        if chat.is_some() {
            if let Some(id) = tokenizer.token_to_id("<|im_end|>") {
                stops.push(id);
            }
        }
        let max_token_bytes = tokenizer.get_vocab(true).keys().map(String::len).max().unwrap_or(1);
        Ok(Self { tokenizer, chat, eos, stops, max_token_bytes })
    }

    /// The most text (in bytes) one token can stand for: a text of `n`
    /// bytes is at least `n / max_token_bytes()` tokens, known before
    /// tokenizing it.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    pub fn eos(&self) -> u32 {
        self.eos
    }

    /// Tokens that end a turn (EOS, and `<|im_end|>` for ChatML).
    pub fn stops(&self) -> &[u32] {
        &self.stops
    }

    /// The tokenizer as a `tokenizer.json` document.
    pub fn to_json(&self) -> Result<serde_json::Value, DecoderError> {
        let text = self.tokenizer.to_string(false).map_err(|e| DecoderError::Tokenizer(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| DecoderError::Tokenizer(e.to_string()))
    }

    /// Whether `token` ends the model's turn.
    pub fn is_stop(&self, token: u32) -> bool {
        self.stops.contains(&token)
    }

    pub fn chat_format(&self) -> Option<&ChatFormat> {
        self.chat.as_ref()
    }

    /// Token ids of `text`, special tokens (`<|im_start|>`) matched whole.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DecoderError> {
        let enc = self.tokenizer.encode(text, false).map_err(|e| DecoderError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt ids of a conversation, rendered with the model's chat
    /// template.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, DecoderError> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            DecoderError::Tokenizer("this model has no chat template that Offramp understands (ChatML)".into())
        })?;
        self.encode(&chat.render(messages))
    }

    /// Text of `ids` (special tokens left out).
    pub fn decode(&self, ids: &[u32]) -> Result<String, DecoderError> {
        self.tokenizer.decode(ids, true).map_err(|e| DecoderError::Tokenizer(e.to_string()))
    }
}

/// Turns a growing list of token ids into text pieces as they arrive, holding
/// back bytes that do not yet form whole UTF-8 characters.
#[derive(Debug, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    /// The new text once `token` is appended (empty while a character is
    /// incomplete).
    pub fn push(&mut self, tokenizer: &DecoderTokenizer, token: u32) -> String {
        self.ids.push(token);
        let text = tokenizer.decode(&self.ids).unwrap_or_default();
        match text.get(self.printed..) {
            Some(piece) if !piece.is_empty() && !text.ends_with('\u{FFFD}') => {
                let piece = piece.to_string();
                self.printed = text.len();
                piece
            }
            _ => String::new(),
        }
    }
}
