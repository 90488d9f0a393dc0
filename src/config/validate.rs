//! Raw file + overrides -> typed `Config`, collecting every problem, each naming its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::file::{
    RawAdmin, RawBatching, RawConfig, RawJournal, RawLabelling, RawLimits, RawLog, RawMonitoring, RawPolicy, RawServer,
    RawShadow, RawShadowPolicy, RawTask, RawTls,
};
use super::*;

pub(super) fn validate(
    raw: RawConfig,
    text: &str,
    base: &Path,
    path: &Path,
    overrides: &Overrides,
) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();
    let server = server(&mut errors, &raw.server, base, overrides);
    let admin = admin(&mut errors, &raw.admin, base, overrides);
    guarded_together(&mut errors, &server, &admin);
    let limits = limits(&mut errors, &raw.limits);
    upload_fits(&mut errors, &server, &limits);
    let tls = raw.tls.as_ref().map(|t| tls(&mut errors, t, base));
    let models = models(&mut errors, &raw, base);
    let policies = policies(&mut errors, &raw.policies);
    let tasks = tasks(&mut errors, &raw.tasks, &models, &policies);
    let shadow = shadow_policy(&mut errors, &raw.shadow);
    let disagreement_log = raw.shadow.disagreement_log.as_ref().map(|l| disagreement_log(&mut errors, l, base));
    let (shadow_nice, shadow_scheduling, shadow_cpus) = shadow_threads(&mut errors, &raw.shadow);
    let feedback = feedback(&mut errors, &raw.feedback);
    let journal = raw.journal.as_ref().map(|j| journal(&mut errors, j, base));
    let launch = validate_criteria(&raw.launch, &mut errors);
    let monitoring = monitoring(&mut errors, &raw.monitoring);
    let labelling = raw.labelling.as_ref().map(|l| labelling(&mut errors, l, base));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        source: path.to_path_buf(),
        source_sha256: sha256_hex(text.as_bytes()),
        overrides: overrides.clone(),
        server,
        admin,
        tls,
        limits,
        shadow,
        shadow_nice,
        shadow_scheduling,
        shadow_cpus,
        disagreement_log,
        journal,
        labelling,
        models,
        policies,
        tasks,
        feedback,
        monitoring,
        launch,
    })
}

/// A listen address, or an error naming `key` (and a placeholder so validation goes on).
fn addr(errors: &mut Vec<String>, key: &str, value: Option<&String>, default: &str) -> SocketAddr {
    let value = value.map(String::as_str).unwrap_or(default);
    value.parse::<SocketAddr>().unwrap_or_else(|_| {
        errors.push(format!("{key} {value:?}: not an address like 127.0.0.1:50051"));
        SocketAddr::from(([127, 0, 0, 1], 0))
    })
}

/// `[server]`, with the command-line overrides.
fn server(errors: &mut Vec<String>, raw: &RawServer, base: &Path, overrides: &Overrides) -> ServerConfig {
    let timeouts = server_timeouts(errors, raw);
    let capacity = server_capacity(errors, raw);
    ServerConfig {
        grpc_listen: addr(
            errors,
            "server.grpc_listen",
            overrides.grpc_listen.as_ref().or(raw.grpc_listen.as_ref()),
            defaults::GRPC_LISTEN,
        ),
        metrics_listen: addr(
            errors,
            "server.metrics_listen",
            overrides.metrics_listen.as_ref().or(raw.metrics_listen.as_ref()),
            defaults::METRICS_LISTEN,
        ),
        http_listen: overrides
            .http_listen
            .as_ref()
            .or(raw.http_listen.as_ref())
            .map(|a| addr(errors, "server.http_listen", Some(a), "")),
        shutdown_grace: timeouts.shutdown_grace,
        drain_delay: timeouts.drain_delay,
        max_concurrent_streams: capacity.max_concurrent_streams,
        keepalive_interval: timeouts.keepalive_interval,
        keepalive_timeout: timeouts.keepalive_timeout,
        idle_timeout: timeouts.idle_timeout,
        handshake_timeout: timeouts.handshake_timeout,
        send_timeout: timeouts.send_timeout,
        max_connections: capacity.max_connections,
        max_connections_per_peer: capacity.max_connections_per_peer,
        max_calls_in_progress: capacity.max_calls_in_progress,
        max_busy_calls_in_progress: capacity.max_busy_calls_in_progress,
        max_buffered_request_bytes: capacity.max_buffered_request_bytes,
        max_buffered_request_bytes_per_connection: capacity.max_buffered_request_bytes_per_connection,
        log_format: overrides.log_format.or(raw.log_format).unwrap_or(LogFormat::Text),
        onnxruntime_lib: match &overrides.onnxruntime_lib {
            Some(p) => p.clone(),
            None => base.join(raw.onnxruntime_lib.as_deref().unwrap_or(Path::new(defaults::ONNXRUNTIME_LIB))),
        },
        watch_config: raw.watch_config.unwrap_or(true),
        watch_interval: timeouts.watch_interval,
        moderation_token: token_source(
            errors,
            "server.moderation_token",
            &raw.moderation_token_env,
            &raw.moderation_token_file,
            base,
        ),
    }
}

