//! `modserve.v1.Moderation`: thin handlers that validate, call the `Classifier`, convert, and
//! record request metrics.

use std::pin::Pin;
use std::time::Instant;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::pb::moderation_server::Moderation;
use super::pb::{self, ClassifyRequest, ClassifyResponse};
use super::transport::{Arrival, parse_grpc_timeout};
use super::upload::Parked;
use super::{convert, status};
use crate::error::Error;
use crate::metrics::{self, TransportRefusal};
use crate::otel;
use crate::request::Caller;
use crate::serving::classify::Classifier;
use crate::serving::turns::{Permit, Turns};
use crate::shutdown::ShutdownSignal;

#[derive(Clone)]
pub struct ModerationService {
    classifier: Classifier,
    shutdown: ShutdownSignal,
    /// The calls-in-progress bound every Classify call, and each message of a stream, waits
    /// under once its request is in (a stalled upload holds no turn).
    turns: Turns,
}

impl ModerationService {
    pub fn new(classifier: Classifier, shutdown: ShutdownSignal, turns: Turns) -> Self {
        ModerationService { classifier, shutdown, turns }
    }

    /// A turn among the Classify calls in progress for a call of `bytes` from `caller`, waited
    /// for until the call's deadline (`limits.max_call_timeout` from its arrival at the most).
    async fn turn(
        &self,
        caller: Caller,
        bytes: usize,
        arrived: Instant,
        deadline: Option<Instant>,
        protocol: metrics::Protocol,
    ) -> Result<Permit, Error> {
        let ceiling = self.classifier.state()?.config.limits.max_call_timeout;
        let end = deadline.map_or(arrived + ceiling, |d| d.min(arrived + ceiling));
        self.turns.enter_within(caller, bytes, end.saturating_duration_since(Instant::now())).await.inspect_err(|_| {
            let listener = match protocol {
                metrics::Protocol::Http => crate::serving::http::LISTENER,
                _ => super::LISTENER,
            };
            metrics::transport_refused(listener, TransportRefusal::TurnDeadline);
        })
    }

