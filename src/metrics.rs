//! Every metric modserve exports: names, label values, buckets and help text live here and
//! nowhere else. Label values are bounded: model names, versions, tasks, decisions and the
//! enums below, never request data.

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

/// Every label key, as the series carry it and as the report's reader (`offline::report::fetch`)
/// selects by it.
pub mod label {
    pub const CODE: &str = "code";
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
pub const TRANSPORT_REFUSALS_TOTAL: &str = "modserve_transport_refusals_total";
pub const SCORES: &str = "modserve_scores";
pub const SHADOW_POLICY_ONLY_REVIEWS_TOTAL: &str = "modserve_shadow_policy_only_reviews_total";
pub const VERDICTS_TOTAL: &str = "modserve_verdicts_total";
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
/// Scores in [0, 1], in twentieths: enough to see a distribution shift on a dashboard.
const SCORE_BUCKETS: &[f64] =
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

/// Why queued work was dropped without inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The model's queue was full when the request arrived.
    QueueFull,
    /// The caller's deadline had passed.
    Deadline,
    /// The caller went away (cancelled or disconnected).
    Cancelled,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::QueueFull, DropReason::Deadline, DropReason::Cancelled];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Deadline => "deadline",
            DropReason::Cancelled => "cancelled",
        }
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

fn describe() {
    describe_transport();
    describe_requests();
    describe_inference();
    describe_shadow();
    describe_feedback();
    describe_control();
}

/// The listeners: TLS, connections, refusals.
fn describe_transport() {
    describe_counter!(
        TLS_RELOADS_TOTAL,
        "TLS certificate reloads after their files changed, by result (success, or failure: the old one kept serving)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes that failed or timed out (plaintext on a TLS port, no or untrusted client certificate), by listener."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        "Connections open now, by listener (grpc, admin, metrics): accepted and not yet closed, TLS handshakes included."
    );
    describe_gauge!(
        REQUEST_BYTES_RECEIVING,
        Unit::Bytes,
        "Request bytes reserved now by messages being uploaded (their declared lengths), by listener: what \
         server.max_buffered_request_bytes bounds."
    );
    describe_counter!(
        CONNECTIONS_CLOSED_IDLE_TOTAL,
        "HTTP/2 connections closed after server.idle_timeout without a call, by listener."
    );
    describe_counter!(
        TRANSPORT_REFUSALS_TOTAL,
        "Connections and calls the gRPC transport refused or cut before a handler saw them, by listener and reason \
         (connection_limit, peer_connection_limit, handshake_timeout, upload_budget_connection, \
         upload_budget_process, upload_deadline)."
    );
}

/// Calls and the reviews in them (input monitoring included).
fn describe_requests() {
    describe_counter!(REQUESTS_TOTAL, "gRPC calls (stream messages count one each), by method and status code.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "End-to-end time of a call or stream message inside the server, by method."
    );
    describe_counter!(
        REVIEWS_TOTAL,
        "Reviews classified by the live model, by task, model, version, role, policy, policy_version and decision (and surface, for a surface the task lists)."
    );
    describe_counter!(
        SURFACE_FALLBACKS_TOTAL,
        "Classified reviews whose request named a surface the task does not list, decided under the task's default policy (unknown_surface = \"default\"), by task."
    );
    describe_histogram!(
        SCORES,
        "Scores per review and label, by task, model, role and label (live, and shadows that ran inference): drift shows here."
    );
    describe_histogram!(REVIEW_TEXT_BYTES, "Bytes of text (title and text) per classified review.");
    describe_counter!(
        REVIEWS_TEXT_CUT_TOTAL,
        "Reviews whose text or title was cut to limits.max_text_bytes (limits.oversize_text = \"truncate\")."
    );
    describe_counter!(
        REVIEWS_BY_LANGUAGE_TOTAL,
        "Classified reviews by the language the caller sent (primary subtag; \"other\" outside monitoring.languages, \"none\" when not sent)."
    );
}

