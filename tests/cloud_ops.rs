//! The cloud under load and in operation: admission control, bearer tokens,
//! TLS, metrics, graceful shutdown.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offramp_cloud::CloudHandle;
use offramp_common::{codec, Bundle};
use offramp_edge::transport::{BearerToken, ConnectConfig, Credentials, Transport};
use offramp_edge::{Edge, EdgeConfig, Tier};
use offramp_proto as pb;
use tonic::Code;

use crate::support::*;

fn grpc(url: &str, token: Option<&str>) -> Transport {
    let secret = token.map(offramp_common::security::Secret::new);
    let creds = Credentials { tls: None, token: BearerToken::new(secret.as_ref()).unwrap() };
    Transport::grpc(url, &ConnectConfig::default(), &creds).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_answers_resource_exhausted_at_once() {
    let full = Bundle::load(default_model()).unwrap();
    let mut cfg = offramp_cloud::Config::for_model(default_model());
    // Two slots; each admitted request waits 300 ms for company, so the
    // rest find the queue full.
    cfg.max_queue = 2;
    cfg.max_batch = 64;
    cfg.batch_wait = Duration::from_millis(300);
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
    let dir = tmp("tokens");
    let table = dir.join("tokens");
    std::fs::write(&table, "edge-a 0123456789abcdef0123\nedge-b fedcba9876543210fedc\n").unwrap();
    let mut cfg = offramp_cloud::Config::for_model(default_model());
    cfg.auth_token_file = Some(table);
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let full = Bundle::load(default_model()).unwrap();
    let req = request(&full, 1, 1);
    for (token, allowed) in
        [(None, false), (Some("wrong-token-wrong-token"), false), (Some("fedcba9876543210fedc"), true)]
    {
        let r = grpc(&cloud.url(), token).infer(req.clone(), Duration::from_secs(5)).await;
        match (r, allowed) {
            (Ok(_), true) => {}
            (Err(s), false) => assert_eq!(s.code(), Code::Unauthenticated, "{s:?}"),
            (r, _) => panic!("token {token:?}: {r:?}"),
        }
    }
    // An edge with a token file works; without one it stops with a clear error.
    let token_file = dir.join("edge-a.token");
    std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
    let mut ecfg = EdgeConfig::new(default_model(), 1, vec![cloud.url()]);
    ecfg.token_file = Some(token_file);
    ecfg.policy = Some(test_policy(&dir));
    let edge = Edge::start(ecfg).await.unwrap();
    let data = sample(50);
    let mut tiers = Vec::new();
    for i in 0..data.len() {
        tiers.push(edge.classify(None, data.image(i).to_vec()).await.tier);
    }
    assert!(tiers.contains(&Tier::Cloud) && !tiers.contains(&Tier::Fallback), "{tiers:?}");
    let err = Edge::start(EdgeConfig::new(default_model(), 1, vec![cloud.url()])).await.err().unwrap();
    assert!(format!("{err:#}").contains("refused this edge's credentials"), "{err:#}");
    cloud.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_a_trusted_ca() {
    let dir = tmp("tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let mut cfg = offramp_cloud::Config::for_model(default_model());
    cfg.tls.tls_cert = Some(dir.join("cert.pem"));
    cfg.tls.tls_key = Some(dir.join("key.pem"));
    let cloud = CloudHandle::start(cfg).await.unwrap();
    let url = format!("https://localhost:{}", cloud.addr.port());
    let mut ecfg = EdgeConfig::new(default_model(), 1, vec![url.clone()]);
    ecfg.tls.ca = Some(dir.join("cert.pem"));
    let edge = Edge::start(ecfg).await.unwrap();
    let offloader = edge.offloader().unwrap();
    assert_eq!(offloader.handshake_all(Duration::from_secs(5)).await.unwrap(), 1, "TLS handshake and model check");
    // Plain-text clients cannot talk to it; an edge without the CA does not trust it.
    let plain = grpc(&format!("http://127.0.0.1:{}", cloud.addr.port()), None);
    assert!(plain.model_info(Duration::from_secs(2)).await.is_err());
    let untrusted = Edge::start(EdgeConfig::new(default_model(), 1, vec![url])).await.unwrap();
    assert_eq!(untrusted.offloader().unwrap().handshake_all(Duration::from_secs(2)).await.unwrap(), 0);
    cloud.stop().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_graceful_shutdown_of_a_cloud_process() {
    let dir = tmp("drain");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cloud = CloudProcess::start(
        &cloud_dir,
        "127.0.0.1:0",
        &["--metrics-listen", &metrics, "--drain-timeout", "5s", "--batch-wait", "20ms"],
    );
    let edge = Arc::new(Edge::start(EdgeConfig::new(&edge_dir, 1, vec![cloud.url()])).await.unwrap());
    let data = sample(300);
    let answers = offramp_edge::run::run_dataset(edge.clone(), &data, 2, |_| {}).await;
    assert!(answers.iter().any(|a| a.tier == Tier::Cloud));
    let page = http_get(&metrics, "/metrics");
    for name in ["offramp_cloud_requests_total", "offramp_cloud_compute_seconds", "offramp_cloud_batch_size"] {
        assert!(page.contains(name), "metrics page lacks {name}");
    }
    // In-flight work finishes after SIGTERM; the process exits cleanly.
    let full = Bundle::load(default_model()).unwrap();
    let t = grpc(&cloud.url(), None);
    let req = request(&full, 1, 1);
    let inflight: Vec<_> = (0..32)
        .map(|_| {
            let (t, req) = (t.clone(), req.clone());
            tokio::spawn(async move { t.infer(req, Duration::from_secs(10)).await })
        })
        .collect();
    // Let them reach the cloud: admitted requests wait up to 20 ms for a batch,
    // so they are in flight when the signal lands.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let pid = cloud.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut ok = 0;
    for c in inflight {
        match c.await.unwrap() {
            Ok(_) => ok += 1,
            // Requests that arrived after the signal are refused, never dropped silently.
            Err(s) => assert!(matches!(s.code(), Code::Unavailable | Code::Cancelled), "{s:?}"),
        }
    }
    assert!(ok > 0, "in-flight requests completed");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = cloud.child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "cloud drained within its drain timeout");
        std::thread::sleep(Duration::from_millis(20));
    };
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
    let full = Bundle::load(default_model()).unwrap();
    let reqs = requests(&full, 1, 48);
    let mut cfg = offramp_cloud::Config::for_model(default_model());
    cfg.max_batch = 16;
    cfg.batch_wait = Duration::from_millis(20);
    let batched = CloudHandle::start(cfg).await.unwrap();
    let a = answers(&batched, &reqs).await;
    let mut cfg = offramp_cloud::Config::for_model(default_model());
    cfg.max_batch = 1;
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
    let dir = tmp("classify");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let cloud = CloudHandle::start(offramp_cloud::Config::for_model(&cloud_dir)).await.unwrap();
    let edge = Arc::new(Edge::start(EdgeConfig::new(&edge_dir, 1, vec![cloud.url()])).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(offramp_edge::serve::serve(edge, listener, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = ClassifyClient::new(channel);
    let data = sample(60);
    let mut tiers = std::collections::BTreeSet::new();
    let mut correct = 0;
    for i in 0..data.len() {
        let input = codec::encode(data.image(i), &[1, 28, 28], pb::Encoding::F32);
        let r = client
            .classify(pb::ClassifyRequest { input: Some(input), deadline_ms: 1000, want_probabilities: false })
            .await
            .unwrap()
            .into_inner();
        correct += usize::from(r.prediction == data.labels[i] as u32);
        assert_eq!(r.label, r.prediction.to_string());
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
