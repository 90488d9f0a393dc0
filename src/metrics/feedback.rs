//! Handles moderator verdicts are counted through: against live and every shadow, weighted for
//! the labelling queue, and what happened to each verdict received.

use super::*;

/// Pre-registered verdict counters for one model (or policy) of one task: for each source, a
/// model decision x human decision matrix, all at 0 from the start so every series exists
/// before the first verdict (exact window counts in the launch report rely on it).
pub struct VerdictMetrics {
    /// Configured sources, then "other", then "none".
    sources: Vec<String>,
    counts: Vec<Confusion<Counter>>,
    /// For live only: the score of each label, by the human decision as it counts for that
    /// label (`[label][human]`); empty for a shadow.
    scores: Vec<[Histogram; 3]>,
    pub errors: Counter,
}

impl VerdictMetrics {
    pub fn new(task: &str, spec: &ModelSpec, role: Role, policy: &Policy, sources: &[String]) -> VerdictMetrics {
        VerdictMetrics::on_surface(task, spec, role, policy, sources, None)
    }

    /// Like `new`, for the verdicts on one named surface (`None`: the default surface).
    pub fn on_surface(
        task: &str,
        spec: &ModelSpec,
        role: Role,
        policy: &Policy,
        sources: &[String],
        surface: Option<&str>,
    ) -> VerdictMetrics {
        let sources: Vec<String> =
            sources.iter().cloned().chain([OTHER_SOURCE.to_string(), NO_SOURCE.to_string()]).collect();
        let counts = sources
            .iter()
            .map(|source| {
                Confusion::from_fn(|m, h| {
                    let labels = vec![
                        Label::new(label::TASK, task.to_string()),
                        Label::new(label::MODEL, spec.name.clone()),
                        Label::new(label::VERSION, spec.version.clone()),
                        Label::new(label::ROLE, role.as_str()),
                        Label::new(label::POLICY, policy.name.clone()),
                        Label::new(label::POLICY_VERSION, policy.version.clone()),
                        Label::new(label::SOURCE, source.clone()),
                        Label::new(label::MODEL_DECISION, m.as_str()),
                        Label::new(label::HUMAN_DECISION, h.as_str()),
                    ];
                    counter!(VERDICTS_TOTAL, on_surface(labels, surface))
                })
            })
            .collect();
        let errors = counter!(VERDICT_MODEL_ERRORS_TOTAL, label::TASK => task.to_string(), label::MODEL => spec.name.clone(),
            label::ROLE => role.as_str(), label::POLICY => policy.name.clone());
        // Not for shadows: `modserve tune` solves the live model's thresholds, and a candidate's
        // scores on verdicts would multiply the series by every shadow.
        let scores = match role {
            Role::Live => spec
                .labels
                .iter()
                .map(|l| {
                    Decision::ALL.map(|h| {
                        let labels = vec![
                            Label::new(label::TASK, task.to_string()),
                            Label::new(label::MODEL, spec.name.clone()),
                            Label::new(label::VERSION, spec.version.clone()),
                            Label::new(label::LABEL, l.clone()),
                            Label::new(label::HUMAN_DECISION, h.as_str()),
                        ];
                        histogram!(VERDICT_SCORES, on_surface(labels, surface))
                    })
                })
                .collect(),
            Role::Shadow => Vec::new(),
        };
        VerdictMetrics { sources, counts, scores, errors }
    }

    /// Counts one verdict; `source` is already normalised (a configured one, "other" or "none").
    pub fn count(&self, source: &str, model: Decision, human: Decision) {
        let i = self.sources.iter().position(|s| s == source).unwrap_or(self.sources.len() - 1);
        self.counts[i][(model, human)].increment(1);
    }

    /// Records the live scores of one review with a verdict (nothing for a shadow). A verdict
    /// naming labels (`named`) is a positive for those only: for every other label it counts as
    /// `allow`, as `modserve tune` reads a labelled line.
    pub fn scored(&self, scores: &[f32], human: Decision, named: &[String], labels: &[String]) {
        for ((by_human, &score), label) in self.scores.iter().zip(scores).zip(labels) {
            let counts_as = if named.is_empty() || named.contains(label) { human } else { Decision::Allow };
            by_human[counts_as.index()].record(f64::from(score));
        }
    }
}

