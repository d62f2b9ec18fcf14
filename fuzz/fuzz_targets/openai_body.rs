//! The edge's OpenAI-compatible HTTP API: an arbitrary body POSTed to
//! `/v1/chat/completions` or `/v1/completions` through the edge's own axum
//! router (`offramp_edge::http::router`, the handlers `offramp-edge serve
//! --http-listen` serves), in-process, in front of a decoder edge holding
//! the whole tiny seeded decoder (K = N, no cloud) with a context of 64
//! tokens, so a request that passes every check generates (stop sequences,
//! echo, streaming as server-sent events) in bounded time.
//!
//! What must hold: no panic, no hang (an answer within 10 s); a refusal is
//! a 4xx with OpenAI's error JSON whose `param` names the parameter, or
//! whose message says the body is not a valid request, in a bounded
//! message, never a 5xx (bad input is the client's fault); an answer is
//! OpenAI's completion JSON (or its event stream ending in `[DONE]`) with
//! a finish reason, and usage whose prompt and completion tokens add up
//! and fit the context.
//!
//! Input: a steering byte (bit 0: the completions endpoint, else chat),
//! then the body as sent.

#![no_main]

mod check;
mod tiny;

use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use offramp_edge::generate::{DecoderEdge, GenerateConfig, Mode};
use offramp_edge::http::{router, HttpDefaults, HttpState};
use serde_json::Value;
use tower::ServiceExt;

/// The model's context: generation is capped to it, which bounds each run.
const CONTEXT: usize = 64;

struct World {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let (bundle, _) = tiny::decoder("openai-body", CONTEXT);
        let layers = bundle.num_layers();
        let edge = DecoderEdge::new(bundle, GenerateConfig::new(Mode::AllEdge, layers, vec![])).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let app = router(HttpState::new(edge, HttpDefaults::default()));
        World { rt, app }
    })
}

/// A refusal: OpenAI's error JSON, naming the parameter or saying the body
/// is not a request, bounded.
fn refused(status: StatusCode, body: &[u8]) {
    assert!(status.is_client_error(), "bad input answered {status}: {}", String::from_utf8_lossy(body));
    let v: Value = serde_json::from_slice(body).expect("an error body is JSON");
    let e = &v["error"];
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    let message = e["message"].as_str().expect("an error has a message");
    assert!(message.len() <= check::MAX_MESSAGE, "error message of {} bytes: {}", message.len(), &message[..200]);
    match e["param"].as_str() {
        Some(param) => assert!(message.starts_with(param), "the message does not name {param}: {message}"),
        None => {
            assert!(message.starts_with("the body is not a valid request"), "an error naming no parameter: {message}")
        }
    }
}

/// A completion's `usage` and finish reason.
fn usage_fits(v: &Value) {
    let u = &v["usage"];
    let (p, c, t) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64(), u["total_tokens"].as_u64());
    let (Some(p), Some(c), Some(t)) = (p, c, t) else { panic!("usage without counts: {v}") };
    assert_eq!(p + c, t, "{v}");
    assert!(p >= 1 && t as usize <= CONTEXT, "usage past the context of {CONTEXT}: {v}");
}

fn finished(choice: &Value) {
    assert!(matches!(choice["finish_reason"].as_str(), Some("stop" | "length")), "finish reason: {choice}");
}

/// An answer: completion JSON, or server-sent events ending in `[DONE]`.
fn answered(chat: bool, body: &[u8]) {
    let text = std::str::from_utf8(body).expect("an answer is UTF-8");
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).expect("an answer is JSON");
        assert_eq!(v["object"], if chat { "chat.completion" } else { "text_completion" }, "{v}");
        let choice = &v["choices"][0];
        finished(choice);
        let content = if chat { &choice["message"]["content"] } else { &choice["text"] };
        assert!(content.is_string(), "no text: {v}");
        usage_fits(&v);
        return;
    }
    let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last().copied(), Some("[DONE]"), "a stream not ending in [DONE]: {text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("an event that is not JSON ({err}): {e}")))
        .collect();
    if let Some(e) = chunks.iter().find_map(|c| c.get("error")) {
        panic!("a stream of a well-formed request failed: {e}");
    }
    let last = chunks.iter().rev().find(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty()));
    let last = last.expect("a stream with no choice");
    finished(&last["choices"][0]);
    usage_fits(last);
}

fuzz_target!(|data: &[u8]| {
    let Some((&steer, body)) = data.split_first() else { return };
    let chat = steer & 1 == 0;
    let w = world();
    let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a request");
    let (status, bytes) = w.rt.block_on(async {
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            let response = w.app.clone().oneshot(request).await.expect("the router is infallible");
            let status = response.status();
            (status, axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("the body is read"))
        });
        answer.await.expect("no answer within 10 s")
    });
    if status == StatusCode::OK {
        answered(chat, &bytes);
    } else {
        refused(status, &bytes);
    }
});
