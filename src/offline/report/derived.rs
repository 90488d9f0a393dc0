//! Figures derived from a `ReportInput`: coverage, agreement, precision and recall against
//! moderator verdicts, and the score-delta distribution. Pure functions of the input.

use std::collections::BTreeMap;

use serde::Serialize;

use super::input::{REJECT, REVIEW, ReportInput, SHED_OUTCOMES};
use super::stats::{Estimate, ratio};
use super::weighted::WeightedAccuracy;
use crate::metrics::ShadowOutcome;

/// Everything the renderers and the launch criteria read besides the input itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Derived {
    pub traffic: Traffic,
    pub agreement: Agreement,
    /// `None` without moderator verdicts.
    pub accuracy: Option<Accuracy>,
    /// From the labelling queue's weighted verdicts; `None` without any.
    pub weighted: Option<WeightedAccuracy>,
    /// Per label, from `ReportInput::score_deltas`.
    pub score_deltas: BTreeMap<String, DeltaDistribution>,
}

/// What became of the reviews offered to the candidate. Rates are over `sampled`: every
/// offered review except those sampled out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Traffic {
    pub offered: u64,
    pub sampled_out: u64,
    pub sampled: u64,
    pub compared: u64,
    pub shed: u64,
    pub errors: u64,
    /// Share of all offered reviews that were sampled out (by design, not a failure).
    pub sampled_out_share: Option<f64>,
    pub coverage: Option<f64>,
    pub shed_rate: Option<f64>,
    pub error_rate: Option<f64>,
}

/// How the candidate's decisions relate to live's, over the confusion matrix.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Agreement {
    pub total: u64,
    pub agree: u64,
    pub stricter: u64,
    pub more_lenient: u64,
    pub agreement_rate: Option<f64>,
    pub stricter_rate: Option<f64>,
    pub more_lenient_rate: Option<f64>,
}

/// Precision and recall of both models against moderator verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Accuracy {
    pub live: ModelAccuracy,
    pub candidate: ModelAccuracy,
}

/// One model's precision and recall at both flagging levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelAccuracy {
    /// Verdicts counted for this model.
    pub verdicts: u64,
    /// Flagged = decision >= REVIEW.
    pub at_review: PrecisionRecall,
    /// Flagged = decision >= REJECT.
    pub at_reject: PrecisionRecall,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrecisionRecall {
    pub precision: Estimate,
    pub recall: Estimate,
}

/// A label's score deltas as per-bucket counts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeltaDistribution {
    pub buckets: Vec<DeltaBucket>,
    pub total: u64,
    /// Index into `buckets` of the bucket holding the median; `None` when `total` is 0.
    pub median_bucket: Option<usize>,
}

/// Deltas in `(lower, upper]`; the first bucket's `lower` is `None` (minus infinity) and the
/// last one's `upper` is `None` (plus infinity).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DeltaBucket {
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub count: u64,
}

// === impl Derived ===

impl Derived {
    pub fn of(input: &ReportInput) -> Derived {
        Derived {
            traffic: Traffic::of(input),
            agreement: Agreement::of(&input.comparisons),
            accuracy: input
                .verdicts
                .map(|v| Accuracy { live: ModelAccuracy::of(&v.live), candidate: ModelAccuracy::of(&v.candidate) }),
            weighted: WeightedAccuracy::of(&input.labelled),
            score_deltas: input
                .score_deltas
                .iter()
                .map(|(label, cumulative)| (label.clone(), DeltaDistribution::of(cumulative)))
                .collect(),
        }
    }
}

impl Traffic {
    pub fn of(input: &ReportInput) -> Traffic {
        let offered: u64 = input.outcomes.values().sum();
        let sampled_out = input.outcome(ShadowOutcome::SampledOut.as_str());
        let sampled = offered - sampled_out;
        let compared = input.outcome(ShadowOutcome::Compared.as_str());
        let shed = SHED_OUTCOMES.iter().map(|o| input.outcome(o)).sum();
        let errors = input.outcome(ShadowOutcome::Error.as_str());
        Traffic {
            offered,
            sampled_out,
            sampled,
            compared,
            shed,
            errors,
            sampled_out_share: ratio(sampled_out, offered),
            coverage: ratio(compared, sampled),
            shed_rate: ratio(shed, sampled),
            error_rate: ratio(errors, sampled),
        }
    }
}

impl Agreement {
    /// From `[live][candidate]` counts: the diagonal agrees, above it the candidate is
    /// stricter, below it more lenient.
    pub fn of(m: &[[u64; 3]; 3]) -> Agreement {
        let (mut agree, mut stricter, mut more_lenient) = (0, 0, 0);
        for (live, row) in m.iter().enumerate() {
            for (candidate, &n) in row.iter().enumerate() {
                match candidate.cmp(&live) {
                    std::cmp::Ordering::Equal => agree += n,
                    std::cmp::Ordering::Greater => stricter += n,
                    std::cmp::Ordering::Less => more_lenient += n,
                }
            }
        }
        let total = agree + stricter + more_lenient;
        Agreement {
            total,
            agree,
            stricter,
            more_lenient,
            agreement_rate: ratio(agree, total),
            stricter_rate: ratio(stricter, total),
            more_lenient_rate: ratio(more_lenient, total),
        }
    }
}

impl ModelAccuracy {
    /// From `[model decision][human decision]` counts.
    pub fn of(m: &[[u64; 3]; 3]) -> ModelAccuracy {
        ModelAccuracy {
            verdicts: m.iter().flatten().sum(),
            at_review: PrecisionRecall::at(m, REVIEW),
            at_reject: PrecisionRecall::at(m, REJECT),
        }
    }

