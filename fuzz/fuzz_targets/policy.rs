//! Policy parsing: `Policy::parse` on policy file text, and the rules a
//! request carries (`Policy::with_wire`), for models of 0..16 exits.
//!
//! Input: a mode byte, a number-of-exits byte, then
//! - mode 0: policy file text (TOML);
//! - mode 1: a first-cloud-exit byte, then an `InferRequest` message whose
//!   `policy` rules are applied on top of a base policy (all `never`, or
//!   `max-prob 0.5` at every exit when the mode byte's bit 1 is set);
//!   the request's `history` confidences are then fed to the rules as
//!   probabilities.

#![no_main]

mod check;

use libfuzzer_sys::fuzz_target;
use offramp_common::policy::{Policy, Rule};
use offramp_proto::InferRequest;
use prost::Message;

fn rule_ok(r: &Rule, index: usize) {
    r.check(index).unwrap_or_else(|e| panic!("accepted a rule that fails its own check: {r:?}: {e}"));
    match *r {
        Rule::MaxProb { threshold } | Rule::Entropy { threshold } | Rule::Margin { threshold } => {
            assert!((0.0..=1.0).contains(&threshold), "accepted threshold {threshold}")
        }
        Rule::Patience { patience } => assert!(patience >= 1, "accepted patience 0"),
        Rule::Never | Rule::Always => {}
    }
}

fn parsed(p: &Policy, num_exits: usize) {
    assert_eq!(p.num_exits(), num_exits, "policy for {num_exits} exits has {}", p.num_exits());
    for (i, r) in p.rules().iter().enumerate() {
        rule_ok(r, i);
    }
    // What parsed writes back to a file that parses to the same policy.
    let text = p.to_toml();
    let q = Policy::parse(&text, num_exits, "round trip").unwrap_or_else(|e| panic!("{text:?} does not parse: {e}"));
    assert_eq!(&q, p, "policy changed through its file form");
}

fuzz_target!(|data: &[u8]| {
    let Some(([mode, num_exits], rest)) = data.split_first_chunk::<2>() else { return };
    let n = *num_exits as usize % 17;
    if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        if let Ok(p) = Policy::parse(text, n, "fuzz") {
            parsed(&p, n);
        }
        return;
    }
    let Some((first, rest)) = rest.split_first() else { return };
    let Ok(req) = InferRequest::decode(rest) else { return };
    let base = if mode & 2 == 0 { Policy::never(n) } else { Policy::uniform(Rule::MaxProb { threshold: 0.5 }, n) };
    let cloud = (*first as usize).min(n)..n;
    let specs = &req.policy;
    match Policy::with_wire(&base, specs, cloud.clone()) {
        Ok(p) => {
            assert!(specs.len() <= n, "accepted {} rules for {n} exits", specs.len());
            parsed(&p, n);
            for i in 0..n {
                match specs.iter().filter(|s| s.exit as usize == i).count() {
                    0 => assert_eq!(p.rules()[i], base.rules()[i], "exit {i} changed without a rule"),
                    1 => assert!(cloud.contains(&i), "accepted a rule for exit {i} outside {cloud:?}"),
                    k => panic!("accepted {k} rules for exit {i}"),
                }
            }
            // Evaluating the rules never panics, whatever the probabilities.
            let probs: Vec<f32> = req.history.iter().flat_map(|h| h.exits.iter().map(|o| o.confidence)).collect();
            for i in 0..=n {
                let _ = p.should_exit(i, &probs, &[]);
            }
        }
        Err(e) => {
            let m = e.to_string();
            assert!(m.len() <= check::MAX_MESSAGE, "wire policy error message of {} bytes", m.len());
        }
    }
});
