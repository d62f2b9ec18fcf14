//! Generation across the split with the tiny seeded decoder: real clouds
//! (in-process on 127.0.0.1:0, and real processes killed and restarted),
//! the edge's session driver, and the whole model as the reference.

use std::sync::Arc;
use std::time::Duration;

use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::decoder::model::top1;
use offramp_common::decoder::{DecoderBundle, DecoderModel};
use offramp_edge::generate::{GenOptions, Generated, Mode, Tier};
use offramp_proto as pb;
use offramp_proto::split_generation_client::SplitGenerationClient;
use tonic::Code;

use crate::support::*;

/// The whole model's greedy choice after each prefix of `sequence`:
/// `choices[i]` is its token for position `i + 1`.
fn full_choices(model: &DecoderModel, sequence: &[u32]) -> Vec<u32> {
    full_logits(model, sequence).iter().map(|r| top1(r).0).collect()
}

/// Every cloud token equals the whole model's choice given the sequence as
/// generated (so the cloud's cache held exactly the right states).
fn assert_cloud_tokens_exact(model: &DecoderModel, prompt: &[u32], g: &Generated) {
    let sequence: Vec<u32> = prompt.iter().chain(&g.tokens).copied().collect();
    let choices = full_choices(model, &sequence);
    for e in &g.events {
        assert_eq!(e.position, prompt.len() + e.index, "positions are contiguous");
        if e.tier == Tier::Cloud {
            assert_eq!(e.token, choices[e.position - 1], "cloud token {} at position {}", e.index, e.position);
        }
    }
}