/// `[server]`'s durations, each with its floor.
struct ServerTimeouts {
    shutdown_grace: Duration,
    drain_delay: Duration,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    send_timeout: Duration,
    watch_interval: Duration,
}

fn server_timeouts(errors: &mut Vec<String>, raw: &RawServer) -> ServerTimeouts {
    let mut setting = |key: &str, value: &Option<String>, default: &str, floor: Option<Duration>| {
        let d = duration(errors, key, value.as_deref().unwrap_or(default));
        match floor {
            Some(floor) if d < floor => errors.push(format!("{key} {d:?}: must be at least {floor:?}")),
            _ => {}
        }
        d
    };
    let second = Some(Duration::from_secs(1));
    let timeouts = ServerTimeouts {
        shutdown_grace: setting("server.shutdown_grace", &raw.shutdown_grace, defaults::SHUTDOWN_GRACE, None),
        drain_delay: setting("server.drain_delay", &raw.drain_delay, defaults::DRAIN_DELAY, None),
        keepalive_interval: setting(
            "server.keepalive_interval",
            &raw.keepalive_interval,
            defaults::KEEPALIVE_INTERVAL,
            second,
        ),
        keepalive_timeout: setting(
            "server.keepalive_timeout",
            &raw.keepalive_timeout,
            defaults::KEEPALIVE_TIMEOUT,
            second,
        ),
        idle_timeout: setting("server.idle_timeout", &raw.idle_timeout, defaults::IDLE_TIMEOUT, None),
        handshake_timeout: setting(
            "server.handshake_timeout",
            &raw.handshake_timeout,
            defaults::HANDSHAKE_TIMEOUT,
            Some(Duration::from_millis(100)),
        ),
        send_timeout: setting(
            "server.send_timeout",
            &raw.send_timeout,
            defaults::SEND_TIMEOUT,
            Some(Duration::from_millis(100)),
        ),
        watch_interval: setting(
            "server.watch_interval",
            &raw.watch_interval,
            defaults::WATCH_INTERVAL,
            Some(Duration::from_millis(100)),
        ),
    };
    // Zero is allowed here: it means "never".
    let idle = timeouts.idle_timeout;
    if !idle.is_zero() && idle < Duration::from_secs(1) {
        errors.push(format!("server.idle_timeout {idle:?}: must be 0 (never) or at least 1s"));
    }
    timeouts
}

/// `[server]`'s bounds on streams, connections and buffered request bytes.
struct ServerCapacity {
    max_concurrent_streams: u32,
    max_connections: usize,
    max_connections_per_peer: usize,
    max_calls_in_progress: usize,
    max_busy_calls_in_progress: usize,
    max_buffered_request_bytes: usize,
    max_buffered_request_bytes_per_connection: usize,
}

