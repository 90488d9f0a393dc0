//! Configuration: the TOML file and the command-line overrides (`Overrides`, filled by `cli`),
//! validated as a whole into a typed `Config`. Every key is documented in
//! `docs/configuration.md`; defaults live in `defaults` below and nowhere else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod cpus;
mod file;
mod launch;
mod settings;
mod validate;

pub use cpus::{CpuListError, CpuSet, MAX_CPUS, allowed_cpus};
pub use launch::defaults as launch_defaults;
pub use launch::{CostWeights, LaunchCriteria, RawLaunchCriteria, validate_criteria};
pub use settings::{
    BatchPolicy, BreakerPolicy, FeedbackConfig, JournalConfig, LabellingConfig, LogConfig, NO_SOURCE, OTHER_SOURCE,
    PolicySpec, ShadowPolicy, Thresholds, TlsConfig, WorkerSettings,
};

use file::RawConfig;
use validate::validate;

/// Defaults for every optional key.
pub mod defaults {
    pub const CONFIG_FILE: &str = "modserve.toml";
    pub const GRPC_LISTEN: &str = "127.0.0.1:50051";
    pub const METRICS_LISTEN: &str = "127.0.0.1:9464";
    pub const SHUTDOWN_GRACE: &str = "30s";
    pub const DRAIN_DELAY: &str = "0s";
    pub const WATCH_INTERVAL: &str = "1s";
    pub const MAX_CONCURRENT_STREAMS: u32 = 256;
    pub const KEEPALIVE_INTERVAL: &str = "30s";
    pub const KEEPALIVE_TIMEOUT: &str = "10s";
    pub const ONNXRUNTIME_LIB: &str = ".ort/libonnxruntime.so.1.31.1";
    pub const MAX_REVIEWS_PER_REQUEST: usize = 64;
    pub const MAX_TEXT_BYTES: usize = 16 * 1024;
    pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
    pub const STREAM_IN_FLIGHT: usize = 8;
    pub const MAX_CALL_TIMEOUT_SECS: u64 = 30;
    pub const IDLE_TIMEOUT: &str = "10m";
    pub const HANDSHAKE_TIMEOUT: &str = "10s";
    pub const SEND_TIMEOUT: &str = "10s";
    pub const MAX_CONNECTIONS: usize = 4096;
    pub const MAX_CONNECTIONS_PER_PEER: usize = 256;
    /// Enough to keep a live model's workers in full batches of 32. Measured against a client
    /// keeping 512 single-review calls in flight: another caller's p99 7.0-7.2 ms at 32 (11-38 ms
    /// at 64, 42-132 without a bound), for 0.90x of a lone client's calls/s at 64 in flight
    /// (docs/reliability.md).
    pub const MAX_CALLS_IN_PROGRESS: usize = 32;
    /// Busy connections' calls in progress while light ones call: a light caller's p99 under a
    /// 512-call flood 5.0-6.3 ms against 10.3-11.2 with no hold, for 0.66-0.75x of the flood's
    /// answers (docs/reliability.md).
    pub const MAX_BUSY_CALLS_IN_PROGRESS: usize = 8;
    pub const MAX_BUFFERED_REQUEST_BYTES: usize = 256 * 1024 * 1024;
    pub const MAX_BUFFERED_REQUEST_BYTES_PER_CONNECTION: usize = 16 * 1024 * 1024;
    pub const TLS_WATCH_INTERVAL: &str = "10s";
    pub const MAX_BATCH_SIZE: usize = 32;
    pub const MAX_WAIT: &str = "0ms";
    pub const QUEUE_CAPACITY: usize = 256;
    pub const INFERENCE_THREADS: usize = 1;
    pub const INTRA_OP_THREADS: usize = 1;
    pub const LONG_JOB_NICE: i32 = 5;
    pub const LONG_JOB_SCHEDULING: super::ThreadScheduling = super::ThreadScheduling::Idle;
    pub const SHADOW_MAX_DELAY: &str = "2s";
    pub const SHADOW_LIVE_PRESSURE_JOBS: usize = 4;
    pub const SHADOW_NICE: i32 = 10;
    pub const SHADOW_SCHEDULING: super::ThreadScheduling = super::ThreadScheduling::Idle;
    /// A trickle that keeps a throttled shadow's cost measured: 1 review in 1,000.
    pub const SHADOW_MIN_SAMPLE_RATE: f64 = 0.001;
    /// What a config that leaves the budget out gets: on two CPUs shared with live, a
    /// transformer shadow at 5% cost live's p99 about 1.06x, at 15% about 1.1x (docs/shadow.md,
    /// "Sizing the budget"). No budget at all let it take a whole core and, in a CPU quota, stall
    /// live.
    pub const SHADOW_MAX_CPU_FRACTION: f64 = 0.05;
    /// Half the CPUs stay free before shadows get any (docs/shadow.md, "Headroom").
    pub const SHADOW_CPU_RESERVE: f64 = 0.5;
    /// On one CPU shared with live, a transformer shadow costs live's p99 about 1.1x at 1% of
    /// the core and 1.3x at 3.5%, through the caches (docs/shadow.md, "Sizing the budget").
    pub const SHADOW_MAX_CPU_FRACTION_ON_ONE_CPU: f64 = 0.01;
    pub const BREAKER_WINDOW: usize = 20;
    pub const BREAKER_MIN_BATCHES: usize = 10;
    pub const BREAKER_MAX_FAILURE_RATIO: f64 = 0.5;
    pub const BREAKER_LATENCY_BUDGET: &str = "1s";
    pub const BREAKER_COOLDOWN: &str = "30s";
    pub const LOG_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    pub const LOG_MAX_FILES: usize = 5;
    pub const LOG_QUEUE_CAPACITY: usize = 4096;
    pub const JOURNAL_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    pub const JOURNAL_MAX_FILE_AGE: &str = "1h";
    pub const JOURNAL_MAX_FILES: usize = 24;
    pub const JOURNAL_QUEUE_CAPACITY: usize = 4096;
    pub const JOURNAL_INDEX_CAPACITY: usize = 100_000;
    pub const JOURNAL_INDEX_MAX_AGE: &str = "24h";
    /// Every compared disagreement goes to the labelling queue: they are what a launch hinges on.
    pub const LABELLING_DISAGREEMENT_RATE: f64 = 1.0;
    /// A control slice of 1 agreement in 100, so precision and recall cover agreements too.
    pub const LABELLING_AGREEMENT_RATE: f64 = 0.01;
    pub const FEEDBACK_MAX_VERDICTS_PER_REQUEST: usize = 256;
    pub const FEEDBACK_QUEUE_CAPACITY: usize = 4096;
    pub const FEEDBACK_QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;
    pub const FEEDBACK_BATCH_SIZE: usize = 8;
    pub const FEEDBACK_MAX_DELAY: &str = "30s";
    pub const FEEDBACK_DEDUPE_WINDOW: &str = "24h";
    pub const FEEDBACK_DEDUPE_CAPACITY: usize = 100_000;
    /// Languages counted by name in `modserve_reviews_by_language_total`; others count as "other".
    pub const MONITORED_LANGUAGES: &[&str] = &["de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "zh"];
}

/// Settings that override the config file (`cli::Flags`: the command line and environment),
/// re-applied on every reload.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The config file.
    pub config: PathBuf,
    /// Overrides `server.grpc_listen`.
    pub grpc_listen: Option<String>,
    /// Overrides `server.metrics_listen`.
    pub metrics_listen: Option<String>,
    /// Overrides `server.http_listen`.
    pub http_listen: Option<String>,
    /// Overrides `admin.listen`.
    pub admin_listen: Option<String>,
    /// Overrides `server.log_format`.
    pub log_format: Option<LogFormat>,
    /// Overrides `server.onnxruntime_lib` (relative to the current directory).
    pub onnxruntime_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How worker threads are put behind live short calls: shadows (`shadow.scheduling`) and a live
/// model's long jobs (`batching.long_job_scheduling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThreadScheduling {
    /// `SCHED_IDLE` where the kernel allows it, else the niceness (`shadow.nice`, `long_job_nice`).
    Idle,
    /// Only the niceness.
    Nice,
}

