//! What a launch report is built from: plain numbers, filled either by `fetch` (Prometheus) or
//! by the offline evaluator (a labelled file). Nothing here computes; `derived` does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::metrics::ShadowOutcome;
use crate::policy::{Confusion, Decision};

/// Decision indices used by every `Confusion` matrix (allow is 0), as `policy::Decision`
/// orders them.
pub const REVIEW: usize = Decision::Review.index();
pub const REJECT: usize = Decision::Reject.index();
/// Upper-case names, indexed like the matrices.
pub const DECISIONS: [&str; 3] = ["ALLOW", "REVIEW", "REJECT"];

/// Reviews offered to a shadow, by what became of them: the `outcome` label values, from
/// `metrics::ShadowOutcome`.
pub const OUTCOMES: [&str; ShadowOutcome::ALL.len()] = {
    let mut names = [""; ShadowOutcome::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = ShadowOutcome::ALL[i].as_str();
        i += 1;
    }
    names
};
/// The outcomes that count as shed work: sampled, but dropped before inference.
/// `throttled` is not shed: the effective sample rate leaves those reviews out uniformly, so it
/// lowers coverage without biasing the comparison.
pub const SHED_OUTCOMES: [&str; 5] = [
    ShadowOutcome::QueueFull.as_str(),
    ShadowOutcome::LivePressure.as_str(),
    ShadowOutcome::Deadline.as_str(),
    ShadowOutcome::BreakerOpen.as_str(),
    ShadowOutcome::Budget.as_str(),
];

/// Everything a report needs, as measured. Two producers fill it: `fetch` from Prometheus and
/// the offline evaluator from a labelled file.
#[derive(Debug, Clone, Serialize)]
pub struct ReportInput {
    pub source: Source,
    pub task: String,
    pub live: Subject,
    pub candidate: Subject,
    /// Reviews offered to the candidate, by outcome (keys from `OUTCOMES`; missing keys are 0).
    /// Offline: just `compared`.
    pub outcomes: BTreeMap<String, u64>,
    /// `[live decision][candidate decision]`, indexed as `policy::Decision` orders them.
    pub comparisons: Confusion<u64>,
    /// Per label: cumulative histogram buckets `(le, count)` of candidate score minus live
    /// score, ascending `le`, the last one `f64::INFINITY`. Empty for policy-only shadows.
    #[serde(serialize_with = "serialize_buckets")]
    pub score_deltas: BTreeMap<String, Vec<(f64, u64)>>,
    /// Inference time per batch; `None` when not measured (offline).
    pub latency: Option<Latency>,
    pub live_errors: u64,
    pub live_batches: u64,
    pub candidate_errors: u64,
    pub candidate_batches: u64,
    /// The candidate's configured and effective sample rates over the window; `None` when not
    /// measured (offline, or a server without the gauges).
    pub sample_rate: Option<SampleRates>,
    /// Moderator verdicts; `None` when there are none to compare against.
    pub verdicts: Option<Verdicts>,
    /// Verdicts on reviews the labelling queue picks for this pair, by inclusion probability
    /// and decisions; empty without a labelling queue (and offline).
    pub labelled: Vec<LabelledCell>,
    pub disagreements: Option<DisagreementSummary>,
    /// Anything the producer wants the reader to know (versions that changed in the window,
    /// series it left out), printed under the subjects.
    pub notes: Vec<String>,
}

/// A shadow's sample rates over the window (averaged over replicas).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SampleRates {
    pub configured: f64,
    /// Mean of the effective rate over the window.
    pub effective_mean: f64,
    /// The lowest effective rate any replica had in the window.
    pub effective_min: f64,
}

/// Where the numbers come from.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// Counters over `window` ending at `end`, read from a Prometheus server.
    Prometheus {
        url: String,
        #[serde(with = "crate::config::humantime_serde_str")]
        window: Duration,
        #[serde(serialize_with = "serialize_time")]
        end: SystemTime,
    },
    /// Both models run over a labelled file of `reviews` reviews.
    Offline { labels_file: PathBuf, reviews: u64 },
}

