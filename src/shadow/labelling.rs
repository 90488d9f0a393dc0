//! The labelling queue: compared reviews picked for moderators to label, most of them where a
//! shadow and live disagree, plus a control slice of agreements, each written with the
//! probability it had of being picked, so verdicts on them can be weighted back to the whole
//! traffic (Horvitz-Thompson: a verdict counts 1 / p times).
//!
//! The pick is a pure function of the review id and the comparison's outcome (`Design`): a
//! stable hash of the id under the shadow's own salt (the shadow sample) and under `SALT` (the
//! labelling sample, at the stratum's rate). So the same review is picked on every replica and
//! retry, and when its verdict comes back the feedback path, which scores it with live and
//! every shadow anyway, recomputes the outcome, the pick and p without anything stored.
//! One salt for every pair: a review that several shadows disagree on is picked by all of them
//! at once, so one label serves every candidate.
//!
//! The file is JSON lines with the disagreement log's writer (bounded queue, rotation, drops
//! counted in `modserve_labelling_queue_entries_total`).

use std::thread::JoinHandle;

use serde::Serialize;

use super::compare::Direction;
use super::disagreement::{Files, Lines, Side};
pub use crate::config::LabellingConfig;
use crate::metrics::LogMetrics;

/// Salt of the labelling sample, independent of every shadow's sample and of the disagreement
/// log's.
pub const SALT: &str = "modserve-labelling";

/// Which part of the population a compared review belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stratum {
    /// Live and shadow decided the same.
    Agreement,
    /// They decided differently (stricter or more lenient).
    Disagreement,
}

impl Stratum {
    pub fn of(direction: Direction) -> Stratum {
        if direction == Direction::Agree { Stratum::Agreement } else { Stratum::Disagreement }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stratum::Agreement => "agreement",
            Stratum::Disagreement => "disagreement",
        }
    }
}

/// One shadow pair's sampling design: the shadow's configured sample, then the labelling rate
/// of the review's stratum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Design {
    /// The shadow's configured `sample_rate` (not the effective one, which changes with load and
    /// could not be recomputed when the verdict comes back).
    pub shadow_rate: f64,
    pub disagreement_rate: f64,
    pub agreement_rate: f64,
}

impl Design {
    pub fn new(shadow_rate: f64, config: &LabellingConfig) -> Design {
        Design { shadow_rate, disagreement_rate: config.disagreement_rate, agreement_rate: config.agreement_rate }
    }

    /// The labelling rate of `stratum`.
    pub fn rate(&self, stratum: Stratum) -> f64 {
        match stratum {
            Stratum::Agreement => self.agreement_rate,
            Stratum::Disagreement => self.disagreement_rate,
        }
    }

    /// The probability that a review of `stratum` is picked: in the shadow's sample and in the
    /// labelling sample (two independent hashes).
    pub fn inclusion_probability(&self, stratum: Stratum) -> f64 {
        self.shadow_rate * self.rate(stratum)
    }

    /// Whether the queue picks `review_id`, given its stratum for this pair and the shadow's
    /// salt. Deterministic.
    pub fn picks(&self, review_id: &str, shadow_salt: &str, stratum: Stratum) -> bool {
        super::sampled(review_id, shadow_salt, self.shadow_rate) && super::sampled(review_id, SALT, self.rate(stratum))
    }
}

/// One line of the queue: the disagreement log's fields, the stratum and the inclusion
/// probability.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub task: &'a str,
    pub review_id: &'a str,
    /// "agreement" or "disagreement".
    pub stratum: &'static str,
    /// The probability this review had of being queued; a verdict on it weighs 1 / this.
    pub inclusion_probability: f64,
    /// "agree", "stricter" or "more_lenient": the shadow relative to live.
    pub direction: &'static str,
    pub live: Side<'a>,
    pub shadow: Side<'a>,
    pub text_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
}

/// The queue's cheap, cloneable front door.
#[derive(Clone)]
pub struct LabellingQueue {
    lines: Lines,
    pub config: LabellingConfig,
}

impl LabellingQueue {
    /// Opens (creating folders as needed) and starts the writer thread.
    pub fn start(config: LabellingConfig) -> std::io::Result<(LabellingQueue, JoinHandle<()>)> {
        let files = Files {
            path: config.path.clone(),
            max_file_bytes: config.max_file_bytes,
            max_files: config.max_files,
            queue_capacity: config.queue_capacity,
        };
        let (lines, thread) = Lines::start("labelling-queue", files, LogMetrics::labelling())?;
        Ok((LabellingQueue { lines, config }, thread))
    }

    /// Queues one entry; drops and counts it if the writer is behind.
    pub fn write(&self, entry: &Entry<'_>) {
        self.lines.write(entry);
    }
}

/// "agree", "stricter" or "more_lenient".
pub fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Agree => "agree",
        Direction::Stricter => "stricter",
        Direction::MoreLenient => "more_lenient",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn design() -> Design {
        Design { shadow_rate: 0.5, disagreement_rate: 0.8, agreement_rate: 0.05 }
    }

    #[test]
    fn picks_are_deterministic_and_at_the_stratum_rate() {
        let d = design();
        let n = 40_000;
        for stratum in [Stratum::Agreement, Stratum::Disagreement] {
            let picked: Vec<bool> = (0..n).map(|i| d.picks(&format!("r{i}"), "salt", stratum)).collect();
            let again: Vec<bool> = (0..n).map(|i| d.picks(&format!("r{i}"), "salt", stratum)).collect();
            assert_eq!(picked, again);
            let share = picked.iter().filter(|&&p| p).count() as f64 / n as f64;
            let p = d.inclusion_probability(stratum);
            // Binomial standard deviation: at most sqrt(0.4 * 0.6 / 40000) = 0.0024; allow 4.
            assert!((share - p).abs() < 0.01, "{stratum:?}: picked {share}, p {p}");
        }
    }

    #[test]
    fn the_pick_needs_the_shadow_sample() {
        // Never picked outside the shadow's own sample, whatever the labelling rate.
        let d = Design { shadow_rate: 0.3, disagreement_rate: 1.0, agreement_rate: 1.0 };
        for i in 0..5000 {
            let id = format!("r{i}");
            assert_eq!(d.picks(&id, "salt", Stratum::Agreement), super::super::sampled(&id, "salt", 0.3));
        }
    }

    #[test]
    fn agreements_picked_are_a_subset_of_disagreements_picked() {
        // One hash per review: a review picked at the lower (agreement) rate would be picked at
        // the higher one too, so labels are shared across pairs and rates as far as possible.
        let d = design();
        for i in 0..5000 {
            let id = format!("r{i}");
            if d.picks(&id, "salt", Stratum::Agreement) {
                assert!(d.picks(&id, "salt", Stratum::Disagreement));
            }
        }
    }
}
