//! Offline fallback: the edge always answers, and nothing is lost when the
//! cloud fails (real cloud processes, SIGKILL, stalls, restarts, failover).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offramp_common::data::Dataset;
use offramp_edge::offload::Reason;
use offramp_edge::run::{run_dataset, summarize};
use offramp_edge::{Edge, EdgeConfig, FallbackMode, Tier};

use crate::support::*;

/// `n` inputs cycling through the bundled sample, with distinct ids.
fn inputs(n: usize) -> Dataset {
    let s = sample(1000);
    let mut d =
        Dataset { images: Vec::with_capacity(n * 784), labels: Vec::with_capacity(n), shape: s.shape, offset: 0 };
    for i in 0..n {
        d.images.extend_from_slice(s.image(i % s.len()));
        d.labels.push(s.labels[i % s.len()]);
    }
    d
}

fn config(edge_dir: &std::path::Path, clouds: Vec<String>, deadline_ms: u64) -> EdgeConfig {
    let mut c = EdgeConfig::new(edge_dir, 1, clouds);
    c.deadline = Duration::from_millis(deadline_ms);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_killed_mid_run_every_input_answered_once() {
    let dir = tmp("kill");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let cloud = Arc::new(Mutex::new(CloudProcess::start(&cloud_dir, "127.0.0.1:0", &[])));
    let deadline = Duration::from_millis(300);
    let url = cloud.lock().unwrap().url();
    let edge = Arc::new(Edge::start(config(&edge_dir, vec![url], 300)).await.unwrap());
    let data = inputs(2500);
    let done = AtomicUsize::new(0);
    let killed_at: Mutex<Option<Instant>> = Mutex::new(None);
    let answers = run_dataset(edge.clone(), &data, 4, |_| {
        if done.fetch_add(1, Ordering::Relaxed) == 800 {
            cloud.lock().unwrap().kill(); // SIGKILL
            *killed_at.lock().unwrap() = Some(Instant::now());
        }
    })
    .await;
    let killed = killed_at.lock().unwrap().expect("killed mid-run");
    let ids: HashSet<u64> = answers.iter().map(|a| a.id).collect();
    assert_eq!((answers.len(), ids.len()), (2500, 2500), "every input answered exactly once");
    assert!(answers.iter().all(|a| a.tier != Tier::Error), "best-local always answers");
    // Answers started well after the kill never come from the cloud.
    let after: Vec<_> = answers.iter().skip(820).collect();
    assert!(after.iter().all(|a| a.tier != Tier::Cloud), "no cloud answers after the kill");
    assert!(after.iter().any(|a| a.tier == Tier::Fallback));
    let before_kill = answers.iter().take(800).filter(|a| a.tier == Tier::Cloud).count();
    assert!(before_kill > 0, "the cloud answered before the kill");
    // No answer waits longer than the deadline plus a margin (local compute + scheduling).
    let margin = Duration::from_millis(250);
    for a in &answers {
        assert!(
            Duration::from_micros(a.latency_us.saturating_sub(a.edge_us)) <= deadline + margin,
            "answer {} waited {} µs",
            a.id,
            a.latency_us
        );
    }
    let s = summarize(&edge, &answers);
    assert!(s.fallbacks.values().sum::<usize>() > 0, "{:?}", s.fallbacks);
    assert!(s.breaker_transitions > 0, "the breaker opened");
    assert!(s.accuracy > 0.9, "fallback answers are still mostly right: {}", s.accuracy);
    let _ = killed;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_cloud_deadlines_fire_and_the_breaker_opens() {
    // Accepts connections, never answers.
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stall.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = stall.accept().await {
            h.lock().unwrap().push(s);
        }
    });
    let dir = tmp("stall");
    let (edge_dir, _) = split_default(1, &dir);
    let mut cfg = config(&edge_dir, vec![format!("http://{addr}")], 150);
    cfg.breaker_max_backoff = Duration::from_secs(30);
    cfg.breaker_backoff = Duration::from_secs(30);
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
        assert!(a.latency_us < 100_000, "circuit-open fallback is immediate: {} µs", a.latency_us);
        assert_eq!(a.tier, Tier::Fallback);
    }
    let s = summarize(&edge, &answers);
    assert_eq!(s.fallbacks.get("timeout"), Some(&timeouts));
    assert!(s.breaker_transitions >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offloading_resumes_after_the_cloud_restarts_on_the_same_address() {
    let dir = tmp("restart");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let mut cloud = CloudProcess::start(&cloud_dir, "127.0.0.1:0", &[]);
    let addr = cloud.addr.clone();
    let edge = Arc::new(Edge::start(config(&edge_dir, vec![cloud.url()], 200)).await.unwrap());
    // An input the branch is unsure about, so it always needs the cloud.
    let input = input_needing_cloud();
    assert_eq!(edge.classify(None, input.clone()).await.tier, Tier::Cloud);
    cloud.kill();
    for _ in 0..10 {
        let a = edge.classify(None, input.clone()).await;
        assert_eq!(a.tier, Tier::Fallback);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _cloud = CloudProcess::start(&cloud_dir, &addr, &[]);
    let resumed = until_offloading_resumes(&edge, &input, Duration::from_secs(2)).await;
    eprintln!("offloading resumed {resumed:?} after the cloud was back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_endpoints_one_killed_all_go_to_the_survivor() {
    let dir = tmp("failover");
    let (edge_dir, cloud_dir) = split_default(1, &dir);
    let a = Arc::new(Mutex::new(CloudProcess::start(&cloud_dir, "127.0.0.1:0", &[])));
    let b = CloudProcess::start(&cloud_dir, "127.0.0.1:0", &[]);
    let urls = vec![a.lock().unwrap().url(), b.url()];
    let edge = Arc::new(Edge::start(config(&edge_dir, urls.clone(), 1000)).await.unwrap());
    let count = AtomicUsize::new(0);
    let answers = run_dataset(edge.clone(), &inputs(1200), 4, |_| {
        if count.fetch_add(1, Ordering::Relaxed) == 300 {
            a.lock().unwrap().kill();
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
    // With the cloud: reference answers.
    let cloud = CloudProcess::start(&cloud_dir, "127.0.0.1:0", &[]);
    let mut cfg = config(&default_model(), vec![cloud.url()], 1000);
    cfg.policy = Some(test_policy(&dir.join("policy")));
    let edge = Arc::new(Edge::start(cfg).await.unwrap());
    let mut with_cloud = run_dataset(edge, &data, 2, |_| {}).await;
    drop(cloud);
    // The cloud is gone: finish on the device.
    let mut cfg = config(&default_model(), vec![format!("http://{}", "127.0.0.1:9")], 200);
    cfg.fallback = FallbackMode::LocalFull;
    cfg.policy = Some(test_policy(&dir.join("policy")));
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
    let (edge_dir, _) = split_default(1, &tmp("local-full-split"));
    let mut cfg = config(&edge_dir, vec![], 200);
    cfg.fallback = FallbackMode::LocalFull;
    let err = Edge::start(cfg).await.err().expect("an edge bundle without the deep blocks cannot finish locally");
    assert!(format!("{err:#}").contains("local-full needs a bundle holding every block"));
}
