//! Adaptive control on a real cloud: the split point re-planned live
//! through the link emulator while the link's rate changes, and the
//! accuracy-budget controller fed by real offloads and shadow requests.

use std::sync::Arc;
use std::time::Duration;

use offramp_common::rng::SplitMix64;
use offramp_common::Policy;
use offramp_edge::adapt::BudgetConfig;
use offramp_edge::plan::{Objective, PlanConfig};
use offramp_edge::transport::TransportKind;
use offramp_edge::Tier;
use offramp_lab::harness::{cloud_config, Topology};
use offramp_link::trace::{Trace, TraceFormat};
use offramp_link::{DirectionConfig, LinkConfig};

use crate::support::models::{default_bundle, inputs, test_policy};

/// 100 Mbit/s for the first 3 s of the link, then 100 kbit/s, both ways. Every
/// input needs the cloud (no exit before the final one), so the split only
/// decides how much the edge computes and how many bytes cross. On the fast
/// link every route costs about the same here (edge and cloud compute on the
/// same CPU, bytes nearly free): the edge stays where it started (K = 0,
/// f32), the hysteresis at work. On the slow link bytes dominate: the 576
/// values after conv3 (K = 3 or 4) in int8 + LZ4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chosen_split_follows_the_link_rate() {
    let full = default_bundle();
    let policy = Policy::never(full.num_exits());
    let trace = Arc::new(Trace::parse("3\t100\n600\t0.1\n", TraceFormat::Throughput, "step").unwrap());
    let link = LinkConfig::symmetric(DirectionConfig::default().with_trace(trace));
    let topology = Topology::start(cloud_config(full.clone(), Some(&policy)), false, Some(&link)).await.unwrap();
    let epoch = topology.grpc_link.as_ref().unwrap().epoch();
    // The edge holds blocks 0..4 (the cloud always runs fc1), starts at K = 0.
    let (edge_side, _) = full.split(4).unwrap();
    let mut config = topology.edge_config(edge_side, 0, TransportKind::Grpc).unwrap();
    config.policy = Some(policy);
    // A wide hysteresis band: on the fast link every route costs about the
    // same, and a loaded machine's noise must not move the edge there; the
    // slow link makes K = 0 f32 three times slower than the best route.
    let mut plan = PlanConfig::new(Objective::MinLatency);
    plan.hysteresis = 0.3;
    config.adaptive_split = Some(plan);
    config.deadline = Duration::from_secs(2);
    let edge = topology.edge(config).await.unwrap();
    assert_eq!(edge.split(), 0);

    // Seeded random pixels: LZ4 finds nothing to squeeze in the raw input.
    let mut rng = SplitMix64::new(11);
    let mut answers = Vec::new();
    while epoch.elapsed() < Duration::from_secs(7) {
        let input: Vec<f32> = (0..784).map(|_| rng.next_f32()).collect();
        let a = edge.classify(None, input).await;
        assert_eq!(a.tier, Tier::Cloud, "{a:?}");
        answers.push((epoch.elapsed(), a.split, a.encoding));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let routes = |from: f64, to: f64| -> Vec<(usize, Option<&str>)> {
        answers.iter().filter(|(t, _, _)| (from..to).contains(&t.as_secs_f64())).map(|&(_, k, e)| (k, e)).collect()
    };
    let fast = routes(0.0, 3.0);
    assert!(!fast.is_empty() && fast.iter().all(|&(k, e)| k == 0 && e == Some("f32")), "on the fast link: {fast:?}");
    // On the slow link the smallest state (K = 4 in int8: 240 bytes fewer
    // than the raw input in int8, 19 ms at 100 kbit/s) outweighs the edge
    // compute it costs, even when a loaded machine slows that compute.
    let slow = routes(5.0, 7.0);
    let deep = slow.iter().filter(|&&(k, e)| k >= 3 && e == Some("int8")).count();
    assert!(!slow.is_empty() && deep * 10 >= slow.len() * 8, "on the slow link: {slow:?}");
    let planner = edge.planner().unwrap().lock().unwrap().switches;
    assert!(planner >= 1);
    drop(edge);
    topology.stop().await.unwrap();
}