fn server_capacity(errors: &mut Vec<String>, raw: &RawServer) -> ServerCapacity {
    let capacity = ServerCapacity {
        max_concurrent_streams: raw.max_concurrent_streams.unwrap_or(defaults::MAX_CONCURRENT_STREAMS),
        max_connections: raw.max_connections.unwrap_or(defaults::MAX_CONNECTIONS),
        max_connections_per_peer: raw.max_connections_per_peer.unwrap_or(defaults::MAX_CONNECTIONS_PER_PEER),
        max_calls_in_progress: raw.max_calls_in_progress.unwrap_or(defaults::MAX_CALLS_IN_PROGRESS),
        max_busy_calls_in_progress: raw.max_busy_calls_in_progress.unwrap_or(defaults::MAX_BUSY_CALLS_IN_PROGRESS),
        max_buffered_request_bytes: raw.max_buffered_request_bytes.unwrap_or(defaults::MAX_BUFFERED_REQUEST_BYTES),
        max_buffered_request_bytes_per_connection: raw
            .max_buffered_request_bytes_per_connection
            .unwrap_or(defaults::MAX_BUFFERED_REQUEST_BYTES_PER_CONNECTION),
    };
    let ServerCapacity {
        max_concurrent_streams: streams,
        max_connections: total,
        max_connections_per_peer: per_peer,
        max_calls_in_progress: in_progress,
        max_busy_calls_in_progress: busy,
        ..
    } = capacity;
    if !(1..=100_000).contains(&in_progress) {
        errors.push(format!("server.max_calls_in_progress {in_progress}: must be 1..=100000"));
    }
    if !(1..=100_000).contains(&busy) {
        errors.push(format!("server.max_busy_calls_in_progress {busy}: must be 1..=100000"));
    }
    if !(1..=100_000).contains(&streams) {
        errors.push(format!("server.max_concurrent_streams {streams}: must be 1..=100000"));
    }
    if total == 0 {
        errors.push("server.max_connections 0: must be at least 1".to_string());
    }
    if !(1..=total.max(1)).contains(&per_peer) {
        errors
            .push(format!("server.max_connections_per_peer {per_peer}: must be 1..=server.max_connections ({total})"));
    }
    capacity
}

/// `[admin]`, with the command-line override of its listener.
fn admin(errors: &mut Vec<String>, raw: &RawAdmin, base: &Path, overrides: &Overrides) -> AdminConfig {
    AdminConfig {
        listen: overrides
            .admin_listen
            .as_ref()
            .or(raw.listen.as_ref())
            .map(|a| addr(errors, "admin.listen", Some(a), "")),
        token: token_source(errors, "admin.token", &raw.token_env, &raw.token_file, base),
        allow_unauthenticated: raw.allow_unauthenticated.unwrap_or(false),
    }
}

/// Guarding reviews but not the service that reads the config and reloads models is almost
/// always a forgotten key: refuse it unless the config says so in as many words.
fn guarded_together(errors: &mut Vec<String>, server: &ServerConfig, admin: &AdminConfig) {
    if server.moderation_token.is_some() && admin.token.is_none() && !admin.allow_unauthenticated {
        errors.push(
            "admin.token_env / admin.token_file: server.moderation_token_* guards Moderation and Feedback, but \
             Admin (GetConfig, ListModels, Reload) would answer anyone; set an admin token, or \
             admin.allow_unauthenticated = true if its listener is reachable only by operators"
                .to_string(),
        );
    }
}

/// `[limits]`.
fn limits(errors: &mut Vec<String>, raw: &RawLimits) -> Limits {
    let d = Limits::default();
    let limits = Limits {
        max_reviews_per_request: raw.max_reviews_per_request.unwrap_or(d.max_reviews_per_request),
        max_text_bytes: raw.max_text_bytes.unwrap_or(d.max_text_bytes),
        oversize_text: raw.oversize_text.unwrap_or(d.oversize_text),
        max_message_bytes: raw.max_message_bytes.unwrap_or(d.max_message_bytes),
        stream_in_flight: raw.stream_in_flight.unwrap_or(d.stream_in_flight),
        max_call_timeout: match &raw.max_call_timeout {
            Some(text) => duration(errors, "limits.max_call_timeout", text),
            None => d.max_call_timeout,
        },
    };
    if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&limits.max_call_timeout) {
        errors.push(format!("limits.max_call_timeout {:?}: must be 1ms..=1h", limits.max_call_timeout));
    }
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
    limits
}

/// A message of the largest allowed size must fit in the upload budgets, or no caller could
/// send one.
fn upload_fits(errors: &mut Vec<String>, server: &ServerConfig, limits: &Limits) {
    let per_connection = server.max_buffered_request_bytes_per_connection;
    if per_connection < limits.max_message_bytes {
        errors.push(format!(
            "server.max_buffered_request_bytes_per_connection {per_connection}: must be at least limits.max_message_bytes ({})",
            limits.max_message_bytes
        ));
    }
    if server.max_buffered_request_bytes < per_connection {
        errors.push(format!(
            "server.max_buffered_request_bytes {}: must be at least server.max_buffered_request_bytes_per_connection ({per_connection})",
            server.max_buffered_request_bytes
        ));
    }
    if limits.max_text_bytes > limits.max_message_bytes {
        errors.push(format!(
            "limits.max_text_bytes {} exceeds limits.max_message_bytes {}: no request could carry such a text",
            limits.max_text_bytes, limits.max_message_bytes
        ));
    }
}

