//! Handles the shadow layer records through: outcomes, comparisons, score deltas, the breaker,
//! the effective rate, the CPU budget and the disagreement log and labelling queue files.

use super::*;

/// What became of a review offered to a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowOutcome {
    Compared,
    SampledOut,
    QueueFull,
    LivePressure,
    Deadline,
    BreakerOpen,
    Error,
    /// Sampled, but the shadow CPU budget was spent: not started.
    Budget,
    /// In the configured sample but not in the lowered effective one (a uniform reduction,
    /// unlike the sheds).
    Throttled,
}

impl ShadowOutcome {
    pub const ALL: [ShadowOutcome; 9] = [
        ShadowOutcome::Compared,
        ShadowOutcome::SampledOut,
        ShadowOutcome::QueueFull,
        ShadowOutcome::LivePressure,
        ShadowOutcome::Deadline,
        ShadowOutcome::BreakerOpen,
        ShadowOutcome::Error,
        ShadowOutcome::Budget,
        ShadowOutcome::Throttled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ShadowOutcome::Compared => "compared",
            ShadowOutcome::SampledOut => "sampled_out",
            ShadowOutcome::QueueFull => "queue_full",
            ShadowOutcome::LivePressure => "live_pressure",
            ShadowOutcome::Deadline => "deadline",
            ShadowOutcome::BreakerOpen => "breaker_open",
            ShadowOutcome::Error => "error",
            ShadowOutcome::Budget => "budget",
            ShadowOutcome::Throttled => "throttled",
        }
    }
}

/// Pre-registered handles for one (task, live model, shadow model) pair.
pub struct ShadowMetrics {
    /// `[live decision][shadow decision]` on the default surface; `None` for a shadow offered
    /// named surfaces only.
    confusion: Option<Confusion<Counter>>,
    /// One per shadow label that the live model also has, in shadow label order (`None` when the
    /// live model lacks the label).
    deltas: Vec<Option<Histogram>>,
    pub flips: Counter,
    outcomes: ByVariant<ShadowOutcome, Counter, 9>,
    pub breaker_open: Gauge,
    pub rate_configured: Gauge,
    pub rate_effective: Gauge,
    pub breaker_trips: Counter,
    /// Only for policy-only shadows.
    pub policy_only_reviews: Option<Counter>,
    /// One per shadow label, when this pair records the shadow model's score distribution.
    scores: Vec<Histogram>,
}

impl ShadowMetrics {
    /// `policy_only`: the shadow is the live model under `shadow_policy`; its scores are the live
    /// ones, so it has no score deltas or flips worth a series. `scores`: record the shadow's
    /// score histograms (once per shadow model, not once per policy it is tried with).
    /// `default_surface`: the shadow is offered the default surface's reviews, so it has
    /// comparisons there.
    pub fn new(
        task: &str,
        (live, live_policy): (&ModelSpec, &Policy),
        (shadow, shadow_policy): (&ModelSpec, &Policy),
        policy_only: bool,
        scores: bool,
        default_surface: bool,
    ) -> ShadowMetrics {
        // The labels every per-pair series shares, plus one more where a series needs it.
        let pair = vec![
            Label::new("task", task.to_string()),
            Label::new("live_model", live.name.clone()),
            Label::new("shadow_model", shadow.name.clone()),
            Label::new("shadow_policy", shadow_policy.name.clone()),
        ];
        let with = |key: &'static str, value: String| {
            let mut labels = pair.clone();
            labels.push(Label::new(key, value));
            labels
        };
        let confusion = default_surface.then(|| comparisons(task, (live, live_policy), (shadow, shadow_policy), None));
        let deltas = shadow
            .labels
            .iter()
            .map(|label| {
                (live.labels.contains(label) && !policy_only)
                    .then(|| histogram!(SHADOW_SCORE_DELTA, with("label", label.clone())))
            })
            .collect();
        let flips = counter!(SHADOW_TOP_LABEL_FLIPS_TOTAL, pair.clone());
        let policy_only_reviews = policy_only.then(|| {
            counter!(SHADOW_POLICY_ONLY_REVIEWS_TOTAL, label::TASK => task.to_string(), label::MODEL => shadow.name.clone(),
                label::SHADOW_POLICY => shadow_policy.name.clone())
        });
        let scores = if scores { score_histograms(task, shadow, Role::Shadow) } else { Vec::new() };
        let outcomes = ByVariant::new(ShadowOutcome::ALL, |o| {
            counter!(SHADOW_REVIEWS_TOTAL, with("outcome", o.as_str().to_string()))
        });
        let breaker_open =
            gauge!(SHADOW_BREAKER_OPEN, label::TASK => task.to_string(), label::SHADOW_MODEL => shadow.name.clone());
        breaker_open.set(0.0);
        let breaker_trips = counter!(SHADOW_BREAKER_TRIPS_TOTAL, label::TASK => task.to_string(), label::SHADOW_MODEL => shadow.name.clone());
        let rate_configured = gauge!(SHADOW_SAMPLE_RATE_CONFIGURED, pair.clone());
        let rate_effective = gauge!(SHADOW_SAMPLE_RATE_EFFECTIVE, pair.clone());
        ShadowMetrics {
            confusion,
            deltas,
            flips,
            outcomes,
            breaker_open,
            rate_configured,
            rate_effective,
            breaker_trips,
            policy_only_reviews,
            scores,
        }
    }

    /// Records the shadow's scores for one review (no-op unless this pair records them).
    pub fn scores(&self, scores: &[f32]) {
        for (h, s) in self.scores.iter().zip(scores) {
            h.record(f64::from(*s));
        }
    }

    /// Counts one comparison on the default surface (a named one has its own `comparisons`).
    pub fn compared(&self, live: Decision, shadow: Decision) {
        if let Some(c) = &self.confusion {
            c[(live, shadow)].increment(1);
        }
    }

    /// The delta histogram for the shadow's label `index`, if the live model has that label.
    pub fn delta(&self, index: usize) -> Option<&Histogram> {
        self.deltas.get(index).and_then(Option::as_ref)
    }

    pub fn outcome(&self, outcome: ShadowOutcome, reviews: usize) {
        self.outcomes.get(outcome).increment(reviews as u64);
    }
}

