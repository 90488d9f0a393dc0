//! Wiring: bind the listeners, start gRPC (Moderation, Feedback, Admin, health, reflection) and the metrics
//! port, load the models through the reloader, flip health to SERVING, watch for reload
//! triggers, and on shutdown drain in order.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::control::registry::Registry;
use crate::control::reload::{self, ReloadHandle, Reloader};
use crate::control::{http_port, loader};
use crate::feedback::Feedback;
use crate::inference::backend::{Backends, Wrap};
use crate::inference::runtime;
use crate::journal::Journal;
use crate::metrics;
use crate::metrics::ReloadTrigger;
use crate::serving::classify::Classifier;
use crate::serving::grpc::admin::AdminService;
use crate::serving::grpc::auth::BearerAuth;
use crate::serving::grpc::feedback::{FeedbackService, SUBMIT_VERDICTS_PATH};
use crate::serving::grpc::pb::admin_server::AdminServer;
use crate::serving::grpc::pb::feedback_server::FeedbackServer;
use crate::serving::grpc::pb::moderation_server::ModerationServer;
use crate::serving::grpc::upload::Budget;
use crate::serving::grpc::{self, pb, service::ModerationService, transport};
use crate::serving::http;
use crate::serving::tls::{self, Tls};
use crate::serving::turns::Turns;
use crate::shadow::disagreement::DisagreementLog;
use crate::shadow::labelling::LabellingQueue;
use crate::shutdown::{Shutdown, ShutdownSignal};

/// The fully-qualified name health checks use for the Moderation service.
pub const MODERATION_SERVICE: &str = "modserve.v1.Moderation";

/// A started server. Models may still be loading: health says NOT_SERVING until they are.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Where the HTTP/JSON API listens, when `server.http_listen` is set.
    pub http_addr: Option<SocketAddr>,
    /// Where the Admin service listens when `admin.listen` is set (else on `grpc_addr`).
    pub admin_addr: Option<SocketAddr>,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The sockets and secrets bound before anything is served.
struct Bound {
    grpc: TcpListener,
    metrics: TcpListener,
    admin: Option<TcpListener>,
    http: Option<TcpListener>,
    moderation_token: Option<String>,
    admin_token: Option<String>,
    tls: Option<Arc<Tls>>,
}

async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("{key}: cannot listen on {addr}"))
}

impl Server {
    /// Binds the listeners (so port 0 works and the addresses are known) and reads the tokens,
    /// then serves in the background. Fails at once only if a listener cannot be bound, a token
    /// or TLS certificate cannot be read, or metrics cannot install.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        Server::start_wrapped(config, None).await
    }

    /// `start`, with every model's inference backend passed through `wrap` (tests inject faults
    /// this way: `inference::backend`).
    pub async fn start_wrapped(config: Config, wrap: Option<Wrap>) -> anyhow::Result<Server> {
        let read = |key: &str, source: &Option<crate::config::TokenSource>| {
            source.as_ref().map(|s| s.read().map_err(|e| anyhow::anyhow!("{key}: {e}"))).transpose()
        };
        let bound = Bound {
            grpc: bind(config.server.grpc_listen, "server.grpc_listen").await?,
            metrics: bind(config.server.metrics_listen, "server.metrics_listen").await?,
            admin: match config.admin.listen {
                Some(addr) => Some(bind(addr, "admin.listen").await?),
                None => None,
            },
            http: match config.server.http_listen {
                Some(addr) => Some(bind(addr, "server.http_listen").await?),
                None => None,
            },
            moderation_token: read("server.moderation_token", &config.server.moderation_token)?,
            admin_token: read("admin.token", &config.admin.token)?,
            tls: match &config.tls {
                None => None,
                Some(t) => Some(Arc::new(Tls::load(t.clone())?)),
            },
        };
        let grpc_addr = bound.grpc.local_addr()?;
        let metrics_addr = bound.metrics.local_addr()?;
        let admin_addr = bound.admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let http_addr = bound.http.as_ref().map(|l| l.local_addr()).transpose()?;
        let prometheus = metrics::install().map_err(|e| anyhow::anyhow!("cannot install metrics: {e}"))?;
        let (shutdown, signal) = Shutdown::new();
        tracing::info!(
            grpc = %grpc_addr,
            metrics = %metrics_addr,
            admin = %admin_addr.map_or("on the gRPC port".to_string(), |a| a.to_string()),
            http = %http_addr.map_or("off".to_string(), |a| a.to_string()),
            tls = match &bound.tls {
                None => "off",
                Some(t) if t.mutual() => "on, client certificates required",
                Some(_) => "on",
            },
            config = %config.source.display(),
            "listening"
        );
        let task = tokio::spawn(run(config, bound, prometheus, signal, wrap));
        Ok(Server { grpc_addr, metrics_addr, http_addr, admin_addr, shutdown, task })
    }

    /// Starts a graceful shutdown; `wait` returns when it is done.
    pub fn shutdown(&self) {
        self.shutdown.trigger();
    }

    /// Waits for the server to stop: after `shutdown`, or at once if the models failed to load.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> anyhow::Result<()> {
        let task = self.task;
        tokio::pin!(task);
        tokio::select! {
            result = &mut task => return result.context("server task panicked")?,
            _ = signal => {}
        }
        self.shutdown.trigger();
        task.await.context("server task panicked")?
    }
}

fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok((v1, v1alpha))
}

async fn run(
    config: Config,
    bound: Bound,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    signal: ShutdownSignal,
    wrap: Option<Wrap>,
) -> anyhow::Result<()> {
    let registry = Registry::default();
    let ready = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let (reload, reload_requests) = ReloadHandle::channel();
    // The transports (and the metrics port, so the drain can still be scraped) stop on their
    // own signal, `drain_delay` after shutdown starts: health says NOT_SERVING at once so load
    // balancers move away, while calls that still arrive are served, not refused.
    let (stop_transport, transport_signal) = Shutdown::new();
    // Serve before loading: while the models load, health answers NOT_SERVING, Classify
    // UNAVAILABLE and /health/ready 503, instead of connections hanging unanswered.
    let listeners =
        serve(&config, bound, &registry, &reload, health_service, prometheus, &ready, transport_signal, &signal)?;

    let started = Instant::now();
    let (reloader, writers, threads) = match load(&config, registry.clone(), wrap).await {
        Ok(loaded) => loaded,
        Err(e) => {
            stop_transport.trigger();
            return Err(e);
        }
    };
    reloader.serve(reload_requests);
    watch_for_reloads(&config, &reload, &signal);
    set_health(&health, ServingStatus::Serving).await;
    ready.store(true, Ordering::Relaxed);
    tracing::info!(load_ms = started.elapsed().as_millis() as u64, "serving");

    signal.clone().wait().await;
    drain(&config, &health, &ready, stop_transport, listeners).await;
    // Drop the serving state and the reload task (which holds the log and the runtime): queues
    // close, workers finish what is queued and exit.
    registry.swap(None);
    drop(reload);
    stop_workers(config.server.shutdown_grace, threads, writers).await;
    tracing::info!("stopped");
    Ok(())
}

/// The tasks serving the listeners, awaited at shutdown.
struct Listeners {
    grpc: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    /// The metrics port.
    http: JoinHandle<()>,
    /// The HTTP/JSON API.
    api: Option<JoinHandle<()>>,
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    for name in ["", MODERATION_SERVICE] {
        health.set_service_status(name, status).await;
    }
}

