//! The HTTP/2 transport for gRPC: an accept loop over hyper, optional TLS, connection limits (in
//! all and per peer), a handshake deadline, bounded uploads (`upload`), call deadlines counted
//! from the arrival of the headers, idle connections closed, and a drain that ends in a hard
//! close. A connection the server ends with GOAWAY closes lingering (`serving::linger`).
//!
//! We serve tonic's routes with hyper directly instead of `tonic::transport::Server` because
//! the latter wraps every call in its own `grpc-timeout` enforcement, which answers an expired
//! call CANCELLED ("Timeout expired") before our handler can say DEADLINE_EXCEEDED and count
//! the dropped work. Here the handler owns the deadline.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::service::Routes;
use tower::ServiceExt;

use super::delivery::{Deliveries, Open};
use super::endless;
use super::status;
use super::upload::{BoundedBody, Budget, Parked};
use crate::metrics::{self, TransportRefusal};
use crate::request::Caller;
use crate::serving::linger::{self, Linger};
use crate::serving::tls::Tls;
use crate::shutdown::ShutdownSignal;

/// HTTP/2 frames a peer may make us buffer per connection before we stop reading: bounded so a
/// client cannot grow our memory with headers or unacknowledged resets. The header bound is
/// above what a proxy forwards (Envoy: 60 KiB): h2 answers a call's headers a little over the
/// bound with 431, but headers far over it end the whole connection (COMPRESSION_ERROR), and
/// with it the calls of every other client a proxy multiplexes onto it (at 16 KiB, 100 KiB of
/// metadata on one grpcio call ended a neighbouring stream on the same channel).
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 256;
const MAX_SEND_BUFFER_BYTES: usize = 1024 * 1024;
/// What a stream may upload before we read it: a call refused at its message's prefix (a full
/// verdict queue, a message over a limit) has cost us at most this much of an upload its client
/// had already sent; at hyper's 1 MiB each refused 2 MiB verdict call pushed 1 MiB through our
/// threads. 256 KiB per round trip still moves a large request fast on a LAN. The connection's
/// window stays at 1 MiB: h2 sizes its budget for small DATA frames held unread from it, and at
/// 64 KiB (hyper's adaptive window) 130 streams that had each sent a 5-byte frame and waited
/// unread (attack b) had the connection closed with ENHANCE_YOUR_CALM, a fate small calls waiting
/// for a turn would share at a few hundred per connection.
const STREAM_WINDOW_BYTES: u32 = 256 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
/// The HTTP/2 client preface (`PRI * HTTP/2.0...`) is 24 bytes, and a SETTINGS frame header
/// follows it: a connection that has sent fewer bytes has not finished its handshake.
const HANDSHAKE_BYTES: u64 = 24 + 9;
/// How often a connection with answers open looks at how long they have waited for the client.
const CHECK_ANSWERS_EVERY: Duration = Duration::from_millis(250);
/// How much longer than a call's deadline the transport waits before cutting it: the handler
/// owns the deadline and answers first, with its own message, whenever the call got that far.
const DEADLINE_SLACK: Duration = Duration::from_millis(50);

/// HTTP/2 settings and connection limits, from the config.
#[derive(Debug, Clone, Copy)]
pub struct TransportSettings {
    /// Concurrent calls one connection may have open, so one client cannot take every slot.
    pub max_concurrent_streams: u32,
    /// How often to ping an idle connection, and how long to wait for the answer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// A connection on which no call started for this long gets GOAWAY; zero = never.
    pub idle_timeout: Duration,
    /// TLS handshake plus HTTP/2 preface must be done within this after accept.
    pub handshake_timeout: Duration,
    /// A connection whose answer has waited this long for its client to take it is closed
    /// (`delivery`).
    pub send_timeout: Duration,
    /// Open connections on this listener, and from one peer address.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Request bytes being received (not yet decoded), process-wide and per connection.
    pub max_buffered_bytes: usize,
    pub max_buffered_bytes_per_connection: usize,
    /// After shutdown starts, how long open calls (streams included) get to finish.
    pub shutdown_grace: Duration,
}

