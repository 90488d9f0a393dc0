//! The validated settings each layer reads, as plain data: config owns them (and is a leaf:
//! it imports no layer); the behaviour on them (`BatchPolicy::admit`, `PolicySpec::resolve`,
//! ...) lives with the layer that uses it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::cpus::CpuSet;

/// How a model's workers run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WorkerSettings {
    pub batch: BatchPolicy,
    /// Jobs that may wait in the queue; beyond this, submissions fail with `QueueFull`.
    pub queue_capacity: usize,
    /// Worker threads, each with its own session.
    pub threads: usize,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// Scheduling niceness of the worker threads (0 = normal; shadows run at a higher value so
    /// the kernel favours live work when cores are busy).
    pub nice: i32,
    /// Run the worker threads under `SCHED_IDLE` where the kernel allows it (shadows), falling
    /// back to `nice`.
    pub idle: bool,
    /// Keep the worker threads on these CPUs (`shadow.cpus`); `None` = wherever the process may run.
    pub cpus: Option<CpuSet>,
    /// A live model's long jobs (the long lane) run on threads of their own at this niceness,
    /// and its `threads` workers take short jobs only; 0 = every worker takes both. Shadows
    /// ignore it.
    pub long_job_nice: i32,
    /// Those threads under `SCHED_IDLE` (where allowed; else at `long_job_nice`) or at
    /// `long_job_nice` only.
    pub long_job_scheduling: crate::config::ThreadScheduling,
}

/// How a model's worker merges queued jobs into one inference batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BatchPolicy {
    /// Most reviews in one batch. A single job larger than this runs alone (request size is
    /// bounded separately by `limits.max_reviews_per_request`).
    pub max_batch_size: usize,
    /// How long to hold a non-full batch for more jobs once the queue is empty. Zero means
    /// "take what is queued now": no added latency at low load, natural batching under load.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub max_wait: Duration,
}

/// Shedding rules shared by every shadow (the `[shadow]` config table).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct ShadowPolicy {
    /// Shadow work still queued this long after the live answer is dropped (`deadline`).
    #[serde(with = "crate::config::humantime_serde_str")]
    pub max_delay: Duration,
    /// Skip shadow work while the live model has at least this many jobs queued.
    pub live_pressure_jobs: usize,
    pub breaker: BreakerPolicy,
    /// Share of the process's CPU capacity all shadow work may use.
    pub max_cpu_fraction: f64,
    /// When the process may run on one CPU only (so shadows share it with live): the budget's
    /// share is at most this.
    pub max_cpu_fraction_on_one_cpu: f64,
    /// Share of the process's CPU capacity that must stay free of everything else (live work,
    /// other processes on its CPUs) before shadow work may use any of it.
    pub cpu_reserve: f64,
    /// The effective sample rate never goes below this (nor above the configured rate).
    pub min_sample_rate: f64,
}

/// When a breaker opens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BreakerPolicy {
    /// Recent batches considered.
    pub window: usize,
    /// The breaker needs at least this many batches in the window before it can open.
    pub min_batches: usize,
    /// Open when failed batches / batches in the window reaches this.
    pub max_failure_ratio: f64,
    /// A batch slower than this counts as failed.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub latency_budget: Duration,
    /// How long the breaker stays open before letting work through again.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub cooldown: Duration,
}

/// Settings (the `[shadow.disagreement_log]` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogConfig {
    pub path: PathBuf,
    /// Share of disagreements logged (by a hash of the review id).
    pub sample_rate: f64,
    /// Log the review text itself; otherwise only its sha256.
    pub include_text: bool,
    pub max_file_bytes: u64,
    /// Files kept: the live one plus `max_files - 1` rotated ones (`.1` is the newest).
    pub max_files: usize,
    pub queue_capacity: usize,
}