/// `[tls]`.
fn tls(errors: &mut Vec<String>, raw: &RawTls, base: &Path) -> TlsConfig {
    let watch_interval =
        duration(errors, "tls.watch_interval", raw.watch_interval.as_deref().unwrap_or(defaults::TLS_WATCH_INTERVAL));
    if watch_interval < Duration::from_millis(100) {
        errors.push(format!("tls.watch_interval {watch_interval:?}: must be at least 100ms"));
    }
    TlsConfig {
        cert_file: base.join(&raw.cert_file),
        key_file: base.join(&raw.key_file),
        client_ca_file: raw.client_ca_file.as_ref().map(|p| base.join(p)),
        watch_interval,
    }
}

/// `[batching]` and `[models.NAME]`.
fn models(errors: &mut Vec<String>, raw: &RawConfig, base: &Path) -> BTreeMap<String, ModelConfig> {
    let global = batching(errors, "batching", &raw.batching, None);
    let mut models = BTreeMap::new();
    for (name, m) in &raw.models {
        if !is_valid_name(name) {
            errors.push(format!("models.{name}: model names use 1-64 of [a-z0-9._-]"));
        }
        let workers = batching(errors, &format!("models.{name}.batching"), &m.batching, Some(global));
        models.insert(name.clone(), ModelConfig { name: name.clone(), path: base.join(&m.path), workers });
    }

    models
}

/// `[policies.NAME]`.
fn policies(errors: &mut Vec<String>, raw: &BTreeMap<String, RawPolicy>) -> BTreeMap<String, PolicySpec> {
    let mut policies = BTreeMap::new();
    for (name, p) in raw {
        let key = format!("policies.{name}");
        if !is_valid_name(name) {
            errors.push(format!("{key}: policy names use 1-64 of [a-z0-9._-]"));
        }
        if p.version.trim().is_empty() {
            errors.push(format!("{key}.version: must not be empty"));
        }
        if p.thresholds.is_empty() {
            errors.push(format!(
                "{key}.thresholds: name at least one label, e.g. [{key}.thresholds.insult] reject = 0.9"
            ));
        }
        for (label, t) in &p.thresholds {
            errors.extend(t.errors(&format!("{key}.thresholds.{label}")));
        }
        policies.insert(
            name.clone(),
            PolicySpec { name: name.clone(), version: p.version.clone(), thresholds: p.thresholds.clone() },
        );
    }
    policies
}

/// `[tasks.NAME]` and their shadows, checked against the models and policies.
fn tasks(
    errors: &mut Vec<String>,
    raw: &BTreeMap<String, RawTask>,
    models: &BTreeMap<String, ModelConfig>,
    policies: &BTreeMap<String, PolicySpec>,
) -> Vec<TaskConfig> {
    if raw.is_empty() {
        errors.push("tasks: at least one task is required, e.g. [tasks.abuse] live = \"abuse-v1\"".into());
    }
    let mut tasks = Vec::new();
    for (name, t) in raw {
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
        policy_ref(errors, &format!("tasks.{name}.policy"), &t.policy, policies);
        let (surfaces, unknown_surface) = task_surfaces(errors, name, t, policies);
        let shadows = task_shadows(errors, name, t, models, policies);
        tasks.push(TaskConfig {
            name: name.clone(),
            live: t.live.clone(),
            policy: t.policy.clone(),
            surfaces,
            unknown_surface,
            shadows,
        });
    }
    no_live_model_shadows_another_task(errors, &tasks);
    tasks
}

/// An error unless `policy` is unset or names a `[policies]` table.
fn policy_ref(errors: &mut Vec<String>, key: &str, policy: &Option<String>, policies: &BTreeMap<String, PolicySpec>) {
    if let Some(p) = policy
        && !policies.contains_key(p)
    {
        errors.push(format!(
            "{key}: no policy named {p:?} under [policies] (configured: {:?})",
            policies.keys().collect::<Vec<_>>()
        ));
    }
}

