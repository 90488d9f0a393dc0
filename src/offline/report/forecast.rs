//! The forecast in queue units: what launching the candidate would do to a day of traffic, in
//! the figures a trust-and-safety lead plans with (REVIEW queue items, REJECTs moderators would
//! overturn, abuse let through), for live and for the candidate.
//!
//! Assumptions (also in docs/launch-report.md, "Forecast in queue units"):
//! - The compared reviews stand for every review offered to the candidate: sampling is by a
//!   review-id hash, and shed reviews are taken to be like the rest. So a cell of the comparison
//!   matrix per day is `cell x offered / compared / window x 86400` (offered and compared from the
//!   shadow outcomes). This is the cell divided by the effective sample rate and the coverage.
//! - Only REVIEW decisions go to the moderators' queue; ALLOW and REJECT are final.
//! - A REJECT is overturned when a moderator decided ALLOW or REVIEW on it; abuse is missed when
//!   the model decided ALLOW and a moderator decided REVIEW or REJECT. The shares come from the
//!   moderator verdicts on each model's own decisions, unweighted, with their 95% Wilson
//!   interval carried through as a range.

use serde::Serialize;

use super::derived::Derived;
use super::input::{REJECT, REVIEW, ReportInput, Source};
use super::stats::Estimate;
use crate::config::LaunchCriteria;
use crate::policy::Decision;

const ALLOW: usize = Decision::Allow.index();
const SECONDS_PER_DAY: f64 = 86_400.0;
/// Offline without `launch.reviews_per_day`, figures are per this many reviews.
pub const OFFLINE_PER_REVIEWS: f64 = 1000.0;

/// What every figure of a forecast is counted per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Day,
    /// Offline without a daily volume: per `OFFLINE_PER_REVIEWS` reviews.
    ThousandReviews,
}

impl Unit {
    /// "day" or "1000 reviews", as in "per day".
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Day => "day",
            Unit::ThousandReviews => "1000 reviews",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub unit: Unit,
    /// Reviews per unit the figures stand for (with `--surface`, that surface's); `None` when
    /// nothing was compared, and then every figure below is `None` too.
    pub volume: Option<f64>,
    pub review_queue: Option<QueueChange>,
    pub overturned_rejects: Pair,
    pub missed_abuse: Pair,
}

/// REVIEW decisions per unit: the items the moderators' queue gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QueueChange {
    pub live: f64,
    pub candidate: f64,
    /// Candidate minus live.
    pub change: f64,
    /// `change / live`; `None` when live sends no REVIEW.
    pub change_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub live: Expected,
    pub candidate: Expected,
}

/// Expected wrong decisions of one kind per unit: `decisions x share`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expected {
    /// Decisions of the kind (REJECTs, or ALLOWs) per unit.
    pub decisions: Option<f64>,
    /// Of the verdicts on such decisions, the share moderators decided otherwise.
    pub share: Estimate,
    /// The point estimate; `None` when `missing` says why.
    pub value: Option<f64>,
    /// From the share's 95% interval.
    pub range: Option<(f64, f64)>,
    pub missing: Option<String>,
}

// === impl Forecast ===

impl Forecast {
    pub fn of(input: &ReportInput, derived: &Derived, criteria: &LaunchCriteria) -> Forecast {
        let compared = derived.agreement.total;
        // Matrix cells to figures per unit. From Prometheus: every review offered per compared
        // one, per day of window. The outcome counts cover every surface while a `--surface`
        // matrix covers one, so the ratio uses the `compared` outcome, not the matrix total.
        let (unit, scale) = match &input.source {
            Source::Prometheus { window, .. } => {
                let (secs, t) = (window.as_secs_f64(), &derived.traffic);
                let ok = secs > 0.0 && t.compared > 0;
                (Unit::Day, ok.then(|| t.offered as f64 / t.compared as f64 / secs * SECONDS_PER_DAY))
            }
            Source::Offline { .. } => {
                let per = criteria.reviews_per_day.map(|n| n as f64);
                let unit = if per.is_some() { Unit::Day } else { Unit::ThousandReviews };
                (unit, (compared > 0).then(|| per.unwrap_or(OFFLINE_PER_REVIEWS) / compared as f64))
            }
        };
        let scale = scale.filter(|_| compared > 0);
        let volume = scale.map(|s| s * compared as f64);
        let m = &input.comparisons;
        let live_decided = |d: usize| scale.map(|s| m[d].iter().sum::<u64>() as f64 * s);
        let candidate_decided = |d: usize| scale.map(|s| (0..3).map(|l| m[l][d]).sum::<u64>() as f64 * s);
        let review_queue = live_decided(REVIEW).zip(candidate_decided(REVIEW)).map(|(live, candidate)| {
            let change = candidate - live;
            QueueChange { live, candidate, change, change_share: (live > 0.0).then(|| change / live) }
        });
        let verdicts = input.verdicts.unwrap_or_default();
        let min = criteria.min_verdicts;
        let pair = |decided: usize, wrong: fn(usize) -> bool| Pair {
            live: Expected::of(live_decided(decided), &verdicts.live, decided, wrong, min, "live"),
            candidate: Expected::of(candidate_decided(decided), &verdicts.candidate, decided, wrong, min, "candidate"),
        };
        Forecast {
            unit,
            volume,
            review_queue,
            overturned_rejects: pair(REJECT, |human| human < REJECT),
            missed_abuse: pair(ALLOW, |human| human >= REVIEW),
        }
    }

