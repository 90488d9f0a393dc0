//! Config reload: every trigger (start-up, file change, SIGHUP, the Admin RPC) goes through one
//! task that applies one reload at a time: read and validate the whole file, refuse changes to
//! settings that cannot change at run time, load only new or changed models (unchanged ones keep
//! their running workers), then swap the whole serving state at once. Any failure keeps the old
//! state serving and says why; the next attempt starts fresh.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Overrides};
use crate::control::loader;
use crate::control::registry::{Registry, ServingState};
use crate::inference::backend::Backends;
use crate::inference::model::package::sha256_hex;
use crate::journal::Journal;
use crate::metrics::{self, ReloadTrigger};
use crate::shadow::disagreement::DisagreementLog;
use crate::shadow::labelling::LabellingQueue;
use crate::shutdown::ShutdownSignal;

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadOutcome {
    pub applied: bool,
    /// The generation serving after the attempt.
    pub generation: u64,
    pub errors: Vec<String>,
    /// sha256 of the config file serving after the attempt.
    pub config_sha256: String,
}

/// What the reload task needs; owned by it.
pub struct Reloader {
    pub config_path: PathBuf,
    pub overrides: Overrides,
    pub registry: Registry,
    pub backends: Backends,
    /// Started once at start-up; its settings cannot change by reload.
    pub log: Option<DisagreementLog>,
    /// The decision journal, likewise.
    pub journal: Option<Journal>,
    /// The labelling queue, likewise.
    pub labelling: Option<LabellingQueue>,
    /// Every worker thread ever started, joined at shutdown.
    pub threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// What the serving state was built from, to skip a reload whose inputs are unchanged.
    pub applied_inputs: Mutex<Option<Inputs>>,
}

/// A reload's inputs, cheaply compared: the config text's hash and the size and modification
/// time of every file in every configured model folder. Reading and hashing the packages is what
/// a reload costs; this only stats them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    config_sha256: String,
    files: Vec<(PathBuf, u64, Option<std::time::SystemTime>)>,
}

impl Inputs {
    pub fn of(config: &Config) -> Inputs {
        let mut files = Vec::new();
        for model in config.models.values() {
            let Ok(entries) = std::fs::read_dir(&model.path) else { continue };
            for entry in entries.flatten() {
                if let Ok(meta) = entry.metadata() {
                    files.push((entry.path(), meta.len(), meta.modified().ok()));
                }
            }
        }
        files.sort();
        Inputs { config_sha256: config.source_sha256.clone(), files }
    }
}

/// Reloads start at most this often; requests that arrive sooner wait and are coalesced, since
/// each reads the newest file anyway. An Admin client calling Reload in a loop costs one reload
/// per interval, not one per call.
const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(500);

type Request = (ReloadTrigger, Option<oneshot::Sender<ReloadOutcome>>);

/// Cheap, cloneable way to ask for a reload.
#[derive(Clone)]
pub struct ReloadHandle {
    /// Bounded: triggers that arrive while one reload runs and the queue is full are coalesced
    /// (the queued reload will read the newest file anyway).
    tx: mpsc::Sender<Request>,
}

/// The receiving end of a `ReloadHandle`, until `Reloader::serve` takes it.
pub struct ReloadRequests(mpsc::Receiver<Request>);

impl ReloadHandle {
    /// A handle whose requests queue until `Reloader::serve` starts, so the Admin service can
    /// be served while the start-up models load.
    pub fn channel() -> (ReloadHandle, ReloadRequests) {
        let (tx, rx) = mpsc::channel::<Request>(4);
        (ReloadHandle { tx }, ReloadRequests(rx))
    }

    /// Asks for a reload and waits for its outcome.
    pub async fn reload(&self, trigger: ReloadTrigger) -> ReloadOutcome {
        let (tx, rx) = oneshot::channel();
        let refused = |e: &str| ReloadOutcome {
            applied: false,
            generation: 0,
            errors: vec![format!("reload unavailable: {e}")],
            config_sha256: String::new(),
        };
        if self.tx.send((trigger, Some(tx))).await.is_err() {
            return refused("the server is shutting down");
        }
        rx.await.unwrap_or_else(|_| refused("the reload task stopped"))
    }

    /// Asks for a reload without waiting.
    pub fn trigger(&self, trigger: ReloadTrigger) {
        let _ = self.tx.try_send((trigger, None));
    }
}