/// `tasks.NAME.shadows`: each a known model, or the live model under another policy, listed once.
fn task_shadows(
    errors: &mut Vec<String>,
    name: &str,
    t: &RawTask,
    models: &BTreeMap<String, ModelConfig>,
    policies: &BTreeMap<String, PolicySpec>,
) -> Vec<ShadowConfig> {
    let mut shadows = Vec::new();
    for (i, sh) in t.shadows.iter().enumerate() {
        let key = format!("tasks.{name}.shadows[{i}]");
        if !models.contains_key(&sh.model) {
            errors.push(format!("{key}.model: no model named {:?} under [models]", sh.model));
        }
        policy_ref(errors, &format!("{key}.policy"), &sh.policy, policies);
        if sh.model == t.live && sh.policy.is_none() {
            errors.push(format!(
                "{key}.model: {:?} is already the live model of this task; add policy = \"NAME\" to try other thresholds on it",
                sh.model
            ));
        } else if sh.model == t.live && sh.policy == t.policy && sh.surfaces.is_none() {
            errors.push(format!("{key}.policy: {:?} is already the live policy of this task", sh.policy));
        }
        if t.shadows[..i].iter().any(|o| o.model == sh.model && o.policy == sh.policy) {
            errors.push(format!("{key}: model {:?} with policy {:?} is listed twice", sh.model, sh.policy));
        }
        if !(0.0..=1.0).contains(&sh.sample_rate) {
            errors.push(format!("{key}.sample_rate {}: must be within 0..=1 (1 = every review)", sh.sample_rate));
        }
        // The default salt keeps a model shadow's sample unchanged when a policy is added.
        let salt = match &sh.policy {
            Some(p) if sh.model == t.live => format!("{}+{p}", sh.model),
            _ => sh.model.clone(),
        };
        shadows.push(ShadowConfig {
            model: sh.model.clone(),
            policy: sh.policy.clone(),
            sample_rate: sh.sample_rate,
            salt: sh.salt.clone().unwrap_or(salt),
            surfaces: shadow_surfaces(errors, &key, sh, t),
        });
    }
    shadows
}

/// A model serves one role: live in one task, or a shadow in others, never both.
fn no_live_model_shadows_another_task(errors: &mut Vec<String>, tasks: &[TaskConfig]) {
    for task in tasks {
        for other in tasks {
            if task.name != other.name && other.shadows.iter().any(|s| s.model == task.live) {
                errors.push(format!(
                    "tasks.{}: model {:?} cannot be live here and a shadow of task {}",
                    task.name, task.live, other.name
                ));
            }
        }
    }
}

/// `[tasks.NAME.surfaces]` (surface -> policy) and `tasks.NAME.unknown_surface`.
fn task_surfaces(
    errors: &mut Vec<String>,
    task: &str,
    raw: &RawTask,
    policies: &BTreeMap<String, PolicySpec>,
) -> (BTreeMap<String, String>, UnknownSurface) {
    let key = format!("tasks.{task}.surfaces");
    if raw.surfaces.len() > MAX_SURFACES {
        errors.push(format!(
            "{key}: {} surfaces; at most {MAX_SURFACES} (each multiplies the task's decision, comparison and verdict series)",
            raw.surfaces.len()
        ));
    }
    for (surface, policy) in &raw.surfaces {
        if !is_valid_name(surface) {
            errors.push(format!("{key}.{surface:?}: surface names use 1-64 of [a-z0-9._-]"));
        }
        if !policies.contains_key(policy) {
            errors.push(format!(
                "{key}.{surface}: no policy named {policy:?} under [policies] (configured: {:?})",
                policies.keys().collect::<Vec<_>>()
            ));
        }
    }
    if raw.unknown_surface.is_some() && raw.surfaces.is_empty() {
        errors.push(format!(
            "tasks.{task}.unknown_surface: the task lists no surfaces ([{key}]), so every surface already decides alike"
        ));
    }
    (raw.surfaces.clone(), raw.unknown_surface.unwrap_or_default())
}

/// `tasks.NAME.shadows[i].surfaces`: surfaces the task lists, each once, at least one.
fn shadow_surfaces(errors: &mut Vec<String>, key: &str, sh: &RawShadow, task: &RawTask) -> Option<Vec<String>> {
    let list = sh.surfaces.as_ref()?;
    let key = format!("{key}.surfaces");
    if list.is_empty() {
        errors
            .push(format!("{key}: empty, so the shadow would see nothing; leave the key out to offer it all traffic"));
    }
    for (j, surface) in list.iter().enumerate() {
        if !task.surfaces.contains_key(surface) {
            errors.push(format!(
                "{key}[{j}]: {surface:?} is not a surface of this task (its surfaces: {:?})",
                task.surfaces.keys().collect::<Vec<_>>()
            ));
        } else if list[..j].contains(surface) {
            errors.push(format!("{key}[{j}]: {surface:?} is listed twice"));
        } else if sh.model == task.live && sh.policy.as_ref() == task.surfaces.get(surface) {
            errors.push(format!("{key}[{j}]: {:?} is already the live policy on surface {surface:?}", sh.policy));
        }
    }
    Some(list.clone())
}