/// One side of the comparison: a model and the policy that turns its scores into decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub model: String,
    pub version: String,
    pub policy: String,
    pub policy_version: String,
}

/// Inference time per batch in seconds; a side is `None` when it ran no batch (a policy-only
/// candidate runs no inference of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    pub live: Option<Quantiles>,
    pub candidate: Option<Quantiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
}

/// Moderator verdicts, each `[model decision][human decision]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Verdicts {
    pub live: Confusion<u64>,
    pub candidate: Confusion<u64>,
}

/// Verdicts with the same inclusion probability and the same three decisions (indices as in
/// `DECISIONS`), from `modserve_labelled_verdicts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LabelledCell {
    pub inclusion_probability: f64,
    pub live: usize,
    pub candidate: usize,
    pub human: usize,
    pub count: u64,
}

/// The disagreement log lines for this task and candidate within the window.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DisagreementSummary {
    /// The files read, newest first.
    pub files: Vec<PathBuf>,
    /// Lines that parsed and matched the task, candidate and window.
    pub matched: u64,
    /// Lines that did not parse (skipped).
    pub unparseable: u64,
    /// Matched lines by direction ("stricter", "more_lenient").
    pub by_direction: BTreeMap<String, u64>,
    /// The largest absolute score differences, largest first (at most `TOP_DISAGREEMENTS`).
    pub top: Vec<Disagreement>,
}

/// One logged disagreement, as shown in the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disagreement {
    pub time: String,
    pub review_id: String,
    pub direction: String,
    pub live_decision: String,
    pub candidate_decision: String,
    pub live_scores: BTreeMap<String, f64>,
    pub candidate_scores: BTreeMap<String, f64>,
    /// The label with the largest absolute score difference, and that difference
    /// (candidate minus live).
    pub label: String,
    pub delta: f64,
    /// The review text, when logged, cut to `TEXT_CHARS` characters (not yet escaped).
    pub text: Option<String>,
}

/// How many disagreements the summary lists.
pub const TOP_DISAGREEMENTS: usize = 10;
/// How much of a logged review text the report shows.
pub const TEXT_CHARS: usize = 120;

// === impl ReportInput ===

impl ReportInput {
    /// The count for one outcome (0 when absent).
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }

    /// A policy-only shadow: the live model under other thresholds.
    pub fn policy_only(&self) -> bool {
        self.candidate.model == self.live.model
    }
}

/// Cumulative `(le, count)` buckets of `deltas` over `bounds` (ascending, without `+Inf`, e.g.
/// the server's score-delta buckets), plus the `+Inf` bucket: how the offline evaluator fills
/// `ReportInput::score_deltas` the way Prometheus would.
pub fn cumulative_buckets(bounds: &[f64], deltas: impl IntoIterator<Item = f64>) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = bounds.iter().map(|&le| (le, 0)).chain([(f64::INFINITY, 0)]).collect();
    for d in deltas {
        for bucket in out.iter_mut().filter(|(le, _)| d <= *le) {
            bucket.1 += 1;
        }
    }
    out
}

