//! The help text of every metric (`# HELP` in the scrape), registered once at install.

use super::*;

pub(super) fn describe() {
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
    describe_gauge!(
        CALLS_WAITING,
        "Classify calls waiting now for a turn, unread: server.max_calls_in_progress were in progress (both APIs)."
    );
    describe_gauge!(
        CALLS_IN_PROGRESS,
        "Classify calls in progress now (both APIs), by connection: light (its only call) or busy (more than one \
         at a time, or a call of 512 KiB or more); busy ones are held to server.max_busy_calls_in_progress while \
         light ones call."
    );
    describe_counter!(
        CONNECTIONS_CLOSED_IDLE_TOTAL,
        "HTTP/2 connections closed after server.idle_timeout without a call, by listener."
    );
    describe_counter!(
        TRANSPORT_REFUSALS_TOTAL,
        "Connections and calls the gRPC transport refused or cut before a handler saw them, by listener and reason \
         (connection_limit, peer_connection_limit, handshake_timeout, upload_budget_connection, \
         upload_budget_process, upload_deadline, feedback_queue_full: a SubmitVerdicts message larger than the \
         verdict queue's room, refused at its prefix; turn_deadline: a call's deadline passed while it waited for a \
         turn; answer_not_taken: a connection closed because an answer waited past server.send_timeout for the \
         client to take it; protocol_error: a connection closed with a GOAWAY for breaking HTTP/2, e.g. too many \
         streams reset before they were answered; endless_stream_limit: a health Watch or reflection stream over \
         its bound, 8 per connection and 2048 per listener)."
    );
}

/// Calls and the reviews in them (input monitoring included).
fn describe_requests() {
    describe_counter!(
        REQUESTS_TOTAL,
        "Calls (stream messages count one each), by method, protocol (grpc, http) and gRPC status code."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "End-to-end time of a call or stream message inside the server, by method and protocol."
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
        "Jobs dropped without inference, by model, role and reason (queue_full, fair_share, deadline, cancelled)."
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
        "CPU-seconds per second all shadow work may use (shadow.max_cpu_fraction of the process's CPU capacity)."
    );
    describe_gauge!(SHADOW_CPU_USE, "CPU-seconds per second shadow work used, averaged over the last 10 s.");
    describe_gauge!(
        SHADOW_CPU_ALLOWED,
        "CPU-seconds per second shadow work may use now: the budget, lowered to what the process's CPUs leave idle beyond shadow.cpu_reserve; 0 = none now."
    );
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
    describe_histogram!(
        VERDICT_SCORES,
        "The live model's scores on reviews with a moderator verdict, by task, model, version, label and human_decision as it counts for that label (allow when the verdict names other labels only), and surface for a surface the task lists: what modserve tune --prometheus solves thresholds from."
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
