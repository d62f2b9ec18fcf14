//! Structured output, logit bias and log-probabilities across the split
//! (issue 29): a grammar's mask, a bias and the reported log-probabilities
//! are the same whichever side chooses a token, so every mode gives the
//! same tokens for a seed and every answer follows its schema; and the
//! OpenAI bodies that ask for them (`response_format`, forced tool calls,
//! `logprobs`, `logit_bias`) answered the way the SDK parses them.

use offramp_common::decoder::logits::LogitBias;
use offramp_common::decoder::sample::Sampling;
use offramp_common::decoder::tiny::TinySpec;
use offramp_edge::generate::grammar::Constraint;
use offramp_edge::generate::{DecoderEdge, Finish, GenOptions, Generated, Mode};
use serde_json::{json, Value};

use crate::openai_clients::{events, fixture, Api};
use crate::support::*;

/// The mood schema of `openai_sdk_parse.json`: an enum and a boolean, so
/// that even a random model finishes it in a few tokens.
fn mood_schema() -> Value {
    fixture("openai_sdk_parse.json")["response_format"]["json_schema"]["schema"].clone()
}

fn check_mood(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?} is not JSON: {e}"));
    assert!(["happy", "sad", "neutral"].contains(&v["mood"].as_str().unwrap_or("")), "{text}");
    assert!(v["certain"].is_boolean(), "{text}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{text}");
}

/// Edges in every mode that reaches the cloud, and one that runs alone.
struct Modes {
    _cloud: offramp_cloud::CloudHandle,
    edges: Vec<(&'static str, DecoderEdge)>,
}

async fn modes(dir: &std::path::Path) -> Modes {
    // Layers that move the state: the exits disagree with the whole model
    // often, so drafts get rejected and the grammar rolls back.
    let whole = tiny_decoder_with(dir, TinySpec { layer_scale: 3.0, ..Default::default() });
    let cloud =
        offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![whole.clone()])).await.unwrap();
    let (edge3, _) = split_decoder(&whole, 3);
    let (edge0, _) = split_decoder(&whole, 0);
    let edges = vec![
        ("all-edge", decoder_edge(&whole, Mode::AllEdge, 6, vec![], |_| {})),
        ("split", decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {})),
        ("all-cloud", decoder_edge(&edge0, Mode::AllCloud, 0, vec![cloud.url()], |_| {})),
        ("speculative", decoder_edge(&edge3, Mode::Speculative, 3, vec![cloud.url()], |c| c.draft = 4)),
    ];
    Modes { _cloud: cloud, edges }
}

