//! Precision and recall from verdicts on the labelling queue's sample, each verdict weighted by
//! the inverse of its inclusion probability (Horvitz-Thompson), so the sample, which holds
//! disagreements far more often than traffic does, stands for the whole traffic again.
//!
//! A share is a ratio of weighted sums (Σw over the hits / Σw over the cases): consistent, with
//! a bias of order 1/n, and unchanged by a factor common to every weight (so the shadow's own
//! sample rate does not matter). Its 95% interval is the Wilson score interval at Kish's
//! effective sample size n_eff = (Σw)² / Σw² over the cases: with equal weights it is the plain
//! Wilson interval; the more the weights vary, the smaller n_eff and the wider the interval.

use serde::Serialize;

use super::input::{LabelledCell, REJECT, REVIEW};
use super::stats::{Estimate, Z95, wilson_at};

/// A weighted share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WeightedEstimate {
    /// Verdicts the share is over (its denominator, unweighted).
    pub n: u64,
    /// Σw over the hits and over the cases.
    pub hit_weight: f64,
    pub weight: f64,
    /// Kish's effective sample size of the cases.
    pub effective_n: f64,
    pub value: Option<f64>,
    pub ci95: Option<(f64, f64)>,
    /// The same share with every verdict counted once: what the sample alone says, biased
    /// towards the strata sampled more.
    pub unweighted: Estimate,
}

/// Sums over a set of weighted verdicts.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    n: u64,
    hits: u64,
    weight: f64,
    hit_weight: f64,
    weight_squared: f64,
}

impl Sums {
    fn add(&mut self, cell: &LabelledCell, hit: bool) {
        let w = 1.0 / cell.inclusion_probability;
        let n = cell.count as f64;
        self.n += cell.count;
        self.weight += n * w;
        self.weight_squared += n * w * w;
        if hit {
            self.hits += cell.count;
            self.hit_weight += n * w;
        }
    }

    fn estimate(&self) -> WeightedEstimate {
        let effective_n = if self.weight_squared > 0.0 { self.weight * self.weight / self.weight_squared } else { 0.0 };
        let value = (self.weight > 0.0).then(|| self.hit_weight / self.weight);
        WeightedEstimate {
            n: self.n,
            hit_weight: self.hit_weight,
            weight: self.weight,
            effective_n,
            value,
            ci95: value.and_then(|p| wilson_at(p, effective_n, Z95)),
            unweighted: Estimate::new(self.hits, self.n),
        }
    }
}

/// Weighted precision and recall at one flagging level.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WeightedPrecisionRecall {
    pub precision: WeightedEstimate,
    pub recall: WeightedEstimate,
}

/// One model's weighted figures at both levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WeightedModelAccuracy {
    /// Flagged = decision >= REVIEW.
    pub at_review: WeightedPrecisionRecall,
    /// Flagged = decision >= REJECT.
    pub at_reject: WeightedPrecisionRecall,
}

impl WeightedModelAccuracy {
    pub fn at(&self, level: usize) -> &WeightedPrecisionRecall {
        if level == REJECT { &self.at_reject } else { &self.at_review }
    }
}

/// Live and candidate, from the same weighted verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WeightedAccuracy {
    /// Verdicts in the sample, in all and where live and candidate disagree.
    pub verdicts: u64,
    pub disagreements: u64,
    pub live: WeightedModelAccuracy,
    pub candidate: WeightedModelAccuracy,
}

impl WeightedAccuracy {
    /// `None` without verdicts.
    pub fn of(cells: &[LabelledCell]) -> Option<WeightedAccuracy> {
        let verdicts: u64 = cells.iter().map(|c| c.count).sum();
        if verdicts == 0 {
            return None;
        }
        let disagreements = cells.iter().filter(|c| c.live != c.candidate).map(|c| c.count).sum();
        let model = |decision: fn(&LabelledCell) -> usize| WeightedModelAccuracy {
            at_review: precision_recall(cells, decision, REVIEW),
            at_reject: precision_recall(cells, decision, REJECT),
        };
        Some(WeightedAccuracy { verdicts, disagreements, live: model(|c| c.live), candidate: model(|c| c.candidate) })
    }
}