/// Starts serving every listener: the gRPC services (Moderation, Feedback, health, reflection,
/// and Admin unless it has its own listener), the Admin listener, the HTTP/JSON API (the same
/// handlers), the metrics port, and the TLS certificate watch.
#[allow(clippy::too_many_arguments)]
fn serve<H: tonic_health::pb::health_server::Health>(
    config: &Config,
    bound: Bound,
    registry: &Registry,
    reload: &ReloadHandle,
    health_service: tonic_health::pb::health_server::HealthServer<H>,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    ready: &Arc<AtomicBool>,
    transport_signal: ShutdownSignal,
    signal: &ShutdownSignal,
) -> anyhow::Result<Listeners> {
    let turns = Turns::new(
        config.server.max_calls_in_progress,
        config.server.max_busy_calls_in_progress,
        metrics::turn_gauges(),
    );
    let handlers = Handlers::new(&bound, registry, reload, &transport_signal, &turns);
    let models_closed = (bound.admin.is_some() && bound.admin_token.is_none()).then_some(
        "modserve.v1.Admin: Admin has its own listener (admin.listen) and no token, so ListModels is served there only",
    );
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let routes =
        tonic::service::Routes::new(health_service.clone()).add_service(reflection_v1).add_service(reflection_v1alpha);
    let routes = with_caller_services(routes, config, &handlers);
    let (routes, admin_routes) = with_admin_service(routes, bound.admin.is_some(), &handlers, health_service)?;
    let call_ceiling = call_ceiling(registry, config.limits.max_call_timeout);
    let verdicts_check = handlers.feedback.message_check();
    let limits = transport::CallLimits {
        ceiling: call_ceiling.clone(),
        admission: Arc::new(move |path| (path == SUBMIT_VERDICTS_PATH).then(|| verdicts_check.clone())),
    };
    let transport = |name, listener, routes: tonic::service::Routes| {
        tokio::spawn(transport::serve(
            name,
            listener,
            routes.prepare(),
            transport::TransportSettings::new(&config.server),
            limits.clone(),
            bound.tls.clone(),
            transport_signal.clone(),
        ))
    };
    let admin = bound.admin.zip(admin_routes).map(|(listener, routes)| transport("admin", listener, routes));
    let grpc = transport(grpc::LISTENER, bound.grpc, routes);
    let api = bound.http.map(|listener| {
        let api = http::api::Api {
            moderation: handlers.moderation,
            feedback: handlers.feedback,
            admin: handlers.admin,
            moderation_auth: handlers.moderation_auth,
            feedback_auth: handlers.feedback_auth,
            admin_auth: handlers.admin_auth,
            models_closed,
            ceiling: call_ceiling.clone(),
            max_body_bytes: config.limits.max_message_bytes,
            budget: Budget::new(
                config.server.max_buffered_request_bytes,
                metrics::TransportRefusal::UploadBudgetProcess,
            )
            .shown(metrics::request_bytes_receiving(http::LISTENER)),
        };
        let settings = http::HttpSettings::new(&config.server);
        tokio::spawn(http::serve(listener, api, settings, bound.tls.clone(), transport_signal.clone()))
    });
    let http = tokio::spawn(http_port::serve(bound.metrics, prometheus, ready.clone(), transport_signal));
    if let Some(tls) = bound.tls {
        tokio::spawn(tls::watch(tls, signal.clone()));
    }
    Ok(Listeners { grpc, admin, http, api })
}

/// Has the allocator (mimalloc) give freed memory back to the kernel at once instead of after its
/// default purge delay of a second: under a flood of large requests (the attack suite's i) the
/// delay held 30-50 MiB more at the peak; the cost is a few percent of throughput at saturation
/// (docs/reliability.md).
/// `MIMALLOC_PURGE_DELAY`, which mimalloc reads itself, still decides when set.
pub fn release_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        crate::sys::set_allocator_purge_delay(0);
    }
}

/// The service handlers and the token checks in front of them, built once: the gRPC routes and
/// the HTTP/JSON API serve the same instances (one feedback queue, one dedupe window).
struct Handlers {
    moderation: Arc<ModerationService>,
    feedback: Arc<FeedbackService>,
    admin: Arc<AdminService>,
    /// Moderation and Feedback: the moderation token.
    moderation_auth: BearerAuth,
    feedback_auth: BearerAuth,
    /// Admin: the admin token, which the moderation token never passes.
    admin_auth: BearerAuth,
}

impl Handlers {
    fn new(
        bound: &Bound,
        registry: &Registry,
        reload: &ReloadHandle,
        transport_signal: &ShutdownSignal,
        turns: &Turns,
    ) -> Handlers {
        let (feedback, _feedback_task) = Feedback::start(registry.clone());
        Handlers {
            moderation: Arc::new(ModerationService::new(
                Classifier::new(registry.clone()),
                transport_signal.clone(),
                turns.clone(),
            )),
            feedback: Arc::new(FeedbackService::new(Classifier::new(registry.clone()), feedback)),
            admin: Arc::new(AdminService::new(registry.clone(), reload.clone())),
            moderation_auth: BearerAuth::new(bound.moderation_token.clone(), "modserve.v1.Moderation"),
            // Verdicts come from the same trusted callers as reviews: the Moderation token guards both.
            feedback_auth: BearerAuth::new(bound.moderation_token.clone(), "modserve.v1.Feedback"),
            admin_auth: BearerAuth::new(bound.admin_token.clone(), "modserve.v1.Admin")
                .denying(bound.moderation_token.clone(), "modserve.v1.Moderation"),
        }
    }
}

