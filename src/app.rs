//! Wiring: bind the listeners, start gRPC (Moderation, health, reflection) and the metrics port,
//! load the models, flip health to SERVING, and on shutdown drain in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use crate::classify::Classifier;
use crate::config::Config;
use crate::disagreement::DisagreementLog;
use crate::grpc::pb::moderation_server::ModerationServer;
use crate::grpc::{pb, service::ModerationService, transport};
use crate::registry::Registry;
use crate::shutdown::{Shutdown, ShutdownSignal};
use crate::{admin, loader, metrics, runtime};

/// The fully-qualified name health checks use for the Moderation service.
pub const MODERATION_SERVICE: &str = "modserve.v1.Moderation";

/// A started server. Models may still be loading: health says NOT_SERVING until they are.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Binds both listeners (so port 0 works and the addresses are known), then serves in the
    /// background. Fails at once only if a listener cannot be bound or metrics cannot install.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let grpc = TcpListener::bind(config.server.grpc_listen)
            .await
            .with_context(|| format!("server.grpc_listen: cannot listen on {}", config.server.grpc_listen))?;
        let metrics_listener = TcpListener::bind(config.server.metrics_listen)
            .await
            .with_context(|| format!("server.metrics_listen: cannot listen on {}", config.server.metrics_listen))?;
        let grpc_addr = grpc.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        let prometheus = metrics::install().map_err(|e| anyhow::anyhow!("cannot install metrics: {e}"))?;
        let (shutdown, signal) = Shutdown::new();
        tracing::info!(grpc = %grpc_addr, metrics = %metrics_addr, config = %config.source.display(), "listening");
        let task = tokio::spawn(run(config, grpc, metrics_listener, prometheus, signal));
        Ok(Server { grpc_addr, metrics_addr, shutdown, task })
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

async fn run(
    config: Config,
    grpc: TcpListener,
    metrics_listener: TcpListener,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    signal: ShutdownSignal,
) -> anyhow::Result<()> {
    let registry = Registry::default();
    let ready = Arc::new(AtomicBool::new(false));
    let (health, health_service) = tonic_health::server::health_reporter();
    for name in ["", MODERATION_SERVICE] {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let limits = config.limits;
    let moderation =
        ModerationServer::new(ModerationService::new(Classifier::new(registry.clone()), limits, signal.clone()))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(limits.max_message_bytes.saturating_mul(4));
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(moderation)
        .prepare();
    // The transport stops on its own signal, `drain_delay` after shutdown starts, so load
    // balancers polling health see NOT_SERVING while calls still get a clean UNAVAILABLE.
    let (stop_transport, transport_signal) = Shutdown::new();
    let grpc_task = tokio::spawn(transport::serve(grpc, routes, config.server.transport(), transport_signal));
    let admin_task = tokio::spawn(admin::serve(metrics_listener, prometheus, ready.clone(), signal.clone()));

    // Load on a blocking thread: file IO, hashing and ONNX Runtime session builds.
    let started = Instant::now();
    let load_config = config.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let env = runtime::environment(&load_config.server.onnxruntime_lib).map_err(|e| vec![e.to_string()])?;
        let log =
            match &load_config.disagreement_log {
                None => None,
                Some(c) => Some(DisagreementLog::start(c.clone()).map_err(|e| {
                    vec![format!("shadow.disagreement_log.path: cannot open {}: {e}", c.path.display())]
                })?),
            };
        let loaded = loader::load(&load_config, &env, false, log.as_ref().map(|(l, _)| l))?;
        Ok::<_, Vec<String>>((loaded, log))
    })
    .await
    .context("model loading panicked")?;
    let (loaded, log) = match loaded {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                tracing::error!(error = %e, "cannot load model");
            }
            stop_transport.trigger();
            let _ = grpc_task.await;
            admin_task.abort();
            anyhow::bail!("{} problem(s) loading models:\n  {}", errors.len(), errors.join("\n  "));
        }
    };
    let tasks: Vec<String> = loaded.state.tasks.iter().map(|t| format!("{}={}", t.name, t.live.spec().name)).collect();
    registry.store(Some(Arc::new(loaded.state)));
    for name in ["", MODERATION_SERVICE] {
        health.set_service_status(name, ServingStatus::Serving).await;
    }
    ready.store(true, Ordering::Relaxed);
    tracing::info!(tasks = ?tasks, load_ms = started.elapsed().as_millis() as u64, "serving");

    signal.clone().wait().await;
    tracing::info!("shutting down: health NOT_SERVING, new calls UNAVAILABLE, draining in-flight calls");
    ready.store(false, Ordering::Relaxed);
    for name in ["", MODERATION_SERVICE] {
        health.set_service_status(name, ServingStatus::NotServing).await;
    }
    tokio::time::sleep(config.server.drain_delay).await;
    stop_transport.trigger();
    let grace = config.server.shutdown_grace;
    if let Err(e) = grpc_task.await {
        tracing::error!(error = %e, "gRPC server task panicked");
    }
    let _ = admin_task.await;
    // Drop the serving state: queues close, workers finish what is queued and exit.
    registry.store(None);
    let threads = loaded.threads;
    let _ = tokio::time::timeout(grace, tokio::task::spawn_blocking(move || loader::join_all(threads))).await;
    // The shadows held the last log handles: the writer flushes and exits.
    if let Some((handle, thread)) = log {
        drop(handle);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    tracing::info!("stopped");
    Ok(())
}