impl TransportSettings {
    pub fn new(server: &crate::config::ServerConfig) -> TransportSettings {
        TransportSettings {
            max_concurrent_streams: server.max_concurrent_streams,
            keepalive_interval: server.keepalive_interval,
            keepalive_timeout: server.keepalive_timeout,
            idle_timeout: server.idle_timeout,
            handshake_timeout: server.handshake_timeout,
            send_timeout: server.send_timeout,
            max_connections: server.max_connections,
            max_connections_per_peer: server.max_connections_per_peer,
            max_buffered_bytes: server.max_buffered_request_bytes,
            max_buffered_bytes_per_connection: server.max_buffered_request_bytes_per_connection,
            shutdown_grace: server.shutdown_grace,
        }
    }
}

/// When a call arrived and the deadline it asked for (`grpc-timeout`), put in the request's
/// extensions by the transport, so a handler counts its deadline from the arrival of the
/// headers rather than from the end of the upload.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    pub deadline: Option<Instant>,
    /// The connection it came on, whose calls take turns with other connections' in a model's
    /// queue.
    pub caller: Caller,
}

/// The longest any call may run (`limits.max_call_timeout`, which a reload can change).
pub type CallCeiling = Arc<dyn Fn() -> Duration + Send + Sync>;

/// A check of each request message's declared length, made at its 5-byte prefix before any of
/// it is buffered: `Err` refuses the call there (see `upload::MessageCheck`).
pub use super::upload::MessageCheck;

/// For a call's path, the check its messages pass before they are read, if any.
pub type Admission = Arc<dyn Fn(&str) -> Option<MessageCheck> + Send + Sync>;

/// What bounds every call of a listener: how long it may run, and what its messages must pass
/// before they are read.
#[derive(Clone)]
pub struct CallLimits {
    pub ceiling: CallCeiling,
    pub admission: Admission,
}

/// Where the accept loop tells connections to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// GOAWAY: finish the calls in flight.
    Draining,
    /// `shutdown_grace` is over: close now.
    Closing,
}

/// Accepts connections until shutdown, then stops accepting, sends GOAWAY on every connection
/// and waits up to `shutdown_grace` for the calls in flight before closing what is left. With
/// `tls`, every connection is a TLS handshake first, with the certificate current at that moment.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    routes: Routes,
    settings: TransportSettings,
    limits: CallLimits,
    tls: Option<Arc<Tls>>,
    shutdown: ShutdownSignal,
) {
    // Every connection holds a receiver; the sender sees it closed once every connection ended.
    let (phase, phases) = watch::channel(Phase::Serving);
    let builder = http2_builder(&settings);
    let slots = Slots::new(name, settings.max_connections, settings.max_connections_per_peer);
    let process_budget = Budget::new(settings.max_buffered_bytes, TransportRefusal::UploadBudgetProcess)
        .shown(metrics::request_bytes_receiving(name));
    let answers = Open::default();
    let endless_open = endless::Open::default();
    let lingering = linger::Places::new(settings.max_connections);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = accept(name, &listener) => accepted,
        };
        let slot = match slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                // Closed at once: a flood of connections costs us an accept and a close each.
                metrics::transport_refused(name, refusal);
                tracing::debug!(listener = name, peer = %peer, reason = refusal.as_str(), "connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            name,
            builder: builder.clone(),
            routes: routes.clone(),
            settings,
            limits: limits.clone(),
            budgets: (
                Budget::new(settings.max_buffered_bytes_per_connection, TransportRefusal::UploadBudgetConnection),
                process_budget.clone(),
            ),
            phase: phases.clone(),
            answers: answers.clone(),
            endless: endless_open.clone(),
            lingering: lingering.clone(),
            slot,
        };
        let tls = tls.as_ref().map(|t| t.acceptor());
        tokio::spawn(connection.start(stream, tls));
    }
    // Connections still in the listen backlog are reset when the listener closes; a proxy sees a
    // connection error (see docs/deploying.md).
    drop((listener, phases));
    drain(name, phase, settings.shutdown_grace).await;
}