/// `[shadow.disagreement_log]`.
fn disagreement_log(errors: &mut Vec<String>, l: &RawLog, base: &Path) -> LogConfig {
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
        errors.push(format!("shadow.disagreement_log.max_file_bytes {}: must be at least 4096", config.max_file_bytes));
    }
    if !(1..=1000).contains(&config.max_files) {
        errors.push(format!("shadow.disagreement_log.max_files {}: must be 1..=1000", config.max_files));
    }
    if !(1..=1_000_000).contains(&config.queue_capacity) {
        errors.push(format!("shadow.disagreement_log.queue_capacity {}: must be 1..=1000000", config.queue_capacity));
    }
    config
}

/// `[journal]`.
fn journal(errors: &mut Vec<String>, j: &RawJournal, base: &Path) -> JournalConfig {
    let text = |v: &Option<String>, default: &'static str| v.clone().unwrap_or_else(|| default.to_string());
    let config = JournalConfig {
        path: base.join(&j.path),
        include_text: j.include_text.unwrap_or(false),
        include_shadows: j.include_shadows.unwrap_or(true),
        max_file_bytes: j.max_file_bytes.unwrap_or(defaults::JOURNAL_MAX_FILE_BYTES),
        max_file_age: duration(errors, "journal.max_file_age", &text(&j.max_file_age, defaults::JOURNAL_MAX_FILE_AGE)),
        max_files: j.max_files.unwrap_or(defaults::JOURNAL_MAX_FILES),
        retention: duration(errors, "journal.retention", &text(&j.retention, "0s")),
        queue_capacity: j.queue_capacity.unwrap_or(defaults::JOURNAL_QUEUE_CAPACITY),
        index_capacity: j.index_capacity.unwrap_or(defaults::JOURNAL_INDEX_CAPACITY),
        index_max_age: duration(
            errors,
            "journal.index_max_age",
            &text(&j.index_max_age, defaults::JOURNAL_INDEX_MAX_AGE),
        ),
    };
    if j.path.as_os_str().is_empty() {
        errors.push("journal.path: must name a file".to_string());
    }
    if config.max_file_bytes < 4096 {
        errors.push(format!("journal.max_file_bytes {}: must be at least 4096", config.max_file_bytes));
    }
    // The writer checks ages once a second: a finer bound would not be kept.
    if !config.max_file_age.is_zero() && config.max_file_age < Duration::from_secs(1) {
        errors.push(format!("journal.max_file_age {:?}: must be 0 (off) or at least 1s", config.max_file_age));
    }
    if !config.retention.is_zero() && config.retention < Duration::from_secs(1) {
        errors.push(format!("journal.retention {:?}: must be 0 (off) or at least 1s", config.retention));
    }
    if !(1..=10_000).contains(&config.max_files) {
        errors.push(format!("journal.max_files {}: must be 1..=10000", config.max_files));
    }
    if !(1..=1_000_000).contains(&config.queue_capacity) {
        errors.push(format!("journal.queue_capacity {}: must be 1..=1000000", config.queue_capacity));
    }
    if config.index_capacity > 10_000_000 {
        errors.push(format!("journal.index_capacity {}: must be 0..=10000000", config.index_capacity));
    }
    if config.index_capacity > 0 && config.index_max_age.is_zero() {
        errors.push("journal.index_max_age 0s: must be positive while journal.index_capacity is".to_string());
    }
    config
}

