//! The HTTP side port: Prometheus `/metrics`, and `/health/live` and `/health/ready` for
//! orchestrators that probe over HTTP. Served by hyper's HTTP/1.1 server, one request per
//! connection, each connection with one deadline for reading the request and writing the answer.
//! Slots are bounded; when they run out the oldest connection (the slowest to finish) is closed
//! to make room, so clients that trickle bytes cannot keep a probe or a scrape out.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::shutdown::ShutdownSignal;

const MAX_CONNECTIONS: usize = 64;
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// From accept to the last byte of the answer. A scrape of a few hundred kilobytes on loopback
/// takes milliseconds; a client that needs longer is not a probe.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);

/// Open connections by age (ids increase), each with the sender that closes it.
#[derive(Default)]
struct Open {
    next_id: u64,
    closers: BTreeMap<u64, oneshot::Sender<()>>,
}

/// Serves until shutdown. `ready` is true while every live model is loaded and not draining.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, ready: Arc<AtomicBool>, shutdown: ShutdownSignal) {
    let open = Arc::new(Mutex::new(Open::default()));
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
        let (id, closed) = {
            let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
            if open.closers.len() >= MAX_CONNECTIONS
                && let Some((_, oldest)) = open.closers.pop_first()
            {
                let _ = oldest.send(());
            }
            let (close, closed) = oneshot::channel();
            let id = open.next_id;
            open.next_id += 1;
            open.closers.insert(id, close);
            (id, closed)
        };
        let (metrics, ready, open) = (metrics.clone(), ready.clone(), open.clone());
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                let answer = respond(&request, &metrics, &ready);
                async move { Ok::<_, Infallible>(answer) }
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
            open.lock().unwrap_or_else(|e| e.into_inner()).closers.remove(&id);
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &PrometheusHandle, ready: &AtomicBool) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => answer(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
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
