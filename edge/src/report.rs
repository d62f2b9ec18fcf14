//! Summaries of a run: accuracy, where answers came from, latency, bytes,
//! fallbacks and breaker activity.

use std::collections::BTreeMap;

use offramp_common::stats::Summary as Latency;
use serde::Serialize;

use crate::runtime::{Answer, Tier};

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub n: usize,
    /// Correct answers over answers with a label (errors count as wrong).
    pub accuracy: f64,
    /// Answers per exit, in exit order.
    pub exit_counts: Vec<usize>,
    pub tier_counts: BTreeMap<String, usize>,
    pub latency_us: Latency,
    pub latency_us_by_tier: BTreeMap<String, Latency>,
    /// Local compute per input.
    pub edge_us: Latency,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Bytes sent per offloaded input.
    pub bytes_up_per_offload: f64,
    pub fallbacks: BTreeMap<String, usize>,
    pub retries: u64,
    pub breaker_transitions: u64,
    pub errors: usize,
}

impl Summary {
    pub fn of(answers: &[Answer], num_exits: usize, retries: u64, breaker_transitions: u64) -> Self {
        let mut exit_counts = vec![0; num_exits];
        let mut tiers: BTreeMap<String, usize> =
            ["edge", "cloud", "fallback", "error"].iter().map(|t| (t.to_string(), 0)).collect();
        let mut by_tier: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut fallbacks = BTreeMap::new();
        let (mut labelled, mut correct, mut offloads) = (0usize, 0usize, 0usize);
        for a in answers {
            if let Some(e) = a.exit {
                if let Some(c) = exit_counts.get_mut(e as usize) {
                    *c += 1;
                }
            }
            *tiers.entry(a.tier.as_str().into()).or_default() += 1;
            by_tier.entry(a.tier.as_str().into()).or_default().push(a.latency_us as f64);
            if let Some(r) = a.reason {
                *fallbacks.entry(r.as_str().to_string()).or_default() += 1;
            }
            if let Some(l) = a.label {
                labelled += 1;
                correct += usize::from(a.prediction == Some(l));
            }
            offloads += usize::from(a.bytes_up > 0);
        }
        let lat: Vec<f64> = answers.iter().map(|a| a.latency_us as f64).collect();
        let edge: Vec<f64> = answers.iter().map(|a| a.edge_us as f64).collect();
        let bytes_up = answers.iter().map(|a| a.bytes_up).sum();
        Summary {
            n: answers.len(),
            accuracy: if labelled == 0 { 0.0 } else { correct as f64 / labelled as f64 },
            exit_counts,
            tier_counts: tiers,
            latency_us: Latency::of(&lat),
            latency_us_by_tier: by_tier.into_iter().map(|(k, v)| (k, Latency::of(&v))).collect(),
            edge_us: Latency::of(&edge),
            bytes_up,
            bytes_down: answers.iter().map(|a| a.bytes_down).sum(),
            bytes_up_per_offload: if offloads == 0 { 0.0 } else { bytes_up as f64 / offloads as f64 },
            fallbacks,
            retries,
            breaker_transitions,
            errors: answers.iter().filter(|a| a.tier == Tier::Error).count(),
        }
    }

    /// A readable table.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let pct = |c: usize| if self.n == 0 { 0.0 } else { 100.0 * c as f64 / self.n as f64 };
        let _ = writeln!(s, "inputs        {}", self.n);
        let _ = writeln!(s, "accuracy      {:.2}%", self.accuracy * 100.0);
        let _ = writeln!(
            s,
            "answered by   {}",
            self.tier_counts
                .iter()
                .filter(|(_, &c)| c > 0)
                .map(|(t, &c)| format!("{t} {c} ({:.1}%)", pct(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "exits         {}",
            self.exit_counts
                .iter()
                .enumerate()
                .map(|(e, &c)| format!("#{e}: {c} ({:.1}%)", pct(c)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "latency (µs)  tier        n      p50      p90      p99     mean");
        for (tier, l) in std::iter::once(("all".to_string(), &self.latency_us))
            .chain(self.latency_us_by_tier.iter().map(|(t, l)| (t.clone(), l)))
        {
            let _ = writeln!(
                s,
                "              {tier:<8} {:>4} {:>8.0} {:>8.0} {:>8.0} {:>8.0}",
                l.n, l.p50, l.p90, l.p99, l.mean
            );
        }
        let _ = writeln!(s, "edge compute  p50 {:.0} µs, p99 {:.0} µs", self.edge_us.p50, self.edge_us.p99);
        let _ = writeln!(
            s,
            "bytes         up {} ({:.0} per offload), down {}",
            self.bytes_up, self.bytes_up_per_offload, self.bytes_down
        );
        if !self.fallbacks.is_empty() || self.retries > 0 || self.breaker_transitions > 0 {
            let _ = writeln!(
                s,
                "fallbacks     {}",
                self.fallbacks.iter().map(|(r, c)| format!("{r} {c}")).collect::<Vec<_>>().join(", ")
            );
            let _ = writeln!(s, "retries {}, breaker state changes {}", self.retries, self.breaker_transitions);
        }
        s
    }
}