/// `[labelling]`.
fn labelling(errors: &mut Vec<String>, l: &RawLabelling, base: &Path) -> LabellingConfig {
    let config = LabellingConfig {
        path: base.join(&l.path),
        disagreement_rate: l.disagreement_rate.unwrap_or(defaults::LABELLING_DISAGREEMENT_RATE),
        agreement_rate: l.agreement_rate.unwrap_or(defaults::LABELLING_AGREEMENT_RATE),
        include_text: l.include_text.unwrap_or(false),
        max_file_bytes: l.max_file_bytes.unwrap_or(defaults::LOG_MAX_FILE_BYTES),
        max_files: l.max_files.unwrap_or(defaults::LOG_MAX_FILES),
        queue_capacity: l.queue_capacity.unwrap_or(defaults::LOG_QUEUE_CAPACITY),
    };
    // A rate of 0 would give its reviews no chance of a label, and their weight (1 / rate) no
    // value: the estimates would silently leave them out.
    for (key, rate) in [("disagreement_rate", config.disagreement_rate), ("agreement_rate", config.agreement_rate)] {
        if !(rate > 0.0 && rate <= 1.0) {
            errors.push(format!("labelling.{key} {rate}: must be above 0 and at most 1"));
        }
    }
    if config.max_file_bytes < 4096 {
        errors.push(format!("labelling.max_file_bytes {}: must be at least 4096", config.max_file_bytes));
    }
    if !(1..=1000).contains(&config.max_files) {
        errors.push(format!("labelling.max_files {}: must be 1..=1000", config.max_files));
    }
    if !(1..=1_000_000).contains(&config.queue_capacity) {
        errors.push(format!("labelling.queue_capacity {}: must be 1..=1000000", config.queue_capacity));
    }
    config
}

/// How shadow worker threads are put behind live ones (`shadow.nice`, `.scheduling`, `.cpus`).
fn shadow_threads(errors: &mut Vec<String>, raw: &RawShadowPolicy) -> (i32, ThreadScheduling, Option<CpuSet>) {
    let shadow_nice = raw.nice.unwrap_or(defaults::SHADOW_NICE);
    if !(0..=19).contains(&shadow_nice) {
        errors.push(format!("shadow.nice {shadow_nice}: must be 0..=19"));
    }
    let shadow_scheduling = raw.scheduling.unwrap_or(defaults::SHADOW_SCHEDULING);
    let shadow_cpus = raw.cpus.as_deref().and_then(|list| shadow_cpus(errors, list));
    (shadow_nice, shadow_scheduling, shadow_cpus)
}

/// `[monitoring]`.
fn monitoring(errors: &mut Vec<String>, raw: &RawMonitoring) -> MonitoringConfig {
    let monitoring = MonitoringConfig {
        languages: match &raw.languages {
            Some(list) => list.iter().map(|l| l.to_ascii_lowercase()).collect(),
            None => defaults::MONITORED_LANGUAGES.iter().map(|l| l.to_string()).collect(),
        },
    };
    for (i, l) in monitoring.languages.iter().enumerate() {
        if !(2..=8).contains(&l.len()) || !l.bytes().all(|b| b.is_ascii_lowercase()) {
            errors.push(format!("monitoring.languages[{i}] {l:?}: use a primary language subtag like \"en\""));
        }
    }
    if monitoring.languages.len() > 100 {
        errors.push(format!(
            "monitoring.languages: {} entries; at most 100 (each is a metric series)",
            monitoring.languages.len()
        ));
    }
    monitoring
}

