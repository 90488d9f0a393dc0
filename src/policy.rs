//! The decision policy: per-label score thresholds that turn a model's scores into
//! ALLOW / REVIEW / REJECT. Pure and unit-tested. A model's manifest supplies its default policy;
//! the config may name others (`[policies.NAME]`), resolved against a model's labels at load.

pub use crate::config::{PolicySpec, Thresholds};

/// A moderation decision, ordered by severity so `max` picks the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Allow,
    Review,
    Reject,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Allow, Decision::Review, Decision::Reject];

    /// Its position in `ALL` (and in every `Confusion`): allow 0, review 1, reject 2.
    pub const fn index(self) -> usize {
        match self {
            Decision::Allow => 0,
            Decision::Review => 1,
            Decision::Reject => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Review => "review",
            Decision::Reject => "reject",
        }
    }

    /// The decision `as_str` names, in any case ("REJECT", "reject").
    pub fn from_name(name: &str) -> Option<Decision> {
        Decision::ALL.into_iter().find(|d| d.as_str().eq_ignore_ascii_case(name))
    }
}

/// A named, versioned set of thresholds, indexed like the model's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub version: String,
    /// One entry per label, in output order; `None` means the label never changes the decision.
    pub thresholds: Vec<Option<Thresholds>>,
}

impl PolicySpec {
    /// The policy indexed by `labels` (a model's output order). Fails naming every threshold
    /// label the model does not have: a typo would otherwise silently never trigger.
    pub fn resolve(&self, labels: &[String]) -> Result<Policy, Vec<String>> {
        let mut thresholds = vec![None; labels.len()];
        let mut unknown = Vec::new();
        for (label, t) in &self.thresholds {
            match labels.iter().position(|l| l == label) {
                Some(i) => thresholds[i] = Some(*t),
                None => unknown.push(label.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(unknown);
        }
        Ok(Policy { name: self.name.clone(), version: self.version.clone(), thresholds })
    }
}

impl Policy {
    /// The strictest decision any label triggers. `scores` has one entry per label; scores are
    /// checked to be finite before they get here, so no NaN handling is needed.
    pub fn decide(&self, scores: &[f32]) -> Decision {
        let mut decision = Decision::Allow;
        for (score, thresholds) in scores.iter().zip(&self.thresholds) {
            let Some(t) = thresholds else { continue };
            if t.reject.is_some_and(|th| *score >= th) {
                return Decision::Reject;
            }
            if t.review.is_some_and(|th| *score >= th) {
                decision = Decision::Review;
            }
        }
        decision
    }
}

/// A decision x decision tally: rows by one decision (live, or the model judged), columns by the
/// other (the shadow, or the human). The one type behind shadow comparisons, moderator verdicts
/// and `modserve eval`, indexed by `(Decision, Decision)`; it reads as the `[[T; 3]; 3]` it
/// serialises to, in `Decision::ALL` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(transparent)]
pub struct Confusion<T>(pub [[T; 3]; 3]);

impl<T> Confusion<T> {
    /// Each cell from its row and column decisions.
    pub fn from_fn(mut cell: impl FnMut(Decision, Decision) -> T) -> Confusion<T> {
        Confusion(Decision::ALL.map(|row| Decision::ALL.map(|column| cell(row, column))))
    }
}

impl<T> std::ops::Index<(Decision, Decision)> for Confusion<T> {
    type Output = T;
    fn index(&self, (row, column): (Decision, Decision)) -> &T {
        &self.0[row.index()][column.index()]
    }
}

impl<T> std::ops::IndexMut<(Decision, Decision)> for Confusion<T> {
    fn index_mut(&mut self, (row, column): (Decision, Decision)) -> &mut T {
        &mut self.0[row.index()][column.index()]
    }
}

impl<T: PartialEq> PartialEq<[[T; 3]; 3]> for Confusion<T> {
    fn eq(&self, other: &[[T; 3]; 3]) -> bool {
        self.0 == *other
    }
}

/// A row by index, as the report's arithmetic reads it (`REVIEW`, `REJECT`).
impl<T> std::ops::Index<usize> for Confusion<T> {
    type Output = [T; 3];
    fn index(&self, row: usize) -> &[T; 3] {
        &self.0[row]
    }
}

impl<T> std::ops::Deref for Confusion<T> {
    type Target = [[T; 3]; 3];
    fn deref(&self) -> &[[T; 3]; 3] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            name: "default".into(),
            version: "1".into(),
            thresholds: vec![
                Some(Thresholds { review: Some(0.5), reject: Some(0.9) }),
                None,
                Some(Thresholds { review: Some(0.3), reject: None }),
            ],
        }
    }

    #[test]
    fn below_every_threshold_allows() {
        assert_eq!(policy().decide(&[0.49, 1.0, 0.29]), Decision::Allow);
    }

    #[test]
    fn thresholds_are_inclusive() {
        assert_eq!(policy().decide(&[0.5, 0.0, 0.0]), Decision::Review);
        assert_eq!(policy().decide(&[0.9, 0.0, 0.0]), Decision::Reject);
        assert_eq!(policy().decide(&[0.0, 0.0, 0.3]), Decision::Review);
    }

