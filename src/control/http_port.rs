//! The HTTP side port: Prometheus `/metrics`, and `/health/live` and `/health/ready` for
//! orchestrators that probe over HTTP. Served by hyper's HTTP/1.1 server, one request per
//! connection, each connection with one deadline for reading the request and writing the answer.
//!
//! Slots are bounded so that clients that trickle bytes cannot keep a probe or a scrape out: when
//! they run out, the oldest connection that has had [`GRACE`] to send its request is closed to make
//! room, one still waiting for its request head before one being answered. A connection younger
//! than that is never the one closed: under a burst of new connections the accept loop runs ahead
//! of the connections' own tasks, so a probe whose request is already in its socket would
//! otherwise be taken for a slow one. Up to [`HARD_LIMIT`] connections are held when every
//! connection is that young; past it the newcomer is refused.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::control::scrape::Renderer;
use crate::shutdown::ShutdownSignal;

/// Connections held before the oldest is closed for a newcomer.
const MAX_CONNECTIONS: usize = 64;
/// Connections held at most, reached only while every connection is younger than [`GRACE`].
const HARD_LIMIT: usize = 2 * MAX_CONNECTIONS;
/// How long a connection is safe from eviction. A probe on loopback sends its request with the
/// connection and is answered in milliseconds; to keep every slot this young an attacker has to
/// open `HARD_LIMIT / GRACE` (640) connections a second.
const GRACE: Duration = Duration::from_millis(200);
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// From accept to the last byte of the answer. A scrape of a few hundred kilobytes on loopback
/// takes milliseconds; a client that needs longer is not a probe.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// One open connection: when it was accepted, whether its request head has arrived, and the
/// sender that closes it.
struct Slot {
    accepted: Instant,
    answering: Arc<AtomicBool>,
    close: oneshot::Sender<()>,
}

/// Open connections by age (ids increase).
#[derive(Default)]
struct Open {
    next_id: u64,
    slots: BTreeMap<u64, Slot>,
}

impl Open {
    /// Makes room for a connection accepted `now`: false when it has to be refused.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.slots.len() < MAX_CONNECTIONS {
            return true;
        }
        let old_enough = |slot: &Slot| now.duration_since(slot.accepted) >= GRACE;
        let victim = self
            .slots
            .iter()
            .find(|(_, slot)| old_enough(slot) && !slot.answering.load(Ordering::Relaxed))
            .or_else(|| self.slots.iter().find(|(_, slot)| old_enough(slot)))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.slots.remove(&id)) {
            Some(slot) => {
                let _ = slot.close.send(());
                true
            }
            None => self.slots.len() < HARD_LIMIT,
        }
    }
}

/// Serves until shutdown. `ready` is true while every live model is loaded and not draining.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, ready: Arc<AtomicBool>, shutdown: ShutdownSignal) {
    let open = Arc::new(Mutex::new(Open::default()));
    let renderer = Renderer::new(metrics);
    let gauge = crate::metrics::connections_open("metrics");
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(false).max_buf_size(MAX_REQUEST_HEAD);
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let now = Instant::now();
        let admitted = {
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            open.make_room(now).then(|| {
                let (close, closed) = oneshot::channel();
                let answering = Arc::new(AtomicBool::new(false));
                let id = open.next_id;
                open.next_id += 1;
                open.slots.insert(id, Slot { accepted: now, answering: answering.clone(), close });
                gauge.set(open.slots.len() as f64);
                (id, closed, answering)
            })
        };
        let Some((id, closed, answering)) = admitted else {
            tracing::debug!("metrics connection refused: every slot is taken by a connection younger than the grace");
            continue;
        };
        let (renderer, ready, open, gauge) = (renderer.clone(), ready.clone(), open.clone(), gauge.clone());
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                answering.store(true, Ordering::Relaxed);
                let (renderer, ready) = (renderer.clone(), ready.clone());
                async move { Ok::<_, Infallible>(respond(&request, &renderer, &ready).await) }
            }),
        );
        tokio::spawn(async move {
            tokio::select! {
                result = tokio::time::timeout(CONNECTION_DEADLINE, connection) => match result {
                    Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                    Err(_) => tracing::debug!("metrics connection closed at its deadline"),
                    Ok(Ok(())) => {}
                },
                _ = closed => tracing::debug!("metrics connection closed to make room for a new one"),
            }
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            open.slots.remove(&id);
            gauge.set(open.slots.len() as f64);
        });
    }
}

async fn respond(request: &Request<Incoming>, renderer: &Renderer, ready: &AtomicBool) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", renderer.render().await),
        "/health/live" => answer(StatusCode::OK, "text/plain", "live\n"),
        "/health/ready" if ready.load(Ordering::Relaxed) => answer(StatusCode::OK, "text/plain", "ready\n"),
        "/health/ready" => answer(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
        _ => answer(StatusCode::NOT_FOUND, "text/plain", "try /metrics, /health/live or /health/ready\n"),
    }
}

fn answer(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_with(ages_and_answering: &[(Duration, bool)], now: Instant) -> (Open, Vec<oneshot::Receiver<()>>) {
        let mut open = Open::default();
        let mut closed = Vec::new();
        for &(age, answering) in ages_and_answering {
            let (close, rx) = oneshot::channel();
            let slot = Slot { accepted: now - age, answering: Arc::new(AtomicBool::new(answering)), close };
            open.slots.insert(open.next_id, slot);
            open.next_id += 1;
            closed.push(rx);
        }
        (open, closed)
    }

    #[test]
    fn the_oldest_waiting_connection_past_the_grace_makes_room() {
        let now = Instant::now();
        let mut ages =
            vec![(Duration::from_secs(3), true), (Duration::from_secs(2), false), (Duration::from_secs(1), false)];
        ages.resize(MAX_CONNECTIONS, (Duration::ZERO, false));
        let (mut open, mut closed) = open_with(&ages, now);
        assert!(open.make_room(now));
        assert!(closed[1].try_recv().is_ok(), "the oldest connection still waiting for its request is closed");
        assert!(
            closed[0].try_recv().is_err(),
            "a connection being answered is closed only when no waiting one is old enough"
        );
        assert!(closed[2].try_recv().is_err());
        assert_eq!(open.slots.len(), MAX_CONNECTIONS - 1);
    }

    #[test]
    fn a_connection_being_answered_goes_before_a_young_one() {
        let now = Instant::now();
        let mut ages = vec![(Duration::from_secs(1), true)];
        ages.resize(MAX_CONNECTIONS, (Duration::ZERO, false));
        let (mut open, mut closed) = open_with(&ages, now);
        assert!(open.make_room(now));
        assert!(closed[0].try_recv().is_ok());
        assert!(closed[1..].iter_mut().all(|rx| rx.try_recv().is_err()));
    }

    #[test]
    fn young_connections_are_never_closed_and_the_hard_limit_refuses_newcomers() {
        let now = Instant::now();
        let (mut open, mut closed) = open_with(&vec![(GRACE / 2, false); MAX_CONNECTIONS], now);
        assert!(open.make_room(now), "past the soft limit while every connection is young");
        let (mut full, _) = open_with(&vec![(GRACE / 2, false); HARD_LIMIT], now);
        assert!(!full.make_room(now), "the newcomer is refused at the hard limit");
        assert!(closed.iter_mut().all(|rx| rx.try_recv().is_err()), "no young connection was closed");
        assert_eq!(full.slots.len(), HARD_LIMIT);
    }
}
