//! The routes of the HTTP/JSON API: each call is checked against the token its gRPC method
//! takes, its body read (bounded in size and time) and decoded from JSON into the prost
//! message, and then handed to the gRPC service's own handler as a `tonic::Request` that says
//! where it came from (`Protocol::Http`) and when it arrived. The answer, or the status, goes
//! back as JSON.
//!
//! Calls refused before the handler runs are counted in `modserve_requests_total` as gRPC
//! counts them: a body that does not decode (INVALID_ARGUMENT), and here also a body too large
//! or too slow and a bad `x-modserve-timeout`; token refusals are not counted, as on gRPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::status::{error_body, http_status};
use crate::metrics::{self, Protocol, TransportRefusal};
use crate::request::Caller;
use crate::serving::grpc::admin::AdminService;
use crate::serving::grpc::auth::BearerAuth;
use crate::serving::grpc::codec::{MAX_TOP_LEVEL_FIELDS, too_many_entries};
use crate::serving::grpc::feedback::FeedbackService;
use crate::serving::grpc::pb::admin_server::Admin;
use crate::serving::grpc::pb::feedback_server::Feedback;
use crate::serving::grpc::pb::moderation_server::Moderation;
use crate::serving::grpc::pb::{self};
use crate::serving::grpc::service::ModerationService;
use crate::serving::grpc::status::code_name;
use crate::serving::grpc::transport::{Arrival, CallCeiling};
use crate::serving::grpc::upload::{BodyReservation, Budget, Parked};

/// The header a caller sets its deadline with, as a duration ("250ms", "2s"); the HTTP
/// counterpart of `grpc-timeout`, capped by `limits.max_call_timeout` like it.
pub const TIMEOUT_HEADER: &str = "x-modserve-timeout";
/// A caller's text quoted in an error message is cut to this (`error::excerpt` does the same for
/// the gRPC path's own messages): serde names an unknown field in full.
const MAX_QUOTED_BYTES: usize = 512;

/// The gRPC handlers and the token checks their services sit behind, shared with the gRPC routes.
#[derive(Clone)]
pub struct Api {
    pub moderation: Arc<ModerationService>,
    pub feedback: Arc<FeedbackService>,
    pub admin: Arc<AdminService>,
    pub moderation_auth: BearerAuth,
    pub feedback_auth: BearerAuth,
    pub admin_auth: BearerAuth,
    /// Why `/v1/models` is refused, when it is: Admin has a listener of its own and no token
    /// (`admin.allow_unauthenticated`), so answering here would open it to every caller.
    pub models_closed: Option<&'static str>,
    /// The longest a call may run (`limits.max_call_timeout`, following reloads).
    pub ceiling: CallCeiling,
    /// `limits.max_message_bytes`, the largest body (as gRPC's largest message).
    pub max_body_bytes: usize,
    /// `server.max_buffered_request_bytes` for this listener: the bodies being received.
    pub budget: Budget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Classify,
    Verdicts,
    Models,
}

impl Route {
    fn of(path: &str) -> Option<Route> {
        match path {
            "/v1/classify" => Some(Route::Classify),
            "/v1/verdicts" => Some(Route::Verdicts),
            "/v1/models" => Some(Route::Models),
            _ => None,
        }
    }

    fn method(self) -> Method {
        match self {
            Route::Classify | Route::Verdicts => Method::POST,
            Route::Models => Method::GET,
        }
    }

    /// The `method` label of the gRPC method it calls, where that method is counted.
    fn counted(self) -> Option<&'static str> {
        match self {
            Route::Classify => Some("Classify"),
            Route::Verdicts => Some("SubmitVerdicts"),
            Route::Models => None,
        }
    }
}

/// Why a call was not answered: refused here (counted here) or by the gRPC handler or token
/// check (counted there, if at all).
enum Refusal {
    Here(Status),
    Handler(Status),
}

impl Api {
    /// Answers one request.
    pub async fn answer(self, request: Request<Incoming>, caller: Caller) -> Response<Full<Bytes>> {
        let arrived = Instant::now();
        let path = request.uri().path().to_string();
        let Some(route) = Route::of(&path) else {
            return error(&Status::not_found(format!(
                "no route {}: the API is POST /v1/classify, POST /v1/verdicts and GET /v1/models",
                excerpt(&path)
            )));
        };
        if request.method() != route.method() {
            let mut response = error(&Status::unimplemented(format!("{path} takes {} only", route.method())));
            let allow = if route.method() == Method::GET { "GET" } else { "POST" };
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return response;
        }
        match self.call(route, request, arrived, caller).await {
            Ok(body) => json(hyper::StatusCode::OK, body),
            Err(Refusal::Handler(status)) => error(&status),
            Err(Refusal::Here(status)) => {
                if let Some(method) = route.counted() {
                    let seconds = arrived.elapsed().as_secs_f64();
                    metrics::request_finished(method, Protocol::Http, code_name(status.code()), seconds);
                }
                error(&status)
            }
        }
    }

