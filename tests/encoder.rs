//! Text encoders through the whole system: a seeded tiny BERT checkpoint in
//! the Hugging Face layout (2 layers, hidden 32) that the test writes itself,
//! imported with `offramp import hf`, split at every K, served by a real
//! cloud over gRPC and QUIC, classified from text on the edge.

use std::sync::Arc;
use std::time::Duration;

use offramp_cloud::config::BatchConfig;
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::model::SplitSide;
use offramp_common::{codec, Bundle, Executor, Policy};
use offramp_edge::{Edge, EdgeConfig, Tier};
use offramp_proto as pb;
use offramp_proto::classify_client::ClassifyClient;
use offramp_proto::split_inference_client::SplitInferenceClient;
use offramp_training::import_hf;
use offramp_training::import_hf::testing::{import_args, TinyBert};
use tonic::Code;

use crate::support::*;

const TEXTS: &[&str] = &[
    "the movie was very good",
    "boring",
    "what a great film , not bad at all !",
    "it is not fun and the story was awful but the film was great and very very good fun",
    "how many films",
    "zzz qqq",
];

/// Writes the tiny checkpoint and imports it; returns the bundle directory.
fn tiny_bundle(name: &str) -> std::path::PathBuf {
    let dir = tmp(name);
    TinyBert::default().write(&dir.join("hf"), 11).unwrap();
    let report = import_hf::run(&import_args(&dir.join("hf"), &dir.join("bundle"))).unwrap();
    assert_eq!(report.layers, 2);
    assert_eq!(report.exits.len(), 2);
    dir.join("bundle")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_encoder_split_at_every_k_answers_text_like_the_whole_model() {
    let dir = tiny_bundle("enc-every-k");
    let full = Bundle::load(&dir).unwrap();
    let n = full.num_blocks();
    assert_eq!(n, 3, "embeddings + 2 layers");
    let encoder = full.text_encoder().unwrap().clone();
    let exec = Executor::new(Arc::new(full.clone()));
    let never = Policy::never(full.num_exits());
    let ids: Vec<Vec<f32>> = TEXTS.iter().map(|t| encoder.encode(t).unwrap()).collect();
    assert_eq!(encoder.tokens("the movie").unwrap(), ["[CLS]", "the", "movie", "[SEP]"]);
    let whole: Vec<_> = ids
        .iter()
        .map(|row| exec.run(exec.batch_of(0, &[row]).unwrap(), 0..n, &never, vec![vec![]]).unwrap())
        .map(|out| out.exited[0].clone().unwrap())
        .collect();
    for k in 0..=n {
        let (edge_b, cloud_b) = full.split(k).unwrap();
        let kdir = dir.with_extension(format!("k{k}"));
        edge_b.save(kdir.join("edge")).unwrap();
        cloud_b.save(kdir.join("cloud")).unwrap();
        let (edge_b, cloud_b) = (Bundle::load(kdir.join("edge")).unwrap(), Bundle::load(kdir.join("cloud")).unwrap());
        assert!(edge_b.text_encoder().is_some(), "the edge side keeps the tokenizer");
        assert_eq!(edge_b.fingerprint(SplitSide::Edge, k), full.fingerprint(SplitSide::Edge, k));
        // Hidden states at K, edge side alone, equal the whole model's (real tokens only).
        if k < n {
            let e = Executor::new(Arc::new(edge_b.clone()));
            for row in &ids {
                let (h, shape) =
                    e.run(e.batch_of(0, &[row]).unwrap(), 0..k, &never, vec![vec![]]).unwrap().hidden_row(0).unwrap();
                let want = exec.forward_blocks(exec.batch_of(0, &[row]).unwrap(), 0..k).unwrap();
                let want = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(shape[0], row.len());
                assert!(max_diff(&h, &want) < 1e-5, "K={k}");
            }
        }
        let cloud = if k < n { Some(CloudHandle::start(CloudConfig::new(cloud_b)).await.unwrap()) } else { None };
        let mut config = EdgeConfig::new(edge_b, Some(k), cloud.iter().map(|c| c.url()).collect());
        config.policy = Some(never.clone());
        config.probabilities = true;
        let edge = Edge::start(config).await.unwrap();
        for (i, text) in TEXTS.iter().enumerate() {
            let a = edge.classify_text(None, text, Duration::from_secs(5)).await.unwrap();
            assert_eq!(a.tier, if k < n { Tier::Cloud } else { Tier::Edge }, "K={k} {text:?}: {a:?}");
            assert_eq!(a.prediction, Some(whole[i].prediction as u32), "K={k}");
            assert_eq!(a.class.as_deref(), Some(full.labels()[whole[i].prediction].as_str()));
            assert!((a.confidence - whole[i].confidence).abs() < 1e-5, "K={k}");
            if k < n {
                assert!(max_diff(&a.probabilities, &whole[i].probabilities) < 1e-5, "K={k}");
                assert!(a.bytes_up > 0);
            }
        }
        if let Some(c) = cloud {
            c.stop().await.unwrap();
        }
    }
}

/// An encoder edge with `--adaptive-split`: the planner profiles the token
/// model (token ids at K = 0 go as f32 only), and whatever route it takes,
/// the answers are the whole model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoder_edge_that_replans_its_split_answers_like_the_whole_model() {
    let dir = tiny_bundle("enc-adaptive");
    let full = Bundle::load(&dir).unwrap();
    let n = full.num_blocks();
    let encoder = full.text_encoder().unwrap().clone();
    let exec = Executor::new(Arc::new(full.clone()));
    let never = Policy::never(full.num_exits());
    let cloud = CloudHandle::start(CloudConfig::new(full.clone())).await.unwrap();
    let (edge_b, _) = full.split(n - 1).unwrap();
    let mut config = EdgeConfig::new(edge_b, Some(0), vec![cloud.url()]);
    config.policy = Some(never.clone());
    config.adaptive_split = Some(offramp_edge::plan::PlanConfig::new(offramp_edge::plan::Objective::MinLatency));
    let edge = Edge::start(config).await.unwrap();
    let routes: Vec<String> =
        edge.planner().unwrap().lock().unwrap().profile().routes.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(routes, ["K=0 f32", "K=1 f32", "K=1 int8", "K=2 f32", "K=2 int8"]);
    let mut splits = std::collections::BTreeSet::new();
    for round in 0..40 {
        for text in TEXTS {
            let a = edge.classify_text(None, text, Duration::from_secs(5)).await.unwrap();
            let row = encoder.encode(text).unwrap();
            let whole = exec.run(exec.batch_of(0, &[&row]).unwrap(), 0..n, &never, vec![vec![]]).unwrap();
            let whole = whole.exited[0].clone().unwrap();
            assert_eq!(a.tier, Tier::Cloud, "round {round} {text:?}: {a:?}");
            assert_eq!(a.prediction, Some(whole.prediction as u32), "{a:?}");
            // int8 routes quantize the state: close, not equal.
            assert!((a.confidence - whole.confidence).abs() < 0.05, "{a:?} against {whole:?}");
            splits.insert((a.split, a.encoding));
        }
    }
    assert!(!splits.is_empty());
    drop(edge);
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cloud_batches_sequences_of_different_lengths_like_batch_one() {
    let dir = tiny_bundle("enc-batch");
    let full = Bundle::load(&dir).unwrap();
    let exec = Executor::new(Arc::new(full.clone()));
    let encoder = full.text_encoder().unwrap().clone();
    let k = 1;
    let requests: Vec<pb::InferRequest> = (0..24)
        .map(|i| {
            let ids = encoder.encode(TEXTS[i % TEXTS.len()]).unwrap();
            let h = exec.forward_blocks(exec.batch_of(0, &[&ids]).unwrap(), 0..k).unwrap();
            let shape = h.dims()[1..].to_vec();
            let values = h.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            pb::InferRequest {
                request_id: i as u64,
                model_id: full.model_id().into(),
                model_fingerprint: full.fingerprint(SplitSide::Cloud, k).unwrap(),
                split: k as u32,
                hidden: Some(codec::encode(&values, &shape, pb::Encoding::F32)),
                want_probabilities: true,
                ..Default::default()
            }
        })
        .collect();
    let answers = |max_batch: usize| {
        let (full, requests) = (full.clone(), requests.clone());
        async move {
            let mut config = CloudConfig::new(full);
            config.batch = BatchConfig::try_new(max_batch, Duration::from_millis(20), 1024, 1).unwrap();
            let cloud = CloudHandle::start(config).await.unwrap();
            let client = SplitInferenceClient::connect(cloud.url()).await.unwrap();
            let calls = requests.into_iter().map(|r| {
                let mut c = client.clone();
                async move { c.infer(r).await.unwrap().into_inner() }
            });
            let mut out = futures::future::join_all(calls).await;
            out.sort_by_key(|r| r.request_id);
            cloud.stop().await.unwrap();
            out
        }
    };
    let single = answers(1).await;
    let batched = answers(16).await;
    assert!(single.iter().all(|r| r.batch_size == 1));
    assert!(batched.iter().any(|r| r.batch_size > 1), "some requests were batched");
    for (a, b) in single.iter().zip(&batched) {
        assert_eq!(a.prediction, b.prediction);
        assert!(max_diff(&a.probabilities, &b.probabilities) < 1e-4, "request {}", a.request_id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_token_inputs_are_checked_and_answered_with_label_names() {
    let dir = tiny_bundle("enc-classify");
    let full = Bundle::load(&dir).unwrap();
    let (edge_b, cloud_b) = full.split(1).unwrap();
    let cloud = CloudHandle::start(CloudConfig::new(cloud_b.clone())).await.unwrap();
    let edge = Arc::new(Edge::start(EdgeConfig::new(edge_b, Some(1), vec![cloud.url()])).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(offramp_edge::serve::serve(edge, listener, async {
        let _ = stopped.await;
    }));
    let mut client = ClassifyClient::connect(format!("http://{addr}")).await.unwrap();
    let ok = client
        .classify(pb::ClassifyRequest { text: "a very good film".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(["negative", "positive"].contains(&ok.label.as_str()), "{ok:?}");
    assert_eq!(ok.tier, "cloud");

    let status = |r: Result<tonic::Response<pb::ClassifyResponse>, tonic::Status>| r.unwrap_err();
    let e = status(client.classify(pb::ClassifyRequest::default()).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("no text"), "{}", e.message());
    let both = pb::ClassifyRequest {
        text: "good".into(),
        input: Some(codec::encode(&[2.0, 3.0], &[2], pb::Encoding::F32)),
        ..Default::default()
    };
    let e = status(client.classify(both).await);
    assert!(e.message().contains("both"), "{}", e.message());
    let ids = |v: &[f32]| pb::ClassifyRequest {
        input: Some(codec::encode(v, &[v.len()], pb::Encoding::F32)),
        ..Default::default()
    };
    let e = status(client.classify(ids(&[2.0, 1e6, 3.0])).await);
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("token id at position 1"), "{}", e.message());
    let e = status(client.classify(ids(&[2.0; 33])).await);
    assert!(e.message().contains("1 <= T <= 32"), "{}", e.message());
    let e = status(client.classify(pb::ClassifyRequest { text: "x".repeat(100_000), ..Default::default() }).await);
    assert!(e.message().contains("over the limit"), "{}", e.message());
    // Token ids work as input too, and the service kept serving.
    let good = client.classify(ids(&[2.0, 9.0, 3.0])).await.unwrap().into_inner();
    assert!(good.confidence.is_finite());

    // The cloud names bad sequence states precisely.
    let mut raw = SplitInferenceClient::connect(cloud.url()).await.unwrap();
    let bad = pb::InferRequest {
        model_id: full.model_id().into(),
        model_fingerprint: full.fingerprint(SplitSide::Cloud, 1).unwrap(),
        split: 1,
        hidden: Some(codec::encode(&vec![0.1; 40 * 32], &[40, 32], pb::Encoding::F32)),
        ..Default::default()
    };
    let e = raw.infer(bad.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("expects [1..=32 tokens, 32]"), "{}", e.message());
    let info = raw.get_model_info(pb::ModelInfoRequest {}).await.unwrap().into_inner();
    assert!(info.features.iter().any(|f| f == pb::FEATURE_TOKEN_SEQUENCES));
    assert!(info.splits.iter().all(|s| s.sequence));
    // At K = 0 a cloud holding the whole model gets token ids.
    let whole = CloudHandle::start(CloudConfig::new(full.clone())).await.unwrap();
    let mut raw = SplitInferenceClient::connect(whole.url()).await.unwrap();
    let mut at0 = bad;
    at0.split = 0;
    at0.model_fingerprint = full.fingerprint(SplitSide::Cloud, 0).unwrap();
    at0.hidden = Some(codec::encode(&[2.0, 0.5], &[2], pb::Encoding::F32));
    let e = raw.infer(at0.clone()).await.unwrap_err();
    assert!(e.message().contains("token id at position 1 is 0.5"), "{}", e.message());
    at0.hidden = Some(codec::encode(&[2.0, 9.0, 3.0], &[3], pb::Encoding::F32));
    assert!(raw.infer(at0).await.unwrap().into_inner().confidence.is_finite());
    whole.stop().await.unwrap();

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    cloud.stop().await.unwrap();
}

#[test]
fn import_errors_name_the_problem() {
    let dir = tmp("enc-import-errors");
    let hf = dir.join("hf");
    TinyBert::default().write(&hf, 1).unwrap();
    let args = import_args(&hf, &dir.join("out"));
    // No labels and no classifier.
    let mut a = args.clone();
    a.labels.clear();
    let e = import_hf::import(&a).unwrap_err();
    assert!(format!("{e:#}").contains("--labels"), "{e:#}");
    // A layer that does not exist.
    let mut a = args.clone();
    a.exits = "1,5".into();
    assert!(format!("{:#}", import_hf::import(&a).unwrap_err()).contains("layer 5 does not exist"));
    // Unsupported model type.
    let config = std::fs::read_to_string(hf.join("config.json")).unwrap();
    std::fs::write(hf.join("config.json"), config.replace("\"bert\"", "\"gpt2\"")).unwrap();
    let e = format!("{:#}", import_hf::import(&args).unwrap_err());
    assert!(e.contains("unsupported model_type \"gpt2\""), "{e}");
    std::fs::write(hf.join("config.json"), &config).unwrap();
    // A missing tensor and a wrong shape.
    let st = hf.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&st, &candle_core::Device::Cpu).unwrap();
    let q = t.remove("encoder.layer.1.attention.self.query.weight").unwrap();
    candle_core::safetensors::save(&t, &st).unwrap();
    let e = format!("{:#}", import_hf::import(&args).unwrap_err());
    assert!(e.contains("missing tensor \"encoder.layer.1.attention.self.query.weight\""), "{e}");
    t.insert("encoder.layer.1.attention.self.query.weight".into(), q.narrow(0, 0, 8).unwrap());
    candle_core::safetensors::save(&t, &st).unwrap();
    let e = format!("{:#}", import_hf::import(&args).unwrap_err());
    assert!(e.contains("has shape [8, 32], expected [32, 32]"), "{e}");
}

#[test]
fn deebert_highway_heads_and_a_classifier_come_in_as_exits() {
    let dir = tmp("enc-highway");
    let hf = dir.join("hf");
    TinyBert { layers: 3, highway_classes: Some(3), prefixed: true, ..Default::default() }.write(&hf, 2).unwrap();
    let mut args = import_args(&hf, &dir.join("out"));
    args.labels.clear();
    let (bundle, report) = import_hf::import(&args).unwrap();
    assert_eq!(bundle.labels(), ["class0", "class1", "class2"]);
    assert!(report.exits.iter().all(|e| e.head == "checkpoint"), "{:?}", report.exits);
    assert_eq!(report.exits.iter().map(|e| e.after_layer).collect::<Vec<_>>(), [1, 2, 3]);
    // The final exit is the checkpoint's pooler + classifier on [CLS].
    let t = candle_core::safetensors::load(hf.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let w = bundle.tensors()["exits.2.3.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w, t["classifier.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let w = bundle.tensors()["exits.0.1.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let hw = t["bert.encoder.highway.0.pooler.dense.weight"].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(w, hw);
    // The tokenizer's digest is in the edge fingerprint: another tokenizer,
    // another fingerprint.
    let mut m = bundle.manifest().clone();
    m.input.tokenizer.as_mut().unwrap().sha256 = "0".repeat(64);
    let other = Bundle::from_parts(m, bundle.tensors().iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap();
    assert_ne!(other.fingerprint(SplitSide::Edge, 1), bundle.fingerprint(SplitSide::Edge, 1));
    assert_eq!(other.fingerprint(SplitSide::Cloud, 1), bundle.fingerprint(SplitSide::Cloud, 1));
    let e = other.with_tokenizer(bundle.text_encoder().unwrap().json().to_vec()).unwrap_err();
    assert!(e.to_string().contains("not the one this model was built with"), "{e}");
}
