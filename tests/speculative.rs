//! Speculative decoding across the split with the tiny seeded decoder: the
//! edge drafts with its exit, a real cloud (in-process on 127.0.0.1:0, or a
//! process killed and restarted) verifies; the whole model is the reference.

use std::path::Path;
use std::time::Duration;

use offramp_common::decoder::model::top1;
use offramp_common::decoder::speculative::softmax;
use offramp_common::decoder::tiny::TinySpec;
use offramp_common::decoder::{DecoderBundle, KvCache, SessionStep};
use offramp_edge::generate::{DecoderEdge, GenOptions, GenerateConfig, Mode, Tier};
use offramp_proto as pb;
use offramp_proto::split_generation_client::SplitGenerationClient;

use crate::support::*;

fn edge(dir: &Path, k: usize, clouds: Vec<String>, tune: impl FnOnce(&mut GenerateConfig)) -> DecoderEdge {
    decoder_edge(dir, Mode::Speculative, k, clouds, tune)
}

/// Greedy speculative output is the whole model's, token for token, for
/// several draft lengths, with and without pipelining, on a model whose
/// exit is rarely right (drafts mostly rejected), one where it is right
/// about half the time, and one where it is always right (all accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_greedy_output_is_the_whole_models_for_every_draft_length() {
    let dir = tmp("spec-equal");
    let rough = tiny_decoder_with(&dir.join("rough"), TinySpec { layer_scale: 3.0, ..TinySpec::default() });
    let half = tiny_decoder_with(&dir.join("half"), TinySpec { layer_scale: 1.5, ..TinySpec::default() });
    // The default tiny model's layers barely move the state: its exits
    // always agree with its last layer.
    let same = tiny_decoder(&dir.join("same"));
    let mut rates = Vec::new();
    for (whole, k) in [(&rough, 2), (&half, 4), (&same, 4)] {
        let full = whole_model(whole);
        let tok = DecoderBundle::open(whole).unwrap().tokenizer().clone();
        let (edge_dir, cloud_dir) = split_decoder(whole, k);
        let cloud =
            offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud_dir])).await.unwrap();
        let (mut verified, mut accepted, mut all_accepted_blocks, mut rejections) = (0, 0.0, 0, 0);
        for (draft, pipeline, adapt) in [(1, 1, false), (3, 1, false), (6, 3, false), (4, 3, true)] {
            let e = edge(&edge_dir, k, vec![cloud.url()], |c| {
                c.draft = draft;
                c.pipeline = pipeline;
                c.adapt_draft = adapt;
            });
            for prompt in DECODER_PROMPTS {
                let ids = tok.encode(prompt).unwrap();
                let reference = full.generate_greedy(&ids, 30, |_| false).unwrap();
                let g = e.generate(&ids, &greedy(30), |_| {}).await.unwrap();
                assert_eq!(g.tokens, reference, "K={k} draft {draft} pipeline {pipeline} on {prompt:?}");
                for (i, ev) in g.events.iter().enumerate() {
                    assert_eq!(ev.position, ids.len() + i, "positions are contiguous");
                    assert_ne!(ev.tier, Tier::Fallback);
                }
                let s = &g.summary;
                assert_eq!(s.fallback_tokens, 0);
                let v = s.drafts_verified.unwrap();
                assert!(v >= 30 && s.mean_draft_length.unwrap() <= draft as f64 + 1e-9, "{s:?}");
                verified += v;
                accepted += s.acceptance_rate.unwrap() * v as f64;
                // A cloud token is a correction: one per rejecting block.
                rejections += s.cloud_tokens;
                if draft > 1 && s.round_trips_per_token < 1.0 {
                    all_accepted_blocks += 1;
                }
                if pipeline == 1 {
                    // Without pipelining only the drafts after a rejected one
                    // in its block are thrown away.
                    let accepted_n = (s.acceptance_rate.unwrap() * v as f64).round() as usize;
                    assert_eq!(s.drafts_discarded, Some(v - accepted_n - s.cloud_tokens), "{s:?}");
                }
            }
        }
        rates.push((accepted / verified as f64, all_accepted_blocks, rejections));
    }
    let (rough, half, same) = (rates[0], rates[1], rates[2]);
    assert!(rough.0 < 0.4 && rough.2 > 0, "the rough exit is mostly wrong: {rough:?}");
    assert!(half.0 > 0.2 && half.0 < 0.9 && half.1 > 0 && half.2 > 0, "accepted and rejected: {half:?}");
    assert!(same.0 == 1.0 && same.2 == 0, "all accepted: {same:?}");
}

