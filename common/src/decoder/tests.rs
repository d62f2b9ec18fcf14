use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::model::{last_row, rows, top1};
use super::tiny::{write_tiny_gguf, TinySpec};
use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("offramp-decoder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_bundle(dir: &Path) -> DecoderBundle {
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, TinySpec::default()).unwrap();
    DecoderBundle::import(&gguf, &dir.join("whole"), None, &[2, 4], 512).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn the_tokenizer_round_trips_text_and_matches_control_tokens_whole() {
    let dir = scratch("tok");
    let b = tiny_bundle(&dir);
    let tok = b.tokenizer();
    let ids = tok.encode("the 42 cats").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), "the 42 cats");
    // Digits split one by one (SmolLM's pre-tokenizer), " the" merged.
    assert!(ids.len() >= 6, "{ids:?}");
    let chat = tok.encode_chat(&[ChatMessage { role: "user".into(), content: "hi".into() }]).unwrap();
    assert_eq!(chat[0], 1, "starts with <|im_start|> as one token");
    let text = tok.chat_format().unwrap().render(&[ChatMessage { role: "user".into(), content: "hi".into() }]);
    assert!(text.starts_with("<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"), "{text}");
    assert!(text.ends_with("<|im_start|>assistant\n"));
    assert!(tok.is_stop(2));
}

#[test]
fn split_sides_compute_what_the_whole_model_computes() {
    let dir = scratch("split");
    let whole = tiny_bundle(&dir);
    let full = whole.model().unwrap();
    let prompt = whole.tokenizer().encode("the answer is").unwrap();
    let reference = full.generate_greedy(&prompt, 12, |_| false).unwrap();
    for k in [0, 2, 6] {
        let (e, c) = (dir.join(format!("edge{k}")), dir.join(format!("cloud{k}")));
        whole.split(k, &e, Some(&c)).unwrap();
        let edge_b = DecoderBundle::open(&e).unwrap();
        let edge = edge_b.model().unwrap();
        assert!(edge_b.serves_edge(k));
        if k == 6 {
            assert_eq!(edge.generate_greedy(&prompt, 12, |_| false).unwrap(), reference, "all-edge");
            continue;
        }
        let cloud_b = DecoderBundle::open(&c).unwrap();
        assert!(cloud_b.serves_cloud(k) && !cloud_b.serves_edge(k));
        assert_eq!(edge_b.cloud_fingerprint(k), cloud_b.cloud_fingerprint(k), "both sides agree on the fingerprint");
        assert_ne!(cloud_b.cloud_fingerprint(k), cloud_b.cloud_fingerprint(k + 1));
        let cloud = cloud_b.model().unwrap();
        let (mut ec, mut cc) = (KvCache::new(full.config(), 0..k), KvCache::new(full.config(), k..6));
        let mut tokens = Vec::new();
        let mut x = edge.embed(&prompt).unwrap();
        let mut pos = 0;
        for _ in 0..12 {
            let t = x.dim(0).unwrap();
            let mut es = [SessionStep { cache: &mut ec, x, pos }];
            edge.run(0..k, &mut es, &[]).unwrap();
            let [es] = es;
            let mut cs = [SessionStep { cache: &mut cc, x: es.x, pos }];
            cloud.run(k..6, &mut cs, &[]).unwrap();
            let [cs] = cs;
            let (tok, _) = top1(&rows(&cloud.logits(&last_row(&cs.x).unwrap()).unwrap()).unwrap()[0]);
            tokens.push(tok);
            pos += t;
            x = edge.embed(&[tok]).unwrap();
        }
        assert_eq!(tokens, reference, "split at {k}");
    }
}

