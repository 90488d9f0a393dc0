//! OpenTelemetry traces end to end: the real binary, told by the standard `OTEL_*` variables to
//! export, sends spans over OTLP/gRPC and OTLP/HTTP to a receiver that speaks the real protocols
//! (`tests/otlp/receiver.py`: grpcio and http.server, messages generated from the
//! opentelemetry-proto definitions).
//! A call continues the caller's trace from `traceparent`, over gRPC and over the HTTP/JSON API;
//! its steps are its children; shadow work is a trace of its own, linked to the call; the last
//! spans are sent at SIGTERM; a setting modserve cannot honour stops it at start.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The receiver, killed when dropped.
struct Receiver {
    child: Child,
    out: PathBuf,
    /// OTLP/gRPC.
    endpoint: String,
    /// OTLP/HTTP (the exporter adds `/v1/traces`).
    http_endpoint: String,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts it and waits until it serves (its first run installs the Python example's pinned
    /// dependencies into `.tools/examples-venv`).
    fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let (out, port_file) = (dir.path().join("spans.jsonl"), dir.path().join("port"));
        let mut child = Command::new("python3")
            .arg(repo().join("tests/otlp/receiver.py"))
            .arg("--out")
            .arg(&out)
            .arg("--port-file")
            .arg(&port_file)
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver");
        let started = Instant::now();
        let port = loop {
            if let Ok(port) = std::fs::read_to_string(&port_file) {
                break port;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
                panic!("the OTLP receiver exited with {status}:\n{stderr}");
            }
            assert!(started.elapsed() < Duration::from_secs(180), "the OTLP receiver did not start");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (grpc, http) = port.trim().split_once(' ').expect("two ports");
        let (endpoint, http_endpoint) = (format!("http://127.0.0.1:{grpc}"), format!("http://127.0.0.1:{http}"));
        Receiver { child, out, endpoint, http_endpoint, _dir: dir }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The spans received once `done` holds for them (30 s at most; then the test fails).
    async fn wait_until(&self, what: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        for _ in 0..300 {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{what}: not received within 30 s; received:\n{:#?}", self.spans());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The W3C header of a sampled span `span` in trace `trace`.
fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

fn str_of<'a>(span: &'a serde_json::Value, key: &str) -> &'a str {
    span[key].as_str().unwrap_or_else(|| panic!("{key} missing: {span}"))
}

/// In `spans`, the call span of trace `trace` (a server span named `modserve.Classify`).
fn call_in<'a>(spans: &'a [serde_json::Value], trace: &str) -> Option<&'a serde_json::Value> {
    spans.iter().find(|s| s["trace_id"] == trace && s["name"] == "modserve.Classify")
}

/// Checks the call of trace `trace` hangs under the caller's span `caller` and has every step
/// as its child, within its time, and that shadow work has a trace of its own linked to it.
fn check_call(spans: &[serde_json::Value], trace: &str, caller: &str) {
    let call = call_in(spans, trace).unwrap_or_else(|| panic!("no call span in trace {trace}: {spans:#?}"));
    assert_eq!(str_of(call, "parent_span_id"), caller, "the call continues the caller's span: {call}");
    assert_eq!(call["kind"], 2, "a server span: {call}");
    assert_eq!(call["service_name"], "modserve-test", "OTEL_SERVICE_NAME is honoured: {call}");
    let call_id = str_of(call, "span_id");
    let (start, end) = (call["start_ns"].as_u64().unwrap(), call["end_ns"].as_u64().unwrap());
    let children: Vec<&serde_json::Value> = spans.iter().filter(|s| s["parent_span_id"] == call_id).collect();
    for step in ["validate", "queue", "tokenize", "inference", "decision"] {
        let child = children.iter().find(|s| s["name"] == step).unwrap_or_else(|| panic!("no {step} under {call}"));
        assert_eq!(child["trace_id"], trace, "{child}");
        let (s, e) = (child["start_ns"].as_u64().unwrap(), child["end_ns"].as_u64().unwrap());
        assert!(start <= s && s <= e && e <= end, "{step} [{s}, {e}] within the call [{start}, {end}]");
        if step != "validate" {
            assert_eq!(child["attributes"]["modserve.model"], "tiny-abuse", "{child}");
        }
    }
    let decision = children.iter().find(|s| s["name"] == "decision").unwrap();
    assert_eq!(decision["attributes"]["modserve.policy"], "default", "{decision}");
    // The shadow's comparison: its own trace, linked to the call, never a child of it.
    let shadow = spans
        .iter()
        .find(|s| {
            s["name"] == "modserve.shadow" && s["links"].as_array().unwrap().iter().any(|l| l["span_id"] == call_id)
        })
        .unwrap_or_else(|| panic!("no shadow span linked to {call}"));
    assert_ne!(shadow["trace_id"], trace, "shadow work does not keep the caller's trace open: {shadow}");
    assert_eq!(str_of(shadow, "parent_span_id"), "", "{shadow}");
    assert_eq!(shadow["links"][0]["trace_id"], trace, "{shadow}");
    assert_eq!(shadow["attributes"]["modserve.shadow"], "tiny-abuse-v2", "{shadow}");
    assert_eq!(shadow["attributes"]["modserve.outcome"], "compared", "{shadow}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_continues_the_callers_trace_and_shadow_work_links_to_it() {
    let _shared = shared().await;
    for protocol in ["grpc", "http/protobuf"] {
        calls_are_traced_over(protocol).await;
    }
}

/// Two calls with the caller's trace (gRPC, HTTP API) and one without, exported over `protocol`.
async fn calls_are_traced_over(protocol: &str) {
    let receiver = tokio::task::block_in_place(Receiver::start);
    let endpoint = if protocol == "grpc" { &receiver.endpoint } else { &receiver.http_endpoint };
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_SERVICE_NAME", "modserve-test"),
    ];
    let server = ChildServer::start_with("http_listen = \"127.0.0.1:0\"", LIVE_AND_SHADOW, &envs).await;
    // Over gRPC, the header in the metadata.
    let (grpc_trace, grpc_caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut call = tonic::Request::new(request(vec![review("g1", "you idiot")]));
    call.metadata_mut().insert("traceparent", traceparent(grpc_trace, grpc_caller).parse().unwrap());
    server.client().await.classify(call).await.expect("Classify over gRPC");
    // Over the HTTP/JSON API, the header as sent.
    let (http_trace, http_caller) = ("5cf92f3577b34da6a3ce929d0e0e4737", "01f067aa0ba902b8");
    let url = format!("http://{}/v1/classify", server.http_addr.expect("the HTTP listener"));
    let curl = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-H", "content-type: application/json", "-H"])
        .arg(format!("traceparent: {}", traceparent(http_trace, http_caller)))
        .args(["--data", r#"{"reviews":[{"id":"h1","text":"you idiot"}]}"#])
        .arg(&url)
        .output()
        .expect("curl runs");
    assert!(curl.status.success(), "POST /v1/classify: {}", String::from_utf8_lossy(&curl.stdout));
    // Without a header: a trace of its own.
    server.client().await.classify(request(vec![review("n1", "you idiot")])).await.expect("Classify");

    let spans = receiver
        .wait_until("both calls' spans and their shadows'", |spans| {
            [grpc_trace, http_trace].iter().all(|t| call_in(spans, t).is_some())
                && spans.iter().filter(|s| s["name"] == "modserve.shadow").count() >= 3
                && spans.iter().filter(|s| s["name"] == "modserve.Classify").count() >= 3
        })
        .await;
    check_call(&spans, grpc_trace, grpc_caller);
    check_call(&spans, http_trace, http_caller);
    let own = spans
        .iter()
        .find(|s| s["name"] == "modserve.Classify" && s["trace_id"] != grpc_trace && s["trace_id"] != http_trace)
        .expect("the call without a header");
    assert_eq!(str_of(own, "parent_span_id"), "", "a call without traceparent starts a trace: {own}");
    let logs = server.stop().await;
    assert!(logs.contains("exporting OpenTelemetry traces over OTLP"), "{logs}");
    assert!(logs.contains(&format!("\"protocol\":\"{protocol}\"")), "{protocol}: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_calls_spans_are_sent_at_sigterm() {
    let _shared = shared().await;
    let receiver = tokio::task::block_in_place(Receiver::start);
    // Spans would wait 10 minutes for the next export; only the exit sends them now.
    let envs = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "600000")];
    let server = ChildServer::start_with("", LIVE_AND_SHADOW, &envs).await;
    let trace = "6cf92f3577b34da6a3ce929d0e0e4738";
    let mut call = tonic::Request::new(request(vec![review("s1", "you idiot")]));
    call.metadata_mut().insert("traceparent", traceparent(trace, "02f067aa0ba902b9").parse().unwrap());
    server.client().await.classify(call).await.expect("Classify");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(call_in(&receiver.spans(), trace).is_none(), "nothing exported before the exit");
    server.stop().await;
    receiver.wait_until("the call's span after SIGTERM", |spans| call_in(spans, trace).is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_fails_no_call_and_the_log_says_so() {
    let _shared = shared().await;
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let envs = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
    ];
    let server = ChildServer::start_with("", LIVE_AND_SHADOW, &envs).await;
    let mut client = server.client().await;
    for i in 0..5 {
        let answer = client.classify(request(vec![review(&format!("d{i}"), "you idiot")])).await;
        answer.expect("the call is answered while its spans cannot be sent");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = server.stop().await;
    assert!(logs.contains("BatchSpanProcessor.ExportError"), "the failed export is logged:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_otlp_setting_modserve_cannot_honour_stops_it_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("modserve.toml");
    let fixtures = format!("\"{}/", path_str(&repo().join("tests/fixtures")));
    let body = LIVE_AND_SHADOW.replace("\"tests/fixtures/", &fixtures);
    std::fs::write(&path, format!("[server]\ngrpc_listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n{body}"))
        .unwrap();
    for (name, value, says) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL=http/json"),
        ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER=zipkin"),
    ] {
        let out = tokio::task::block_in_place(|| {
            modserve()
                .arg("--config")
                .arg(&path)
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
                .env(name, value)
                .output()
                .unwrap()
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}={value}: it started:\n{stderr}");
        assert!(stderr.contains(says), "{name}={value}: the error names it:\n{stderr}");
    }
}