/// The verify protocol on the wire: drafts all right, all wrong, a
/// speculative step on rejected drafts (discarded), the step that follows
/// the rollback, and bad drafts refused by name without ending the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_verifies_drafts_rolls_back_and_discards_speculation_on_rejected_ones() {
    let dir = tmp("spec-wire");
    let whole = tiny_decoder(&dir);
    let full = whole_model(&whole);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let edge_side = DecoderBundle::open(&edge3).unwrap();
    let fp = edge_side.cloud_fingerprint(3);
    let edge_model = edge_side.model().unwrap();
    let vocab = edge_side.config().vocab as u32;
    // Layer-3 states of a sequence, computed on the edge side.
    let states = |seq: &[u32]| -> Vec<f32> {
        let mut cache = KvCache::new(edge_model.config(), 0..3);
        let mut steps = [SessionStep { cache: &mut cache, x: edge_model.embed(seq).unwrap(), pos: 0 }];
        edge_model.run(0..3, &mut steps, &[]).unwrap();
        let [s] = steps;
        s.x.flatten_all().unwrap().to_vec1().unwrap()
    };
    let hidden = edge_side.config().hidden;
    let prompt: Vec<u32> = vec![40, 41, 42, 43];
    let choices: Vec<u32> = {
        let mut seq = prompt.clone();
        for _ in 0..4 {
            let l = full_logits(&full, &seq);
            seq.push(top1(l.last().unwrap()).0);
        }
        seq[prompt.len()..].to_vec()
    };
    let right: Vec<u32> = prompt.iter().chain(&choices[..3]).copied().collect();
    let sv = states(&right);
    let step =
        |id: u64, pos: usize, rows: std::ops::Range<usize>, drafts: Vec<u32>, speculative: bool| pb::GenerateRequest {
            msg: Some(pb::generate_request::Msg::Step(pb::DecodeStep {
                request_id: id,
                position: pos as u32,
                hidden: Some(offramp_common::codec::encode(
                    &sv[rows.start * hidden..rows.end * hidden],
                    &[rows.len(), hidden],
                    pb::Encoding::F32,
                )),
                want: if drafts.is_empty() { pb::Want::None } else { pb::Want::Verify } as i32,
                drafts: drafts.into_iter().map(|token| pb::Draft { token, ..Default::default() }).collect(),
                speculative,
                ..Default::default()
            })),
        };
    let open = pb::GenerateRequest {
        msg: Some(pb::generate_request::Msg::Open(pb::OpenSession {
            model_fingerprint: fp.clone(),
            split: 3,
            max_positions: 32,
            ..Default::default()
        })),
    };
    let wrong = |t: u32| (t + 1) % vocab;
    let msgs = vec![
        open,
        // The prompt but its last position, then a verify step over the
        // last prompt position and two drafts: all three right.
        step(1, 0, 0..3, vec![], false),
        step(2, 3, 3..6, choices[..3].to_vec(), false),
        // Speculative on the next position, with a wrong draft: rejected at 0.
        step(3, 6, 6..7, vec![wrong(choices[3])], true),
        // Speculation on top of the rejected one: discarded unapplied.
        step(4, 7, 6..7, vec![choices[3]], true),
        // Bad drafts: one per position is required; tokens in the vocabulary.
        step(5, 7, 6..7, vec![1, 2], false),
        step(6, 7, 6..7, vec![vocab + 5], false),
        // A sampled verification needs the draft distribution.
        {
            let mut m = step(7, 7, 6..7, vec![3], false);
            if let Some(pb::generate_request::Msg::Step(s)) = &mut m.msg {
                s.temperature = 0.8;
            }
            m
        },
        // After the rollback the session holds 7 positions: the step at 7
        // is the one that continues (position 6 was accepted, its input
        // right), and a step at a stale position is refused.
        step(8, 9, 6..7, vec![1], false),
    ];
    let mut client = SplitGenerationClient::connect(cloud.url()).await.unwrap();
    let mut inbound = client.generate(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let mut results = std::collections::BTreeMap::new();
    let mut errors = std::collections::BTreeMap::new();
    while let Some(m) = inbound.message().await.unwrap() {
        match m.result {
            Some(pb::generate_response::Result::Step(s)) => {
                results.insert(m.request_id, s);
            }
            Some(pb::generate_response::Result::Error(e)) => {
                errors.insert(m.request_id, e.message);
            }
            _ => {}
        }
    }
    let r2 = &results[&2];
    assert_eq!((r2.accepted, r2.token, r2.position, r2.cached), (3, choices[2], 6, 6), "{r2:?}");
    let r3 = &results[&3];
    assert_eq!((r3.accepted, r3.token, r3.cached, r3.discarded), (0, choices[3], 7, false), "{r3:?}");
    assert!(results[&4].discarded, "{:?}", results[&4]);
    assert!(errors[&5].contains("one draft per position"), "{errors:?}");
    assert!(errors[&6].contains("outside the vocabulary"), "{errors:?}");
    assert!(errors[&7].contains("draft 0") && errors[&7].contains("as many probabilities"), "{errors:?}");
    assert!(errors[&8].contains("position 9") && errors[&8].contains("holds 7"), "{errors:?}");
}

