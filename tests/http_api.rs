//! The device's OpenAI-compatible HTTP API: a real axum server on
//! 127.0.0.1:0 in front of a decoder edge, a real cloud behind it, and a
//! real HTTP client (hyper's).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use offramp_common::decoder::{ChatMessage, DecoderBundle};
use offramp_edge::generate::{DecoderEdge, Mode};
use offramp_edge::http::{HttpDefaults, HttpState};
use offramp_transport::token::Secret;
use serde_json::{json, Value};

use crate::support::*;

struct Api {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Api {
    async fn start(edge: DecoderEdge, defaults: HttpDefaults) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = HttpState::new(edge, defaults);
        let server = tokio::spawn(async move {
            offramp_edge::http::serve(listener, state, std::future::pending()).await.unwrap();
        });
        Self { base, client: Client::builder(TokioExecutor::new()).build_http(), _server: server }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> (u16, String) {
        let mut req = hyper::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or("").to_string()))).unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.call("POST", path, Some(&body.to_string()), None).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
    }
}

/// Chat and text completions, non-streaming and streamed as server-sent
/// events, in the server's mode and in the one a request names: the text is
/// the whole model's greedy answer in every case, with usage counts and the
/// tokens by tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_stream_and_not_with_usage_and_tiers() {
    let dir = tmp("http-api");
    // Layers that move the state: answers that are not one repeated token.
    let whole =
        tiny_decoder_with(&dir, offramp_common::decoder::tiny::TinySpec { layer_scale: 3.0, ..Default::default() });
    let bundle = DecoderBundle::open(&whole).unwrap();
    let model = bundle.model().unwrap();
    let tok = bundle.tokenizer().clone();
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let api =
        Api::start(decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {}), HttpDefaults::default()).await;

    let (status, models) = api.call("GET", "/v1/models", None, None).await;
    assert_eq!(status, 200, "{models}");
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], bundle.model_id());
    assert_eq!(models["data"][0]["offramp"]["split"], 3);

    let question = "what is the answer ?";
    let ids = tok.encode_chat(&[ChatMessage { role: "user".into(), content: question.into() }]).unwrap();
    let reference = model.generate_greedy(&ids, 12, |t| tok.is_stop(t)).unwrap();
    let ref_text = tok.decode(&reference).unwrap();
    for mode in [None, Some("speculative")] {
        let mut body = json!({
            "model": bundle.model_id(),
            "messages": [{ "role": "user", "content": question }],
            "max_tokens": 12,
        });
        if let Some(m) = mode {
            body["mode"] = json!(m);
            body["draft"] = json!(3);
        }
        let (status, r) = api.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["object"], "chat.completion");
        assert_eq!(r["choices"][0]["message"]["role"], "assistant");
        assert_eq!(r["choices"][0]["message"]["content"], ref_text, "{mode:?}");
        let finish = if tok.is_stop(*reference.last().unwrap()) { "stop" } else { "length" };
        assert_eq!(r["choices"][0]["finish_reason"], finish);
        assert_eq!(r["usage"]["prompt_tokens"], ids.len());
        assert_eq!(r["usage"]["completion_tokens"], reference.len());
        assert_eq!(r["usage"]["total_tokens"], ids.len() + reference.len());
        let tiers = &r["offramp"]["tokens_by_tier"];
        let sum = tiers["edge"].as_u64().unwrap() + tiers["cloud"].as_u64().unwrap();
        assert_eq!(sum as usize, reference.len(), "{tiers}");
        assert_eq!(r["offramp"]["summary"]["mode"], mode.unwrap_or("split"));

        // The same request streamed: a role chunk, content pieces, a last
        // chunk with the finish reason and usage, then [DONE].
        body["stream"] = json!(true);
        let (status, text) = api.call("POST", "/v1/chat/completions", Some(&body.to_string()), None).await;
        assert_eq!(status, 200, "{text}");
        let events: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        assert_eq!(*events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        assert!(chunks.len() >= 3, "{text}");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let streamed: String =
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
        assert_eq!(streamed, ref_text);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], finish);
        assert_eq!(last["usage"]["completion_tokens"], reference.len());
    }

    // Text completions, with echo.
    let prompt = "the answer is";
    let pids = tok.encode(prompt).unwrap();
    let reference = tok.decode(&model.generate_greedy(&pids, 8, |t| tok.is_stop(t)).unwrap()).unwrap();
    let (status, r) = api.post("/v1/completions", json!({ "prompt": prompt, "max_tokens": 8, "echo": true })).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["choices"][0]["text"], format!("{prompt}{reference}"));
    let (status, text) = api
        .call(
            "POST",
            "/v1/completions",
            Some(&json!({ "prompt": [prompt], "max_tokens": 8, "stream": true }).to_string()),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let streamed: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok()?["choices"][0]["text"].as_str().map(String::from))
        .collect();
    assert_eq!(streamed, reference);
}

