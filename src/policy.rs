//! The decision policy: per-label score thresholds that turn a model's scores into
//! ALLOW / REVIEW / REJECT. Pure and unit-tested; the manifest supplies the thresholds.

/// A moderation decision, ordered by severity so `max` picks the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    Allow,
    Review,
    Reject,
}

impl Decision {
    pub const ALL: [Decision; 3] = [Decision::Allow, Decision::Review, Decision::Reject];

    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Review => "review",
            Decision::Reject => "reject",
        }
    }
}

/// Thresholds for one label; a score at or above a threshold triggers it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Thresholds {
    pub review: Option<f32>,
    pub reject: Option<f32>,
}

/// A named, versioned set of thresholds, indexed like the model's labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub version: String,
    /// One entry per label, in output order; `None` means the label never changes the decision.
    pub thresholds: Vec<Option<Thresholds>>,
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
    fn decisions_order_by_severity() {
        assert!(Decision::Allow < Decision::Review && Decision::Review < Decision::Reject);
    }
}