/// What to do with a review text longer than `limits.max_text_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizeText {
    /// Fail the request with INVALID_ARGUMENT naming the review.
    Reject,
    /// Cut the text at the last character boundary within the limit.
    Truncate,
}

/// Serializes durations as humantime strings ("2ms") in `GetConfig` output.
pub mod humantime_serde_str {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A TOML error on one line: "line L, column C: message" (toml's own rendering spans lines).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_string(),
    }
}

/// True for names made of `[a-z0-9._-]`, non-empty: safe in file names and metric labels.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Hex sha256 of some bytes: a config's text (`Config::source_sha256`) and a package's files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

// === the validated config ===

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub source: PathBuf,
    /// sha256 of the text this config was parsed from.
    pub source_sha256: String,
    /// The command-line and environment overrides applied, re-applied on every reload.
    #[serde(skip)]
    pub overrides: Overrides,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    /// TLS for the gRPC and Admin listeners; `None` serves plaintext.
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub shadow: ShadowPolicy,
    /// Niceness of shadow worker threads.
    pub shadow_nice: i32,
    /// Scheduling class asked for shadow worker threads.
    pub shadow_scheduling: ThreadScheduling,
    /// CPUs shadow worker threads are kept on; `None` = wherever the process may run.
    pub shadow_cpus: Option<CpuSet>,
    /// Where disagreements go; `None` turns the log off.
    pub disagreement_log: Option<LogConfig>,
    /// The decision journal; `None` (the default) turns it off.
    pub journal: Option<JournalConfig>,
    /// The labelling queue (`[labelling]`); `None` turns it off.
    pub labelling: Option<LabellingConfig>,
    /// Model name -> how to load and run it.
    pub models: BTreeMap<String, ModelConfig>,
    /// Named decision policies (`[policies.NAME]`), for live models and policy-only shadows.
    pub policies: BTreeMap<String, PolicySpec>,
    /// In file order (sorted by name): the order of results when a request names no tasks.
    pub tasks: Vec<TaskConfig>,
    /// Moderator verdicts (`modserve.v1.Feedback`).
    pub feedback: FeedbackConfig,
    pub monitoring: MonitoringConfig,
    /// What a shadow must show to be promoted (`modserve report` and `modserve eval`).
    pub launch: LaunchCriteria,
}

