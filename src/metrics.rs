//! Every metric modserve exports: names, label keys and buckets live in this file, help text in
//! `help`, and the handles each layer records through in one submodule per layer (`serving`,
//! `shadow`, `feedback`, `control`), re-exported here so callers name `metrics::X` only. No other
//! module names a metric. Label values are bounded: model names, versions, tasks, decisions and
//! the enums of the submodules, never request data.

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, Label, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use crate::config::{NO_SOURCE, OTHER_SOURCE};
use crate::inference::model::ModelSpec;
use crate::policy::Confusion;
use crate::policy::{Decision, Policy};

mod control;
mod feedback;
mod help;
mod serving;
mod shadow;

pub use control::*;
pub use feedback::*;
use help::describe;
pub use serving::*;
pub use shadow::*;

/// Every label key, as the series carry it and as the report's reader (`offline::report::fetch`)
/// selects by it.
pub mod label {
    pub const CODE: &str = "code";
    /// `light` (one call at a time) or `busy` (more): a connection, as `serving::turns` serves it.
    pub const CONNECTION: &str = "connection";
    pub const DECISION: &str = "decision";
    pub const HUMAN_DECISION: &str = "human_decision";
    pub const INCLUSION_PROBABILITY: &str = "inclusion_probability";
    pub const LABEL: &str = "label";
    pub const LANGUAGE: &str = "language";
    pub const LISTENER: &str = "listener";
    pub const LIVE_DECISION: &str = "live_decision";
    pub const LIVE_MODEL: &str = "live_model";
    pub const LIVE_POLICY: &str = "live_policy";
    pub const LIVE_POLICY_VERSION: &str = "live_policy_version";
    pub const LIVE_VERSION: &str = "live_version";
    pub const METHOD: &str = "method";
    pub const MODEL: &str = "model";
    pub const MODEL_DECISION: &str = "model_decision";
    pub const OUTCOME: &str = "outcome";
    pub const POLICY: &str = "policy";
    pub const POLICY_VERSION: &str = "policy_version";
    /// `grpc` or `http`: the API a call came in through (`Protocol`).
    pub const PROTOCOL: &str = "protocol";
    pub const REASON: &str = "reason";
    pub const RESULT: &str = "result";
    pub const ROLE: &str = "role";
    pub const SHADOW_DECISION: &str = "shadow_decision";
    pub const SHADOW_MODEL: &str = "shadow_model";
    pub const SHADOW_POLICY: &str = "shadow_policy";
    pub const SHADOW_POLICY_VERSION: &str = "shadow_policy_version";
    pub const SHADOW_VERSION: &str = "shadow_version";
    pub const SOURCE: &str = "source";
    pub const STAGE: &str = "stage";
    /// Only on series of a named surface (`[tasks.NAME.surfaces]`): the default surface's series
    /// keep the label set they had before surfaces existed, which PromQL reads as surface="".
    pub const SURFACE: &str = "surface";
    pub const TASK: &str = "task";
    pub const TRIGGER: &str = "trigger";
    pub const VERSION: &str = "version";
}