    async fn call(
        &self,
        route: Route,
        request: Request<Incoming>,
        arrived: Instant,
        caller: Caller,
    ) -> Result<Vec<u8>, Refusal> {
        let (parts, body) = request.into_parts();
        // Only the metadata the handlers and token checks read: the token and the caller's
        // trace context.
        let mut metadata = MetadataMap::new();
        for name in std::iter::once("authorization").chain(crate::otel::HEADERS) {
            if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok())
                && let Ok(value) = value.parse()
            {
                metadata.insert(name, value);
            }
        }
        let auth = match route {
            Route::Classify => &self.moderation_auth,
            Route::Verdicts => &self.feedback_auth,
            Route::Models => &self.admin_auth,
        };
        if let (Route::Models, Some(why)) = (route, self.models_closed) {
            return Err(Refusal::Handler(Status::permission_denied(why)));
        }
        // Before the body is read, as tonic's interceptor runs before decoding.
        auth.check(tonic::Request::from_parts(metadata.clone(), Default::default(), ())).map_err(Refusal::Handler)?;
        let asked = timeout(&parts.headers).map_err(Refusal::Here)?;
        let limit = asked.map_or((self.ceiling)(), |asked| asked.min((self.ceiling)()));
        let mut extensions = tonic::Extensions::new();
        extensions.insert(Arrival { at: arrived, deadline: asked.and_then(|a| arrived.checked_add(a)), caller });
        extensions.insert(Protocol::Http);
        // A verdicts body larger than the room left in the verdict queue is refused before it is
        // read, as a SubmitVerdicts message is at its prefix (its texts are at most its bytes).
        if route == Route::Verdicts
            && let Some(declared) = hyper::body::Body::size_hint(&body).exact()
            && let Err(status) = self.feedback.admit(declared as usize)
        {
            metrics::transport_refused(super::LISTENER, TransportRefusal::FeedbackQueueFull);
            return Err(Refusal::Here(status));
        }
        // A Classify call takes its turn in the handler, once its body is in: an upload that
        // stalls must not hold one. Until then its bytes stay reserved (`Parked`).
        let body = match route {
            Route::Models => Bytes::new(),
            _ => {
                let (body, reservation) = self.body(body, arrived, limit).await.map_err(Refusal::Here)?;
                if route == Route::Classify {
                    let parked = Parked::default();
                    parked.hold(reservation);
                    extensions.insert(parked);
                }
                body
            }
        };
        match route {
            Route::Classify => {
                let message = decode::<pb::ClassifyRequest>(&body).map_err(Refusal::Here)?;
                let response = self
                    .moderation
                    .classify(tonic::Request::from_parts(metadata, extensions, message))
                    .await
                    .map_err(Refusal::Handler)?;
                encode(response.get_ref())
            }
            Route::Verdicts => {
                let message = decode::<pb::SubmitVerdictsRequest>(&body).map_err(Refusal::Here)?;
                let response = self
                    .feedback
                    .submit_verdicts(tonic::Request::from_parts(metadata, extensions, message))
                    .await
                    .map_err(Refusal::Handler)?;
                encode(response.get_ref())
            }
            Route::Models => {
                let response = self
                    .admin
                    .list_models(tonic::Request::from_parts(metadata, extensions, pb::ListModelsRequest {}))
                    .await
                    .map_err(Refusal::Handler)?;
                encode(response.get_ref())
            }
        }
    }

    /// The whole body: at most `max_body_bytes`, received by the call's deadline.
    /// The request body, read within the call's deadline, and its reservation of the budget.
    async fn body(
        &self,
        body: Incoming,
        arrived: Instant,
        limit: Duration,
    ) -> Result<(Bytes, BodyReservation), Status> {
        let too_large = || {
            Status::out_of_range(format!(
                "the request body is larger than limits.max_message_bytes ({} bytes)",
                self.max_body_bytes
            ))
        };
        let hint = hyper::body::Body::size_hint(&body);
        if hint.lower() > self.max_body_bytes as u64 {
            return Err(too_large());
        }
        // The declared length, or the most a chunked body may be, held until it is decoded.
        let declared = hint.exact().map_or(self.max_body_bytes, |n| n as usize);
        let Some(reservation) = self.budget.try_reserve(declared) else {
            metrics::transport_refused(super::LISTENER, TransportRefusal::UploadBudgetProcess);
            return Err(Status::resource_exhausted(format!(
                "a request body of {declared} bytes does not fit in the bytes being received now \
                 (server.max_buffered_request_bytes: the server is receiving too much at once, limit {} bytes); \
                 retry with backoff",
                self.budget.limit()
            )));
        };
        let collect = Limited::new(body, self.max_body_bytes).collect();
        match tokio::time::timeout_at((arrived + limit).into(), collect).await {
            Ok(Ok(collected)) => Ok((collected.to_bytes(), reservation)),
            Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => Err(Status::cancelled(format!("the request body could not be read: {e}"))),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "deadline exceeded while the request was still being received ({limit:?} from the arrival of its \
                 headers; limits.max_call_timeout caps it)"
            ))),
        }
    }
}