impl Reloader {
    /// Reads the config file and applies it, synchronously (blocking IO and model loads).
    pub fn apply(&self, trigger: ReloadTrigger) -> ReloadOutcome {
        let refuse = |errors| self.refuse(trigger, errors);
        let bytes = match std::fs::read(&self.config_path) {
            Ok(b) => b,
            Err(e) => return refuse(vec![format!("{}: cannot read: {e}", self.config_path.display())]),
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return refuse(vec![format!("{}: not UTF-8", self.config_path.display())]);
        };
        let config = match Config::parse(&text, &self.config_path, &self.overrides) {
            Ok(c) => c,
            Err(errors) => return refuse(errors),
        };
        let inputs = Inputs::of(&config);
        if let Some(current) = self.registry.load()
            && self.applied_inputs.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&inputs)
        {
            tracing::info!(
                trigger = trigger.as_str(),
                generation = current.generation,
                "config and model files unchanged; nothing to reload"
            );
            return ReloadOutcome {
                applied: true,
                generation: current.generation,
                errors: Vec::new(),
                config_sha256: current.config_sha256.clone(),
            };
        }
        let outcome = self.apply_config(Arc::new(config), trigger);
        if outcome.applied {
            *self.applied_inputs.lock().unwrap_or_else(|p| p.into_inner()) = Some(inputs);
        }
        outcome
    }

    /// Keeps the running state and reports why.
    fn refuse(&self, trigger: ReloadTrigger, errors: Vec<String>) -> ReloadOutcome {
        for e in &errors {
            tracing::error!(trigger = trigger.as_str(), error = %e, "config refused; the running config keeps serving");
        }
        let current = self.registry.load();
        let (generation, sha) =
            current.as_ref().map_or((0, String::new()), |s| (s.generation, s.config_sha256.clone()));
        metrics::reload_finished(trigger, false, generation, None, &sha);
        ReloadOutcome { applied: false, generation, errors, config_sha256: sha }
    }

    /// Applies a parsed config: loads what changed and swaps the serving state.
    pub fn apply_config(&self, config: Arc<Config>, trigger: ReloadTrigger) -> ReloadOutcome {
        let kept = |errors| self.refuse(trigger, errors);
        let current = self.registry.load();
        let sha = config.source_sha256.clone();
        if let Some(current) = &current {
            let fixed = fixed_settings_changed(&current.config, &config);
            if !fixed.is_empty() {
                return kept(fixed);
            }
        }
        let writers = loader::Writers {
            log: self.log.as_ref(),
            labelling: self.labelling.as_ref(),
            journal: self.journal.as_ref(),
        };
        let loaded = match loader::load_with(&config, &self.backends, false, writers, current.as_deref()) {
            Ok(l) => l,
            Err(errors) => return kept(errors),
        };
        let mut state = loaded.state;
        state.generation = current.as_ref().map_or(1, |c| c.generation + 1);
        state.config_sha256 = sha.clone();
        self.threads.lock().unwrap_or_else(|p| p.into_inner()).extend(loaded.threads);
        let generation = state.generation;
        let summary = summary(&state);
        let new = Arc::new(state);
        let old = self.registry.swap(Some(new.clone()));
        // Models that are gone (or replaced) stop reporting as loaded; the ones serving now do.
        if let Some(old) = &old {
            for (name, m) in &old.models {
                if new.models.get(name).is_none_or(|n| n.fingerprint != m.fingerprint) {
                    m.handle.metrics().unloaded();
                }
            }
        }
        for m in new.models.values() {
            m.handle.metrics().loaded();
        }
        metrics::reload_finished(trigger, true, generation, old.as_ref().map(|o| o.config_sha256.as_str()), &sha);
        tracing::info!(trigger = trigger.as_str(), generation, config_sha256 = %&sha[..12], models = %summary, "config applied");
        ReloadOutcome { applied: true, generation, errors: Vec::new(), config_sha256: sha }
    }

    /// Starts the reload task, taking `requests`. Reloads run one at a time, each on a blocking
    /// thread.
    pub fn serve(self, requests: ReloadRequests) {
        let ReloadRequests(mut rx) = requests;
        let reloader = Arc::new(self);
        tokio::spawn(async move {
            let mut last_started: Option<tokio::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                if let Some(last) = last_started {
                    tokio::time::sleep_until(last + MIN_RELOAD_INTERVAL).await;
                }
                let mut requests = vec![first];
                while let Ok(more) = rx.try_recv() {
                    requests.push(more);
                }
                last_started = Some(tokio::time::Instant::now());
                let (trigger, r) = (requests[0].0, reloader.clone());
                let outcome =
                    tokio::task::spawn_blocking(move || r.apply(trigger)).await.unwrap_or_else(|e| ReloadOutcome {
                        applied: false,
                        generation: 0,
                        errors: vec![format!("reload panicked: {e}")],
                        config_sha256: String::new(),
                    });
                for (_, reply) in requests {
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome.clone());
                    }
                }
            }
        });
    }
}