fn http2_builder(settings: &TransportSettings) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .max_send_buf_size(MAX_SEND_BUFFER_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    builder
}

/// The next accepted connection; a failed accept is logged and retried.
pub(crate) async fn accept(name: &'static str, listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// GOAWAY on every connection, then up to `grace` for their calls before closing what is left.
async fn drain(name: &'static str, phase: watch::Sender<Phase>, grace: Duration) {
    let _ = phase.send(Phase::Draining);
    if tokio::time::timeout(grace, phase.closed()).await.is_err() {
        tracing::warn!(listener = name, grace = ?grace, "calls still open after server.shutdown_grace; closing them");
        let _ = phase.send(Phase::Closing);
        // Each connection drops at once on Closing; this only waits for the tasks to notice.
        let _ = tokio::time::timeout(Duration::from_secs(1), phase.closed()).await;
    }
}

/// Connection counts, per listener and per peer address (the HTTP/JSON listener counts its own
/// with these too).
#[derive(Clone)]
pub(crate) struct Slots {
    open: Arc<AtomicUsize>,
    per_peer: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
    max_per_peer: usize,
    gauge: ::metrics::Gauge,
}

/// A connection's place in `Slots`, given back when dropped.
pub(crate) struct Slot {
    slots: Slots,
    peer: IpAddr,
}

impl Slots {
    pub(crate) fn new(listener: &'static str, max: usize, max_per_peer: usize) -> Slots {
        let gauge = metrics::connections_open(listener);
        gauge.set(0.0);
        Slots { open: Arc::default(), per_peer: Arc::default(), max, max_per_peer, gauge }
    }

    pub(crate) fn take(&self, peer: IpAddr) -> Result<Slot, TransportRefusal> {
        let mut per_peer = self.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(TransportRefusal::ConnectionLimit);
        }
        let count = per_peer.entry(peer).or_insert(0);
        if *count >= self.max_per_peer {
            return Err(TransportRefusal::PeerConnectionLimit);
        }
        *count += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        self.gauge.increment(1.0);
        Ok(Slot { slots: self.clone(), peer })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_peer = self.slots.per_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
        self.slots.open.fetch_sub(1, Ordering::Relaxed);
        self.slots.gauge.decrement(1.0);
    }
}

/// One accepted connection, before its (optional) TLS handshake.
struct Connection {
    name: &'static str,
    builder: hyper::server::conn::http2::Builder<TokioExecutor>,
    routes: Routes,
    settings: TransportSettings,
    limits: CallLimits,
    /// The connection's own upload budget, and the process's.
    budgets: (Budget, Budget),
    phase: watch::Receiver<Phase>,
    /// Answers open on this listener (`delivery`).
    answers: Open,
    /// Health Watch and reflection streams open on this listener (`endless`).
    endless: endless::Open,
    /// Places for lingering closes on this listener.
    lingering: linger::Places,
    slot: Slot,
}

