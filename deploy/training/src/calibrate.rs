//! `offramp calibrate`: choose per-exit thresholds that keep accuracy within
//! `--max-drop` percentage points of the final exit's while leaving as early
//! as possible, and write them as a policy file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use crate::simulate::{exit_probabilities, run_policy, ConfidenceRule};
use anyhow::{bail, Context, Result};
use offramp_common::data::Dataset;
use offramp_common::policy::Rule;
use offramp_common::{Executor, Policy};
use serde::Serialize;

use crate::eval::{load_model, subset_name, Cache, DataArgs, Outcome};

/// Calibrate per-exit thresholds on a validation split and write a policy.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// Model bundle directory (manifest.json + weights).
    #[arg(long, env = "OFFRAMP_MODEL")]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Largest accuracy loss allowed, in percentage points below the final
    /// exit's accuracy (every sample forced through it) on this split.
    #[arg(long, env = "OFFRAMP_MAX_DROP", default_value_t = 0.1)]
    pub max_drop: f64,
    /// Rule whose thresholds are calibrated.
    #[arg(long, value_enum, default_value = "max-prob")]
    pub rule: ConfidenceRule,
    /// One threshold per exit, or one threshold shared by every exit.
    #[arg(long, value_enum, default_value = "per-exit")]
    pub search: Search,
    /// Where to write the policy TOML (default: print it after the table).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Batch size of the passes over the data.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
}

/// What a calibration chose and what it does on the calibration split.
#[derive(Debug, Clone, Serialize)]
pub struct CalibrateReport {
    pub model_id: String,
    pub subset: String,
    pub n: usize,
    pub rule: ConfidenceRule,
    pub search: Search,
    /// Percentage points.
    pub max_drop: f64,
    /// Final exit's accuracy with every sample forced through it.
    pub final_accuracy: f64,
    /// The least accuracy allowed (`final_accuracy - max_drop / 100`).
    pub min_accuracy: f64,
    pub exit_names: Vec<String>,
    /// Per exit; `None`: never answers early (the final exit always answers).
    pub thresholds: Vec<Option<f32>>,
    /// Measured on the real early-exit path with the chosen policy.
    pub accuracy: f64,
    pub exit_counts: Vec<usize>,
    pub taken_accuracy: Vec<Option<f64>>,
    pub relative_compute: f64,
    /// The policy file, header comment included.
    pub policy_toml: String,
    pub out: Option<PathBuf>,
}

const MAX_ROUNDS: usize = 50;

/// How thresholds are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Search {
    /// A threshold per exit, by coordinate search ([`search`]): the cheapest
    /// policy on the calibration split, with as many free parameters as
    /// exits.
    PerExit,
    /// One threshold for every exit, as DeeBERT's single entropy threshold
    /// ([`search_shared`]): one free parameter, so what holds on a small
    /// calibration split holds better on new data.
    Shared,
}

impl Search {
    pub fn name(self) -> &'static str {
        match self {
            Search::PerExit => "coordinate search",
            Search::Shared => "one shared threshold",
        }
    }
}

/// One threshold for every non-final exit, the cheapest (ties: the more
/// accurate) within the budget of [`search`]: every candidate (halfway
/// between consecutive distinct statistics of any exit, plus "never") is
/// tried exactly.
pub fn search_shared(cache: &Cache, max_drop_pp: f64) -> Vec<Option<f32>> {
    let (n, k) = (cache.len(), cache.num_exits());
    let last = k.saturating_sub(1);
    let never = vec![None; last];
    if last == 0 || n == 0 {
        return never;
    }
    let allowed = ((max_drop_pp / 100.0) * n as f64 + 1e-9).floor().max(0.0) as usize;
    let need = cache.forced_correct(last).saturating_sub(allowed);
    let mut stats: Vec<f32> =
        cache.scores[..last].iter().flatten().copied().filter(|s| (0.0..=1.0).contains(s)).collect();
    if cache.rule.higher_is_confident() {
        stats.sort_by(|a, b| b.total_cmp(a));
    } else {
        stats.sort_by(|a, b| a.total_cmp(b));
    }
    stats.dedup();
    let mut best = (never.clone(), totals(cache, &never));
    for (i, &s) in stats.iter().enumerate() {
        let t = vec![Some(between(cache.rule, s, stats.get(i + 1).copied())); last];
        let state = totals(cache, &t);
        if state.0 >= need && (state.1 < best.1 .1 || (state.1 == best.1 .1 && state.0 > best.1 .0)) {
            best = (t, state);
        }
    }
    best.0
}

