//! Writes the seed inputs of the fuzz targets into `fuzz/seeds/<target>/`,
//! built with the project's own encoders so each one is valid:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds
//!
//! (`fuzz.sh` copies them into `fuzz/corpus/<target>/` before a run.)

use std::path::Path;

use bytes::BytesMut;
use offramp_common::codec;
use offramp_common::policy::{Policy, Rule};
use offramp_proto::{self as pb, Compression, Encoding, ExitRuleSpec, InferRequest};
use offramp_transport::frame::{self, Kind};
use pb::generate_request::Msg;
use prost::Message;
use serde_json::json;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn cat(head: &[u8], tail: &[u8]) -> Vec<u8> {
    [head, tail].concat()
}

fn main() {
    let values: Vec<f32> = vec![0.0, 1.5, -2.25, 0.0, 0.0, 0.0, 3.0, 0.125];
    let mut lz4 = codec::encode(&[0.0; 32], &[2, 16], Encoding::F32);
    codec::compress(&mut lz4, Compression::Lz4);
    assert_eq!(lz4.compression, Compression::Lz4 as i32);
    let tensors = [
        ("f32", codec::encode(&values, &[2, 4], Encoding::F32)),
        ("f16", codec::encode(&values, &[8], Encoding::F16)),
        ("bf16", codec::encode(&values, &[2, 2, 2], Encoding::Bf16)),
        ("int8", codec::encode(&values, &[2, 4], Encoding::Int8)),
        ("lz4", lz4),
    ];

    // codec: mode 0 (wire), 1 (LZ4 packed), 2 (round trip).
    for (name, t) in &tensors {
        write("codec", &format!("wire-{name}"), &cat(&[0, 0], &t.encode_to_vec()));
    }
    write("codec", "pack-int8", &cat(&[1, 0], &tensors[3].1.encode_to_vec()));
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    for (e, name) in ["f32", "f16", "bf16", "int8"].iter().enumerate() {
        write("codec", &format!("round-{name}"), &cat(&[2, 0, e as u8, 1, e as u8 & 1], &raw));
    }

    // frame: a limit (u16 LE), then frames.
    let policy =
        Policy::from_rules(vec![Rule::MaxProb { threshold: 0.9 }, Rule::Patience { patience: 2 }, Rule::Never])
            .unwrap();
    let req = InferRequest {
        request_id: 7,
        model_id: "b-lenet-mnist".into(),
        split: 1,
        hidden: Some(tensors[3].1.clone()),
        history: Some(pb::ExitHistory { exits: vec![pb::ExitObservation { exit: 0, prediction: 3, confidence: 0.4 }] }),
        want_probabilities: true,
        policy: policy.to_wire(&[1, 2]),
        ..Default::default()
    };
    let mut buf = BytesMut::new();
    frame::put_raw(&mut buf, Kind::Auth, b"secret-token");
    frame::put_message(&mut buf, Kind::InferRequest, &req);
    write("frame", "auth-infer", &cat(&[0xFF, 0xFF], &buf));
    let mut lz4_req = req.clone();
    lz4_req.hidden = Some(tensors[4].1.clone());
    write("frame", "infer-lz4", &cat(&4096u16.to_le_bytes(), &frame::message(Kind::InferRequest, &lz4_req)));
    write("frame", "model-info", &cat(&[0, 1], &frame::message(Kind::ModelInfoRequest, &pb::ModelInfoRequest {})));
    write("frame", "error", &cat(&[0, 1], &frame::error(3, "bad tensor")));
    write("frame", "truncated", &cat(&[0xFF, 0xFF], &frame::message(Kind::InferRequest, &req)[..20]));

    // policy: mode 0 (file text), mode 1/3 (wire rules in a request).
    write("policy", "file-bundle", &cat(&[0, 2], include_bytes!("../../models/b-lenet-mnist/policy.toml")));
    write("policy", "file-all", &cat(&[0, 4], policy_text().as_bytes()));
    let wire = InferRequest { policy: policy.to_wire(&[1, 2]), history: req.history.clone(), ..Default::default() };
    write("policy", "wire", &cat(&[1, 3, 1], &wire.encode_to_vec()));
    let odd = InferRequest {
        policy: vec![
            ExitRuleSpec { exit: 2, rule: "entropy".into(), threshold: 0.2, patience: 0 },
            ExitRuleSpec { exit: 3, rule: "margin".into(), threshold: 0.3, patience: 0 },
        ],
        ..Default::default()
    };
    write("policy", "wire-base", &cat(&[3, 4, 2], &odd.encode_to_vec()));

    // request: the steering byte (bit 0 model, bit 2 fingerprint, bit 3
    // probabilities), then the request. The tiny CNN at split 1 ([4, 14, 14]
    // after conv1) and split 3 ([392] after flatten); the tiny encoder at
    // split 1 ([T, 16]) and split 0 (token ids).
    let cnn_at = |split: u32, values: &[f32], shape: &[usize]| InferRequest {
        split,
        hidden: Some(codec::encode(values, shape, Encoding::F32)),
        ..Default::default()
    };
    write("request", "cnn-k1", &cat(&[0b1100], &cnn_at(1, &[0.5; 4 * 14 * 14], &[4, 14, 14]).encode_to_vec()));
    let mut int8 = cnn_at(3, &[0.25; 392], &[392]);
    int8.hidden = Some(codec::encode(&[0.25; 392], &[392], Encoding::Int8));
    int8.history = req.history.clone();
    write("request", "cnn-k3-int8-history", &cat(&[0b0100], &int8.encode_to_vec()));
    write("request", "enc-k1", &cat(&[0b1101], &cnn_at(1, &[0.1; 5 * 16], &[5, 16]).encode_to_vec()));
    write("request", "enc-ids", &cat(&[0b0101], &cnn_at(0, &[3.0, 17.0, 42.0], &[3]).encode_to_vec()));
    write(
        "request",
        "enc-policy",
        &cat(
            &[0b1101],
            &InferRequest { policy: wire.policy.clone(), ..cnn_at(1, &[0.1; 16], &[1, 16]) }.encode_to_vec(),
        ),
    );

    // text: mode 0 text, mode 1 little-endian f32 token ids.
    write("text", "sentence", &cat(&[0], b"what a great film , not bad at all !"));
    write("text", "unicode", &cat(&[0], "caf\u{e9} \u{1F600} na\u{ef}ve ?".as_bytes()));
    let ids: Vec<u8> = [2.0f32, 9.0, 14.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    write("text", "ids", &cat(&[1], &ids));

    // openai_body: the steering byte (bit 0: completions, else chat), then
    // the body as the OpenAI clients send it.
    let chat = |body: serde_json::Value| cat(&[0], body.to_string().as_bytes());
    let completion = |body: serde_json::Value| cat(&[1], body.to_string().as_bytes());
    let messages = json!([
        { "role": "system", "content": "be brief" },
        { "role": "user", "content": "what is the answer ?" },
    ]);
    write("openai_body", "chat", &chat(json!({ "model": "tiny-llama", "messages": messages, "max_tokens": 8 })));
    write(
        "openai_body",
        "chat-stream-usage-stop",
        &chat(json!({
            "messages": messages, "stream": true, "stream_options": { "include_usage": true },
            "stop": ["\n", "the"], "seed": 42, "temperature": 0.7, "top_p": 0.9, "max_completion_tokens": 6,
        })),
    );
    write(
        "openai_body",
        "chat-parts-tools",
        &chat(json!({
            "messages": [{ "role": "developer", "content": [{ "type": "text", "text": "hi" }] },
                         { "role": "user", "content": [{ "type": "text", "text": "the weather ?" }] }],
            "tools": [{ "type": "function", "function": { "name": "weather", "parameters": { "type": "object" } } }],
            "tool_choice": "auto", "response_format": { "type": "text" }, "n": 1, "logprobs": false,
            "frequency_penalty": 0.5, "user": "u-1", "max_tokens": 4,
        })),
    );
    write(
        "openai_body",
        "chat-offramp-fields",
        &chat(
            json!({ "messages": messages, "mode": "all-edge", "draft": 3, "deadline_ms": 50, "top_k": 5, "min_p": 0.1 }),
        ),
    );
    write("openai_body", "completion", &completion(json!({ "prompt": "in 1999 there were", "max_tokens": 8 })));
    write(
        "openai_body",
        "completion-ids-echo-stream",
        &completion(json!({ "prompt": [[104, 101, 108, 108, 111]], "echo": true, "stream": true, "max_tokens": 4 })),
    );
    // A long conversation (past the tiny model's context of 64 tokens; it
    // also lets libFuzzer's length guess reach bodies of a few KB).
    let history: Vec<serde_json::Value> = (0..24)
        .map(|i| {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            json!({ "role": role, "content": format!("turn {i}: in 1999 there were 42 cats on the roof, and then some more came") })
        })
        .collect();
    write("openai_body", "chat-long-history", &chat(json!({ "messages": history, "max_tokens": 16 })));
    write("openai_body", "not-json", &cat(&[0], b"{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}"));

    // generate_session: the steering byte (bit 0: the cloud's fingerprint
    // in every open, bit 1: the stream ends with a transport error), then
    // length-delimited messages. The tiny decoder is 64 wide; its cloud
    // side serves split 3.
    let width = offramp_common::decoder::tiny::TinySpec::default().hidden;
    let open = |max_positions: u32| pb::GenerateRequest {
        msg: Some(Msg::Open(pb::OpenSession { split: 3, max_positions, edge_id: "fuzz".into(), ..Default::default() })),
    };
    let step = |id: u64, position: u32, rows: usize, want: pb::Want, encoding: Encoding| pb::DecodeStep {
        request_id: id,
        position,
        hidden: Some(codec::encode(&vec![0.25; rows * width], &[rows, width], encoding)),
        want: want as i32,
        ..Default::default()
    };
    let msg = |s: pb::DecodeStep| pb::GenerateRequest { msg: Some(Msg::Step(s)) };
    let stream = |steer: u8, msgs: &[pb::GenerateRequest]| {
        let mut out = vec![steer];
        for m in msgs {
            m.encode_length_delimited(&mut out).unwrap();
        }
        out
    };
    let prompt = step(1, 0, 3, pb::Want::Argmax, Encoding::F32);
    write(
        "generate_session",
        "argmax",
        &stream(1, &[open(16), msg(prompt.clone()), msg(step(2, 3, 1, pb::Want::Argmax, Encoding::F16))]),
    );
    let sampled = pb::DecodeStep {
        temperature: 0.8,
        uniform: 0.3,
        top_k: 5,
        top_p: 0.9,
        min_p: 0.05,
        ..step(2, 3, 1, pb::Want::Sample, Encoding::F32)
    };
    write(
        "generate_session",
        "sample-truncated",
        &stream(1, &[open(0), msg(step(1, 0, 3, pb::Want::None, Encoding::F32)), msg(sampled)]),
    );
    let verify = pb::DecodeStep {
        drafts: vec![pb::Draft { token: 7, ..Default::default() }, pb::Draft { token: 9, ..Default::default() }],
        ..step(2, 3, 2, pb::Want::Verify, Encoding::F32)
    };
    let draft = |token: u32| pb::Draft {
        token,
        q_tokens: vec![token, 4],
        q_probs: vec![0.75, 0.25],
        accept_uniform: 0.5,
        residual_uniform: 0.5,
        mask: Some(pb::TokenMask { allow: false, deltas: vec![1, 1] }),
    };
    let speculative = pb::DecodeStep {
        drafts: vec![draft(5), draft(6)],
        temperature: 0.9,
        speculative: true,
        ..step(3, 5, 2, pb::Want::Verify, Encoding::F32)
    };
    write(
        "generate_session",
        "verify-speculative",
        &stream(1, &[open(32), msg(prompt.clone()), msg(verify), msg(speculative)]),
    );
    // Constrained decoding: a grammar's mask on a token step, a logit
    // bias, log-probabilities.
    let constrained = pb::DecodeStep {
        mask: Some(pb::TokenMask { allow: true, deltas: vec![5, 2, 1] }),
        bias_tokens: vec![5, 9],
        bias_values: vec![-100.0, 2.5],
        logprobs: true,
        top_logprobs: 3,
        ..step(2, 3, 1, pb::Want::Argmax, Encoding::F32)
    };
    write("generate_session", "masked-biased-logprobs", &stream(1, &[open(16), msg(prompt.clone()), msg(constrained)]));
    write("generate_session", "no-open-broken", &stream(2, &[msg(prompt.clone()), open(8)]));
    write("generate_session", "wrong-fingerprint", &stream(0, &[open(8), msg(prompt)]));
    // manifest: the shipped model's manifest.json.
    write("manifest", "b-lenet-mnist", include_bytes!("../../models/b-lenet-mnist/manifest.json"));
}

fn policy_text() -> String {
    Policy::from_rules(vec![
        Rule::MaxProb { threshold: 0.9 },
        Rule::Entropy { threshold: 0.1 },
        Rule::Margin { threshold: 0.5 },
        Rule::Always,
    ])
    .unwrap()
    .to_toml()
}