/// "Flagged at `level`" is a decision >= `level`, for the model and the moderator alike.
pub fn precision_recall(
    cells: &[LabelledCell],
    decision: impl Fn(&LabelledCell) -> usize,
    level: usize,
) -> WeightedPrecisionRecall {
    let (mut precision, mut recall) = (Sums::default(), Sums::default());
    for cell in cells.iter().filter(|c| c.inclusion_probability > 0.0) {
        let (model, human) = (decision(cell) >= level, cell.human >= level);
        if model {
            precision.add(cell, human);
        }
        if human {
            recall.add(cell, model);
        }
    }
    WeightedPrecisionRecall { precision: precision.estimate(), recall: recall.estimate() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shadow::labelling::{Design, Stratum};

    fn cell(p: f64, live: usize, candidate: usize, human: usize, count: u64) -> LabelledCell {
        LabelledCell { inclusion_probability: p, live, candidate, human, count }
    }

    #[test]
    fn equal_weights_give_the_plain_share_and_wilson_interval() {
        // 8 of 10 flagged by live are human-flagged, all at p = 0.5: the weights cancel.
        let cells = [cell(0.5, 2, 2, 2, 8), cell(0.5, 2, 2, 0, 2)];
        let e = precision_recall(&cells, |c| c.live, REVIEW).precision;
        assert_eq!(e.value, Some(0.8));
        assert!((e.effective_n - 10.0).abs() < 1e-9);
        let plain = Estimate::new(8, 10);
        let (lo, hi) = e.ci95.unwrap();
        let (plo, phi) = plain.ci95.unwrap();
        assert!((lo - plo).abs() < 1e-12 && (hi - phi).abs() < 1e-12);
        assert_eq!(e.unweighted, plain);
    }

    #[test]
    fn weights_and_effective_sample_size_by_hand() {
        // Live flags 4 disagreements at p = 1 (1 hit) and 2 agreements at p = 0.1 (2 hits):
        // precision = (1 + 2 * 10) / (4 + 2 * 10) = 21 / 24; n_eff = 24^2 / (4 + 2 * 100) =
        // 576 / 204.
        let cells = [cell(1.0, 2, 0, 2, 1), cell(1.0, 2, 0, 0, 3), cell(0.1, 2, 2, 2, 2)];
        let e = precision_recall(&cells, |c| c.live, REVIEW).precision;
        assert!((e.value.unwrap() - 21.0 / 24.0).abs() < 1e-12);
        assert!((e.effective_n - 576.0 / 204.0).abs() < 1e-12);
        assert_eq!((e.n, e.unweighted.hits), (6, 3));
        // The candidate flags only the agreements: 2 of 2, recall over the human-flagged
        // (1 + 2 * 10 = 21 by weight), of which the candidate found 20.
        let c = precision_recall(&cells, |c| c.candidate, REVIEW);
        assert_eq!(c.precision.value, Some(1.0));
        assert!((c.recall.value.unwrap() - 20.0 / 21.0).abs() < 1e-12);
        assert_eq!(WeightedAccuracy::of(&[]), None);
    }

    /// The synthetic mix: a population of 200,000 reviews whose live and candidate decisions
    /// and moderator truth are set by construction, so the true precision is counted here
    /// directly. Disagreements are 5% of traffic, and on them live is wrong 80% of the time
    /// while on agreements it is right 95% of the time. The queue (the server's own `Design`)
    /// takes every disagreement and 1% of agreements; verdicts come back only for those. The
    /// sample is then mostly disagreements: counted once each, it says live's precision is
    /// far lower than it is; weighted, it finds the truth within its interval.
    #[test]
    fn the_weighted_estimate_recovers_the_true_precision_where_the_unweighted_one_does_not() {
        let design = Design { shadow_rate: 1.0, disagreement_rate: 1.0, agreement_rate: 0.01 };
        // Reviews are flagged by live (REVIEW) unless i % 4 == 0; the candidate disagrees on
        // 1 review in 20 (i % 20 == 1, all flagged by live, so the candidate allows them).
        // Truth: on disagreements the moderator flags 1 in 5, on agreements 19 in 20.
        let n = 200_000usize;
        let (mut flagged, mut flagged_right) = (0u64, 0u64);
        let mut sample: std::collections::BTreeMap<(u64, usize, usize, usize), u64> = Default::default();
        for i in 0..n {
            let live = if i % 4 == 0 { 0 } else { 1 };
            let disagree = i % 20 == 1;
            let candidate = if disagree { 0 } else { live };
            let human = if disagree { usize::from(i % 100 < 20) } else { usize::from(i % 100 != 50) };
            if live >= REVIEW {
                flagged += 1;
                flagged_right += u64::from(human >= REVIEW);
            }
            let id = format!("review-{i}");
            let stratum = if disagree { Stratum::Disagreement } else { Stratum::Agreement };
            if design.picks(&id, "salt", stratum) {
                let p = design.inclusion_probability(stratum);
                *sample.entry((p.to_bits(), live, candidate, human)).or_default() += 1;
            }
        }
        let truth = flagged_right as f64 / flagged as f64;
        let cells: Vec<LabelledCell> = sample
            .into_iter()
            .map(|((p, live, candidate, human), count)| cell(f64::from_bits(p), live, candidate, human, count))
            .collect();
        let e = precision_recall(&cells, |c| c.live, REVIEW).precision;
        let (lo, hi) = e.ci95.unwrap();
        let (ulo, uhi) = e.unweighted.ci95.unwrap();
        assert!(lo <= truth && truth <= hi, "weighted {:?} [{lo}, {hi}] misses the truth {truth}", e.value);
        assert!((e.value.unwrap() - truth).abs() < 0.02, "weighted {:?}, truth {truth}", e.value);
        assert!(truth > uhi || truth < ulo, "unweighted {:?} [{ulo}, {uhi}] should miss {truth}", e.unweighted.value);
        assert!((e.unweighted.value.unwrap() - truth).abs() > 0.2, "unweighted {:?}", e.unweighted.value);
        // The sample is small and mostly disagreements: that is the point of it.
        assert!(e.n < 15_000 && e.effective_n < e.n as f64, "{e:?}");
    }
}
