//! Policies on the wire: the edge sends the rules of the cloud-side exits so
//! both halves of a split apply the same policy.

use std::ops::Range;

use offramp_proto::{ExitHistory, ExitObservation, ExitRuleSpec};

use super::{Policy, PolicyError, Rule};
use crate::model::Observation;

/// The exits a sample passed on the edge, for the request that offloads it
/// (the cloud validates them against the split before use).
pub fn history_to_wire(history: &[Observation]) -> ExitHistory {
    ExitHistory {
        exits: history
            .iter()
            .map(|o| ExitObservation { exit: o.exit as u32, prediction: o.prediction as u32, confidence: o.confidence })
            .collect(),
    }
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::MaxProb { .. } => "max-prob",
            Rule::Entropy { .. } => "entropy",
            Rule::Margin { .. } => "margin",
            Rule::Patience { .. } => "patience",
            Rule::Never => "never",
            Rule::Always => "always",
        }
    }

    fn to_spec(self, exit: usize) -> ExitRuleSpec {
        let (threshold, patience) = match self {
            Rule::MaxProb { threshold } | Rule::Entropy { threshold } | Rule::Margin { threshold } => (threshold, 0),
            Rule::Patience { patience } => (0.0, patience as u32),
            Rule::Never | Rule::Always => (0.0, 0),
        };
        ExitRuleSpec { exit: exit as u32, rule: self.name().into(), threshold, patience }
    }

    fn from_spec(s: &ExitRuleSpec) -> Result<Self, PolicyError> {
        let index = s.exit as usize;
        let rule = Rule::named(&s.rule, s.threshold, s.patience as usize, index)?;
        rule.check(index)?;
        Ok(rule)
    }

    /// The rule called `name` (`max-prob`, `entropy`, `margin`, `patience`,
    /// `never`, `always`) with its parameter, for exit `index` (named in
    /// errors). The one parser of rule names outside policy files: the wire
    /// and experiment configs use it.
    pub fn named(name: &str, threshold: f32, patience: usize, index: usize) -> Result<Self, PolicyError> {
        Ok(match name {
            "max-prob" => Rule::MaxProb { threshold },
            "entropy" => Rule::Entropy { threshold },
            "margin" => Rule::Margin { threshold },
            "patience" => Rule::Patience { patience },
            "never" => Rule::Never,
            "always" => Rule::Always,
            other => return Err(PolicyError::UnknownRule { index, name: crate::codec::echo::quoted(other) }),
        })
    }
}

impl Policy {
    /// Rules of the given exits, for the wire.
    pub fn to_wire(&self, exits: &[usize]) -> Vec<ExitRuleSpec> {
        exits.iter().filter_map(|&e| self.rules().get(e).map(|r| r.to_spec(e))).collect()
    }