/// Settings (the `[journal]` table): every live decision, and every shadow decision compared,
/// as JSON lines.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JournalConfig {
    pub path: PathBuf,
    /// Write the review text itself; otherwise only its sha256.
    pub include_text: bool,
    /// Write a line per shadow decision compared with the live one.
    pub include_shadows: bool,
    pub max_file_bytes: u64,
    /// Rotate a non-empty file this long after it was started; zero = by size only.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub max_file_age: Duration,
    /// Files kept: the live one plus `max_files - 1` rotated ones (`.1` is the newest).
    pub max_files: usize,
    /// Rotated files last written longer ago are deleted; zero = by `max_files` only.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub retention: Duration,
    /// Calls (each with its reviews' decisions) and shadow comparisons waiting for the writer.
    pub queue_capacity: usize,
    /// Decisions remembered for `Feedback` to count verdicts against; 0 = always re-score.
    pub index_capacity: usize,
    /// How long a decision stays in that index.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub index_max_age: Duration,
}

/// Settings (the `[labelling]` table): which compared reviews go to the labelling queue, and
/// its file. See `shadow::labelling`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LabellingConfig {
    pub path: PathBuf,
    /// Share of compared disagreements queued (by a hash of the review id), in (0, 1].
    pub disagreement_rate: f64,
    /// Share of compared agreements queued (the control slice), in (0, 1]: never 0, or
    /// agreements could not be estimated at all.
    pub agreement_rate: f64,
    /// Write the review text itself; otherwise only its sha256.
    pub include_text: bool,
    pub max_file_bytes: u64,
    /// Files kept: the live one plus `max_files - 1` rotated ones (`.1` is the newest).
    pub max_files: usize,
    pub queue_capacity: usize,
}

/// Settings (the `[feedback]` table).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FeedbackConfig {
    /// Verdict sources counted by name (e.g. moderation teams or tools); any other counts as
    /// "other", none as "none". Bounded because each is a label value.
    pub sources: Vec<String>,
    pub max_verdicts_per_request: usize,
    /// Verdicts accepted but not yet scored, at most; beyond it a call is refused.
    pub queue_capacity: usize,
    /// Review text bytes of those verdicts, at most: verdicts carry whole reviews, so a count
    /// alone does not bound memory.
    pub queue_max_bytes: usize,
    /// Verdicts sent to a model at once: small, so a live batch never waits long behind them.
    pub batch_size: usize,
    /// A verdict not scored this long after it was accepted is shed.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub max_delay: Duration,
    /// A (review id, task) received again within this window is not counted again; 0 turns
    /// the check off.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub dedupe_window: Duration,
    /// Keys remembered for the dedupe check, at most (the oldest are forgotten first).
    pub dedupe_capacity: usize,
}

/// Where the server's certificate, key and (for mTLS) client CA are read from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TlsConfig {
    /// PEM: the server certificate first, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CA certificates; when set, every client must present a certificate they signed.
    pub client_ca_file: Option<PathBuf>,
    /// How often the files are checked for new content.
    #[serde(with = "crate::config::humantime_serde_str")]
    pub watch_interval: Duration,
}

/// Thresholds for one label; a score at or above a threshold triggers it.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub review: Option<f32>,
    pub reject: Option<f32>,
}

impl Thresholds {
    /// Problems with these thresholds, each prefixed with `field`: both within 0..=1 and review
    /// not above reject.
    pub fn errors(&self, field: &str) -> Vec<String> {
        let mut errors = Vec::new();
        for (which, v) in [("review", self.review), ("reject", self.reject)] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                errors.push(format!("{field}.{which} {v}: must be within 0..=1"));
            }
        }
        if let (Some(review), Some(reject)) = (self.review, self.reject)
            && review > reject
        {
            errors.push(format!("{field}: review {review} must not exceed reject {reject}"));
        }
        errors
    }
}

/// A policy as the config names it: thresholds by label name, not yet tied to a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PolicySpec {
    pub name: String,
    pub version: String,
    pub thresholds: BTreeMap<String, Thresholds>,
}

/// The source label of a verdict from outside `feedback.sources`.
pub const OTHER_SOURCE: &str = "other";
/// The source label of a verdict that names none.
pub const NO_SOURCE: &str = "none";
