//! Offline fallback: the edge always answers, and nothing is lost when the
//! cloud fails (real cloud processes, SIGKILL, stalls, restarts, failover).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offramp_common::Bundle;
use offramp_edge::config::BreakerSettings;
use offramp_edge::offload::Reason;
use offramp_edge::run::{run_dataset, summarize};
use offramp_edge::transport::TransportKind;
use offramp_edge::{Edge, EdgeConfig, FallbackMode, Tier};

use crate::support::*;

/// An edge for `bundle` at K = 1 with the test policy and a deadline.
fn config(bundle: Bundle, clouds: Vec<String>, deadline_ms: u64) -> EdgeConfig {
    let mut c = edge_config(bundle, 1, clouds);
    c.deadline = Duration::from_millis(deadline_ms);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_killed_mid_run_every_input_answered_once() {
    cloud_killed_mid_run(TransportKind::Grpc).await;
}

/// The same over one persistent stream: its breaking fails every request
/// waiting on it at once, and they fall back within the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_offload_stream_falls_back_within_the_deadline() {
    cloud_killed_mid_run(TransportKind::GrpcStream).await;
}

async fn cloud_killed_mid_run(transport: TransportKind) {
    let dir = tmp(&format!("kill-{transport:?}"));
    let (_, cloud_dir) = split_default(1, &dir);
    let mut cloud = CloudProcess::start(&cloud_dir, &[]);
    let deadline = Duration::from_millis(300);
    let mut cfg = config(split_bundles(1).0, vec![cloud.url()], 300);
    cfg.transport = transport;
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    let data = inputs(2500);
    // When each answer completed, and which tier gave it.
    let mut completed: Vec<(Instant, Tier)> = Vec::with_capacity(data.len());
    let mut killed_at = None;
    let answers = run_dataset(edge.clone(), &data, 4, |a| {
        completed.push((Instant::now(), a.tier));
        if completed.len() == 800 {
            cloud.kill(); // SIGKILL, and reaped: nothing answers from here on
            killed_at = Some(Instant::now());
        }
    })
    .await;
    let killed_at = killed_at.expect("killed mid-run");
    let ids: HashSet<u64> = answers.iter().map(|a| a.id).collect();
    assert_eq!((answers.len(), ids.len()), (2500, 2500), "every input answered exactly once");
    assert!(answers.iter().all(|a| a.tier != Tier::Error), "best-local always answers");
    // No answer waits longer than the deadline plus a margin (local compute + scheduling).
    let margin = patience(Duration::from_millis(250));
    for a in &answers {
        assert!(
            Duration::from_micros(a.latency_us.saturating_sub(a.edge_us)) <= deadline + margin,
            "answer {} waited {} µs",
            a.id,
            a.latency_us
        );
    }
    let (before, after) = completed.split_at(800);
    assert!(before.iter().any(|(_, t)| *t == Tier::Cloud), "the cloud answered before the kill");
    // After the kill the edge falls back within the deadline: the first
    // fallback answer comes no later than deadline + margin after it, and a
    // request in flight at the kill ends by its deadline, so no cloud answer
    // completes after that.
    let since_kill = |at: &Instant| at.saturating_duration_since(killed_at);
    let first_fallback = after
        .iter()
        .find(|(_, t)| *t == Tier::Fallback)
        .map(|(at, _)| since_kill(at))
        .expect("answers after the kill fall back");
    assert!(first_fallback <= deadline + margin, "first fallback {first_fallback:?} after the kill");
    let late_cloud: Vec<Duration> =
        after.iter().filter(|(_, t)| *t == Tier::Cloud).map(|(at, _)| since_kill(at)).collect();
    assert!(late_cloud.iter().all(|d| *d <= deadline + margin), "cloud answers after the kill: {late_cloud:?}");
    eprintln!("first fallback {first_fallback:?} after the kill; {} cloud answers after it", late_cloud.len());
    let s = summarize(&edge, &answers);
    assert!(s.fallbacks.values().sum::<usize>() > 0, "{:?}", s.fallbacks);
    assert!(s.breaker_transitions > 0, "the breaker opened");
    assert!(s.accuracy > 0.9, "fallback answers are still mostly right: {}", s.accuracy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_cloud_deadlines_fire_and_the_breaker_opens() {
    // Accepts connections, never answers.
    let (stall, addr) = tcp_listener().await;
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = stall.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    let mut cfg = config(split_bundles(1).0, vec![format!("http://{addr}")], 150);
    cfg.breaker = BreakerSettings {
        backoff: Duration::from_secs(30),
        max_backoff: Duration::from_secs(30),
        ..Default::default()
    };
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    // Only inputs that need the cloud (low branch confidence) matter here; run enough.
    let answers = run_dataset(edge.clone(), &inputs(400), 1, |_| {}).await;
    let offloaded: Vec<_> = answers.iter().filter(|a| a.reason.is_some()).collect();
    assert!(offloaded.len() >= 5, "need several offloads, got {}", offloaded.len());
    let timeouts = offloaded.iter().filter(|a| a.reason == Some(Reason::Timeout)).count();
    let open = offloaded.iter().filter(|a| a.reason == Some(Reason::CircuitOpen)).count();
    let reasons: Vec<_> = offloaded.iter().map(|a| (a.reason, a.latency_us, a.error.clone())).take(8).collect();
    assert!((1..=4).contains(&timeouts), "deadlines fire until the breaker opens: {timeouts}: {reasons:?}");
    assert_eq!(open, offloaded.len() - timeouts, "then every offload falls back at once");
    for a in offloaded.iter().filter(|a| a.reason == Some(Reason::CircuitOpen)) {
        // An open circuit waits on nothing: the answer is local compute,
        // never the deadline (compute time itself depends on the load).
        let waited = Duration::from_micros(a.latency_us.saturating_sub(a.edge_us));
        assert!(waited < edge.config.deadline, "circuit-open fallback waited {waited:?}: {a:?}");
        assert_eq!(a.tier, Tier::Fallback);
    }
    let s = summarize(&edge, &answers);
    assert_eq!(s.fallbacks.get("timeout"), Some(&timeouts));
    assert!(s.breaker_transitions >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloading_resumes_after_the_cloud_restarts_on_the_same_address() {
    let dir = tmp("restart");
    let (_, cloud_dir) = split_default(1, &dir);
    let mut cloud = CloudProcess::start(&cloud_dir, &[]);
    let edge = Arc::new(Edge::start(config(split_bundles(1).0, vec![cloud.url()], 200)).await.unwrap());
    // An input the branch is unsure about, so it always needs the cloud.
    let input = input_needing_cloud();
    assert_eq!(edge.classify(None, input.clone()).await.tier, Tier::Cloud);
    cloud.kill();
    // Every answer falls back until the breaker opens.
    eventually("the breaker opens", Duration::from_secs(5), async || {
        let a = edge.classify(None, input.clone()).await;
        assert_eq!(a.tier, Tier::Fallback, "{a:?}");
        anyhow::ensure!(a.reason == Some(Reason::CircuitOpen), "fell back with {:?}", a.reason);
        Ok(())
    })
    .await;
    let _cloud = cloud.restarted();
    let resumed = until_offloading_resumes(&edge, &input, Duration::from_secs(2)).await;
    eprintln!("offloading resumed {resumed:?} after the cloud was back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_one_killed_all_go_to_the_survivor() {
    failover(TransportKind::Grpc).await;
}

/// Failover when the persistent stream to one endpoint breaks: the requests
/// waiting on it go to the other endpoint within their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_offload_stream_fails_over_to_the_other_endpoint() {
    failover(TransportKind::GrpcStream).await;
}

async fn failover(transport: TransportKind) {
    let dir = tmp(&format!("failover-{transport:?}"));
    let (_, cloud_dir) = split_default(1, &dir);
    let mut a = CloudProcess::start(&cloud_dir, &[]);
    let b = CloudProcess::start(&cloud_dir, &[]);
    let urls = vec![a.url(), b.url()];
    let mut cfg = config(split_bundles(1).0, urls.clone(), 1000);
    cfg.transport = transport;
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    let mut count = 0;
    let answers = run_dataset(edge.clone(), &inputs(1200), 4, |_| {
        count += 1;
        if count == 300 {
            a.kill();
        }
    })
    .await;
    assert_eq!(answers.len(), 1200);
    let fallbacks: Vec<_> = answers.iter().filter(|x| x.tier == Tier::Fallback).collect();
    assert!(fallbacks.is_empty(), "no request falls back: {:?}", fallbacks.first());
    let late_cloud: Vec<_> = answers.iter().skip(400).filter(|x| x.tier == Tier::Cloud).collect();
    assert!(!late_cloud.is_empty());
    assert!(late_cloud.iter().all(|x| x.endpoint.as_deref() == Some(urls[1].as_str())), "all go to the survivor");
    let s = summarize(&edge, &answers);
    assert!(s.retries > 0, "requests in flight to the dead endpoint were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_full_gives_the_clouds_predictions() {
    let dir = tmp("local-full");
    let (_, cloud_dir) = split_default(1, &dir);
    let data = sample(200);
    // With the cloud: reference answers (the edge holds the whole model).
    let cloud = CloudProcess::start(&cloud_dir, &[]);
    let url = cloud.url();
    let edge = Arc::new(Edge::start(config(default_bundle(), vec![url.clone()], 1000)).await.unwrap());
    let mut with_cloud = run_dataset(edge, &data, 2, |_| {}).await;
    drop(cloud);
    // The cloud is gone (its address refuses connections): finish on the device.
    let mut cfg = config(default_bundle(), vec![url], 200);
    cfg.fallback = FallbackMode::LocalFull;
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    let mut offline = run_dataset(edge, &data, 2, |_| {}).await;
    with_cloud.sort_by_key(|a| a.id);
    offline.sort_by_key(|a| a.id);
    let mut fell_back = 0;
    for (c, o) in with_cloud.iter().zip(&offline) {
        assert_eq!((c.prediction, c.exit), (o.prediction, o.exit), "input {}", c.id);
        if c.tier == Tier::Cloud {
            assert_eq!(o.tier, Tier::Fallback);
            assert!(o.reason.is_some());
            fell_back += 1;
        }
    }
    assert!(fell_back > 0);
    // local-full needs the deep blocks.
    let mut cfg = config(split_bundles(1).0, vec![], 200);
    cfg.fallback = FallbackMode::LocalFull;
    let err = Edge::start(cfg).await.err().expect("an edge bundle without the deep blocks cannot finish locally");
    assert!(format!("{err:#}").contains("local-full needs a bundle holding every block"), "{err:#}");
}