/// `+Inf` has no JSON number: buckets serialize as `[le, count]` with `le` a number or "+Inf".
fn serialize_buckets<S: Serializer>(map: &BTreeMap<String, Vec<(f64, u64)>>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Le {
        Finite(f64),
        Text(&'static str),
    }
    let out: BTreeMap<&str, Vec<(Le, u64)>> = map
        .iter()
        .map(|(label, buckets)| {
            let buckets = buckets
                .iter()
                .map(|&(le, n)| {
                    let le = match le {
                        le if le.is_finite() => Le::Finite(le),
                        le if le > 0.0 => Le::Text("+Inf"),
                        le if le < 0.0 => Le::Text("-Inf"),
                        _ => Le::Text("NaN"),
                    };
                    (le, n)
                })
                .collect();
            (label.as_str(), buckets)
        })
        .collect();
    out.serialize(s)
}

/// Times serialize as RFC 3339 UTC.
pub(crate) fn serialize_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A Prometheus-sourced input with every section filled, for the renderers' and criteria's
    /// tests.
    pub(crate) fn input() -> ReportInput {
        let subject = |model: &str, version: &str, policy: &str| Subject {
            model: model.into(),
            version: version.into(),
            policy: policy.into(),
            policy_version: "3".into(),
        };
        let outcomes = [("compared", 1900), ("sampled_out", 1000), ("queue_full", 50), ("error", 1)];
        let inf = f64::INFINITY;
        ReportInput {
            source: Source::Prometheus {
                url: "http://127.0.0.1:9090".into(),
                window: Duration::from_secs(3600),
                end: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000),
            },
            task: "abuse".into(),
            live: subject("abuse-v1", "1.0.0", "default"),
            candidate: subject("abuse-v2", "2.0.0", "strict"),
            outcomes: outcomes.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            comparisons: Confusion([[1500, 60, 10], [30, 200, 20], [5, 15, 60]]),
            score_deltas: [
                ("insult".to_string(), vec![(-0.1, 100), (0.0, 900), (0.1, 1800), (inf, 1900)]),
                ("threat".to_string(), vec![(-0.1, 0), (0.0, 1000), (0.1, 1850), (inf, 1900)]),
            ]
            .into(),
            latency: Some(Latency {
                live: Some(Quantiles { p50: 0.004, p99: 0.012 }),
                candidate: Some(Quantiles { p50: 0.006, p99: 0.0185 }),
            }),
            live_errors: 0,
            live_batches: 5000,
            candidate_errors: 1,
            candidate_batches: 2000,
            sample_rate: Some(SampleRates { configured: 1.0, effective_mean: 0.5, effective_min: 0.25 }),
            verdicts: Some(Verdicts {
                live: Confusion([[80, 6, 4], [5, 20, 5], [1, 4, 25]]),
                candidate: Confusion([[78, 4, 2], [4, 22, 4], [1, 4, 31]]),
            }),
            labelled: vec![
                LabelledCell { inclusion_probability: 1.0, live: 0, candidate: 1, human: 0, count: 12 },
                LabelledCell { inclusion_probability: 1.0, live: 0, candidate: 1, human: 1, count: 4 },
                LabelledCell { inclusion_probability: 0.05, live: 2, candidate: 2, human: 2, count: 6 },
                LabelledCell { inclusion_probability: 0.05, live: 0, candidate: 0, human: 0, count: 30 },
            ],
            disagreements: Some(DisagreementSummary {
                files: vec!["/var/log/modserve/disagreements.jsonl".into()],
                matched: 2,
                unparseable: 1,
                by_direction: [("stricter".to_string(), 1), ("more_lenient".to_string(), 1)].into(),
                top: vec![Disagreement {
                    time: "2026-11-26T13:00:00.123Z".into(),
                    review_id: "<script>alert(1)</script>".into(),
                    direction: "stricter".into(),
                    live_decision: "allow".into(),
                    candidate_decision: "review".into(),
                    live_scores: [("insult".to_string(), 0.2)].into(),
                    candidate_scores: [("insult".to_string(), 0.7)].into(),
                    label: "insult".into(),
                    delta: 0.5,
                    text: Some("you & <b>me</b> | x".into()),
                }],
            }),
            notes: vec![],
        }
    }

    #[test]
    fn report_cumulative_buckets_count_each_delta_at_and_above_its_bucket() {
        let b = cumulative_buckets(&[-0.1, 0.0, 0.1], [-0.5, -0.1, 0.0, 0.05, 0.3]);
        assert_eq!(b, [(-0.1, 2), (0.0, 3), (0.1, 4), (f64::INFINITY, 5)]);
    }

    #[test]
    fn report_input_serializes_infinite_buckets_as_text() {
        let json = serde_json::to_value(input()).unwrap();
        assert_eq!(json["score_deltas"]["insult"][3], serde_json::json!(["+Inf", 1900]));
        assert_eq!(json["score_deltas"]["insult"][0], serde_json::json!([-0.1, 100]));
        assert_eq!(json["source"]["kind"], "prometheus");
        assert_eq!(json["source"]["window"], "1h");
        assert_eq!(json["source"]["end"], "2026-11-18T11:06:40Z");
    }
}