/// "abuse=abuse-v1(+abuse-v2,+abuse-v1/strict-2) fraud=..." for the log line: a model under a
/// policy other than its manifest's shows as MODEL/POLICY.
fn summary(state: &ServingState) -> String {
    let named = |model: &crate::inference::worker::ModelHandle, policy: &crate::policy::Policy| {
        let spec = model.spec();
        if spec.policy == *policy { spec.name.clone() } else { format!("{}/{}", spec.name, policy.name) }
    };
    state
        .tasks
        .iter()
        .map(|t| {
            let live = named(&t.live, &t.policy);
            let shadows: Vec<String> = t.shadows.iter().map(|s| named(&s.shadow, &s.decision_policy)).collect();
            if shadows.is_empty() {
                format!("{}={live}", t.name)
            } else {
                format!("{}={live}(+{})", t.name, shadows.join(",+"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Settings bound at start-up (sockets and their transport limits, the runtime library, the
/// log writer): a reload that changes them is refused, naming each. Compared as values; shown
/// as the config spells them.
pub fn fixed_settings_changed(running: &Config, new: &Config) -> Vec<String> {
    let mut errors = Vec::new();
    let mut check = |key: &str, changed: Option<(String, String)>| {
        if let Some((a, b)) = changed {
            errors.push(format!(
                "{key} cannot change at run time (running: {a}, file: {b}); restart modserve to apply it"
            ));
        }
    };
    let (r, n) = (&running.server, &new.server);
    check("server.grpc_listen", changed(&r.grpc_listen, &n.grpc_listen));
    check("server.metrics_listen", changed(&r.metrics_listen, &n.metrics_listen));
    check("server.http_listen", changed(&r.http_listen, &n.http_listen));
    check("server.shutdown_grace", changed(&r.shutdown_grace, &n.shutdown_grace));
    check("server.drain_delay", changed(&r.drain_delay, &n.drain_delay));
    check("server.log_format", changed(&r.log_format, &n.log_format));
    check("server.onnxruntime_lib", changed(&r.onnxruntime_lib, &n.onnxruntime_lib));
    check("server.max_concurrent_streams", changed(&r.max_concurrent_streams, &n.max_concurrent_streams));
    check("server.keepalive_interval", changed(&r.keepalive_interval, &n.keepalive_interval));
    check("server.keepalive_timeout", changed(&r.keepalive_timeout, &n.keepalive_timeout));
    check("server.idle_timeout", changed(&r.idle_timeout, &n.idle_timeout));
    check("server.handshake_timeout", changed(&r.handshake_timeout, &n.handshake_timeout));
    check("server.send_timeout", changed(&r.send_timeout, &n.send_timeout));
    check("server.max_connections", changed(&r.max_connections, &n.max_connections));
    check("server.max_connections_per_peer", changed(&r.max_connections_per_peer, &n.max_connections_per_peer));
    check("server.max_calls_in_progress", changed(&r.max_calls_in_progress, &n.max_calls_in_progress));
    check("server.max_busy_calls_in_progress", changed(&r.max_busy_calls_in_progress, &n.max_busy_calls_in_progress));
    check("server.max_buffered_request_bytes", changed(&r.max_buffered_request_bytes, &n.max_buffered_request_bytes));
    check(
        "server.max_buffered_request_bytes_per_connection",
        changed(&r.max_buffered_request_bytes_per_connection, &n.max_buffered_request_bytes_per_connection),
    );
    check("server.moderation_token", changed(&r.moderation_token, &n.moderation_token));
    check("server.watch_config", changed(&r.watch_config, &n.watch_config));
    check("server.watch_interval", changed(&r.watch_interval, &n.watch_interval));
    check("limits.max_message_bytes", changed(&running.limits.max_message_bytes, &new.limits.max_message_bytes));
    check("admin", changed(&running.admin, &new.admin));
    // The files' content is reloaded on its own (`tls::watch`); only where they are is fixed.
    check("tls", changed(&running.tls, &new.tls));
    check("shadow.disagreement_log", changed(&running.disagreement_log, &new.disagreement_log));
    check("journal", changed(&running.journal, &new.journal));
    check("labelling", changed(&running.labelling, &new.labelling));
    errors
}

/// The two values, shown as the config spells them, if they differ.
fn changed<T: PartialEq + std::fmt::Debug>(running: &T, new: &T) -> Option<(String, String)> {
    (running != new).then(|| (format!("{running:?}"), format!("{new:?}")))
}

/// Watches the config file by content: every `interval` it hashes the file (following
/// symlinks, so editors that replace the file and Kubernetes ConfigMap `..data` swaps are both
/// seen) and triggers one reload once a new content has been stable for one interval.
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    initial_sha256: String,
    reload: ReloadHandle,
    shutdown: ShutdownSignal,
) {
    let mut applied = initial_sha256;
    let mut pending: Option<String> = None;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let p = path.clone();
        // Missing or unreadable mid-swap: try again next tick.
        let Ok(Ok(bytes)) = tokio::task::spawn_blocking(move || std::fs::read(p)).await else { continue };
        let sha = sha256_hex(&bytes);
        if sha == applied {
            pending = None;
            continue;
        }
        if pending.as_deref() == Some(sha.as_str()) {
            // Stable for a whole interval: reload once for this content, whatever the outcome.
            tracing::info!(path = %path.display(), sha256 = %&sha[..12], "config file changed; reloading");
            applied = sha;
            pending = None;
            reload.trigger(ReloadTrigger::File);
        } else {
            pending = Some(sha);
        }
    }
}

/// Triggers a reload on every SIGHUP.
pub async fn on_sighup(reload: ReloadHandle, shutdown: ShutdownSignal) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change or the Admin RPC");
            return;
        }
    };
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: reloading the config");
                reload.trigger(ReloadTrigger::Signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Overrides;

    fn parse(server: &str) -> Config {
        let text = format!("[server]\n{server}\n[models.m]\npath = \"m\"\n[tasks.abuse]\nlive = \"m\"\n");
        Config::parse(&text, Path::new("/srv/modserve.toml"), &Overrides::default()).expect("valid")
    }

    /// Every setting the listeners are built with at start-up is refused by a reload, naming
    /// its key; the transport limits were once taken silently and never applied.
    #[test]
    fn a_reload_changing_a_listener_setting_is_refused_naming_it() {
        let running = parse("");
        assert!(fixed_settings_changed(&running, &parse("")).is_empty());
        for (line, key) in [
            ("grpc_listen = \"127.0.0.1:1\"", "server.grpc_listen"),
            ("idle_timeout = \"5m\"", "server.idle_timeout"),
            ("handshake_timeout = \"2s\"", "server.handshake_timeout"),
            ("send_timeout = \"2s\"", "server.send_timeout"),
            ("max_connections = 1000", "server.max_connections"),
            ("max_connections_per_peer = 3", "server.max_connections_per_peer"),
            ("max_calls_in_progress = 8", "server.max_calls_in_progress"),
            ("max_busy_calls_in_progress = 4", "server.max_busy_calls_in_progress"),
            ("max_buffered_request_bytes = 300000000", "server.max_buffered_request_bytes"),
            ("max_buffered_request_bytes_per_connection = 8388608", "server.max_buffered_request_bytes_per_connection"),
        ] {
            let errors = fixed_settings_changed(&running, &parse(line));
            assert_eq!(errors.len(), 1, "{line}: {errors:?}");
            assert!(errors[0].starts_with(&format!("{key} cannot change at run time")), "{line}: {errors:?}");
        }
    }

    /// The journal's writer and file are the process's: turning it on, off or elsewhere needs a
    /// restart.
    #[test]
    fn a_reload_changing_the_journal_is_refused_naming_it() {
        let with = |table: &str| {
            let text = format!("{table}\n[models.m]\npath = \"m\"\n[tasks.abuse]\nlive = \"m\"\n");
            Config::parse(&text, Path::new("/srv/modserve.toml"), &Overrides::default()).expect("valid")
        };
        let off = with("");
        let on = with("[journal]\npath = \"j.jsonl\"");
        for (running, new) in [(&off, &on), (&on, &off), (&on, &with("[journal]\npath = \"k.jsonl\""))] {
            let errors = fixed_settings_changed(running, new);
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("journal cannot change at run time"), "{errors:?}");
        }
    }
}