#[test]
fn a_batch_of_sessions_equals_each_session_alone() {
    let dir = scratch("batch");
    let model = tiny_bundle(&dir).model().unwrap();
    let c = model.config().clone();
    let prompts: [&[u32]; 3] = [&[5, 6, 7, 8, 9], &[40, 41], &[100, 101, 102]];
    let alone: Vec<Tensor> = prompts
        .iter()
        .map(|p| {
            let mut cache = KvCache::new(&c, 0..6);
            let mut s = [SessionStep { cache: &mut cache, x: model.embed(p).unwrap(), pos: 0 }];
            model.run(0..6, &mut s, &[]).unwrap();
            let [SessionStep { x: first, .. }] = s;
            // A second step on top of the cache.
            let mut s2 = [SessionStep { cache: &mut cache, x: model.embed(&[11]).unwrap(), pos: p.len() }];
            model.run(0..6, &mut s2, &[]).unwrap();
            let [s2] = s2;
            Tensor::cat(&[first, s2.x], 0).unwrap()
        })
        .collect();
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(&c, 0..6)).collect();
    let mut firsts = Vec::new();
    {
        let mut steps: Vec<SessionStep<'_>> = caches
            .iter_mut()
            .zip(prompts)
            .map(|(cache, p)| SessionStep { cache, x: model.embed(p).unwrap(), pos: 0 })
            .collect();
        model.run(0..6, &mut steps, &[]).unwrap();
        firsts.extend(steps.into_iter().map(|s| s.x));
    }
    let mut steps: Vec<SessionStep<'_>> = caches
        .iter_mut()
        .zip(prompts)
        .map(|(cache, p)| SessionStep { cache, x: model.embed(&[11]).unwrap(), pos: p.len() })
        .collect();
    model.run(0..6, &mut steps, &[]).unwrap();
    for ((a, f), s) in alone.iter().zip(firsts).zip(steps) {
        let batched = Tensor::cat(&[f, s.x], 0).unwrap();
        assert_eq!(max_diff(a, &batched), 0.0);
    }
}

#[test]
fn a_rolled_back_cache_recomputes_the_same_states() {
    let dir = scratch("rollback");
    let model = tiny_bundle(&dir).model().unwrap();
    let mut cache = KvCache::new(model.config(), 0..6);
    let mut s = [SessionStep { cache: &mut cache, x: model.embed(&[3, 4, 5, 6, 7]).unwrap(), pos: 0 }];
    let taps = model.run(0..6, &mut s, &[2, 6]).unwrap();
    let [s] = s;
    assert_eq!(taps[0].len(), 2);
    assert_eq!(max_diff(&taps[0][1], &s.x), 0.0, "tap at 6 is the output");
    let reference = s.x.narrow(0, 3, 2).unwrap();
    cache.truncate(3);
    let mut s = [SessionStep { cache: &mut cache, x: model.embed(&[6, 7]).unwrap(), pos: 3 }];
    model.run(0..6, &mut s, &[]).unwrap();
    let [s] = s;
    assert!(max_diff(&reference, &s.x) < 1e-5);
    assert_eq!(cache.len(), 5);
}

#[test]
fn bad_input_is_refused_with_what_is_wrong() {
    let dir = scratch("bad");
    let whole = tiny_bundle(&dir);
    let model = whole.model().unwrap();
    let err = model.embed(&[9999]).unwrap_err().to_string();
    assert!(err.contains("9999") && err.contains("vocabulary"), "{err}");
    let mut cache = KvCache::new(model.config(), 0..6);
    let mut s = [SessionStep { cache: &mut cache, x: model.embed(&[3]).unwrap(), pos: 4 }];
    let err = model.run(0..6, &mut s, &[]).unwrap_err().to_string();
    assert!(err.contains("position 4") && err.contains("holds 0"), "{err}");
    whole.split(3, &dir.join("e"), Some(&dir.join("c"))).unwrap();
    let edge = DecoderBundle::open(dir.join("e")).unwrap().model().unwrap();
    let mut cache = KvCache::new(model.config(), 0..6);
    let mut s = [SessionStep { cache: &mut cache, x: edge.embed(&[3]).unwrap(), pos: 0 }];
    let err = edge.run(0..6, &mut s, &[]).unwrap_err().to_string();
    assert!(err.contains("holds layers 0..3"), "{err}");
    // A corrupted weights file is caught by the digests.
    let w = dir.join("c").join("model.gguf");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    bytes[n - 40] ^= 0x55;
    std::fs::write(&w, bytes).unwrap();
    let err = DecoderBundle::open(dir.join("c")).unwrap().model().unwrap_err().to_string();
    assert!(err.contains("do not match"), "{err}");
    let err = DecoderBundle::import(&dir.join("tiny.gguf"), &dir.join("x"), None, &[6], 512).unwrap_err().to_string();
    assert!(err.contains("exit must sit after layers 1..5"), "{err}");
}

#[test]
fn seeded_sampling_is_deterministic_and_greedy_at_zero_temperature() {
    let logits = vec![0.1, 2.0, 1.5, -1.0];
    let s = sample::Sampling::from_temperature(0.0);
    assert_eq!(s.choose(&logits, 0.99).0, 1);
    let s = sample::Sampling::from_temperature(1.0);
    assert_eq!(s.choose(&logits, 0.01).0, 0, "the lowest uniform picks the first token with mass");
    assert_eq!(s.choose(&logits, 0.999).0, 3);
    assert_eq!(s.choose(&logits, 0.5), s.choose(&logits, 0.5));
}
