//! Handles the serving path records through: requests, reviews and their decisions per task
//! (and surface), model batches and queues, the text and tokens coming in.

use super::*;

/// Why queued work was dropped without inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The model's queue was full when the request arrived.
    QueueFull,
    /// Queued, then pushed out of a full queue to make room for another caller's job: the
    /// newest job of the caller holding the most of the queue (`inference::queue`).
    FairShare,
    /// The caller's deadline had passed.
    Deadline,
    /// The caller went away (cancelled or disconnected).
    Cancelled,
}

impl DropReason {
    pub const ALL: [DropReason; 4] =
        [DropReason::QueueFull, DropReason::FairShare, DropReason::Deadline, DropReason::Cancelled];

    fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::FairShare => "fair_share",
            DropReason::Deadline => "deadline",
            DropReason::Cancelled => "cancelled",
        }
    }
}

/// Which API a call came in through: gRPC, or the HTTP/JSON API (`serving::http`) that calls
/// the same handlers. The HTTP API puts it in the request's extensions; absent means gRPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    Http,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
        }
    }
}

/// Records one finished call or stream message; `code` is the gRPC status name (`OK`, ...),
/// also for HTTP calls (whose status follows from it: `serving::http::status`).
pub fn request_finished(method: &'static str, protocol: Protocol, code: &'static str, seconds: f64) {
    let protocol = protocol.as_str();
    counter!(REQUESTS_TOTAL, label::METHOD => method, label::PROTOCOL => protocol, label::CODE => code).increment(1);
    histogram!(REQUEST_DURATION_SECONDS, label::METHOD => method, label::PROTOCOL => protocol).record(seconds);
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
    dropped: ByVariant<DropReason, Counter, 4>,
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