fn feedback(errors: &mut Vec<String>, raw: &super::file::RawFeedback) -> FeedbackConfig {
    let text = |v: &Option<String>, default: &'static str| v.clone().unwrap_or_else(|| default.to_string());
    let config = FeedbackConfig {
        sources: raw.sources.clone().unwrap_or_default(),
        max_verdicts_per_request: raw.max_verdicts_per_request.unwrap_or(defaults::FEEDBACK_MAX_VERDICTS_PER_REQUEST),
        queue_capacity: raw.queue_capacity.unwrap_or(defaults::FEEDBACK_QUEUE_CAPACITY),
        queue_max_bytes: raw.queue_max_bytes.unwrap_or(defaults::FEEDBACK_QUEUE_MAX_BYTES),
        batch_size: raw.batch_size.unwrap_or(defaults::FEEDBACK_BATCH_SIZE),
        max_delay: duration(errors, "feedback.max_delay", &text(&raw.max_delay, defaults::FEEDBACK_MAX_DELAY)),
        dedupe_window: duration(
            errors,
            "feedback.dedupe_window",
            &text(&raw.dedupe_window, defaults::FEEDBACK_DEDUPE_WINDOW),
        ),
        dedupe_capacity: raw.dedupe_capacity.unwrap_or(defaults::FEEDBACK_DEDUPE_CAPACITY),
    };
    for (i, s) in config.sources.iter().enumerate() {
        if !is_valid_name(s) || s == OTHER_SOURCE || s == NO_SOURCE {
            errors.push(format!(
                "feedback.sources[{i}] {s:?}: use 1-64 of [a-z0-9._-], not \"{}\" or \"{}\" (reserved)",
                OTHER_SOURCE, NO_SOURCE
            ));
        }
    }
    if config.sources.len() > 50 {
        errors.push(format!(
            "feedback.sources: {} entries; at most 50 (each multiplies the verdict series)",
            config.sources.len()
        ));
    }
    for (key, v, max) in [
        ("feedback.max_verdicts_per_request", config.max_verdicts_per_request, 10_000),
        ("feedback.queue_capacity", config.queue_capacity, 1_000_000),
        ("feedback.queue_max_bytes", config.queue_max_bytes, 1 << 30),
        ("feedback.batch_size", config.batch_size, 1024),
        ("feedback.dedupe_capacity", config.dedupe_capacity, 10_000_000),
    ] {
        if v == 0 || v > max {
            errors.push(format!("{key} {v}: must be 1..={max}"));
        }
    }
    if config.max_delay < Duration::from_millis(10) {
        errors.push(format!("feedback.max_delay {:?}: must be at least 10ms", config.max_delay));
    }
    config
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
    let max_cpu_fraction = raw.max_cpu_fraction.unwrap_or(defaults::SHADOW_MAX_CPU_FRACTION);
    if !(max_cpu_fraction > 0.0 && max_cpu_fraction <= 1.0) {
        errors.push(format!(
            "shadow.max_cpu_fraction {max_cpu_fraction}: must be within (0, 1] (a share of the CPUs the process may use; 1 with cpu_reserve = 0 lets shadows use them all)"
        ));
    }
    let max_cpu_fraction_on_one_cpu =
        raw.max_cpu_fraction_on_one_cpu.unwrap_or(defaults::SHADOW_MAX_CPU_FRACTION_ON_ONE_CPU);
    if !(max_cpu_fraction_on_one_cpu > 0.0 && max_cpu_fraction_on_one_cpu <= 1.0) {
        errors.push(format!(
            "shadow.max_cpu_fraction_on_one_cpu {max_cpu_fraction_on_one_cpu}: must be within (0, 1] (the budget's largest share of the CPU when the process may run on one CPU only)"
        ));
    }
    let cpu_reserve = raw.cpu_reserve.unwrap_or(defaults::SHADOW_CPU_RESERVE);
    if !(0.0..1.0).contains(&cpu_reserve) {
        errors.push(format!(
            "shadow.cpu_reserve {cpu_reserve}: must be within [0, 1) (a share of the CPUs the process may use that shadow work leaves free; 0 turns it off)"
        ));
    }
    let min_sample_rate = raw.min_sample_rate.unwrap_or(defaults::SHADOW_MIN_SAMPLE_RATE);
    if !(0.0..=1.0).contains(&min_sample_rate) {
        errors.push(format!("shadow.min_sample_rate {min_sample_rate}: must be within 0..=1"));
    }
    ShadowPolicy {
        max_delay,
        live_pressure_jobs,
        breaker,
        max_cpu_fraction,
        max_cpu_fraction_on_one_cpu,
        cpu_reserve,
        min_sample_rate,
    }
}

/// `shadow.cpus`: a CPU list within the CPUs this process may run on.
fn shadow_cpus(errors: &mut Vec<String>, list: &str) -> Option<CpuSet> {
    let cpus = match CpuSet::parse(list) {
        Ok(c) => c,
        Err(e) => {
            errors.push(format!("shadow.cpus {list:?}: {e}"));
            return None;
        }
    };
    match allowed_cpus() {
        Ok(allowed) => {
            let outside = cpus.minus(&allowed);
            if outside.count() > 0 {
                errors.push(format!(
                    "shadow.cpus {list:?}: CPU {} not in the CPUs this process may use ({})",
                    outside.to_list(),
                    allowed.to_list()
                ));
                return None;
            }
        }
        Err(e) => errors.push(format!("shadow.cpus {list:?}: cannot read this process's CPU affinity: {e}")),
    }
    Some(cpus)
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
        idle: false,
        cpus: None,
        long_job_nice: raw.long_job_nice.or(parent.map(|p| p.long_job_nice)).unwrap_or(defaults::LONG_JOB_NICE),
        long_job_scheduling: raw
            .long_job_scheduling
            .or(parent.map(|p| p.long_job_scheduling))
            .unwrap_or(defaults::LONG_JOB_SCHEDULING),
    };
    if !(0..=19).contains(&settings.long_job_nice) {
        errors.push(format!("{key}.long_job_nice {}: must be 0..=19", settings.long_job_nice));
    }
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
