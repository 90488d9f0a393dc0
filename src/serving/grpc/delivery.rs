//! Answers their clients have not taken yet. HTTP/2 flow control lets a client stop taking what
//! we send: one that grants no window leaves every call it made open after it was answered, its
//! stream and answer held, and its connection open (no call starts on it, yet a GOAWAY never
//! completes). 8,000 such calls on 32 connections held 77 MiB until the client left, and 800 of
//! them held SIGTERM for the whole `shutdown_grace`; the calls were done, so nothing else
//! bounded them.
//!
//! Each answer's body is tracked from the moment its handler returns it until its last frame is
//! handed to HTTP/2 (hyper asks a body for its next frame only once the client has granted room
//! for it). A connection whose oldest answer has waited for its client for
//! `server.send_timeout` is closed; so is one whose answer waited a second while its listener
//! holds `CROWDED` open answers, or while the server drains for shutdown. An answer that waits on its
//! own source (a ClassifyStream between the client's messages) is not waiting for the client.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// Answers open on a listener beyond which a second of waiting for the client closes a
/// connection: at the ~10 KiB an open answered call holds, 40 MiB.
pub const CROWDED: usize = 4096;

/// How long an answer may wait for its client when the listener is crowded or draining.
pub const SHORT_WAIT: Duration = Duration::from_secs(1);

/// Answers open on one listener (all its connections).
#[derive(Clone, Default)]
pub struct Open(Arc<AtomicUsize>);

impl Open {
    pub fn crowded(&self) -> bool {
        self.0.load(Ordering::Relaxed) >= CROWDED
    }
}

/// One connection's answers not yet fully handed to HTTP/2. Clones share them.
#[derive(Clone)]
pub struct Deliveries(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// Signalled when the connection goes from no open answer to one.
    opened: Notify,
    process: Open,
}

#[derive(Default)]
struct State {
    next: u64,
    /// By answer: since when it has waited for the client to take its next frame, or `None`
    /// while it waits on its own source.
    open: HashMap<u64, Option<Instant>>,
}

impl Deliveries {
    pub fn new(process: Open) -> Deliveries {
        Deliveries(Arc::new(Shared { state: Mutex::default(), opened: Notify::new(), process }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `body`, tracked until it is done or dropped.
    pub fn track<B>(&self, body: B) -> Delivery<B> {
        let id = {
            let mut state = self.lock();
            state.next += 1;
            let id = state.next;
            state.open.insert(id, Some(Instant::now()));
            if state.open.len() == 1 {
                self.0.opened.notify_one();
            }
            id
        };
        self.0.process.0.fetch_add(1, Ordering::Relaxed);
        Delivery { inner: body, id, deliveries: self.clone() }
    }

    pub fn any_open(&self) -> bool {
        !self.lock().open.is_empty()
    }

    /// Resolves after the connection went from no open answer to one (or spuriously).
    pub async fn opened(&self) {
        self.0.opened.notified().await;
    }

    /// How long the answer that has waited longest for its client has waited.
    pub fn longest_wait(&self) -> Duration {
        let now = Instant::now();
        self.lock().open.values().flatten().map(|since| now.saturating_duration_since(*since)).max().unwrap_or_default()
    }

    /// How long an answer may wait for its client before the connection is closed.
    pub fn limit(&self, send_timeout: Duration, draining: bool) -> Duration {
        if draining || self.0.process.crowded() { send_timeout.min(SHORT_WAIT) } else { send_timeout }
    }

    fn set(&self, id: u64, since: Option<Instant>) {
        if let Some(entry) = self.lock().open.get_mut(&id) {
            *entry = since;
        }
    }

    fn close(&self, id: u64) {
        if self.lock().open.remove(&id).is_some() {
            self.0.process.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// An answer's body, tracked by its connection's `Deliveries`.
pub struct Delivery<B> {
    inner: B,
    id: u64,
    deliveries: Deliveries,
}

impl<B: Body + Unpin> Body for Delivery<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // Its next frame is asked for only once the client has room for it.
            Poll::Ready(Some(Ok(_))) => self.deliveries.set(self.id, Some(Instant::now())),
            Poll::Ready(_) => self.deliveries.close(self.id),
            Poll::Pending => self.deliveries.set(self.id, None),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Delivery<B> {
    fn drop(&mut self) {
        self.deliveries.close(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    #[tokio::test]
    async fn an_answer_waits_for_its_client_until_its_last_frame_is_taken() {
        let process = Open::default();
        let deliveries = Deliveries::new(process.clone());
        let mut body = deliveries.track(Full::new(Bytes::from_static(b"answer")));
        assert!(deliveries.any_open());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(deliveries.longest_wait() >= Duration::from_millis(30), "not taken yet: waiting for the client");
        body.frame().await.unwrap().unwrap();
        assert!(deliveries.longest_wait() < Duration::from_millis(30), "a frame taken restarts the wait");
        assert!(body.frame().await.is_none());
        assert!(!deliveries.any_open());
        assert_eq!(process.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_stream_waiting_for_its_next_message_is_not_waiting_for_the_client() {
        let deliveries = Deliveries::new(Open::default());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(1);
        let mut body = deliveries.track(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)));
        let waited = tokio::time::timeout(Duration::from_millis(20), body.frame()).await;
        assert!(waited.is_err(), "no message yet");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(deliveries.longest_wait(), Duration::ZERO);
        tx.send(Ok(Frame::data(Bytes::from_static(b"one")))).await.unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert!(!deliveries.any_open(), "dropped: no longer open");
    }

    #[test]
    fn the_wait_allowed_is_short_when_draining_or_crowded() {
        let process = Open::default();
        let deliveries = Deliveries::new(process.clone());
        let timeout = Duration::from_secs(10);
        assert_eq!(deliveries.limit(timeout, false), timeout);
        assert_eq!(deliveries.limit(timeout, true), SHORT_WAIT);
        process.0.store(CROWDED, Ordering::Relaxed);
        assert_eq!(deliveries.limit(timeout, false), SHORT_WAIT);
    }
}
