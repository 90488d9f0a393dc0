//! The HTTP/JSON API on its own listener (`server.http_listen`, off when unset): `POST
//! /v1/classify`, `POST /v1/verdicts` and `GET /v1/models`, each body the proto3 JSON mapping of
//! the gRPC message, so a body that works with grpcurl works with curl (docs/http.md).
//!
//! Every call is answered by the very handlers gRPC uses (`api`): the same validation, limits,
//! tokens and error texts, by construction. What is HTTP's own is here and in `api`: HTTP/1.1
//! over hyper (with TLS when `[tls]` is set, offered as `http/1.1`), the connection caps of the
//! gRPC listener (`server.max_connections`, `server.max_connections_per_peer`), the request head
//! within `server.handshake_timeout` (which also closes a kept-alive connection idle that long),
//! a body of at most `limits.max_message_bytes` received within the call's deadline, and the
//! one table from status codes to HTTP statuses (`status`).
//!
//! A connection that ends cleanly closes lingering (`serving::linger`), so a client still
//! sending a body the server refused to read (413, 429, 504) reads the answer instead of a reset.
//! At shutdown it stops accepting with the gRPC listeners, lets the calls in flight finish
//! within `server.shutdown_grace`, then closes what is left.

pub mod api;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::metrics;
use crate::request::Caller;
use crate::serving::grpc::transport::{Slot, Slots, accept};
use crate::serving::linger::{self, Linger};
use crate::serving::tls::Tls;
use crate::shutdown::ShutdownSignal;

/// The listener's name in metrics (`listener="http"`) and logs.
pub(crate) const LISTENER: &str = "http";
/// Bytes of request head (request line and headers) a connection may send: the gRPC listener's
/// header bound.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the listener needs from the config.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// TLS handshake, and then each request head, within this.
    pub handshake_timeout: Duration,
    /// After shutdown starts, how long calls in flight get to finish.
    pub shutdown_grace: Duration,
}

impl HttpSettings {
    pub fn new(server: &crate::config::ServerConfig) -> HttpSettings {
        HttpSettings {
            max_connections: server.max_connections,
            max_connections_per_peer: server.max_connections_per_peer,
            handshake_timeout: server.handshake_timeout,
            shutdown_grace: server.shutdown_grace,
        }
    }
}

/// Accepts connections until shutdown, then waits up to `shutdown_grace` for the calls in
/// flight (each connection closes once its call is answered) before closing what is left.
pub async fn serve(
    listener: TcpListener,
    api: api::Api,
    settings: HttpSettings,
    tls: Option<Arc<Tls>>,
    shutdown: ShutdownSignal,
) {
    let slots = Slots::new(LISTENER, settings.max_connections, settings.max_connections_per_peer);
    let graceful = GracefulShutdown::new();
    // Set when the grace is over: connections still open then are dropped. Every connection and
    // lingering close holds a receiver; the sender sees it closed once all of them ended.
    let (close, closing) = watch::channel(false);
    let lingering = linger::Places::new(settings.max_connections);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(settings.handshake_timeout).max_buf_size(MAX_REQUEST_HEAD);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = accept(LISTENER, &listener) => accepted,
        };
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics::transport_refused(LISTENER, refusal);
                tracing::debug!(listener = LISTENER, peer = %peer, reason = refusal.as_str(), "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            api: api.clone(),
            settings,
            watcher: graceful.watcher(),
            closing: closing.clone(),
            lingering: lingering.clone(),
            _slot: slot,
        };
        tokio::spawn(connection.start(stream, tls.as_ref().map(|t| t.http_acceptor())));
    }
    drop((listener, closing));
    let drained = async {
        graceful.shutdown().await;
        close.closed().await;
    };
    if tokio::time::timeout(settings.shutdown_grace, drained).await.is_err() {
        tracing::warn!(
            listener = LISTENER,
            grace = ?settings.shutdown_grace,
            "calls still open after server.shutdown_grace; closing them"
        );
        let _ = close.send(true);
    }
}

/// One accepted connection, before its (optional) TLS handshake.
struct Connection {
    builder: hyper::server::conn::http1::Builder,
    api: api::Api,
    settings: HttpSettings,
    watcher: hyper_util::server::graceful::Watcher,
    /// True once the shutdown grace is over.
    closing: watch::Receiver<bool>,
    lingering: linger::Places,
    _slot: Slot,
}

impl Connection {
    async fn start(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let mut closing = self.closing.clone();
        let grace_over = Box::pin(async move {
            let _ = closing.wait_for(|closing| *closing).await;
        });
        let (stream, linger) = self.lingering.socket(stream, grace_over);
        match tls {
            None => self.serve(stream, linger).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => self.serve(stream, linger).await,
                    Ok(Err(e)) => {
                        metrics::tls_handshake_failed(LISTENER);
                        tracing::debug!(listener = LISTENER, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::tls_handshake_failed(LISTENER);
                        tracing::debug!(listener = LISTENER, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    /// Serves the connection until it ends; it closes lingering unless it ended in an error or
    /// the grace ran out.
    async fn serve<IO>(self, io: IO, linger: Linger)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let api = self.api;
        let caller = Caller::new_connection();
        let service = hyper::service::service_fn(move |request| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(api.answer(request, caller).await) }
        });
        // Pinned here rather than in `select!`, which would drop it, and the socket with it,
        // before the branch below can ask for a lingering close.
        let connection = self.watcher.watch(self.builder.serve_connection(TokioIo::new(io), service));
        tokio::pin!(connection);
        let mut closing = self.closing;
        tokio::select! {
            result = connection.as_mut() => match result {
                // Ended by the client, or by us after an answer: the client may still be sending.
                Ok(()) => linger.close(true),
                Err(e) => tracing::debug!(listener = LISTENER, error = %e, "connection ended with an error"),
            },
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }
}
