//! Configuration: the command line (clap, every flag also an environment variable) and the TOML
//! file, validated as a whole into a typed `Config`. Every key is documented in
//! `docs/configuration.md`; defaults live in `defaults` below and nowhere else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::batch::BatchPolicy;
use crate::breaker::BreakerPolicy;
use crate::disagreement::LogConfig;
use crate::model::manifest::{is_valid_name, toml_error};
use crate::shadow::ShadowPolicy;
use crate::worker::WorkerSettings;

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
    pub const MAX_BATCH_SIZE: usize = 32;
    pub const MAX_WAIT: &str = "0ms";
    pub const QUEUE_CAPACITY: usize = 256;
    pub const INFERENCE_THREADS: usize = 1;
    pub const INTRA_OP_THREADS: usize = 1;
    pub const SHADOW_MAX_DELAY: &str = "2s";
    pub const SHADOW_LIVE_PRESSURE_JOBS: usize = 4;
    pub const SHADOW_NICE: i32 = 10;
    pub const BREAKER_WINDOW: usize = 20;
    pub const BREAKER_MIN_BATCHES: usize = 10;
    pub const BREAKER_MAX_FAILURE_RATIO: f64 = 0.5;
    pub const BREAKER_LATENCY_BUDGET: &str = "1s";
    pub const BREAKER_COOLDOWN: &str = "30s";
    pub const LOG_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
    pub const LOG_MAX_FILES: usize = 5;
    pub const LOG_QUEUE_CAPACITY: usize = 4096;
}

#[derive(Debug, Parser)]
#[command(name = "modserve", version, about = "Content-moderation inference server with shadow mode")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub overrides: Overrides,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (what `modserve` with no subcommand does).
    Serve,
    /// Validate a config file and load every model it names; print every error and exit
    /// non-zero if there is any.
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
    },
}

/// Settings that override the config file; each is also read from the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Config file (TOML). Relative paths inside it are relative to its folder.
    #[arg(long, env = "MODSERVE_CONFIG", default_value = defaults::CONFIG_FILE, global = true)]
    pub config: PathBuf,
    /// gRPC listen address, overriding `server.grpc_listen`.
    #[arg(long, env = "MODSERVE_GRPC_LISTEN", global = true)]
    pub grpc_listen: Option<String>,
    /// Prometheus /metrics listen address, overriding `server.metrics_listen`.
    #[arg(long, env = "MODSERVE_METRICS_LISTEN", global = true)]
    pub metrics_listen: Option<String>,
    /// Log format, overriding `server.log_format`.
    #[arg(long, env = "MODSERVE_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
    /// ONNX Runtime shared library, overriding `server.onnxruntime_lib` (relative to the
    /// current directory).
    #[arg(long, env = "MODSERVE_ONNXRUNTIME_LIB", global = true)]
    pub onnxruntime_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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

