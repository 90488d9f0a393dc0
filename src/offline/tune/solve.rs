//! The threshold solver: pure functions of one label's scores and who counts as positive.
//!
//! A candidate threshold sits at or just below a review's score: a threshold flags the reviews
//! scored at or above it (`Policy::decide` is inclusive), so tied scores are always flagged
//! together. Of the values that flag exactly the same reviews on the file (above the next lower
//! score, at most this one), the candidate is the one with the fewest decimals (`0.33`, not
//! `0.33060014`): it reads well in a config and changes nothing on the file it was counted on.

use serde::Serialize;

use crate::offline::report::Estimate;

/// One labelled review as one label sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// The model's score for the label (finite: the session refuses anything else).
    pub score: f32,
    /// Whether the moderator's verdict counts as a positive for this label and target.
    pub positive: bool,
}

/// What a threshold does on the file.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Counts {
    pub threshold: f32,
    /// Reviews scored at or above the threshold.
    pub flagged: u64,
    /// Flagged reviews that are positives.
    pub hits: u64,
    /// Positives on the file, flagged or not.
    pub positives: u64,
    /// Labelled reviews on the file.
    pub reviews: u64,
    /// `hits / flagged`, with its Wilson 95% interval.
    pub precision: Estimate,
    /// `hits / positives`, with its Wilson 95% interval.
    pub recall: Estimate,
}

impl Counts {
    fn new(threshold: f32, flagged: u64, hits: u64, positives: u64, reviews: u64) -> Counts {
        Counts {
            threshold,
            flagged,
            hits,
            positives,
            reviews,
            precision: Estimate::new(hits, flagged),
            recall: Estimate::new(hits, positives),
        }
    }

    /// The lower end of the precision's Wilson 95% interval; 0 when nothing is flagged.
    pub fn precision_lower(&self) -> f64 {
        self.precision.ci95.map_or(0.0, |(lo, _)| lo)
    }
}

/// The counts at `threshold`.
pub fn at(points: &[Point], threshold: f32) -> Counts {
    let flagged = points.iter().filter(|p| p.score >= threshold);
    let (flagged, hits) = flagged.fold((0, 0), |(f, h), p| (f + 1, h + u64::from(p.positive)));
    Counts::new(threshold, flagged, hits, positives(points), points.len() as u64)
}

/// The counts at every candidate threshold, highest threshold first (so `flagged` grows).
fn candidates(points: &[Point]) -> Vec<Counts> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| b.score.total_cmp(&a.score));
    let (total, reviews) = (positives(points), points.len() as u64);
    let mut out = Vec::new();
    let (mut flagged, mut hits) = (0, 0);
    for (i, p) in sorted.iter().enumerate() {
        flagged += 1;
        hits += u64::from(p.positive);
        // Only after the last of a run of equal scores: a threshold cannot split a tie.
        let next = sorted.get(i + 1).map(|n| n.score);
        if next != Some(p.score) {
            out.push(Counts::new(readable(p.score, next), flagged, hits, total, reviews));
        }
    }
    out
}

/// The value with the fewest decimals (up to 9), within one last decimal of `score`, that is at
/// most `score` and above `below` (the next lower score), so it flags exactly the reviews
/// `score` does; `score` itself when none is shorter or nothing is below (the lowest score has
/// no gap under it to round into).
fn readable(score: f32, below: Option<f32>) -> f32 {
    let Some(below) = below else { return score };
    let fits = |t: f32| t <= score && t > below;
    for decimals in 1..=9 {
        let scale = 10f64.powi(decimals);
        let nearest = (f64::from(score) * scale).round();
        // Nearest first (0.7 for a score of 0.699999988 as f32), then one step down.
        for steps in [nearest, nearest - 1.0] {
            // Through the decimal text, as the config will read it back.
            let text = format!("{:.*}", decimals as usize, steps / scale);
            if let Ok(t) = text.parse::<f32>()
                && fits(t)
            {
                return t;
            }
        }
    }
    score
}