/// Tokenization, batching, queues and the model runtime.
fn describe_inference() {
    describe_counter!(TOKENS_TOTAL, "Tokens fed to a model (after truncation), by model and role.");
    describe_counter!(
        UNKNOWN_TOKENS_TOTAL,
        "Tokens the tokenizer could not map (its unknown token), by model and role: a rise means unfamiliar input."
    );
    describe_counter!(
        REVIEWS_AT_MAX_TOKENS_TOTAL,
        "Reviews that filled the model's max_sequence_length (the rest of the text was not seen), by model and role."
    );
    describe_histogram!(
        STAGE_DURATION_SECONDS,
        Unit::Seconds,
        "Time per pipeline stage (queue_wait per job; tokenize and inference per batch), by model and role."
    );
    describe_histogram!(BATCH_SIZE, "Reviews per inference batch, by model and role.");
    describe_counter!(BATCHES_TOTAL, "Inference batches run (including failed ones), by model and role.");
    describe_gauge!(
        QUEUE_DEPTH,
        "Jobs waiting in a model's queue when its worker last took a batch, by model and role."
    );
    describe_counter!(
        DROPPED_TOTAL,
        "Jobs dropped without inference, by model, role and reason (queue_full, deadline, cancelled)."
    );
    describe_counter!(
        INFERENCE_ERRORS_TOTAL,
        "Inference batches that failed (runtime error, bad output, panic), by model and role."
    );
}

/// Shadows: coverage, comparisons, breaker, CPU budget, sample rates, the disagreement log.
fn describe_shadow() {
    describe_counter!(
        SHADOW_POLICY_ONLY_REVIEWS_TOTAL,
        "Reviews a policy-only shadow decided from the live model's scores, running no inference, by task, model and shadow_policy."
    );
    describe_counter!(
        SHADOW_COMPARISONS_TOTAL,
        "Reviews scored by both the live model and a shadow, by task, both models and versions, both policies and both decisions (a 3x3 confusion matrix), and surface for a surface the task lists."
    );
    describe_histogram!(
        SHADOW_SCORE_DELTA,
        "Shadow score minus live score per review, by task, live model, shadow model and label."
    );
    describe_counter!(
        SHADOW_TOP_LABEL_FLIPS_TOTAL,
        "Compared reviews whose highest-scoring label differs between live and shadow, by task and models."
    );
    describe_counter!(
        SHADOW_REVIEWS_TOTAL,
        "Reviews offered to a shadow, by task, live model, shadow model and outcome: compared, or skipped as sampled_out, queue_full, live_pressure, deadline, breaker_open, error, budget (shadow CPU budget spent), throttled (in the configured sample, not in the lowered effective one)."
    );
    describe_gauge!(SHADOW_BREAKER_OPEN, "1 while a shadow's circuit breaker has paused it, by task and shadow model.");
    describe_counter!(
        DISAGREEMENT_LOG_LINES_TOTAL,
        "Disagreement log lines, by outcome: written, dropped_queue_full (the writer fell behind), dropped_io_error."
    );
    describe_counter!(
        JOURNAL_RECORDS_TOTAL,
        "Decision journal records (one per review, task and decider), by outcome: written, dropped_queue_full (the writer fell behind), dropped_io_error."
    );
    describe_counter!(
        JOURNAL_VERDICT_LOOKUPS_TOTAL,
        "Verdicts looked up in the decision journal's index, by task and outcome: served (counted against the decision served), not_found or changed (model, policy or text differ; both re-scored)."
    );
    describe_counter!(SHADOW_BREAKER_TRIPS_TOTAL, "Times a shadow's circuit breaker opened, by task and shadow model.");
    describe_gauge!(
        SHADOW_SCHEDULING,
        "1 for the scheduling a shadow model's worker threads run under (idle = SCHED_IDLE, nice, normal), 0 for the others, by model and policy."
    );
    describe_histogram!(
        SHADOW_BATCH_CPU_SECONDS,
        Unit::Seconds,
        "CPU time of each shadow batch on its worker thread (thread CPU clock, comparison included), by model; _sum is the shadow's CPU seconds."
    );
    describe_gauge!(
        SHADOW_CPU_BUDGET,
        "CPU-seconds per second all shadow work may use (shadow.max_cpu_fraction of the process's CPU capacity); 0 = no budget."
    );
    describe_gauge!(SHADOW_CPU_USE, "CPU-seconds per second shadow work used, averaged over the last 10 s.");
    describe_gauge!(
        SHADOW_SAMPLE_RATE_CONFIGURED,
        "A shadow's configured sample_rate, by task, live model, shadow model and shadow policy."
    );
    describe_gauge!(
        SHADOW_SAMPLE_RATE_EFFECTIVE,
        "The share of reviews a shadow takes now: the configured rate, lowered while the CPU budget or the queues cannot take it (a subset of the same hash), by task, live model, shadow model and shadow policy."
    );
}

