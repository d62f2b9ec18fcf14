//! One split runtime for every model kind (issue 27): a decoder's edge goes
//! through the same link layer (transports, handshake, refusals that never
//! heal), configuration (flags for the other kind refused by name) and
//! operations (metrics) as a classifier's. Real processes where the feature
//! is about processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use offramp_cloud::config::QuicConfig;
use offramp_cloud::{CloudConfig, CloudHandle};
use offramp_common::decoder::tiny::TinySpec;
use offramp_common::decoder::DecoderBundle;
use offramp_edge::generate::{GenOptions, Mode, Tier};
use offramp_edge::transport::TransportKind;

use crate::support::*;

/// A cloud holding `dirs` with gRPC and QUIC (self-signed `cert`).
async fn quic_decoder_cloud(dirs: Vec<std::path::PathBuf>, cert: &SelfSigned) -> CloudHandle {
    let mut cfg = CloudConfig::from_dirs(dirs);
    cfg.quic = Some(QuicConfig { listen: any_loopback(), tls: cert.server_tls() });
    CloudHandle::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_over_quic_gives_the_tokens_of_grpc() {
    let dir = tmp("one-runtime-quic");
    let cert = self_signed(&dir);
    let whole = tiny_decoder_with(&dir, TinySpec { layer_scale: 3.0, ..Default::default() });
    let tok = DecoderBundle::open(&whole).unwrap().tokenizer().clone();
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = quic_decoder_cloud(vec![cloud3], &cert).await;
    let quic_url = format!("quic://{}", cloud.quic_addr.unwrap());
    let sampled = GenOptions {
        sampling: offramp_common::decoder::sample::Sampling::from_temperature(0.8),
        seed: 11,
        ..greedy(16)
    };
    for mode in [Mode::Split, Mode::Speculative] {
        let grpc = decoder_edge(&edge3, mode, 3, vec![cloud.url()], |_| {});
        let quic = decoder_edge(&edge3, mode, 3, vec![quic_url.clone()], |c| {
            c.transport = TransportKind::Quic;
            c.credentials = cert.credentials(None);
        });
        assert_eq!(quic.connect().await.unwrap(), 1, "the QUIC cloud passes the decoder handshake");
        for prompt in DECODER_PROMPTS {
            let ids = tok.encode(prompt).unwrap();
            for opts in [greedy(16), sampled.clone()] {
                let a = grpc.generate(&ids, &opts, |_| {}).await.unwrap();
                let b = quic.generate(&ids, &opts, |_| {}).await.unwrap();
                assert_eq!(a.tokens, b.tokens, "{mode:?} {prompt:?} {:?}", opts.sampling);
                assert!(b.events.iter().all(|e| e.tier != Tier::Fallback), "{:?}", b.summary);
                assert_eq!(b.summary.sessions_opened, 1);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_mismatch_is_reported_once_and_never_retried() {
    let dir = tmp("one-runtime-mismatch");
    let mine = tiny_decoder(&dir.join("mine"));
    let other = tiny_decoder_with(&dir.join("other"), TinySpec { seed: 8, ..Default::default() });
    let (edge3, _) = split_decoder(&mine, 3);
    let tok = DecoderBundle::open(&mine).unwrap().tokenizer().clone();
    let ids = tok.encode(DECODER_PROMPTS[0]).unwrap();
    // A cloud reachable at start that holds other weights: the edge refuses
    // to start, naming the mismatch.
    let wrong = CloudHandle::start(CloudConfig::from_dirs(vec![other.clone()])).await.unwrap();
    let e = decoder_edge(&edge3, Mode::Split, 3, vec![wrong.url()], |_| {});
    let err = e.connect().await.unwrap_err().to_string();
    assert!(err.contains("fingerprint mismatch at split 3"), "{err}");
    // The same edge goes on without the cloud: every token from its exit,
    // the reason said, and the endpoint never dialled again, even after the
    // right weights appear behind the address (a refusal that cannot heal).
    let g = e.generate(&ids, &greedy(4), |_| {}).await.unwrap();
    assert!(g.events.iter().all(|e| e.tier == Tier::Fallback));
    assert!(g.events[0].reason.as_deref().unwrap().contains("fingerprint mismatch"), "{:?}", g.events[0]);
    assert_eq!(g.summary.sessions_opened, 0);
    let addr = wrong.addr;
    wrong.stop().await.unwrap();
    let mut right = CloudConfig::from_dirs(vec![mine.clone()]);
    right.listen = addr;
    let _right = CloudHandle::start(right).await.unwrap();
    let t = Instant::now();
    let g = e.generate(&ids, &greedy(4), |_| {}).await.unwrap();
    assert!(g.events.iter().all(|e| e.tier == Tier::Fallback), "not retried: {:?}", g.summary);
    assert!(t.elapsed() < patience(Duration::from_secs(5)));
    // A fresh edge against the right weights works.
    let fresh = decoder_edge(&edge3, Mode::Split, 3, vec![format!("http://{addr}")], |_| {});
    assert_eq!(fresh.connect().await.unwrap(), 1);
    let g = fresh.generate(&ids, &greedy(4), |_| {}).await.unwrap();
    assert!(g.events.iter().all(|e| e.tier == Tier::Cloud));
}

#[test]
fn a_generate_process_against_other_weights_says_so_once_and_exits() {
    let dir = tmp("one-runtime-mismatch-process");
    let mine = tiny_decoder(&dir.join("mine"));
    let other = tiny_decoder_with(&dir.join("other"), TinySpec { seed: 8, ..Default::default() });
    let (edge3, _) = split_decoder(&mine, 3);
    let cloud = CloudProcess::start(&other, &[]);
    let url = cloud.url();
    let started = Instant::now();
    let (ok, out, err) = edge_run(&[
        "generate",
        "--model",
        edge3.to_str().unwrap(),
        "--split",
        "3",
        "--cloud",
        &url,
        "--prompt",
        "hi",
        "--retry-every",
        "0s",
    ]);
    assert!(!ok, "{out}");
    assert_eq!(err.matches("fingerprint mismatch at split 3").count(), 1, "said once: {err}");
    assert!(err.contains("edge and cloud were built from different weights"), "{err}");
    assert!(started.elapsed() < patience(Duration::from_secs(20)), "no retry loop");
}

/// `offramp-edge ARGS...` to completion: (exit success, stdout, stderr).
fn edge_run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(edge_binary()).args(args).env("RUST_LOG", "warn").output().expect("run offramp-edge");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn flags_of_the_other_kind_are_refused_by_name() {
    let dir = tmp("one-runtime-flags");
    let whole = tiny_decoder(&dir);
    let model = whole.to_str().unwrap();
    let (ok, _, err) = edge_run(&[
        "generate",
        "--model",
        model,
        "--split",
        "6",
        "--prompt",
        "hi",
        "--policy",
        "p.toml",
        "--probabilities",
    ]);
    assert!(!ok);
    assert!(err.contains("--policy, --probabilities does not apply to"), "{err}");
    assert!(err.contains("a decoder bundle"), "{err}");
    let (ok, _, err) =
        edge_run(&["serve", "--model", model, "--http-listen", "127.0.0.1:0", "--accuracy-budget", "1%"]);
    assert!(!ok && err.contains("--accuracy-budget does not apply to"), "{err}");
    // And the other way round: decoder flags for a classifier.
    let lenet = default_model();
    let lenet = lenet.to_str().unwrap();
    let (ok, _, err) = edge_run(&["serve", "--model", lenet, "--mode", "speculative"]);
    assert!(!ok && err.contains("--mode does not apply to b-lenet-mnist, a classifier bundle"), "{err}");
    let (ok, _, err) = edge_run(&["serve", "--model", lenet, "--http-listen"]);
    assert!(!ok && err.contains("--http-listen serves the HTTP API of a decoder"), "{err}");
    let (ok, _, err) = edge_run(&["generate", "--model", lenet, "--prompt", "hi"]);
    assert!(!ok && err.contains("b-lenet-mnist is a classifier bundle"), "{err}");
    // All-edge generation with no flag that does not apply works.
    let (ok, out, err) = edge_run(&[
        "generate",
        "--model",
        model,
        "--mode",
        "all-edge",
        "--prompt",
        "hi",
        "--max-tokens",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"summary\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoder_edge_serving_http_exposes_its_token_counters() {
    let dir = tmp("one-runtime-metrics");
    let whole = tiny_decoder(&dir);
    let (edge3, cloud3) = split_decoder(&whole, 3);
    let cloud = CloudHandle::start(CloudConfig::from_dirs(vec![cloud3])).await.unwrap();
    let (metrics_listener, metrics) = tcp_listener().await;
    drop(metrics_listener);
    let metrics_arg = metrics.to_string();
    let mut child = Command::new(edge_binary())
        .args(["serve", "--model", edge3.to_str().unwrap(), "--split", "3", "--cloud", &cloud.url()])
        .args(["--http-listen", ANY_LOOPBACK, "--metrics-listen", &metrics_arg, "--transport", "grpc"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("the edge announces its API").unwrap();
    let api: std::net::SocketAddr = line
        .strip_prefix("OpenAI-compatible API listening on http://")
        .and_then(|r| r.strip_suffix("/v1"))
        .unwrap_or_else(|| panic!("{line}"))
        .parse()
        .unwrap();
    let body = r#"{"prompt":"the answer is","max_tokens":5}"#;
    let mut s = std::net::TcpStream::connect(api).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let scrape = eventually("the token counters", patience(Duration::from_secs(10)), async || {
        let text = http_get(metrics, "/metrics");
        anyhow::ensure!(text.contains("offramp_edge_generated_tokens_total{tier=\"cloud\"} 5"), "{text}");
        Ok(text)
    })
    .await;
    assert!(scrape.contains("offramp_edge_cloud_sessions_total 1"), "{scrape}");
    let _ = child.kill();
    let _ = child.wait();
}
