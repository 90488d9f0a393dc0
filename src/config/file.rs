//! The config file as written: serde structs mirroring the TOML, with every key optional where
//! a default exists. `validate` turns them into the typed `Config`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::Thresholds;
use super::{LogFormat, OversizeText};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    pub(super) admin: RawAdmin,
    pub(super) limits: RawLimits,
    pub(super) tls: Option<RawTls>,
    pub(super) batching: RawBatching,
    pub(super) shadow: RawShadowPolicy,
    pub(super) models: BTreeMap<String, RawModel>,
    pub(super) policies: BTreeMap<String, RawPolicy>,
    pub(super) tasks: BTreeMap<String, RawTask>,
    pub(super) feedback: RawFeedback,
    pub(super) journal: Option<RawJournal>,
    pub(super) monitoring: RawMonitoring,
    pub(super) launch: super::RawLaunchCriteria,
    pub(super) labelling: Option<RawLabelling>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    pub(super) watch_config: Option<bool>,
    pub(super) watch_interval: Option<String>,
    pub(super) moderation_token_env: Option<String>,
    pub(super) moderation_token_file: Option<PathBuf>,
    pub(super) grpc_listen: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) http_listen: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) drain_delay: Option<String>,
    pub(super) max_concurrent_streams: Option<u32>,
    pub(super) keepalive_interval: Option<String>,
    pub(super) keepalive_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) handshake_timeout: Option<String>,
    pub(super) send_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_peer: Option<usize>,
    pub(super) max_calls_in_progress: Option<usize>,
    pub(super) max_busy_calls_in_progress: Option<usize>,
    pub(super) max_buffered_request_bytes: Option<usize>,
    pub(super) max_buffered_request_bytes_per_connection: Option<usize>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) onnxruntime_lib: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token_env: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) allow_unauthenticated: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) max_reviews_per_request: Option<usize>,
    pub(super) max_text_bytes: Option<usize>,
    pub(super) oversize_text: Option<OversizeText>,
    pub(super) max_message_bytes: Option<usize>,
    pub(super) stream_in_flight: Option<usize>,
    pub(super) max_call_timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBatching {
    pub(super) max_batch_size: Option<usize>,
    pub(super) max_wait: Option<String>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) inference_threads: Option<usize>,
    pub(super) intra_op_threads: Option<usize>,
    pub(super) long_job_nice: Option<i32>,
    pub(super) long_job_scheduling: Option<super::ThreadScheduling>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub(super) path: PathBuf,
    #[serde(default)]
    pub(super) batching: RawBatching,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTask {
    pub(super) live: String,
    pub(super) policy: Option<String>,
    #[serde(default)]
    pub(super) surfaces: BTreeMap<String, String>,
    pub(super) unknown_surface: Option<super::UnknownSurface>,
    #[serde(default)]
    pub(super) shadows: Vec<RawShadow>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShadow {
    pub(super) model: String,
    pub(super) policy: Option<String>,
    pub(super) sample_rate: f64,
    pub(super) salt: Option<String>,
    pub(super) surfaces: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) version: String,
    #[serde(default)]
    pub(super) thresholds: BTreeMap<String, Thresholds>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFeedback {
    pub(super) sources: Option<Vec<String>>,
    pub(super) max_verdicts_per_request: Option<usize>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) queue_max_bytes: Option<usize>,
    pub(super) batch_size: Option<usize>,
    pub(super) max_delay: Option<String>,
    pub(super) dedupe_window: Option<String>,
    pub(super) dedupe_capacity: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMonitoring {
    pub(super) languages: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawShadowPolicy {
    pub(super) max_delay: Option<String>,
    pub(super) live_pressure_jobs: Option<usize>,
    pub(super) nice: Option<i32>,
    pub(super) scheduling: Option<super::ThreadScheduling>,
    pub(super) cpus: Option<String>,
    pub(super) max_cpu_fraction: Option<f64>,
    pub(super) max_cpu_fraction_on_one_cpu: Option<f64>,
    pub(super) cpu_reserve: Option<f64>,
    pub(super) min_sample_rate: Option<f64>,
    pub(super) breaker_window: Option<usize>,
    pub(super) breaker_min_batches: Option<usize>,
    pub(super) breaker_max_failure_ratio: Option<f64>,
    pub(super) breaker_latency_budget: Option<String>,
    pub(super) breaker_cooldown: Option<String>,
    pub(super) disagreement_log: Option<RawLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) path: PathBuf,
    pub(super) sample_rate: Option<f64>,
    pub(super) include_text: Option<bool>,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) max_files: Option<usize>,
    pub(super) queue_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJournal {
    pub(super) path: PathBuf,
    pub(super) include_text: Option<bool>,
    pub(super) include_shadows: Option<bool>,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) max_file_age: Option<String>,
    pub(super) max_files: Option<usize>,
    pub(super) retention: Option<String>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) index_capacity: Option<usize>,
    pub(super) index_max_age: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLabelling {
    pub(super) path: PathBuf,
    pub(super) disagreement_rate: Option<f64>,
    pub(super) agreement_rate: Option<f64>,
    pub(super) include_text: Option<bool>,
    pub(super) max_file_bytes: Option<u64>,
    pub(super) max_files: Option<usize>,
    pub(super) queue_capacity: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert_file: PathBuf,
    pub(super) key_file: PathBuf,
    pub(super) client_ca_file: Option<PathBuf>,
    pub(super) watch_interval: Option<String>,
}
