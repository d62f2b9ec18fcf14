//! The OpenAI API's request and response shapes (the subset Offramp
//! serves), and its error body.
//!
//! Requests are read field by field from the JSON object, so a value of the
//! wrong type or out of range is refused naming its parameter (`param` in
//! OpenAI's error JSON). Every field of OpenAI's chat and completion
//! requests is accepted; each is either honoured, accepted and reported as
//! ignored in the response's `offramp.ignored` (where ignoring it cannot
//! change what a client parses: penalties, `user`, metadata), or refused by
//! name (where ignoring it would: `n > 1`, content parts other than text).
//! Structured output and tool calls are read in [`super::structured`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use offramp_common::codec::echo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Most stop sequences a request may give (OpenAI's limit).
pub const MAX_STOP_SEQUENCES: usize = 4;

/// Parameters shared by both endpoints, checked.
#[derive(Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    /// `None`: a seed of the server's choosing (also for a negative seed,
    /// as llama.cpp reads -1).
    pub seed: Option<u64>,
    pub stream: bool,
    /// `stream_options.include_usage`: a last chunk with the usage.
    pub include_usage: bool,
    pub stop: Vec<String>,
    /// `logit_bias`: token id and bias (checked against the vocabulary
    /// later).
    pub logit_bias: Vec<(u32, f32)>,
    /// Log-probabilities wanted, with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// What the output must be: text, JSON, or a tool call.
    pub output: super::structured::Output,
    /// Fields accepted but not acted on (reported in `offramp.ignored`).
    pub ignored: Vec<String>,
    pub offramp: Extensions,
}

/// Fields that are accepted and reported as ignored when set to anything
/// but their neutral value: they tune sampling in ways Offramp does not
/// implement, or carry bookkeeping it has no use for.
const IGNORED: [&str; 12] = [
    "frequency_penalty",
    "presence_penalty",
    "repeat_penalty",
    "repetition_penalty",
    "user",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "reasoning_effort",
    "prediction",
    "best_of",
];

/// Keys this server reads itself (not reported as ignored).
const READ: [&str; 23] = [
    "model",
    "messages",
    "prompt",
    "echo",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stream",
    "stream_options",
    "stop",
    "n",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
];

/// The request's JSON object.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::invalid(format!(
            "the body is not a valid request: a JSON object is needed, not {}",
            kind_of(&other)
        ))),
        Err(e) => Err(ApiError::invalid(format!("the body is not a valid request: {e}"))),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field `key` as a `T` (`None` when absent or null), or an error naming it
/// and saying what it must be.
pub fn field<T: DeserializeOwned>(obj: &Map<String, Value>, key: &str, must_be: &str) -> Result<Option<T>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|_| ApiError::param(key, &format!("must be {must_be} (got {})", shown(v)))),
    }
}

/// A value as an error message shows it (bounded).
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// A number field within `range`.
fn number(obj: &Map<String, Value>, key: &str, range: std::ops::RangeInclusive<f32>) -> Result<Option<f32>, ApiError> {
    let what = format!("a number between {} and {}", range.start(), range.end());
    let v: Option<f64> = field(obj, key, &what)?;
    match v {
        Some(x) if !(x.is_finite() && range.contains(&(x as f32))) => {
            Err(ApiError::param(key, &format!("must be {what} (got {x})")))
        }
        v => Ok(v.map(|x| x as f32)),
    }
}