/// Moderator verdicts.
fn describe_feedback() {
    describe_counter!(
        VERDICTS_TOTAL,
        "Moderator verdicts scored, by task, model, version, role, policy, policy_version, source, model_decision and human_decision (a confusion matrix per model), and surface for a surface the task lists."
    );
    describe_counter!(
        VERDICTS_RECEIVED_TOTAL,
        "Verdicts received by Feedback/SubmitVerdicts, by task, source and outcome: counted, duplicate, shed_queue_full, shed_deadline, error."
    );
    describe_counter!(
        VERDICT_MODEL_ERRORS_TOTAL,
        "Verdicts one model could not score (inference failed or shed), so its confusion counts miss them, by task, model, role and policy."
    );
    describe_gauge!(FEEDBACK_QUEUE_VERDICTS, "Verdicts accepted and waiting to be scored.");
    describe_counter!(
        LABELLING_QUEUE_ENTRIES_TOTAL,
        "Labelling queue entries (compared reviews sampled for moderators), by outcome: written, dropped_queue_full (the writer fell behind), dropped_io_error."
    );
    describe_counter!(
        LABELLED_VERDICTS_TOTAL,
        "Verdicts on reviews the labelling queue selects for a shadow pair, by task, both models, versions and policies, the review's inclusion_probability (weight = 1 / it), live_decision, shadow_decision and human_decision."
    );
}

/// The build, the config and its reloads, model loading, CPU capacity.
fn describe_control() {
    describe_gauge!(
        MODEL_INFO,
        "1 for every loaded model, labelled with task, model, version, role and the first 12 hex digits of its sha256."
    );
    describe_gauge!(BUILD_INFO, "1, labelled with the modserve version.");
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reload attempts, by trigger (file, signal, admin) and result (success, failure)."
    );
    describe_gauge!(
        CONFIG_LAST_RELOAD_SUCCESS,
        "1 if the last config load (start-up or reload) was applied, 0 if a reload was refused."
    );
    describe_gauge!(CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS, Unit::Seconds, "Unix time of the last reload attempt.");
    describe_gauge!(CONFIG_GENERATION, "Generation of the config now serving: 1 at start-up, +1 per applied reload.");
    describe_gauge!(
        CONFIG_INFO,
        "1 for the config now serving, labelled with the sha256 of its file; 0 for earlier ones."
    );
    describe_gauge!(
        MODEL_LOAD_SECONDS,
        Unit::Seconds,
        "Time the last load of a model took (read, verify, build sessions, warm up), by model."
    );
    describe_gauge!(
        PROCESS_CPU_CAPACITY,
        "CPUs the process may use (cgroup quota, else affinity mask), by source (cgroup_v2, cgroup_v1, affinity)."
    );
}

/// Records one finished call or stream message; `code` is the gRPC status name (`OK`, ...).
pub fn request_finished(method: &'static str, code: &'static str, seconds: f64) {
    counter!(REQUESTS_TOTAL, label::METHOD => method, label::CODE => code).increment(1);
    histogram!(REQUEST_DURATION_SECONDS, label::METHOD => method).record(seconds);
}

/// Pre-registered handles for one model in one role, so the hot path never builds label sets.
pub struct ModelMetrics {
    pub queue_wait: Histogram,
    pub tokenize: Histogram,
    pub inference: Histogram,
    pub batch_size: Histogram,
    pub batches: Counter,
    pub queue_depth: Gauge,
    pub errors: Counter,
    pub tokens: Counter,
    pub unknown_tokens: Counter,
    pub at_max_tokens: Counter,
    dropped: ByVariant<DropReason, Counter, 3>,
    info: Gauge,
}