pub const REQUESTS_TOTAL: &str = "modserve_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "modserve_request_duration_seconds";
pub const REVIEWS_TOTAL: &str = "modserve_reviews_total";
pub const STAGE_DURATION_SECONDS: &str = "modserve_stage_duration_seconds";
pub const BATCH_SIZE: &str = "modserve_batch_size";
pub const BATCHES_TOTAL: &str = "modserve_batches_total";
pub const QUEUE_DEPTH: &str = "modserve_queue_depth";
pub const DROPPED_TOTAL: &str = "modserve_dropped_total";
pub const INFERENCE_ERRORS_TOTAL: &str = "modserve_inference_errors_total";
pub const MODEL_INFO: &str = "modserve_model_info";
pub const BUILD_INFO: &str = "modserve_build_info";
pub const SHADOW_COMPARISONS_TOTAL: &str = "modserve_shadow_comparisons_total";
pub const SHADOW_SCORE_DELTA: &str = "modserve_shadow_score_delta";
pub const SHADOW_TOP_LABEL_FLIPS_TOTAL: &str = "modserve_shadow_top_label_flips_total";
pub const SHADOW_REVIEWS_TOTAL: &str = "modserve_shadow_reviews_total";
pub const SHADOW_BREAKER_OPEN: &str = "modserve_shadow_breaker_open";
pub const SHADOW_BREAKER_TRIPS_TOTAL: &str = "modserve_shadow_breaker_trips_total";
pub const DISAGREEMENT_LOG_LINES_TOTAL: &str = "modserve_disagreement_log_lines_total";
pub const JOURNAL_RECORDS_TOTAL: &str = "modserve_journal_records_total";
pub const JOURNAL_VERDICT_LOOKUPS_TOTAL: &str = "modserve_journal_verdict_lookups_total";
pub const CONFIG_RELOADS_TOTAL: &str = "modserve_config_reloads_total";
pub const CONFIG_LAST_RELOAD_SUCCESS: &str = "modserve_config_last_reload_success";
pub const CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS: &str = "modserve_config_last_reload_timestamp_seconds";
pub const CONFIG_GENERATION: &str = "modserve_config_generation";
pub const CONFIG_INFO: &str = "modserve_config_info";
pub const MODEL_LOAD_SECONDS: &str = "modserve_model_load_seconds";
pub const TLS_RELOADS_TOTAL: &str = "modserve_tls_reloads_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "modserve_tls_handshake_failures_total";
pub const CONNECTIONS_CLOSED_IDLE_TOTAL: &str = "modserve_connections_closed_idle_total";
pub const CONNECTIONS_OPEN: &str = "modserve_connections_open";
pub const REQUEST_BYTES_RECEIVING: &str = "modserve_request_bytes_receiving";
pub const CALLS_WAITING: &str = "modserve_calls_waiting";
pub const CALLS_IN_PROGRESS: &str = "modserve_calls_in_progress";
pub const TRANSPORT_REFUSALS_TOTAL: &str = "modserve_transport_refusals_total";
pub const SCORES: &str = "modserve_scores";
pub const SHADOW_POLICY_ONLY_REVIEWS_TOTAL: &str = "modserve_shadow_policy_only_reviews_total";
pub const VERDICTS_TOTAL: &str = "modserve_verdicts_total";
pub const VERDICT_SCORES: &str = "modserve_verdict_scores";
pub const VERDICTS_RECEIVED_TOTAL: &str = "modserve_verdicts_received_total";
pub const VERDICT_MODEL_ERRORS_TOTAL: &str = "modserve_verdict_model_errors_total";
pub const FEEDBACK_QUEUE_VERDICTS: &str = "modserve_feedback_queue_verdicts";
pub const REVIEW_TEXT_BYTES: &str = "modserve_review_text_bytes";
pub const REVIEWS_TEXT_CUT_TOTAL: &str = "modserve_reviews_text_cut_total";
pub const REVIEWS_BY_LANGUAGE_TOTAL: &str = "modserve_reviews_by_language_total";
pub const TOKENS_TOTAL: &str = "modserve_tokens_total";
pub const UNKNOWN_TOKENS_TOTAL: &str = "modserve_unknown_tokens_total";
pub const REVIEWS_AT_MAX_TOKENS_TOTAL: &str = "modserve_reviews_at_max_tokens_total";
pub const SHADOW_SCHEDULING: &str = "modserve_shadow_scheduling";
pub const SHADOW_BATCH_CPU_SECONDS: &str = "modserve_shadow_batch_cpu_seconds";
pub const SHADOW_CPU_BUDGET: &str = "modserve_shadow_cpu_budget";
pub const SHADOW_CPU_USE: &str = "modserve_shadow_cpu_use";
pub const SHADOW_CPU_ALLOWED: &str = "modserve_shadow_cpu_allowed";
pub const PROCESS_CPU_CAPACITY: &str = "modserve_process_cpu_capacity";
pub const SHADOW_SAMPLE_RATE_CONFIGURED: &str = "modserve_shadow_sample_rate_configured";
pub const SHADOW_SAMPLE_RATE_EFFECTIVE: &str = "modserve_shadow_sample_rate_effective";
pub const LABELLING_QUEUE_ENTRIES_TOTAL: &str = "modserve_labelling_queue_entries_total";
pub const LABELLED_VERDICTS_TOTAL: &str = "modserve_labelled_verdicts_total";
pub const SURFACE_FALLBACKS_TOTAL: &str = "modserve_surface_fallbacks_total";

/// Latency buckets in seconds: 50 us to 5 s, dense below 10 ms where a healthy server lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// Score deltas (shadow minus live), symmetric around 0 and dense near it, where most
/// candidates live.
pub const DELTA_BUCKETS: &[f64] = &[-1.0, -0.5, -0.25, -0.1, -0.05, -0.01, 0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Scores in [0, 1], in twentieths: enough to see a distribution shift on a dashboard, and the
/// grid `modserve tune --prometheus` proposes thresholds on.
pub const SCORE_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0];
/// Review text sizes in bytes (text and title), powers of two up to the largest allowed text.
const TEXT_BYTES_BUCKETS: &[f64] =
    &[16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0, 1048576.0];