impl Common {
    /// Reads and checks the shared parameters of a request object.
    pub fn parse(obj: &Map<String, Value>) -> Result<Self, ApiError> {
        let int = "a non-negative integer";
        let max_completion: Option<usize> = field(obj, "max_completion_tokens", int)?;
        let max_tokens: Option<usize> = field(obj, "max_tokens", int)?;
        let seed: Option<i64> = field(obj, "seed", "an integer")?;
        let stream_options: Option<Map<String, Value>> = field(obj, "stream_options", "an object")?;
        let include_usage = match &stream_options {
            Some(o) => field::<bool>(o, "include_usage", "a boolean")
                .map_err(|_| ApiError::param("stream_options.include_usage", "must be a boolean"))?
                .unwrap_or(false),
            None => false,
        };
        let c = Self {
            model: field(obj, "model", "a string")?,
            max_tokens: max_completion.or(max_tokens),
            temperature: number(obj, "temperature", 0.0..=2.0)?,
            top_p: number(obj, "top_p", 0.0..=1.0)?,
            top_k: field(obj, "top_k", int)?,
            min_p: number(obj, "min_p", 0.0..=1.0)?,
            seed: seed.and_then(|s| u64::try_from(s).ok()),
            stream: field(obj, "stream", "a boolean")?.unwrap_or(false),
            include_usage,
            stop: stop_sequences(obj)?,
            logit_bias: logit_bias(obj)?,
            logprobs: logprobs(obj)?,
            output: super::structured::Output::parse(obj)?,
            ignored: ignored(obj),
            offramp: Extensions {
                mode: field(obj, "mode", "a string")?,
                draft: field(obj, "draft", int)?,
                deadline_ms: field(obj, "deadline_ms", int)?,
            },
        };
        if include_usage && !c.stream {
            return Err(ApiError::param("stream_options", "is only for streamed requests (stream: true)"));
        }
        refuse_unimplemented(obj)?;
        Ok(c)
    }

    pub fn limit(&self) -> Option<usize> {
        self.max_tokens
    }
}

/// `stop`: a string or up to four strings.
fn stop_sequences(obj: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let must = "a string or a list of up to 4 strings";
    let stops = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(String::from).ok_or_else(|| ApiError::param("stop", &format!("must be {must}"))))
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(ApiError::param("stop", &format!("must be {must} (got {})", shown(v)))),
    };
    if stops.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::param(
            "stop",
            &format!("at most {MAX_STOP_SEQUENCES} stop sequences (got {})", stops.len()),
        ));
    }
    Ok(stops.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The fields given that are accepted without effect.
fn ignored(obj: &Map<String, Value>) -> Vec<String> {
    let neutral = |k: &str, v: &Value| match k {
        "best_of" => v.as_u64() == Some(1),
        "parallel_tool_calls" | "store" => v.is_boolean(),
        _ => v.is_null() || v.as_f64() == Some(0.0) || v.as_f64() == Some(1.0) && k.starts_with("repe"),
    };
    let mut out: Vec<String> =
        obj.iter().filter(|(k, v)| IGNORED.contains(&k.as_str()) && !neutral(k, v)).map(|(k, _)| k.clone()).collect();
    out.extend(super::structured::ignored_tools(obj));
    out.extend(
        obj.keys()
            .filter(|k| !READ.contains(&k.as_str()) && !IGNORED.contains(&k.as_str()))
            .filter(|k| !["mode", "draft", "deadline_ms"].contains(&k.as_str()))
            .cloned(),
    );
    out
}

/// Refuses, naming the parameter, what changes the answer a client parses
/// and is not implemented.
fn refuse_unimplemented(obj: &Map<String, Value>) -> Result<(), ApiError> {
    let n: Option<u64> = field(obj, "n", "a positive integer")?;
    if n.is_some_and(|n| n != 1) {
        return Err(ApiError::param("n", "only n = 1 is supported (one choice per request)"));
    }
    Ok(())
}

/// `logit_bias`: an object from token ids (as strings) to biases in
/// [-100, 100].
fn logit_bias(obj: &Map<String, Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(map) = field::<Map<String, Value>>(obj, "logit_bias", "an object from token ids to biases")? else {
        return Ok(Vec::new());
    };
    map.iter()
        .map(|(k, v)| {
            let token = k.parse::<u32>().map_err(|_| {
                ApiError::param(
                    "logit_bias",
                    &format!("keys must be token ids (got {})", shown(&Value::from(k.as_str()))),
                )
            })?;
            let bias = v.as_f64().filter(|b| b.is_finite() && b.abs() <= 100.0).ok_or_else(|| {
                ApiError::param(
                    "logit_bias",
                    &format!("token {token}: a bias is a number in [-100, 100] (got {})", shown(v)),
                )
            })?;
            Ok((token, bias as f32))
        })
        .collect()
}

/// Log-probabilities: chat's `logprobs: true` with `top_logprobs` (0..=20),
/// or the completions API's `logprobs: N` (alternatives per token, 0..=20).
fn logprobs(obj: &Map<String, Value>) -> Result<Option<usize>, ApiError> {
    let top: Option<u64> = field(obj, "top_logprobs", "an integer between 0 and 20")?;
    if top.is_some_and(|t| t > 20) {
        return Err(ApiError::param("top_logprobs", "must be an integer between 0 and 20"));
    }
    let wanted = match obj.get("logprobs") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(top.unwrap_or(0) as usize),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(k) if k <= 20 => Some(k as usize),
            _ => return Err(ApiError::param("logprobs", "must be a boolean, or an integer between 0 and 20")),
        },
        Some(v) => {
            return Err(ApiError::param("logprobs", &format!("must be a boolean or an integer (got {})", shown(v))))
        }
    };
    if wanted.is_none() && top.is_some_and(|t| t > 0) {
        return Err(ApiError::param("top_logprobs", "needs logprobs: true"));
    }
    Ok(wanted)
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    /// A string, or a list of content parts of which only text parts are
    /// understood.
    #[serde(default)]
    pub content: Value,
    /// An assistant turn's earlier tool calls (shown to the model as
    /// their JSON).
    #[serde(default)]
    pub tool_calls: Value,
}

