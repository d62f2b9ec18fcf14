//! `offramp-edge serve --http-listen`: the OpenAI-compatible HTTP API of a
//! device holding a decoder.
//!
//! `POST /v1/chat/completions` (the model's chat template), `POST
//! /v1/completions` and `GET /v1/models`, non-streaming or streaming as
//! server-sent events, served by axum. Each request is one generation
//! through the split ([`crate::generate::DecoderEdge`]) in the server's mode
//! or the one the request names (`mode`, `draft`, `deadline_ms` are extra
//! request fields). Every response carries `usage` and, as the extension
//! field `offramp`, the tokens by tier and the generation's summary. Errors
//! are OpenAI's error JSON with a 4xx/5xx status; a bad request never takes
//! the server down. A client that goes away mid-stream stops its generation.

pub mod args;
pub mod openai;
mod structured;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use offramp_common::codec::echo::quoted;
use offramp_common::decoder::logits::LogitBias;
use offramp_common::decoder::sample::{Sampling, Truncation};
use offramp_common::decoder::ChatMessage;
use offramp_transport::token::Secret;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::generate::{DecoderEdge, Finish, GenOptions, GenerateError, Generated, Mode, Summary, TokenEvent};
use openai::{ApiError, Common, Message, Prompt, Usage};
use structured::Output;

/// Server-side defaults of the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpDefaults {
    /// Tokens generated when a request gives no `max_tokens`.
    pub max_tokens: usize,
    /// Temperature when a request gives none (0: greedy).
    pub temperature: f32,
    /// Generations running at once; more requests wait their turn.
    pub concurrency: usize,
    /// Bearer token every request must carry (none: loopback trust).
    pub token: Option<Secret>,
}

impl Default for HttpDefaults {
    fn default() -> Self {
        Self { max_tokens: 256, temperature: 0.0, concurrency: 4, token: None }
    }
}

/// What the handlers share.
pub struct HttpState {
    edge: Arc<DecoderEdge>,
    defaults: HttpDefaults,
    permits: Semaphore,
    next_id: AtomicU64,
}

impl HttpState {
    pub fn new(edge: DecoderEdge, defaults: HttpDefaults) -> Arc<Self> {
        let permits = Semaphore::new(defaults.concurrency.max(1));
        Arc::new(Self { edge: Arc::new(edge), defaults, permits, next_id: AtomicU64::new(1) })
    }
}

/// The API's routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .fallback(|| async {
            ApiError::invalid(
                "unknown route; this server serves /v1/models, /v1/chat/completions, /v1/completions, /health, \
                 /tokenize and /detokenize",
            )
            .with(StatusCode::NOT_FOUND, "not_found")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::invalid("method not allowed: GET /v1/models, POST /v1/chat/completions, POST /v1/completions")
                .with(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        })
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<HttpState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.defaults.token else { return Ok(()) };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token.matches(given) {
        Ok(())
    } else {
        Err(ApiError::invalid("missing or wrong API key (Authorization: Bearer ...)")
            .with(StatusCode::UNAUTHORIZED, "invalid_api_key"))
    }
}

/// The model this server serves, as OpenAI's model object.
fn model_object(state: &HttpState) -> Value {
    let b = state.edge.bundle();
    json!({
        "id": b.model_id(),
        "object": "model",
        "created": 0,
        "owned_by": "offramp",
        "offramp": {
            "layers": b.config().layers,
            "split": state.edge.split(),
            "context": b.config().context,
            "mode": state.edge.mode().name(),
        },
    })
}

async fn models(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    Json(json!({ "object": "list", "data": [model_object(&state)] })).into_response()
}

async fn model(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if let Err(e) = authorize(&state, &headers) {
        return e.into_response();
    }
    let served = state.edge.bundle().model_id();
    if id != served {
        return ApiError::param("model", &format!("this server serves {served:?}, not {}", quoted(&id)))
            .with(StatusCode::NOT_FOUND, "model_not_found")
            .into_response();
    }
    Json(model_object(&state)).into_response()
}

