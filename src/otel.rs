//! OpenTelemetry traces: continues the caller's trace (W3C `traceparent`/`tracestate` from gRPC
//! metadata or HTTP headers) and exports spans over OTLP (gRPC, or HTTP with protobuf bodies, as
//! `OTEL_EXPORTER_OTLP_PROTOCOL` says) when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `..._TRACES_ENDPOINT`) is set. Unset, nothing is set up and
//! every function here returns at once: no span is built, nothing is exported.
//!
//! A call's span and its children (validation, and per task the queue wait, tokenization,
//! inference and decision) are built after the fact from instants the request path already
//! takes, with explicit start and end times, so no span travels to the worker threads. Shadow
//! work gets its own trace, linked to the call's span: it ends after the caller's answer and
//! must not keep the caller's trace open.
//!
//! The SDK reads the other standard variables itself: `OTEL_SERVICE_NAME` (default here
//! `modserve`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_BSP_*`,
//! `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS`, `_TIMEOUT` and `_COMPRESSION`.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Link, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];

/// The tracer, once `init` has set one up.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (`grpc`, and the default here when no protocol is named), port 4317.
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`), port 4318.
    HttpProtobuf,
}

impl Protocol {
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub endpoint: String,
    pub protocol: Protocol,
}

/// Keeps the exporter; `shutdown` sends what is still queued.
pub struct Exporter {
    provider: SdkTracerProvider,
    pub endpoint: String,
    pub protocol: Protocol,
}

impl Exporter {
    /// Exports the spans still queued (bounded by `timeout`), then stops.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "OpenTelemetry: spans still queued at exit may be lost");
        }
    }
}

/// What the environment asks for: `None` (no endpoint, or `OTEL_SDK_DISABLED=true`, or
/// `OTEL_TRACES_EXPORTER=none`), the endpoint and protocol, or why it cannot be done. `var` reads
/// a variable.
pub fn wanted(var: impl Fn(&str) -> Option<String>) -> Result<Option<Wanted>, String> {
    let set = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let Some(endpoint) = ENDPOINT_VARS.iter().find_map(|n| set(n)) else {
        return Ok(None);
    };
    if let Some(v) = set("OTEL_TRACES_EXPORTER")
        && !v.eq_ignore_ascii_case("otlp")
    {
        return Err(format!("OTEL_TRACES_EXPORTER={v}: modserve exports traces with otlp only (or none)"));
    }
    let protocol = match PROTOCOL_VARS.iter().find_map(|n| set(n).map(|v| (*n, v))) {
        None => Protocol::Grpc,
        Some((_, v)) if v == "grpc" => Protocol::Grpc,
        Some((_, v)) if v == "http/protobuf" => Protocol::HttpProtobuf,
        Some((name, v)) => {
            return Err(format!("{name}={v}: modserve exports OTLP as grpc (port 4317) or http/protobuf (4318)"));
        }
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: must be an http:// or https:// URL, e.g. http://127.0.0.1:4317"
        ));
    }
    if endpoint.starts_with("https://") {
        return Err(format!(
            "OTLP endpoint {endpoint:?}: modserve's exporter speaks plaintext only; send to a collector on the node (http://)"
        ));
    }
    Ok(Some(Wanted { endpoint, protocol }))
}

/// Sets up the OTLP exporter when the environment asks for it (see `wanted`). Call inside the
/// async runtime (the gRPC client runs on it). `Ok(None)`: tracing is off.
pub fn init() -> Result<Option<Exporter>, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
    let Some(Wanted { endpoint, protocol }) = wanted(|n| std::env::var(n).ok())? else {
        return Ok(None);
    };
    let built = match protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder().with_tonic().build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_http_client(UreqClient::new(export_timeout(|n| std::env::var(n).ok())))
            .build(),
    };
    let exporter = built.map_err(|e| format!("OTLP exporter for {endpoint} ({}): {e}", protocol.as_str()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |v| v.trim().is_empty()) {
        resource = resource.with_service_name("modserve");
    }
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource.build()).build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "modserve");
    if TRACER.set(tracer).is_err() {
        return Err("OpenTelemetry is already set up".into());
    }
    Ok(Some(Exporter { provider, endpoint, protocol }))
}

/// `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` (milliseconds), default 10 s: what one export may take.
fn export_timeout(var: impl Fn(&str) -> Option<String>) -> Duration {
    ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
        .iter()
        .find_map(|n| var(n)?.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// OTLP/HTTP through ureq (already in the tree for `modserve report`). The batch processor
/// exports from a thread of its own and waits for each export, so a blocking call is right here.
#[derive(Debug)]
struct UreqClient(ureq::Agent);

impl UreqClient {
    fn new(timeout: Duration) -> UreqClient {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // The exporter reads the status (it retries 429 and 503, and logs the rest).
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("modserve/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        UreqClient(agent)
    }
}

/// The largest collector answer read: an OTLP answer is a few bytes (partial success at most).
const MAX_ANSWER_BYTES: u64 = 1024 * 1024;

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let response = self.0.run(request.map(|body| body.to_vec()))?;
        let (parts, mut body) = response.into_parts();
        let bytes = body.with_config().limit(MAX_ANSWER_BYTES).read_to_vec()?;
        Ok(opentelemetry_http::Response::from_parts(parts, bytes.into()))
    }
}

/// Whether spans are being made.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The W3C trace context headers, which transports copy from HTTP to gRPC metadata.
pub const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// The caller's trace context from W3C `traceparent`/`tracestate` (`header` reads one, from gRPC
/// metadata or HTTP headers), if tracing is on; an absent or malformed header starts a new trace.
pub fn parent_from<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Parent {
    if !enabled() {
        return Parent(None);
    }
    // The marker ties the values' lifetime to the extractor's, as `Extractor::get` needs.
    struct Headers<'a, F>(F, std::marker::PhantomData<&'a str>);
    impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Headers<'a, F> {
        fn get(&self, key: &str) -> Option<&str> {
            (self.0)(key)
        }
        fn keys(&self) -> Vec<&str> {
            HEADERS.to_vec()
        }
    }
    Parent(Some(TraceContextPropagator::new().extract(&Headers(header, std::marker::PhantomData))))
}

/// Where a call's span hangs: the caller's context (possibly empty), or nothing when tracing is
/// off.
#[derive(Clone, Default)]
pub struct Parent(Option<Context>);

/// A call being traced: its span, kept open until `end`.
pub struct CallSpan {
    cx: Context,
}

/// Wall-clock time of `at`, for spans built after the fact.
fn wall(at: Instant) -> SystemTime {
    let now = Instant::now();
    match now.checked_duration_since(at) {
        Some(ago) => SystemTime::now() - ago,
        None => SystemTime::now() + at.duration_since(now),
    }
}

impl CallSpan {
    /// Starts the server span `name` at `arrived` under `parent`; `None` when tracing is off.
    pub fn start(parent: &Parent, name: &'static str, arrived: Instant, attributes: Vec<KeyValue>) -> Option<CallSpan> {
        let (tracer, parent) = (TRACER.get()?, parent.0.as_ref()?);
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(wall(arrived))
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        Some(CallSpan { cx: parent.with_span(span) })
    }

    /// A finished step of the call, from `start` to `end`.
    pub fn child(&self, name: &'static str, start: Instant, end: Instant, attributes: Vec<KeyValue>) {
        let Some(tracer) = TRACER.get() else { return };
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall(start))
            .with_attributes(attributes)
            .start_with_context(tracer, &self.cx);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, wall(end));
    }

    /// Adds attributes to the call's span.
    pub fn set(&self, attributes: Vec<KeyValue>) {
        self.cx.span().set_attributes(attributes);
    }

    /// What shadow work links to.
    pub fn link(&self) -> ShadowLink {
        ShadowLink(Some(self.cx.span().span_context().clone()))
    }

    /// Ends the call now, as an error when `error` says why.
    pub fn end(self, error: Option<String>) {
        let span = self.cx.span();
        if let Some(message) = error {
            span.set_status(Status::error(message));
        }
        span.end();
    }
}

/// The call a piece of shadow work came from; empty when tracing is off or the call untraced.
#[derive(Clone, Default)]
pub struct ShadowLink(Option<SpanContext>);

impl ShadowLink {
    /// A root span `name` from `start` to now, linked to the call (its own trace), with the
    /// `attributes` (built only for a traced call).
    pub fn finished(&self, name: &'static str, start: Instant, attributes: impl FnOnce() -> Vec<KeyValue>) {
        let (Some(tracer), Some(call)) = (TRACER.get(), self.0.as_ref()) else { return };
        let attributes = attributes();
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(wall(start))
            .with_attributes(attributes)
            .with_links(vec![Link::with_context(call.clone())])
            .start_with_context(tracer, &Context::new());
        opentelemetry::trace::Span::end(&mut span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn off_unless_an_endpoint_is_set_and_nothing_turns_it_off() {
        let grpc = |endpoint: &str| Ok(Some(Wanted { endpoint: endpoint.into(), protocol: Protocol::Grpc }));
        assert_eq!(wanted(env(&[])), Ok(None));
        assert_eq!(wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])), Ok(None));
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")];
        assert_eq!(wanted(env(&on)), grpc("http://127.0.0.1:4317"));
        assert_eq!(wanted(env(&[on[0], ("OTEL_SDK_DISABLED", "TRUE")])), Ok(None));
        assert_eq!(wanted(env(&[on[0], ("OTEL_TRACES_EXPORTER", "none")])), Ok(None));
        assert_eq!(wanted(env(&[on[0], ("OTEL_TRACES_EXPORTER", "otlp")])), grpc("http://127.0.0.1:4317"));
        // The traces endpoint wins over the general one.
        let both = [on[0], ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4317")];
        assert_eq!(wanted(env(&both)), grpc("http://collector:4317"));
        // The protocol, the traces one first.
        let http = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        let want = Wanted { endpoint: "http://c:4318".into(), protocol: Protocol::HttpProtobuf };
        assert_eq!(wanted(env(&http)), Ok(Some(want)));
        let traces = [http[0], http[1], ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")];
        assert_eq!(wanted(env(&traces)), grpc("http://c:4318"));
    }

    #[test]
    fn the_export_timeout_is_read_in_milliseconds() {
        assert_eq!(export_timeout(env(&[])), Duration::from_secs(10));
        assert_eq!(export_timeout(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")])), Duration::from_millis(2500));
        let both = [("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"), ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700")];
        assert_eq!(export_timeout(env(&both)), Duration::from_millis(700));
        assert_eq!(export_timeout(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])), Duration::from_secs(10));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_variable() {
        let on = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
        let err = wanted(env(&[on, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])).unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL=http/json"), "{err}");
        let err = wanted(env(&[on, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")])).unwrap_err();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=thrift"), "{err}");
        let err = wanted(env(&[on, ("OTEL_TRACES_EXPORTER", "zipkin")])).unwrap_err();
        assert!(err.contains("OTEL_TRACES_EXPORTER=zipkin"), "{err}");
        let err = wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")])).unwrap_err();
        assert!(err.contains("http://"), "{err}");
        let err = wanted(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4317")])).unwrap_err();
        assert!(err.contains("plaintext"), "{err}");
    }

    #[test]
    fn nothing_is_made_while_tracing_is_off() {
        // This test binary never calls `init`.
        assert!(!enabled());
        let parent = parent_from(|_| Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        assert!(CallSpan::start(&parent, "call", Instant::now(), vec![]).is_none());
    }

    #[test]
    fn instants_map_to_wall_clock_times_in_order() {
        let now = Instant::now();
        let (a, b) = (wall(now - Duration::from_millis(50)), wall(now));
        let gap = b.duration_since(a).unwrap();
        assert!(gap >= Duration::from_millis(49) && gap <= Duration::from_millis(51), "{gap:?}");
        assert!(wall(now + Duration::from_secs(1)) > b);
    }
}