/// Batch sizes in reviews: powers of two up to the largest sensible `max_batch_size`.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Whose work a series describes: the model that answers, or a candidate beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Live,
    Shadow,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Live => "live",
            Role::Shadow => "shadow",
        }
    }
}

/// A pipeline stage timed by `STAGE_DURATION_SECONDS`.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    QueueWait,
    Tokenize,
    Inference,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::QueueWait => "queue_wait",
            Stage::Tokenize => "tokenize",
            Stage::Inference => "inference",
        }
    }
}

/// One handle per variant of a label enum, built from the enum's `ALL` list and looked up by
/// the variant itself: a counter never depends on where its variant sits in the declaration.
#[derive(Debug)]
pub struct ByVariant<E, T, const N: usize>([(E, T); N]);

impl<E: Copy + PartialEq, T, const N: usize> ByVariant<E, T, N> {
    pub fn new(all: [E; N], make: impl Fn(E) -> T) -> Self {
        ByVariant(all.map(|e| (e, make(e))))
    }

    pub fn get(&self, variant: E) -> &T {
        // `new` made one entry per variant of `ALL`, and every variant is in `ALL`: the unit
        // tests of each enum check both.
        &self.0.iter().find(|(e, _)| *e == variant).expect("a handle for every variant").1
    }
}

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; concurrent callers wait for the first)
/// and returns its handle for rendering.
pub fn install() -> Result<PrometheusHandle, String> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SHADOW_SCORE_DELTA.into()), DELTA_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SCORES.into()), SCORE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(VERDICT_SCORES.into()), SCORE_BUCKETS))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(REVIEW_TEXT_BYTES.into()), TEXT_BYTES_BUCKETS))
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            gauge!(BUILD_INFO, label::VERSION => env!("CARGO_PKG_VERSION")).set(1.0);
            Ok(handle)
        })
        .clone()
}

/// One score histogram per label of `spec`.
fn score_histograms(task: &str, spec: &ModelSpec, role: Role) -> Vec<Histogram> {
    spec.labels
        .iter()
        .map(|label| {
            histogram!(SCORES, label::TASK => task.to_string(), label::MODEL => spec.name.clone(), label::ROLE => role.as_str(),
                label::LABEL => label.clone())
        })
        .collect()
}

/// `labels`, plus the surface's for a named surface: the default surface's series keep the
/// label set they had before surfaces existed.
fn on_surface(mut labels: Vec<Label>, surface: Option<&str>) -> Vec<Label> {
    if let Some(surface) = surface {
        labels.push(Label::new(label::SURFACE, surface.to_string()));
    }
    labels
}

/// Both sides of a shadow pair: each model and the policy it decides with.
pub type PairSides<'a> = ((&'a ModelSpec, &'a Policy), (&'a ModelSpec, &'a Policy));

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every variant once. Each `match` below is exhaustive, so a new variant does
    /// not compile until it has a place here, and then the test checks it is in `ALL`.
    fn lists_each_once<E: Copy, const N: usize>(all: [E; N], index: impl Fn(E) -> usize) {
        let mut seen: Vec<usize> = all.iter().map(|&e| index(e)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..N).collect::<Vec<_>>());
    }

    #[test]
    fn every_label_enum_lists_each_variant_once() {
        lists_each_once(DropReason::ALL, |r| match r {
            DropReason::QueueFull => 0,
            DropReason::FairShare => 1,
            DropReason::Deadline => 2,
            DropReason::Cancelled => 3,
        });
        lists_each_once(LogOutcome::ALL, |o| match o {
            LogOutcome::Written => 0,
            LogOutcome::DroppedQueueFull => 1,
            LogOutcome::DroppedIoError => 2,
        });
        lists_each_once(ShadowOutcome::ALL, |o| match o {
            ShadowOutcome::Compared => 0,
            ShadowOutcome::SampledOut => 1,
            ShadowOutcome::QueueFull => 2,
            ShadowOutcome::LivePressure => 3,
            ShadowOutcome::Deadline => 4,
            ShadowOutcome::BreakerOpen => 5,
            ShadowOutcome::Error => 6,
            ShadowOutcome::Budget => 7,
            ShadowOutcome::Throttled => 8,
        });
    }

    #[test]
    fn each_variant_gets_its_own_handle() {
        let table = ByVariant::new(ShadowOutcome::ALL, ShadowOutcome::as_str);
        for o in ShadowOutcome::ALL {
            assert_eq!(*table.get(o), o.as_str());
        }
    }
}
