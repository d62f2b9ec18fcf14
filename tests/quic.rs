//! The QUIC transport (issue: QUIC transport and hidden-state compression):
//! real QUIC connections on loopback with a self-signed certificate made here
//! with rcgen, the same answers as gRPC, every encoding through a real cloud,
//! bad frames refused on their own stream only, and fallback and the breaker
//! when the QUIC cloud is absent or killed.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use offramp_cloud::config::QuicConfig;
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::data::Dataset;
use offramp_common::{codec, Bundle};
use offramp_edge::config::BreakerSettings;
use offramp_edge::offload::Reason;
use offramp_edge::quic::QuicClient;
use offramp_edge::run::{run_dataset, summarize};
use offramp_edge::transport::{ConnectConfig, TransportKind};
use offramp_edge::{Answer, Edge, EdgeConfig, Tier};
use offramp_proto as pb;
use offramp_transport::frame::{self, frame_status, Kind};
use offramp_transport::token::{Secret, TokenTable};
use tonic::Code;

use crate::support::*;

/// An in-process cloud for `bundle` with gRPC (TLS) and QUIC on loopback,
/// both presenting `cert`.
async fn start_cloud(bundle: Bundle, cert: &SelfSigned, tweak: impl FnOnce(&mut CloudConfig)) -> CloudHandle {
    let mut cfg = CloudConfig::new(bundle);
    let tls = cert.server_tls();
    cfg.tls = Some(tls.clone());
    cfg.quic = Some(QuicConfig { listen: any_loopback(), tls });
    tweak(&mut cfg);
    CloudHandle::start(cfg).await.unwrap()
}

/// A QUIC client for `url` trusting `cert`, with `token`.
fn quic_client(url: &str, cert: &SelfSigned, token: Option<&str>) -> QuicClient {
    QuicClient::new(url, &ConnectConfig::default(), &cert.credentials(token)).unwrap()
}

fn quic_edge(bundle: Bundle, url: String, cert: &SelfSigned) -> EdgeConfig {
    let mut c = edge_config(bundle, 1, vec![url]);
    c.transport = TransportKind::Quic;
    c.credentials = cert.credentials(None);
    c.deadline = Duration::from_secs(5);
    c
}

fn grpc_tls_edge(bundle: Bundle, cloud: &CloudHandle, cert: &SelfSigned) -> EdgeConfig {
    let mut c = edge_config(bundle, 1, vec![format!("https://{}", cloud.addr)]);
    c.credentials.tls = Some(cert.client_tls(Some("localhost")));
    c.deadline = Duration::from_secs(5);
    c
}

async fn answers(cfg: EdgeConfig, data: &Dataset) -> (Arc<Edge>, Vec<Answer>) {
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    let mut a = run_dataset(edge.clone(), data, 4, |_| {}).await;
    a.sort_by_key(|a| a.id);
    (edge, a)
}