impl Modes {
    /// Each mode's generation; all must give the same tokens (speculative
    /// sampling only the same distribution: its chi-square test is in
    /// common/src/decoder/speculative.rs; greedy, the same tokens).
    async fn same(&self, prompt: &[u32], opts: &GenOptions) -> Vec<(&'static str, Generated)> {
        let mut out: Vec<(&'static str, Generated)> = Vec::new();
        for (name, edge) in &self.edges {
            let g = edge.generate(prompt, opts, |_| {}).await.unwrap_or_else(|e| panic!("{name}: {e}"));
            let exact = *name != "speculative" || opts.sampling == Sampling::Greedy;
            if let (Some((first, reference)), true) = (out.first(), exact) {
                let s = &g.summary;
                assert_eq!(
                    g.tokens, reference.tokens,
                    "{name} against {first}: {:?} vs {:?} ({} edge, {} cloud, {} fallback tokens)",
                    g.text, reference.text, s.edge_tokens, s.cloud_tokens, s.fallback_tokens
                );
            }
            out.push((name, g));
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_constrained_output_parses_and_is_the_same_in_every_mode() {
    let dir = tmp("structured-modes");
    let m = modes(&dir).await;
    let tok = m.edges[0].1.tokenizer().clone();
    let constraint = Some(Constraint::JsonSchema(mood_schema()));
    for (p, prompt) in DECODER_PROMPTS.iter().enumerate() {
        let ids = tok.encode(prompt).unwrap();
        for sampling in [Sampling::Greedy, Sampling::Temperature(1.5)] {
            let opts = GenOptions {
                max_tokens: 64,
                sampling,
                seed: 11 + p as u64,
                constraint: constraint.clone(),
                ..Default::default()
            };
            for (name, g) in m.same(&ids, &opts).await {
                assert_eq!(g.finish, Finish::Stop, "{name} {sampling:?}: {:?}", g.text);
                check_mood(&g.text);
            }
        }
    }
    // Without the grammar the same model writes no JSON.
    let free = m.edges[1].1.generate(&tok.encode(DECODER_PROMPTS[0]).unwrap(), &greedy(24), |_| {}).await.unwrap();
    assert!(serde_json::from_str::<Value>(&free.text).is_err(), "{:?}", free.text);
    // Free strings: drafts the whole model rejects, the grammar rolled back
    // with the caches, and still the whole model's tokens.
    let joke = fixture("langchain_structured_output.json")["response_format"]["json_schema"]["schema"].clone();
    let opts = GenOptions { max_tokens: 40, constraint: Some(Constraint::JsonSchema(joke)), ..Default::default() };
    let mut rejected = 0;
    for prompt in DECODER_PROMPTS {
        let runs = m.same(&tok.encode(prompt).unwrap(), &opts).await;
        let s = &runs[3].1.summary;
        rejected += s.drafts_verified.unwrap()
            - (s.drafts_verified.unwrap() as f64 * s.acceptance_rate.unwrap()).round() as usize;
        assert!(runs[3].1.text.starts_with("{\"setup\": \""), "{:?}", runs[3].1.text);
    }
    assert!(rejected > 0, "no draft was rejected: the rollback went untested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logit_bias_and_log_probabilities_are_the_same_through_the_split() {
    let dir = tmp("structured-bias");
    let m = modes(&dir).await;
    let tok = m.edges[0].1.tokenizer().clone();
    let vocab = m.edges[0].1.bundle().config().vocab;
    let ids = tok.encode(DECODER_PROMPTS[0]).unwrap();
    let plain = m.same(&ids, &greedy(16)).await.remove(0).1;
    // Ban the tokens the model chose first: none of them appears, in any mode.
    let banned: Vec<u32> = plain.tokens.iter().take(3).copied().collect();
    let bias = LogitBias::new(banned.iter().map(|&t| (t, -100.0)).collect(), vocab).unwrap();
    for sampling in [Sampling::Greedy, Sampling::Temperature(1.2)] {
        let opts = GenOptions { logit_bias: bias.clone(), sampling, seed: 4, ..greedy(16) };
        for (name, g) in m.same(&ids, &opts).await {
            assert!(g.tokens.iter().all(|t| !banned.contains(t)), "{name}: {banned:?} in {:?}", g.tokens);
        }
    }
    // Log-probabilities: from the whole model wherever it chose the token
    // (all-edge computes them itself, the others get them from the cloud).
    let opts = GenOptions { logprobs: Some(3), ..greedy(12) };
    let runs = m.same(&ids, &opts).await;
    let reference = &runs[0].1;
    for (name, g) in &runs {
        for (e, r) in g.events.iter().zip(&reference.events) {
            let (l, rl) = (e.logprobs.as_ref().unwrap(), r.logprobs.as_ref().unwrap());
            assert!(l.logprob <= 0.0 && (l.logprob - rl.logprob).abs() < 1e-3, "{name}: {l:?} vs {rl:?}");
            assert_eq!(l.top.len(), 3, "{name}");
            assert_eq!(l.top[0].0, e.token, "{name}: greedy picks the most likely");
            assert!(l.top.windows(2).all(|w| w[0].1 >= w[1].1), "{name}: {l:?}");
        }
    }
}

/// The API answers as the SDK parses it: a schema's JSON in `content`, a
/// forced call in `tool_calls` (streamed or not), log-probabilities in
/// `logprobs.content`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_bodies_of_real_clients_are_answered_as_they_parse_them() {
    let dir = tmp("structured-api");
    let whole = tiny_decoder_with(&dir, TinySpec { layer_scale: 3.0, ..Default::default() });
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let api = Api::start(decoder_edge(&edge3, Mode::Speculative, 3, vec![cloud.url()], |_| {})).await;
    let chat = async |body: Value| -> Value {
        let (status, text) = api.call("POST", "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    };
    // The SDK's .parse(): the message content is the schema's JSON.
    let v = chat(fixture("openai_sdk_parse.json")).await;
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    check_mood(v["choices"][0]["message"]["content"].as_str().unwrap());
    // LangChain's with_structured_output with free strings: JSON that
    // parses with its fields, unless the answer ran out of tokens.
    let mut free = fixture("langchain_structured_output.json");
    free["max_tokens"] = json!(300);
    let v = chat(free).await;
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    match v["choices"][0]["finish_reason"].as_str().unwrap() {
        "stop" => {
            let joke: Value = serde_json::from_str(content).unwrap();
            assert!(joke["setup"].is_string() && joke["punchline"].is_string(), "{joke}");
        }
        "length" => assert!(content.starts_with("{\"setup\": \""), "{content}"),
        other => panic!("finish_reason {other}"),
    }
    // LangChain bind_tools(tool_choice="any"): a call, its arguments valid.
    let v = chat(fixture("langchain_tool_choice_any.json")).await;
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null, "{v}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!((call["type"].as_str(), call["function"]["name"].as_str()), (Some("function"), Some("get_weather")));
    assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(["Paris", "Oslo", "Lima"].contains(&args["city"].as_str().unwrap()), "{args}");
    assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()), "{args}");
    // Streamed, named, after a tool turn: the call arrives in a delta, the
    // stream ends with finish_reason tool_calls, then the usage chunk.
    let (status, text) =
        api.call("POST", "/v1/chat/completions", &fixture("openai_sdk_tool_named_stream.json").to_string()).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, done) = events(&text);
    assert!(done);
    let calls: Vec<&Value> = chunks.iter().filter_map(|c| c["choices"][0]["delta"].get("tool_calls")).collect();
    assert_eq!(calls.len(), 1, "{text}");
    let call = &calls[0][0];
    assert_eq!((call["index"].as_u64(), call["function"]["name"].as_str()), (Some(0), Some("weather")));
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(["Oslo", "Lima"].contains(&args["city"].as_str().unwrap()), "{args}");
    let finishes: Vec<&str> = chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str()).collect();
    assert_eq!(finishes, ["tool_calls"]);
    assert_eq!(chunks.last().unwrap()["choices"], json!([]), "the usage chunk last");
    // json_object with logprobs and a logit bias.
    let v = chat(fixture("openai_sdk_json_object_logprobs.json")).await;
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap(), "{v}");
    for c in content {
        assert!(c["logprob"].as_f64().unwrap() <= 0.0 && c["bytes"].is_array(), "{c}");
        assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 3, "{c}");
    }
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().starts_with('{'), "{v}");
    // What cannot be honoured is refused naming the parameter.
    for (body, param) in [
        (
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999": 5}}), "logit_bias"),
        (json!({"messages": [{"role": "user", "content": "x"}], "logit_bias": {"a": 5}}), "logit_bias"),
        (json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}), "top_logprobs"),
        (json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}), "top_logprobs"),
        (json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}), "tool_choice"),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"type": "frobnicate"}}}}),
            "response_format",
        ),
    ] {
        let (status, text) = api.call("POST", "/v1/chat/completions", &body.to_string()).await;
        assert_eq!(status, 400, "{body}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{text}");
    }
}
