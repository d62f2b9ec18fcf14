//! The cloud under load and in operation: admission control, bearer tokens
//! and the identity they prove, TLS, metrics, graceful shutdown.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offramp_cloud::config::BatchConfig;
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::codec;
use offramp_edge::offload::Reason;
use offramp_edge::transport::{ConnectConfig, Credentials, Transport};
use offramp_edge::{Edge, Tier};
use offramp_proto as pb;
use offramp_transport::token::{Secret, TokenTable};
use tonic::Code;

use crate::support::*;

/// A unary client without the edge's throttle: these tests are about what
/// the cloud answers.
fn grpc(url: &str, token: Option<&str>) -> Transport {
    let creds = Credentials { tls: None, token: token.map(Secret::new) };
    Transport::grpc(url, &ConnectConfig { throttle: None, ..Default::default() }, &creds).unwrap()
}

/// Two edges' tokens, as `--auth-token-file` holds them.
const TOKENS: &str = "edge-a 0123456789abcdef0123\nedge-b fedcba9876543210fedc\n";
const TOKEN_A: &str = "0123456789abcdef0123";
const TOKEN_B: &str = "fedcba9876543210fedc";

fn token_table() -> TokenTable {
    TokenTable::parse(TOKENS, Path::new("tokens")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_answers_resource_exhausted_at_once() {
    let full = default_bundle();
    let mut cfg = CloudConfig::new(full.clone());
    // Two slots; each admitted request waits 300 ms for company, so the
    // rest find the queue full.
    cfg.batch =
        BatchConfig { max_queue: 2, max_batch: 64, batch_wait: Duration::from_millis(300), ..Default::default() };
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let t = grpc(&cloud.url(), None);
    let req = request(&full, 1, 1);
    let t0 = Instant::now();
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (t, req) = (t.clone(), req.clone());
            tokio::spawn(async move { t.infer(req, Duration::from_secs(10)).await })
        })
        .collect();
    let mut ok = 0;
    let mut exhausted = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("queue full"), "{s:?}");
                exhausted += 1
            }
            Err(s) => panic!("unexpected status {s:?}"),
        }
    }
    eprintln!("admission: ok {ok}, exhausted {exhausted}, elapsed {:?}", t0.elapsed());
    assert_eq!(ok + exhausted, 64);
    assert!(ok >= 2 && exhausted > 0, "ok {ok}, exhausted {exhausted}");
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_admit_known_edges_only() {
    let full = default_bundle();
    let mut cfg = CloudConfig::new(full.clone());
    cfg.tokens = Some(token_table());
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let mut req = request(&full, 1, 1);
    req.edge_id = "edge-b".into();
    for (token, allowed) in [(None, false), (Some("wrong-token-wrong-token"), false), (Some(TOKEN_B), true)] {
        let r = grpc(&cloud.url(), token).infer(req.clone(), Duration::from_secs(5)).await;
        match (r, allowed) {
            (Ok(_), true) => {}
            (Err(s), false) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            (r, _) => panic!("token {token:?}: {r:?}"),
        }
    }
    // An edge with its token (read from a file, as --token-file does) works;
    // without one it stops with a clear error.
    let token_file = tmp("tokens").join("edge-a.token");
    std::fs::write(&token_file, format!("{TOKEN_A}\n")).unwrap();
    let mut ecfg = edge_config(full.clone(), 1, vec![cloud.url()]);
    ecfg.credentials.token = Some(Secret::from_file(&token_file).unwrap());
    ecfg.edge_id = "edge-a".into();
    let edge = Edge::start(ecfg).await.unwrap();
    let data = sample(50);
    let mut tiers = Vec::new();
    for i in 0..data.len() {
        tiers.push(edge.classify(None, data.image(i).to_vec()).await.tier);
    }
    assert!(tiers.contains(&Tier::Cloud) && !tiers.contains(&Tier::Fallback), "{tiers:?}");
    let err = Edge::start(edge_config(full, 1, vec![cloud.url()])).await.err().unwrap();
    assert!(format!("{err:#}").contains("refused this edge's credentials"), "{err:#}");
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_id_must_match_the_identity_its_token_proves() {
    let full = default_bundle();
    let mut cfg = CloudConfig::new(full.clone());
    cfg.tokens = Some(token_table());
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let t = grpc(&cloud.url(), Some(TOKEN_B));
    let req = |edge_id: &str| {
        let mut r = request(&full, 1, 3);
        r.edge_id = edge_id.into();
        r
    };
    // The token proves edge-b: its own name and no name are fine.
    for ok in ["edge-b", ""] {
        let r = t.infer(req(ok), Duration::from_secs(5)).await.unwrap_or_else(|s| panic!("edge_id {ok:?}: {s:?}"));
        assert_eq!(r.request_id, 3);
    }
    // Another edge's name (known or not) is refused: the caller is who its token says.
    for other in ["edge-a", "edge-c"] {
        let s = t.infer(req(other), Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "edge_id {other:?}: {s:?}");
        assert!(s.message().contains(other) && s.message().contains("edge-b"), "{s:?}");
    }

    // An edge configured with another edge's name starts (the handshake
    // carries no edge id) but every offload is rejected and falls back.
    let mut ecfg = edge_config(full.clone(), 1, vec![cloud.url()]);
    ecfg.credentials.token = Some(Secret::new(TOKEN_B));
    ecfg.edge_id = "edge-a".into();
    let edge = Edge::start(ecfg).await.unwrap();
    let input = input_needing_cloud();
    let a = edge.classify(None, input.clone()).await;
    assert_eq!((a.tier, a.reason), (Tier::Fallback, Some(Reason::Rejected)), "{a:?}");
    assert!(a.error.as_deref().is_some_and(|e| e.contains("edge-a")), "{a:?}");
    let mut ecfg = edge_config(full, 1, vec![cloud.url()]);
    ecfg.credentials.token = Some(Secret::new(TOKEN_B));
    ecfg.edge_id = "edge-b".into();
    let edge = Edge::start(ecfg).await.unwrap();
    assert_eq!(edge.classify(None, input).await.tier, Tier::Cloud);
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_a_trusted_ca() {
    let dir = tmp("tls");
    let cert = self_signed(&dir);
    let mut cfg = CloudConfig::new(default_bundle());
    cfg.tls = Some(cert.server_tls());
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let url = format!("https://localhost:{}", cloud.addr.port());
    let mut ecfg = edge_config(default_bundle(), 1, vec![url.clone()]);
    ecfg.credentials.tls = Some(cert.client_tls(None));
    let edge = Edge::start(ecfg).await.unwrap();
    let offloader = edge.offloader().unwrap();
    assert_eq!(offloader.handshake_all(Duration::from_secs(5)).await.unwrap(), 1, "TLS handshake and model check");
    // Plain-text clients cannot talk to it; an edge without the CA, or
    // trusting another one, does not trust it.
    let plain = grpc(&format!("http://127.0.0.1:{}", cloud.addr.port()), None);
    assert!(plain.model_info(Duration::from_secs(2)).await.is_err());
    let untrusted = Edge::start(edge_config(default_bundle(), 1, vec![url.clone()])).await.unwrap();
    assert_eq!(untrusted.offloader().unwrap().handshake_all(Duration::from_secs(2)).await.unwrap(), 0);
    let mut other = edge_config(default_bundle(), 1, vec![url]);
    other.credentials.tls = Some(self_signed(&dir.join("other")).client_tls(None));
    let other = Edge::start(other).await.unwrap();
    assert_eq!(other.offloader().unwrap().handshake_all(Duration::from_secs(2)).await.unwrap(), 0);
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_graceful_shutdown_of_a_cloud_process() {
    let dir = tmp("drain");
    split_default(1, &dir); // dir/cloud, named by the config file
                            // Settings from a --config file (paths relative to it), as a deployment
                            // would give them; every listener on port 0.
    let config = dir.join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            "model = [\"cloud\"]\nlisten = \"{ANY_LOOPBACK}\"\nmetrics-listen = \"{ANY_LOOPBACK}\"\n\
             drain-timeout = \"5s\"\nbatch-wait = \"20ms\"\n"
        ),
    )
    .unwrap();
    let mut cloud = CloudProcess::with_args(&["--config", config.to_str().unwrap()]);
    // The exporter does not announce its port: it is the process's other listener.
    let others: Vec<_> = listening_tcp(cloud.child.id()).into_iter().filter(|a| *a != cloud.addr).collect();
    let [metrics] = others[..] else { panic!("one metrics listener besides gRPC {}: {others:?}", cloud.addr) };
    let (edge_bundle, _) = split_bundles(1);
    let edge = Arc::new(Edge::start(edge_config(edge_bundle, 1, vec![cloud.url()])).await.unwrap());
    let data = sample(300);
    let answers = offramp_edge::run::run_dataset(edge.clone(), &data, 2, |_| {}).await;
    assert!(answers.iter().any(|a| a.tier == Tier::Cloud));
    let page = http_get(metrics, "/metrics");
    for name in ["offramp_cloud_requests_total", "offramp_cloud_compute_seconds", "offramp_cloud_batch_size"] {
        assert!(page.contains(name), "metrics page lacks {name}");
    }
    // In-flight work finishes after SIGTERM; the process exits cleanly.
    let full = default_bundle();
    let t = grpc(&cloud.url(), None);
    let req = request(&full, 1, 1);
    // Steady traffic from 8 senders, each request waiting up to 20 ms for a
    // batch, so requests are in flight at any moment; once every sender has
    // had an answer, SIGTERM lands in the middle of that traffic.
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (t, req, answered) = (t.clone(), req.clone(), answered.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    let started = Instant::now();
                    let r = t.infer(req.clone(), Duration::from_secs(10)).await;
                    let done = r.is_ok();
                    outcomes.push((started, Instant::now(), r.map(|_| ()).map_err(|s| s.code())));
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if !done {
                        return outcomes;
                    }
                }
            })
        })
        .collect();
    eventually("every sender has had answers", Duration::from_secs(10), async || {
        let n = answered.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(n >= 16, "{n} answers so far");
        Ok(())
    })
    .await;
    let pid = cloud.child.id().to_string();
    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut drained = 0;
    for s in senders {
        for (started, finished, outcome) in s.await.unwrap() {
            match outcome {
                // In flight when the signal landed, and answered: drained.
                Ok(()) if started < signalled && finished > signalled => drained += 1,
                Ok(()) => {}
                // After the signal, requests are refused (or the connection is
                // gone), never dropped silently.
                Err(code) => assert!(
                    matches!(code, Code::Unavailable | Code::Cancelled),
                    "a request {:?} after the signal failed with {code:?}",
                    started.checked_duration_since(signalled)
                ),
            }
        }
    }
    assert!(drained > 0, "requests in flight at SIGTERM were answered, not dropped");
    // The drain timeout is 5 s: the process is gone well within 10 s.
    let status = eventually("the cloud exits after SIGTERM", Duration::from_secs(10), async || {
        cloud.child.try_wait()?.ok_or_else(|| anyhow::anyhow!("still running"))
    })
    .await;
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