    /// `deadline` is the caller's, if it sent one (the classifier caps it); `parent` its trace.
    async fn handle(
        &self,
        req: ClassifyRequest,
        started: Instant,
        deadline: Option<Instant>,
        caller: Caller,
        parent: &otel::Parent,
    ) -> Result<ClassifyResponse, Error> {
        // No refusal at shutdown: a call that reaches the handler was sent before the client saw
        // GOAWAY, and the transport lets it finish within `shutdown_grace`.
        let (input, output) = self.classifier.call(convert::request(req), started, deadline, caller, parent).await?;
        Ok(convert::response(&input, &output))
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ClassifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Moderation for ModerationService {
    async fn classify(&self, request: Request<ClassifyRequest>) -> Result<Response<ClassifyResponse>, Status> {
        let (started, deadline, caller) = arrival(&request);
        let protocol = protocol(&request);
        let parent = trace_parent(&request);
        let parked = request.extensions().get::<Parked>().cloned();
        let bytes = prost::Message::encoded_len(request.get_ref());
        let result = async {
            let turn = self.turn(caller, bytes, started, deadline, protocol).await?;
            // In progress now: its bytes are bounded by the turns, not the upload budget.
            if let Some(parked) = parked {
                parked.release(0);
            }
            let result = self.handle(request.into_inner(), started, deadline, caller, &parent).await;
            drop(turn);
            result
        }
        .await
        .map_err(|e| {
            log_error(&e);
            Status::from(e)
        });
        let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
        metrics::request_finished("Classify", protocol, status::code_name(code), started.elapsed().as_secs_f64());
        result.map(Response::new)
    }

    type ClassifyStreamStream = ResponseStream;

    async fn classify_stream(
        &self,
        request: Request<Streaming<ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        if self.shutdown.is_shutting_down() {
            return Err(Error::Unavailable("the server is shutting down; retry on another replica").into());
        }
        let service = self.clone();
        let (in_flight, ceiling) = self
            .classifier
            .state()
            .map(|s| (s.config.limits.stream_in_flight, s.config.limits.max_call_timeout))
            .map_err(Status::from)?;
        // Every message of the stream is a call of its own under the stream's trace context.
        let parent = trace_parent(&request);
        let (_, deadline, caller) = arrival(&request);
        let parked = request.extensions().get::<Parked>().cloned();
        // Stop reading new messages at shutdown; messages already read are still answered.
        // `buffered` keeps answers in order and bounds the work per stream; tonic polls this
        // stream only as fast as the client reads, so a slow reader stalls its own stream (and,
        // through HTTP/2 flow control, its sender) instead of growing a server-side buffer.
        let responses = request
            .into_inner()
            .take_until(self.shutdown.clone().wait())
            .enumerate()
            .map(move |(index, message)| {
                let (service, parent, parked) = (service.clone(), parent.clone(), parked.clone());
                async move {
                    let request = message?;
                    let started = Instant::now();
                    let request_id = request.request_id.clone();
                    // Each message is a Classify call under the calls-in-progress bound, in its
                    // connection's turn: otherwise streams would be a way around it.
                    let bytes = prost::Message::encoded_len(&request);
                    let turn = service.turns.enter_within(caller, bytes, ceiling).await;
                    // Its bytes were reserved while it waited (see `classify`).
                    if let Some(parked) = &parked {
                        parked.release(index as u64);
                    }
                    let result = match turn {
                        Ok(turn) => {
                            let result = service.handle(request, started, None, caller, &parent).await;
                            drop(turn);
                            result
                        }
                        Err(why) => {
                            metrics::transport_refused(super::LISTENER, TransportRefusal::TurnDeadline);
                            Err(why)
                        }
                    };
                    let code = result.as_ref().map_or_else(|e| status::code(e.kind()), |_| tonic::Code::Ok);
                    metrics::request_finished(
                        "ClassifyStream",
                        metrics::Protocol::Grpc,
                        status::code_name(code),
                        started.elapsed().as_secs_f64(),
                    );
                    Ok(result.unwrap_or_else(|e| {
                        log_error(&e);
                        ClassifyResponse {
                            results: Vec::new(),
                            request_id,
                            error: Some(pb::Error { code: code as i32, message: e.to_string() }),
                        }
                    }))
                }
            })
            .buffered(in_flight);
        Ok(Response::new(match deadline {
            Some(at) => Box::pin(until_deadline(responses, at)),
            None => Box::pin(responses),
        }))
    }
}

/// A stream's answers until its deadline: `grpc-timeout` bounds the whole stream, as gRPC defines
/// it, not each message. At the deadline the stream ends DEADLINE_EXCEEDED, and messages still
/// being worked on are dropped.
fn until_deadline(
    answers: impl Stream<Item = Result<ClassifyResponse, Status>> + Send + 'static,
    at: Instant,
) -> impl Stream<Item = Result<ClassifyResponse, Status>> + Send {
    let expired = Box::pin(tokio::time::sleep_until(at.into()));
    futures::stream::unfold(Some((Box::pin(answers), expired)), |state| async move {
        let (mut answers, mut expired) = state?;
        tokio::select! {
            biased;
            answer = answers.next() => answer.map(|answer| (answer, Some((answers, expired)))),
            () = &mut expired => {
                let e = Error::DeadlineExceeded(
                    "the stream's deadline (grpc-timeout, from the arrival of its headers) passed; \
                     messages not answered by then were dropped"
                        .to_string(),
                );
                Some((Err(Status::from(e)), None))
            }
        }
    })
}

/// Logs a failed call at a level that matches who must act: the caller's mistakes at debug,
/// overload at warn, model failures at error (already logged by the worker).
fn log_error(e: &Error) {
    use crate::error::ErrorKind::*;
    match e.kind() {
        InvalidArgument | DeadlineExceeded | Unavailable => {
            tracing::debug!(error = %e, "request failed")
        }
        QueueFull => warn_shed(e),
        Inference => {}
    }
}

/// How often shed calls are logged. Under overload every refused call would log a line (a client
/// flooding a full queue had 263,000 warnings written in 14 s, each a cost to the server and to
/// whatever ships its logs); one a second, with the count since the last, says as much.
const SHED_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn warn_shed(e: &Error) {
    static SHED: crate::log_rate::Every = crate::log_rate::Every::new(SHED_WARN_EVERY);
    if let Some(shed) = SHED.note() {
        tracing::warn!(error = %e, shed, "requests shed (logged at most every second; shed = calls refused since the last line)");
    }
}

/// The caller's trace context, from the W3C headers in its metadata.
fn trace_parent(request: &Request<impl Sized>) -> otel::Parent {
    otel::parent_from(|name| request.metadata().get(name).and_then(|v| v.to_str().ok()))
}

/// The API the call came in through: the HTTP/JSON API says so in the extensions.
pub fn protocol(request: &Request<impl Sized>) -> metrics::Protocol {
    request.extensions().get::<metrics::Protocol>().copied().unwrap_or(metrics::Protocol::Grpc)
}

/// When the call arrived and the caller's deadline, from the `grpc-timeout` header (or the HTTP
/// API's `x-modserve-timeout`), both as the transport saw them: counted from the arrival of the
/// headers, not from the end of the upload; and the connection it came on.
fn arrival(request: &Request<impl Sized>) -> (Instant, Option<Instant>, Caller) {
    match request.extensions().get::<Arrival>() {
        Some(a) => (a.at, a.deadline, a.caller),
        // Served without our transport (not in production): count from now.
        None => {
            let now = Instant::now();
            let asked = request.metadata().get("grpc-timeout").and_then(|v| parse_grpc_timeout(v.to_str().ok()?));
            (now, asked.and_then(|t| now.checked_add(t)), Caller::SERVER)
        }
    }
}