/// Moderation and Feedback, both behind the moderation token.
fn with_caller_services(
    routes: tonic::service::Routes,
    config: &Config,
    handlers: &Handlers,
) -> tonic::service::Routes {
    let limits = config.limits;
    let moderation_auth = handlers.moderation_auth.clone();
    let moderation = ModerationServer::from_arc(handlers.moderation.clone())
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes.saturating_mul(4));
    let moderation =
        tonic::service::interceptor::InterceptedService::new(moderation, move |req| moderation_auth.check(req));
    let feedback_auth = handlers.feedback_auth.clone();
    let feedback =
        FeedbackServer::from_arc(handlers.feedback.clone()).max_decoding_message_size(limits.max_message_bytes);
    let feedback = tonic::service::interceptor::InterceptedService::new(feedback, move |req| feedback_auth.check(req));
    routes.add_service(moderation).add_service(feedback)
}

/// Admin, behind the admin token: on the gRPC routes, or, with `admin.listen`, on routes of its
/// own with reflection and health (returned second).
fn with_admin_service<H: tonic_health::pb::health_server::Health>(
    routes: tonic::service::Routes,
    own_listener: bool,
    handlers: &Handlers,
    health_service: tonic_health::pb::health_server::HealthServer<H>,
) -> anyhow::Result<(tonic::service::Routes, Option<tonic::service::Routes>)> {
    let admin_auth = handlers.admin_auth.clone();
    let admin_service = tonic::service::interceptor::InterceptedService::new(
        AdminServer::from_arc(handlers.admin.clone()),
        move |req| admin_auth.check(req),
    );
    if !own_listener {
        return Ok((routes.add_service(admin_service), None));
    }
    let (v1, v1alpha) = reflection()?;
    let admin_routes =
        tonic::service::Routes::new(admin_service).add_service(v1).add_service(v1alpha).add_service(health_service);
    Ok((routes, Some(admin_routes)))
}

/// The longest a call may run: `limits.max_call_timeout` of the serving config, which follows
/// reloads. The transports cut a call whose upload outlives it.
fn call_ceiling(registry: &Registry, at_startup: std::time::Duration) -> transport::CallCeiling {
    let registry = registry.clone();
    Arc::new(move || registry.load().map_or(at_startup, |state| state.config.limits.max_call_timeout))
}

/// Reloads on SIGHUP and, with `server.watch_config`, when the file's content changes.
fn watch_for_reloads(config: &Config, reload: &ReloadHandle, signal: &ShutdownSignal) {
    tokio::spawn(reload::on_sighup(reload.clone(), signal.clone()));
    if config.server.watch_config {
        tokio::spawn(reload::watch(
            config.source.clone(),
            config.server.watch_interval,
            config.source_sha256.clone(),
            reload.clone(),
            signal.clone(),
        ));
    }
}

/// The drain: health NOT_SERVING at once, calls served for `drain_delay`, then the listeners
/// close and open calls get `shutdown_grace` (in the transports) to finish.
async fn drain(
    config: &Config,
    health: &tonic_health::server::HealthReporter,
    ready: &AtomicBool,
    stop_transport: Shutdown,
    listeners: Listeners,
) {
    tracing::info!(
        drain_delay = ?config.server.drain_delay,
        "shutting down: health NOT_SERVING; calls are served until the drain delay ends, then connections close"
    );
    ready.store(false, Ordering::Relaxed);
    set_health(health, ServingStatus::NotServing).await;
    tokio::time::sleep(config.server.drain_delay).await;
    stop_transport.trigger();
    if let Err(e) = listeners.grpc.await {
        tracing::error!(error = %e, "gRPC server task panicked");
    }
    if let Some(t) = listeners.admin {
        let _ = t.await;
    }
    if let Some(t) = listeners.api {
        let _ = t.await;
    }
    let _ = listeners.http.await;
}