impl ModelMetrics {
    pub fn new(spec: &ModelSpec, role: Role) -> ModelMetrics {
        let model = spec.name.clone();
        let role_str = role.as_str();
        let stage = |s: Stage| histogram!(STAGE_DURATION_SECONDS, label::STAGE => s.as_str(), label::MODEL => model.clone(), label::ROLE => role_str);
        let dropped = |r: DropReason| counter!(DROPPED_TOTAL, label::MODEL => model.clone(), label::ROLE => role_str, label::REASON => r.as_str());
        let info = gauge!(MODEL_INFO, label::TASK => spec.task.clone(), label::MODEL => model.clone(),
            label::VERSION => spec.version.clone(), label::ROLE => role_str, "sha256" => spec.sha256_prefix().to_string());
        info.set(1.0);
        ModelMetrics {
            queue_wait: stage(Stage::QueueWait),
            tokenize: stage(Stage::Tokenize),
            inference: stage(Stage::Inference),
            batch_size: histogram!(BATCH_SIZE, label::MODEL => model.clone(), label::ROLE => role_str),
            batches: counter!(BATCHES_TOTAL, label::MODEL => model.clone(), label::ROLE => role_str),
            queue_depth: gauge!(QUEUE_DEPTH, label::MODEL => model.clone(), label::ROLE => role_str),
            errors: counter!(INFERENCE_ERRORS_TOTAL, label::MODEL => model.clone(), label::ROLE => role_str),
            tokens: counter!(TOKENS_TOTAL, label::MODEL => model.clone(), label::ROLE => role_str),
            unknown_tokens: counter!(UNKNOWN_TOKENS_TOTAL, label::MODEL => model.clone(), label::ROLE => role_str),
            at_max_tokens: counter!(REVIEWS_AT_MAX_TOKENS_TOTAL, label::MODEL => model.clone(), label::ROLE => role_str),
            dropped: ByVariant::new(DropReason::ALL, dropped),
            info,
        }
    }

    pub fn dropped(&self, reason: DropReason) -> &Counter {
        self.dropped.get(reason)
    }

    /// Marks the model as no longer loaded (its info series drops to 0).
    pub fn unloaded(&self) {
        self.info.set(0.0);
    }

    /// Marks the model as loaded (its info series is 1).
    pub fn loaded(&self) {
        self.info.set(1.0);
    }
}

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

/// Pre-registered handles for one task's live answers under its policy.
pub struct TaskMetrics {
    decided: [Counter; 3],
    scores: Vec<Histogram>,
}

impl TaskMetrics {
    pub fn new(task: &str, live: &ModelSpec, policy: &Policy) -> TaskMetrics {
        TaskMetrics { decided: decided(task, live, policy, None), scores: score_histograms(task, live, Role::Live) }
    }

    /// The decision counters of one named surface, under its policy. Scores do not depend on
    /// the surface, so they are recorded by the task's own `TaskMetrics` only.
    pub fn on_surface(task: &str, live: &ModelSpec, policy: &Policy, surface: &str) -> TaskMetrics {
        TaskMetrics { decided: decided(task, live, policy, Some(surface)), scores: Vec::new() }
    }

    /// Records one review's live scores and decision.
    pub fn answered(&self, scores: &[f32], decision: Decision) {
        self.decided(decision);
        self.scores(scores);
    }

    /// Records one review's live decision.
    pub fn decided(&self, decision: Decision) {
        self.decided[decision.index()].increment(1);
    }

    /// Records one review's live scores (no-op for a surface's handles).
    pub fn scores(&self, scores: &[f32]) {
        for (h, s) in self.scores.iter().zip(scores) {
            h.record(f64::from(*s));
        }
    }
}

/// `REVIEWS_TOTAL` for each decision of one task's live model under `policy`.
fn decided(task: &str, live: &ModelSpec, policy: &Policy, surface: Option<&str>) -> [Counter; 3] {
    Decision::ALL.map(|d| {
        let labels = vec![
            Label::new(label::TASK, task.to_string()),
            Label::new(label::MODEL, live.name.clone()),
            Label::new(label::VERSION, live.version.clone()),
            Label::new(label::ROLE, Role::Live.as_str()),
            Label::new(label::POLICY, policy.name.clone()),
            Label::new(label::POLICY_VERSION, policy.version.clone()),
            Label::new(label::DECISION, d.as_str()),
        ];
        counter!(REVIEWS_TOTAL, on_surface(labels, surface))
    })
}