/// `SHADOW_COMPARISONS_TOTAL` for one pair (each side's model and policy) on one surface
/// (`None`: the default surface): live decision x shadow decision.
pub fn comparisons(
    task: &str,
    (live, live_policy): (&ModelSpec, &Policy),
    (shadow, shadow_policy): (&ModelSpec, &Policy),
    surface: Option<&str>,
) -> Confusion<Counter> {
    Confusion::from_fn(|l, s| {
        let labels = vec![
            Label::new(label::TASK, task.to_string()),
            Label::new(label::LIVE_MODEL, live.name.clone()),
            Label::new(label::LIVE_VERSION, live.version.clone()),
            Label::new(label::LIVE_POLICY, live_policy.name.clone()),
            Label::new(label::LIVE_POLICY_VERSION, live_policy.version.clone()),
            Label::new(label::SHADOW_MODEL, shadow.name.clone()),
            Label::new(label::SHADOW_VERSION, shadow.version.clone()),
            Label::new(label::SHADOW_POLICY, shadow_policy.name.clone()),
            Label::new(label::SHADOW_POLICY_VERSION, shadow_policy.version.clone()),
            Label::new(label::LIVE_DECISION, l.as_str()),
            Label::new(label::SHADOW_DECISION, s.as_str()),
        ];
        counter!(SHADOW_COMPARISONS_TOTAL, on_surface(labels, surface))
    })
}

/// The shadow CPU budget's gauges (one set per process).
#[derive(Debug)]
pub struct BudgetMetrics {
    pub budget: Gauge,
    pub usage: Gauge,
    pub allowed: Gauge,
}

impl BudgetMetrics {
    pub fn new() -> BudgetMetrics {
        BudgetMetrics {
            budget: gauge!(SHADOW_CPU_BUDGET),
            usage: gauge!(SHADOW_CPU_USE),
            allowed: gauge!(SHADOW_CPU_ALLOWED),
        }
    }
}

impl Default for BudgetMetrics {
    fn default() -> Self {
        BudgetMetrics::new()
    }
}

/// CPU seconds per batch of one shadow model (a histogram: the metrics crate's counters are
/// integers, and its `_sum` is the cumulative CPU seconds).
pub fn shadow_batch_cpu_seconds(model: &str) -> Histogram {
    histogram!(SHADOW_BATCH_CPU_SECONDS, label::MODEL => model.to_string())
}

/// Records the scheduling a shadow model's workers run under (1 for it, 0 for the others).
pub fn shadow_scheduling(model: &str, policy: crate::inference::cpu::SchedPolicy) {
    for p in crate::inference::cpu::SchedPolicy::ALL {
        gauge!(SHADOW_SCHEDULING, label::MODEL => model.to_string(), label::POLICY => p.as_str()).set(if p == policy {
            1.0
        } else {
            0.0
        });
    }
}

/// Records the process's CPU capacity.
pub fn process_cpu_capacity(capacity: crate::inference::cpu::Capacity) {
    gauge!(PROCESS_CPU_CAPACITY, label::SOURCE => capacity.source.as_str()).set(capacity.cpus);
}

/// What became of a JSON-lines record (a disagreement log line, a labelling queue entry, a
/// journal record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOutcome {
    Written,
    DroppedQueueFull,
    DroppedIoError,
}

impl LogOutcome {
    pub const ALL: [LogOutcome; 3] = [LogOutcome::Written, LogOutcome::DroppedQueueFull, LogOutcome::DroppedIoError];

    pub const fn as_str(self) -> &'static str {
        match self {
            LogOutcome::Written => "written",
            LogOutcome::DroppedQueueFull => "dropped_queue_full",
            LogOutcome::DroppedIoError => "dropped_io_error",
        }
    }
}

/// Handles for the disagreement log's counters.
pub struct LogMetrics {
    lines: ByVariant<LogOutcome, Counter, 3>,
}

impl LogMetrics {
    /// The disagreement log's lines.
    pub fn new() -> LogMetrics {
        LogMetrics::named(DISAGREEMENT_LOG_LINES_TOTAL)
    }

    /// The labelling queue's entries.
    pub fn labelling() -> LogMetrics {
        LogMetrics::named(LABELLING_QUEUE_ENTRIES_TOTAL)
    }

    /// The decision journal's records.
    pub fn journal() -> LogMetrics {
        LogMetrics::named(JOURNAL_RECORDS_TOTAL)
    }

    fn named(name: &'static str) -> LogMetrics {
        LogMetrics { lines: ByVariant::new(LogOutcome::ALL, |o| counter!(name, label::OUTCOME => o.as_str())) }
    }

    pub fn count(&self, outcome: LogOutcome) {
        self.count_n(outcome, 1);
    }

    pub fn count_n(&self, outcome: LogOutcome, lines: u64) {
        self.lines.get(outcome).increment(lines);
    }
}

impl Default for LogMetrics {
    fn default() -> Self {
        LogMetrics::new()
    }
}