/// Chooses one threshold per non-final exit (`None`: that exit never
/// answers) minimising the mean multiply-adds per sample subject to
/// `correct >= forced_correct(final) - floor(max_drop_pp / 100 * n)`.
///
/// Method: coordinate descent from the first exit. For exit `e`, with the
/// other thresholds fixed, the samples reaching `e` and where each would end
/// up if `e` let it pass are fixed; sorting those samples by the rule's
/// statistic, most confident first, every candidate threshold (one per
/// distinct statistic, halfway to the next one, plus "never") lets a prefix of
/// them out at `e`, so one sweep of running sums evaluates all candidates
/// exactly. The cheapest feasible one
/// (ties: the more accurate) replaces the current threshold if it is strictly
/// better. Passes over the exits repeat until nothing changes. Starting from
/// "never everywhere" (the final exit's own accuracy, always feasible) every
/// step keeps the constraint, so the result always meets it.
///
/// With two exits there is one coordinate and the search is exact (every
/// threshold is tried). With more it is greedy: the first exit takes what
/// the accuracy budget allows before later exits are considered, and later
/// passes trade between exits one at a time, which finds a local optimum.
pub fn search(cache: &Cache, max_drop_pp: f64) -> Vec<Option<f32>> {
    let (n, k) = (cache.len(), cache.num_exits());
    let last = k.saturating_sub(1);
    let mut thresholds = vec![None; last];
    if last == 0 || n == 0 {
        return thresholds;
    }
    let allowed = ((max_drop_pp / 100.0) * n as f64 + 1e-9).floor().max(0.0) as usize;
    let need = cache.forced_correct(last).saturating_sub(allowed);
    let mut current = totals(cache, &thresholds);
    for _ in 0..MAX_ROUNDS {
        let mut changed = false;
        for e in 0..last {
            if let Some((t, state)) = best_at(cache, &thresholds, e, need, current) {
                thresholds[e] = t;
                current = state;
                changed = true;
            }
        }
        if !changed || last == 1 {
            break;
        }
    }
    thresholds
}

/// `(correct answers, total multiply-adds)` with `thresholds`.
fn totals(cache: &Cache, thresholds: &[Option<f32>]) -> (usize, u128) {
    (0..cache.len()).fold((0, 0), |(c, m), i| {
        let e = cache.exit_of(i, thresholds);
        (c + usize::from(cache.correct[e][i]), m + u128::from(cache.macs[e]))
    })
}

