//! Bounds on request bytes held in memory while a message is uploaded.
//!
//! tonic buffers a whole gRPC message before decoding it, so a caller that declares a large
//! message and sends it slowly (or never finishes) holds that memory for as long as it likes.
//! `BoundedBody` reads each message's 5-byte gRPC prefix as it arrives and reserves the declared
//! length from two budgets, the connection's and the process's, before any of the message is
//! buffered; the reservation is returned when the message is complete (tonic decodes it at once),
//! for a Classify call once its turn comes (`Parked`), or when the call ends. A message that does not fit is refused RESOURCE_EXHAUSTED at its prefix,
//! so the bytes a hostile caller can pin are bounded by the budgets, not by its patience.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::TransportRefusal;

/// Length of the gRPC message prefix: a compression flag and a big-endian u32 length.
const PREFIX_BYTES: usize = 5;

/// A budget of request bytes, shared by the calls it bounds.
#[derive(Clone)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    limit: usize,
    refusal: TransportRefusal,
    /// Shows what is reserved now (the process budget: `modserve_request_bytes_receiving`).
    gauge: Option<::metrics::Gauge>,
}

impl Budget {
    pub fn new(limit: usize, refusal: TransportRefusal) -> Budget {
        Budget { bytes: Arc::new(Semaphore::new(limit.min(Semaphore::MAX_PERMITS))), limit, refusal, gauge: None }
    }

    /// A budget whose reservations `gauge` shows.
    pub fn shown(self, gauge: ::metrics::Gauge) -> Budget {
        gauge.set(self.in_use() as f64);
        Budget { gauge: Some(gauge), ..self }
    }

    fn show(&self) {
        if let Some(gauge) = &self.gauge {
            gauge.set(self.in_use() as f64);
        }
    }

    /// Reserves `bytes` for a whole request body (the HTTP/JSON API's), if they fit now; the
    /// permit gives them back when dropped.
    pub fn try_reserve(&self, bytes: usize) -> Option<BodyReservation> {
        let bytes = u32::try_from(bytes).ok()?;
        let permit = self.bytes.clone().try_acquire_many_owned(bytes).ok()?;
        self.show();
        Some(BodyReservation { _permit: Some(permit), budget: self.clone() })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now (for tests and logs).
    pub fn in_use(&self) -> usize {
        self.limit.min(Semaphore::MAX_PERMITS) - self.bytes.available_permits()
    }
}

/// Bytes of a `Budget` held for one request body; given back when dropped.
pub struct BodyReservation {
    _permit: Option<OwnedSemaphorePermit>,
    budget: Budget,
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        self._permit.take();
        self.budget.show();
    }
}

/// Reservations of messages that have arrived but whose call has not started: a Classify call,
/// and each message of a ClassifyStream, waits for its turn (`serving::turns`) once the whole
/// message is in, and its bytes stay reserved while it waits, so messages waiting for turns are
/// bounded by the budgets like those being received. Put in the request's extensions; the
/// handler releases a message's reservation once its turn comes (dropping the request releases
/// them all). Clones share the reservations.
#[derive(Clone, Default)]
pub struct Parked(Arc<Mutex<ParkedMessages>>);

/// Reservations by message: the request's first complete message is 0.
#[derive(Default)]
struct ParkedMessages {
    next: u64,
    held: Vec<(u64, Box<dyn Send>)>,
}

impl Parked {
    /// Keeps the reservation of the request's next complete message until it is released.
    pub fn hold(&self, reservation: impl Send + 'static) {
        let mut parked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let message = parked.next;
        parked.next += 1;
        parked.held.push((message, Box::new(reservation)));
    }

    /// Gives back the reservation of the request's `message`th complete message (from 0).
    pub fn release(&self, message: u64) {
        let released: Vec<_> = {
            let mut parked = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let held = std::mem::take(&mut parked.held);
            let (released, kept) = held.into_iter().partition(|(m, _)| *m == message);
            parked.held = kept;
            released
        };
        // Dropped outside the lock: giving the permits back updates the budgets' gauges.
        drop(released);
    }
}

/// Permits held for a parked message; the budgets' gauges are updated once they are given back.
struct HeldPermits {
    _permits: Vec<OwnedSemaphorePermit>,
    budgets: [Budget; 2],
}

impl Drop for HeldPermits {
    fn drop(&mut self) {
        self._permits.clear();
        self.budgets.iter().for_each(Budget::show);
    }
}

/// A check of a message's declared length before it is read: `Err` is the status the call is
/// refused with, and the refusal's reason for `modserve_transport_refusals_total`.
pub type MessageCheck = Arc<dyn Fn(u32) -> Result<(), (tonic::Status, TransportRefusal)> + Send + Sync>;