fn positives(points: &[Point]) -> u64 {
    points.iter().filter(|p| p.positive).count() as u64
}

/// The answer to a precision target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PrecisionSolution {
    /// The lowest threshold whose precision's Wilson 95% lower bound is at least the target.
    Met(Counts),
    /// No threshold meets it; the candidate with the highest lower bound, if any review exists.
    Unmet(Option<Counts>),
}

/// The lowest threshold whose precision, by the lower bound of its Wilson 95% interval, is at
/// least `target`. The lower bound rather than the point estimate: 3 hits out of 3 flagged is
/// a precision of 1.0 but says little, and should not pass a 0.9 target by luck.
pub fn lowest_precise(points: &[Point], target: f64) -> PrecisionSolution {
    let all = candidates(points);
    // Precision is not monotonic in the threshold, so every candidate is looked at.
    match all.iter().rev().find(|c| c.precision_lower() >= target) {
        Some(c) => PrecisionSolution::Met(*c),
        None => {
            PrecisionSolution::Unmet(all.into_iter().max_by(|a, b| a.precision_lower().total_cmp(&b.precision_lower())))
        }
    }
}

/// The lowest threshold that flags at most `volume` reviews, `None` when none does (`volume` is
/// 0, or the top score alone is tied across more than `volume` reviews).
pub fn matching_volume(points: &[Point], volume: u64) -> Option<Counts> {
    candidates(points).into_iter().take_while(|c| c.flagged <= volume).last()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Wilson 95% lower bound, written out from the closed formula
    /// (p + z²/2n - z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), independent of `report::stats`.
    fn wilson_lower(hits: f64, n: f64) -> f64 {
        let z: f64 = 1.96;
        let p = hits / n;
        (p + z * z / (2.0 * n) - z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / (1.0 + z * z / n)
    }

    fn points(rows: &[(f32, bool)]) -> Vec<Point> {
        rows.iter().map(|&(score, positive)| Point { score, positive }).collect()
    }

    /// Ten reviews: the top five positives, then a negative, a positive, three negatives.
    fn ten() -> Vec<Point> {
        points(&[
            (0.95, true),
            (0.9, true),
            (0.85, true),
            (0.8, true),
            (0.75, true),
            (0.7, false),
            (0.6, true),
            (0.5, false),
            (0.4, false),
            (0.3, false),
        ])
    }

    #[test]
    fn the_hand_computed_lower_bounds_are_what_the_solver_sees() {
        // 5 of 5 flagged at 0.75: lower bound 0.5655; 6 of 7 at 0.6: 0.4869.
        assert!((wilson_lower(5.0, 5.0) - 0.5655).abs() < 1e-4, "{}", wilson_lower(5.0, 5.0));
        assert!((wilson_lower(6.0, 7.0) - 0.4869).abs() < 1e-4, "{}", wilson_lower(6.0, 7.0));
        let c = at(&ten(), 0.75);
        assert_eq!((c.flagged, c.hits, c.positives, c.reviews), (5, 5, 6, 10));
        assert!((c.precision_lower() - wilson_lower(5.0, 5.0)).abs() < 1e-12);
    }

    #[test]
    fn a_precision_target_takes_the_lowest_threshold_whose_lower_bound_meets_it() {
        // Lower bounds by threshold: 0.95 -> 1/1 0.2065, 0.9 -> 2/2 0.3424, 0.85 -> 3/3 0.4385,
        // 0.8 -> 4/4 0.5101, 0.75 -> 5/5 0.5655, 0.7 -> 5/6 0.4365, 0.6 -> 6/7 0.4869, then lower.
        // A target of 0.5 is met at 0.8 and 0.75 only: the lowest is 0.75, not 0.6 (6/7 = 0.857
        // by point estimate, 0.4869 by lower bound).
        let PrecisionSolution::Met(c) = lowest_precise(&ten(), 0.5) else { panic!("0.5 is reachable") };
        assert_eq!(c.threshold, 0.75);
        assert_eq!((c.flagged, c.hits), (5, 5));
        assert!((c.precision_lower() - wilson_lower(5.0, 5.0)).abs() < 1e-12);
        assert!((c.recall.value.unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // 0.45 is met at 0.6 as well (6/7: 0.4869), which is lower.
        let PrecisionSolution::Met(c) = lowest_precise(&ten(), 0.45) else { panic!("0.45 is reachable") };
        assert_eq!((c.threshold, c.flagged, c.hits), (0.6, 7, 6));
    }

    #[test]
    fn an_unreachable_target_reports_the_best_candidate() {
        // The best lower bound on ten reviews is 5/5's 0.5655: 0.9 cannot be shown.
        let PrecisionSolution::Unmet(Some(best)) = lowest_precise(&ten(), 0.9) else { panic!("0.9 is unreachable") };
        assert_eq!(best.threshold, 0.75);
        assert_eq!(lowest_precise(&[], 0.5), PrecisionSolution::Unmet(None));
    }

    #[test]
    fn many_clean_positives_meet_a_high_target_that_few_cannot() {
        // n of n correct has lower bound n / (n + z²): 35 / 38.84 = 0.9012 passes 0.9, 34 does not.
        assert!(wilson_lower(35.0, 35.0) >= 0.9 && wilson_lower(34.0, 34.0) < 0.9);
        let mut rows: Vec<(f32, bool)> = (0..35).map(|i| (0.5 + i as f32 / 100.0, true)).collect();
        rows.push((0.2, false));
        let PrecisionSolution::Met(c) = lowest_precise(&points(&rows), 0.9) else { panic!("35/35 meets 0.9") };
        assert_eq!((c.threshold, c.flagged, c.hits), (0.5, 35, 35));
        rows.remove(0);
        assert!(matches!(lowest_precise(&points(&rows), 0.9), PrecisionSolution::Unmet(_)));
    }

    #[test]
    fn thresholds_are_the_shortest_decimal_flagging_the_same_reviews() {
        // Anything in (0.30, 0.33060014] flags the same reviews: 0.33 is the shortest.
        assert_eq!(readable(0.330_600_14, Some(0.30)), 0.33);
        // Nothing shorter fits in (0.3306, 0.33060014].
        assert_eq!(readable(0.330_600_14, Some(0.3306)), 0.330_600_1);
        // A score of 0.7 (0.699999988 as f32) stays 0.7, not 0.69.
        assert_eq!(readable(0.7, Some(0.65)), 0.7);
        assert_eq!(readable(0.93, None), 0.93);
        assert_eq!(readable(0.93, Some(0.1)), 0.9);
        // On the file, the readable threshold flags what the score does.
        let rows = points(&[(0.330_600_14, true), (0.30, false)]);
        let PrecisionSolution::Unmet(Some(best)) = lowest_precise(&rows, 0.9) else {
            panic!("2 reviews prove nothing")
        };
        assert_eq!((best.threshold, best.flagged), (0.33, 1));
    }

    #[test]
    fn tied_scores_are_flagged_together() {
        // Two reviews tie at 0.8, one positive: no threshold flags only the positive one.
        let tied = points(&[(0.9, true), (0.8, true), (0.8, false), (0.1, false)]);
        let flagged: Vec<u64> = candidates(&tied).iter().map(|c| c.flagged).collect();
        assert_eq!(flagged, [1, 3, 4]);
        assert_eq!(matching_volume(&tied, 2).map(|c| c.threshold), Some(0.9));
        assert_eq!(at(&tied, 0.8).flagged, 3);
    }

    #[test]
    fn volume_takes_the_lowest_threshold_flagging_no_more_than_asked() {
        let c = matching_volume(&ten(), 7).unwrap();
        assert_eq!((c.threshold, c.flagged, c.hits), (0.6, 7, 6));
        assert!((c.recall.value.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(matching_volume(&ten(), 0), None);
        assert_eq!(matching_volume(&ten(), 100).map(|c| c.flagged), Some(10));
    }
}