/// The controller on a real cloud: offloads and shadow requests bring the
/// full model's answers, and the branch's threshold moves from its start.
/// With a start of 0.999 (a third of the digits offloaded) and a loose
/// budget, the branch agrees with the full model often enough to loosen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threshold_controller_learns_from_offloads_and_shadows() {
    let full = default_bundle();
    let policy = test_policy(&full);
    let topology = Topology::start(cloud_config(full.clone(), Some(&policy)), false, None).await.unwrap();
    let (edge_side, _) = full.split(1).unwrap();
    let mut config = topology.edge_config(edge_side, 1, TransportKind::Grpc).unwrap();
    config.policy = Some(policy);
    let mut budget = BudgetConfig::new(0.05);
    budget.min_samples = 100;
    budget.shadow = 0.5;
    config.accuracy_budget = Some(budget);
    let edge = topology.edge(config).await.unwrap();
    let data = inputs(1500);
    let mut by_tier = std::collections::BTreeMap::new();
    for i in 0..data.len() {
        let a = edge.classify(Some(i as u64), data.image(i).to_vec()).await;
        assert_eq!(a.thresholds.len(), 1, "{a:?}");
        *by_tier.entry(a.tier).or_insert(0) += 1;
    }
    let snap = edge.controller().unwrap().snapshot();
    assert!(snap.shadows_sent > 0, "{snap:?}");
    assert!(snap.samples[0] >= 100, "{snap:?}");
    assert!(snap.thresholds[0] < 0.999, "the branch agrees with the full model: it loosens ({snap:?}, {by_tier:?})");
    // The edge answers more on its own than at the start.
    let later: Vec<_> = (0..200).map(|i| data.image(i).to_vec()).collect();
    let mut edge_answers = 0;
    for x in later {
        if edge.classify(None, x).await.tier == Tier::Edge {
            edge_answers += 1;
        }
    }
    assert!(edge_answers > 140, "{edge_answers} of 200 on the edge, {by_tier:?}");
    drop(edge);
    topology.stop().await.unwrap();
}

/// `offramp experiment` with `[adaptive]`: an adaptive cell beside the fixed
/// ones over a stepping trace, with its timeline written and plotted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_run_adaptive_cells_beside_fixed_ones() {
    use offramp_lab::experiment::{run, ExperimentArgs};

    use crate::support::models::{default_model, repo};
    use crate::support::tmp;

    let dir = tmp("adaptive-experiment");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("step.tput"), "1\t100\n2\t1\n").unwrap();
    let config = dir.join("exp.toml");
    std::fs::write(
        &config,
        format!(
            r#"
model = "{}"
data = "{}"
subset = "sample"
splits = [3]
inputs = [60]
interval = "10ms"
[adaptive]
max_split = 4
[[policy]]
name = "p999"
rule = "max-prob"
threshold = 0.999
[[link]]
name = "step"
delay = "2ms"
up_trace = "{}"
down_trace = "{}"
"#,
            default_model().display(),
            repo().join("models/mnist-sample").display(),
            dir.join("step.tput").display(),
            dir.join("step.tput").display(),
        ),
    )
    .unwrap();
    let out = dir.join("out");
    let results = run(&ExperimentArgs { config, out: out.clone() }).await.unwrap();
    let modes: Vec<(&str, usize)> = results.iter().map(|r| (r.mode.as_str(), r.split)).collect();
    assert_eq!(modes, vec![("fixed", 0), ("fixed", 3), ("fixed", 5), ("adaptive", 4)]);
    let adaptive = &results[3];
    assert_eq!((adaptive.n, adaptive.fallbacks), (60, 0), "{adaptive:?}");
    let name = &adaptive.cell;
    assert!(name.starts_with("adaptive-p999-step"), "{name}");
    let timeline = std::fs::read_to_string(out.join(format!("timeline-{name}.csv"))).unwrap();
    let mut lines = timeline.lines();
    assert_eq!(lines.next().unwrap(), "t_s,split,encoding,rtt_ms,estimated_mbit,link_up_mbit");
    assert!(lines.count() >= 1, "{timeline}");
    assert!(out.join(format!("timeline-{name}.svg")).exists());
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains(",mode,") && csv.contains(",adaptive,"), "{csv}");
}