/// A request body that reserves each message's declared length from its budgets.
pub struct BoundedBody {
    inner: Incoming,
    budgets: [Budget; 2],
    /// The reservation for the message being received.
    held: Vec<OwnedSemaphorePermit>,
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// Bytes of the current message still to come after its prefix.
    remaining: usize,
    /// Called with the budget that refused a message, once.
    on_refusal: Option<Box<dyn FnOnce(TransportRefusal) + Send>>,
    /// The method's own check of each message, before the budgets.
    check: Option<MessageCheck>,
    /// Where a complete message's reservation goes, instead of back to the budgets.
    parked: Option<Parked>,
    /// Once this completes the body ends, as if the client had finished it (`ending`).
    end: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    ended: bool,
}

impl BoundedBody {
    /// `connection` is the connection's budget, `process` the process-wide one.
    pub fn new(
        inner: Incoming,
        connection: Budget,
        process: Budget,
        on_refusal: impl FnOnce(TransportRefusal) + Send + 'static,
    ) -> BoundedBody {
        BoundedBody {
            inner,
            budgets: [connection, process],
            held: Vec::new(),
            prefix: [0; PREFIX_BYTES],
            prefix_len: 0,
            remaining: 0,
            on_refusal: Some(Box::new(on_refusal)),
            check: None,
            parked: None,
            end: None,
            ended: false,
        }
    }

    /// Ends the body, between messages, once `end` completes: a call that reads until its client
    /// stops (a reflection stream) then ends, rather than keep its HTTP/2 stream open.
    pub fn ending(mut self, end: Option<impl Future<Output = ()> + Send + 'static>) -> BoundedBody {
        self.end = end.map(|end| Box::pin(end) as Pin<Box<dyn Future<Output = ()> + Send>>);
        self
    }

    /// Keeps each complete message's reservation in `parked` (see `Parked`).
    pub fn parking(mut self, parked: Option<Parked>) -> BoundedBody {
        self.parked = parked;
        self
    }

    /// Runs `check` on each message's declared length before reserving it.
    pub fn checked(mut self, check: Option<MessageCheck>) -> BoundedBody {
        self.check = check;
        self
    }

    /// Follows the gRPC framing through `data`, reserving at each complete prefix and
    /// releasing at each message's end.
    fn track(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
        while !data.is_empty() {
            if self.prefix_len < PREFIX_BYTES {
                let take = (PREFIX_BYTES - self.prefix_len).min(data.len());
                self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
                self.prefix_len += take;
                data = &data[take..];
                if self.prefix_len == PREFIX_BYTES {
                    let declared = u32::from_be_bytes([self.prefix[1], self.prefix[2], self.prefix[3], self.prefix[4]]);
                    self.reserve(declared)?;
                    self.remaining = declared as usize;
                    if self.remaining == 0 {
                        self.finish_message();
                    }
                }
                continue;
            }
            let take = self.remaining.min(data.len());
            self.remaining -= take;
            data = &data[take..];
            if self.remaining == 0 {
                self.finish_message();
            }
        }
        Ok(())
    }

    fn reserve(&mut self, declared: u32) -> Result<(), tonic::Status> {
        if let Some(check) = &self.check
            && let Err((status, why)) = check(declared)
        {
            self.release();
            if let Some(report) = self.on_refusal.take() {
                report(why);
            }
            return Err(status);
        }
        for i in 0..self.budgets.len() {
            let budget = self.budgets[i].clone();
            match budget.bytes.clone().try_acquire_many_owned(declared) {
                Ok(permit) => {
                    self.held.push(permit);
                    budget.show();
                }
                Err(_) => {
                    self.release();
                    if let Some(report) = self.on_refusal.take() {
                        report(budget.refusal);
                    }
                    let scope = match budget.refusal {
                        TransportRefusal::UploadBudgetConnection => {
                            "server.max_buffered_request_bytes_per_connection: this connection's other messages are \
                             still uploading or waiting for their turn"
                        }
                        _ => "server.max_buffered_request_bytes: the server is holding too many request bytes at once",
                    };
                    return Err(tonic::Status::resource_exhausted(format!(
                        "a request message of {declared} bytes does not fit in the request bytes held now \
                         ({scope}, limit {} bytes); retry with backoff",
                        budget.limit
                    )));
                }
            }
        }
        Ok(())
    }

    fn finish_message(&mut self) {
        match &self.parked {
            Some(parked) => {
                let held = HeldPermits { _permits: std::mem::take(&mut self.held), budgets: self.budgets.clone() };
                parked.hold(held);
            }
            None => self.release(),
        }
        self.prefix_len = 0;
    }

    fn release(&mut self) {
        self.held.clear();
        self.budgets.iter().for_each(Budget::show);
    }
}

impl Drop for BoundedBody {
    /// A call that ends mid-message (reset, deadline) gives its reservation back here.
    fn drop(&mut self) {
        self.release();
    }
}

impl Body for BoundedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.track(data)?;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(tonic::Status::from_error(Box::new(e))))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.end.as_mut().map(|end| end.as_mut().poll(cx)) {
                // Not mid-message: a message cut short would read as a malformed one.
                Some(Poll::Ready(())) if this.prefix_len == 0 => {
                    this.ended = true;
                    Poll::Ready(None)
                }
                _ => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