/// Input monitoring (the `[monitoring]` table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonitoringConfig {
    /// Language tags (primary subtag, lowercase) counted by name; any other counts as "other".
    pub languages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// The HTTP/JSON API's own listener (`serving::http`); `None` = no HTTP/JSON API.
    pub http_listen: Option<SocketAddr>,
    #[serde(with = "humantime_serde_str")]
    pub shutdown_grace: Duration,
    /// How long to keep answering (NOT_SERVING / UNAVAILABLE) before closing connections.
    #[serde(with = "humantime_serde_str")]
    pub drain_delay: Duration,
    pub max_concurrent_streams: u32,
    #[serde(with = "humantime_serde_str")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde_str")]
    pub keepalive_timeout: Duration,
    /// A connection with no call open for this long is closed (GOAWAY); zero keeps it forever.
    #[serde(with = "humantime_serde_str")]
    pub idle_timeout: Duration,
    /// A connection that has not sent the HTTP/2 preface (and, with TLS, finished its handshake)
    /// this long after it was accepted is closed.
    #[serde(with = "humantime_serde_str")]
    pub handshake_timeout: Duration,
    /// A connection whose answer has waited this long for its client to take it (HTTP/2 flow
    /// control) is closed.
    #[serde(with = "humantime_serde_str")]
    pub send_timeout: Duration,
    /// Open connections per listener, and per peer address, beyond which new ones are closed at
    /// once.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Classify calls worked on at once, over both APIs; more wait for a turn, given to one
    /// connection at a time (`serving::turns`).
    pub max_calls_in_progress: usize,
    /// Of those, the calls from busy connections together (with more than one call at a time;
    /// `serving::turns` says exactly), while light connections call beside them; at most
    /// `max_calls_in_progress`, which turns the hold off.
    pub max_busy_calls_in_progress: usize,
    /// Request bytes received but not yet decoded into a message, process-wide and per
    /// connection; a call whose message would go over is refused RESOURCE_EXHAUSTED before its
    /// body is read.
    pub max_buffered_request_bytes: usize,
    pub max_buffered_request_bytes_per_connection: usize,
    pub log_format: LogFormat,
    pub onnxruntime_lib: PathBuf,
    /// Reload when the config file's content changes (checked every `watch_interval`).
    pub watch_config: bool,
    #[serde(with = "humantime_serde_str")]
    pub watch_interval: Duration,
    /// Where the Moderation service's bearer token comes from; `None` = no token required.
    pub moderation_token: Option<TokenSource>,
}