/// The caller's deadline from `x-modserve-timeout`, if it sent one.
fn timeout(headers: &hyper::HeaderMap) -> Result<Option<Duration>, Status> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else { return Ok(None) };
    let text = value.to_str().unwrap_or_default();
    humantime::parse_duration(text.trim()).map(Some).map_err(|_| {
        Status::invalid_argument(format!("{TIMEOUT_HEADER} {}: not a duration like 250ms or 2s", excerpt(text)))
    })
}

/// Decodes a JSON body into `T`, refusing a body with more entries than any configuration
/// accepts before building it (as the gRPC codec does).
fn decode<T: serde::de::DeserializeOwned + Send>(body: &[u8]) -> Result<T, Status> {
    if count_entries(body).is_some_and(|n| n > MAX_TOP_LEVEL_FIELDS) {
        return Err(too_many_entries());
    }
    crate::serving::blocking::if_large(body.len(), || serde_json::from_slice(body)).map_err(|e| {
        let what = std::any::type_name::<T>().rsplit("::").next().unwrap_or_default();
        Status::invalid_argument(format!(
            "the request body is not a modserve.v1.{what} in JSON: {}",
            cut(&e.to_string(), MAX_QUOTED_BYTES)
        ))
    })
}

fn encode<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, Refusal> {
    serde_json::to_vec(message)
        .map_err(|e| Refusal::Handler(Status::internal(format!("cannot encode the response as JSON: {e}"))))
}

fn json(status: hyper::StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error(status: &Status) -> Response<Full<Bytes>> {
    json(http_status(status.code()), error_body(status))
}

/// `text` as an error message may quote it.
fn excerpt(text: &str) -> String {
    crate::error::excerpt(text)
}

/// `text`, at most `max` bytes of it (cut at a character boundary).
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let end = (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// The elements of the arrays in the top-level JSON object of `body` (reviews, tasks, verdicts),
/// in one pass that builds nothing; `None` when `body` is not well-formed (serde then says why).
fn count_entries(body: &[u8]) -> Option<usize> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    de::Deserializer::deserialize_any(&mut deserializer, TopLevel).ok()
}

/// Visits the top-level object, summing `Entries` over its values.
struct TopLevel;

impl<'de> Visitor<'de> for TopLevel {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut entries = 0usize;
        while map.next_key::<IgnoredAny>()?.is_some() {
            entries = entries.saturating_add(map.next_value_seed(Entries)?);
        }
        Ok(entries)
    }
}

/// A value's count of array elements: the length of an array, 0 for anything else.
struct Entries;

impl<'de> DeserializeSeed<'de> for Entries {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entries {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut n = 0usize;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(0)
    }

    fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_str<E>(self, _: &str) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_entries_of_top_level_arrays_only() {
        let body = br#"{"reviews":[{"id":"a","text":"x","signals":{"k":1}},{"id":"b"}],"tasks":["abuse"],"requestId":"r","surface":null}"#;
        assert_eq!(count_entries(body), Some(3));
        assert_eq!(count_entries(br#"{"reviews":[[1,2,3]]}"#), Some(1), "nested arrays are one entry");
        assert_eq!(count_entries(b"{}"), Some(0));
        assert_eq!(count_entries(b"{\"reviews\": [1,"), None, "not well-formed");
        assert_eq!(count_entries(b"[1,2]"), None, "not an object");
        let many = format!("{{\"reviews\":[{}{{}}]}}", "{},".repeat(MAX_TOP_LEVEL_FIELDS));
        assert_eq!(count_entries(many.as_bytes()), Some(MAX_TOP_LEVEL_FIELDS + 1));
        assert_eq!(decode::<pb::ClassifyRequest>(many.as_bytes()).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn decodes_the_proto3_json_mapping() {
        let body = br#"{"reviews":[{"id":"a","text":"hi","rating":4.5,"signals":{"account_age_days":3}}],
            "request_id":"x","surface":"kids"}"#;
        let req: pb::ClassifyRequest = decode(body).unwrap();
        assert_eq!(req.request_id, "x", "proto field names are accepted beside lowerCamelCase");
        assert_eq!(req.reviews[0].rating, Some(4.5));
        assert_eq!(req.surface.as_deref(), Some("kids"));
        let verdicts: pb::SubmitVerdictsRequest =
            decode(br#"{"verdicts":[{"review":{"id":"a","text":"t"},"task":"abuse","decision":"DECISION_REJECT"}]}"#)
                .unwrap();
        assert_eq!(verdicts.verdicts[0].decision, pb::Decision::Reject as i32);
        let err = decode::<pb::ClassifyRequest>(br#"{"reviewz":[]}"#).unwrap_err();
        assert!(err.message().contains("unknown field `reviewz`"), "{}", err.message());
    }

    #[test]
    fn cuts_long_quotes_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é... (6 bytes)");
    }

    #[test]
    fn reads_the_deadline_header() {
        let mut headers = hyper::HeaderMap::new();
        assert_eq!(timeout(&headers).unwrap(), None);
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("250ms"));
        assert_eq!(timeout(&headers).unwrap(), Some(Duration::from_millis(250)));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        let err = timeout(&headers).unwrap_err();
        assert!(err.message().starts_with("x-modserve-timeout \"soon\""), "{}", err.message());
    }
}