/// Counts reviews decided under the default policy because their surface is not listed.
pub fn surface_fallbacks(task: &str) -> Counter {
    counter!(SURFACE_FALLBACKS_TOTAL, label::TASK => task.to_string())
}

/// Pre-registered verdict counters for one model (or policy) of one task: for each source, a
/// model decision x human decision matrix, all at 0 from the start so every series exists
/// before the first verdict (exact window counts in the launch report rely on it).
pub struct VerdictMetrics {
    /// Configured sources, then "other", then "none".
    sources: Vec<String>,
    counts: Vec<Confusion<Counter>>,
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
        VerdictMetrics { sources, counts, errors }
    }

    /// Counts one verdict; `source` is already normalised (a configured one, "other" or "none").
    pub fn count(&self, source: &str, model: Decision, human: Decision) {
        let i = self.sources.iter().position(|s| s == source).unwrap_or(self.sources.len() - 1);
        self.counts[i][(model, human)].increment(1);
    }
}

/// Pre-registered counters of verdicts on reviews the labelling queue selects for one shadow
/// pair, `[live][shadow][human]` decision, each series labelled with the inclusion probability
/// its stratum has (agreement on the diagonal, disagreement off it), so the report can weight
/// it without knowing the config. All at 0 from the start, as `VerdictMetrics`.
pub struct LabelledVerdictMetrics {
    counts: [Confusion<Counter>; 3],
}

/// Both sides of a shadow pair: each model and the policy it decides with.
pub type PairSides<'a> = ((&'a ModelSpec, &'a Policy), (&'a ModelSpec, &'a Policy));

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

/// Input-quality handles, built per config (the monitored languages are configured).
pub struct InputMetrics {
    text_bytes: Histogram,
    text_cut: Counter,
    languages: Vec<(String, Counter)>,
    other_language: Counter,
    no_language: Counter,
}

impl InputMetrics {
    pub fn new(languages: &[String]) -> InputMetrics {
        let language = |l: &str| counter!(REVIEWS_BY_LANGUAGE_TOTAL, label::LANGUAGE => l.to_string());
        InputMetrics {
            text_bytes: histogram!(REVIEW_TEXT_BYTES),
            text_cut: counter!(REVIEWS_TEXT_CUT_TOTAL),
            languages: languages.iter().map(|l| (l.clone(), language(l))).collect(),
            other_language: language("other"),
            no_language: language("none"),
        }
    }

    /// Records one classified review: its text size, whether it was cut, and its language's
    /// primary subtag ("en-GB" counts as "en").
    pub fn review(&self, text_bytes: usize, cut: bool, language: Option<&str>) {
        self.text_bytes.record(text_bytes as f64);
        if cut {
            self.text_cut.increment(1);
        }
        let counter = match language.map(|l| l.split(['-', '_']).next().unwrap_or("")).filter(|l| !l.is_empty()) {
            None => &self.no_language,
            Some(primary) => self
                .languages
                .iter()
                .find(|(l, _)| l.eq_ignore_ascii_case(primary))
                .map_or(&self.other_language, |(_, c)| c),
        };
        counter.increment(1);
    }
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
}