impl Connection {
    /// Runs the (optional) TLS handshake, then serves the connection.
    async fn start(self, stream: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>) {
        let accepted = Instant::now();
        let name = self.name;
        let mut phase = self.phase.clone();
        let grace_over = Box::pin(async move {
            let _ = phase.wait_for(|p| *p == Phase::Closing).await;
        });
        let (stream, linger) = self.lingering.socket(stream, grace_over);
        match tls {
            None => self.serve(stream, accepted, linger).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.settings.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => self.serve(stream, accepted, linger).await,
                    Ok(Err(e)) => {
                        metrics::tls_handshake_failed(name);
                        tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::tls_handshake_failed(name);
                        tracing::debug!(listener = name, "TLS handshake timed out");
                    }
                }
            }
        }
    }

    /// Serves the connection until it ends; it closes lingering when it ends after our GOAWAY.
    async fn serve<IO>(self, io: IO, accepted: Instant, linger: Linger)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (name, peer) = (self.name, self.slot.peer);
        // Milliseconds since `accepted` at which the last call started.
        let last_call = Arc::new(AtomicU64::new(0));
        let calls = Calls {
            name,
            caller: Caller::new_connection(),
            accepted,
            last_call: last_call.clone(),
            routes: self.routes,
            limits: self.limits,
            budgets: self.budgets,
            endless: (endless::Open::default(), self.endless),
            phase: self.phase.clone(),
        };
        let deliveries = Deliveries::new(self.answers);
        let tracked = deliveries.clone();
        let service = hyper::service::service_fn(move |request| {
            let (calls, tracked) = (calls.clone(), tracked.clone());
            async move {
                let response = calls.answer(request).await?;
                Ok::<_, Infallible>(response.map(|body| tracked.track(body)))
            }
        });
        let received = Arc::new(AtomicU64::new(0));
        let io = Counted { inner: io, received: received.clone() };
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let settings = self.settings;
        let (idle, mut phase) = (settings.idle_timeout, self.phase);
        let handshake_deadline = tokio::time::Instant::from_std(accepted + settings.handshake_timeout);
        let handshaken = || received.load(Ordering::Relaxed) >= HANDSHAKE_BYTES;
        let (mut closing, mut draining) = (false, false);
        let result = loop {
            let since_call =
                accepted.elapsed().saturating_sub(Duration::from_millis(last_call.load(Ordering::Relaxed)));
            if !closing && !idle.is_zero() && since_call >= idle {
                // GOAWAY: no new calls here; calls still open finish, then it closes.
                metrics::connection_closed_idle(name);
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            tokio::select! {
                result = connection.as_mut() => break result,
                changed = phase.changed() => {
                    let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Closing };
                    // A connection that never finished its handshake has no call to finish, and
                    // would hold the drain open until the grace ends: close it now.
                    if now == Phase::Closing || !handshaken() {
                        return;
                    }
                    draining = true;
                    if !closing {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
                // Armed while the preface is missing when the loop last went round; the preface
                // may have arrived since, so look again before closing.
                _ = tokio::time::sleep_until(handshake_deadline), if !handshaken() => {
                    if handshaken() {
                        continue;
                    }
                    metrics::transport_refused(name, TransportRefusal::HandshakeTimeout);
                    tracing::debug!(listener = name, "HTTP/2 preface not received in time; closing the connection");
                    return;
                }
                _ = tokio::time::sleep(idle.saturating_sub(since_call)), if !closing && !idle.is_zero() => {}
                // Arms the check below once an answer is open.
                _ = deliveries.opened(), if !deliveries.any_open() => {}
                _ = tokio::time::sleep(CHECK_ANSWERS_EVERY), if deliveries.any_open() => {
                    let (waited, limit) = (deliveries.longest_wait(), deliveries.limit(settings.send_timeout, draining));
                    if waited >= limit {
                        // Its calls are answered; only the client's taking of the answers is
                        // left, and it has stopped: close without a GOAWAY that would wait on them.
                        metrics::transport_refused(name, TransportRefusal::AnswerNotTaken);
                        tracing::debug!(
                            listener = name,
                            waited = ?waited,
                            "an answer waited for the client to take it (HTTP/2 flow control) past server.send_timeout; closing the connection"
                        );
                        return;
                    }
                }
            }
        };
        // Every call the client started before our GOAWAY is answered; one it sent after may
        // still be arriving.
        linger.close(closing && result.is_ok());
        if let Err(e) = result {
            match broke_protocol(&e) {
                Some(reason) => {
                    metrics::transport_refused(name, TransportRefusal::ProtocolError);
                    if let Some(closed) = PROTOCOL_ERRORS.note() {
                        tracing::warn!(
                            listener = name,
                            peer = %peer,
                            reason = ?reason,
                            closed,
                            "closed a connection that broke HTTP/2 (logged at most every 10s; closed = such connections since the last line, \
                             all counted in modserve_transport_refusals_total{{reason=\"protocol_error\"}})"
                        );
                    }
                }
                None => tracing::debug!(listener = name, error = %e, "connection ended with an error"),
            }
        }
    }
}