async fn answers(cloud: &CloudHandle, reqs: &[pb::InferRequest]) -> Vec<pb::InferResponse> {
    let t = grpc(&cloud.url(), None);
    let calls: Vec<_> = reqs
        .iter()
        .map(|r| {
            let (t, r) = (t.clone(), r.clone());
            tokio::spawn(async move { t.infer(r, Duration::from_secs(10)).await.unwrap() })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batching_groups_concurrent_requests_and_answers_like_batch_one() {
    let full = default_bundle();
    let reqs = requests(&full, 1, 48);
    let mut cfg = CloudConfig::new(full.clone());
    cfg.batch = BatchConfig { max_batch: 16, batch_wait: Duration::from_millis(20), ..Default::default() };
    let batched = CloudHandle::start(cfg).await.unwrap();
    let a = answers(&batched, &reqs).await;
    let mut cfg = CloudConfig::new(full);
    cfg.batch = BatchConfig { max_batch: 1, ..Default::default() };
    let single = CloudHandle::start(cfg).await.unwrap();
    let b = answers(&single, &reqs).await;
    assert!(a.iter().any(|r| r.batch_size > 1), "concurrent requests were batched");
    assert!(a.iter().all(|r| r.batch_size <= 16));
    assert!(b.iter().all(|r| r.batch_size == 1));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((x.request_id, x.prediction, x.exit), (y.request_id, y.prediction, y.exit));
        for (p, q) in x.probabilities.iter().zip(&y.probabilities) {
            assert!((p - q).abs() < 1e-5, "request {}: {p} vs {q}", x.request_id);
        }
    }
    batched.stop().await.unwrap();
    single.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_classify_api_answers_applications() {
    use offramp_proto::classify_client::ClassifyClient;
    let (edge_bundle, cloud_bundle) = split_bundles(1);
    let cloud = CloudHandle::start(CloudConfig::new(cloud_bundle)).await.unwrap();
    let edge = Arc::new(Edge::start(edge_config(edge_bundle, 1, vec![cloud.url()])).await.unwrap());
    let (listener, addr) = tcp_listener().await;
    tokio::spawn(offramp_edge::serve::serve(edge, listener, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = ClassifyClient::new(channel);
    let data = sample(60);
    let mut tiers = std::collections::BTreeSet::new();
    let mut correct = 0;
    for i in 0..data.len() {
        let input = codec::encode(data.image(i), &[1, 28, 28], pb::Encoding::F32);
        let r = client
            .classify(pb::ClassifyRequest {
                input: Some(input),
                deadline_ms: 1000,
                want_probabilities: false,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        correct += usize::from(r.prediction == data.labels[i] as u32);
        assert_eq!(r.label, r.prediction.to_string());
        // What the answer was decided with: the split and the branch's
        // threshold (the test policy's), and the encoding of an offload.
        assert_eq!((r.split, r.thresholds.as_slice()), (1, &[0.999f32][..]), "{r:?}");
        assert_eq!(r.encoding, if r.tier == "cloud" { "f32" } else { "" }, "{r:?}");
        tiers.insert(r.tier);
    }
    assert!(correct >= 58, "{correct}/60");
    assert!(tiers.contains("edge") && tiers.contains("cloud"), "{tiers:?}");
    let bad = codec::encode(&[0.5; 100], &[1, 10, 10], pb::Encoding::F32);
    let e = client.classify(pb::ClassifyRequest { input: Some(bad), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("expects [1, 28, 28]"), "{}", e.message());
    cloud.stop().await.unwrap();
}