impl Message {
    /// The messages of a chat request, each checked.
    pub fn list(obj: &Map<String, Value>) -> Result<Vec<Message>, ApiError> {
        let Some(v) = obj.get("messages") else {
            return Err(ApiError::param("messages", "is required: a list of {role, content} messages"));
        };
        let Value::Array(items) = v else {
            return Err(ApiError::param("messages", &format!("must be a list of messages (got {})", shown(v))));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let Value::Object(o) = m else {
                    return Err(ApiError::param(&format!("messages[{i}]"), "must be an object with role and content"));
                };
                let param = format!("messages[{i}].role");
                let role = match o.get("role") {
                    Some(Value::String(r)) => r.clone(),
                    Some(v) => return Err(ApiError::param(&param, &format!("must be a string (got {})", shown(v)))),
                    None => return Err(ApiError::param(&param, "is required")),
                };
                Ok(Message {
                    role,
                    content: o.get("content").cloned().unwrap_or(Value::Null),
                    tool_calls: o.get("tool_calls").cloned().unwrap_or(Value::Null),
                })
            })
            .collect()
    }

    /// The message's text (an assistant's earlier tool calls as their
    /// JSON when it has no content).
    pub fn text(&self, index: usize) -> Result<String, ApiError> {
        let param = format!("messages[{index}].content");
        match &self.content {
            Value::String(s) => Ok(s.clone()),
            Value::Null if !self.tool_calls.is_null() => Ok(self.tool_calls.to_string()),
            Value::Null => Ok(String::new()),
            Value::Array(parts) => parts
                .iter()
                .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => Ok(t.to_string()),
                    (kind, _) => Err(ApiError::param(
                        &param,
                        &format!(
                            "content parts of type {} are not supported (text only)",
                            kind.map_or_else(|| "?".into(), echo::text)
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|parts| parts.join("")),
            _ => Err(ApiError::param(&param, "must be a string or a list of text parts")),
        }
    }
}

/// A completion request's prompt: text, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
}

impl Prompt {
    /// `prompt`: a string, a list of token ids, or a list holding one of
    /// those (OpenAI's batch form, one prompt per request here).
    pub fn parse(obj: &Map<String, Value>) -> Result<Self, ApiError> {
        let Some(v) = obj.get("prompt") else {
            return Err(ApiError::param("prompt", "is required: a string or a list of token ids"));
        };
        let one = |v: &Value| -> Option<Prompt> {
            match v {
                Value::String(s) => Some(Prompt::Text(s.clone())),
                Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_u64) => a
                    .iter()
                    .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                    .collect::<Option<Vec<u32>>>()
                    .map(Prompt::Tokens),
                _ => None,
            }
        };
        if let Some(p) = one(v) {
            return Ok(p);
        }
        match v {
            Value::Array(a) if a.len() == 1 => one(&a[0]).ok_or_else(|| {
                ApiError::param("prompt", &format!("must be a string or a list of token ids (got {})", shown(&a[0])))
            }),
            Value::Array(a) if a.len() > 1 && a.iter().all(|p| one(p).is_some()) => Err(ApiError::param(
                "prompt",
                &format!("only one prompt per request is supported (got a list of {})", a.len()),
            )),
            _ => Err(ApiError::param("prompt", &format!("must be a string or a list of token ids (got {})", shown(v)))),
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