    /// `base` with the rules received on the wire applied on top. `cloud`
    /// is the range of exits the receiver evaluates (those after the split):
    /// a rule for any other exit, a second rule for the same exit, more rules
    /// than the model has exits, or a rule with bad parameters is refused, as
    /// a policy file's would be.
    pub fn with_wire(base: &Policy, specs: &[ExitRuleSpec], cloud: Range<usize>) -> Result<Policy, PolicyError> {
        let num_exits = base.num_exits();
        // The bound first, before any work proportional to what was sent.
        if specs.len() > num_exits {
            return Err(PolicyError::TooManyRules { got: specs.len(), num_exits });
        }
        let mut rules = base.rules().to_vec();
        let mut seen = vec![false; num_exits];
        for s in specs {
            let index = s.exit as usize;
            if index >= num_exits {
                return Err(PolicyError::ExitOutOfRange { index, num_exits });
            }
            if !cloud.contains(&index) {
                return Err(PolicyError::NotCloudSide { index, first: cloud.start, end: cloud.end });
            }
            if std::mem::replace(&mut seen[index], true) {
                return Err(PolicyError::Duplicate { index });
            }
            rules[index] = Rule::from_spec(s)?;
        }
        Policy::from_rules(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_round_trip() {
        let p = Policy::from_rules(vec![
            Rule::MaxProb { threshold: 0.9 },
            Rule::Patience { patience: 2 },
            Rule::Entropy { threshold: 0.1 },
            Rule::Never,
        ])
        .unwrap();
        let wire = p.to_wire(&[1, 2, 3]);
        assert_eq!(wire.len(), 3);
        let q = Policy::with_wire(&Policy::never(4), &wire, 1..4).unwrap();
        assert_eq!(&q.rules()[1..], &p.rules()[1..]);
        assert_eq!(q.rules()[0], Rule::Never);
        let mut bad = wire.clone();
        bad[0].exit = 9;
        assert!(matches!(
            Policy::with_wire(&p, &bad, 1..4),
            Err(PolicyError::ExitOutOfRange { index: 9, num_exits: 4 })
        ));
        bad[0].exit = 1;
        bad[0].rule = "coin-flip".into();
        assert!(Policy::with_wire(&p, &bad, 1..4).unwrap_err().to_string().contains("coin-flip"));
        bad[0].rule = "max-prob".into();
        bad[0].threshold = f32::NAN;
        assert!(matches!(Policy::with_wire(&p, &bad, 1..4), Err(PolicyError::Threshold { index: 1, .. })));
    }

    fn spec(exit: u32, rule: &str, threshold: f32, patience: u32) -> ExitRuleSpec {
        ExitRuleSpec { exit, rule: rule.into(), threshold, patience }
    }

    #[test]
    fn wire_rules_are_validated_like_a_policy_file() {
        let base = Policy::never(3);
        // Duplicates: the same exit twice.
        let twice = [spec(1, "max-prob", 0.5, 0), spec(1, "always", 0.0, 0)];
        let e = Policy::with_wire(&base, &twice, 1..3).unwrap_err();
        assert!(matches!(e, PolicyError::Duplicate { index: 1 }), "{e:?}");
        assert!(e.to_string().contains("exit 1 twice"), "{e}");
        // More rules than the model has exits: refused before anything else.
        let many: Vec<ExitRuleSpec> = (0..100_000).map(|_| spec(2, "never", 0.0, 0)).collect();
        let e = Policy::with_wire(&base, &many, 1..3).unwrap_err();
        assert!(matches!(e, PolicyError::TooManyRules { got: 100_000, num_exits: 3 }), "{e:?}");
        // Exits on the edge side of the split.
        let e = Policy::with_wire(&base, &[spec(0, "always", 0.0, 0)], 1..3).unwrap_err();
        assert!(matches!(e, PolicyError::NotCloudSide { index: 0, first: 1, end: 3 }), "{e:?}");
        assert!(e.to_string().contains("cloud-side exits 1..3"), "{e}");
        // Thresholds: NaN, infinite, outside [0, 1], for every rule that has one.
        for rule in ["max-prob", "entropy", "margin"] {
            for threshold in [f32::NAN, f32::INFINITY, -0.1, 1.5] {
                let e = Policy::with_wire(&base, &[spec(2, rule, threshold, 0)], 1..3).unwrap_err();
                assert!(matches!(e, PolicyError::Threshold { index: 2, rule: r, .. } if r == rule), "{e:?}");
                assert!(e.to_string().contains("outside [0, 1]") && e.to_string().contains(rule), "{e}");
            }
            Policy::with_wire(&base, &[spec(2, rule, 1.0, 0)], 1..3).unwrap();
        }
        // Patience 0.
        let e = Policy::with_wire(&base, &[spec(1, "patience", 0.0, 0)], 1..3).unwrap_err();
        assert!(matches!(e, PolicyError::Patience { index: 1 }), "{e:?}");
        Policy::with_wire(&base, &[spec(1, "patience", 0.0, 2)], 1..3).unwrap();
        // An unknown rule name is echoed bounded.
        let e = Policy::with_wire(&base, &[spec(1, &"z".repeat(1 << 20), 0.0, 0)], 1..3).unwrap_err();
        assert!(matches!(e, PolicyError::UnknownRule { index: 1, .. }), "{e:?}");
        assert!(e.to_string().len() < 300, "{}", e.to_string().len());
        // Every cloud-side exit once is fine.
        let all = [spec(1, "entropy", 0.2, 0), spec(2, "always", 0.0, 0)];
        let q = Policy::with_wire(&base, &all, 1..3).unwrap();
        assert_eq!(q.rules()[1], Rule::Entropy { threshold: 0.2 });
    }
}
