//! The OpenAI API's request and response shapes (the subset Offramp
//! serves), and its error body.
//!
//! Requests are parsed leniently the way OpenAI's server is: unknown fields
//! are ignored, but a parameter whose meaning Offramp does not implement
//! (several choices, nucleus sampling, log-probabilities, tools, stop
//! strings) is refused by name rather than silently ignored.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Offramp's extra request fields (all optional; the server's flags are the
/// defaults).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Extensions {
    /// split, early-exit or speculative (at the server's split).
    pub mode: Option<String>,
    /// speculative: most drafts per verification.
    pub draft: Option<usize>,
    /// How long a token waits for the cloud before the device answers.
    pub deadline_ms: Option<u64>,
}

/// Parameters shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub seed: Option<u64>,
    pub stream: Option<bool>,
    pub n: Option<u32>,
    pub top_p: Option<f32>,
    pub stop: Option<Value>,
    pub logprobs: Option<Value>,
    pub tools: Option<Value>,
    #[serde(flatten)]
    pub offramp: Extensions,
}

impl Common {
    /// Refuses what is not implemented, naming the parameter.
    pub fn check(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::param("n", "only n = 1 is supported (one choice per request)"));
        }
        if self.top_p.is_some_and(|p| p != 1.0) {
            return Err(ApiError::param(
                "top_p",
                "nucleus sampling is not supported; use temperature (top_p must be 1)",
            ));
        }
        if self.stop.as_ref().is_some_and(|s| !(s.is_null() || s.as_array().is_some_and(|a| a.is_empty()))) {
            return Err(ApiError::param(
                "stop",
                "stop sequences are not supported; generation ends at the model's end-of-turn token or max_tokens",
            ));
        }
        if self.logprobs.as_ref().is_some_and(|l| !(l.is_null() || l == &Value::Bool(false))) {
            return Err(ApiError::param("logprobs", "log-probabilities are not supported"));
        }
        if self.tools.as_ref().is_some_and(|t| !(t.is_null() || t.as_array().is_some_and(|a| a.is_empty()))) {
            return Err(ApiError::param("tools", "tool calls are not supported"));
        }
        if let Some(t) = self.temperature {
            if !(t.is_finite() && (0.0..=2.0).contains(&t)) {
                return Err(ApiError::param("temperature", &format!("must be between 0 and 2 (got {t})")));
            }
        }
        Ok(())
    }

    pub fn limit(&self) -> Option<usize> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    /// A string, or a list of content parts of which only text parts are
    /// understood.
    #[serde(default)]
    pub content: Value,
}

impl Message {
    /// The message's text.
    pub fn text(&self, index: usize) -> Result<String, ApiError> {
        let param = format!("messages[{index}].content");
        match &self.content {
            Value::String(s) => Ok(s.clone()),
            Value::Null => Ok(String::new()),
            Value::Array(parts) => parts
                .iter()
                .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    (kind, _) => Err(ApiError::param(
                        &param,
                        &format!("content parts of type {} are not supported (text only)", kind.unwrap_or("?")),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|parts| parts.join("")),
            _ => Err(ApiError::param(&param, "must be a string or a list of text parts")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// A string, or a list holding one string.
    pub prompt: Value,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

impl CompletionRequest {
    pub fn prompt_text(&self) -> Result<String, ApiError> {
        match &self.prompt {
            Value::String(s) => Ok(s.clone()),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => Ok(a[0].as_str().unwrap_or_default().to_string()),
            Value::Array(a) if a.iter().all(Value::is_string) => {
                Err(ApiError::param("prompt", "only one prompt per request is supported"))
            }
            _ => Err(ApiError::param("prompt", "must be a string (token-id prompts are not supported)")),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn param(param: &str, message: &str) -> Self {
        Self { param: Some(param.to_string()), message: format!("{param}: {message}"), ..Self::invalid("") }
    }

    /// The server failed, not the request (OpenAI's `server_error`).
    pub fn server(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind: "server_error", message: message.into(), param: None, code: Some(code) }
    }

    pub fn with(mut self, status: StatusCode, code: &'static str) -> Self {
        self.status = status;
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