const TOKEN: &str = "0123456789abcdef0123";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_inference_over_quic_equals_grpc_with_tokens() {
    let dir = tmp("quic-equals-grpc");
    let cert = self_signed(&dir);
    let (edge_bundle, cloud_bundle) = split_bundles(1);
    let tokens =
        TokenTable::parse(&format!("edge-1 {TOKEN}\nedge-2 fedcba9876543210fedc\n"), &dir.join("tokens")).unwrap();
    let cloud = start_cloud(cloud_bundle, &cert, |c| c.tokens = Some(tokens)).await;
    let data = sample(300);

    let mut g = grpc_tls_edge(edge_bundle.clone(), &cloud, &cert);
    g.credentials.token = Some(Secret::new(TOKEN));
    g.edge_id = "edge-1".into();
    let (_, over_grpc) = answers(g, &data).await;
    let mut q = quic_edge(edge_bundle, cloud.quic_url().unwrap(), &cert);
    q.credentials.token = Some(Secret::new(TOKEN));
    q.edge_id = "edge-1".into();
    let (edge, over_quic) = answers(q, &data).await;

    assert_eq!(over_quic.len(), data.len());
    for (g, q) in over_grpc.iter().zip(&over_quic) {
        assert_eq!(
            (g.id, g.prediction, g.exit, g.tier, g.bytes_up),
            (q.id, q.prediction, q.exit, q.tier, q.bytes_up),
            "input {}: {q:?}",
            g.id
        );
        assert!(q.tier != Tier::Fallback && q.tier != Tier::Error, "{q:?}");
        if q.tier == Tier::Cloud {
            assert_eq!(q.endpoint.as_deref(), cloud.quic_url().as_deref());
        }
    }
    let cloud_answers = over_quic.iter().filter(|a| a.tier == Tier::Cloud).count();
    assert!(cloud_answers > 0, "some digits went to the cloud over QUIC");
    let s = summarize(&edge, &over_quic);
    assert!(s.accuracy > 0.9, "{}", s.accuracy);

    // The token is checked with the same table: none or a wrong one is refused.
    let url = cloud.quic_url().unwrap();
    for token in [None, Some("not-the-token-at-all")] {
        let e = quic_client(&url, &cert, token).model_info(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    }

    // The identity is the token's, as over gRPC: the edge's own name or none
    // is fine, another edge's name is refused.
    let full = default_bundle();
    let client = quic_client(&url, &cert, Some(TOKEN));
    for (edge_id, allowed) in [("edge-1", true), ("", true), ("edge-2", false), ("edge-3", false)] {
        let mut req = request(&full, 1, 11);
        req.edge_id = edge_id.into();
        match (client.infer(&req, Duration::from_secs(5)).await, allowed) {
            (Ok(r), true) => assert_eq!(r.request_id, 11),
            (Err(e), false) => {
                assert_eq!(e.code(), Code::PermissionDenied, "edge_id {edge_id:?}: {e:?}");
                assert!(e.message().contains(edge_id) && e.message().contains("edge-1"), "{e:?}");
            }
            (r, _) => panic!("edge_id {edge_id:?}: {r:?}"),
        }
    }

    // The certificate is verified: a client trusting another CA cannot connect.
    let other = self_signed(&tmp("quic-other-ca"));
    let e = quic_client(&url, &other, None).model_info(Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("handshake"), "{e:?}");
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_encoding_round_trips_through_a_real_cloud_over_quic() {
    let dir = tmp("quic-encodings");
    let cert = self_signed(&dir);
    let (edge_bundle, cloud_bundle) = split_bundles(1);
    let cloud = start_cloud(cloud_bundle.clone(), &cert, |_| {}).await;
    let data = sample(300);
    let url = cloud.quic_url().unwrap();
    let (_, reference) = answers(grpc_tls_edge(edge_bundle.clone(), &cloud, &cert), &data).await;
    let mut bytes = Vec::new();
    for encoding in codec::ENCODINGS {
        let mut plain: Vec<Answer> = Vec::new();
        for compression in [pb::Compression::None, pb::Compression::Lz4] {
            let mut cfg = quic_edge(edge_bundle.clone(), url.clone(), &cert);
            cfg.encoding = encoding;
            cfg.compression = compression;
            let (_, got) = answers(cfg, &data).await;
            let name = format!("{}+{}", codec::encoding_name(encoding), codec::compression_name(compression));
            let agree = reference.iter().zip(&got).filter(|(r, g)| r.prediction == g.prediction).count();
            if encoding == pb::Encoding::F32 {
                assert_eq!(agree, data.len(), "f32 is exact");
                for (r, g) in reference.iter().zip(&got) {
                    assert_eq!((r.prediction, r.exit, r.tier), (g.prediction, g.exit, g.tier), "{name} input {}", r.id);
                }
            } else {
                assert!(agree * 100 >= data.len() * 99, "{name}: predictions agree on {agree} of {}", data.len());
            }
            assert!(got.iter().all(|a| a.tier == Tier::Edge || a.tier == Tier::Cloud), "{name}: no fallback");
            if compression == pb::Compression::Lz4 {
                // Lossless: the uncompressed encoding's answers (confidences up to
                // float noise from other batch compositions), never more bytes.
                for (p, g) in plain.iter().zip(&got) {
                    assert_eq!((p.prediction, p.exit), (g.prediction, g.exit), "{name}");
                    assert!((p.confidence - g.confidence).abs() < 1e-4, "{name}: {p:?} vs {g:?}");
                    assert!(g.bytes_up <= p.bytes_up, "{name}: {} > {}", g.bytes_up, p.bytes_up);
                }
            }
            let up: Vec<u64> = got.iter().filter(|a| a.tier == Tier::Cloud).map(|a| a.bytes_up).collect();
            assert!(!up.is_empty());
            bytes.push((name, up.iter().sum::<u64>() as f64 / up.len() as f64));
            plain = got;
        }
    }
    eprintln!("bytes per offloaded request: {bytes:?}");
    let b = |n: &str| bytes.iter().find(|(name, _)| name == n).unwrap().1;
    let f32 = b("f32+none");
    assert!(b("f16+none") < 0.6 * f32 && b("bf16+none") < 0.6 * f32, "{bytes:?}");
    assert!(b("int8+none") < 0.4 * f32, "{bytes:?}");
    cloud.stop().await.unwrap();

    // Negotiation: a cloud accepting f32 and int8 only refuses an f16 edge at
    // handshake, and an f16 payload sent anyway.
    let cloud = start_cloud(cloud_bundle, &cert, |c| c.encodings = vec![pb::Encoding::F32, pb::Encoding::Int8]).await;
    let mut cfg = quic_edge(edge_bundle, cloud.quic_url().unwrap(), &cert);
    cfg.encoding = pb::Encoding::F16;
    let err = Edge::start(cfg).await.err().expect("f16 is not accepted");
    let msg = format!("{err:#}");
    assert!(msg.contains("accepts hidden-state encodings [\"f32\", \"int8\"]") && msg.contains("--encoding"), "{msg}");
    let mut req = request(&default_bundle(), 1, 7);
    req.hidden = Some(f16_of(&req));
    let e = quic_client(&cloud.quic_url().unwrap(), &cert, None).infer(&req, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("this cloud accepts"), "{e:?}");
    cloud.stop().await.unwrap();
}

fn f16_of(req: &pb::InferRequest) -> pb::Tensor {
    let t = req.hidden.as_ref().unwrap();
    let (shape, values) = codec::decode(t, usize::MAX).unwrap();
    codec::encode(&values, &shape, pb::Encoding::F16)
}

/// A frame by hand: any kind byte, any payload.
fn raw_frame(kind: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_and_garbage_frames_get_error_frames_and_the_connection_keeps_serving() {
    let dir = tmp("quic-bad");
    let cert = self_signed(&dir);
    let full = default_bundle();
    let cloud = start_cloud(full.clone(), &cert, |c| c.max_payload = 16 * 1024).await;
    let client = quic_client(&cloud.quic_url().unwrap(), &cert, None);
    let t = Duration::from_secs(5);
    let good = request(&full, 1, 7);
    let ok = client.infer(&good, t).await.unwrap();
    assert_eq!((ok.request_id, ok.probabilities.len()), (7, full.num_classes()));
    let conn = client.connection_id().await.expect("connected");

    // Malformed hidden states: the same statuses as over gRPC.
    let mut payloads: Vec<(&str, pb::InferRequest, Code, &str)> = Vec::new();
    let mut r = good.clone();
    let h = r.hidden.as_mut().unwrap();
    h.data = h.data.slice(0..h.data.len() - 4);
    payloads.push(("byte length", r, Code::InvalidArgument, "needs"));
    let mut r = good.clone();
    let h = r.hidden.as_mut().unwrap();
    let mut b = h.data.to_vec();
    b[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    h.data = Bytes::from(b);
    payloads.push(("nan", r, Code::InvalidArgument, "NaN at element 10"));
    let mut r = good.clone();
    r.hidden.as_mut().unwrap().encoding = 99;
    payloads.push(("encoding", r, Code::InvalidArgument, "encoding 99"));
    let mut r = good.clone();
    let (shape, values) = codec::decode(good.hidden.as_ref().unwrap(), usize::MAX).unwrap();
    let mut q = codec::encode(&values, &shape, pb::Encoding::Int8);
    q.scales.pop();
    r.hidden = Some(q);
    payloads.push(("int8 without its scales", r, Code::InvalidArgument, "scales"));
    let mut r = good.clone();
    r.hidden.as_mut().unwrap().shape.push(2);
    payloads.push(("shape", r, Code::InvalidArgument, "shape"));
    let mut r = good.clone();
    r.hidden = Some(codec::encode(&vec![0.5; 8 * 28 * 28], &[8, 28, 28], pb::Encoding::F32));
    payloads.push(("oversized", r, Code::InvalidArgument, "the limit is 16384"));
    let mut r = good.clone();
    r.model_fingerprint = "0123456789abcdef".into();
    payloads.push(("fingerprint", r, Code::FailedPrecondition, "fingerprint mismatch"));
    for (name, req, code, text) in payloads {
        let e = client.infer(&req, t).await.expect_err(name);
        assert_eq!(e.code(), code, "{name}: {e:?}");
        assert!(e.message().contains(text), "{name}: {:?} lacks {text:?}", e.message());
        let again = client.infer(&good, t).await.unwrap();
        assert_eq!((again.prediction, again.exit), (ok.prediction, ok.exit), "after {name}");
    }

    // Garbage on the wire: an error frame on that stream, nothing else.
    let req_bytes = prost::Message::encode_to_vec(&good);
    let garbage: Vec<(&str, Bytes, &str)> = vec![
        ("unknown kind", raw_frame(0x7f, b"hello"), "unknown frame kind 0x7f"),
        ("short header", Bytes::from_static(&[0x02, 0x00]), "stream ended inside a frame"),
        ("short payload", raw_frame(0x02, &req_bytes).slice(0..100), "stream ended inside a frame"),
        ("protobuf garbage", raw_frame(0x02, &[0xff; 64]), "does not decode"),
        ("huge length", Bytes::from_static(&[0x02, 0xff, 0xff, 0xff, 0xff]), "exceeds the limit"),
        ("a response kind", raw_frame(0x82, &[]), "may not send"),
        ("nothing at all", Bytes::new(), "ended before a request frame"),
        ("two auth frames", [raw_frame(0x03, b"a"), raw_frame(0x03, b"b")].concat().into(), "more than one auth"),
        ("binary token", raw_frame(0x03, &[0xc3, 0x28]), "UTF-8"),
    ];
    for (name, bytes, text) in garbage {
        let f = client.send_raw(bytes).await.unwrap_or_else(|e| panic!("{name}: no error frame: {e:?}"));
        assert_eq!(f.kind, Kind::Error, "{name}");
        let e = frame_status(&f, "test");
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(text), "{name}: {:?} lacks {text:?}", e.message());
        let again = client.infer(&good, t).await.unwrap();
        assert_eq!(again.prediction, ok.prediction, "after {name}");
    }
    // A frame far over the limit whose body keeps coming: refused, the rest unread.
    let mut big = BytesMut::new();
    frame::put_raw(&mut big, Kind::InferRequest, &vec![0u8; 1 << 20]);
    let f = client.send_raw(big.freeze()).await.unwrap();
    assert!(frame_status(&f, "test").message().contains("exceeds the limit"));
    assert_eq!(client.connection_id().await, Some(conn), "every refusal kept the connection");
    let again = client.infer(&good, t).await.unwrap();
    assert_eq!(again.prediction, ok.prediction);

    // Concurrent requests share the connection.
    let client = Arc::new(client);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (c, mut r) = (client.clone(), good.clone());
            r.request_id = 100 + i;
            tokio::spawn(async move { c.infer(&r, Duration::from_secs(10)).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let r = task.await.unwrap().unwrap();
        assert_eq!((r.request_id, r.prediction), (100 + i as u64, ok.prediction));
    }
    assert_eq!(client.connection_id().await, Some(conn));

    // Graceful stop: the connection closes, the client says Unavailable.
    cloud.stop().await.unwrap();
    let e = client.infer(&good, t).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_quic_cloud_falls_back_and_the_breaker_opens() {
    // A UDP socket that swallows everything: no QUIC handshake ever completes.
    let (_hole, addr) = udp_socket().await;
    let cert = self_signed(&tmp("quic-absent"));
    let mut cfg = quic_edge(split_bundles(1).0, format!("quic://{addr}"), &cert);
    cfg.deadline = Duration::from_millis(150);
    cfg.connect_timeout = Duration::from_millis(100);
    cfg.breaker = BreakerSettings {
        backoff: Duration::from_secs(30),
        max_backoff: Duration::from_secs(30),
        ..Default::default()
    };
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    let answers = run_dataset(edge.clone(), &inputs(400), 1, |_| {}).await;
    let offloaded: Vec<_> = answers.iter().filter(|a| a.reason.is_some()).collect();
    assert!(offloaded.len() >= 5, "need several offloads, got {}", offloaded.len());
    assert!(answers.iter().all(|a| a.tier != Tier::Error && a.tier != Tier::Cloud));
    let failed = offloaded.iter().filter(|a| matches!(a.reason, Some(Reason::Unavailable | Reason::Timeout))).count();
    let open = offloaded.iter().filter(|a| a.reason == Some(Reason::CircuitOpen)).count();
    let reasons: Vec<_> = offloaded.iter().map(|a| (a.reason, a.latency_us, a.error.clone())).take(6).collect();
    assert!((1..=4).contains(&failed), "connects fail until the breaker opens: {failed}: {reasons:?}");
    assert_eq!(open, offloaded.len() - failed, "then every offload falls back at once");
    for a in offloaded.iter().filter(|a| a.reason == Some(Reason::CircuitOpen)) {
        // An open circuit waits on nothing: the answer is local compute,
        // never the deadline (compute time itself depends on the load).
        let waited = Duration::from_micros(a.latency_us.saturating_sub(a.edge_us));
        assert!(waited < edge.config.deadline, "circuit-open fallback waited {waited:?}: {a:?}");
        assert_eq!(a.tier, Tier::Fallback);
    }
    for a in offloaded.iter().filter(|a| a.reason != Some(Reason::CircuitOpen)) {
        assert!(a.latency_us.saturating_sub(a.edge_us) < 400_000, "the deadline holds: {} µs", a.latency_us);
    }
    assert!(summarize(&edge, &answers).breaker_transitions >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_quic_cloud_falls_back_the_breaker_opens_and_offloading_resumes_after_restart() {
    let dir = tmp("quic-kill");
    let cert = self_signed(&dir);
    let (_, cloud_dir) = split_default(1, &dir);
    let (cert_file, key_file) = (cert.cert.to_str().unwrap(), cert.key.to_str().unwrap());
    let mut cloud = CloudProcess::start(
        &cloud_dir,
        &["--quic-listen", ANY_LOOPBACK, "--tls-cert", cert_file, "--tls-key", key_file],
    );
    let mut cfg = quic_edge(split_bundles(1).0, cloud.quic_url(), &cert);
    cfg.deadline = Duration::from_millis(200);
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    // An input the branch is unsure about, so it always needs the cloud.
    let input = input_needing_cloud();
    assert_eq!(edge.classify(None, input.clone()).await.tier, Tier::Cloud);

    cloud.kill(); // SIGKILL: no CONNECTION_CLOSE, the edge must notice by itself
    let mut reasons = Vec::new();
    eventually("the breaker opens", Duration::from_secs(5), async || {
        let a = edge.classify(None, input.clone()).await;
        assert_eq!(a.tier, Tier::Fallback, "{a:?}");
        assert!(a.latency_us.saturating_sub(a.edge_us) < 450_000, "the deadline holds: {a:?}");
        let reason = a.reason.expect("a fallback has a reason");
        reasons.push(reason);
        anyhow::ensure!(reason == Reason::CircuitOpen, "fell back with {reason:?}");
        Ok(())
    })
    .await;
    let (_, before) = reasons.split_last().unwrap();
    assert!(!before.is_empty(), "offloads failed before the breaker opened: {reasons:?}");
    assert!(before.iter().all(|r| matches!(r, Reason::Timeout | Reason::Unavailable)), "{reasons:?}");
    // Back on the same addresses (QUIC's included).
    let _cloud = cloud.restarted();
    // The dead connection idles out, then the breaker's next probe reconnects.
    let resumed = until_offloading_resumes(&edge, &input, Duration::from_secs(2)).await;
    eprintln!("QUIC offloading resumed {resumed:?} after the cloud was back");
    assert!(summarize(&edge, &[]).breaker_transitions >= 2, "opened and closed again");
}

#[test]
fn edge_and_cloud_processes_over_quic_with_a_self_signed_certificate() {
    let dir = tmp("quic-processes");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let ca = dir.join("cloud-cert.pem");
    let cloud = CloudProcess::start(
        &cloud_dir,
        &["--quic-listen", ANY_LOOPBACK, "--self-signed", "--cert-out", ca.to_str().unwrap()],
    );
    let run = |extra: &[&str]| {
        Command::new(edge_binary())
            .args(["run", "--model", edge_dir.to_str().unwrap(), "--split", "1", "--cloud", &cloud.quic_url()])
            .args(["--transport", "quic", "--encoding", "int8"])
            .args(["--data", repo().join("models/mnist-sample").to_str().unwrap(), "--subset", "sample"])
            .args(["--limit", "100", "--concurrency", "3", "--json"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = run(&["--ca", ca.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let s = &summary["summary"];
    assert_eq!(s["n"], 100);
    assert!(s["tier_counts"]["cloud"].as_u64().unwrap() > 0, "{s}");
    assert!(s["tier_counts"].get("fallback").is_none_or(|f| f.as_u64() == Some(0)), "{s}");
    // Without --ca there is no QUIC: a clear error, not an unverified connection.
    let out = run(&[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--ca"), "{stderr}");
}