/// Bad requests get OpenAI's error JSON with a 4xx status naming what is
/// wrong, and the server keeps serving; an API key is enforced when set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let dir = tmp("http-bad");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let defaults = HttpDefaults { token: Some(Secret::new("sesame")), ..HttpDefaults::default() };
    let api = Api::start(decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {}), defaults).await;
    let chat = |extra: Value| {
        let mut b = json!({ "messages": [{ "role": "user", "content": "hi" }], "max_tokens": 4 });
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b.to_string()
    };
    let (status, body) = api.call("POST", "/v1/chat/completions", Some(&chat(json!({}))), None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_api_key"));
    let (status, _) = api.call("GET", "/v1/models", None, Some("wrong")).await;
    assert_eq!(status, 401);
    let key = Some("sesame");
    for (path, body, want_status, says) in [
        ("/v1/chat/completions", "{not json".to_string(), 400, "not a valid request"),
        ("/v1/chat/completions", json!({ "max_tokens": 3 }).to_string(), 400, "messages"),
        ("/v1/chat/completions", chat(json!({ "messages": [] })), 400, "at least one message"),
        (
            "/v1/chat/completions",
            chat(json!({ "messages": [{ "role": "narrator", "content": "x" }] })),
            400,
            "messages[0].role",
        ),
        ("/v1/chat/completions", chat(json!({ "n": 2 })), 400, "only n = 1"),
        ("/v1/chat/completions", chat(json!({ "top_p": 1.5 })), 400, "top_p"),
        ("/v1/chat/completions", chat(json!({ "stop": ["a", "b", "c", "d", "e"] })), 400, "at most 4 stop"),
        ("/v1/chat/completions", chat(json!({ "temperature": 7 })), 400, "temperature"),
        (
            "/v1/chat/completions",
            chat(json!({ "messages": [{ "role": "user", "content": "x".repeat(100_000) }] })),
            400,
            "cannot fit the model's context",
        ),
        ("/v1/chat/completions", chat(json!({ "logprobs": "all" })), 400, "logprobs"),
        ("/v1/chat/completions", chat(json!({ "logit_bias": { "5": 101 } })), 400, "logit_bias"),
        ("/v1/chat/completions", chat(json!({ "response_format": { "type": "json" } })), 400, "response_format.type"),
        ("/v1/chat/completions", chat(json!({ "tool_choice": "required" })), 400, "lists no tools"),
        ("/v1/chat/completions", chat(json!({ "max_tokens": 0 })), 400, "at least 1"),
        ("/v1/chat/completions", chat(json!({ "model": "gpt-4" })), 404, "gpt-4"),
        ("/v1/chat/completions", chat(json!({ "mode": "warp" })), 400, "not a mode"),
        ("/v1/chat/completions", chat(json!({ "mode": "all-edge" })), 400, "does not run on this edge"),
        ("/v1/chat/completions", chat(json!({ "mode": "early-exit" })), 400, "it runs: split"),
        ("/v1/chat/completions", chat(json!({ "draft": 0 })), 400, "draft"),
        ("/v1/completions", json!({ "prompt": ["a", "b"] }).to_string(), 400, "one prompt"),
        ("/v1/completions", json!({ "prompt": [1, -2] }).to_string(), 400, "a list of token ids"),
        ("/v1/completions", json!({ "prompt": [99999] }).to_string(), 400, "outside the vocabulary"),
        ("/v1/completions", json!({ "prompt": "" }).to_string(), 400, "no tokens"),
        ("/v1/embeddings", "{}".to_string(), 404, "unknown route"),
    ] {
        let (status, text) = api.call("POST", path, Some(&body), key).await;
        assert_eq!(status, want_status, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{body}: {text}");
        assert!(v["error"]["type"].is_string(), "{text}");
    }
    // Type errors name the parameter (OpenAI's `param`).
    for (extra, param) in [
        (json!({ "max_tokens": -1 }), "max_tokens"),
        (json!({ "max_tokens": "8" }), "max_tokens"),
        (json!({ "max_tokens": 1e300 }), "max_tokens"),
        (json!({ "temperature": "hot" }), "temperature"),
        (json!({ "stream": "yes" }), "stream"),
        (json!({ "messages": "hi" }), "messages"),
        (json!({ "messages": [{ "role": 7, "content": "x" }] }), "messages[0].role"),
        (json!({ "stream_options": { "include_usage": true } }), "stream_options"),
        (json!({ "top_k": 2.5 }), "top_k"),
    ] {
        let (status, text) = api.call("POST", "/v1/chat/completions", Some(&chat(extra.clone())), key).await;
        assert_eq!(status, 400, "{extra}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{extra}: {text}");
    }
    let (status, text) = api.call("GET", "/v1/chat/completions", None, key).await;
    assert_eq!(status, 405, "{text}");
    // Still serving.
    let (status, text) = api.call("POST", "/v1/chat/completions", Some(&chat(json!({}))), key).await;
    assert_eq!(status, 200, "{text}");
}

/// `offramp-edge serve --http-listen` as a process: it prints where it
/// listens, answers, and refuses a classifier bundle by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serve_command_serves_the_http_api_for_a_decoder() {
    let dir = tmp("http-cli");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = CloudProcess::start(&cloud3, &[]);
    let mut server = std::process::Command::new(edge_binary())
        .args(["serve", "--model", edge3.to_str().unwrap(), "--split", "3", "--cloud", &cloud.url()])
        .args(["--http-listen", "127.0.0.1:0", "--mode", "speculative", "--max-tokens", "6"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = server.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"), "{line}");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(format!("{base}/completions"))
        .body(Full::new(Bytes::from(json!({ "prompt": "the answer is" }).to_string())))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 6, "the server's default max_tokens: {v}");
    assert_eq!(v["offramp"]["summary"]["mode"], "speculative");
    let _ = server.kill();
    let _ = server.wait();
    // A classifier bundle is not a decoder.
    let out = std::process::Command::new(edge_binary())
        .args(["serve", "--model", default_model().to_str().unwrap(), "--http-listen"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("serves the HTTP API of a decoder"), "{err}");
}