/// A JSON answer, or OpenAI's error JSON.
fn json_or_error(r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /tokenize` as llama-server has it: `{"content": TEXT}` →
/// `{"tokens": [ids]}` (no special tokens added).
async fn tokenize(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<Value, ApiError> {
        let obj = request(&state, &headers, body)?;
        let content: String = openai::field(&obj, "content", "a string")?
            .ok_or_else(|| ApiError::param("content", "is required: the text to tokenize"))?;
        let ids = state.edge.tokenizer().encode(&content).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(json!({ "tokens": ids }))
    };
    json_or_error(run())
}

/// `POST /detokenize` as llama-server has it: `{"tokens": [ids]}` →
/// `{"content": TEXT}`.
async fn detokenize(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = || -> Result<Value, ApiError> {
        let obj = request(&state, &headers, body)?;
        let ids: Vec<u32> = openai::field(&obj, "tokens", "a list of token ids")?
            .ok_or_else(|| ApiError::param("tokens", "is required: the token ids to turn into text"))?;
        check_ids(&state, &ids, "tokens")?;
        let text = state.edge.tokenizer().decode(&ids).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok(json!({ "content": text }))
    };
    json_or_error(run())
}

/// `GET /health`: 200 `{"status": "ok"}` when generations can run as the
/// server's mode means them to: at K = N always, otherwise while a cloud
/// endpoint passes the decoder handshake (probed now, within the connect
/// timeout). 503 `{"status": "unavailable", "cloud": why}` while no cloud
/// does: the edge still answers then, from its own exit (tier fallback),
/// which a load balancer should not count as healthy. No API key needed.
async fn health(State(state): State<Arc<HttpState>>) -> Response {
    match state.edge.probe().await {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "cloud": e.to_string() })))
            .into_response(),
    }
}

/// Which endpoint a generation answers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = |body: Result<Bytes, BytesRejection>| -> Result<(Vec<u32>, Common), ApiError> {
        let obj = request(&state, &headers, body)?;
        let messages = Message::list(&obj)?;
        let common = Common::parse(&obj)?;
        if messages.is_empty() {
            return Err(ApiError::param("messages", "at least one message is needed"));
        }
        let mut chat = Vec::with_capacity(messages.len());
        let mut bytes = 0;
        for (i, m) in messages.iter().enumerate() {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                // A tool's result (and the older function role) goes back
                // to the model as a turn of its own.
                "tool" | "function" => "tool",
                other => {
                    return Err(ApiError::param(
                        &format!("messages[{i}].role"),
                        &format!("{} is not supported (system, developer, user, assistant, tool)", quoted(other)),
                    ))
                }
            };
            let content = m.text(i)?;
            bytes += content.len();
            chat.push(ChatMessage { role: role.into(), content });
        }
        if let Some(text) = common.output.instructions() {
            bytes += text.len();
            chat.insert(0, ChatMessage { role: "system".into(), content: text });
        }
        check_prompt_size(&state, bytes, "messages")?;
        let ids = state.edge.tokenizer().encode_chat(&chat).map_err(|e| ApiError::invalid(e.to_string()))?;
        Ok((ids, common))
    };
    match run(body) {
        Ok((ids, common)) => respond(state, Kind::Chat, ids, common, None).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = |body: Result<Bytes, BytesRejection>| -> Result<(Vec<u32>, Common, Option<String>), ApiError> {
        let obj = request(&state, &headers, body)?;
        let common = Common::parse(&obj)?;
        let echo: bool = openai::field(&obj, "echo", "a boolean")?.unwrap_or(false);
        let tok = state.edge.tokenizer();
        let (ids, text) = match Prompt::parse(&obj)? {
            Prompt::Text(text) => {
                check_prompt_size(&state, text.len(), "prompt")?;
                (tok.encode(&text).map_err(|e| ApiError::invalid(e.to_string()))?, text)
            }
            Prompt::Tokens(ids) => {
                check_ids(&state, &ids, "prompt")?;
                let text = tok.decode(&ids).map_err(|e| ApiError::invalid(e.to_string()))?;
                (ids, text)
            }
        };
        Ok((ids, common, echo.then_some(text)))
    };
    match run(body) {
        Ok((ids, common, echo)) => respond(state, Kind::Completion, ids, common, echo).await,
        Err(e) => e.into_response(),
    }
}

fn read(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::invalid(format!("could not read the request body: {e}")).with(e.status(), "bad_body"))
}

/// An authorized request's JSON object.
fn request(
    state: &HttpState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    authorize(state, headers)?;
    openai::object(&read(body)?)
}

/// Token ids a client sent, checked against the vocabulary (`param` names
/// the field they came in).
fn check_ids(state: &HttpState, ids: &[u32], param: &str) -> Result<(), ApiError> {
    let vocab = state.edge.bundle().config().vocab;
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(bad) => Err(ApiError::param(param, &format!("token id {bad} is outside the vocabulary of {vocab}"))),
        None => Ok(()),
    }
}

/// Refuses a prompt that could never fit the context before tokenizing it:
/// no token of the vocabulary covers more than `max_token_bytes`, so
/// `bytes / max_token_bytes` tokens at least.
fn check_prompt_size(state: &HttpState, bytes: usize, param: &str) -> Result<(), ApiError> {
    let context = state.edge.bundle().config().context;
    let longest = state.edge.tokenizer().max_token_bytes().max(1);
    if bytes / longest > context {
        return Err(ApiError::param(
            param,
            &format!(
                "the prompt ({bytes} bytes, at least {} tokens) cannot fit the model's context of {context} tokens",
                bytes / longest
            ),
        )
        .with(StatusCode::BAD_REQUEST, "context_length_exceeded"));
    }
    Ok(())
}

/// The generation options a request asks for, checked against the edge.
fn options(state: &HttpState, kind: Kind, common: &Common, prompt_len: usize) -> Result<GenOptions, ApiError> {
    if let Some(model) = common.model.as_deref() {
        let id = state.edge.bundle().model_id();
        if !model.is_empty() && model != id {
            return Err(ApiError::param("model", &format!("this server serves {id:?}, not {}", quoted(model)))
                .with(StatusCode::NOT_FOUND, "model_not_found"));
        }
    }
    let asked = common.limit().unwrap_or(state.defaults.max_tokens);
    if asked == 0 {
        return Err(ApiError::param("max_tokens", "must be at least 1"));
    }
    let context = state.edge.bundle().config().context;
    if prompt_len == 0 {
        return Err(ApiError::param("prompt", "the prompt has no tokens"));
    }
    if prompt_len >= context {
        return Err(ApiError::param(
            if kind == Kind::Chat { "messages" } else { "prompt" },
            &format!("the prompt ({prompt_len} tokens) leaves no room in the model's context of {context}"),
        )
        .with(StatusCode::BAD_REQUEST, "context_length_exceeded"));
    }
    // Past the context, generation is capped and finishes with `length`
    // (as llama.cpp and vLLM do).
    let max_tokens = asked.min(context - prompt_len);
    let ext = &common.offramp;
    let mode = match ext.mode.as_deref() {
        None => None,
        Some(name) => {
            let mode = <Mode as clap::ValueEnum>::from_str(name, true).map_err(|_| {
                ApiError::param(
                    "mode",
                    &format!("{} is not a mode (split, early-exit, speculative, all-cloud, all-edge)", quoted(name)),
                )
            })?;
            state.edge.check_mode(mode).map_err(|e| ApiError::param("mode", &e.to_string()))?;
            Some(mode)
        }
    };
    if ext.draft == Some(0) {
        return Err(ApiError::param("draft", "must be at least 1"));
    }
    if ext.deadline_ms == Some(0) {
        return Err(ApiError::param("deadline_ms", "must be at least 1"));
    }
    // OpenAI's top_p = 0 keeps only the most likely token (top_k = 1);
    // on the wire 0 means "off".
    let top_p = common.top_p.unwrap_or(1.0);
    let truncation = Truncation {
        top_k: if top_p == 0.0 { 1 } else { common.top_k.unwrap_or(0) },
        top_p: if top_p == 0.0 { 1.0 } else { top_p },
        min_p: common.min_p.unwrap_or(0.0),
    };
    let constraint = common.output.constraint();
    if let Some(c) = &constraint {
        let param = if matches!(common.output, Output::ToolCall { .. }) { "tools" } else { "response_format" };
        state.edge.check_constraint(c).map_err(|e| ApiError::param(param, &e.to_string()))?;
    }
    let vocab = state.edge.bundle().config().vocab;
    let logit_bias =
        LogitBias::new(common.logit_bias.clone(), vocab).map_err(|e| ApiError::param("logit_bias", &e.to_string()))?;
    Ok(GenOptions {
        max_tokens,
        sampling: Sampling::from_temperature(common.temperature.unwrap_or(state.defaults.temperature)),
        truncation,
        stop: common.stop.clone(),
        seed: common.seed.unwrap_or_else(|| state.next_id.load(Ordering::Relaxed)),
        agreement: false,
        ignore_eos: false,
        mode,
        draft: ext.draft,
        deadline: ext.deadline_ms.map(Duration::from_millis),
        logit_bias,
        logprobs: common.logprobs,
        constraint,
    })
}

async fn respond(state: Arc<HttpState>, kind: Kind, ids: Vec<u32>, common: Common, echo: Option<String>) -> Response {
    let opts = match options(&state, kind, &common, ids.len()) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        id: format!("{}-{n}", if kind == Kind::Chat { "chatcmpl" } else { "cmpl" }),
        created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        model: state.edge.bundle().model_id().to_string(),
        kind,
        prompt_tokens: ids.len(),
        include_usage: common.include_usage,
        ignored: common.ignored.clone(),
        output: common.output.clone(),
        logprobs: common.logprobs.is_some(),
        tokenizer: state.edge.tokenizer().clone(),
    };
    if common.stream {
        return stream(state, meta, ids, opts, echo);
    }
    // The generation holds a permit while it computes; a client that goes
    // away (this future dropped) aborts it at its next token.
    let task = {
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = state.permits.acquire().await.expect("the semaphore is never closed");
            state.edge.generate(&ids, &opts, |_| {}).await
        })
    };
    let guard = AbortOnDrop(task.abort_handle());
    let joined = task.await;
    drop(guard);
    let g = match joined {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => return generate_error(e).into_response(),
        Err(e) => {
            return ApiError::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("the generation failed: {e}"),
            )
            .into_response()
        }
    };
    let echoed = echo.unwrap_or_default();
    let text = format!("{echoed}{}", g.text);
    let events: Vec<&TokenEvent> = g.events.iter().collect();
    let (content, calls, finish) = meta.answer(&text, &g);
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": { "role": "assistant", "content": content, "tool_calls": calls },
            "finish_reason": finish,
            "logprobs": meta.logprobs.then(|| structured::chat_logprobs(&meta.tokenizer, &events)),
        }),
        Kind::Completion => json!({
            "index": 0,
            "text": text,
            "finish_reason": finish,
            "logprobs": meta.logprobs.then(|| structured::completion_logprobs(&meta.tokenizer, &events, echoed.len())),
        }),
    };
    let mut choice = choice;
    if calls.is_none() {
        if let Some(m) = choice.get_mut("message").and_then(Value::as_object_mut) {
            m.remove("tool_calls");
        }
    }
    Json(json!({
        "id": meta.id,
        "object": if kind == Kind::Chat { "chat.completion" } else { "text_completion" },
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage(meta.prompt_tokens, g.tokens.len()),
        "offramp": extension(&g.summary, &meta.ignored),
    }))
    .into_response()
}

struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    prompt_tokens: usize,
    /// `stream_options.include_usage`.
    include_usage: bool,
    ignored: Vec<String>,
    output: Output,
    /// Log-probabilities go with each token.
    logprobs: bool,
    tokenizer: Arc<offramp_common::decoder::DecoderTokenizer>,
}

impl Meta {
    /// A finished generation's message content, tool calls (a forced call
    /// that parses) and finish reason.
    fn answer(&self, text: &str, g: &Generated) -> (Option<String>, Option<Value>, &'static str) {
        if let Output::ToolCall { .. } = self.output {
            if let Some(call) = structured::tool_call(text, &format!("call_{}", self.id)) {
                return (None, Some(json!([call])), "tool_calls");
            }
        }
        (Some(text.to_string()), None, finish_reason(g))
    }

    /// The log-probabilities of `events` as a chunk carries them.
    fn chunk_logprobs(&self, events: &[&TokenEvent], offset: usize) -> Value {
        match (self.logprobs, self.kind) {
            (false, _) => Value::Null,
            (true, Kind::Chat) => structured::chat_logprobs(&self.tokenizer, events),
            (true, Kind::Completion) => structured::completion_logprobs(&self.tokenizer, events, offset),
        }
    }

    fn chunk(&self, delta_or_text: Value, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => json!({ "index": 0, "delta": delta_or_text, "finish_reason": finish, "logprobs": null }),
            Kind::Completion => json!({ "index": 0, "text": delta_or_text, "finish_reason": finish, "logprobs": null }),
        };
        json!({
            "id": self.id,
            "object": if self.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        })
    }
}

/// Aborts the generation when the response stream is dropped (the client
/// went away).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn stream(state: Arc<HttpState>, meta: Meta, ids: Vec<u32>, opts: GenOptions, echo: Option<String>) -> Response {
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let first = match meta.kind {
        Kind::Chat => meta.chunk(json!({ "role": "assistant", "content": "" }), None),
        Kind::Completion => meta.chunk(json!(echo.unwrap_or_default()), None),
    };
    let _ = tx.send(first);
    let task = {
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = state.permits.acquire().await.expect("the semaphore is never closed");
            let tokenizer = state.edge.tokenizer().clone();
            let piece = |text: &str| match meta.kind {
                Kind::Chat => json!({ "content": text }),
                Kind::Completion => json!(text),
            };
            let mut streamed = String::new();
            // A forced tool call is sent whole once it parses.
            let calling = matches!(meta.output, Output::ToolCall { .. });
            // Tokens not yet sent (no whole character yet): their
            // log-probabilities go with the next chunk.
            let mut pending: Vec<TokenEvent> = Vec::new();
            let on_token = |e: &TokenEvent| {
                if meta.logprobs {
                    pending.push(e.clone());
                }
                if calling || e.text.is_empty() || tokenizer.is_stop(e.token) {
                    return;
                }
                let mut chunk = meta.chunk(piece(&e.text), None);
                if meta.logprobs {
                    let events: Vec<&TokenEvent> = pending.iter().collect();
                    chunk["choices"][0]["logprobs"] = meta.chunk_logprobs(&events, streamed.len());
                    pending.clear();
                }
                streamed.push_str(&e.text);
                let _ = tx.send(chunk);
            };
            match state.edge.generate(&ids, &opts, on_token).await {
                Ok(g) => {
                    let (content, calls, finish) = meta.answer(&g.text, &g);
                    if let Some(calls) = calls {
                        let mut call = calls[0].clone();
                        call["index"] = json!(0);
                        let _ = tx.send(meta.chunk(json!({ "tool_calls": [call] }), None));
                    } else if let Some(tail) = content.as_deref().and_then(|c| c.strip_prefix(streamed.as_str())) {
                        // Text held back: bytes waiting for the rest of a
                        // character that never came, text that might have
                        // begun a stop sequence that never came, or a
                        // forced call that did not finish.
                        if !tail.is_empty() {
                            let _ = tx.send(meta.chunk(piece(tail), None));
                        }
                    }
                    let empty = if meta.kind == Kind::Chat { json!({}) } else { json!("") };
                    let mut last = meta.chunk(empty, Some(finish));
                    let usage = serde_json::to_value(usage(meta.prompt_tokens, g.tokens.len())).unwrap_or_default();
                    last["usage"] = usage.clone();
                    last["offramp"] = extension(&g.summary, &meta.ignored);
                    let _ = tx.send(last);
                    if meta.include_usage {
                        // OpenAI's usage chunk: no choices, the usage.
                        let mut chunk = meta.chunk(Value::Null, None);
                        chunk["choices"] = json!([]);
                        chunk["usage"] = usage;
                        let _ = tx.send(chunk);
                    }
                }
                Err(e) => {
                    let _ = tx.send(generate_error(e).body());
                }
            }
        })
    };
    let guard = AbortOnDrop(task.abort_handle());
    let events = UnboundedReceiverStream::new(rx)
        .map(move |v| {
            let _ = &guard;
            Ok::<_, Infallible>(Event::default().data(v.to_string()))
        })
        .chain(futures::stream::once(async { Ok(Event::default().data("[DONE]")) }));
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

fn finish_reason(g: &Generated) -> &'static str {
    match g.finish {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

fn usage(prompt: usize, completion: usize) -> Usage {
    Usage { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
}

/// The `offramp` extension field: tokens by tier, the summary, and the
/// request fields accepted without effect.
fn extension(s: &Summary, ignored: &[String]) -> Value {
    json!({
        "tokens_by_tier": { "edge": s.edge_tokens, "cloud": s.cloud_tokens, "fallback": s.fallback_tokens },
        "summary": s,
        "ignored": ignored,
    })
}

/// A failed generation as OpenAI's error JSON: the request's fault is 400,
/// a cloud that refuses this edge 503, the edge's own compute 500.
fn generate_error(e: GenerateError) -> ApiError {
    match e {
        GenerateError::ContextExceeded { .. } => {
            ApiError::param("max_tokens", &e.to_string()).with(StatusCode::BAD_REQUEST, "context_length_exceeded")
        }
        e if e.is_bad_request() => ApiError::invalid(e.to_string()),
        GenerateError::Link(l) => ApiError::server(StatusCode::SERVICE_UNAVAILABLE, "cloud_unavailable", l.to_string()),
        e => ApiError::server(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    //! Refusals echo what the client sent bounded. The `openai_body` fuzz
    //! target's bound on error messages, checked on the hand-written inputs
    //! `fuzz/seeds/openai_body/finding-*`, showed a 3,000-character role,
    //! model, mode, `response_format` type or content part type (and model
    //! id in `GET /v1/models/{id}`) coming back whole in the message.

    use std::net::SocketAddr;

    use offramp_common::decoder::tiny::{write_tiny_gguf, TinySpec};
    use offramp_common::decoder::DecoderBundle;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::generate::{GenerateConfig, Mode};

    /// One HTTP/1.1 request on its own connection: the status and the JSON body.
    async fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head[9..12].parse().unwrap(), serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
    }

    #[tokio::test]
    async fn refusals_echo_the_clients_values_bounded() {
        let dir = std::env::temp_dir().join(format!("offramp-edge-http-echo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        write_tiny_gguf(&dir.join("tiny.gguf"), TinySpec::default()).unwrap();
        let bundle = DecoderBundle::import(&dir.join("tiny.gguf"), &dir.join("whole"), None, &[2, 4], 64).unwrap();
        let n = bundle.num_layers();
        let edge = DecoderEdge::new(bundle, GenerateConfig::new(Mode::AllEdge, n, vec![])).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            tokio::spawn(serve(listener, HttpState::new(edge, HttpDefaults::default()), std::future::pending()));

        let long = "r".repeat(3000);
        let user = json!([{ "role": "user", "content": "hi" }]);
        let chat = |extra: Value| {
            let mut body = json!({ "messages": user });
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            ("/v1/chat/completions", body.to_string())
        };
        let cases = [
            (chat(json!({ "messages": [{ "role": long, "content": "hi" }] })), "messages[0].role"),
            (chat(json!({ "model": long })), "model"),
            (chat(json!({ "mode": long })), "mode"),
            (chat(json!({ "response_format": { "type": long } })), "response_format.type"),
            (chat(json!({ "messages": [{ "role": "user", "content": [{ "type": long }] }] })), "messages[0].content"),
        ];
        for ((path, body), param) in cases {
            let (status, v) = call(addr, "POST", path, &body).await;
            assert!((400..500).contains(&status), "{status}: {v}");
            assert_eq!(v["error"]["param"], param, "{v}");
            let message = v["error"]["message"].as_str().unwrap();
            assert!(message.len() < 300 && message.contains("(3000 bytes)"), "{param}: {message}");
        }
        let (status, v) = call(addr, "GET", &format!("/v1/models/{long}"), "").await;
        assert_eq!(status, 404, "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.len() < 300 && message.contains("(3000 bytes)"), "{message}");
        server.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