    /// Expected cost per unit of live and of the candidate: each weight times its expected
    /// count; `None` when either side lacks a figure a non-zero weight needs.
    pub fn cost(&self, wrong_reject: f64, missed_abuse: f64) -> Option<(f64, f64)> {
        // A weight of 0 needs no figure: a lead who only counts missed abuse is not blocked by
        // too few verdicts on REJECTs.
        let term = |w: f64, e: &Expected| if w == 0.0 { Some(0.0) } else { Some(w * e.value?) };
        let side = |o: &Expected, m: &Expected| Some(term(wrong_reject, o)? + term(missed_abuse, m)?);
        Some((
            side(&self.overturned_rejects.live, &self.missed_abuse.live)?,
            side(&self.overturned_rejects.candidate, &self.missed_abuse.candidate)?,
        ))
    }
}

impl Expected {
    /// From a `[model][human]` verdict matrix: of the verdicts on reviews the model decided
    /// `decided`, those whose human decision is `wrong`, scaled by `decisions` per unit.
    fn of(
        decisions: Option<f64>,
        verdicts: &[[u64; 3]; 3],
        decided: usize,
        wrong: fn(usize) -> bool,
        min_verdicts: u64,
        who: &str,
    ) -> Expected {
        let row = &verdicts[decided];
        let hits = row.iter().enumerate().filter(|(human, _)| wrong(*human)).map(|(_, n)| n).sum();
        let share = Estimate::new(hits, row.iter().sum());
        let total: u64 = verdicts.iter().flatten().sum();
        let name = super::input::DECISIONS[decided];
        let missing = if decisions.is_none() {
            Some("no compared reviews to forecast from".to_string())
        } else if total < min_verdicts {
            Some(format!("{total} verdicts on {who}, fewer than launch.min_verdicts ({min_verdicts})"))
        } else if share.n == 0 {
            Some(format!("no verdicts on reviews {who} decided {name}"))
        } else {
            None
        };
        let (value, range) = match (missing.is_none(), decisions, share.value, share.ci95) {
            (true, Some(d), Some(v), Some((lo, hi))) => (Some(d * v), Some((d * lo, d * hi))),
            _ => (None, None),
        };
        Expected { decisions, share, value, range, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::report::input::tests::input;
    use crate::policy::Confusion;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    fn forecast(i: &ReportInput, criteria: &LaunchCriteria) -> Forecast {
        Forecast::of(i, &Derived::of(i), criteria)
    }

    #[test]
    fn forecast_scales_the_comparison_matrix_to_a_day_of_offered_traffic() {
        // The sample input: a 1 h window, 2951 reviews offered, 1900 compared;
        // matrix [[1500, 60, 10], [30, 200, 20], [5, 15, 60]].
        let f = forecast(&input(), &LaunchCriteria { min_verdicts: 0, ..Default::default() });
        assert_eq!(f.unit, Unit::Day);
        let volume = 2951.0 * 24.0;
        assert!(close(f.volume.unwrap(), volume));
        let per_cell = volume / 1900.0;
        // Live REVIEWs: row 30 + 200 + 20 = 250; candidate REVIEWs: column 60 + 200 + 15 = 275.
        let q = f.review_queue.unwrap();
        assert!(close(q.live, 250.0 * per_cell) && close(q.candidate, 275.0 * per_cell), "{q:?}");
        assert!(close(q.change, 25.0 * per_cell) && close(q.change_share.unwrap(), 0.1), "{q:?}");
        // Overturned REJECTs. Live verdicts [[80, 6, 4], [5, 20, 5], [1, 4, 25]]: REJECT row
        // 1 + 4 of 30 overturned; live REJECTs: row 5 + 15 + 60 = 80.
        let o = &f.overturned_rejects.live;
        assert_eq!((o.share.hits, o.share.n), (5, 30));
        assert!(close(o.decisions.unwrap(), 80.0 * per_cell));
        assert!(close(o.value.unwrap(), 80.0 * per_cell * 5.0 / 30.0));
        let (lo, hi) = o.share.ci95.unwrap();
        let (rlo, rhi) = o.range.unwrap();
        assert!(close(rlo, 80.0 * per_cell * lo) && close(rhi, 80.0 * per_cell * hi), "{:?}", o.range);
        // Candidate verdicts [[78, 4, 2], [4, 22, 4], [1, 4, 31]]: 5 of 36; candidate REJECTs:
        // column 10 + 20 + 60 = 90.
        let o = &f.overturned_rejects.candidate;
        assert!(close(o.value.unwrap(), 90.0 * per_cell * 5.0 / 36.0));
        // Missed abuse: live ALLOW row of verdicts 6 + 4 of 90, live ALLOWs 1570; the candidate
        // 4 + 2 of 84 on its 1535 ALLOWs.
        assert!(close(f.missed_abuse.live.value.unwrap(), 1570.0 * per_cell * 10.0 / 90.0));
        assert!(close(f.missed_abuse.candidate.value.unwrap(), 1535.0 * per_cell * 6.0 / 84.0));
        // Cost 2 per wrong REJECT, 1 per missed abuse.
        let (live, candidate) = f.cost(2.0, 1.0).unwrap();
        let want_live = per_cell * (2.0 * 80.0 * 5.0 / 30.0 + 1570.0 * 10.0 / 90.0);
        let want_candidate = per_cell * (2.0 * 90.0 * 5.0 / 36.0 + 1535.0 * 6.0 / 84.0);
        assert!(close(live, want_live) && close(candidate, want_candidate), "{live} {candidate}");
    }

    #[test]
    fn forecast_gives_no_figure_below_min_verdicts_or_without_comparisons() {
        let mut i = input();
        // 150 verdicts on each model; with 125 on live, only the candidate has figures.
        i.verdicts.as_mut().unwrap().live = Confusion([[80, 6, 4], [5, 20, 5], [1, 4, 0]]);
        let f = forecast(&i, &LaunchCriteria { min_verdicts: 130, ..Default::default() });
        let live = &f.overturned_rejects.live;
        assert_eq!(live.value, None);
        assert_eq!(live.missing.as_deref(), Some("125 verdicts on live, fewer than launch.min_verdicts (130)"));
        assert!(f.overturned_rejects.candidate.value.is_some());
        assert_eq!(f.cost(1.0, 1.0), None);
        // A weight of 0 needs no figure; live's missed abuse is missing too, so any weight on it
        // leaves no cost.
        assert_eq!(f.cost(0.0, 0.0), Some((0.0, 0.0)));
        assert_eq!(f.cost(0.0, 1.0), None);
        // A model with no verdict on its REJECTs has no overturn share.
        i.verdicts.as_mut().unwrap().candidate = Confusion([[80, 6, 4], [5, 20, 5], [0, 0, 0]]);
        let f = forecast(&i, &LaunchCriteria { min_verdicts: 0, ..Default::default() });
        let c = &f.overturned_rejects.candidate;
        assert_eq!(c.missing.as_deref(), Some("no verdicts on reviews candidate decided REJECT"));
        i.comparisons = Confusion::default();
        let f = forecast(&i, &LaunchCriteria { min_verdicts: 0, ..Default::default() });
        assert_eq!((f.volume, f.review_queue), (None, None));
        assert_eq!(f.missed_abuse.live.missing.as_deref(), Some("no compared reviews to forecast from"));
    }

    #[test]
    fn offline_forecasts_are_per_day_with_a_daily_volume_and_per_1000_reviews_without() {
        let mut i = input();
        i.source = Source::Offline { labels_file: "labels.jsonl".into(), reviews: 1900 };
        let f = forecast(&i, &LaunchCriteria { reviews_per_day: Some(19_000), ..Default::default() });
        assert_eq!((f.unit, f.volume), (Unit::Day, Some(19_000.0)));
        // 10 forecast reviews per compared one.
        assert!(close(f.review_queue.unwrap().live, 2500.0));
        let f = forecast(&i, &LaunchCriteria::default());
        assert_eq!((f.unit, f.volume), (Unit::ThousandReviews, Some(1000.0)));
        assert!(close(f.review_queue.unwrap().candidate, 275.0 * 1000.0 / 1900.0));
    }
}
