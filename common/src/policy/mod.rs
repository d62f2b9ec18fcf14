//! Exit policies: when is an exit confident enough to answer?
//!
//! A policy holds one rule per exit. Rules:
//! - `max-prob`: top-1 probability ≥ `threshold` (BranchyNet-style confidence);
//! - `entropy`: entropy of the distribution divided by ln(classes) ≤ `threshold`
//!   (BranchyNet, DeeBERT);
//! - `margin`: top-1 minus top-2 probability ≥ `threshold`;
//! - `patience`: this exit's prediction equals that of the previous `patience`
//!   exits (PABEE; the count carries across the split through the exit history);
//! - `never` / `always`: baselines.
//!
//! The final exit always answers, whatever its rule.
//!
//! Policy file (TOML):
//! ```toml
//! # rule for exits not listed below (default: never)
//! default = { rule = "max-prob", threshold = 0.9 }
//!
//! [[exit]]
//! index = 0
//! rule = "entropy"
//! threshold = 0.05
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Observation;
use crate::Bundle;

mod wire;
pub use wire::history_to_wire;

/// One exit's rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Rule {
    MaxProb { threshold: f32 },
    Entropy { threshold: f32 },
    Margin { threshold: f32 },
    Patience { patience: usize },
    Never,
    Always,
}

impl Rule {
    /// Whether the rule fires on probabilities `p`, given the history of this
    /// sample's exits (whose last entry is this exit's observation).
    pub fn fires(&self, p: &[f32], history: &[Observation]) -> bool {
        match *self {
            Rule::MaxProb { threshold } => max_prob(p) >= threshold,
            Rule::Entropy { threshold } => normalized_entropy(p) <= threshold,
            Rule::Margin { threshold } => margin(p) >= threshold,
            Rule::Patience { patience } => {
                let Some(last) = history.last() else { return false };
                history.len() > patience
                    && history[history.len() - 1 - patience..].iter().all(|o| o.prediction == last.prediction)
            }
            Rule::Never => false,
            Rule::Always => true,
        }
    }

    /// Checks the rule's parameters for exit `index`: thresholds (a
    /// probability, a margin or a normalized entropy) in `[0, 1]` and not NaN,
    /// patience at least 1.
    pub fn check(&self, index: usize) -> Result<(), PolicyError> {
        match *self {
            Rule::MaxProb { threshold } | Rule::Margin { threshold } | Rule::Entropy { threshold }
                if !(0.0..=1.0).contains(&threshold) =>
            {
                Err(PolicyError::Threshold { index, rule: self.name(), threshold })
            }
            Rule::Patience { patience: 0 } => Err(PolicyError::Patience { index }),
            _ => Ok(()),
        }
    }
}

/// Top-1 probability.
pub fn max_prob(p: &[f32]) -> f32 {
    p.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Top-1 minus top-2 probability.
pub fn margin(p: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in p {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// Entropy of `p` divided by ln(len): 0 for a one-hot, 1 for uniform.
pub fn normalized_entropy(p: &[f32]) -> f32 {
    if p.len() < 2 {
        return 0.0;
    }
    let h: f32 = p.iter().filter(|&&v| v > 0.0).map(|&v| -v * v.ln()).sum();
    h / (p.len() as f32).ln()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRule {
    pub index: usize,
    #[serde(flatten)]
    pub rule: Rule,
}

/// A policy file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Rule>,
    #[serde(default, rename = "exit", skip_serializing_if = "Vec::is_empty")]
    pub exits: Vec<ExitRule>,
}

impl PolicyFile {
    /// Parses a policy file's text (not yet checked against a model:
    /// [`Policy::from_file`] does that); `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, PolicyError> {
        toml::from_str(text).map_err(|e| PolicyError::Parse { path: origin.into(), message: e.to_string() })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Errors reading or checking a policy (from a file or from a request).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("invalid policy {path}: {message}")]
    Parse { path: String, message: String },
    #[error("policy names exit {index}, but the model has {num_exits} exits")]
    ExitOutOfRange { index: usize, num_exits: usize },
    #[error(
        "policy names exit {index}, which is evaluated before the split: rules sent with a request may name only \
         the cloud-side exits {first}..{end}"
    )]
    NotCloudSide { index: usize, first: usize, end: usize },
    #[error(
        "policy exit {index}: unknown rule {name} (expected max-prob, entropy, margin, patience, never or always)"
    )]
    UnknownRule { index: usize, name: String },
    #[error("policy exit {index}: {rule} threshold {threshold} is outside [0, 1]")]
    Threshold { index: usize, rule: &'static str, threshold: f32 },
    #[error("policy exit {index}: patience must be at least 1")]
    Patience { index: usize },
    #[error("policy lists exit {index} twice")]
    Duplicate { index: usize },
    #[error("policy has {got} rules, but the model has only {num_exits} exits (one rule per exit at most)")]
    TooManyRules { got: usize, num_exits: usize },
}

