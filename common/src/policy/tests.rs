use super::*;

fn obs(preds: &[usize]) -> Vec<Observation> {
    preds.iter().enumerate().map(|(exit, &prediction)| Observation { exit, prediction, confidence: 0.5 }).collect()
}

#[test]
fn max_prob_fires_at_threshold() {
    let r = Rule::MaxProb { threshold: 0.9 };
    assert!(r.fires(&[0.9, 0.1], &[]));
    assert!(!r.fires(&[0.89, 0.11], &[]));
}

#[test]
fn entropy_is_normalized() {
    assert!((normalized_entropy(&[0.25; 4]) - 1.0).abs() < 1e-6);
    assert_eq!(normalized_entropy(&[1.0, 0.0, 0.0]), 0.0);
    // H([0.9, 0.1]) = 0.3251 nats; / ln 2 = 0.4690
    assert!((normalized_entropy(&[0.9, 0.1]) - 0.468_996).abs() < 1e-5);
    let r = Rule::Entropy { threshold: 0.47 };
    assert!(r.fires(&[0.9, 0.1], &[]));
    assert!(!r.fires(&[0.8, 0.2], &[]));
}

#[test]
fn margin_uses_top_two() {
    let r = Rule::Margin { threshold: 0.5 };
    assert!(r.fires(&[0.1, 0.7, 0.2], &[]));
    assert!(!r.fires(&[0.3, 0.6, 0.1], &[]));
    assert!(r.fires(&[0.75, 0.05, 0.2], &[]));
}

#[test]
fn patience_counts_unchanged_predictions() {
    let r = Rule::Patience { patience: 2 };
    assert!(!r.fires(&[], &obs(&[3])));
    assert!(!r.fires(&[], &obs(&[3, 3])));
    assert!(r.fires(&[], &obs(&[3, 3, 3])));
    assert!(!r.fires(&[], &obs(&[3, 1, 3])));
    assert!(r.fires(&[], &obs(&[1, 3, 3, 3])));
}

#[test]
fn baselines() {
    assert!(Rule::Always.fires(&[0.5, 0.5], &[]));
    assert!(!Rule::Never.fires(&[1.0, 0.0], &[]));
}

#[test]
fn file_round_trip_and_defaults() {
    let text = r#"
default = { rule = "max-prob", threshold = 0.8 }
[[exit]]
index = 1
rule = "patience"
patience = 2
"#;
    let p = Policy::parse(text, 3, "test").unwrap();
    assert_eq!(p.rules()[0], Rule::MaxProb { threshold: 0.8 });
    assert_eq!(p.rules()[1], Rule::Patience { patience: 2 });
    let again = Policy::parse(&p.to_toml(), 3, "again").unwrap();
    assert_eq!(p, again);
}

#[test]
fn bad_files_name_the_problem() {
    let e = Policy::parse("[[exit]]\nindex = 5\nrule = \"never\"\n", 2, "t").unwrap_err();
    assert!(e.to_string().contains("exit 5"), "{e}");
    let e = Policy::parse("[[exit]]\nindex = 0\nrule = \"max-prob\"\nthreshold = 1.5\n", 2, "t").unwrap_err();
    assert!(e.to_string().contains("outside [0, 1]"), "{e}");
    let e = Policy::parse("[[exit]]\nindex = 0\nrule = \"guess\"\n", 2, "t").unwrap_err();
    assert!(e.to_string().contains("guess"), "{e}");
    let e = Policy::parse("[[exit]]\nindex = 0\nrule = \"never\"\n[[exit]]\nindex = 0\nrule = \"always\"\n", 2, "t")
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
}

#[test]
fn bad_parameters_are_structured_errors() {
    let e = Policy::parse("[[exit]]\nindex = 1\nrule = \"entropy\"\nthreshold = nan\n", 2, "t").unwrap_err();
    assert!(matches!(e, PolicyError::Threshold { index: 1, rule: "entropy", .. }), "{e:?}");
    let e = Policy::parse("[[exit]]\nindex = 0\nrule = \"patience\"\npatience = 0\n", 2, "t").unwrap_err();
    assert!(matches!(e, PolicyError::Patience { index: 0 }), "{e:?}");
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = Policy::from_rules(vec![Rule::Never, Rule::Margin { threshold: -1.0 }]).unwrap_err();
    assert!(matches!(e, PolicyError::Threshold { index: 1, rule: "margin", .. }), "{e:?}");
}