/// Where a bearer token is read from. The token itself is never part of the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// An environment variable's name.
    Env(String),
    /// A file holding the token (surrounding whitespace ignored).
    File(PathBuf),
}

impl TokenSource {
    /// Reads the token; an empty one is an error (it would let anyone in).
    pub fn read(&self) -> Result<String, String> {
        let token = match self {
            TokenSource::Env(name) => {
                std::env::var(name).map_err(|_| format!("environment variable {name} is not set"))?
            }
            TokenSource::File(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
        };
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(format!("the token from {self:?} is empty"));
        }
        Ok(token)
    }
}

/// The Admin service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdminConfig {
    /// Its own listen address; `None` serves it on `server.grpc_listen`.
    pub listen: Option<SocketAddr>,
    pub token: Option<TokenSource>,
    /// Serve Admin without a token even though Moderation requires one (an explicit opt-out).
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_reviews_per_request: usize,
    pub max_text_bytes: usize,
    pub oversize_text: OversizeText,
    pub max_message_bytes: usize,
    /// Stream messages processed concurrently per ClassifyStream (answers stay in order).
    pub stream_in_flight: usize,
    /// The longest a call (or a stream message) may take, whatever deadline the caller sends;
    /// also the deadline of calls that send none.
    #[serde(with = "humantime_serde_str")]
    pub max_call_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reviews_per_request: defaults::MAX_REVIEWS_PER_REQUEST,
            max_text_bytes: defaults::MAX_TEXT_BYTES,
            oversize_text: OversizeText::Reject,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            stream_in_flight: defaults::STREAM_IN_FLIGHT,
            max_call_timeout: Duration::from_secs(defaults::MAX_CALL_TIMEOUT_SECS),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelConfig {
    pub name: String,
    pub path: PathBuf,
    pub workers: WorkerSettings,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskConfig {
    pub name: String,
    pub live: String,
    /// A `[policies]` name replacing the live model's manifest policy.
    pub policy: Option<String>,
    /// Surface name -> the `[policies]` name the live model decides with on it
    /// (`[tasks.NAME.surfaces]`); empty when every surface decides alike.
    pub surfaces: BTreeMap<String, String>,
    /// What a request naming a surface not in `surfaces` gets.
    pub unknown_surface: UnknownSurface,
    pub shadows: Vec<ShadowConfig>,
}

/// Most surfaces one task may list: each multiplies the decision, comparison and verdict
/// series of the task.
pub const MAX_SURFACES: usize = 16;

/// What a request naming a surface its task does not list gets (`tasks.NAME.unknown_surface`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSurface {
    /// INVALID_ARGUMENT naming `surface`: a typo never silently gets the default thresholds.
    #[default]
    Reject,
    /// The task's default policy, counted as the default surface's (and in
    /// `modserve_surface_fallbacks_total`).
    Default,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowConfig {
    pub model: String,
    /// A `[policies]` name replacing the shadow model's manifest policy. With the live model as
    /// `model`, the shadow is policy-only: it decides from the live scores and runs no inference.
    pub policy: Option<String>,
    /// Share of reviews (0..=1) the shadow sees, chosen by a hash of the review id.
    pub sample_rate: f64,
    /// Salt for that hash; defaults to the model name, so each shadow samples differently.
    pub salt: String,
    /// The task's surfaces this shadow is offered (and judged by verdicts) on; `None` = all
    /// traffic, the default surface included.
    pub surfaces: Option<Vec<String>>,
}

impl Config {
    /// Reads `path`, applies `overrides` and validates. On failure returns every problem found,
    /// each naming its key.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{}: cannot read: {e}", path.display())])?;
        Config::parse(&text, path, overrides)
    }

    /// Parses config text as if read from `path` (relative paths resolve against its folder).
    pub fn parse(text: &str, path: &Path, overrides: &Overrides) -> Result<Config, Vec<String>> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| vec![format!("{}: {}", path.display(), toml_error(text, &e))])?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        validate(raw, text, &base, path, overrides)
    }

    /// This config for an offline run (`modserve eval`, `modserve tune`), where scoring the
    /// shadows is the work itself, not a guest of live traffic: no shadow CPU budget, no
    /// reserve, and shadow threads scheduled as live ones are. Under the serving limits an eval
    /// on a busy machine waited for idle CPUs that never came (the reserve) and ran a heavy
    /// candidate on a twentieth of the CPUs (the budget).
    pub fn offline(mut self) -> Config {
        self.shadow.max_cpu_fraction = 1.0;
        self.shadow.max_cpu_fraction_on_one_cpu = 1.0;
        self.shadow.cpu_reserve = 0.0;
        self.shadow_scheduling = ThreadScheduling::Nice;
        self.shadow_nice = 0;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Vec<String>> {
        Config::parse(text, Path::new("/etc/modserve/modserve.toml"), &Overrides::default())
    }

    const GOOD: &str = r#"
[models.abuse-v1]
path = "models/abuse-v1"
[models.abuse-v1.batching]
max_batch_size = 8
[tasks.abuse]
live = "abuse-v1"
"#;

    #[test]
    fn minimal_config_gets_defaults_and_resolves_paths() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.grpc_listen, defaults::GRPC_LISTEN.parse().unwrap());
        assert_eq!(c.models["abuse-v1"].path, Path::new("/etc/modserve/models/abuse-v1"));
        assert_eq!(c.server.onnxruntime_lib, Path::new("/etc/modserve").join(defaults::ONNXRUNTIME_LIB));
        assert_eq!(c.models["abuse-v1"].workers.batch.max_batch_size, 8);
        assert_eq!(c.models["abuse-v1"].workers.queue_capacity, defaults::QUEUE_CAPACITY);
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn the_shadow_cpu_budget_and_reserve_have_defaults_and_out_of_range_is_refused_naming_them() {
        let good = parse(GOOD).unwrap();
        assert_eq!(good.shadow.max_cpu_fraction, defaults::SHADOW_MAX_CPU_FRACTION);
        assert_eq!(good.shadow.cpu_reserve, defaults::SHADOW_CPU_RESERVE);
        for bad in ["0", "1.5", "-0.1"] {
            let errors = parse(&format!("[shadow]\nmax_cpu_fraction = {bad}\n{GOOD}")).unwrap_err();
            let want = format!("shadow.max_cpu_fraction {bad}: must be within (0, 1]");
            assert!(errors.iter().any(|e| e.starts_with(&want)), "{errors:?}");
        }
        let zero = parse(&format!("[shadow]\nmax_cpu_fraction = 0.2\ncpu_reserve = 0\n{GOOD}")).unwrap();
        assert_eq!(zero.shadow.cpu_reserve, 0.0);
        assert_eq!(zero.shadow.max_cpu_fraction_on_one_cpu, defaults::SHADOW_MAX_CPU_FRACTION_ON_ONE_CPU);
        for bad in ["0", "1.5", "-0.1"] {
            let errors = parse(&format!("[shadow]\nmax_cpu_fraction_on_one_cpu = {bad}\n{GOOD}")).unwrap_err();
            let want = format!("shadow.max_cpu_fraction_on_one_cpu {bad}: must be within (0, 1]");
            assert!(errors.iter().any(|e| e.starts_with(&want)), "{errors:?}");
        }
        for bad in ["1", "1.5", "-0.1"] {
            let errors = parse(&format!("[shadow]\ncpu_reserve = {bad}\n{GOOD}")).unwrap_err();
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("shadow.cpu_reserve {bad}: must be within [0, 1)"))),
                "{errors:?}"
            );
        }
    }

    #[test]
    fn the_busy_calls_bound_defaults_to_eight_and_zero_is_refused_naming_it() {
        assert_eq!(parse(GOOD).unwrap().server.max_busy_calls_in_progress, defaults::MAX_BUSY_CALLS_IN_PROGRESS);
        let errors = parse(&format!("[server]\nmax_busy_calls_in_progress = 0\n{GOOD}")).unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with("server.max_busy_calls_in_progress 0: must be 1..=100000")),
            "{errors:?}"
        );
    }

    #[test]
    fn overrides_beat_the_file() {
        let text = format!("[server]\ngrpc_listen = \"0.0.0.0:1\"\n{GOOD}");
        let o = Overrides { grpc_listen: Some("127.0.0.1:7".into()), ..Overrides::default() };
        let c = Config::parse(&text, Path::new("x.toml"), &o).unwrap();
        assert_eq!(c.server.grpc_listen.port(), 7);
    }

    #[test]
    fn the_http_api_is_off_unless_an_address_is_given() {
        assert_eq!(parse(GOOD).unwrap().server.http_listen, None);
        let text = format!("[server]\nhttp_listen = \"127.0.0.1:8080\"\n{GOOD}");
        assert_eq!(parse(&text).unwrap().server.http_listen.map(|a| a.port()), Some(8080));
        let o = Overrides { http_listen: Some("127.0.0.1:9".into()), ..Overrides::default() };
        assert_eq!(
            Config::parse(&text, Path::new("x.toml"), &o).unwrap().server.http_listen.map(|a| a.port()),
            Some(9)
        );
        let errors = parse(&format!("[server]\nhttp_listen = \"anywhere\"\n{GOOD}")).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("server.http_listen \"anywhere\"")), "{errors:?}");
    }

    #[test]
    fn every_error_is_reported_with_its_key() {
        let text = r#"
[server]
grpc_listen = "nowhere"
shutdown_grace = "soon"
[limits]
max_reviews_per_request = 0
[batching]
queue_capacity = 0
[models.abuse-v1]
path = "m"
[tasks.abuse]
live = "abuse-v9"
"#;
        let errors = parse(text).unwrap_err();
        for key in [
            "server.grpc_listen",
            "server.shutdown_grace",
            "limits.max_reviews_per_request",
            "batching.queue_capacity",
            "tasks.abuse.live",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(key)), "no error for {key}: {errors:?}");
        }
    }

    #[test]
    fn labelling_is_off_by_default_and_validated_with_its_keys() {
        assert_eq!(parse(GOOD).unwrap().labelling, None);
        let c = parse(&format!("{GOOD}\n[labelling]\npath = \"queue/labelling.jsonl\"\n")).unwrap();
        let l = c.labelling.unwrap();
        assert_eq!(l.path, Path::new("/etc/modserve/queue/labelling.jsonl"));
        assert_eq!((l.disagreement_rate, l.agreement_rate), (1.0, 0.01));
        assert_eq!((l.include_text, l.max_files), (false, defaults::LOG_MAX_FILES));
        let bad = "[labelling]\npath = \"q.jsonl\"\ndisagreement_rate = 0.0\nagreement_rate = 1.5\n\
                   max_file_bytes = 100\nmax_files = 0\nqueue_capacity = 0\n";
        let errors = parse(&format!("{GOOD}\n{bad}")).unwrap_err();
        for want in [
            "labelling.disagreement_rate 0: must be above 0 and at most 1",
            "labelling.agreement_rate 1.5: must be above 0 and at most 1",
            "labelling.max_file_bytes 100",
            "labelling.max_files 0",
            "labelling.queue_capacity 0",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(want)), "no {want:?} in {errors:?}");
        }
        let nan = parse(&format!("{GOOD}\n[labelling]\npath = \"q\"\nagreement_rate = nan\n")).unwrap_err();
        assert!(nan.iter().any(|e| e.starts_with("labelling.agreement_rate NaN")), "{nan:?}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let errors = parse(&format!("{GOOD}\n[limits]\nmax_reviews = 3\n")).unwrap_err();
        assert!(errors[0].contains("max_reviews"), "{errors:?}");
    }

    #[test]
    fn policies_and_their_uses_are_validated_with_their_keys() {
        let text = r#"
[models.abuse-v1]
path = "m"
[policies.strict]
version = ""
[policies.strict.thresholds.insult]
review = 0.9
reject = 0.5
[policies.Bad_Name]
version = "1"
[tasks.abuse]
live = "abuse-v1"
policy = "nope"
shadows = [
  { model = "abuse-v1", sample_rate = 1.0 },
  { model = "abuse-v1", policy = "strict", sample_rate = 1.0 },
  { model = "abuse-v1", policy = "strict", sample_rate = 0.5 },
]
[feedback]
sources = ["other"]
queue_capacity = 0
[monitoring]
languages = ["english!"]
"#;
        let errors = parse(text).unwrap_err();
        for key in [
            "policies.strict.version",
            "policies.strict.thresholds.insult: review 0.9 must not exceed reject 0.5",
            "policies.Bad_Name: policy names",
            "policies.Bad_Name.thresholds",
            "tasks.abuse.policy: no policy named \"nope\"",
            "tasks.abuse.shadows[0].model: \"abuse-v1\" is already the live model",
            "tasks.abuse.shadows[2]: model \"abuse-v1\" with policy Some(\"strict\") is listed twice",
            "feedback.sources[0] \"other\"",
            "feedback.queue_capacity 0",
            "monitoring.languages[0]",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(key)), "no error for {key}: {errors:#?}");
        }
    }

    #[test]
    fn a_policy_only_shadow_gets_its_own_salt() {
        let text = format!(
            "{GOOD}policy = \"strict\"\nshadows = [{{ model = \"abuse-v1\", policy = \"lenient\", sample_rate = 0.5 }}]\n\
             [policies.strict]\nversion = \"1\"\n[policies.strict.thresholds.insult]\nreject = 0.9\n\
             [policies.lenient]\nversion = \"1\"\n[policies.lenient.thresholds.insult]\nreject = 0.99\n"
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.tasks[0].policy.as_deref(), Some("strict"));
        assert_eq!(c.tasks[0].shadows[0].salt, "abuse-v1+lenient");
        assert_eq!(c.policies["lenient"].thresholds["insult"].reject, Some(0.99));
        assert_eq!(c.feedback.dedupe_window, Duration::from_secs(24 * 3600));
        assert_eq!(c.launch, LaunchCriteria::default());
    }

    const SURFACES: &str = r#"
