//! The HTTP side port: Prometheus `/metrics`, and `/health/live` and `/health/ready` for
//! orchestrators that probe over HTTP. A deliberately tiny HTTP/1.1 responder: one request per
//! connection, bounded header size, bounded connections, a read timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::shutdown::ShutdownSignal;

const MAX_CONNECTIONS: usize = 64;
const MAX_REQUEST_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves until shutdown. `ready` is true while every live model is loaded and not draining.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, ready: Arc<AtomicBool>, shutdown: ShutdownSignal) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        // Over the connection limit: close at once rather than queue.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = respond(stream, &metrics, &ready).await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

async fn respond(mut stream: TcpStream, metrics: &PrometheusHandle, ready: &AtomicBool) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head timed out"))??;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return write(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
            )
            .await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return write(&mut stream, "405 Method Not Allowed", "text/plain", b"only GET\n").await;
    }
    match path {
        "/metrics" => {
            let body = metrics.render();
            write(&mut stream, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body.as_bytes()).await
        }
        "/health/live" => write(&mut stream, "200 OK", "text/plain", b"live\n").await,
        "/health/ready" if ready.load(Ordering::Relaxed) => {
            write(&mut stream, "200 OK", "text/plain", b"ready\n").await
        }
        "/health/ready" => write(&mut stream, "503 Service Unavailable", "text/plain", b"not ready\n").await,
        _ => write(&mut stream, "404 Not Found", "text/plain", b"try /metrics, /health/live or /health/ready\n").await,
    }
}

async fn write(stream: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
