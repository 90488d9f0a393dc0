//! The lingering close both listeners end a connection with when the client may still be sending:
//! the server shuts down its sending side, then reads (and drops) what the client still sends
//! until the client closes, `LINGER_FOR` passes or the listener's shutdown grace is over.
//!
//! A plain close with a client's bytes unread, or arriving after it, answers them with a reset.
//! A client still writing then fails on a broken pipe before it reads what the server said: the
//! GOAWAY that tells a gRPC client its call was not processed and may be sent again, or the HTTP
//! answer (413, 429, 504) to a request whose body the server refused to read. Python's
//! `http.client` posting 5 MB to a 4 MiB limit read `BrokenPipeError`, 10 times in 10, instead
//! of the 413.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// How long a lingering close keeps reading. A client closes as soon as it has read the server's
/// last word; this bounds one that does not.
pub(crate) const LINGER_FOR: Duration = Duration::from_secs(2);

/// A future that ends when the listener's shutdown grace is over. A lingering close holds it, and
/// the listener's drain waits for every holder (each listener's own signal), within the grace.
pub(crate) type GraceOver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Places for lingering closes on one listener. A lingering close holds its socket past the
/// connection's slot, so there are as many places as there may be connections; a close that
/// finds none left closes at once.
#[derive(Clone)]
pub(crate) struct Places(Arc<Semaphore>);

impl Places {
    pub(crate) fn new(max_connections: usize) -> Places {
        Places(Arc::new(Semaphore::new(max_connections)))
    }

    /// Wraps an accepted stream. It closes at once unless its connection asks, through the
    /// returned `Linger`, for a lingering close.
    pub(crate) fn socket(&self, stream: TcpStream, grace_over: GraceOver) -> (Socket, Linger) {
        let linger = Arc::new(AtomicBool::new(false));
        let socket =
            Socket { stream: Some(stream), linger: linger.clone(), places: self.clone(), grace_over: Some(grace_over) };
        (socket, Linger(linger))
    }
}

/// The connection's say in how its socket closes, given once it has ended.
pub(crate) struct Linger(Arc<AtomicBool>);

impl Linger {
    /// Lingering when `linger`; otherwise (a broken protocol, a stalled client, the grace over)
    /// the socket closes at once.
    pub(crate) fn close(&self, linger: bool) {
        self.0.store(linger, Ordering::Relaxed);
    }
}

/// An accepted TCP stream that closes lingering when its connection asked for it.
pub(crate) struct Socket {
    /// `None` only once dropped.
    stream: Option<TcpStream>,
    linger: Arc<AtomicBool>,
    places: Places,
    /// `None` only once dropped.
    grace_over: Option<GraceOver>,
}

impl Socket {
    fn stream(&mut self) -> std::io::Result<Pin<&mut TcpStream>> {
        self.stream.as_mut().map(Pin::new).ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take().filter(|_| self.linger.load(Ordering::Relaxed)) else {
            return;
        };
        let (Some(grace_over), Ok(place), Ok(runtime)) =
            (self.grace_over.take(), self.places.0.clone().try_acquire_owned(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let _place = place;
            linger(stream, grace_over).await;
        });
    }
}

async fn linger(mut stream: TcpStream, grace_over: GraceOver) {
    let _ = stream.shutdown().await;
    let mut dropped = [0u8; 4096];
    let until = tokio::time::sleep(LINGER_FOR);
    tokio::pin!(until, grace_over);
    loop {
        tokio::select! {
            read = stream.read(&mut dropped) => match read {
                Ok(n) if n > 0 => {}
                _ => return,
            },
            _ = &mut until => return,
            _ = &mut grace_over => return,
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}