/// Connections closed for breaking HTTP/2: a flood of them (rapid reset opens and loses hundreds
/// a second) is one warning per period, not one per connection.
static PROTOCOL_ERRORS: crate::log_rate::Every = crate::log_rate::Every::new(Duration::from_secs(10));

/// The reason of the GOAWAY the server sent when `e` ended a connection for breaking HTTP/2;
/// `None` for anything else (the client went away, an I/O error, a GOAWAY the client sent).
fn broke_protocol(e: &hyper::Error) -> Option<h2::Reason> {
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.reason().filter(|_| h2.is_go_away() && h2.is_library());
        }
        source = error.source();
    }
    None
}

/// What every call on one connection shares: its routes, its budgets, and when a call last began.
#[derive(Clone)]
struct Calls {
    name: &'static str,
    caller: Caller,
    accepted: Instant,
    last_call: Arc<AtomicU64>,
    routes: Routes,
    limits: CallLimits,
    /// The connection's own upload budget, and the process's.
    budgets: (Budget, Budget),
    /// Health Watch and reflection streams open on this connection, and on the listener.
    endless: (endless::Open, endless::Open),
    /// Whether the listener is draining (an endless call then ends).
    phase: watch::Receiver<Phase>,
}

impl Calls {
    /// One call: its upload bounded, its deadline counted from the arrival of its headers.
    async fn answer(self, request: hyper::Request<Incoming>) -> Result<hyper::Response<tonic::body::Body>, Infallible> {
        let (name, arrived) = (self.name, Instant::now());
        self.last_call.store(arrived.duration_since(self.accepted).as_millis() as u64, Ordering::Relaxed);
        let asked = request.headers().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
        let ceiling = (self.limits.ceiling)();
        let limit = asked.map_or(ceiling, |asked| asked.min(ceiling));
        let method = status::counted_method(request.uri().path());
        let place = match endless::is_endless(request.uri().path()) {
            false => None,
            true => match endless::take(&self.endless.0, &self.endless.1) {
                Some(place) => Some(place),
                None => {
                    metrics::transport_refused(name, TransportRefusal::EndlessStreamLimit);
                    let status = tonic::Status::resource_exhausted(format!(
                        "at most {} health Watch and reflection streams may be open on one connection, and {} on the \
                         server; close one first",
                        endless::MAX_PER_CONNECTION,
                        endless::MAX_PER_LISTENER
                    ));
                    return Ok(status.into_http());
                }
            },
        };
        // A Classify call, and each message of a ClassifyStream, takes its turn once its whole
        // message is in (in the handler): a call whose upload stalls must not hold one (32
        // stalled uploads shut every other caller out). Until then its bytes stay reserved, so
        // the messages waiting are bounded too.
        let parked = matches!(method, Some("Classify" | "ClassifyStream")).then(Parked::default);
        let (connection_budget, process_budget) = self.budgets;
        let check = (self.limits.admission)(request.uri().path());
        let drained = || {
            let mut phase = self.phase.clone();
            async move {
                let _ = phase.wait_for(|p| *p != Phase::Serving).await;
            }
        };
        // An endless call ends both ways at drain: its answer, and its request, which a
        // reflection stream reads until the client stops.
        let request_end = place.as_ref().map(|_| drained());
        let mut request = request.map(|body| {
            BoundedBody::new(body, connection_budget, process_budget, move |why| metrics::transport_refused(name, why))
                .checked(check)
                .parking(parked.clone())
                .ending(request_end)
        });
        if let Some(parked) = parked {
            request.extensions_mut().insert(parked);
        }
        let deadline = asked.and_then(|a| arrived.checked_add(a));
        request.extensions_mut().insert(Arrival { at: arrived, deadline, caller: self.caller });
        let left = (limit + DEADLINE_SLACK).saturating_sub(arrived.elapsed());
        let answered = tokio::time::timeout(left, self.routes.oneshot(request)).await;
        match answered {
            Ok(response) => {
                let mut response = response.unwrap_or_else(|never| match never {});
                if let Some(place) = place {
                    let drained = drained();
                    response = response.map(|body| tonic::body::Body::new(endless::Ending::new(body, drained, place)));
                }
                Ok(match method {
                    Some(method) => answer_decode_failures_as_invalid(response, method, arrived),
                    None => response,
                })
            }
            Err(_) => {
                // Only a call whose handler never ran gets here (the handler answers at its
                // deadline): its upload was still going.
                metrics::transport_refused(name, TransportRefusal::UploadDeadline);
                let status = tonic::Status::deadline_exceeded(format!(
                    "deadline exceeded while the request was still being received ({limit:?} from the arrival of \
                     its headers; limits.max_call_timeout caps it)"
                ));
                Ok(status.into_http())
            }
        }
    }
}

