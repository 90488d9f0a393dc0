//! Live-vs-shadow comparison of one review: pure functions, unit-tested; `shadow` records what
//! they return.

use crate::policy::Decision;

/// How a shadow's decision relates to the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Agree,
    /// The shadow's decision is more severe (e.g. live ALLOW, shadow REVIEW).
    Stricter,
    /// The shadow's decision is less severe.
    MoreLenient,
}

impl Direction {
    pub fn of(live: Decision, shadow: Decision) -> Direction {
        match shadow.cmp(&live) {
            std::cmp::Ordering::Equal => Direction::Agree,
            std::cmp::Ordering::Greater => Direction::Stricter,
            std::cmp::Ordering::Less => Direction::MoreLenient,
        }
    }
}

/// Index of the highest score (the first on ties), or `None` for no scores.
pub fn top_label(scores: &[f32]) -> Option<usize> {
    scores
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &s)| match best {
            Some((_, b)) if b >= s => best,
            _ => Some((i, s)),
        })
        .map(|(i, _)| i)
}

/// Per-label score deltas (shadow minus live) for the labels both models have, by name, in the
/// shadow's label order.
pub fn score_deltas<'a>(
    live_labels: &'a [String],
    live_scores: &[f32],
    shadow_labels: &'a [String],
    shadow_scores: &[f32],
) -> Vec<(&'a str, f32)> {
    shadow_labels
        .iter()
        .zip(shadow_scores)
        .filter_map(|(label, s)| {
            let i = live_labels.iter().position(|l| l == label)?;
            Some((label.as_str(), s - live_scores[i]))
        })
        .collect()
}

/// True when the two models' highest-scoring labels differ (compared by name).
pub fn top_label_flipped(
    live_labels: &[String],
    live_scores: &[f32],
    shadow_labels: &[String],
    shadow_scores: &[f32],
) -> bool {
    match (top_label(live_scores), top_label(shadow_scores)) {
        (Some(l), Some(s)) => live_labels[l] != shadow_labels[s],
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn direction_follows_severity() {
        assert_eq!(Direction::of(Allow, Allow), Direction::Agree);
        assert_eq!(Direction::of(Allow, Review), Direction::Stricter);
        assert_eq!(Direction::of(Review, Reject), Direction::Stricter);
        assert_eq!(Direction::of(Reject, Allow), Direction::MoreLenient);
    }

    #[test]
    fn top_label_takes_the_first_of_ties() {
        assert_eq!(top_label(&[0.2, 0.9, 0.9]), Some(1));
        assert_eq!(top_label(&[]), None);
    }

    #[test]
    fn deltas_match_labels_by_name() {
        let live = labels(&["insult", "threat"]);
        let shadow = labels(&["threat", "insult", "spam"]);
        let d = score_deltas(&live, &[0.5, 0.25], &shadow, &[0.75, 0.25, 0.9]);
        assert_eq!(d, [("threat", 0.5), ("insult", -0.25)]);
    }

    #[test]
    fn flips_compare_label_names() {
        let live = labels(&["insult", "threat"]);
        let shadow = labels(&["threat", "insult"]);
        assert!(!top_label_flipped(&live, &[0.9, 0.1], &shadow, &[0.2, 0.8]));
        assert!(top_label_flipped(&live, &[0.9, 0.1], &shadow, &[0.8, 0.2]));
    }
}
