//! Policies on the wire: the edge sends the rules of the cloud-side exits so
//! both halves of a split apply the same policy.

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
        Rule::named(&s.rule, s.threshold, s.patience as usize, s.exit as usize)
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
            other => return Err(PolicyError::BadRule { index, message: format!("unknown rule {other:?}") }),
        })
    }
}

impl Policy {
    /// Rules of the given exits, for the wire.
    pub fn to_wire(&self, exits: &[usize]) -> Vec<ExitRuleSpec> {
        exits.iter().filter_map(|&e| self.rules().get(e).map(|r| r.to_spec(e))).collect()
    }

    /// `base` with the rules received on the wire applied on top.
    pub fn with_wire(base: &Policy, specs: &[ExitRuleSpec]) -> Result<Policy, PolicyError> {
        let mut rules = base.rules().to_vec();
        for s in specs {
            let index = s.exit as usize;
            if index >= rules.len() {
                return Err(PolicyError::ExitOutOfRange { index, num_exits: rules.len() });
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
        let q = Policy::with_wire(&Policy::never(4), &wire).unwrap();
        assert_eq!(&q.rules()[1..], &p.rules()[1..]);
        assert_eq!(q.rules()[0], Rule::Never);
        let mut bad = wire.clone();
        bad[0].exit = 9;
        assert!(Policy::with_wire(&p, &bad).is_err());
        bad[0].exit = 1;
        bad[0].rule = "coin-flip".into();
        assert!(Policy::with_wire(&p, &bad).unwrap_err().to_string().contains("coin-flip"));
        bad[0].rule = "max-prob".into();
        bad[0].threshold = f32::NAN;
        assert!(Policy::with_wire(&p, &bad).is_err());
    }
}