    #[test]
    fn strictest_label_wins_in_any_order() {
        assert_eq!(policy().decide(&[0.95, 0.0, 0.35]), Decision::Reject);
        assert_eq!(policy().decide(&[0.6, 0.0, 0.99]), Decision::Review);
    }

    #[test]
    fn unlisted_label_never_decides() {
        assert_eq!(policy().decide(&[0.0, 1.0, 0.0]), Decision::Allow);
    }

    #[test]
    fn a_named_policy_resolves_by_label_name() {
        let spec = PolicySpec {
            name: "strict".into(),
            version: "2".into(),
            thresholds: [("threat".to_string(), Thresholds { review: Some(0.1), reject: None })].into(),
        };
        let labels = ["insult".to_string(), "threat".to_string()];
        let policy = spec.resolve(&labels).unwrap();
        assert_eq!(policy.thresholds, [None, Some(Thresholds { review: Some(0.1), reject: None })]);
        assert_eq!(spec.resolve(&labels[..1]).unwrap_err(), ["threat"]);
    }

    #[test]
    fn threshold_errors_name_the_field() {
        let bad = Thresholds { review: Some(0.9), reject: Some(1.5) };
        let errors = bad.errors("policies.p.thresholds.insult");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("policies.p.thresholds.insult.reject 1.5"), "{errors:?}");
        let inverted = Thresholds { review: Some(0.9), reject: Some(0.5) }.errors("f");
        assert!(inverted[0].contains("must not exceed"), "{inverted:?}");
        assert!(Thresholds { review: Some(0.2), reject: Some(0.2) }.errors("f").is_empty());
    }

    #[test]
    fn decisions_parse_from_their_names_in_any_case() {
        for d in Decision::ALL {
            assert_eq!(Decision::from_name(&d.as_str().to_uppercase()), Some(d));
        }
        assert_eq!(Decision::from_name("maybe"), None);
    }

    #[test]
    fn decisions_order_by_severity() {
        assert!(Decision::Allow < Decision::Review && Decision::Review < Decision::Reject);
    }

    /// Thresholds for one label as a proptest strategy: each threshold absent or in [0, 1].
    fn thresholds() -> impl proptest::strategy::Strategy<Value = Option<Thresholds>> {
        use proptest::prelude::*;
        proptest::option::of((proptest::option::of(0.0f32..=1.0), proptest::option::of(0.0f32..=1.0)))
            .prop_map(|t| t.map(|(review, reject)| Thresholds { review, reject }))
    }

    /// The decision one label alone triggers.
    fn label_decision(score: f32, t: &Option<Thresholds>) -> Decision {
        match t {
            Some(t) if t.reject.is_some_and(|th| score >= th) => Decision::Reject,
            Some(t) if t.review.is_some_and(|th| score >= th) => Decision::Review,
            _ => Decision::Allow,
        }
    }

    proptest::proptest! {
        #[test]
        fn the_decision_is_the_strictest_any_label_triggers(
            labels in proptest::collection::vec((0.0f32..=1.0, thresholds()), 0..8),
        ) {
            let (scores, thresholds): (Vec<f32>, Vec<_>) = labels.into_iter().unzip();
            let policy = Policy { name: "p".into(), version: "1".into(), thresholds };
            let expected = scores.iter().zip(&policy.thresholds).map(|(s, t)| label_decision(*s, t)).max();
            proptest::prop_assert_eq!(policy.decide(&scores), expected.unwrap_or(Decision::Allow));
        }

        #[test]
        fn raising_a_score_never_relaxes_the_decision(
            labels in proptest::collection::vec((0.0f32..=1.0, thresholds()), 1..8),
            which in 0usize..8, bump in 0.0f32..=1.0,
        ) {
            let (scores, thresholds): (Vec<f32>, Vec<_>) = labels.into_iter().unzip();
            let policy = Policy { name: "p".into(), version: "1".into(), thresholds };
            let mut raised = scores.clone();
            let i = which % raised.len();
            raised[i] = (raised[i] + bump).min(1.0);
            proptest::prop_assert!(policy.decide(&raised) >= policy.decide(&scores));
        }

        #[test]
        fn label_order_does_not_matter(
            labels in proptest::collection::vec((0.0f32..=1.0, thresholds()), 0..8), rotate in 0usize..8,
        ) {
            let decide = |labels: &[(f32, Option<Thresholds>)]| {
                let (scores, thresholds): (Vec<f32>, Vec<_>) = labels.iter().cloned().unzip();
                Policy { name: "p".into(), version: "1".into(), thresholds }.decide(&scores)
            };
            let mut rotated = labels.clone();
            if !rotated.is_empty() {
                let k = rotate % rotated.len();
                rotated.rotate_left(k);
            }
            proptest::prop_assert_eq!(decide(&labels), decide(&rotated));
        }
    }
}