/// The answer to a call whose request was not valid protobuf comes from tonic, before or
/// between handler runs, as INTERNAL: its status travels in the headers (trailers-only) or in
/// the trailers. This rewrites it to INVALID_ARGUMENT wherever it is, and counts the call
/// (`status::is_decode_failure`).
fn answer_decode_failures_as_invalid(
    response: hyper::Response<tonic::body::Body>,
    method: &'static str,
    arrived: Instant,
) -> hyper::Response<tonic::body::Body> {
    let (mut parts, body) = response.into_parts();
    if rewrite_decode_failure(&mut parts.headers, method, arrived) {
        return hyper::Response::from_parts(parts, body);
    }
    let body = body.map_frame(move |frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            rewrite_decode_failure(&mut trailers, method, arrived);
            hyper::body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    });
    hyper::Response::from_parts(parts, tonic::body::Body::new(body))
}

/// Rewrites a decode failure's `grpc-status` in `headers`; true if it did.
fn rewrite_decode_failure(headers: &mut hyper::HeaderMap, method: &'static str, arrived: Instant) -> bool {
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    // tonic percent-encodes the message; of the prefixes compared, only spaces are encoded.
    let message = headers.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or_default().replace("%20", " ");
    if !code.is_some_and(|c| status::is_decode_failure(tonic::Code::from(c), &message)) {
        return false;
    }
    headers.insert("grpc-status", hyper::header::HeaderValue::from(tonic::Code::InvalidArgument as i32));
    metrics::request_finished(
        method,
        metrics::Protocol::Grpc,
        status::code_name(tonic::Code::InvalidArgument),
        arrived.elapsed().as_secs_f64(),
    );
    true
}

/// An I/O stream that counts the bytes read from it, so the connection loop can tell whether
/// the peer has sent its HTTP/2 preface.
struct Counted<IO> {
    inner: IO,
    received: Arc<AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("1n"), Some(Duration::from_nanos(1)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
    }

    #[test]
    fn slots_cap_connections_per_peer_and_in_all() {
        let slots = Slots::new("test", 3, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = slots.take(a).unwrap();
        let _second = slots.take(a).unwrap();
        assert_eq!(slots.take(a).err(), Some(TransportRefusal::PeerConnectionLimit));
        let _third = slots.take(b).unwrap();
        assert_eq!(slots.take(b).err(), Some(TransportRefusal::ConnectionLimit));
        drop(first);
        assert!(slots.take(a).is_ok(), "a closed connection gives its slot back");
    }
}