impl BudgetMetrics {
    pub fn new() -> BudgetMetrics {
        BudgetMetrics { budget: gauge!(SHADOW_CPU_BUDGET), usage: gauge!(SHADOW_CPU_USE) }
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

/// What became of a JSON-lines record (a disagreement log line, a journal record).
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

/// Handles for a JSON-lines file's counters: the disagreement log's or the journal's.
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

    fn named(name: &'static str) -> LogMetrics {
        LogMetrics { lines: ByVariant::new(LogOutcome::ALL, |o| counter!(name, label::OUTCOME => o.as_str())) }
    }

    /// The decision journal's records.
    pub fn journal() -> LogMetrics {
        LogMetrics::named(JOURNAL_RECORDS_TOTAL)
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

/// Records a model's load time.
pub fn model_loaded(model: &str, seconds: f64) {
    gauge!(MODEL_LOAD_SECONDS, label::MODEL => model.to_string()).set(seconds);
}

/// Records a TLS certificate reload.
pub fn tls_reloaded(applied: bool) {
    counter!(TLS_RELOADS_TOTAL, label::RESULT => if applied { "success" } else { "failure" }).increment(1);
}

/// Records a failed TLS handshake on `listener` ("grpc" or "admin").
pub fn tls_handshake_failed(listener: &'static str) {
    counter!(TLS_HANDSHAKE_FAILURES_TOTAL, label::LISTENER => listener).increment(1);
}

/// The open-connections gauge of `listener`.
pub fn connections_open(listener: &'static str) -> Gauge {
    gauge!(CONNECTIONS_OPEN, label::LISTENER => listener)
}

/// The gauge of request bytes being received on `listener`.
pub fn request_bytes_receiving(listener: &'static str) -> Gauge {
    gauge!(REQUEST_BYTES_RECEIVING, label::LISTENER => listener)
}

/// Records a connection closed for being idle.
pub fn connection_closed_idle(listener: &'static str) {
    counter!(CONNECTIONS_CLOSED_IDLE_TOTAL, label::LISTENER => listener).increment(1);
}

/// Why the gRPC transport refused a connection or cut a call before its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportRefusal {
    /// `server.max_connections` connections were open.
    ConnectionLimit,
    /// `server.max_connections_per_peer` connections from the same address were open.
    PeerConnectionLimit,
    /// The HTTP/2 preface did not arrive within `server.handshake_timeout`.
    HandshakeTimeout,
    /// The message would not fit in the connection's share of buffered request bytes.
    UploadBudgetConnection,
    /// The message would not fit in the process's buffered request bytes.
    UploadBudgetProcess,
    /// The call's deadline passed before it was answered (its upload had not finished).
    UploadDeadline,
}

impl TransportRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportRefusal::ConnectionLimit => "connection_limit",
            TransportRefusal::PeerConnectionLimit => "peer_connection_limit",
            TransportRefusal::HandshakeTimeout => "handshake_timeout",
            TransportRefusal::UploadBudgetConnection => "upload_budget_connection",
            TransportRefusal::UploadBudgetProcess => "upload_budget_process",
            TransportRefusal::UploadDeadline => "upload_deadline",
        }
    }
}

/// Records a connection or call refused by the transport.
pub fn transport_refused(listener: &'static str, reason: TransportRefusal) {
    counter!(TRANSPORT_REFUSALS_TOTAL, label::LISTENER => listener, label::REASON => reason.as_str()).increment(1);
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadTrigger {
    Startup,
    File,
    Signal,
    Admin,
}

impl ReloadTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadTrigger::Startup => "startup",
            ReloadTrigger::File => "file",
            ReloadTrigger::Signal => "signal",
            ReloadTrigger::Admin => "admin",
        }
    }
}

/// Records a reload attempt; `active` is the config now serving (new or kept).
pub fn reload_finished(
    trigger: ReloadTrigger,
    applied: bool,
    generation: u64,
    previous_sha256: Option<&str>,
    active_sha256: &str,
) {
    let result = if applied { "success" } else { "failure" };
    // Set from start-up on, so every replica has the series (the start-up config applied).
    gauge!(CONFIG_LAST_RELOAD_SUCCESS).set(if applied { 1.0 } else { 0.0 });
    if trigger != ReloadTrigger::Startup {
        counter!(CONFIG_RELOADS_TOTAL, label::TRIGGER => trigger.as_str(), label::RESULT => result).increment(1);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        gauge!(CONFIG_LAST_RELOAD_TIMESTAMP_SECONDS).set(now.as_secs_f64());
    }
    if applied {
        if let Some(old) = previous_sha256.filter(|old| *old != active_sha256) {
            gauge!(CONFIG_INFO, "sha256" => old.to_string()).set(0.0);
        }
        gauge!(CONFIG_INFO, "sha256" => active_sha256.to_string()).set(1.0);
        gauge!(CONFIG_GENERATION).set(generation as f64);
    }
}

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
            DropReason::Deadline => 1,
            DropReason::Cancelled => 2,
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