/// Waits, at most `grace` each, for the worker threads (their queues closed with the serving
/// state) and then the writers of the disagreement log, the labelling queue and the journal,
/// which the serving states and shadows held the last handles of: each drains its queue to disk
/// before it exits, so no record queued before the signal is lost.
async fn stop_workers(
    grace: std::time::Duration,
    threads: WorkerThreads,
    writer_threads: Vec<std::thread::JoinHandle<()>>,
) {
    let threads = std::mem::take(&mut *threads.lock().unwrap_or_else(|p| p.into_inner()));
    let _ = tokio::time::timeout(grace, tokio::task::spawn_blocking(move || loader::join_all(threads))).await;
    for thread in writer_threads {
        let _ = tokio::time::timeout(grace, tokio::task::spawn_blocking(move || thread.join())).await;
    }
}

type WorkerThreads = Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>;

/// Sets up ONNX Runtime, the disagreement log, the labelling queue and the journal (bound for the
/// process's life; their writer threads are returned), then loads the
/// start-up config through the same path every reload takes. On blocking threads: file IO and
/// model loads.
async fn load(
    config: &Config,
    registry: Registry,
    wrap: Option<Wrap>,
) -> anyhow::Result<(Reloader, Vec<std::thread::JoinHandle<()>>, WorkerThreads)> {
    let setup_config = config.clone();
    let setup = tokio::task::spawn_blocking(move || {
        let env = runtime::environment(&setup_config.server.onnxruntime_lib).map_err(|e| e.to_string())?;
        let log = match &setup_config.disagreement_log {
            None => None,
            Some(c) => Some(
                DisagreementLog::start(c.clone())
                    .map_err(|e| format!("shadow.disagreement_log.path: cannot open {}: {e}", c.path.display()))?,
            ),
        };
        let labelling = match &setup_config.labelling {
            None => None,
            Some(c) => Some(
                LabellingQueue::start(c.clone())
                    .map_err(|e| format!("labelling.path: cannot open {}: {e}", c.path.display()))?,
            ),
        };
        let journal = start_journal(&setup_config)?;
        Ok::<_, String>((env, log, labelling, journal))
    })
    .await
    .context("start-up panicked")?;
    let (env, log, labelling, journal) = setup.map_err(|e| anyhow::anyhow!(e))?;
    let mut log_thread = Vec::new();
    let log = log.map(|(l, t)| {
        log_thread.push(t);
        l
    });
    let labelling = labelling.map(|(q, t)| {
        log_thread.push(t);
        q
    });
    let journal = journal.map(|(j, t)| {
        log_thread.push(t);
        j
    });
    let threads = Arc::new(Mutex::new(Vec::new()));
    let reloader = Arc::new(Reloader {
        config_path: config.source.clone(),
        overrides: config.overrides.clone(),
        registry,
        backends: match wrap {
            Some(wrap) => Backends::wrapped(env, wrap),
            None => Backends::new(env),
        },
        log,
        labelling,
        journal,
        threads: threads.clone(),
        applied_inputs: Mutex::new(None),
    });
    let inputs = reload::Inputs::of(config);
    let startup = Arc::new(config.clone());
    let r = reloader.clone();
    let outcome = tokio::task::spawn_blocking(move || r.apply_config(startup, ReloadTrigger::Startup))
        .await
        .context("model loading panicked")?;
    if !outcome.applied {
        anyhow::bail!("{} problem(s) loading models:\n  {}", outcome.errors.len(), outcome.errors.join("\n  "));
    }
    *reloader.applied_inputs.lock().unwrap_or_else(|p| p.into_inner()) = Some(inputs);
    let reloader = Arc::into_inner(reloader).context("reloader still shared after start-up")?;
    Ok((reloader, log_thread, threads))
}

/// The decision journal, when `[journal]` is configured: opened (a torn last line cut) before
/// anything is served, so a path it cannot write stops start-up instead of losing records.
fn start_journal(config: &Config) -> Result<Option<(Journal, std::thread::JoinHandle<()>)>, String> {
    let Some(c) = &config.journal else { return Ok(None) };
    Journal::start(c.clone()).map(Some).map_err(|e| format!("journal.path: cannot open {}: {e}", c.path.display()))
}