/// Speculative sampling keeps the whole model's distribution: over many
/// seeds the first two tokens (both verified: the second after a draft
/// that may have been rejected) are distributed as sampling from the whole
/// model. Chi-square over the most likely tokens plus the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_sampling_matches_the_whole_models_distribution() {
    let dir = tmp("spec-sample");
    let whole = tiny_decoder_with(&dir, TinySpec { layer_scale: 3.0, ..TinySpec::default() });
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge2, cloud2) = split_decoder(&whole, 2);
    let cloud = offramp_cloud::CloudHandle::start(offramp_cloud::CloudConfig::from_dirs(vec![cloud2])).await.unwrap();
    let e = edge(&edge2, 2, vec![cloud.url()], |c| {
        c.draft = 2;
        c.adapt_draft = false;
        c.pipeline = 1;
    });
    let temperature = 1.0;
    let ids = tok.encode(DECODER_PROMPTS[0]).unwrap();
    // Exact marginals of tokens 1 and 2 under the whole model.
    let p1 = softmax(full_logits(&full, &ids).last().unwrap(), temperature);
    let vocab = p1.len();
    let mut p2 = vec![0.0f64; vocab];
    for (t1, &w) in p1.iter().enumerate() {
        if w < 1e-6 {
            continue;
        }
        let seq: Vec<u32> = ids.iter().copied().chain([t1 as u32]).collect();
        for (x, q) in softmax(full_logits(&full, &seq).last().unwrap(), temperature).iter().enumerate() {
            p2[x] += w as f64 * *q as f64;
        }
    }
    let runs = 900;
    let mut counts = [vec![0usize; vocab], vec![0usize; vocab]];
    let (mut verified, mut accepted) = (0usize, 0.0);
    for seed in 0..runs {
        let opts = GenOptions {
            max_tokens: 2,
            ignore_eos: true,
            seed,
            sampling: offramp_common::decoder::sample::Sampling::Temperature(temperature),
            ..GenOptions::default()
        };
        let g = e.generate(&ids, &opts, |_| {}).await.unwrap();
        assert_eq!(g.tokens.len(), 2);
        assert_eq!(g.summary.fallback_tokens, 0);
        counts[0][g.tokens[0] as usize] += 1;
        counts[1][g.tokens[1] as usize] += 1;
        let v = g.summary.drafts_verified.unwrap();
        verified += v;
        accepted += g.summary.acceptance_rate.unwrap() * v as f64;
    }
    let rate = accepted / verified as f64;
    assert!(rate > 0.05 && rate < 0.95, "drafts are both accepted and rejected: {rate}");
    let p1: Vec<f64> = p1.iter().map(|&v| v as f64).collect();
    for (which, (p, counts)) in [(&p1, &counts[0]), (&p2, &counts[1])].into_iter().enumerate() {
        // Bins: the 6 most likely tokens, and everything else.
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
        let mut bins: Vec<(f64, usize)> = order[..6].iter().map(|&t| (p[t], counts[t])).collect();
        let rest_p: f64 = order[6..].iter().map(|&t| p[t]).sum();
        let rest_c: usize = order[6..].iter().map(|&t| counts[t]).sum();
        bins.push((rest_p, rest_c));
        let chi2: f64 = bins
            .iter()
            .map(|&(p, c)| {
                let e = p * runs as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        // 0.999 quantile of chi-square with 6 degrees of freedom.
        assert!(chi2 < 22.46, "token {}: chi2 {chi2:.1}; bins (p, count) {bins:?}", which + 1);
    }
    // The same seed gives the same text.
    let opts = GenOptions {
        max_tokens: 12,
        ignore_eos: true,
        seed: 5,
        sampling: offramp_common::decoder::sample::Sampling::Temperature(temperature),
        ..GenOptions::default()
    };
    let a = e.generate(&ids, &opts, |_| {}).await.unwrap();
    let b = edge(&edge2, 2, vec![cloud.url()], |c| c.draft = 5).generate(&ids, &opts, |_| {}).await.unwrap();
    assert_eq!(a.tokens, b.tokens, "a seed fixes the text whatever the draft length and pipelining");
}

/// A cloud process SIGKILLed mid-generation and started again: the edge
/// answers alone meanwhile (tier fallback), then replays its states into a
/// new session and verifies again; every verified token is the whole
/// model's choice given the sequence as generated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculative_falls_back_when_the_cloud_dies_and_resumes_verification_after_replay() {
    let dir = tmp("spec-restart");
    let whole = tiny_decoder_with(&dir, TinySpec { layer_scale: 1.5, ..TinySpec::default() });
    let full = whole_model(&whole);
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let mut cloud = Some(CloudProcess::start(&cloud3, &[]));
    let url = cloud.as_ref().unwrap().url();
    let e = edge(&edge3, 3, vec![url], |c| {
        c.deadline = Duration::from_millis(300);
        c.retry_every = Duration::ZERO;
    });
    let ids = tok.encode(DECODER_PROMPTS[1]).unwrap();
    let mut killed: Option<CloudProcess> = None;
    let mut fallback_seen = 0;
    let g = e
        .generate(&ids, &greedy(60), |ev| {
            if ev.index >= 10 && fallback_seen == 0 && killed.is_none() && cloud.is_some() {
                let mut c = cloud.take().unwrap();
                c.kill();
                killed = Some(c);
            }
            if ev.tier == Tier::Fallback {
                fallback_seen += 1;
                if fallback_seen == 8 {
                    cloud = Some(killed.take().unwrap().restarted());
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(g.tokens.len(), 60, "no token lost");
    let tiers: Vec<Tier> = g.events.iter().map(|e| e.tier).collect();
    let first_fallback = tiers.iter().position(|t| *t == Tier::Fallback).expect("the edge answered alone");
    assert!(first_fallback >= 10, "{tiers:?}");
    assert!(g.events[first_fallback].reason.is_some());
    let last_fallback = tiers.iter().rposition(|t| *t == Tier::Fallback).unwrap();
    assert!(
        last_fallback < 50,
        "verification resumed: {tiers:?} {:?}",
        g.events.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
    );
    assert!(tiers[last_fallback + 1..].iter().all(|t| *t != Tier::Fallback));
    assert!(g.summary.sessions_opened >= 2 && g.summary.replayed_positions > ids.len() + 10, "{:?}", g.summary);
    // Verified tokens (accepted drafts and corrections) are the whole
    // model's choices given the sequence, fallback tokens included.
    let sequence: Vec<u32> = ids.iter().chain(&g.tokens).copied().collect();
    let logits = full_logits(&full, &sequence);
    for ev in g.events.iter().filter(|e| e.tier != Tier::Fallback) {
        assert_eq!(ev.token, top1(&logits[ev.position - 1]).0, "token {} at position {}", ev.index, ev.position);
    }
}
