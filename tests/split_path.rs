//! The split path end to end (issue: edge exits locally, the cloud finishes
//! over gRPC).

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use candle_core::{Device, Tensor};
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::{codec, Bundle, Executor};
use offramp_edge::run::run_dataset;
use offramp_edge::{Edge, EdgeConfig, Tier};
use offramp_proto as pb;
use offramp_proto::split_inference_client::SplitInferenceClient;
use tonic::Code;

use crate::support::*;

fn monolithic(full: &Bundle, data: &offramp_common::data::Dataset) -> Vec<(u32, u32)> {
    let policy = test_policy(full);
    let exec = Executor::new(Arc::new(full.clone()));
    let x = Tensor::from_slice(&data.images, (data.len(), 1, 28, 28), &Device::Cpu).unwrap();
    let out = exec.run(&x, 0..full.num_blocks(), &policy, vec![vec![]; data.len()]).unwrap();
    out.exited.into_iter().map(|r| r.map(|r| (r.prediction as u32, r.exit as u32)).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_inference_equals_monolithic_at_every_split_point() {
    let full = default_bundle();
    let data = sample(300);
    let expected = monolithic(&full, &data);
    let n = full.num_blocks();
    let dir = tmp("every-split");
    for k in 0..=n {
        // Split bundles saved and loaded again, each with its policy.toml:
        // what `offramp split` hands to the two sides.
        let (edge_dir, cloud_dir) = split_default(k, &dir.join(k.to_string()));
        let cloud = if k < n {
            Some(CloudHandle::start(CloudConfig::new(Bundle::load(&cloud_dir).unwrap())).await.unwrap())
        } else {
            None
        };
        let clouds = cloud.iter().map(|c| c.url()).collect();
        let edge_bundle = Bundle::load(&edge_dir).unwrap();
        let edge = Arc::new(Edge::start(EdgeConfig::new(edge_bundle, Some(k), clouds)).await.unwrap());
        let mut answers = run_dataset(edge, &data, 4, |_| {}).await;
        answers.sort_by_key(|a| a.id);
        assert_eq!(answers.len(), data.len());
        for (i, a) in answers.iter().enumerate() {
            assert_eq!((a.prediction.unwrap(), a.exit.unwrap()), expected[i], "K={k} input {i}: {a:?}");
            let exit_block = full.manifest().exits[a.exit.unwrap() as usize].after_block;
            let tier = if exit_block < k { Tier::Edge } else { Tier::Cloud };
            assert_eq!(a.tier, tier, "K={k} input {i}");
            assert_eq!(a.bytes_up > 0, tier == Tier::Cloud);
        }
        if let Some(c) = cloud {
            c.stop().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_the_server_keeps_serving() {
    let full = default_bundle();
    let mut cfg = CloudConfig::new(full.clone());
    cfg.max_payload = 16 * 1024;
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let mut client = SplitInferenceClient::connect(cloud.url()).await.unwrap();

    let good = request(&full, 1, 7);
    let ok = client.infer(good.clone()).await.unwrap().into_inner();
    assert_eq!(ok.request_id, 7);
    assert_eq!(ok.probabilities.len(), 10);

    let mut cases: Vec<(&str, pb::InferRequest, Code, &str)> = Vec::new();
    let mut r = good.clone();
    r.model_id = "resnet-152".into();
    cases.push(("unknown model", r, Code::NotFound, "unknown model"));
    let mut r = good.clone();
    r.model_fingerprint = "0123456789abcdef".into();
    cases.push(("fingerprint", r, Code::FailedPrecondition, "fingerprint mismatch"));
    let mut r = good.clone();
    r.split = 99;
    cases.push(("split", r, Code::InvalidArgument, "split index 99 out of range"));
    let mut r = request(&full, 2, 7);
    r.model_fingerprint = good.model_fingerprint.clone();
    cases.push(("fingerprint of another split", r, Code::FailedPrecondition, "fingerprint mismatch"));
    let mut r = good.clone();
    r.hidden.as_mut().unwrap().shape = vec![16, 7, 14];
    cases.push(("shape", r, Code::InvalidArgument, "expects [8, 14, 14]"));
    let mut r = good.clone();
    let t = r.hidden.as_mut().unwrap();
    t.data = t.data.slice(0..t.data.len() - 4);
    cases.push(("byte length", r, Code::InvalidArgument, "needs 6272"));
    let mut r = good.clone();
    let t = r.hidden.as_mut().unwrap();
    let mut bytes = t.data.to_vec();
    bytes[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    t.data = Bytes::from(bytes);
    cases.push(("nan", r, Code::InvalidArgument, "NaN at element 10"));
    let mut r = good.clone();
    r.hidden.as_mut().unwrap().data = Bytes::new();
    cases.push(("empty", r, Code::InvalidArgument, "empty"));
    let mut r = good.clone();
    r.hidden = None;
    cases.push(("missing tensor", r, Code::InvalidArgument, "no hidden-state tensor"));
    let mut r = good.clone();
    let big: Vec<f32> = vec![0.5; 8 * 28 * 28];
    r.hidden = Some(codec::encode(&big, &[8, 28, 28], pb::Encoding::F32));
    cases.push(("oversized", r, Code::InvalidArgument, "the limit is 16384"));
    let mut r = good.clone();
    r.hidden.as_mut().unwrap().encoding = 99;
    cases.push(("encoding", r, Code::InvalidArgument, "encoding 99"));
    let mut r = good.clone();
    r.history = Some(pb::ExitHistory { exits: vec![pb::ExitObservation { exit: 1, prediction: 3, confidence: 0.9 }] });
    cases.push(("history", r, Code::InvalidArgument, "impossible before split 1"));
    let mut r = good.clone();
    r.policy = vec![pb::ExitRuleSpec { exit: 1, rule: "dice".into(), threshold: 0.5, patience: 0 }];
    cases.push(("policy", r, Code::InvalidArgument, "dice"));

    for (name, req, code, text) in cases {
        let status = client.infer(req).await.expect_err(name);
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(status.message().contains(text), "{name}: {:?} lacks {text:?}", status.message());
        // A good request after each bad one still works.
        let again = client.infer(good.clone()).await.unwrap().into_inner();
        assert_eq!((again.prediction, again.exit), (ok.prediction, ok.exit), "after {name}");
    }

    // The stream: a bad request fails only its own response.
    let mut bad = good.clone();
    bad.request_id = 8;
    bad.split = 42;
    let mut good2 = good.clone();
    good2.request_id = 9;
    let responses =
        client.infer_stream(futures::stream::iter(vec![good.clone(), bad, good2])).await.unwrap().into_inner();
    let responses: Vec<pb::InferStreamResponse> =
        futures::StreamExt::collect::<Vec<_>>(responses).await.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(responses.len(), 3);
    for r in responses {
        match (r.request_id, r.result.unwrap()) {
            (7 | 9, pb::infer_stream_response::Result::Response(resp)) => assert_eq!(resp.prediction, ok.prediction),
            (8, pb::infer_stream_response::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32);
                assert!(e.message.contains("split index 42"));
            }
            other => panic!("unexpected stream answer {other:?}"),
        }
    }

    // Health says SERVING once loaded.
    let channel = tonic::transport::Endpoint::from_shared(cloud.url()).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest { service: "offramp.v1.SplitInference".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_refuses_a_cloud_holding_other_weights() {
    let full = default_bundle();
    let cloud = CloudHandle::start(CloudConfig::new(full.clone())).await.unwrap();
    // Same architecture and model id, other weights.
    let mut tensors: std::collections::HashMap<String, Tensor> =
        full.tensors().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let w = &tensors["blocks.2.bias"];
    tensors.insert("blocks.2.bias".into(), (w + 0.01).unwrap());
    let other = Bundle::from_parts(full.manifest().clone(), tensors).unwrap();
    let err = Edge::start(EdgeConfig::new(other, Some(1), vec![cloud.url()])).await.err().expect("handshake must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("different weights") && msg.contains("b-lenet-mnist"), "{msg}");
    cloud.stop().await.unwrap();
}

#[test]
fn edge_and_cloud_processes_over_grpc() {
    let dir = tmp("processes");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let cloud = CloudProcess::start(&cloud_dir, &[]);
    let out = Command::new(edge_binary())
        .args(["run", "--model", edge_dir.to_str().unwrap(), "--split", "1", "--cloud", &cloud.url()])
        .args(["--data", repo().join("models/mnist-sample").to_str().unwrap(), "--subset", "sample"])
        .args(["--limit", "120", "--concurrency", "3", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (summary, answers) = lines.split_last().unwrap();
    let ids: HashSet<u64> = answers.iter().map(|a| a["id"].as_u64().unwrap()).collect();
    assert_eq!((answers.len(), ids.len()), (120, 120), "every input answered exactly once");
    for a in answers {
        for key in ["id", "label", "prediction", "exit", "tier", "confidence", "latency_us", "bytes_up", "bytes_down"] {
            assert!(a.get(key).is_some(), "answer lacks {key}: {a}");
        }
    }
    let s = &summary["summary"];
    assert_eq!(s["n"], 120);
    assert!(s["accuracy"].as_f64().unwrap() > 0.95, "{s}");
    let tiers = &s["tier_counts"];
    assert_eq!(tiers["edge"].as_u64().unwrap() + tiers["cloud"].as_u64().unwrap(), 120);
    assert!(tiers["cloud"].as_u64().unwrap() > 0 && tiers["edge"].as_u64().unwrap() > 0, "{s}");
    for key in ["p50", "p90", "p99"] {
        assert!(s["latency_us"][key].as_f64().unwrap() > 0.0);
    }
}

/// The persistent offload stream (`--transport grpc-stream`) from the edge's
/// transport: many requests, concurrent, on one stream; a bad one fails only
/// its own answer; each request's `timeout_us` is the cloud's deadline for
/// it (a request still queued past it is dropped, answered
/// `DeadlineExceeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offload_stream_carries_many_requests_and_survives_a_bad_one() {
    use offramp_edge::transport::{ConnectConfig, Transport, TransportKind};
    use tonic::Code;

    let full = default_bundle();
    let (_, cloud_bundle) = split_bundles(1);
    let mut config = offramp_cloud::CloudConfig::new(cloud_bundle);
    // A long batch wait: a lone request waits 300 ms for company.
    config.batch.max_batch = 64;
    config.batch.batch_wait = Duration::from_millis(300);
    let cloud = offramp_cloud::CloudHandle::start(config).await.unwrap();
    let t = Transport::new(TransportKind::GrpcStream, &cloud.url(), &ConnectConfig::default(), &Default::default())
        .unwrap();
    let t = std::sync::Arc::new(t);
    let reqs = requests(&full, 1, 48);
    // Concurrent: the batch fills and goes before the wait.
    let mut tasks = tokio::task::JoinSet::new();
    for (i, r) in reqs.iter().cloned().enumerate() {
        let (t, mut r) = (t.clone(), r);
        if i == 20 {
            r.split = 9; // out of range: refused on its own
        }
        r.request_id = 7; // callers' ids may repeat: the stream keeps them apart
        tasks.spawn(async move { (i, t.infer(r, Duration::from_secs(5)).await) });
    }
    let mut ok = 0;
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.unwrap();
        if i == 20 {
            let e = r.unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            assert!(e.message().contains("split index 9 out of range"), "{e}");
        } else {
            assert_eq!(r.unwrap().request_id, 7, "the caller's id comes back");
            ok += 1;
        }
    }
    assert_eq!(ok, 47);
    // Alone, the request waits 300 ms for a batch; its 50 ms timeout
    // passes first. The edge stops waiting; so does the cloud.
    let e = t.infer(reqs[0].clone(), Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    // And the stream still serves.
    assert!(t.infer(reqs[1].clone(), Duration::from_secs(5)).await.is_ok());
    // The cloud's side of the deadline, seen by a plain stream client that
    // keeps waiting: the answer is DeadlineExceeded, at the request's
    // deadline, not after the batch wait.
    let mut client = offramp_proto::split_inference_client::SplitInferenceClient::connect(cloud.url()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client.infer_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let started = std::time::Instant::now();
    tx.send(pb::InferRequest { timeout_us: 50_000, ..reqs[2].clone() }).await.unwrap();
    let m = answers.message().await.unwrap().unwrap();
    let waited = started.elapsed();
    match m.result {
        Some(pb::infer_stream_response::Result::Error(e)) => {
            assert_eq!(Code::from(e.code), Code::DeadlineExceeded, "{e:?}");
            assert!(e.message.contains("deadline of 50000 µs passed"), "{e:?}");
        }
        other => panic!("expected a deadline error, got {other:?}"),
    }
    assert!(waited < Duration::from_millis(290), "answered after {waited:?}: the batch wait, not the deadline");
    drop(tx);
    cloud.stop().await.unwrap();
}

/// A caller that goes away before its answer withdraws its request, over
/// every transport (a dropped unary call, a `cancel` on the offload stream,
/// a stopped QUIC stream): the cloud drops it before compute. Seen in the
/// batch the next request is computed in: with a 300 ms batch wait, a
/// withdrawn request still queued would share it. On the stream, a cancel
/// is answered by nothing; on a unary call it is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_goes_away_is_dropped_before_compute_over_every_transport() {
    use offramp_edge::transport::{ConnectConfig, Transport, TransportKind};

    let full = default_bundle();
    let (_, cloud_bundle) = split_bundles(1);
    let cert = self_signed(&tmp("withdraw"));
    let mut config = CloudConfig::new(cloud_bundle);
    config.batch.max_batch = 64;
    config.batch.batch_wait = Duration::from_millis(300);
    config.quic = Some(offramp_cloud::config::QuicConfig { listen: any_loopback(), tls: cert.server_tls() });
    let cloud = CloudHandle::start(config).await.unwrap();
    let reqs = requests(&full, 1, 2);
    for kind in [TransportKind::Grpc, TransportKind::GrpcStream, TransportKind::Quic] {
        let (url, creds) = match kind {
            TransportKind::Quic => (cloud.quic_url().unwrap(), cert.credentials(None)),
            _ => (cloud.url(), Default::default()),
        };
        let t = Arc::new(Transport::new(kind, &url, &ConnectConfig::default(), &creds).unwrap());
        // Connected (and a lone request computed alone).
        assert_eq!(t.infer(reqs[1].clone(), Duration::from_secs(5)).await.unwrap().batch_size, 1);
        let gone = {
            let (t, r) = (t.clone(), reqs[0].clone());
            tokio::spawn(async move { t.infer(r, Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_millis(60)).await;
        gone.abort();
        tokio::time::sleep(Duration::from_millis(30)).await;
        let kept = t.infer(reqs[1].clone(), Duration::from_secs(5)).await.unwrap();
        assert_eq!(kept.batch_size, 1, "{kind:?}: the withdrawn request was computed beside the next one");
    }

    // The wire: a cancel is answered by nothing (the next answer is the
    // next request's), and withdraws only what it names.
    let mut client = SplitInferenceClient::connect(cloud.url()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = client.infer_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(pb::InferRequest { request_id: 41, ..reqs[0].clone() }).await.unwrap();
    tx.send(pb::InferRequest { request_id: 42, ..reqs[1].clone() }).await.unwrap();
    tx.send(pb::InferRequest { request_id: 41, cancel: true, ..Default::default() }).await.unwrap();
    tx.send(pb::InferRequest { request_id: 99, cancel: true, ..Default::default() }).await.unwrap();
    let m = answers.message().await.unwrap().unwrap();
    assert_eq!(m.request_id, 42, "{m:?}");
    match m.result {
        Some(pb::infer_stream_response::Result::Response(r)) => assert_eq!(r.batch_size, 1, "41 was withdrawn"),
        other => panic!("expected an answer, got {other:?}"),
    }
    drop(tx);
    assert!(answers.message().await.unwrap().is_none(), "nothing answers the cancels");
    // A unary cancel is refused by name.
    let e = client.infer(pb::InferRequest { cancel: true, ..reqs[0].clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("cancel is for InferStream requests"), "{e}");
    cloud.stop().await.unwrap();
}
