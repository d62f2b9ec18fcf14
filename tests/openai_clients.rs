//! What real OpenAI clients send (issue 29): the request bodies of the
//! OpenAI SDK, Open WebUI, Continue, LangChain, LlamaIndex and the LM
//! evaluation harness (`tests/fixtures/openai/`, see its README) against a
//! real edge and cloud, each answer checked the way the client parses it;
//! stop sequences across token boundaries, streamed or not; sampling
//! truncation (`top_k`, `top_p`, `min_p`) giving the same tokens through
//! the split as through the whole model; `/health` and `/v1/models/{id}`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use offramp_common::decoder::sample::{Sampling, Truncation};
use offramp_common::decoder::DecoderBundle;
use offramp_edge::generate::{DecoderEdge, GenOptions, Mode};
use offramp_edge::http::{HttpDefaults, HttpState};
use serde_json::{json, Value};

use crate::support::*;

pub(crate) struct Api {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Api {
    pub(crate) async fn start(edge: DecoderEdge) -> Self {
        let listener = tokio::net::TcpListener::bind(ANY_LOOPBACK).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = HttpState::new(edge, HttpDefaults::default());
        tokio::spawn(async move { offramp_edge::http::serve(listener, state, std::future::pending()).await.unwrap() });
        Self { base, client: Client::builder(TokioExecutor::new()).build_http() }
    }