    /// The figures at `REVIEW` or `REJECT`.
    pub fn at(&self, level: usize) -> &PrecisionRecall {
        if level == REJECT { &self.at_reject } else { &self.at_review }
    }
}

impl PrecisionRecall {
    /// "Flagged at `level`" means decision >= `level`, for the model and the moderator alike.
    pub fn at(m: &[[u64; 3]; 3], level: usize) -> PrecisionRecall {
        let (mut both, mut model, mut human) = (0, 0, 0);
        for (md, row) in m.iter().enumerate() {
            for (hd, &n) in row.iter().enumerate() {
                if md >= level {
                    model += n;
                }
                if hd >= level {
                    human += n;
                }
                if md >= level && hd >= level {
                    both += n;
                }
            }
        }
        PrecisionRecall { precision: Estimate::new(both, model), recall: Estimate::new(both, human) }
    }
}

impl DeltaDistribution {
    /// From cumulative `(le, count)` buckets in any order.
    pub fn of(cumulative: &[(f64, u64)]) -> DeltaDistribution {
        let mut sorted = cumulative.to_vec();
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut buckets = Vec::with_capacity(sorted.len());
        let (mut lower, mut below) = (None, 0u64);
        for &(le, cum) in &sorted {
            // Buckets are counted separately, so a cumulative count can trail the one below
            // by a scrape; never let that go negative.
            let count = cum.saturating_sub(below);
            buckets.push(DeltaBucket { lower, upper: le.is_finite().then_some(le), count });
            lower = Some(le);
            below = below.max(cum);
        }
        let total = buckets.iter().map(|b| b.count).sum();
        let median_bucket = (total > 0).then(|| {
            let mut running = 0;
            buckets
                .iter()
                .position(|b| {
                    running += b.count;
                    2 * running >= total
                })
                .unwrap_or(0)
        });
        DeltaDistribution { buckets, total, median_bucket }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offline::report::input::tests::input;

    #[test]
    fn traffic_rates_leave_sampled_out_reviews_out_of_the_denominator() {
        let mut i = input();
        i.outcomes = [
            ("compared", 900),
            ("sampled_out", 1000),
            ("queue_full", 40),
            ("live_pressure", 20),
            ("deadline", 10),
            ("breaker_open", 20),
            ("error", 10),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t = Traffic::of(&i);
        assert_eq!((t.offered, t.sampled, t.compared, t.shed, t.errors), (2000, 1000, 900, 90, 10));
        assert_eq!(t.coverage, Some(0.9));
        assert_eq!(t.shed_rate, Some(0.09));
        assert_eq!(t.error_rate, Some(0.01));
        assert_eq!(t.sampled_out_share, Some(0.5));
        i.outcomes.clear();
        assert_eq!(Traffic::of(&i).coverage, None);
    }

    #[test]
    fn agreement_splits_the_matrix_at_its_diagonal() {
        let a = Agreement::of(&[[50, 5, 1], [2, 20, 3], [0, 4, 15]]);
        assert_eq!((a.total, a.agree, a.stricter, a.more_lenient), (100, 85, 9, 6));
        assert_eq!((a.agreement_rate, a.stricter_rate, a.more_lenient_rate), (Some(0.85), Some(0.09), Some(0.06)));
        assert_eq!(Agreement::of(&[[0; 3]; 3]).agreement_rate, None);
    }

    #[test]
    fn precision_and_recall_at_both_levels() {
        // [model][human]:
        //            human allow review reject
        // model allow     40     6      4
        //      review      5    10      5
        //      reject      1     4     25
        let m = [[40, 6, 4], [5, 10, 5], [1, 4, 25]];
        let a = ModelAccuracy::of(&m);
        assert_eq!(a.verdicts, 100);
        // At REVIEW: model flags 20 + 30 = 50, of which the human flagged 10+5+4+25 = 44;
        // the human flags 6+4+10+5+4+25 = 54.
        assert_eq!((a.at_review.precision.hits, a.at_review.precision.n), (44, 50));
        assert_eq!((a.at_review.recall.hits, a.at_review.recall.n), (44, 54));
        // At REJECT: model flags 30, 25 of them rejected by the human; the human rejects 34.
        assert_eq!((a.at_reject.precision.hits, a.at_reject.precision.n), (25, 30));
        assert_eq!((a.at_reject.recall.hits, a.at_reject.recall.n), (25, 34));
        assert_eq!(a.at(REJECT).precision.value, Some(25.0 / 30.0));
        // A model that never flags has no precision (n/a), and recall 0.
        let never = ModelAccuracy::of(&[[10, 5, 5], [0; 3], [0; 3]]);
        assert_eq!(never.at_reject.precision.value, None);
        assert_eq!(never.at_reject.recall.value, Some(0.0));
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts_with_a_median() {
        let inf = f64::INFINITY;
        let d = DeltaDistribution::of(&[(0.0, 6), (-0.1, 2), (0.1, 9), (inf, 10)]);
        let counts: Vec<u64> = d.buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, [2, 4, 3, 1]);
        assert_eq!(d.total, 10);
        // Cumulative 2, 6: the 5th of 10 falls in (-0.1, 0].
        assert_eq!(d.median_bucket, Some(1));
        assert_eq!((d.buckets[0].lower, d.buckets[0].upper), (None, Some(-0.1)));
        assert_eq!((d.buckets[3].lower, d.buckets[3].upper), (Some(0.1), None));
        let empty = DeltaDistribution::of(&[(0.0, 0), (inf, 0)]);
        assert_eq!((empty.total, empty.median_bucket), (0, None));
    }
}
