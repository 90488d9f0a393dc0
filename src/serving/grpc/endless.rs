//! Calls that stay open for as long as the client likes: the health `Watch` and server
//! reflection's `ServerReflectionInfo` stream. A Watch answers only when the status changes, so
//! it is open for the client's whole life; a reflection stream waits for the next question.
//!
//! Two things follow. At shutdown they would hold the drain for the whole `shutdown_grace` (one
//! open Watch: 29.7 s instead of 0.1 s), so each ends UNAVAILABLE as the server starts draining,
//! after the NOT_SERVING it has already sent. And each holds memory (13-27 KiB) while it waits:
//! 64,000 reflection streams from one address took RSS from 253 to 1,953 MiB; so they are
//! bounded, per connection and per listener, and one over the bound is refused
//! RESOURCE_EXHAUSTED (`modserve_transport_refusals_total{reason="endless_stream_limit"}`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};

/// Such calls open at once on one connection.
pub const MAX_PER_CONNECTION: usize = 8;
/// Such calls open at once on one listener.
pub const MAX_PER_LISTENER: usize = 2048;

/// Whether the call at `path` is one of these.
pub fn is_endless(path: &str) -> bool {
    path == "/grpc.health.v1.Health/Watch" || path.ends_with(".ServerReflection/ServerReflectionInfo")
}

/// Counts of open endless calls; clones share the count.
#[derive(Clone, Default)]
pub struct Open(Arc<AtomicUsize>);

/// A call's place in its connection's and its listener's counts, given back when dropped.
pub struct Place([Open; 2]);

impl Drop for Place {
    fn drop(&mut self) {
        for open in &self.0 {
            open.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A place for one more endless call on `connection` (at most `MAX_PER_CONNECTION`) and
/// `listener` (`MAX_PER_LISTENER`); `None` when either is full.
pub fn take(connection: &Open, listener: &Open) -> Option<Place> {
    let on_connection = connection.0.fetch_add(1, Ordering::Relaxed) + 1;
    let on_listener = listener.0.fetch_add(1, Ordering::Relaxed) + 1;
    // Dropped on a refusal, giving both back.
    let place = Place([connection.clone(), listener.clone()]);
    (on_connection <= MAX_PER_CONNECTION && on_listener <= MAX_PER_LISTENER).then_some(place)
}

/// The status an endless call ends with when the server drains.
fn shutting_down() -> hyper::HeaderMap {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", hyper::header::HeaderValue::from(tonic::Code::Unavailable as i32));
    trailers.insert("grpc-message", hyper::header::HeaderValue::from_static("the server is shutting down"));
    trailers
}

/// An endless call's answer: ends UNAVAILABLE once `drain` completes, and holds its `Place`.
pub struct Ending<B> {
    inner: B,
    drain: Pin<Box<dyn Future<Output = ()> + Send>>,
    ended: bool,
    _place: Place,
}

impl<B> Ending<B> {
    pub fn new(inner: B, drain: impl Future<Output = ()> + Send + 'static, place: Place) -> Ending<B> {
        Ending { inner, drain: Box::pin(drain), ended: false, _place: place }
    }
}

impl<B> Body for Ending<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                if frame.as_ref().is_ok_and(Frame::is_trailers) {
                    this.ended = true;
                    // A handler that ended because the drain ended its request (reflection)
                    // says OK; the client should hear why.
                    if this.drain.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Ok(Frame::trailers(shutting_down()))));
                    }
                }
                Poll::Ready(Some(frame))
            }
            // Between messages: a frame from the handler always goes out whole.
            Poll::Pending => match this.drain.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.ended = true;
                    Poll::Ready(Some(Ok(Frame::trailers(shutting_down()))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_bounded_per_connection_and_per_listener_and_given_back() {
        let listener = Open::default();
        let (a, b) = (Open::default(), Open::default());
        let on_a: Vec<Place> = (0..MAX_PER_CONNECTION).map(|_| take(&a, &listener).expect("room")).collect();
        assert!(take(&a, &listener).is_none(), "the connection's bound");
        assert_eq!(listener.0.load(Ordering::Relaxed), MAX_PER_CONNECTION, "a refusal takes nothing");
        assert!(take(&b, &listener).is_some(), "another connection has room");
        drop(on_a);
        assert_eq!((a.0.load(Ordering::Relaxed), listener.0.load(Ordering::Relaxed)), (0, 0));
        let conns: Vec<Open> = (0..MAX_PER_LISTENER).map(|_| Open::default()).collect();
        let held: Vec<Place> = conns.iter().map(|c| take(c, &listener).expect("room")).collect();
        assert!(take(&a, &listener).is_none(), "the listener's bound");
        assert_eq!(a.0.load(Ordering::Relaxed), 0, "a refusal takes nothing");
        drop(held);
        assert!(take(&a, &listener).is_some());
    }

    #[test]
    fn only_the_watch_and_reflection_streams_are_endless() {
        assert!(is_endless("/grpc.health.v1.Health/Watch"));
        assert!(is_endless("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(is_endless("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!is_endless("/grpc.health.v1.Health/Check"));
        assert!(!is_endless("/modserve.v1.Moderation/ClassifyStream"));
    }
}