async fn decoder_cloud(dirs: Vec<std::path::PathBuf>, tune: impl FnOnce(&mut CloudConfig)) -> CloudHandle {
    let mut cfg = CloudConfig::from_dirs(dirs);
    tune(&mut cfg);
    CloudHandle::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_all_cloud_and_all_edge_decode_exactly_the_whole_models_greedy_output() {
    let dir = tmp("gen-equal");
    // Layers that move the state: the exits disagree with the last layer,
    // so a mode answering from an exit instead would show.
    let whole =
        tiny_decoder_with(&dir, offramp_common::decoder::tiny::TinySpec { layer_scale: 3.0, ..Default::default() });
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let cloud = decoder_cloud(vec![whole.clone()], |_| {}).await;
    let (edge3, _) = split_decoder(&whole, 3);
    let (edge0, _) = split_decoder(&whole, 0);
    let edges = [
        (Mode::Split, decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {})),
        (Mode::AllCloud, decoder_edge(&edge0, Mode::AllCloud, 0, vec![cloud.url()], |_| {})),
        (Mode::AllEdge, decoder_edge(&whole, Mode::AllEdge, 6, vec![], |_| {})),
    ];
    for prompt in DECODER_PROMPTS {
        let ids = tok.encode(prompt).unwrap();
        let reference = full.generate_greedy(&ids, 24, |_| false).unwrap();
        for (mode, e) in &edges {
            let g = e.generate(&ids, &greedy(24), |_| {}).await.unwrap();
            assert_eq!(g.tokens, reference, "{mode:?} on {prompt:?}");
            let want_tier = if *mode == Mode::AllEdge { Tier::Edge } else { Tier::Cloud };
            assert!(g.events.iter().all(|e| e.tier == want_tier), "{mode:?}: {:?}", g.events);
            if *mode != Mode::AllEdge {
                assert!((g.summary.round_trips_per_token - 1.0).abs() < 1e-9);
                assert!(g.summary.bytes_up_per_token > 0.0 && g.summary.bytes_down_per_token > 0.0);
            }
        }
    }
    // The prompt's states went in one step: the first token's upload holds
    // every prompt position.
    let ids = tok.encode(DECODER_PROMPTS[1]).unwrap();
    let g = edges[0].1.generate(&ids, &greedy(3), |_| {}).await.unwrap();
    let row = 4 * DecoderBundle::open(&whole).unwrap().config().hidden as u64;
    assert!(g.events[0].bytes_up >= ids.len() as u64 * row, "{:?}", g.events[0]);
    assert!(g.events[1].bytes_up < 2 * row, "{:?}", g.events[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_exit_streams_every_state_so_later_cloud_tokens_stay_exact() {
    let dir = tmp("gen-early");
    let whole = tiny_decoder(&dir);
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let cloud = decoder_cloud(vec![whole.clone()], |_| {}).await;
    let (edge4, _) = split_decoder(&whole, 4);
    let ids = tok.encode(DECODER_PROMPTS[0]).unwrap();
    // First pass with threshold 0: every token is the exit's; its
    // confidences give a threshold that splits the tokens between tiers.
    let all_local = decoder_edge(&edge4, Mode::EarlyExit, 4, vec![cloud.url()], |c| c.threshold = Some(0.0));
    let g = all_local.generate(&ids, &GenOptions { agreement: true, ..greedy(40) }, |_| {}).await.unwrap();
    assert!(g.events.iter().all(|e| e.tier == Tier::Edge && e.exit == Some(4)));
    assert_eq!(g.summary.round_trips_per_token, 0.0, "nothing waited for the cloud");
    assert!(g.summary.bytes_up_per_token > 0.0, "the states were streamed anyway");
    let agreement = g.summary.edge_agreement.expect("measured");
    // Agreement measured against the whole model on the same sequence.
    let choices = full_choices(&full, &[ids.clone(), g.tokens.clone()].concat());
    let agree = g.events.iter().filter(|e| e.token == choices[e.position - 1]).count();
    assert!(
        (agreement - agree as f64 / g.events.len() as f64).abs() < 1e-9,
        "{agreement} vs {agree}/{}",
        g.events.len()
    );
    let mut probs: Vec<f32> = g.events.iter().map(|e| e.probability).collect();
    probs.sort_by(f32::total_cmp);
    let median = probs[probs.len() / 2];

    let mixed = decoder_edge(&edge4, Mode::EarlyExit, 4, vec![cloud.url()], |c| c.threshold = Some(median));
    let g = mixed.generate(&ids, &greedy(40), |_| {}).await.unwrap();
    let (edge_n, cloud_n) = (g.summary.edge_tokens, g.summary.cloud_tokens);
    assert!(edge_n > 0 && cloud_n > 0, "both tiers answered: {edge_n} edge, {cloud_n} cloud");
    assert!(g.summary.round_trips_per_token < 1.0);
    assert_cloud_tokens_exact(&full, &ids, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_killed_and_restarted_mid_generation_the_session_continues_exactly() {
    let dir = tmp("gen-restart");
    let whole = tiny_decoder(&dir);
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let mut cloud = Some(CloudProcess::start(&cloud3, &[]));
    let url = cloud.as_ref().unwrap().url();
    let e = decoder_edge(&edge3, Mode::Split, 3, vec![url], |c| {
        c.deadline = Duration::from_millis(300);
        // Tokens of the tiny model take well under a millisecond: try the
        // cloud again at every token.
        c.retry_every = Duration::ZERO;
    });
    let ids = tok.encode(DECODER_PROMPTS[1]).unwrap();
    let mut killed: Option<CloudProcess> = None;
    let g = e
        .generate(&ids, &greedy(60), |ev| {
            if ev.index == 10 {
                let mut c = cloud.take().unwrap();
                c.kill();
                killed = Some(c);
            }
            if ev.index == 25 {
                // Started again on the same address.
                cloud = Some(killed.take().unwrap().restarted());
            }
        })
        .await
        .unwrap();
    assert_eq!(g.tokens.len(), 60, "no token lost");
    let tiers: Vec<Tier> = g.events.iter().map(|e| e.tier).collect();
    assert!(tiers[..=10].iter().all(|t| *t == Tier::Cloud), "{tiers:?}");
    assert!(tiers[11..=25].iter().all(|t| *t == Tier::Fallback), "the edge answers while the cloud is gone: {tiers:?}");
    assert!(g.events[11].reason.is_some());
    assert!(
        tiers[27..].iter().all(|t| *t == Tier::Cloud),
        "offloading resumes in the same session: {tiers:?} {:?}",
        g.events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
    );
    assert!(g.summary.sessions_opened >= 2 && g.summary.replayed_positions > ids.len() + 10, "{:?}", g.summary);
    // After the replay the cloud's cache is exact: its tokens are the whole
    // model's given the sequence (fallback tokens included).
    assert_cloud_tokens_exact(&full, &ids, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_replica_hands_the_session_to_another_which_continues_it() {
    let dir = tmp("gen-failover");
    let whole = tiny_decoder(&dir);
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let mut a = CloudProcess::start(&cloud3, &[]);
    let b = CloudProcess::start(&cloud3, &[]);
    let e = decoder_edge(&edge3, Mode::Split, 3, vec![a.url(), b.url()], |c| c.deadline = Duration::from_millis(500));
    let ids = tok.encode(DECODER_PROMPTS[2]).unwrap();
    let g = e
        .generate(&ids, &greedy(30), |ev| {
            if ev.index == 8 {
                a.kill();
            }
        })
        .await
        .unwrap();
    let endpoints: Vec<Option<String>> = g.events.iter().map(|e| e.endpoint.clone()).collect();
    assert_eq!(endpoints[0].as_deref(), Some(a.url().as_str()), "the session starts on the first replica");
    assert_eq!(endpoints[29].as_deref(), Some(b.url().as_str()), "and ends on the second");
    assert!(g.summary.fallback_tokens <= 1, "at most the token in flight falls back: {:?}", g.summary);
    assert_eq!(g.summary.sessions_opened, 2);
    assert_cloud_tokens_exact(&full, &ids, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_are_batched_and_answer_as_alone() {
    let dir = tmp("gen-batch");
    let whole = tiny_decoder(&dir);
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge2, cloud2) = split_decoder(&whole, 2);
    let cloud = decoder_cloud(vec![cloud2], |_| {}).await;
    let e = Arc::new(decoder_edge(&edge2, Mode::Split, 2, vec![cloud.url()], |_| {}));
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (e, ids) = (e.clone(), tok.encode(DECODER_PROMPTS[i % 3]).unwrap());
        tasks.push(tokio::spawn(async move { (ids.clone(), e.generate(&ids, &greedy(40), |_| {}).await.unwrap()) }));
    }
    let mut batched = 0;
    for t in tasks {
        let (ids, g) = t.await.unwrap();
        assert_eq!(g.tokens, full.generate_greedy(&ids, 40, |_| false).unwrap());
        batched += g.events.iter().filter(|e| e.cloud_batch.unwrap_or(1) > 1).count();
    }
    assert!(batched > 0, "some decode steps of different sessions shared a forward pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_are_refused_by_name_and_the_edge_falls_back() {
    let dir = tmp("gen-limits");
    let whole = tiny_decoder(&dir);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let ids = tok.encode(DECODER_PROMPTS[0]).unwrap();
    type Tune = fn(&mut CloudConfig);
    let cases: [(&str, Tune); 2] =
        [("tokens per session", |c| c.sessions.max_tokens = 8), ("KV cache budget", |c| c.sessions.kv_budget = 1024)];
    for (limit, tune) in cases {
        let cloud = decoder_cloud(vec![cloud3.clone()], tune).await;
        let e = decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |c| c.retry_every = Duration::from_secs(60));
        let g = e.generate(&ids, &greedy(5), |_| {}).await.unwrap();
        assert_eq!(g.tokens.len(), 5);
        assert!(g.events.iter().all(|e| e.tier == Tier::Fallback), "{limit}");
        let reason = g.events[0].reason.clone().unwrap();
        assert!(reason.contains(limit), "{limit}: {reason}");
    }
    // Max sessions: one session held open, the next refused.
    let cloud = decoder_cloud(vec![cloud3.clone()], |c| {
        c.sessions.max_sessions = 1;
        c.sessions.idle_ttl = Duration::from_millis(400);
    })
    .await;
    let mut client = SplitGenerationClient::connect(cloud.url()).await.unwrap();
    let fp = DecoderBundle::open(&edge3).unwrap().cloud_fingerprint(3);
    let open = |fp: &str| pb::GenerateRequest {
        msg: Some(pb::generate_request::Msg::Open(pb::OpenSession {
            model_id: String::new(),
            model_fingerprint: fp.to_string(),
            split: 3,
            max_positions: 64,
            edge_id: "t".into(),
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(open(&fp)).unwrap();
    let mut held =
        client.generate(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    assert!(matches!(held.message().await.unwrap().unwrap().result, Some(pb::generate_response::Result::Opened(_))));
    let e = decoder_edge(&edge3, Mode::Split, 3, vec![cloud.url()], |_| {});
    let g = e.generate(&ids, &greedy(2), |_| {}).await.unwrap();
    let reason = g.events[0].reason.clone().unwrap();
    assert!(reason.contains("maximum of 1 sessions"), "{reason}");
    // The held session idles past its TTL and is closed, naming why.
    let status = loop {
        match held.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("closed without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("idle"), "{status:?}");
    drop(tx);
    // And the slot is free again.
    let g = e.generate(&ids, &greedy(2), |_| {}).await.unwrap();
    assert!(g.events.iter().all(|e| e.tier == Tier::Cloud), "{:?}", g.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_session_messages_get_clear_errors_and_the_session_survives_a_bad_step() {
    let dir = tmp("gen-bad");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = decoder_cloud(vec![cloud3], |_| {}).await;
    let client = SplitGenerationClient::connect(cloud.url()).await.unwrap();
    let bundle = DecoderBundle::open(&edge3).unwrap();
    let fp = bundle.cloud_fingerprint(3);
    let hidden = bundle.config().hidden;
    let run = |msgs: Vec<pb::GenerateRequest>| {
        let mut client = client.clone();
        async move {
            let mut inbound = client.generate(tokio_stream::iter(msgs)).await.unwrap().into_inner();
            let mut got = Vec::new();
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => got.push(Ok(m)),
                    Ok(None) => break,
                    Err(s) => {
                        got.push(Err(s));
                        break;
                    }
                }
            }
            got
        }
    };
    let open = |fp: &str, split: u32| pb::GenerateRequest {
        msg: Some(pb::generate_request::Msg::Open(pb::OpenSession {
            model_id: String::new(),
            model_fingerprint: fp.into(),
            split,
            max_positions: 32,
            edge_id: "t".into(),
        })),
    };
    let step = |id: u64, pos: u32, t: usize, width: usize, want: pb::Want| pb::GenerateRequest {
        msg: Some(pb::generate_request::Msg::Step(pb::DecodeStep {
            request_id: id,
            position: pos,
            hidden: Some(offramp_common::codec::encode(&vec![0.1; t * width], &[t, width], pb::Encoding::F32)),
            want: want as i32,
            ..Default::default()
        })),
    };
    let status_of =
        |got: &[Result<pb::GenerateResponse, tonic::Status>]| got.last().unwrap().as_ref().unwrap_err().clone();
    let s = status_of(&run(vec![step(1, 0, 1, hidden, pb::Want::Argmax)]).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("must open a session"), "{s:?}");
    let s = status_of(&run(vec![open("beef", 3)]).await);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("fingerprint mismatch"), "{s:?}");
    let s = status_of(&run(vec![open(&fp, 1)]).await);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("holds layers 3..6"), "{s:?}");
    // Bad steps are refused one by one; the good ones after them answer.
    let got = run(vec![
        open(&fp, 3),
        step(1, 0, 2, hidden + 1, pb::Want::Argmax),
        step(2, 5, 2, hidden, pb::Want::Argmax),
        step(3, 0, 40, hidden, pb::Want::Argmax),
        step(4, 0, 2, hidden, pb::Want::Argmax),
        step(5, 2, 1, hidden, pb::Want::Argmax),
    ])
    .await;
    let mut errors: Vec<(u64, String)> = got
        .iter()
        .filter_map(|m| match m {
            Ok(pb::GenerateResponse { request_id, result: Some(pb::generate_response::Result::Error(e)) }) => {
                Some((*request_id, e.message.clone()))
            }
            _ => None,
        })
        .collect();
    // Positions are checked where the cache is (after refusals made on
    // arrival): order by request.
    errors.sort();
    assert!(errors[0].0 == 1 && errors[0].1.contains("shape [2, 65]"), "{errors:?}");
    assert!(errors[1].0 == 2 && errors[1].1.contains("position 5"), "{errors:?}");
    assert!(errors[2].0 == 3 && errors[2].1.contains("max tokens per session"), "{errors:?}");
    let tokens: Vec<(u64, u32)> = got
        .iter()
        .filter_map(|m| match m {
            Ok(pb::GenerateResponse { request_id, result: Some(pb::generate_response::Result::Step(s)) }) => {
                Some((*request_id, s.position))
            }
            _ => None,
        })
        .collect();
    assert_eq!(tokens, vec![(4, 2), (5, 3)]);
    assert!(got.iter().all(|m| m.is_ok()), "the stream ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_adapters_trained_by_self_distillation_are_calibrated_and_carried_to_the_edge() {
    use offramp_training::calibrate_decoder::{run as calibrate, CalibrateDecoderArgs};
    use offramp_training::train_exits::{run as train, TrainExitsArgs};
    let dir = tmp("gen-train");
    // Strong layers: the shallow exits disagree with the last layer, as in
    // a real model, so there is something to learn.
    let spec = offramp_common::decoder::tiny::TinySpec { layer_scale: 4.0, ..Default::default() };
    let whole = tiny_decoder_with(&dir, spec);
    // Questions in the `label text` format of the TREC file.
    let subjects = ["the moon", "a river", "the cat", "42 ships", "the answer", "rain", "a tree", "the sea"];
    let lines: Vec<String> =
        (0..40).map(|i| format!("{} What is {} made of {} ?", i % 6, subjects[i % 8], i)).collect();
    let prompts_file = dir.join("questions.txt");
    std::fs::write(&prompts_file, lines.join("\n")).unwrap();
    let r = train(&TrainExitsArgs {
        model: whole.clone(),
        prompts_file: prompts_file.clone(),
        prompts: 16,
        skip: 0,
        tokens: 24,
        val_fraction: 0.25,
        rank: 16,
        epochs: 40,
        batch: 64,
        lr: 1e-2,
        teacher_top: 8,
        seed: 1,
        json: false,
    })
    .unwrap();
    assert_eq!(r.exits.len(), 2);
    for e in &r.exits {
        eprintln!("{e:?}");
        assert!(e.agreement_before < 0.9, "the bare exit disagrees often: {e:?}");
        assert!(e.train_agreement_after > e.agreement_before + 0.1, "the adapter fits its exit: {e:?}");
    }
    let c = calibrate(&CalibrateDecoderArgs {
        model: whole.clone(),
        prompts_file,
        prompts: 8,
        tokens: 16,
        target: 0.9,
        dry_run: false,
        json: false,
    })
    .unwrap();
    assert!(c.written && c.exits.iter().all(|e| e.agreement >= 0.9), "{c:?}");
    let bundle = DecoderBundle::open(&whole).unwrap();
    assert!(bundle.manifest().exits.iter().all(|e| e.threshold.is_some()));
    assert!(bundle.model().unwrap().has_adapter(4));
    // The edge side of a split carries the adapters and the thresholds; the
    // cloud side does not need them.
    let (edge4, cloud4) = split_decoder(&whole, 4);
    assert!(DecoderBundle::open(&edge4).unwrap().model().unwrap().has_adapter(4));
    assert!(DecoderBundle::open(&cloud4).unwrap().manifest().adapters.is_none());
    let cloud = decoder_cloud(vec![cloud4], |_| {}).await;
    let e = decoder_edge(&edge4, Mode::EarlyExit, 4, vec![cloud.url()], |_| {});
    assert_eq!(e.threshold(), bundle.manifest().exits[1].threshold);
    let ids = bundle.tokenizer().encode("the answer is").unwrap();
    let g = e.generate(&ids, &greedy(16), |_| {}).await.unwrap();
    assert_eq!(g.tokens.len(), 16);
    assert_cloud_tokens_exact(&whole_model(&whole), &ids, &g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generate_command_streams_json_records_and_names_bad_flags() {
    let dir = tmp("gen-cli");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = CloudProcess::start(&cloud3, &[]);
    let url = cloud.url();
    let edge3s = edge3.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(edge_binary())
            .args(["generate", "--model", &edge3s, "--split", "3", "--cloud", &url, "--prompt", "the answer is"])
            .args(["--max-tokens", "8", "--ignore-eos", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 9, "8 token records and a summary");
    for (i, r) in lines[..8].iter().enumerate() {
        assert_eq!(r["index"], i);
        assert_eq!(r["tier"], "cloud");
        assert!(r["latency_us"].as_u64().unwrap() > 0 && r["bytes_up"].as_u64().unwrap() > 0);
    }
    let s = &lines[8]["summary"];
    assert_eq!(s["tokens"], 8);
    assert!(s["tokens_per_s"].as_f64().unwrap() > 0.0 && s["time_to_first_token_ms"].as_f64().unwrap() > 0.0);
    // Early-exit without a calibrated threshold, and no prompt: clear errors.
    for (args, says) in [
        (vec!["--mode", "early-exit", "--prompt", "x"], "needs a threshold"),
        (vec!["--cloud", "http://127.0.0.1:9"], "give a prompt"),
        (vec!["--split", "9", "--prompt", "x"], "has 6 layers"),
    ] {
        let out = std::process::Command::new(edge_binary())
            .args(["generate", "--model", edge3.to_str().unwrap(), "--cloud", "http://127.0.0.1:9"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    }
}