// === the file, as written ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    admin: RawAdmin,
    limits: RawLimits,
    batching: RawBatching,
    shadow: RawShadowPolicy,
    models: BTreeMap<String, RawModel>,
    tasks: BTreeMap<String, RawTask>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    watch_config: Option<bool>,
    watch_interval: Option<String>,
    moderation_token_env: Option<String>,
    moderation_token_file: Option<PathBuf>,
    grpc_listen: Option<String>,
    metrics_listen: Option<String>,
    shutdown_grace: Option<String>,
    drain_delay: Option<String>,
    max_concurrent_streams: Option<u32>,
    keepalive_interval: Option<String>,
    keepalive_timeout: Option<String>,
    log_format: Option<LogFormat>,
    onnxruntime_lib: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: Option<String>,
    token_env: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_reviews_per_request: Option<usize>,
    max_text_bytes: Option<usize>,
    oversize_text: Option<OversizeText>,
    max_message_bytes: Option<usize>,
    stream_in_flight: Option<usize>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBatching {
    max_batch_size: Option<usize>,
    max_wait: Option<String>,
    queue_capacity: Option<usize>,
    inference_threads: Option<usize>,
    intra_op_threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    path: PathBuf,
    #[serde(default)]
    batching: RawBatching,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    live: String,
    #[serde(default)]
    shadows: Vec<RawShadow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShadow {
    model: String,
    sample_rate: f64,
    salt: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawShadowPolicy {
    max_delay: Option<String>,
    live_pressure_jobs: Option<usize>,
    nice: Option<i32>,
    breaker_window: Option<usize>,
    breaker_min_batches: Option<usize>,
    breaker_max_failure_ratio: Option<f64>,
    breaker_latency_budget: Option<String>,
    breaker_cooldown: Option<String>,
    disagreement_log: Option<RawLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    path: PathBuf,
    sample_rate: Option<f64>,
    include_text: Option<bool>,
    max_file_bytes: Option<u64>,
    max_files: Option<usize>,
    queue_capacity: Option<usize>,
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
    pub limits: Limits,
    pub shadow: ShadowPolicy,
    /// Niceness of shadow worker threads.
    pub shadow_nice: i32,
    /// Where disagreements go; `None` turns the log off.
    pub disagreement_log: Option<LogConfig>,
    /// Model name -> how to load and run it.
    pub models: BTreeMap<String, ModelConfig>,
    /// In file order (sorted by name): the order of results when a request names no tasks.
    pub tasks: Vec<TaskConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerConfig {
    pub grpc_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    pub max_reviews_per_request: usize,
    pub max_text_bytes: usize,
    pub oversize_text: OversizeText,
    pub max_message_bytes: usize,
    /// Stream messages processed concurrently per ClassifyStream (answers stay in order).
    pub stream_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_reviews_per_request: defaults::MAX_REVIEWS_PER_REQUEST,
            max_text_bytes: defaults::MAX_TEXT_BYTES,
            oversize_text: OversizeText::Reject,
            max_message_bytes: defaults::MAX_MESSAGE_BYTES,
            stream_in_flight: defaults::STREAM_IN_FLIGHT,
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
    pub shadows: Vec<ShadowConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowConfig {
    pub model: String,
    /// Share of reviews (0..=1) the shadow sees, chosen by a hash of the review id.
    pub sample_rate: f64,
    /// Salt for that hash; defaults to the model name, so each shadow samples differently.
    pub salt: String,
}

impl ServerConfig {
    pub fn transport(&self) -> crate::grpc::transport::TransportSettings {
        crate::grpc::transport::TransportSettings {
            max_concurrent_streams: self.max_concurrent_streams,
            keepalive_interval: self.keepalive_interval,
            keepalive_timeout: self.keepalive_timeout,
            shutdown_grace: self.shutdown_grace,
        }
    }
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
}

fn validate(
    raw: RawConfig,
    text: &str,
    base: &Path,
    path: &Path,
    overrides: &Overrides,
) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let addr = |errors: &mut Vec<String>, key: &str, value: Option<&String>, default: &str| {
        let value = value.map(String::as_str).unwrap_or(default);
        value.parse::<SocketAddr>().unwrap_or_else(|_| {
            errors.push(format!("{key} {value:?}: not an address like 127.0.0.1:50051"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let grpc_listen = addr(
        &mut errors,
        "server.grpc_listen",
        overrides.grpc_listen.as_ref().or(raw.server.grpc_listen.as_ref()),
        defaults::GRPC_LISTEN,
    );
    let metrics_listen = addr(
        &mut errors,
        "server.metrics_listen",
        overrides.metrics_listen.as_ref().or(raw.server.metrics_listen.as_ref()),
        defaults::METRICS_LISTEN,
    );
    let shutdown_grace = duration(
        &mut errors,
        "server.shutdown_grace",
        raw.server.shutdown_grace.as_deref().unwrap_or(defaults::SHUTDOWN_GRACE),
    );
    let onnxruntime_lib = match &overrides.onnxruntime_lib {
        Some(p) => p.clone(),
        None => base.join(raw.server.onnxruntime_lib.as_deref().unwrap_or(Path::new(defaults::ONNXRUNTIME_LIB))),
    };
    let drain_delay =
        duration(&mut errors, "server.drain_delay", raw.server.drain_delay.as_deref().unwrap_or(defaults::DRAIN_DELAY));
    let max_concurrent_streams = raw.server.max_concurrent_streams.unwrap_or(defaults::MAX_CONCURRENT_STREAMS);
    if !(1..=100_000).contains(&max_concurrent_streams) {
        errors.push(format!("server.max_concurrent_streams {max_concurrent_streams}: must be 1..=100000"));
    }
    let keepalive_interval = duration(
        &mut errors,
        "server.keepalive_interval",
        raw.server.keepalive_interval.as_deref().unwrap_or(defaults::KEEPALIVE_INTERVAL),
    );
    let keepalive_timeout = duration(
        &mut errors,
        "server.keepalive_timeout",
        raw.server.keepalive_timeout.as_deref().unwrap_or(defaults::KEEPALIVE_TIMEOUT),
    );
    for (key, d) in [("server.keepalive_interval", keepalive_interval), ("server.keepalive_timeout", keepalive_timeout)]
    {
        if d < Duration::from_secs(1) {
            errors.push(format!("{key} {d:?}: must be at least 1s"));
        }
    }
    let server = ServerConfig {
        grpc_listen,
        metrics_listen,
        shutdown_grace,
        drain_delay,
        max_concurrent_streams,
        keepalive_interval,
        keepalive_timeout,
        log_format: overrides.log_format.or(raw.server.log_format).unwrap_or(LogFormat::Text),
        onnxruntime_lib,
        watch_config: raw.server.watch_config.unwrap_or(true),
        watch_interval: duration(
            &mut errors,
            "server.watch_interval",
            raw.server.watch_interval.as_deref().unwrap_or(defaults::WATCH_INTERVAL),
        ),
        moderation_token: token_source(
            &mut errors,
            "server.moderation_token",
            &raw.server.moderation_token_env,
            &raw.server.moderation_token_file,
            base,
        ),
    };
    if server.watch_interval < Duration::from_millis(100) {
        errors.push(format!("server.watch_interval {:?}: must be at least 100ms", server.watch_interval));
    }
    let admin = AdminConfig {
        listen: raw.admin.listen.as_ref().map(|a| addr(&mut errors, "admin.listen", Some(a), "")),
        token: token_source(&mut errors, "admin.token", &raw.admin.token_env, &raw.admin.token_file, base),
    };

    let d = Limits::default();
    let limits = Limits {
        max_reviews_per_request: raw.limits.max_reviews_per_request.unwrap_or(d.max_reviews_per_request),
        max_text_bytes: raw.limits.max_text_bytes.unwrap_or(d.max_text_bytes),
        oversize_text: raw.limits.oversize_text.unwrap_or(d.oversize_text),
        max_message_bytes: raw.limits.max_message_bytes.unwrap_or(d.max_message_bytes),
        stream_in_flight: raw.limits.stream_in_flight.unwrap_or(d.stream_in_flight),
    };
    for (key, v, max) in [
        ("limits.max_reviews_per_request", limits.max_reviews_per_request, 10_000),
        ("limits.max_text_bytes", limits.max_text_bytes, 1 << 20),
        ("limits.max_message_bytes", limits.max_message_bytes, 64 << 20),
        ("limits.stream_in_flight", limits.stream_in_flight, 1024),
    ] {
        if v == 0 || v > max {
            errors.push(format!("{key} {v}: must be 1..={max}"));
        }
    }
    if limits.max_text_bytes > limits.max_message_bytes {
        errors.push(format!(
            "limits.max_text_bytes {} exceeds limits.max_message_bytes {}: no request could carry such a text",
            limits.max_text_bytes, limits.max_message_bytes
        ));
    }

    let global = batching(&mut errors, "batching", &raw.batching, None);
    let mut models = BTreeMap::new();
    for (name, m) in &raw.models {
        if !is_valid_name(name) {
            errors.push(format!("models.{name}: model names use 1-64 of [a-z0-9._-]"));
        }
        let workers = batching(&mut errors, &format!("models.{name}.batching"), &m.batching, Some(global));
        models.insert(name.clone(), ModelConfig { name: name.clone(), path: base.join(&m.path), workers });
    }

    if raw.tasks.is_empty() {
        errors.push("tasks: at least one task is required, e.g. [tasks.abuse] live = \"abuse-v1\"".into());
    }
    let mut tasks = Vec::new();
    for (name, t) in &raw.tasks {
        if !is_valid_name(name) {
            errors.push(format!("tasks.{name}: task names use 1-64 of [a-z0-9._-]"));
        }
        if !models.contains_key(&t.live) {
            errors.push(format!(
                "tasks.{name}.live: no model named {:?} under [models] (configured: {:?})",
                t.live,
                models.keys().collect::<Vec<_>>()
            ));
        }
        let mut shadows = Vec::new();
        for (i, sh) in t.shadows.iter().enumerate() {
            let key = format!("tasks.{name}.shadows[{i}]");
            if !models.contains_key(&sh.model) {
                errors.push(format!("{key}.model: no model named {:?} under [models]", sh.model));
            }
            if sh.model == t.live {
                errors.push(format!("{key}.model: {:?} is already the live model of this task", sh.model));
            }
            if t.shadows[..i].iter().any(|o| o.model == sh.model) {
                errors.push(format!("{key}.model: {:?} is listed twice", sh.model));
            }
            if !(0.0..=1.0).contains(&sh.sample_rate) {
                errors.push(format!("{key}.sample_rate {}: must be within 0..=1 (1 = every review)", sh.sample_rate));
            }
            shadows.push(ShadowConfig {
                model: sh.model.clone(),
                sample_rate: sh.sample_rate,
                salt: sh.salt.clone().unwrap_or_else(|| sh.model.clone()),
            });
        }
        tasks.push(TaskConfig { name: name.clone(), live: t.live.clone(), shadows });
    }
    for task in &tasks {
        for other in &tasks {
            if task.name != other.name && other.shadows.iter().any(|s| s.model == task.live) {
                errors.push(format!(
                    "tasks.{}: model {:?} cannot be live here and a shadow of task {}",
                    task.name, task.live, other.name
                ));
            }
        }
    }
    let shadow = shadow_policy(&mut errors, &raw.shadow);
    let disagreement_log = raw.shadow.disagreement_log.as_ref().map(|l| {
        let config = LogConfig {
            path: base.join(&l.path),
            sample_rate: l.sample_rate.unwrap_or(1.0),
            include_text: l.include_text.unwrap_or(false),
            max_file_bytes: l.max_file_bytes.unwrap_or(defaults::LOG_MAX_FILE_BYTES),
            max_files: l.max_files.unwrap_or(defaults::LOG_MAX_FILES),
            queue_capacity: l.queue_capacity.unwrap_or(defaults::LOG_QUEUE_CAPACITY),
        };
        if !(0.0..=1.0).contains(&config.sample_rate) {
            errors.push(format!("shadow.disagreement_log.sample_rate {}: must be within 0..=1", config.sample_rate));
        }
        if config.max_file_bytes < 4096 {
            errors.push(format!(
                "shadow.disagreement_log.max_file_bytes {}: must be at least 4096",
                config.max_file_bytes
            ));
        }
        if !(1..=1000).contains(&config.max_files) {
            errors.push(format!("shadow.disagreement_log.max_files {}: must be 1..=1000", config.max_files));
        }
        if !(1..=1_000_000).contains(&config.queue_capacity) {
            errors
                .push(format!("shadow.disagreement_log.queue_capacity {}: must be 1..=1000000", config.queue_capacity));
        }
        config
    });
    let shadow_nice = raw.shadow.nice.unwrap_or(defaults::SHADOW_NICE);
    if !(0..=19).contains(&shadow_nice) {
        errors.push(format!("shadow.nice {shadow_nice}: must be 0..=19"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        source: path.to_path_buf(),
        source_sha256: crate::model::package::sha256_hex(text.as_bytes()),
        overrides: overrides.clone(),
        server,
        admin,
        limits,
        shadow,
        shadow_nice,
        disagreement_log,
        models,
        tasks,
    })
}

fn token_source(
    errors: &mut Vec<String>,
    key: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
    base: &Path,
) -> Option<TokenSource> {
    match (env, file) {
        (Some(_), Some(_)) => {
            errors.push(format!("{key}_env and {key}_file: set one of them, not both"));
            None
        }
        (Some(name), None) if name.is_empty() => {
            errors.push(format!("{key}_env: must name an environment variable"));
            None
        }
        (Some(name), None) => Some(TokenSource::Env(name.clone())),
        (None, Some(path)) => Some(TokenSource::File(base.join(path))),
        (None, None) => None,
    }
}

fn shadow_policy(errors: &mut Vec<String>, raw: &RawShadowPolicy) -> ShadowPolicy {
    let text = |v: &Option<String>, default: &'static str| v.clone().unwrap_or_else(|| default.to_string());
    let max_delay = duration(errors, "shadow.max_delay", &text(&raw.max_delay, defaults::SHADOW_MAX_DELAY));
    let latency_budget = duration(
        errors,
        "shadow.breaker_latency_budget",
        &text(&raw.breaker_latency_budget, defaults::BREAKER_LATENCY_BUDGET),
    );
    let cooldown =
        duration(errors, "shadow.breaker_cooldown", &text(&raw.breaker_cooldown, defaults::BREAKER_COOLDOWN));
    let breaker = BreakerPolicy {
        window: raw.breaker_window.unwrap_or(defaults::BREAKER_WINDOW),
        min_batches: raw.breaker_min_batches.unwrap_or(defaults::BREAKER_MIN_BATCHES),
        max_failure_ratio: raw.breaker_max_failure_ratio.unwrap_or(defaults::BREAKER_MAX_FAILURE_RATIO),
        latency_budget,
        cooldown,
    };
    if !(1..=10_000).contains(&breaker.window) {
        errors.push(format!("shadow.breaker_window {}: must be 1..=10000", breaker.window));
    }
    if breaker.min_batches == 0 || breaker.min_batches > breaker.window {
        errors.push(format!(
            "shadow.breaker_min_batches {}: must be 1..=breaker_window ({})",
            breaker.min_batches, breaker.window
        ));
    }
    if !(breaker.max_failure_ratio > 0.0 && breaker.max_failure_ratio <= 1.0) {
        errors.push(format!("shadow.breaker_max_failure_ratio {}: must be within (0, 1]", breaker.max_failure_ratio));
    }
    let live_pressure_jobs = raw.live_pressure_jobs.unwrap_or(defaults::SHADOW_LIVE_PRESSURE_JOBS);
    if live_pressure_jobs == 0 {
        errors.push("shadow.live_pressure_jobs 0: must be at least 1".into());
    }
    ShadowPolicy { max_delay, live_pressure_jobs, breaker }
}

/// Resolves one `[batching]` table, falling back to `parent` (the global table) then defaults.
fn batching(errors: &mut Vec<String>, key: &str, raw: &RawBatching, parent: Option<WorkerSettings>) -> WorkerSettings {
    let max_wait = match (&raw.max_wait, parent) {
        (Some(s), _) => duration(errors, &format!("{key}.max_wait"), s),
        (None, Some(p)) => p.batch.max_wait,
        (None, None) => duration(errors, &format!("{key}.max_wait"), defaults::MAX_WAIT),
    };
    let pick = |v: Option<usize>, from_parent: fn(&WorkerSettings) -> usize, default: usize| {
        v.or(parent.as_ref().map(from_parent)).unwrap_or(default)
    };
    let settings = WorkerSettings {
        batch: BatchPolicy {
            max_batch_size: pick(raw.max_batch_size, |p| p.batch.max_batch_size, defaults::MAX_BATCH_SIZE),
            max_wait,
        },
        queue_capacity: pick(raw.queue_capacity, |p| p.queue_capacity, defaults::QUEUE_CAPACITY),
        threads: pick(raw.inference_threads, |p| p.threads, defaults::INFERENCE_THREADS),
        intra_threads: pick(raw.intra_op_threads, |p| p.intra_threads, defaults::INTRA_OP_THREADS),
        nice: 0,
    };
    for (name, v, max) in [
        ("max_batch_size", settings.batch.max_batch_size, 4096),
        ("queue_capacity", settings.queue_capacity, 1_000_000),
        ("inference_threads", settings.threads, 64),
        ("intra_op_threads", settings.intra_threads, 64),
    ] {
        if v == 0 || v > max {
            errors.push(format!("{key}.{name} {v}: must be 1..={max}"));
        }
    }
    if settings.batch.max_wait > Duration::from_secs(1) {
        errors.push(format!("{key}.max_wait {:?}: must be at most 1s", settings.batch.max_wait));
    }
    settings
}

fn duration(errors: &mut Vec<String>, key: &str, value: &str) -> Duration {
    humantime::parse_duration(value).unwrap_or_else(|e| {
        errors.push(format!("{key} {value:?}: not a duration like \"500us\", \"2ms\" or \"30s\" ({e})"));
        Duration::ZERO
    })
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
    fn overrides_beat_the_file() {
        let text = format!("[server]\ngrpc_listen = \"0.0.0.0:1\"\n{GOOD}");
        let o = Overrides { grpc_listen: Some("127.0.0.1:7".into()), ..Overrides::default() };
        let c = Config::parse(&text, Path::new("x.toml"), &o).unwrap();
        assert_eq!(c.server.grpc_listen.port(), 7);
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
    fn unknown_keys_are_rejected() {
        let errors = parse(&format!("{GOOD}\n[limits]\nmax_reviews = 3\n")).unwrap_err();
        assert!(errors[0].contains("max_reviews"), "{errors:?}");
    }

    #[test]
    fn no_tasks_is_an_error() {
        let errors = parse("").unwrap_err();
        assert!(errors[0].starts_with("tasks"), "{errors:?}");
    }
}
