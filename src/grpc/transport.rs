//! The HTTP/2 transport for gRPC: an accept loop over hyper with graceful drain.
//!
//! We serve tonic's routes with hyper directly instead of `tonic::transport::Server` because
//! the latter wraps every call in its own `grpc-timeout` enforcement, which answers an expired
//! call CANCELLED ("Timeout expired") before our handler can say DEADLINE_EXCEEDED and count
//! the dropped work. Here the handler owns the deadline.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::shutdown::ShutdownSignal;

/// HTTP/2 settings, from the config.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// Concurrent calls one connection may have open, so one client cannot take every slot.
    pub max_concurrent_streams: u32,
    /// How often to ping an idle connection, and how long to wait for the answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// After shutdown starts, how long open calls (streams included) get to finish.
    pub shutdown_grace: Duration,
}

/// Accepts connections until shutdown, then stops accepting, sends GOAWAY on every connection
/// and waits up to `shutdown_grace` for the calls in flight.
pub async fn serve(listener: TcpListener, routes: Routes, settings: TransportSettings, shutdown: ShutdownSignal) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "gRPC listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(routes.clone());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gRPC connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace = ?settings.shutdown_grace, "calls still open after server.shutdown_grace; closing them");
    }
}