/// The best threshold for exit `e` with the others fixed, if strictly better
/// than `current` (cheaper, or as cheap and more accurate) and feasible.
fn best_at(
    cache: &Cache,
    thresholds: &[Option<f32>],
    e: usize,
    need: usize,
    current: (usize, u128),
) -> Option<(Option<f32>, (usize, u128))> {
    let last = cache.num_exits() - 1;
    let fires = |j: usize, i: usize| thresholds[j].is_some_and(|t| cache.rule.fires(cache.scores[j][i], t));
    // Totals with exit e passing everything on, and per sample reaching e the
    // change if it left at e instead.
    let (mut c, mut m) = (0i64, 0i128);
    let mut reach: Vec<(f32, i64, i128)> = Vec::new();
    for i in 0..cache.len() {
        if let Some(j) = (0..e).find(|&j| fires(j, i)) {
            c += i64::from(cache.correct[j][i]);
            m += i128::from(cache.macs[j]);
            continue;
        }
        let down = (e + 1..last).find(|&j| fires(j, i)).unwrap_or(last);
        c += i64::from(cache.correct[down][i]);
        m += i128::from(cache.macs[down]);
        let s = cache.scores[e][i];
        if !s.is_nan() {
            let dc = i64::from(cache.correct[e][i]) - i64::from(cache.correct[down][i]);
            reach.push((s, dc, i128::from(cache.macs[e]) - i128::from(cache.macs[down])));
        }
    }
    if cache.rule.higher_is_confident() {
        reach.sort_by(|a, b| b.0.total_cmp(&a.0));
    } else {
        reach.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let mut best: Option<(Option<f32>, (usize, u128))> = None;
    let mut consider = |t: Option<f32>, c: i64, m: i128| {
        let state = (c as usize, m as u128);
        let beats = |other: (usize, u128)| state.1 < other.1 || (state.1 == other.1 && state.0 > other.0);
        if state.0 >= need && beats(best.map_or(current, |b| b.1)) {
            best = Some((t, state));
        }
    };
    consider(None, c, m);
    let mut idx = 0;
    while idx < reach.len() {
        let s = reach[idx].0;
        while idx < reach.len() && reach[idx].0 == s {
            c += reach[idx].1;
            m += reach[idx].2;
            idx += 1;
        }
        if (0.0..=1.0).contains(&s) {
            consider(Some(between(cache.rule, s, reach.get(idx).map(|r| r.0))), c, m);
        }
    }
    best.filter(|b| b.0 != thresholds[e])
}

/// A threshold that lets out statistic `s` but not `next` (the next less
/// confident one): halfway between them, so that a sample sitting exactly at
/// the threshold does not flip on float rounding (batched and early-exit
/// passes may round differently); `s` itself when there is no room.
fn between(rule: ConfidenceRule, s: f32, next: Option<f32>) -> f32 {
    let Some(next) = next else { return s };
    let mid = ((f64::from(s) + f64::from(next)) / 2.0) as f32;
    if (0.0..=1.0).contains(&mid) && rule.fires(s, mid) && !rule.fires(next, mid) {
        mid
    } else {
        s
    }
}

/// The policy for `thresholds` (one per non-final exit), the final exit
/// `never` (it answers anyway).
pub fn policy_for(rule: ConfidenceRule, thresholds: &[Option<f32>]) -> Result<Policy> {
    let mut rules: Vec<Rule> = thresholds.iter().map(|t| t.map_or(Rule::Never, |t| rule.rule(t))).collect();
    rules.push(Rule::Never);
    Policy::from_rules(rules).context("building the calibrated policy")
}

fn check_options(max_drop: f64, batch_size: usize) -> Result<()> {
    if !(max_drop.is_finite() && (0.0..=100.0).contains(&max_drop)) {
        bail!("--max-drop must be between 0 and 100 percentage points, got {max_drop}");
    }
    if batch_size == 0 {
        bail!("--batch-size must be positive");
    }
    Ok(())
}

/// Calibrates on `data` and measures the result on the real early-exit path.
pub fn calibrate(
    exec: &Executor,
    data: &Dataset,
    subset: String,
    rule: ConfidenceRule,
    search_by: Search,
    max_drop: f64,
    batch_size: usize,
) -> Result<CalibrateReport> {
    check_options(max_drop, batch_size)?;
    let bundle = exec.bundle();
    let probs = exit_probabilities(exec, data, batch_size).context("running every exit over the dataset")?;
    let cache = Cache::new(&probs, &data.labels, bundle, rule);
    let thresholds = match search_by {
        Search::PerExit => search(&cache, max_drop),
        Search::Shared => search_shared(&cache, max_drop),
    };
    let policy = policy_for(rule, &thresholds)?;
    let simulated = cache.outcome(&thresholds);

    let answers = run_policy(exec, data, &policy, batch_size).context("running the calibrated policy")?;
    let differ = answers.iter().enumerate().filter(|(i, a)| a.exit != cache.exit_of(*i, &thresholds)).count();
    if differ > 0 {
        tracing::warn!(
            differ,
            "the early-exit path and the simulation disagree on some samples (rounding at a threshold); \
             reporting the early-exit path"
        );
    }
    let taken: Vec<(usize, bool)> =
        answers.iter().zip(&data.labels).map(|(a, &l)| (a.exit, a.prediction == l as usize)).collect();
    let measured = Outcome::of(&taken, &cache.macs, cache.full_macs);
    tracing::debug!(?simulated, ?measured, "calibrated");

    let last = cache.num_exits() - 1;
    let final_accuracy = cache.forced_correct(last) as f64 / data.len() as f64;
    let header = format!(
        "# calibrated by offramp calibrate: model {}, subset {subset}, n={}, rule {}, max-drop {} pp ({}); \
         accuracy {:.4} (final exit forced {:.4}), relative compute {:.4}\n",
        bundle.model_id(),
        data.len(),
        rule.name(),
        max_drop,
        search_by.name(),
        measured.accuracy,
        final_accuracy,
        measured.relative_compute
    );
    let mut all_thresholds = thresholds;
    all_thresholds.push(None);
    Ok(CalibrateReport {
        model_id: bundle.model_id().to_string(),
        subset,
        n: data.len(),
        rule,
        search: search_by,
        max_drop,
        final_accuracy,
        min_accuracy: final_accuracy - max_drop / 100.0,
        exit_names: bundle.manifest().exits.iter().map(|e| e.name.clone()).collect(),
        thresholds: all_thresholds,
        accuracy: measured.accuracy,
        exit_counts: measured.exit_counts,
        taken_accuracy: measured.taken_accuracy,
        relative_compute: measured.relative_compute,
        policy_toml: header + &policy.to_toml(),
        out: None,
    })
}

/// Runs `offramp calibrate`: calibrates, writes the policy, prints the table.
pub fn run(args: &CalibrateArgs) -> Result<CalibrateReport> {
    check_options(args.max_drop, args.batch_size)?;
    let bundle = load_model(&args.model)?;
    let data = args.data.load(&bundle)?;
    let exec = Executor::new(Arc::new(bundle));
    tracing::info!(
        model = exec.bundle().model_id(),
        subset = subset_name(args.data.subset),
        n = data.len(),
        rule = args.rule.name(),
        max_drop = args.max_drop,
        "calibrating"
    );
    let mut report =
        calibrate(&exec, &data, subset_name(args.data.subset), args.rule, args.search, args.max_drop, args.batch_size)?;
    if let Some(out) = &args.out {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(out, &report.policy_toml).with_context(|| format!("writing the policy to {}", out.display()))?;
        report.out = Some(out.clone());
    }
    Ok(report)
}

impl CalibrateReport {
    /// The table, and the policy itself when it was not written to a file.
    pub fn render(&self) -> String {
        let mut s = table(self);
        if self.out.is_none() {
            s.push('\n');
            s.push_str(&self.policy_toml);
        }
        s
    }
}

/// The readable form of a [`CalibrateReport`].
pub fn table(r: &CalibrateReport) -> String {
    let pct = |v: f64| format!("{:.2}%", v * 100.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model {}, subset {} (n={}), rule {} ({}), max-drop {} pp: final exit forced {}, floor {}",
        r.model_id,
        r.subset,
        r.n,
        r.rule.name(),
        r.search.name(),
        r.max_drop,
        pct(r.final_accuracy),
        pct(r.min_accuracy)
    );
    let _ = writeln!(
        s,
        "{:>4}  {:<12} {:>10}  {:>7} {:>7}  {:>9}",
        "exit", "name", "threshold", "taken", "share", "taken acc"
    );
    let last = r.exit_names.len().saturating_sub(1);
    for (e, name) in r.exit_names.iter().enumerate() {
        let threshold = match r.thresholds[e] {
            _ if e == last => "(answers)".to_string(),
            Some(t) => format!("{t:.6}"),
            None => "never".to_string(),
        };
        let _ = writeln!(
            s,
            "{:>4}  {:<12} {:>10}  {:>7} {:>7}  {:>9}",
            e,
            name,
            threshold,
            r.exit_counts[e],
            format!("{:.1}%", r.exit_counts[e] as f64 * 100.0 / r.n.max(1) as f64),
            r.taken_accuracy[e].map_or("-".into(), pct)
        );
    }
    let _ = writeln!(
        s,
        "accuracy {} ({:+.2} pp from the final exit), relative compute {:.4}",
        pct(r.accuracy),
        (r.accuracy - r.final_accuracy) * 100.0,
        r.relative_compute
    );
    if let Some(out) = &r.out {
        let _ = writeln!(s, "wrote {}", out.display());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::tests::{digits, tiny};
    use offramp_common::rng::SplitMix64;

    /// A cache from crafted statistics and correctness; exit `e` costs `macs[e]`.
    fn crafted(rule: ConfidenceRule, scores: Vec<Vec<f32>>, correct: Vec<Vec<bool>>, macs: Vec<u64>) -> Cache {
        let full_macs = *macs.last().unwrap();
        Cache { rule, scores, correct, macs, full_macs }
    }

    /// Random statistics where confident samples are more often right.
    fn random_case(rng: &mut SplitMix64, n: usize, exits: usize) -> (Vec<Vec<f32>>, Vec<Vec<bool>>) {
        let mut scores = vec![Vec::new(); exits];
        let mut correct = vec![Vec::new(); exits];
        for e in 0..exits {
            for _ in 0..n {
                // Coarse values so that ties happen.
                let s = (rng.next_f32() * 20.0).floor() / 20.0;
                scores[e].push(s);
                correct[e].push(rng.next_f32() < 0.5 + 0.5 * s * (e + 1) as f32 / exits as f32);
            }
        }
        (scores, correct)
    }

    fn feasible(cache: &Cache, t: &[Option<f32>], max_drop: f64) -> bool {
        let o = cache.outcome(t);
        let last = cache.num_exits() - 1;
        let floor = cache.forced_correct(last) as f64 / cache.len() as f64 - max_drop / 100.0;
        o.accuracy >= floor - 1e-12
    }

    #[test]
    fn two_exits_is_exact() {
        let mut rng = SplitMix64::new(1);
        for case in 0..20 {
            let (scores, correct) = random_case(&mut rng, 200, 2);
            let rule = if case % 2 == 0 { ConfidenceRule::MaxProb } else { ConfidenceRule::Entropy };
            let cache = crafted(rule, scores.clone(), correct, vec![3, 10]);
            for max_drop in [0.0, 0.5, 2.0, 10.0, 100.0] {
                let t = search(&cache, max_drop);
                assert!(feasible(&cache, &t, max_drop), "case {case} drop {max_drop}");
                // Brute force: never, and every distinct statistic.
                let mut candidates: Vec<Option<f32>> = scores[0].iter().map(|&s| Some(s)).collect();
                candidates.push(None);
                let best = candidates
                    .iter()
                    .filter(|c| feasible(&cache, &[**c], max_drop))
                    .map(|c| cache.outcome(&[*c]).relative_compute)
                    .fold(f64::INFINITY, f64::min);
                let got = cache.outcome(&t).relative_compute;
                assert!((got - best).abs() < 1e-12, "case {case} drop {max_drop}: {got} vs optimum {best}");
            }
            // Anything goes: everyone leaves at the first exit.
            assert_eq!(cache.outcome(&search(&cache, 100.0)).exit_counts, vec![200, 0]);
        }
    }

    #[test]
    fn respects_max_drop_with_more_exits() {
        let mut rng = SplitMix64::new(2);
        for case in 0..10 {
            let (scores, correct) = random_case(&mut rng, 300, 4);
            let rule = [ConfidenceRule::MaxProb, ConfidenceRule::Margin, ConfidenceRule::Entropy][case % 3];
            let cache = crafted(rule, scores, correct, vec![2, 4, 7, 10]);
            for max_drop in [0.0, 1.0, 5.0, 30.0] {
                let t = search(&cache, max_drop);
                assert_eq!(t.len(), 3);
                assert!(feasible(&cache, &t, max_drop), "case {case} drop {max_drop}: {t:?}");
                // Never worse than the plain network.
                assert!(cache.outcome(&t).relative_compute <= 1.0 + 1e-12);
            }
        }
    }

    #[test]
    fn shared_search_is_the_best_single_threshold() {
        let mut rng = SplitMix64::new(3);
        for case in 0..10 {
            let (scores, correct) = random_case(&mut rng, 250, 4);
            let rule = [ConfidenceRule::MaxProb, ConfidenceRule::Entropy][case % 2];
            let cache = crafted(rule, scores.clone(), correct, vec![2, 4, 7, 10]);
            for max_drop in [0.0, 1.0, 5.0, 30.0] {
                let t = search_shared(&cache, max_drop);
                assert_eq!(t.len(), 3);
                assert!(t.iter().all(|x| *x == t[0]), "not shared: {t:?}");
                assert!(feasible(&cache, &t, max_drop), "case {case} drop {max_drop}: {t:?}");
                // Brute force over every statistic of any exit, and never.
                let mut candidates: Vec<Option<f32>> = scores[..3].iter().flatten().map(|&s| Some(s)).collect();
                candidates.push(None);
                let best = candidates
                    .iter()
                    .map(|c| vec![*c; 3])
                    .filter(|c| feasible(&cache, c, max_drop))
                    .map(|c| cache.outcome(&c).relative_compute)
                    .fold(f64::INFINITY, f64::min);
                let got = cache.outcome(&t).relative_compute;
                assert!((got - best).abs() < 1e-12, "case {case} drop {max_drop}: {got} vs optimum {best}");
                // Per-exit thresholds can only do as well or better on the same split.
                assert!(cache.outcome(&search(&cache, max_drop)).relative_compute <= got + 1e-12);
            }
        }
    }

    #[test]
    fn crafted_case_exits_where_it_is_free() {
        // Exit 0 is always right when its max-prob is 0.9 or more, and wrong
        // otherwise; exit 1 is right on 9 of 10; the final exit on all.
        let n = 100;
        let scores0: Vec<f32> = (0..n).map(|i| if i < 60 { 0.95 } else { 0.5 }).collect();
        let correct0: Vec<bool> = (0..n).map(|i| i < 60).collect();
        let scores1: Vec<f32> = (0..n).map(|i| if i % 10 == 0 { 0.4 } else { 0.99 }).collect();
        let correct1: Vec<bool> = (0..n).map(|i| i % 10 != 0).collect();
        let cache = crafted(
            ConfidenceRule::MaxProb,
            vec![scores0, scores1, vec![0.99; n]],
            vec![correct0, correct1, vec![true; n]],
            vec![1, 5, 10],
        );
        // No drop allowed: the confident 60 leave at exit 0, the confident
        // right 36 at exit 1, the 4 others run to the end.
        let t = search(&cache, 0.0);
        // Thresholds halfway between the confident and the unconfident.
        let near = |t: Option<f32>, v: f32| t.is_some_and(|t| (t - v).abs() < 1e-6);
        assert!(near(t[0], 0.725) && near(t[1], 0.695), "{t:?}");
        let o = cache.outcome(&t);
        assert_eq!((o.exit_counts.clone(), o.accuracy), (vec![60, 36, 4], 1.0));
        // 5 points allowed: the 4 unconfident wrong ones may leave at exit 1 too.
        let t = search(&cache, 5.0);
        assert!(feasible(&cache, &t, 5.0));
        assert!(near(t[0], 0.725) && t[1] == Some(0.4), "{t:?}");
        assert_eq!(cache.outcome(&t).exit_counts, vec![60, 40, 0]);
    }

    #[test]
    fn calibrates_a_tiny_model_and_writes_a_policy() {
        let exec = tiny(3);
        let data = digits(120, 5);
        let r = calibrate(&exec, &data, "val".into(), ConfidenceRule::MaxProb, Search::PerExit, 2.0, 50).unwrap();
        assert!(r.accuracy >= r.min_accuracy - 1e-12, "{r:?}");
        assert_eq!(r.exit_counts.iter().sum::<usize>(), 120);
        let first = r.policy_toml.lines().next().unwrap();
        assert!(first.starts_with("# calibrated by offramp calibrate: model t, subset val, n=120"), "{first}");
        let p = Policy::parse(&r.policy_toml, 3, "calibrated").unwrap();
        assert_eq!(p.rules()[2], Rule::Never);
        for (rule, t) in p.rules().iter().zip(&r.thresholds) {
            match t {
                Some(t) => assert_eq!(*rule, Rule::MaxProb { threshold: *t }),
                None => assert_eq!(*rule, Rule::Never),
            }
        }
        assert!(table(&r).contains("(answers)"));
        let e = calibrate(&exec, &data, "val".into(), ConfidenceRule::MaxProb, Search::PerExit, -1.0, 50).unwrap_err();
        assert!(e.to_string().contains("--max-drop"), "{e}");
    }
}
