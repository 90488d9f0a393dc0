//! The HTTP/2 transport for gRPC: an accept loop over hyper, optional TLS, per-connection limits,
//! idle connections closed, and a graceful drain.
//!
//! We serve tonic's routes with hyper directly instead of `tonic::transport::Server` because
//! the latter wraps every call in its own `grpc-timeout` enforcement, which answers an expired
//! call CANCELLED ("Timeout expired") before our handler can say DEADLINE_EXCEEDED and count
//! the dropped work. Here the handler owns the deadline.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::service::Routes;
use tower::ServiceExt;

use crate::metrics;
use crate::shutdown::ShutdownSignal;
use crate::tls::Tls;

/// HTTP/2 frames a peer may make us buffer per connection before we stop reading: bounded so a
/// client cannot grow our memory with headers or unacknowledged resets.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
const MAX_SEND_BUFFER_BYTES: usize = 1024 * 1024;
/// A TLS handshake that takes longer is abandoned (a slow or silent client holds no slot).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 settings, from the config.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// Concurrent calls one connection may have open, so one client cannot take every slot.
    pub max_concurrent_streams: u32,
    /// How often to ping an idle connection, and how long to wait for the answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection on which no call started for this long gets GOAWAY; zero = never.
    pub idle_timeout: Duration,
    /// After shutdown starts, how long open calls (streams included) get to finish.
    pub shutdown_grace: Duration,
}

/// Accepts connections until shutdown, then stops accepting, sends GOAWAY on every connection
/// and waits up to `shutdown_grace` for the calls in flight. With `tls`, every connection is a
/// TLS handshake first, with the certificate current at that moment.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    routes: Routes,
    settings: TransportSettings,
    tls: Option<Arc<Tls>>,
    shutdown: ShutdownSignal,
) {
    // Every connection holds a receiver: `true` asks it to drain, and the sender sees it closed
    // once every connection has ended.
    let (drain, draining) = watch::channel(false);
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(MAX_SEND_BUFFER_BYTES);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            name,
            builder: builder.clone(),
            routes: routes.clone(),
            idle_timeout: settings.idle_timeout,
            drain: draining.clone(),
        };
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(connection.start(stream, tls));
    }
    // Connections still in the listen backlog are reset when the listener closes; a proxy sees a
    // connection error (see docs/deploying.md).
    drop((listener, draining));
    let _ = drain.send(true);
    if tokio::time::timeout(settings.shutdown_grace, drain.closed()).await.is_err() {
        tracing::warn!(listener = name, grace = ?settings.shutdown_grace, "calls still open after server.shutdown_grace; closing them");
    }
}

/// One accepted connection, before its (optional) TLS handshake.
struct Connection {
    name: &'static str,
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    routes: Routes,
    idle_timeout: Duration,
    drain: watch::Receiver<bool>,
}

impl Connection {
    /// Runs the (optional) TLS handshake, then serves the connection.
    async fn start(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let name = self.name;
        match tls {
            None => self.serve(stream).await,
            Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => self.serve(stream).await,
                Ok(Err(e)) => {
                    metrics::tls_handshake_failed(name);
                    tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics::tls_handshake_failed(name);
                    tracing::debug!(listener = name, "TLS handshake timed out");
                }
            },
        }
    }

    async fn serve<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Milliseconds since `opened` at which the last call started.
        let opened = Instant::now();
        let last_call = Arc::new(AtomicU64::new(0));
        let touch = last_call.clone();
        let routes = self.routes;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            touch.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
            let routes = routes.clone();
            async move { Ok::<_, Infallible>(routes.oneshot(request).await.unwrap_or_else(|never| match never {})) }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let (idle, mut drain) = (self.idle_timeout, self.drain);
        let mut closing = false;
        let result = loop {
            let since_call = opened.elapsed().saturating_sub(Duration::from_millis(last_call.load(Ordering::Relaxed)));
            if !closing && !idle.is_zero() && since_call >= idle {
                // GOAWAY: no new calls here; calls still open finish, then it closes.
                metrics::connection_closed_idle(self.name);
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            tokio::select! {
                result = connection.as_mut() => break result,
                _ = drain.changed(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep(idle.saturating_sub(since_call)), if !closing && !idle.is_zero() => {}
            }
        };
        if let Err(e) = result {
            tracing::debug!(listener = self.name, error = %e, "connection ended with an error");
        }
    }
}