[models.abuse-v1]
path = "m"
[policies.strict]
version = "1"
[policies.strict.thresholds.insult]
reject = 0.5
[policies.stricter]
version = "1"
[policies.stricter.thresholds.insult]
reject = 0.4
[tasks.abuse]
live = "abuse-v1"
shadows = [{ model = "abuse-v1", policy = "stricter", sample_rate = 1.0, surfaces = ["kids"] }]
[tasks.abuse.surfaces]
kids = "strict"
forum = "strict"
"#;

    #[test]
    fn surfaces_map_to_policies_and_shadows_may_keep_to_some() {
        let c = parse(SURFACES).unwrap();
        let task = &c.tasks[0];
        assert_eq!(task.surfaces["kids"], "strict");
        assert_eq!(task.surfaces.len(), 2);
        assert_eq!(task.unknown_surface, UnknownSurface::Reject);
        assert_eq!(task.shadows[0].surfaces.as_deref(), Some(&["kids".to_string()][..]));
        let fallback =
            SURFACES.replace("live = \"abuse-v1\"\n", "live = \"abuse-v1\"\nunknown_surface = \"default\"\n");
        assert_eq!(parse(&fallback).unwrap().tasks[0].unknown_surface, UnknownSurface::Default);
        // The live policy of the default surface, tried on one surface only, is a real change.
        let default_policy = SURFACES.replace("live = \"abuse-v1\"\n", "live = \"abuse-v1\"\npolicy = \"stricter\"\n");
        assert!(parse(&default_policy).is_ok());
    }

    #[test]
    fn surface_errors_name_their_key() {
        let text = SURFACES
            .replace(
                "surfaces = [\"kids\"] }]",
                "surfaces = [\"kids\", \"nope\", \"kids\"] },\n  { model = \"abuse-v1\", policy = \"strict\", sample_rate = 1.0, surfaces = [] }]",
            )
            .replace("kids = \"strict\"", "kids = \"stricter\"\n\"\" = \"strict\"\nForum = \"missing\"")
            + "[tasks.other]\nlive = \"abuse-v1\"\nunknown_surface = \"default\"\n";
        let errors = parse(&text).unwrap_err();
        for key in [
            "tasks.abuse.surfaces.\"\": surface names use",
            "tasks.abuse.surfaces.\"Forum\": surface names use",
            "tasks.abuse.surfaces.Forum: no policy named \"missing\"",
            "tasks.abuse.shadows[0].surfaces[0]: Some(\"stricter\") is already the live policy on surface \"kids\"",
            "tasks.abuse.shadows[0].surfaces[1]: \"nope\" is not a surface of this task",
            "tasks.abuse.shadows[0].surfaces[2]: \"kids\" is listed twice",
            "tasks.abuse.shadows[1].surfaces: empty",
            "tasks.other.unknown_surface: the task lists no surfaces",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(key)), "no error for {key}: {errors:#?}");
        }
        let many: String = (0..=MAX_SURFACES).map(|i| format!("s{i} = \"strict\"\n")).collect();
        let errors = parse(&format!("{SURFACES}{many}")).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("tasks.abuse.surfaces: 19 surfaces; at most 16")), "{errors:#?}");
    }

    #[test]
    fn admin_must_be_guarded_when_moderation_is_or_opened_explicitly() {
        let guarded = format!("[server]\nmoderation_token_env = \"MODERATION_TOKEN\"\n{GOOD}");
        let errors = parse(&guarded).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("admin.allow_unauthenticated")), "{errors:?}");
        let open = format!("{guarded}[admin]\nallow_unauthenticated = true\n");
        assert!(parse(&open).unwrap().admin.allow_unauthenticated);
        let with_token = format!("{guarded}[admin]\ntoken_env = \"ADMIN_TOKEN\"\n");
        assert!(parse(&with_token).is_ok());
    }

    #[test]
    fn upload_budgets_must_hold_the_largest_message() {
        let text = format!(
            "[server]\nmax_buffered_request_bytes_per_connection = 1000\nmax_buffered_request_bytes = 500\n{GOOD}"
        );
        let errors = parse(&text).unwrap_err();
        assert!(errors.iter().any(|e| e.contains("at least limits.max_message_bytes")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("server.max_buffered_request_bytes 500")), "{errors:?}");
        let text = format!(
            "[server]\nmax_connections = 4\nmax_connections_per_peer = 5\nhandshake_timeout = \"1ms\"\nsend_timeout = \"10ms\"\n{GOOD}"
        );
        let errors = parse(&text).unwrap_err();
        assert!(errors.iter().any(|e| e.starts_with("server.max_connections_per_peer 5")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("server.handshake_timeout")), "{errors:?}");
        assert!(errors.iter().any(|e| e.starts_with("server.send_timeout 10ms: must be at least 100ms")), "{errors:?}");
    }

    #[test]
    fn the_journal_is_off_by_default_and_its_keys_are_validated() {
        assert_eq!(parse(GOOD).unwrap().journal, None);
        let on = parse(&format!("{GOOD}[journal]\npath = \"j/decisions.jsonl\"\n")).unwrap().journal.unwrap();
        assert_eq!(on.path, Path::new("/etc/modserve/j/decisions.jsonl"));
        assert!(!on.include_text && on.include_shadows);
        assert_eq!(on.max_file_age, Duration::from_secs(3600));
        assert_eq!(on.retention, Duration::ZERO);
        let text = format!(
            "{GOOD}[journal]\npath = \"\"\nmax_file_bytes = 10\nmax_file_age = \"10ms\"\nretention = \"soon\"\n\
             max_files = 0\nqueue_capacity = 0\nindex_capacity = 20000000\n"
        );
        let errors = parse(&text).unwrap_err();
        for key in [
            "journal.path",
            "journal.max_file_bytes 10",
            "journal.max_file_age",
            "journal.retention \"soon\"",
            "journal.max_files 0",
            "journal.queue_capacity 0",
            "journal.index_capacity 20000000",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(key)), "no error for {key}: {errors:#?}");
        }
        let errors = parse(&format!("{GOOD}[journal]\npath = \"j\"\nindex_max_age = \"0s\"\n")).unwrap_err();
        assert!(errors[0].starts_with("journal.index_max_age"), "{errors:?}");
        let errors = parse(&format!("{GOOD}[journal]\npath = \"j\"\nrotate = true\n")).unwrap_err();
        assert!(errors[0].contains("rotate"), "{errors:?}");
    }

    #[test]
    fn no_tasks_is_an_error() {
        let errors = parse("").unwrap_err();
        assert!(errors[0].starts_with("tasks"), "{errors:?}");
    }
}