/// Per-exit rules for a model with a given number of exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// The same rule at every exit.
    pub fn uniform(rule: Rule, num_exits: usize) -> Self {
        Self { rules: vec![rule; num_exits] }
    }

    /// Only the final exit answers (the plain network).
    pub fn never(num_exits: usize) -> Self {
        Self::uniform(Rule::Never, num_exits)
    }

    /// Explicit rules, one per exit.
    pub fn from_rules(rules: Vec<Rule>) -> Result<Self, PolicyError> {
        for (index, r) in rules.iter().enumerate() {
            r.check(index)?;
        }
        Ok(Self { rules })
    }

    /// Builds from a parsed file for a model with `num_exits` exits.
    pub fn from_file(file: &PolicyFile, num_exits: usize) -> Result<Self, PolicyError> {
        let default = file.default.unwrap_or(Rule::Never);
        let mut rules = vec![default; num_exits];
        let mut seen = vec![false; num_exits];
        for r in &file.exits {
            if r.index >= num_exits {
                return Err(PolicyError::ExitOutOfRange { index: r.index, num_exits });
            }
            if std::mem::replace(&mut seen[r.index], true) {
                return Err(PolicyError::Duplicate { index: r.index });
            }
            rules[r.index] = r.rule;
        }
        Self::from_rules(rules)
    }

    /// Parses TOML text.
    pub fn parse(text: &str, num_exits: usize, origin: &str) -> Result<Self, PolicyError> {
        Self::from_file(&PolicyFile::parse(text, origin)?, num_exits)
    }

    /// Reads a TOML policy file.
    pub fn load(path: &Path, num_exits: usize) -> Result<Self, PolicyError> {
        Self::from_file(&PolicyFile::load(path)?, num_exits)
    }

    /// The policy a bundle runs with: `explicit` if given, else the bundle's
    /// own `policy.toml`, else no early exits ([`Policy::never`]). Returns the
    /// file it came from, if any, for logs.
    pub fn for_bundle(explicit: Option<&Path>, bundle: &Bundle) -> Result<(Self, Option<PathBuf>), PolicyError> {
        let path = explicit.map(Path::to_path_buf).or_else(|| bundle.policy_path());
        let policy = match &path {
            Some(p) => Self::load(p, bundle.num_exits())?,
            None => Self::never(bundle.num_exits()),
        };
        Ok((policy, path))
    }

    /// The policy as a file (one entry per exit).
    pub fn to_file(&self) -> PolicyFile {
        PolicyFile {
            default: None,
            exits: self.rules.iter().enumerate().map(|(index, &rule)| ExitRule { index, rule }).collect(),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(&self.to_file()).expect("policies serialize")
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn num_exits(&self) -> usize {
        self.rules.len()
    }

    /// Whether exit `exit` answers for a sample with probabilities `p`.
    pub fn should_exit(&self, exit: usize, p: &[f32], history: &[Observation]) -> bool {
        self.rules.get(exit).is_some_and(|r| r.fires(p, history))
    }
}

#[cfg(test)]
mod tests;