    pub(crate) async fn call(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }
}

/// The events of a server-sent-event stream, parsed, and whether it ended
/// with `[DONE]`.
pub(crate) fn events(text: &str) -> (Vec<Value>, bool) {
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    let done = data.last() == Some(&"[DONE]");
    let parsed = data.iter().filter(|d| **d != "[DONE]").map(|d| serde_json::from_str(d).unwrap()).collect();
    (parsed, done)
}

/// A streamed answer as an OpenAI client assembles it: the text, the
/// finish reason, and the usage chunk when one came.
fn assemble(chunks: &[Value], chat: bool) -> (String, String, Option<Value>) {
    let mut text = String::new();
    let mut finish = String::new();
    let mut usage = None;
    for c in chunks {
        assert_eq!(c["object"], if chat { "chat.completion.chunk" } else { "text_completion" }, "{c}");
        let choices = c["choices"].as_array().unwrap_or_else(|| panic!("choices is a list: {c}"));
        if choices.is_empty() {
            usage = Some(c["usage"].clone());
            continue;
        }
        let piece = if chat { &choices[0]["delta"]["content"] } else { &choices[0]["text"] };
        text.push_str(piece.as_str().unwrap_or(""));
        if let Some(f) = choices[0]["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    (text, finish, usage)
}

pub(crate) fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/openai/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn usage_ok(u: &Value) {
    let (p, c, t) = (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64(), u["total_tokens"].as_u64());
    assert!(p.unwrap() > 0 && c.unwrap() > 0 && t == Some(p.unwrap() + c.unwrap()), "{u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bodies_popular_clients_send_are_answered_as_they_parse_them() {
    let dir = tmp("openai-clients");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let api = Api::start(decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {})).await;
    let context = DecoderBundle::open(&whole).unwrap().config().context as u64;
    for name in [
        "openai_sdk_chat.json",
        "openai_sdk_stream_usage.json",
        "openwebui_chat.json",
        "continue_chat.json",
        "langchain_stream_usage.json",
        "langchain_max_completion_tokens.json",
        "langchain_bind_tools.json",
        "llamaindex_openailike.json",
        "lm_eval_generate_until.json",
        "content_parts.json",
    ] {
        let body = fixture(name);
        let chat = body.get("messages").is_some();
        let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        let (status, text) = api.call("POST", path, &body.to_string()).await;
        assert_eq!(status, 200, "{name}: {text}");
        let stops: Vec<String> = match &body["stop"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
            _ => vec![],
        };
        let (answer, finish, usage) = if body["stream"] == true {
            let (chunks, done) = events(&text);
            assert!(done, "{name}: the stream ends with [DONE]");
            let (answer, finish, usage) = assemble(&chunks, chat);
            let wants_usage = body["stream_options"]["include_usage"] == true;
            assert_eq!(usage.is_some(), wants_usage, "{name}: a usage chunk exactly when asked for");
            if wants_usage {
                // The usage chunk is the last one, with no choices.
                assert_eq!(chunks.last().unwrap()["choices"], json!([]), "{name}");
            }
            (answer, finish, usage)
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["object"], if chat { "chat.completion" } else { "text_completion" });
            let answer = if chat { &v["choices"][0]["message"]["content"] } else { &v["choices"][0]["text"] };
            assert_eq!(v["choices"][0]["message"]["tool_calls"], Value::Null, "{name}: no tool calls");
            if name == "langchain_bind_tools.json" {
                assert_eq!(v["offramp"]["ignored"], json!(["tools"]), "{name}: tools answered in text, said so");
            }
            if name == "content_parts.json" {
                assert_eq!(v["offramp"]["ignored"], json!(["user"]), "{name}");
            }
            (
                answer.as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].as_str().unwrap().into(),
                Some(v["usage"].clone()),
            )
        };
        assert!(finish == "stop" || finish == "length", "{name}: finish_reason {finish}");
        for s in &stops {
            assert!(!answer.contains(s.as_str()), "{name}: the answer runs past stop {s:?}: {answer:?}");
        }
        if let Some(u) = &usage {
            usage_ok(u);
            // Continue's max_tokens 4096 is capped at what the context holds.
            assert!(u["total_tokens"].as_u64().unwrap() <= context, "{name}: {u}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_cuts_the_whole_models_text_streamed_or_not() {
    let dir = tmp("openai-stop");
    let whole = tiny_decoder(&dir);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let model = whole_model(&whole);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let api = Api::start(decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {})).await;
    let prompt = DECODER_PROMPTS[1];
    let ids = tok.encode(prompt).unwrap();
    let reference = tok.decode(&model.generate_greedy(&ids, 40, |t| tok.is_stop(t)).unwrap()).unwrap();
    // A stop that spans tokens: three characters from the middle of the text.
    let chars: Vec<char> = reference.chars().collect();
    assert!(chars.len() > 12, "{reference:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = &reference[..reference.find(&stop).unwrap()];
    for stream in [false, true] {
        let body = json!({ "prompt": prompt, "max_tokens": 40, "stop": [stop.clone()], "stream": stream });
        let (status, text) = api.call("POST", "/v1/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        let (answer, finish) = if stream {
            let (chunks, _) = events(&text);
            let (a, f, _) = assemble(&chunks, false);
            (a, f)
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            (
                v["choices"][0]["text"].as_str().unwrap().to_string(),
                v["choices"][0]["finish_reason"].as_str().unwrap().into(),
            )
        };
        assert_eq!(answer, cut, "stream {stream}: stop {stop:?} in {reference:?}");
        assert_eq!(finish, "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_sampling_gives_the_same_tokens_through_the_split_as_the_whole_model() {
    let dir = tmp("openai-truncation");
    // Layers that move the state: distributions with more than one likely token.
    let whole =
        tiny_decoder_with(&dir, offramp_common::decoder::tiny::TinySpec { layer_scale: 3.0, ..Default::default() });
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let cloud =
        offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![whole.clone()])).await.unwrap();
    let (edge3, _) = split_decoder(&whole, 3);
    let (edge0, _) = split_decoder(&whole, 0);
    let split = decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {});
    let all_cloud = decoder_edge(&edge0, Mode::AllCloud, 0, vec![cloud.url()], |_| {});
    let all_edge = decoder_edge(&whole, Mode::AllEdge, 6, vec![], |_| {});
    let ids = tok.encode(DECODER_PROMPTS[0]).unwrap();
    for truncation in [
        Truncation { top_k: 3, ..Default::default() },
        Truncation { top_p: 0.6, ..Default::default() },
        Truncation { min_p: 0.2, ..Default::default() },
        Truncation { top_k: 5, top_p: 0.9, min_p: 0.05 },
    ] {
        let opts = GenOptions { sampling: Sampling::Temperature(2.0), truncation, seed: 5, ..greedy(24) };
        let a = split.generate(&ids, &opts, |_| {}).await.unwrap();
        let b = all_cloud.generate(&ids, &opts, |_| {}).await.unwrap();
        let c = all_edge.generate(&ids, &opts, |_| {}).await.unwrap();
        assert_eq!(a.tokens, b.tokens, "{truncation:?}");
        assert_eq!(a.tokens, c.tokens, "{truncation:?}");
        let untruncated = split
            .generate(&ids, &GenOptions { truncation: Truncation::default(), ..opts.clone() }, |_| {})
            .await
            .unwrap();
        assert_ne!(a.tokens, untruncated.tokens, "{truncation:?} changes what is sampled");
    }
    // Speculative sampling verifies against the truncated distribution: with
    // top_k 1 it is a point mass on the whole model's argmax, so the output
    // is exactly its greedy decode, drafts from any exit notwithstanding.
    let speculative = decoder_edge(&edge3, Mode::Speculative, 3, vec![cloud.url()], |_| {});
    let reference = whole_model(&whole).generate_greedy(&ids, 24, |_| false).unwrap();
    let opts = GenOptions {
        sampling: Sampling::Temperature(2.0),
        truncation: Truncation { top_k: 1, ..Default::default() },
        ..greedy(24)
    };
    let g = speculative.generate(&ids, &opts, |_| {}).await.unwrap();
    assert_eq!(g.tokens, reference);
    assert!(g.summary.drafts_verified.unwrap() > 0, "{:?}", g.summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_the_model_object() {
    let dir = tmp("openai-health");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let url = cloud.url();
    let api = Api::start(decoder_edge(&edge3, Mode::Split, 3, vec![url], |_| {})).await;
    assert_eq!(api.call("GET", "/health", "").await, (200, json!({ "status": "ok" }).to_string()));
    let (status, text) = api.call("GET", "/v1/models/tiny-llama", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["id"], "tiny-llama");
    let (status, text) = api.call("GET", "/v1/models/gpt-4", "").await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("model_not_found"), "{text}");
    // llama-server's tokenizer endpoints, round trip.
    let (status, text) = api.call("POST", "/tokenize", r#"{"content": "the answer is"}"#).await;
    assert_eq!(status, 200, "{text}");
    let tokens = serde_json::from_str::<Value>(&text).unwrap()["tokens"].clone();
    assert!(tokens.as_array().is_some_and(|t| !t.is_empty()), "{text}");
    let (status, text) = api.call("POST", "/detokenize", &json!({ "tokens": tokens }).to_string()).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&text).unwrap()["content"].clone()),
        (200, json!("the answer is"))
    );
    let (status, text) = api.call("POST", "/detokenize", r#"{"tokens": [1, "x"]}"#).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["param"], "tokens");
    cloud.stop().await.unwrap();
    let (status, text) = api.call("GET", "/health", "").await;
    assert_eq!(status, 503, "no cloud for a split edge: {text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["status"], "unavailable");
    let alone = Api::start(decoder_edge(&whole, Mode::AllEdge, 6, vec![], |_| {})).await;
    assert_eq!(alone.call("GET", "/health", "").await.0, 200, "all-edge needs no cloud");
}

/// `VmRSS` (KiB) and `Threads` of a process, from /proc.
fn rss_and_threads(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("Threads:"))
}

/// The edge holds its limits: 100 streaming clients that go away after the
/// first event and 10 prompts far past the context leave its memory and
/// threads where they were (measured on a real process; the figures are
/// printed for the record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_streams_and_oversized_prompts_leave_memory_and_threads_flat() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tmp("openai-limits");
    let whole = tiny_decoder(&dir);
    let mut child = std::process::Command::new(edge_binary())
        .args(["serve", "--model", whole.to_str().unwrap(), "--mode", "all-edge", "--http-listen", ANY_LOOPBACK])
        .args(["--http-concurrency", "2", "--max-tokens", "200"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap()).lines().next().unwrap().unwrap();
    /// Kills the edge however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Killed(child);
    let addr: std::net::SocketAddr = line
        .rsplit("http://")
        .next()
        .unwrap()
        .trim_end_matches("/v1")
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"));
    let pid = child.0.id();
    let post = move |body: String, read_all: bool| -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut buf = vec![0u8; 4096];
        if read_all {
            let mut out = String::new();
            let _ = s.take(1 << 20).read_to_string(&mut out);
            out
        } else {
            // The first event, then gone.
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    let stream = json!({ "prompt": "the answer is", "max_tokens": 200, "stream": true }).to_string();
    // 1.5 MB: under the body limit, far past what the context can hold.
    let oversized = json!({ "prompt": "x".repeat(1536 << 10), "max_tokens": 4 }).to_string();
    let burst = move |streams: usize, prompts: usize| {
        let (stream, oversized) = (stream.clone(), oversized.clone());
        tokio::task::spawn_blocking(move || {
            for _ in 0..streams {
                let answer = post(stream.clone(), false);
                assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            }
            for _ in 0..prompts {
                let answer = post(oversized.clone(), true);
                let head = &answer[..200.min(answer.len())];
                assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("cannot fit"), "{head}");
            }
        })
    };
    // Warm up (allocator arenas, the tokenizer, one of each request), so
    // that what follows measures growth across bursts, not first use.
    burst(10, 2).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (rss0, threads0) = rss_and_threads(pid);
    burst(100, 10).await.unwrap();
    // Aborted generations stop at their next token; give them a moment.
    let settled = async || {
        eventually("threads back to the idle count", patience(std::time::Duration::from_secs(20)), async || {
            let (rss, threads) = rss_and_threads(pid);
            anyhow::ensure!(threads <= threads0, "{threads} threads, {threads0} at idle");
            Ok((rss, threads))
        })
        .await
    };
    let (rss1, threads1) = settled().await;
    // A second burst: what stays is the allocator's high-water mark, not a
    // leak, if it does not grow again.
    burst(100, 10).await.unwrap();
    let (rss2, threads2) = settled().await;
    println!(
        "edge RSS {rss0} KiB idle, {rss1} KiB after 100 aborted streams + 10 oversized prompts, {rss2} KiB after \
         another such burst; threads {threads0} -> {threads1} -> {threads2}"
    );
    // The issue's tolerance (a leak per burst was 77-107 MiB before).
    assert!(rss2 <= rss1 + 20 * 1024, "RSS grew burst over burst: {rss1} -> {rss2} KiB");
    assert!(rss1 <= rss0 + 20 * 1024, "RSS grew from {rss0} to {rss1} KiB");
}