/// Pre-registered counters of verdicts on reviews the labelling queue selects for one shadow
/// pair, `[live][shadow][human]` decision, each series labelled with the inclusion probability
/// its stratum has (agreement on the diagonal, disagreement off it), so the report can weight
/// it without knowing the config. All at 0 from the start, as `VerdictMetrics`.
pub struct LabelledVerdictMetrics {
    counts: [Confusion<Counter>; 3],
}

impl LabelledVerdictMetrics {
    /// `inclusion(agree)` is the inclusion probability of a review where live and shadow agree
    /// (`true`) or disagree (`false`).
    pub fn new(task: &str, sides: PairSides<'_>, inclusion: impl Fn(bool) -> f64) -> LabelledVerdictMetrics {
        let ((live, live_policy), (shadow, shadow_policy)) = sides;
        let counts = Decision::ALL.map(|l| {
            Confusion::from_fn(|s, h| {
                let p = inclusion(l == s).to_string();
                counter!(LABELLED_VERDICTS_TOTAL, label::TASK => task.to_string(),
                    label::LIVE_MODEL => live.name.clone(), label::LIVE_VERSION => live.version.clone(),
                    label::LIVE_POLICY => live_policy.name.clone(), label::LIVE_POLICY_VERSION => live_policy.version.clone(),
                    label::SHADOW_MODEL => shadow.name.clone(), label::SHADOW_VERSION => shadow.version.clone(),
                    label::SHADOW_POLICY => shadow_policy.name.clone(),
                    label::SHADOW_POLICY_VERSION => shadow_policy.version.clone(),
                    label::INCLUSION_PROBABILITY => p, label::LIVE_DECISION => l.as_str(),
                    label::SHADOW_DECISION => s.as_str(), label::HUMAN_DECISION => h.as_str())
            })
        });
        LabelledVerdictMetrics { counts }
    }

    pub fn count(&self, live: Decision, shadow: Decision, human: Decision) {
        self.counts[live.index()][(shadow, human)].increment(1);
    }
}

/// What became of a received verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictOutcome {
    /// Scored by every model of its task (or by those that could; see `VERDICT_MODEL_ERRORS_TOTAL`).
    Counted,
    /// The same (review id, task) was received within `feedback.dedupe_window`.
    Duplicate,
    /// Refused: the feedback queue was full.
    ShedQueueFull,
    /// Not scored within `feedback.max_delay` (live traffic had priority).
    ShedDeadline,
    /// The live model could not score it.
    Error,
}

impl VerdictOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictOutcome::Counted => "counted",
            VerdictOutcome::Duplicate => "duplicate",
            VerdictOutcome::ShedQueueFull => "shed_queue_full",
            VerdictOutcome::ShedDeadline => "shed_deadline",
            VerdictOutcome::Error => "error",
        }
    }
}

/// Records verdicts received (not a hot path: built per call).
pub fn verdicts_received(task: &str, source: &str, outcome: VerdictOutcome, n: usize) {
    counter!(VERDICTS_RECEIVED_TOTAL, label::TASK => task.to_string(), label::SOURCE => source.to_string(),
        label::OUTCOME => outcome.as_str())
    .increment(n as u64);
}

/// What the decision journal's index knew of a verdict's review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalLookup {
    /// The decision served for the same text, by the model and policy live now.
    Served,
    /// No decision for the (review id, task) in the index.
    NotFound,
    /// Served by another model or policy, or for another text.
    Changed,
}

impl JournalLookup {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalLookup::Served => "served",
            JournalLookup::NotFound => "not_found",
            JournalLookup::Changed => "changed",
        }
    }
}

/// Records journal lookups of verdicts (not a hot path: per scored chunk).
pub fn journal_lookups(task: &str, outcome: JournalLookup, n: usize) {
    counter!(JOURNAL_VERDICT_LOOKUPS_TOTAL, label::TASK => task.to_string(), label::OUTCOME => outcome.as_str())
        .increment(n as u64);
}

/// The verdicts waiting to be scored.
pub fn feedback_queue(verdicts: usize) {
    gauge!(FEEDBACK_QUEUE_VERDICTS).set(verdicts as f64);
}
